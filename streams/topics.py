"""The topics the project owns, created idempotently with kafka-python's admin client."""

from __future__ import annotations

import functools

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from streams.compat import murmur2
from streams.config import Settings, kafka_python_config
from streams.errors import BrokerError

_COMPACT = {"cleanup.policy": "compact"}


def specs(s: Settings) -> list[NewTopic]:
    """Every topic with its partitions and config. Keyed topics share the partition count so a
    patient's readings, twin and alerts land on the same partition number."""
    p, r = s.kafka_partitions, s.kafka_replication_factor
    # With replicas, a write (acks=all, as every producer of the project sends) succeeds only
    # once min(2, replicas - 1) in-sync copies have it: with 3 replicas, two, so losing one
    # broker loses no acknowledged reading and writes go on.
    durable = {"min.insync.replicas": str(min(2, r - 1))} if r > 1 else {}
    compact = {**_COMPACT, **durable}
    return [
        NewTopic(s.topic_vitals_raw, p, r, topic_configs=durable),
        NewTopic(s.topic_vitals_dlq, p, r, topic_configs=durable),
        NewTopic(s.topic_twin_state, p, r, topic_configs=compact),
        NewTopic(s.topic_alerts, p, r, topic_configs=durable),
        NewTopic(s.topic_patients, p, r, topic_configs=compact),
        NewTopic(s.topic_observations, p, r, topic_configs=durable),
        NewTopic(s.topic_alert_actions, p, r, topic_configs=durable),
        NewTopic(s.topic_subscriptions, 1, r, topic_configs=compact),
        NewTopic(s.topic_webhook_dlq, 1, r, topic_configs=durable),
        NewTopic(s.topic_audit, 1, r, topic_configs=durable),
        NewTopic(s.topic_workers, 1, r, topic_configs=compact),
        NewTopic(s.topic_sessions, 1, r, topic_configs=compact),
        # compacted: a replica that starts needs each presence's latest pose, not its history
        NewTopic(s.topic_presence, 1, r, topic_configs=compact),
        # the worker's twin table (Faust creates it too when a worker starts; here so that it
        # is there again, with its config, after a memory-only broker restarted)
        NewTopic(changelog_topic(s), p, r, topic_configs=compact),
    ]


TWIN_TABLE = "twins"  # the worker's Faust table of twin records


def changelog_topic(s: Settings) -> str:
    """The worker's twin table changelog, as Faust names it: `{app id}-{table}-changelog`."""
    return f"{s.app_id}-{TWIN_TABLE}-changelog"


@functools.lru_cache(maxsize=1 << 17)
def partition_of(patient_id: str, partitions: int) -> int:
    """The partition of a patient's records: the devices' producers key them by patient id, and
    Kafka's default partitioner takes murmur2 of the key. Cached: kafka-python's murmur2 is pure
    Python, and the worker asks for each patient of a batch twice (table and twin.state)."""
    return (murmur2(patient_id.encode()) & 0x7FFFFFFF) % partitions


def ensure(s: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names created. BrokerError if Kafka is unreachable."""
    try:
        admin = KafkaAdminClient(client_id=f"{s.app_id}-admin",
                                 bootstrap_timeout_ms=int(timeout * 1000),
                                 **kafka_python_config(s))
    except (KafkaConnectionError, KafkaTimeoutError) as exc:
        raise BrokerError(f"no Kafka broker reachable at {s.bootstrap} "
                          f"within {timeout:g} s") from exc
    created = []
    try:
        existing = set(admin.list_topics())
        for spec in specs(s):
            if spec.name in existing:
                continue
            try:
                admin.create_topics([spec])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another process created it meanwhile
            except KafkaError as exc:
                raise BrokerError(f"could not create topic {spec.name}: {exc}") from exc
    finally:
        admin.close()
    return created
