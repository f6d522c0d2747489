"""Every place the project reaches into a library's internals, in one module.

Written against the versions pyproject.toml pins (faust-streaming 0.15, aiokafka 0.14,
kafka-python 3.0); tests/streams/test_compat.py checks each internal is still there, so an
upgrade that moves one breaks that test, here, not a worker at run time. Each function says why
the public API does not do.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator, Sequence
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


# Faust's consumer hands each message to its stream without four tasks per message.
#
# Faust's fetch loop (faust-streaming 0.15, `Consumer._drain_messages`) delivers every message with
# `await self.wait_first(callback(message), self.suspend_flow.wait())`: mode's `wait_first` wraps
# the callback, the flow event and the consumer's stopped and crashed events in a task each, waits
# for the first, and cancels the other three. Profiled at 10,000 patients x 1 Hz
# (docs/performance.md, issue 22 item 7) that was 13 % of the worker's CPU, for a callback that
# nearly always finishes at once (the message's event goes into the stream's queue).
#
# `faust_direct_handover` makes the consumer's `wait_first` run that call's callback directly
# first: if it finishes without waiting, the result is the one `wait_first` would have returned;
# if it has to wait (the stream's queue or the producer buffer full), the rest of it goes to the
# original `wait_first`, with the same races against the flow being suspended and the consumer
# stopping.
# Every other `wait_first` call is the original's.
_MARK = "_patient_twin_fast_callback"


class _Resumed:
    """The rest of a coroutine already stepped once (it yielded `first`), as an awaitable."""

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - passed on into the coroutine
                try:
                    out = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as done:
                    return done.value


def faust_direct_handover() -> None:
    """Patch faust's Consumer.wait_first (idempotent): see `_Resumed` above and the comment on
    it for what and why."""
    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    original = Consumer.wait_first
    if getattr(original, _MARK, False):
        return

    async def wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        # only `_drain_messages`' call: (callback coroutine, suspend_flow.wait() coroutine)
        if len(coros) != 2 or timeout is not None or not hasattr(coros[0], "send") \
                or getattr(getattr(coros[1], "cr_code", None), "co_name", None) != "wait" \
                or self.suspend_flow.is_set() or self._stopped.is_set() \
                or self._crashed.is_set():
            return await wait_first.original(self, *coros, timeout=timeout)
        callback, flow = coros
        try:
            blocked_on = callback.send(None)
        except StopIteration as done:
            flow.close()
            return WaitResults([callback], [done.value], False)
        except BaseException:
            flow.close()
            raise
        # looked up on the function at call time, so a test can stand in for mode's original
        return await wait_first.original(self, _Resumed(callback, blocked_on), flow)

    setattr(wait_first, _MARK, True)
    wait_first.original = original  # type: ignore[attr-defined]
    Consumer.wait_first = wait_first  # type: ignore[method-assign]


# The offsets a worker commits for its source topics: its own, not Faust's.
#
# faust-streaming 0.15 commits, per partition, the first unbroken run of offsets its streams
# acknowledged (`Consumer._filter_committable_offsets` -> `_new_offset`). Faust itself
# acknowledges offsets no agent applied (the stale prefetched messages it skips after a
# rebalance, faust-streaming PR 223), and the run's start is checked against the committed offset
# only when that is known and non-zero, with a one-offset hole let through (`min(acked) -
# committed > 1`). The worker knows which offsets it applied and wrote out
# (`streams.worker.offsets.OffsetTracker.limit`); for the partitions it names, that is the
# offset committed.
_LIMITS = "_patient_twin_commit_limits"


def faust_commit_limits(app: Any, limits: Any) -> None:
    """Have `app`'s consumer commit `limits(tps)` for the partitions that call names (a dict
    tp -> offset, or None for "nothing yet"), and Faust's own choice for the others. Patches
    faust's Consumer once per process (idempotent); the limits are per app."""
    from faust.transport.consumer import Consumer

    setattr(app, _LIMITS, limits)
    original = Consumer._filter_committable_offsets
    if getattr(original, _MARK, False):
        return

    def filter_committable_offsets(self: Any, tps: Any) -> dict[Any, int]:
        limits_of = getattr(self.app, _LIMITS, None)
        if limits_of is None:
            return original(self, tps)
        tps = list(tps)
        limits = limits_of(tps)
        offsets = original(self, [tp for tp in tps if tp not in limits])
        for tp, limit in limits.items():
            if limit is None:
                continue
            # Faust's acknowledgements below the limit are not needed any more: drop them, as
            # its own `_new_offset` does with the run it commits
            acked = self._acked.get(tp)
            if acked:
                acked.sort()
                cut = bisect.bisect_left(acked, limit)
                if cut:
                    self._acked_index[tp].difference_update(acked[:cut])
                    del acked[:cut]
            gaps = self._gap.get(tp)
            if gaps:
                gaps.chop(0, limit)
            if self._should_commit(tp, limit):
                offsets[tp] = limit
        return offsets

    setattr(filter_committable_offsets, _MARK, True)
    filter_committable_offsets.original = original  # type: ignore[attr-defined]
    Consumer._filter_committable_offsets = filter_committable_offsets  # type: ignore[method-assign]


async def faust_committed_offsets(app: Any, tps: Sequence[Any]) -> dict[Any, int | None]:
    """The group's committed offset of each partition, asked of the broker (None: none
    committed). Faust keeps its own copy (`Consumer._committed_offset`), but reads a committed 0
    as None and updates it only when it seeks. One OffsetFetch for all of them through the
    group coordinator, as aiokafka's `committed` makes for one partition (called per partition,
    a rebalance of 64 partitions waited for 64 round trips before the worker went on)."""
    thread = app.consumer._thread
    coordinator = thread._ensure_consumer()._coordinator
    found = await thread.call_thread(coordinator.fetch_committed_offsets, list(tps))
    return {tp: None if (m := found.get(tp)) is None or m.offset == -1 else m.offset
            for tp in tps}


# The source topics' messages without a Faust event each (streams.worker.source).
#
# Faust's conductor builds one callback per assigned partition (`Conductor._build_handler`,
# faust-streaming 0.15), which decodes the message into an event for each channel subscribed to
# the topic; the consumer's fetch loop awaits it for every message. For the partitions of the
# topics named here the callback is the worker's own.
_SOURCE = "_patient_twin_source_handler"


def faust_source_handler(app: Any, topics: Sequence[str], callback: Any) -> None:
    """Have `app`'s conductor hand every message of `topics` to `callback(message)` (a
    coroutine function) instead of to the channels subscribed to them. Patches faust's
    Conductor once per process (idempotent); the handler is per app."""
    from faust.transport.conductor import Conductor

    setattr(app, _SOURCE, (frozenset(topics), callback))
    original = Conductor._build_handler
    if getattr(original, _MARK, False):
        return

    def build_handler(self: Any, tp: Any, channels: Any) -> Any:
        handler = getattr(self.app, _SOURCE, None)
        if handler is not None and tp.topic in handler[0]:
            return handler[1]
        return original(self, tp, channels)

    setattr(build_handler, _MARK, True)
    build_handler.original = original  # type: ignore[attr-defined]
    Conductor._build_handler = build_handler  # type: ignore[method-assign]
