"""Follow topics from the beginning without a consumer group (the read side of derived views),
and write single records to a topic (`TopicWriter`, the write side of clinicians' actions).

Every dashboard replica and every webhook dispatcher keeps its own view of small compacted or
recent topics (twin states, alerts, subscriptions, the patient registry) this way, so any number
of them can run side by side and each shows the latest state at once on start.

A view replays its topics from the beginning at every start, so a record it cannot apply must
never stop it: `apply` raises InvalidMessage for such a record, and the follower counts it in
`skipped` and logs where it is and why (the kind), never what it holds.

A memory-only broker (the embedded Tansu) comes back from a restart empty; once the topics are
created again, a reader whose positions are past the new logs' ends would wait for offsets that
come only much later, reading nothing meanwhile (tried: the new broker answers such fetches
with no records, not with an out-of-range error). So the follower checks every second whether
a topic was replaced (its topic id changed; without topic ids, a partition now ends before our
position), and then reads every topic again from its new start; the view keeps what it had
applied, and `on_reset` tells its owner (the worker re-publishes what the broker lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from streams import compat
from streams.config import Settings, kafka_python_consumer_config, kafka_python_producer_config
from streams.errors import InvalidMessage, where
from streams.messages import reject

log = logging.getLogger("patient_twin.follow")


def record_key(key: bytes | None) -> str:
    """A record's key as text; InvalidMessage if it has none or it is not UTF-8."""
    if not key:
        raise reject("the record has no key", "missing_key")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise reject("the record's key is not UTF-8", "bad_key") from None


RESET_CHECK_S = 1.0  # how often a follower checks that its topics are the ones it read


def replaced(positions: Mapping[Any, int], ends: Mapping[Any, int],
             ids_before: Mapping[str, object], ids_now: Mapping[str, object]) -> set[str]:
    """Topics whose log was replaced since we read them: their topic id changed; or, for a
    topic whose id is not known (a broker without topic ids), one of its partitions (`tp.topic`)
    now ends before our position in it. Not by offsets where ids are known: the embedded broker
    reports an end offset short of the last record of a multi-record batch (docs/tansu.md), so
    a reader of such a topic is often past the end it reports."""
    out = {t for t, before in ids_before.items()
           if before is not None and ids_now.get(t) is not None and ids_now[t] != before}
    out.update(tp.topic for tp, pos in positions.items()
               if ids_now.get(tp.topic) is None and tp in ends and ends[tp] < pos)
    return out


