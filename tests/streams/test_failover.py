"""Scale-out and faults on the real broker: two workers, one killed mid-stream; a restarted worker.

For every patient the number of readings applied must equal the number sent minus the intentional
duplicates: the twin keeps the last applied sequence number per device in the same table entry as
its state, so redelivery after a failover changes nothing.
"""

from __future__ import annotations

import signal
import threading
import time

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams import messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from tests.conftest import (
    admit,
    settings_env,
    wait_for_stable_assignment,
    wait_until,
    worker_assigned,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PATIENTS = [f"F{i:03d}" for i in range(20)]


def _reading(pid: str, seq: int, t0: float) -> bytes:
    return messages.encode(messages.reading(f"dev-{pid}", pid, seq, messages.utc(t0 + seq),
                                            {"hr": 70.0 + seq % 7, "spo2": 97.0}))


class Sender(threading.Thread):
    """Sends one reading per patient per round; every 10th round also resends the previous one."""

    def __init__(self, settings, rounds: range, pause: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.rounds, self.pause = settings, rounds, pause
        self.sent = 0
        self.t0 = time.time() - 3600

    def run(self) -> None:
        admit(self.settings, {pid: f"dev-{pid}" for pid in PATIENTS})
        p = KafkaProducer(linger_ms=5, **kafka_python_producer_config(self.settings))
        for k in self.rounds:
            for pid in PATIENTS:
                p.send(self.settings.topic_vitals_raw, key=pid.encode(),
                       value=_reading(pid, k, self.t0))
                if k % 10 == 0:  # an intentional duplicate (a gateway retry)
                    p.send(self.settings.topic_vitals_raw, key=pid.encode(),
                           value=_reading(pid, k, self.t0))
            self.sent = k
            time.sleep(self.pause)
        p.flush()
        p.close()


def _latest_states(settings) -> dict[str, messages.TwinState]:
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_python_config(settings))
    parts = [TopicPartition(settings.topic_twin_state, p)
             for p in sorted(c.partitions_for_topic(settings.topic_twin_state) or ())]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    latest: dict[str, messages.TwinState] = {}
    idle = 0
    while idle < 3:
        batch = c.poll(timeout_ms=300, max_records=20000)
        idle = 0 if batch else idle + 1
        for recs in batch.values():
            for r in recs:
                st = msgspec.json.decode(r.value, type=messages.TwinState)
                prev = latest.get(st.patient_id)
                if prev is None or st.readings_applied >= prev.readings_applied:
                    latest[st.patient_id] = st
    c.close()
    return latest


def _wait_for_counts(settings, expected: int, timeout: float) -> dict[str, int]:
    """Readings applied per patient, once every twin has accounted for `expected` readings
    (applied, or counted as lost in a sequence gap) or the timeout has passed."""
    deadline = time.monotonic() + timeout
    states: dict[str, messages.TwinState] = {}
    while time.monotonic() < deadline:
        states = {p: st for p, st in _latest_states(settings).items() if p in PATIENTS}
        if len(states) == len(PATIENTS) and all(
                st.readings_applied + st.sequence_gaps >= expected for st in states.values()):
            break
        time.sleep(1)
    return {p: st.readings_applied for p, st in states.items()}


def test_sigkill_of_one_of_two_workers_loses_nothing_and_applies_nothing_twice(
        settings_factory, procs):
    s = settings_factory()
    topics.ensure(s)
    ports = {"a": supervise.free_port(), "b": supervise.free_port()}
    env = {w: {**settings_env(s), "WORKER_METRICS_PORT": str(port)} for w, port in ports.items()}
    # One worker first, then a second one joining: the group rebalances and splits the partitions
    # (both starting at the same instant sometimes left the embedded broker's group half-formed).
    a = procs.start("worker-a", "worker", env=env["a"])
    Sender(s, range(1, 2), 0).run()
    assert len(_wait_for_counts(s, 1, timeout=60)) == len(PATIENTS), procs.log("worker-a")[-2500:]
    def split() -> bool:
        return (all(worker_assigned(p) > 0 for p in ports.values())
                and sum(worker_assigned(p) for p in ports.values()) == s.kafka_partitions)

    # Seen about once in twenty runs: the embedded broker leaves the two-worker group
    # half-formed. A supervisor would restart the worker that got nothing; so does the test.
    for attempt in range(3):
        b = procs.start(f"worker-b{attempt}", "worker", env=env["b"])
        if wait_until(split, timeout=60):
            break
        supervise.stop(b)
    assert split(), f"partitions never split: {[worker_assigned(p) for p in ports.values()]}"

    rounds = 200
    sender = Sender(s, range(2, rounds + 1), 0.05)
    sender.start()
    while sender.sent < 80:
        time.sleep(0.05)
    a.send_signal(signal.SIGKILL)  # mid-stream, no chance to commit or flush
    a.wait(10)
    sender.join(120)
    _wait_for_counts(s, rounds, timeout=120)
    states = _latest_states(s)
    assert set(states) == set(PATIENTS)
    # Nothing is applied twice: a redelivered reading is recognised by its sequence number.
    accounts = {p: (st.readings_applied, st.sequence_gaps) for p, st in states.items()}
    assert all(a <= rounds and a + g <= rounds for a, g in accounts.values()), accounts
    # every intentional duplicate (and any redelivery) was recognised, none applied
    assert all(st.duplicates >= rounds // 10 for st in states.values())
    # Exactly every reading sent, once: the new owner of a patient's readings recovers its twin
    # from the changelog partition with the same number (the table is keyed by the raw patient
    # id); messages the consumer dropped in the rebalance are re-read (streams/worker/offsets.py);
    # redeliveries are recognised by their sequence number.
    short = {p: (a, g) for p, (a, g) in accounts.items() if a != rounds}
    assert not short, (f"{sum(rounds - a for a, _ in short.values())} of "
                       f"{rounds * len(PATIENTS)} readings never applied, (applied, gaps): "
                       f"{short}\n{procs.log(f'worker-b{attempt}')[-3000:]}")


SICK = "S001"


def _send_sick(settings, seqs: range) -> None:
    """Readings of a patient whose NEWS2 is high from the first one (RCP 2017: RR 30, SpO2 84,
    SBP 85, HR 140 each score 3)."""
    admit(settings, {SICK: "dev-sick"})
    p = KafkaProducer(**kafka_python_producer_config(settings))
    t0 = time.time() - 60
    for k in seqs:
        r = messages.reading("dev-sick", SICK, k, messages.utc(t0 + k),
                             {"hr": 140.0, "rr": 30.0, "spo2": 84.0, "sbp": 85.0})
        p.send(settings.topic_vitals_raw, key=SICK.encode(), value=messages.encode(r))
    p.flush()
    p.close()


def _news2_events(settings) -> list[messages.AlertEvent]:
    c = KafkaConsumer(group_id=None, enable_auto_commit=False, **kafka_python_config(settings))
    parts = [TopicPartition(settings.topic_alerts, p)
             for p in sorted(c.partitions_for_topic(settings.topic_alerts) or ())]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    out, idle = [], 0
    while idle < 2:
        batch = c.poll(timeout_ms=300)
        idle = 0 if batch else idle + 1
        for recs in batch.values():
            out += [msgspec.json.decode(r.value, type=messages.AlertEvent) for r in recs]
    c.close()
    return [e for e in out if e.patient_id == SICK and e.kind == "news2"]


def test_restarted_worker_continues_every_twin_where_it_was(settings_factory, procs):
    s = settings_factory()
    topics.ensure(s)
    port = supervise.free_port()
    env = {**settings_env(s), "WORKER_METRICS_PORT": str(port)}
    # Readings are sent once the worker holds its partitions: this test is about the twin state
    # surviving a restart; readings dropped in a rebalance are the failover test's subject.
    w = procs.start("worker-1", "worker", env=env)
    wait_for_stable_assignment(port, s.kafka_partitions, "")
    Sender(s, range(1, 51), 0).run()
    _send_sick(s, range(1, 4))
    assert _wait_for_counts(s, 50, timeout=60) == {p: 50 for p in PATIENTS}
    assert wait_until(lambda: _news2_events(s), timeout=30)
    w.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0
    before = _latest_states(s)
    procs.start("worker-2", "worker", env=env)
    wait_for_stable_assignment(port, s.kafka_partitions, procs.log("worker-2")[-2000:])
    Sender(s, range(51, 81), 0).run()
    counts = _wait_for_counts(s, 80, timeout=60)
    assert counts == {p: 80 for p in PATIENTS}, procs.log("worker-2")[-3000:]
    # the sick patient's open alert continues on the new worker: no second "raised"
    _send_sick(s, range(4, 10))
    assert wait_until(lambda: _latest_states(s)[SICK].readings_applied == 9, timeout=30)
    events = _news2_events(s)
    assert [e.event for e in events].count("raised") == 1, [(e.event, e.alert_id)
                                                            for e in events]
    assert len({e.alert_id for e in events}) == 1
    after = _latest_states(s)
    for p in PATIENTS:
        # the estimate continued from the recovered twin, not from a fresh prior
        assert after[p].sd["hr"] <= before[p].sd["hr"] * 1.5
