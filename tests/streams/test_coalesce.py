"""Coalesced outputs (streams.worker.coalesce): the gate's timing and the record cache's holding
of offsets, in-process; then the worker on the real broker: a patient's twin.state at most every
interval but at once on a band change, and a SIGKILL while the coalesced changelog is unwritten
losing no reading and applying none twice."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams import messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from streams.worker.coalesce import RecordCache, StateGate
from tests.conftest import (
    admit,
    settings_env,
    wait_for_stable_assignment,
    wait_until,
    worker_metric,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _state(pid: str, band: str = "low", applied: int = 1, ts: float = 0.0
           ) -> messages.TwinState:
    """A twin state of `pid` whose latest reading is dated `ts` s after 2026-01-01."""
    return msgspec.convert({
        "patient_id": pid, "ts": messages.utc(1767225600.0 + ts), "units": {}, "estimate": {},
        "sd": {},
        "raw": {}, "age_s": {}, "forecasts": [], "derived": {}, "minutes_to_band": {},
        "news2": 0, "news2_raw": 0, "news2_complete": False, "news2_band": band,
        "news2_components": {}, "readings_applied": applied, "artifacts": 0, "missing": 0,
        "duplicates": 0, "late": 0, "sequence_gaps": 0, "battery": None, "quality": None},
        messages.TwinState)


def test_a_patient_gets_at_most_one_state_per_interval_and_the_latest_waits() -> None:
    clock = Clock()
    gate = StateGate(1.0, clock=clock)
    sent, until = gate.offer([_state("a", applied=1), _state("b", applied=1)])
    assert [s.patient_id for s in sent] == ["a", "b"] and until is None  # first states at once
    clock.t += 0.3
    sent, until = gate.offer([_state("a", applied=2)])
    assert sent == [] and until == pytest.approx(101.0)
    clock.t += 0.3
    sent, _ = gate.offer([_state("a", applied=3)])
    assert sent == []
    assert gate.due() == []  # not its turn yet
    clock.t = 101.0
    due = gate.due()
    assert [(s.patient_id, s.readings_applied) for s in due] == [("a", 3)]  # the latest only
    assert gate.due() == []
    clock.t += 0.5
    assert gate.offer([_state("a", applied=4)])[0] == []  # the interval counts from the last send


def test_a_held_state_that_a_newer_one_replaces_is_never_built() -> None:
    from streams.worker.process import StateRows

    built: list[tuple[int, int]] = []

    def batch(n: int, pids: list[str], ts: float) -> StateRows:
        def make(idx: list[int]) -> list[messages.TwinState]:
            built.extend((n, i) for i in idx)
            return [_state(pids[i], applied=n, ts=ts) for i in idx]
        return StateRows(pids, [1767225600.0 + ts] * len(pids), ["low"] * len(pids),
                         [None] * len(pids), make)

    clock = Clock()
    gate = StateGate(2.0, clock=clock)  # readings every second, a state every 2 s
    assert [s.readings_applied for s in gate.offer(batch(1, ["a", "b"], 0.0))[0]] == [1, 1]
    for n in (2, 3, 4, 5):  # held, replaced; 3 and 5 span the interval since the last sent
        clock.t += 1.0
        gate.offer(batch(n, ["a", "b"], n - 1.0))
    clock.t += 1.0
    assert gate.due() == []  # 2 and 4 were replaced by 3 and 5, which went at once
    assert sorted(built) == [(1, 0), (1, 1), (3, 0), (3, 1), (5, 0), (5, 1)]
    assert gate.offer(batch(6, ["a", "b"], 5.0))[0] == []  # held, until 2 s after 5 went
    clock.t += 1.0
    assert [s.readings_applied for s in gate.due()] == [6, 6]  # its turn came: built then
    assert sorted(built)[-2:] == [(6, 0), (6, 1)]


def test_a_state_that_cannot_be_built_is_left_out_and_the_others_go() -> None:
    from streams.worker.process import StateRows

    def make(idx: list[int]) -> list[messages.TwinState]:
        if 1 in idx:  # a bug met by one patient's state only
            raise ValueError("cannot build")
        return [_state(pids[i]) for i in idx]

    pids = ["a", "b", "c"]
    rows = StateRows(pids, [1767225600.0] * 3, ["low"] * 3, [None] * 3, make)
    sent, _ = StateGate(1.0, clock=Clock()).offer(rows)
    assert [s.patient_id for s in sent] == ["a", "c"] and rows.failed == 1


def test_a_band_change_an_urgent_patient_and_a_forgotten_one_go_at_once() -> None:
    clock = Clock()
    gate = StateGate(5.0, clock=clock)
    gate.offer([_state("a"), _state("b"), _state("c")])
    clock.t += 0.1
    sent, _ = gate.offer([_state("a", band="medium", applied=2), _state("b", applied=2),
                          _state("c", applied=2)], urgent={"b"})
    assert sorted(s.patient_id for s in sent) == ["a", "b"]
    assert list(gate.waiting) == ["c"]
    gate.forget(["c"])
    clock.t += 0.1
    assert [s.patient_id for s in gate.offer([_state("c", applied=3)])[0]] == ["c"]
    # a band change replaces a waiting state and goes at once; nothing of it is left waiting
    gate.offer([_state("a", band="medium", applied=3)])
    assert [s.readings_applied for s in gate.offer([_state("a", band="high", applied=4)])[0]] \
        == [4]
    assert gate.due(everything=True) == []


def _run(arrivals: list[tuple[float, float]], interval: float = 1.0
         ) -> list[tuple[float, float]]:
    """Offer one state per (arrival on the worker's clock, reading time), polling the held ones
    every 10 ms as the worker's timer does: (reading time, delay until it went out) per state
    that went out."""
    clock = Clock()
    gate = StateGate(interval, clock=clock)
    out: list[tuple[float, float]] = []
    arrived: dict[float, float] = {}
    pending = sorted(arrivals)
    t = pending[0][0]
    while pending or gate.waiting:
        clock.t = t
        while pending and pending[0][0] <= t + 1e-9:
            at, ts = pending.pop(0)
            arrived[round(ts, 3)] = at
            sent, _ = gate.offer([_state("a", ts=ts)])
            out += [(round(st.ts.timestamp() - 1767225600.0, 3), 0.0) for st in sent]
        for st in gate.due():
            ts = round(st.ts.timestamp() - 1767225600.0, 3)
            out.append((ts, round(t - arrived[ts], 3)))
        t = round(t + 0.01, 2)
    return out


def test_a_device_reading_once_an_interval_is_not_held_by_batch_jitter() -> None:
    """Readings a second apart on the device's clock reach the gate up to 0.2 s early or late
    (batches), and one batch comes 0.6 s late. Each state goes out at once, but for
    the one after the late batch (held at most half an interval); the delay does not stay."""
    rng = np.random.default_rng(3)
    jitter = rng.uniform(-0.2, 0.2, 60)
    jitter[30] = 0.6
    arrivals = [(100.0 + k + round(float(jitter[k]), 2), float(k)) for k in range(60)]
    out = _run(arrivals)
    delays = dict(out)
    assert sorted(delays) == [float(k) for k in range(60)]  # none was replaced: one each
    held = {k: d for k, d in delays.items() if d > 0}
    assert set(held) <= {31.0} and max(held.values(), default=0.0) <= 0.3 + 1e-9


def test_the_old_wall_clock_gate_kept_every_later_state_late() -> None:
    """The same arrivals with the readings all dated alike (only the worker's clock to go by,
    the gate before session 17): after the late batch every state waits, about as long as the
    batch was late. This is the delay the reading-time rule removes."""
    rng = np.random.default_rng(3)
    jitter = rng.uniform(-0.4, 0.4, 60)
    jitter[30] = 1.0
    clock = Clock()
    gate = StateGate(1.0, clock=clock)
    sent_at: list[float] = []
    for k in range(60):
        clock.t = 100.0 + k + round(float(jitter[k]), 2)
        if gate.offer([_state("a", applied=k)])[0]:
            sent_at.append(clock.t)
        clock.t += 0.999  # the held state's turn, before the next reading arrives
        if gate.due():
            sent_at.append(clock.t)
    gaps = np.diff(sent_at)
    assert (gaps >= 1.0 - 1e-9).all()  # never two within the interval: what it guaranteed
    late = [t - (100.0 + k) for k, t in enumerate(sent_at) if k > 31]
    assert np.median(late) >= 0.9  # ... at the price of a second on each later reading


def test_a_fast_device_gets_one_state_per_interval_of_its_readings() -> None:
    """Five readings a second, dated five a second: a state a second, the latest one."""
    arrivals = [(100.0 + k / 5, k / 5) for k in range(50)]
    out = _run(arrivals)
    sent = [ts for ts, _ in out]
    assert sent == [float(k) for k in range(10)] + [9.8]
    # the last one waited its turn on the worker's clock: the latest always goes out in the end
    assert out[-1][1] == pytest.approx(0.2)


def test_a_replayed_buffer_gets_at_most_two_states_an_interval() -> None:
    """A gateway replays an hour it buffered, 100 readings a second dated a second apart (or a
    device's clock races): the reading time alone would send them all; the flood guard lets
    out one each half interval of the worker's clock."""
    arrivals = [(100.0 + k / 100, float(k)) for k in range(300)]
    out = _run(arrivals)
    assert 6 <= len(out) <= 8 and out[-1][0] == 299.0


def test_a_device_stamping_a_few_ms_short_of_the_interval_is_not_held() -> None:
    """Timestamps a second apart give or take 5 ms (a device's clock wobbles) count as an
    interval of readings: nothing is held."""
    rng = np.random.default_rng(5)
    stamps = np.arange(60.0) + np.round(rng.uniform(-0.005, 0.005, 60), 3)
    out = _run([(100.0 + k, float(stamps[k])) for k in range(60)])
    assert len(out) == 60 and max(d for _, d in out) == 0.0


def test_a_held_state_overtaken_by_one_due_sooner_goes_out_once_at_the_sooner_time() -> None:
    """Held for a full interval (its readings span less), then a newer state whose readings
    span an interval: it replaces the held one, is due at half an interval, and that is what
    `offer` says (the batch's offsets wait until then); one send, of the newer state."""
    clock = Clock()
    gate = StateGate(1.0, clock=clock)
    gate.offer([_state("a", ts=0.0)])
    clock.t = 100.1
    sent, until = gate.offer([_state("a", applied=2, ts=0.3)])
    assert sent == [] and until == pytest.approx(101.0)
    clock.t = 100.2
    sent, until = gate.offer([_state("a", applied=3, ts=1.0)])
    assert sent == [] and until == pytest.approx(100.5)
    clock.t = 100.5
    assert [s.readings_applied for s in gate.due()] == [3]
    clock.t = 101.0
    assert gate.due() == [] and gate.waiting == {}  # the stale turn at 101 sends nothing


def test_events_are_released_only_up_to_the_time_their_states_were_sent() -> None:
    """The worker asks the gate for due states and then releases events: with one time for
    both, a batch whose held state became due in between keeps its events until its state is
    sent (a crash then re-reads them instead of losing that state)."""
    clock = Clock()
    gate = StateGate(1.0, clock=clock)
    cache = RecordCache(10.0, clock=clock)
    gate.offer([_state("a", ts=0.0)])
    clock.t = 100.3
    _, until = gate.offer([_state("a", applied=2, ts=0.3)])
    msg = _Message()
    cache.hold([_Event(msg)], until)
    cache.take()
    cache.written()
    clock.t = 100.999
    asked = clock.t
    assert gate.due(now=asked) == []  # not yet its turn
    clock.t = 101.001  # the state became due after the gate was asked
    assert cache.release(now=asked) == 0 and msg.refcount == 2
    assert [s.readings_applied for s in gate.due(now=clock.t)] == [2]
    assert cache.release(now=clock.t) == 1 and msg.refcount == 1


def test_zero_interval_sends_every_state() -> None:
    gate = StateGate(0.0, clock=Clock())
    for k in range(3):
        assert len(gate.offer([_state("a", applied=k)])[0]) == 1


@dataclass
class _Message:
    refcount: int = 1
    acks: list[int] = field(default_factory=list)
    tp: str = "a"
    offset: int = 0

    def incref(self) -> None:
        self.refcount += 1


@dataclass
class _Event:
    message: _Message

    def ack(self) -> None:
        self.message.refcount -= 1


def test_events_stay_unacknowledged_until_their_records_are_written_and_states_sent() -> None:
    clock = Clock()
    cache = RecordCache(2.0, clock=clock)
    first = [_Event(_Message()) for _ in range(3)]
    cache.put({b"a": b"1", b"b": b"1"})
    cache.hold(first)
    cache.put({b"a": b"2"})  # the latest record of a key wins
    second = [_Event(_Message())]
    cache.hold(second, ready_at=clock.t + 5.0)  # a state it held back is due in 5 s
    assert all(ev.message.refcount == 2 for ev in first + second)
    assert not cache.due() and cache.release() == 0
    clock.t += 2.0
    assert cache.due()
    records = cache.take()
    assert records == {b"a": b"2", b"b": b"1"}
    third = [_Event(_Message())]
    cache.put({b"c": b"1"})  # while the write is in flight
    cache.hold(third)
    assert cache.release() == 0  # nothing acknowledged before the write is
    cache.written()
    assert cache.release() == 3  # the first batch; the second waits for its state
    assert [ev.message.refcount for ev in first + second + third] == [1, 1, 1, 2, 2]
    clock.t += 5.0
    assert cache.release() == 1  # its state is out now; the third's record is not written
    assert cache.due() and cache.take() == {b"c": b"1"}
    cache.written()
    assert cache.release(everything=True) == 1 and cache.events_held == 0
    assert cache.since is None and not cache.due()


def test_the_lowest_held_offset_per_partition_is_what_a_commit_may_not_pass() -> None:
    clock = Clock()
    cache = RecordCache(2.0, clock=clock)
    cache.hold([_Event(_Message(tp="a", offset=o)) for o in (7, 5, 6)])
    cache.hold([_Event(_Message(tp="a", offset=3)), _Event(_Message(tp="b", offset=9))],
               ready_at=clock.t + 100.0)
    assert cache.lowest() == {"a": 3, "b": 9}
    cache.take()
    cache.written()
    assert cache.release() == 3  # the second batch waits for its held state
    assert cache.lowest() == {"a": 3, "b": 9}
    assert cache.release(everything=True) == 2 and cache.lowest() == {}


# On the real broker

PID = "G1"


def _send(s, producer: KafkaProducer, pid: str, seqs, t0: float, vals: dict[str, float],
          every_s: float = 1.0) -> None:
    """Readings with sequence numbers `seqs`, number k dated `t0 + k * every_s`."""
    for k in seqs:
        msg = messages.reading(f"dev-{pid}", pid, k, messages.utc(t0 + k * every_s), vals)
        producer.send(s.topic_vitals_raw, key=pid.encode(), value=messages.encode(msg))
    producer.flush()


def _states(s, start: dict[int, int] | None = None) -> list[tuple[float, messages.TwinState]]:
    """Every twin.state (its record's time in seconds, the state) from `start` (partition ->
    offset; default the beginning)."""
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_python_config(s))
    parts = [TopicPartition(s.topic_twin_state, p) for p in range(s.kafka_partitions)]
    c.assign(parts)
    for tp in parts:
        c.seek(tp, (start or {}).get(tp.partition, 0))
    out: list[tuple[float, messages.TwinState]] = []
    idle = 0
    while idle < 3:
        batch = c.poll(timeout_ms=300, max_records=20000)
        idle = 0 if batch else idle + 1
        for recs in batch.values():
            out.extend((r.timestamp / 1000, msgspec.json.decode(r.value, type=messages.TwinState))
                       for r in recs)
    c.close()
    return sorted(out, key=lambda x: x[0])


def _ends(s) -> dict[int, int]:
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_python_config(s))
    parts = [TopicPartition(s.topic_twin_state, p) for p in range(s.kafka_partitions)]
    ends = {tp.partition: n for tp, n in c.end_offsets(parts).items()}
    c.close()
    return ends