def read_all(settings: Settings, topic: str, timeout_s: float = 30.0,
             idle_s: float = 1.0) -> list[tuple[bytes | None, bytes | None]]:
    """Every record now on `topic` as (key, value), in offset order per partition: read to the
    end offsets, then until nothing new came for `idle_s` (the embedded broker's end offset can
    lag the tail of a producer batch, docs/tansu.md). TimeoutError after `timeout_s`."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                             **kafka_python_consumer_config(settings))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + timeout_s
        quiet_since: float | None = None
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{topic} was not read to its end in {timeout_s} s")
            batch = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                out.extend((r.key, r.value) for r in recs)
            at_end = all(consumer.position(tp) >= end[tp] for tp in tps)
            if batch or not at_end:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= idle_s:
                return out
    finally:
        consumer.close()


class Follower:
    """A thread that feeds every record of `topics` (key, value) to `apply`, reconnecting on
    Kafka errors. `connected` says whether it currently reads; `skipped` counts, by topic, the
    records `apply` refused (InvalidMessage) or failed on; `resets` the times the broker was
    found to have lost the topics' records (module docstring), each told to `on_reset` (called
    in the follower's thread with the replaced topics, before their new records are applied).
    """

    def __init__(self, settings: Settings, topics: Sequence[str],
                 apply: Callable[[str, bytes | None, bytes | None], None],
                 client_id: str, fetch_max_wait_ms: int | None = None,
                 on_reset: Callable[[set[str]], None] | None = None) -> None:
        self.settings = settings
        # None: the configured consumer's; longer for views that need not be fresh to 100 ms
        # (each fetch the embedded broker answers costs the process CPU while it is idle).
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.topics = tuple(topics)
        self.apply = apply
        self.client_id = client_id
        self.connected = False
        # every topic's entry exists from the start: readers in other threads see a fixed dict
        self.skipped: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.on_reset = on_reset
        self.resets = 0
        self._ids: dict[str, object] = {}  # topic ids as last read
        self._lost: set[str] = set()  # topics found replaced, told once reconnected
        self.caught_up = threading.Event()  # set once everything present at start was applied
        self._sync_asked = threading.Event()
        self._synced = threading.Event()
        self._last_sync = -1e9
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run, name=self.client_id, daemon=True)
        self._thread.start()
        return self

    def sync(self, timeout: float, min_interval_s: float = 1.0) -> bool:
        """Wait (up to `timeout`) until every record on the topics now has been applied; True
        if so. At most once per `min_interval_s`: a call sooner waits for its turn (within the
        timeout) rather than be refused, so a record written just after the last sync is still
        seen, and a caller asking for every batch (a flood of unknown ids) makes each batch
        wait at most about that long."""
        if not self.connected:
            return False
        turn = self._last_sync + min_interval_s - time.monotonic()
        if turn > 0:
            if turn >= timeout:
                return False
            time.sleep(turn)
            timeout -= turn
        self._last_sync = time.monotonic()
        self._synced.clear()
        self._sync_asked.set()
        return self._synced.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        while not self._stop.is_set():
            try:
                cfg = kafka_python_consumer_config(self.settings)
                if self.fetch_max_wait_ms is not None:
                    cfg["fetch_max_wait_ms"] = self.fetch_max_wait_ms
                consumer = KafkaConsumer(client_id=self.client_id, group_id=None,
                                         enable_auto_commit=False, **cfg)
                parts = [TopicPartition(t, p) for t in self.topics
                         for p in sorted(consumer.partitions_for_topic(t) or ())]
                if len({tp.topic for tp in parts}) < len(self.topics):
                    consumer.close()
                    time.sleep(1.0)  # topics not created yet
                    continue
                consumer.assign(parts)
                consumer.seek_to_beginning(*parts)
                ends = consumer.end_offsets(parts)
                self._reconnected(compat.kafka_topic_ids(consumer, self.topics))
                self.connected = True
                target = None
                checked = time.monotonic()
                while not self._stop.is_set():
                    if time.monotonic() - checked >= RESET_CHECK_S:
                        checked = time.monotonic()
                        lost = replaced({tp: consumer.position(tp) for tp in parts},
                                        consumer.end_offsets(parts), self._ids,
                                        compat.kafka_topic_ids(consumer, self.topics))
                        if lost:
                            self._lost |= lost
                            break  # read every topic again from its new start
                    if self._sync_asked.is_set():
                        self._sync_asked.clear()
                        target = consumer.end_offsets(parts)
                    batch = consumer.poll(timeout_ms=0 if target else 200, max_records=5000)
                    for records in batch.values():
                        for rec in records:
                            self._apply(rec)
                    if not self.caught_up.is_set() and all(
                            consumer.position(tp) >= ends[tp] for tp in parts):
                        self.caught_up.set()
                    if target and all(consumer.position(tp) >= target[tp] for tp in parts):
                        target = None
                        self._synced.set()
                self.connected = False
                consumer.close()
            except KafkaError as exc:
                self.connected = False
                log.warning("%s lost Kafka (%s); retrying", self.client_id, type(exc).__name__)
                time.sleep(1.0)

    def _reconnected(self, ids: dict[str, object]) -> None:
        """After (re)assigning: tell `on_reset` which topics the broker replaced, found by the
        check in the read loop or by their ids changing while we were away."""
        lost = self._lost | {t for t in replaced({}, {}, self._ids, ids)}
        self._ids.update({t: i for t, i in ids.items() if i is not None})
        self._lost = set()
        if not lost:
            return
        self.resets += 1
        log.warning("%s: the broker lost the records of %d topic(s) (a restart of a memory-only "
                    "broker?); reading them again from their new start", self.client_id,
                    len(lost))
        if self.on_reset is not None:
            try:
                self.on_reset(lost)
            except Exception as exc:  # noqa: BLE001 - the view must keep reading
                log.error("%s: handling the lost topics failed (%s)", self.client_id,
                          where(exc))

    def _apply(self, rec: Any) -> None:
        """Apply one consumer record; count and log one that cannot be applied, and go on."""
        try:
            self.apply(rec.topic, rec.key, rec.value)
            return
        except InvalidMessage as exc:
            kind = exc.kind
            level = logging.WARNING
        except Exception as exc:  # a bug: it must not stop the view at every replay
            kind = where(exc)
            level = logging.ERROR
        self.skipped[rec.topic] += 1
        log.log(level, "%s skipped the record at %s partition %d offset %d (%s)",
                self.client_id, rec.topic, rec.partition, rec.offset, kind)


# Sends of a write-back (the records a restarted broker lost), a second apart: the worker's
# twins (streams.worker.app) and the registry and subscriptions (TopicWriter.put_all).
WRITE_BACK_TRIES = 10


class TopicWriter:
    """Writes records to one topic and waits for each (producer created on first use)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._producer: Any = None

    def put(self, key: str, value: bytes | None, wait: bool = True) -> None:
        """Send one record; with `wait`, return only once the broker has it (KafkaError if not).
        """
        future = self._send(key, value)
        if wait:
            future.get(timeout=30)

    def put_all(self, records: Iterable[tuple[str, bytes]], tries: int = WRITE_BACK_TRIES,
                pause_s: float = 1.0) -> int:
        """Send records (key, value) at once, and return, with how many, only once the broker
        has every one; a record the broker refused is sent again, `pause_s` apart, up to
        `tries` sends in all (then the last KafkaError). Its callers write back what a
        restarted broker lost, whose first writes may fail (UnknownError, seen from aiokafka
        and kafka-python alike): these records are then the only copy."""
        from kafka.errors import KafkaError

        pending = list(records)
        total = len(pending)
        for n in range(1, tries + 1):
            sent = [(rec, self._send(*rec)) for rec in pending]
            pending, error = [], None
            for rec, future in sent:
                try:
                    future.get(timeout=30)
                except KafkaError as exc:
                    pending.append(rec)  # each key once: sending it again reorders nothing
                    error = exc
            if error is None:
                return total
            if n < tries:
                log.warning("%s: the broker refused %d of %d records (%s); again in %g s",
                            self.topic, len(pending), total, type(error).__name__, pause_s)
                time.sleep(pause_s)
        assert error is not None
        raise error

    def _send(self, key: str, value: bytes | None) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(client_id="patient-twin-api", acks="all",
                                           **kafka_python_producer_config(self.settings))
        return self._producer.send(self.topic, key=key.encode(), value=value)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
