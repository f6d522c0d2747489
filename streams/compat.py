"""Every place the project reaches into a library's internals, in one module.

Written against the versions pyproject.toml pins (faust-streaming 0.15, aiokafka 0.14,
kafka-python 3.0); tests/streams/test_compat.py checks each internal is still there, so an
upgrade that moves one breaks that test, here, not a worker at run time. Each function says why
the public API does not do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Kafka's default partitioner (murmur2 of the key bytes), as the devices' kafka-python producers
# use it: the worker must put a patient's twin on the partition of its readings.
from kafka.partitioner.default import murmur2 as murmur2

PINNED = {"faust-streaming": "0.15", "aiokafka": "0.14", "kafka-python": "3.0"}


def faust_kafka_producer(app: Any) -> Any:
    """The aiokafka producer a started Faust app runs (faust-streaming 0.15:
    `Producer._ensure_producer`). The worker sends whole record batches through it
    (`streams.worker.changelog`); Faust's public `send` builds a future per record."""
    return app.producer._ensure_producer()


def set_faust_fetch_max_wait(ms: int) -> None:
    """Make the worker consumers Faust creates from now on wait at most `ms` per fetch.

    Faust hard-codes 1,500 ms for its worker consumer (faust-streaming 0.15:
    `AIOKafkaConsumerThread._create_worker_consumer`), and aiokafka reads the wait from the
    consumer's private `_fetch_max_wait_ms` when it starts (aiokafka 0.14). Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    create = driver.AIOKafkaConsumerThread._create_worker_consumer
    if getattr(create, "fetch_max_wait_ms", None) == ms:
        return
    original = getattr(create, "original", create)

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create_worker_consumer.fetch_max_wait_ms = ms  # type: ignore[attr-defined]
    create_worker_consumer.original = original  # type: ignore[attr-defined]
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


def kafka_topic_ids(consumer: Any, topics: Sequence[str]) -> dict[str, object]:
    """Each topic's id from a kafka-python consumer's cluster metadata (None: not known, e.g. a
    broker without topic ids). kafka-python 3.0 keeps them on its client's
    `cluster.topic_id`, reached through the private `_client`; a change there reads as "not
    known", never as an error."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    get = getattr(cluster, "topic_id", None)
    return {t: get(t) if get is not None else None for t in topics}