@pytest.mark.broker
@pytest.mark.slow
def test_twin_state_at_most_every_interval_but_at_once_on_a_band_change(settings_factory, procs):
    interval = 4.0
    s = settings_factory(twin_state_interval_s=interval)
    topics.ensure(s)
    port = supervise.free_port()
    procs.start("worker", "worker", env={**settings_env(s), "WORKER_METRICS_PORT": str(port)})
    wait_for_stable_assignment(port, s.kafka_partitions, "")
    admit(s, {PID: f"dev-{PID}"})
    producer = KafkaProducer(**kafka_python_producer_config(s))
    t0 = time.time() - 600
    stable = {"hr": 72.0, "rr": 16.0, "sbp": 124.0, "spo2": 97.0}
    try:
        # a stable patient on a device reading every 0.2 s for 4 s: twenty readings, states
        # held back
        for k in range(1, 21):
            _send(s, producer, PID, [k], t0, stable, every_s=0.2)
            time.sleep(0.2)
        assert wait_until(lambda: any(st.readings_applied == 20 for _, st in _states(s)),
                          timeout=20), procs.log("worker")[-3000:]
        calm = _states(s)
        # then deteriorating fast, in one burst
        sick = time.time()
        _send(s, producer, PID, range(21, 61), t0, {"hr": 140.0, "rr": 28.0, "sbp": 86.0,
                                                   "spo2": 90.0})
        assert wait_until(lambda: any(st.readings_applied == 60 for _, st in _states(s)),
                          timeout=30), procs.log("worker")[-3000:]
    finally:
        producer.close()
    states = _states(s)
    first_band = calm[0][1].news2_band
    changed = [(at, st) for at, st in states if st.news2_band != first_band]
    assert changed, [st.news2_band for _, st in states]
    last_calm_at = max(at for at, st in states if st.news2_band == first_band and at < sick)
    # at once: well before the interval after the state before it
    assert changed[0][0] - sick < 2.0 and changed[0][0] - last_calm_at < interval
    # twenty readings in four seconds gave at most two states: the first and one a turn later
    assert 1 <= len(calm) <= 2 and calm[-1][1].readings_applied >= 1
    assert len(states) < 60 / 3
    # between two states of the same band (no alert changed, see below) at least the interval
    alerts_at = {st.readings_applied for _, st in states}
    bands = [(at, st.news2_band) for at, st in states]
    for (a, band_a), (b, band_b) in zip(bands, bands[1:], strict=False):
        if band_a == band_b and b < sick:
            assert b - a >= interval - 0.1, (bands, alerts_at)
    assert states[-1][1].readings_applied == 60  # the latest state always comes in the end


