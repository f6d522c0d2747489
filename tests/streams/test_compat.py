"""The library internals `streams.compat` uses are there in the pinned versions."""

from importlib.metadata import version

import pytest

from streams import compat


@pytest.mark.parametrize("package", sorted(compat.PINNED))
def test_installed_versions_are_the_ones_the_internals_were_written_against(package):
    assert version(package).startswith(compat.PINNED[package] + "."), \
        f"{package} {version(package)}: check streams/compat.py against it, then update PINNED"


def test_the_internals_exist():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
    from kafka.cluster import ClusterMetadata
    from kafka.consumer.group import KafkaConsumer

    assert callable(Producer._ensure_producer)
    assert callable(AIOKafkaConsumerThread._create_worker_consumer)
    # faust_committed_offsets: aiokafka's own `committed` is the coordinator's fetch for one
    assert callable(AIOKafkaConsumerThread._ensure_consumer)
    assert callable(AIOKafkaConsumerThread.call_thread)
    import inspect

    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert "self._coordinator.fetch_committed_offsets([partition])" in inspect.getsource(
        AIOKafkaConsumer.committed)
    assert "committed == -1" in inspect.getsource(AIOKafkaConsumer.committed)
    assert callable(GroupCoordinator.fetch_committed_offsets)
    # faust_source_handler and streams.worker.source
    import inspect

    from faust.sensors.monitor import Monitor
    from faust.transport.conductor import Conductor
    from faust.transport.consumer import Consumer
    from faust.types.tuples import Message
    from mode.utils.queues import FlowControlEvent

    assert "self._build_handler(" in inspect.getsource(Conductor._update_callback_map)
    assert "_unacked_messages" in inspect.getsource(Consumer.wait_empty)
    assert callable(FlowControlEvent.manage_queue) and "generation_id" in Message.__slots__
    assert "self.stream_inbound_time[tp]" in inspect.getsource(Monitor.on_stream_event_in)
    assert callable(ClusterMetadata.topic_id)
    assert "_client" in KafkaConsumer.__init__.__code__.co_names
    # murmur2 is Kafka's: the Java client's test vectors (kafka-python's own tests use them)
    assert compat.murmur2(b"21") == -973932308 & 0xFFFFFFFF
    assert compat.murmur2(b"foobar") == -790332482 & 0xFFFFFFFF


def test_aiokafka_reads_the_fetch_wait_it_is_given():
    import inspect

    from aiokafka import AIOKafkaConsumer

    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer)


def test_topic_ids_of_a_consumer_without_them_are_unknown():
    assert compat.kafka_topic_ids(object(), ["a"]) == {"a": None}


def test_faust_hands_each_message_over_through_wait_first_as_the_direct_handover_expects():
    """The one call `faust_direct_handover` shortcuts is still Faust's per-message hand-over."""
    import inspect

    from faust.transport.consumer import Consumer

    src = " ".join(inspect.getsource(Consumer._drain_messages).split())
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in src


def test_the_direct_handover_returns_what_wait_first_would_and_falls_back_when_it_waits():
    import asyncio

    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    compat.faust_direct_handover()
    compat.faust_direct_handover()  # idempotent: patched once
    patched = Consumer.wait_first
    assert patched.original is not patched and not hasattr(patched.original, "original")

    calls: list[tuple] = []

    class Fake:  # what the patch reads of a consumer, and the original's stand-in
        suspend_flow = asyncio.Event()
        _stopped = asyncio.Event()
        _crashed = asyncio.Event()

    async def original(self, *coros, timeout=None):  # noqa: ANN001, ANN002, ANN202
        calls.append(coros)
        results = [await c for c in coros[:1]]
        for c in coros[1:]:
            c.close()
        return WaitResults(list(coros[:1]), results, False)

    async def run() -> None:
        flow = asyncio.Event()

        async def quick() -> int:  # the usual case: the event goes into the queue at once
            return 7

        async def slow() -> int:  # the stream's queue is full: the callback has to wait
            await asyncio.sleep(0.01)
            return 8

        saved = patched.original
        patched.original = original
        try:
            # the patch closes over the original it found; call through it with a stand-in
            fast = await _call(patched, Fake(), quick(), flow.wait())
            assert fast.results == [7] and calls == []  # no task, no original call
            waited = await _call(patched, Fake(), slow(), flow.wait())
            assert waited.results == [8] and len(calls) == 1
        finally:
            patched.original = saved

    asyncio.run(run())


async def _call(fn, self, *coros):  # noqa: ANN001, ANN002, ANN202
    return await fn(self, *coros)


def _faust_consumer_state(committed):
    """What Faust's Consumer keeps for its commits, on a stand-in object, with Faust's own
    `_new_offset` and `_should_commit` bound to it (a real Consumer needs a running app)."""
    import types
    from collections import defaultdict

    from faust.transport.consumer import Consumer
    from intervaltree import IntervalTree

    c = types.SimpleNamespace(app=types.SimpleNamespace(), _acked=defaultdict(list),
                              _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree),
                              _committed_offset=defaultdict(lambda: None, committed))
    c._new_offset = types.MethodType(Consumer._new_offset, c)
    c._should_commit = types.MethodType(Consumer._should_commit, c)
    return c


def _ack(c, tp, offsets):
    c._acked[tp].extend(offsets)
    c._acked_index[tp].update(offsets)


def test_faust_commits_past_offsets_nobody_applied_and_the_limits_do_not():
    import types

    from faust.transport.consumer import Consumer

    compat.faust_commit_limits(types.SimpleNamespace(), lambda tps: {})  # patch the class
    compat.faust_commit_limits(types.SimpleNamespace(), lambda tps: {})  # idempotent
    commit = Consumer._filter_committable_offsets
    original = commit.original
    # Faust's rule: nothing committed yet and 25-49 acknowledged (the run after a hole of
    # skipped, re-read-pending messages 0-24) commits 50; one offset missing after a
    # committed 31 is let through too
    c = _faust_consumer_state({})
    _ack(c, "a", range(25, 50))
    assert original(c, ["a"]) == {"a": 50}
    c = _faust_consumer_state({"b": 31})
    _ack(c, "b", range(32, 40))
    assert original(c, ["b"]) == {"b": 40}
    # with the worker's limits: "a" only as far as it applied, "b" not at all, "c" Faust's way
    c = _faust_consumer_state({"b": 31})
    _ack(c, "a", range(25, 50))
    _ack(c, "b", range(32, 40))
    _ack(c, "c", range(0, 3))
    c.app._patient_twin_commit_limits = lambda tps: {"a": 30, "b": 31}
    assert commit(c, ["a", "b", "c"]) == {"a": 30, "c": 3}
    assert c._acked["a"] == list(range(30, 50)) and 29 not in c._acked_index["a"]
    c._committed_offset["a"] = 30
    assert commit(c, ["a"]) == {}  # no further than committed
    c.app._patient_twin_commit_limits = lambda tps: {"a": None}
    assert commit(c, ["a"]) == {}


def test_kafka_python_checksums_in_c():
    """kafka-python falls back to a pure-Python CRC-32C without the `crc32c` package (its
    `[crc32c]` extra, in pyproject.toml), silently: every client then checksums each record
    batch in Python (a third of a dashboard's time following twin.state)."""
    from kafka.record import util

    assert util.crc32c_c is not None and util._crc32c is util.crc32c_c
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