@pytest.mark.broker
@pytest.mark.slow
def test_sigkill_before_the_coalesced_changelog_is_written_loses_nothing(settings_factory,
                                                                         procs):
    # a long commit interval: the kill comes while every twin record is still in the cache
    s = settings_factory(worker_commit_interval_s=60.0)
    topics.ensure(s)
    port = supervise.free_port()
    env = {**settings_env(s), "WORKER_METRICS_PORT": str(port)}
    w = procs.start("worker-1", "worker", env=env)
    wait_for_stable_assignment(port, s.kafka_partitions, "")
    pids = [f"K{i}" for i in range(8)]
    admit(s, {p: f"dev-{p}" for p in pids})
    producer = KafkaProducer(**kafka_python_producer_config(s))
    t0 = time.time() - 600
    try:
        for k in range(1, 31):
            for p in pids:
                msg = messages.reading(f"dev-{p}", p, k, messages.utc(t0 + k), {"hr": 70.0})
                producer.send(s.topic_vitals_raw, key=p.encode(), value=messages.encode(msg))
        producer.flush()

        def latest(start=None) -> dict[str, messages.TwinState]:
            out: dict[str, messages.TwinState] = {}
            for _, st in _states(s, start):
                if st.readings_applied >= out.get(st.patient_id, st).readings_applied:
                    out[st.patient_id] = st
            return out

        assert wait_until(lambda: len(st := latest()) == len(pids) and all(
            x.readings_applied == 30 for x in st.values()), timeout=30), \
            procs.log("worker-1")[-3000:]
        # every reading applied and published, none of it in the changelog yet
        assert worker_metric(port, "patient_twin_changelog_records_total") == 0.0
        w.send_signal(signal.SIGKILL)
        w.wait(10)
        start = _ends(s)
        procs.start("worker-2", "worker", env=env)
        wait_for_stable_assignment(port, s.kafka_partitions, procs.log("worker-2")[-2000:])
        # ten more rounds: the new worker must end at exactly 40 applied per twin
        for k in range(31, 41):
            for p in pids:
                msg = messages.reading(f"dev-{p}", p, k, messages.utc(t0 + k), {"hr": 70.0})
                producer.send(s.topic_vitals_raw, key=p.encode(), value=messages.encode(msg))
        producer.flush()
    finally:
        producer.close()
    assert wait_until(lambda: len(st := latest(start)) == len(pids) and all(
        x.readings_applied >= 40 for x in st.values()), timeout=60), \
        procs.log("worker-2")[-3000:]
    after = latest(start)
    # the first 30 read again from uncommitted offsets onto fresh twins, applied once each
    assert {p: (st.readings_applied, st.duplicates, st.sequence_gaps)
            for p, st in after.items()} == {p: (40, 0, 0) for p in pids}
