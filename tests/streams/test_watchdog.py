"""The dispatcher's watchdog: a patient whose partition no live worker holds is announced."""

from __future__ import annotations

import os
import signal
import time

import msgspec
import pytest
from kafka import KafkaConsumer, KafkaProducer

from streams import messages, supervise, topics
from streams.config import kafka_python_config, kafka_python_producer_config
from streams.registry import Registry
from streams.topics import partition_of
from streams.watchdog import STARTUP_GRACE_S, Coverage, Watchdog, heartbeat
from tests.conftest import admit, make_settings, settings_env, wait_for_stable_assignment

T0 = 1.9e9


def test_a_partition_is_unheld_after_the_silence_and_held_again_with_a_heartbeat():
    c = Coverage(4, started=T0)
    assert c.unheld(T0 + 10, 15) == {}  # nothing seen yet: the start-up grace
    assert c.unheld(T0 + STARTUP_GRACE_S, 15) == dict.fromkeys(range(4), T0)
    c.heartbeat("w1", T0 + 61, [0, 1])
    c.heartbeat("w2", T0 + 62, [2, 3, 99])  # a partition that does not exist is ignored
    assert c.unheld(T0 + 70, 15) == {}
    c.heartbeat("w1", T0 + 66, [0, 1])
    assert c.unheld(T0 + 78, 15) == {2: T0 + 62, 3: T0 + 62}  # w2 went silent
    c.heartbeat("w1", T0 + 79, [0, 1, 2, 3])  # w1 took them over
    assert c.unheld(T0 + 80, 15) == {}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _admit(reg: Registry, s, pid: str, event: str = "admit") -> None:
    rec = messages.PatientRecord(schema=messages.PATIENT_SCHEMA, patient_id=pid, event=event,
                                 ts=messages.utc(T0), ward="A", devices=[f"D-{pid}"])
    reg.apply(s.topic_patients, pid.encode(), msgspec.json.encode(rec))


def test_a_heartbeat_from_a_clock_ahead_counts_no_later_than_now():
    s = make_settings(9092, watchdog_silent_s=15.0)
    clock = Clock(T0 + 100)
    wd = Watchdog(s, clock=clock)
    # a worker whose clock runs an hour ahead, and then dies
    wd.apply(s.topic_workers, b"w1", heartbeat("w1", list(range(4)), T0 + 3700))
    clock.t = T0 + 116
    assert set(wd.coverage.unheld(clock.t, 15)) == set(range(4))


def test_watchdog_raises_once_per_admitted_patient_and_resolves():
    s = make_settings(9092, watchdog_silent_s=15.0)
    clock = Clock(T0)
    wd = Watchdog(s, clock=clock)
    pids = [f"P{i}" for i in range(12)]
    for p in pids:
        _admit(wd.registry, s, p)
    parts = {p: partition_of(p, s.kafka_partitions) for p in pids}
    lost = parts["P0"]
    others = [q for q in range(s.kafka_partitions) if q != lost]

    def beat(worker: str, at: float, held: list[int]) -> None:
        wd.apply(s.topic_workers, worker.encode(), heartbeat(worker, held, at))

    clock.t = T0 + 1
    beat("w1", T0 + 1, [lost])
    beat("w2", T0 + 1, others)
    clock.t = T0 + 10
    assert wd.check() == []
    clock.t = T0 + 12
    beat("w2", T0 + 12, others)  # w1 dies after its first heartbeat
    clock.t = T0 + 17
    raised = wd.check()
    assert sorted(e.patient_id for e in raised) == sorted(p for p in pids if parts[p] == lost)
    for e in raised:
        assert (e.kind, e.event, e.category, e.priority) == \
            ("monitoring_stopped", "raised", "technical", "high")
        assert e.alert_id == f"{e.patient_id}:monitoring_stopped:{int((T0 + 1) * 1000)}"
    assert wd.check() == []  # raised once
    _admit(wd.registry, s, raised[0].patient_id, "discharge")
    (gone,) = wd.check()
    assert gone.event == "resolved" and gone.alert_id == raised[0].alert_id
    clock.t = T0 + 20
    beat("w3", T0 + 20, [lost])
    beat("w2", T0 + 20, others)
    clock.t = T0 + 21
    back = wd.check()
    assert {e.alert_id for e in back} == {e.alert_id for e in raised[1:]}
    assert all(e.event == "resolved" and e.state == "resolved" for e in back)


def _ack(s, alert_id: str, pid: str, by: str = "nurse.kim", comment: str | None = None
         ) -> bytes:
    return messages.encode(messages.AlertAction(action="acknowledge", patient_id=pid, by=by,
                                                ts=messages.utc(T0), alert_id=alert_id,
                                                comment=comment))


def _stopped_watchdog() -> tuple[Watchdog, Clock, messages.AlertEvent]:
    """A watchdog that has just raised `monitoring_stopped` for P0 (its worker went silent)."""
    s = make_settings(9092, watchdog_silent_s=15.0)
    clock = Clock(T0)
    wd = Watchdog(s, clock=clock)
    _admit(wd.registry, s, "P0")
    wd.apply(s.topic_workers, b"w1", heartbeat("w1", list(range(s.kafka_partitions)), T0))
    clock.t = T0 + 20
    (raised,) = wd.check()
    return wd, clock, raised


def test_a_clinician_acknowledges_monitoring_stopped_and_it_stays_open_until_a_worker():
    """No worker holds this alert, so the watchdog answers the acknowledgement: one
    `acknowledged` event with who and why, then silence until a worker is back."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    wd.apply(s.topic_alert_actions, b"P0", _ack(s, raised.alert_id, "P0", comment="calling IT"))
    wd.apply(s.topic_alert_actions, b"P0", _ack(s, raised.alert_id, "P0", by="dr.lee"))
    clock.t = T0 + 25
    (acked,) = wd.check()
    assert (acked.event, acked.state, acked.alert_id) == ("acknowledged", "acknowledged",
                                                          raised.alert_id)
    assert (acked.by, acked.comment) == ("nurse.kim", "calling IT")  # the first one answered
    wd.apply(s.topic_alert_actions, b"P0", _ack(s, raised.alert_id, "P0", by="dr.lee"))
    assert wd.check() == []  # already acknowledged: nothing more, and still open
    wd.apply(s.topic_workers, b"w2", heartbeat("w2", list(range(s.kafka_partitions)), T0 + 30))
    clock.t = T0 + 31
    (back,) = wd.check()
    assert (back.event, back.state, back.alert_id) == ("resolved", "resolved", raised.alert_id)


def test_acknowledgements_the_watchdog_must_not_answer():
    """Crafted or stray actions: bytes that are no action, another patient's alert id under
    this patient's key, another kind's alert, an alert that is not open. None is answered and
    none stops the watchdog."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    other = raised.alert_id.replace("P0:", "P9:")
    for value in (b"\xff\x00 not json", b'{"action": "acknowledge"}', b"",
                  _ack(s, raised.alert_id, "P9"),  # P0's alert, claimed through P9
                  _ack(s, other, "P9"),  # P9 has no such alert
                  _ack(s, "P0:news2:1", "P0"),  # a worker's alert: the worker answers
                  _ack(s, raised.alert_id.replace(":monitoring_stopped:", ":no_data:"), "P0")):
        wd.apply(s.topic_alert_actions, b"P0", value)
    clock.t = T0 + 25
    assert wd.check() == []
    assert wd.acks == {}  # nothing kept for alerts that are not open


@pytest.mark.parametrize("order", ["action first", "answer first", "action last"])
def test_a_restarted_watchdog_does_not_answer_an_acknowledgement_twice(order: str):
    """Read back at start: the raised alert, the action and the watchdog's own answer (in any
    order across the two topics): no second `acknowledged`, and the alert still resolves."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    wd.apply(s.topic_alert_actions, b"P0", _ack(s, raised.alert_id, "P0"))
    (acked,) = wd.check()
    later = Watchdog(s, clock=clock)
    _admit(later.registry, s, "P0")
    later.apply(s.topic_workers, b"w1", heartbeat("w1", list(range(s.kafka_partitions)), T0))
    records = [(s.topic_alerts, messages.encode(raised)), (s.topic_alerts, messages.encode(acked))]
    action = (s.topic_alert_actions, _ack(s, raised.alert_id, "P0"))
    records = {"action first": [action, *records], "answer first": [records[0], records[1],
               action], "action last": [*records, action]}[order]
    # and a second dispatcher's copy of the raised alert, read after the answer
    records.append((s.topic_alerts, messages.encode(raised)))
    for topic, value in records:
        later.apply(topic, b"P0", value)
    clock.t = T0 + 26
    assert later.check() == []  # its partition is still unheld: nothing new to say
    later.apply(s.topic_workers, b"w2", heartbeat("w2", list(range(s.kafka_partitions)),
                                                   T0 + 27))
    clock.t = T0 + 28
    (back,) = later.check()
    assert back.event == "resolved" and back.alert_id == raised.alert_id


def test_a_watchdog_restarted_during_an_outage_keeps_the_alerts_it_read_back_open():
    """No heartbeat of the partition at all (no worker came back): in the start-up grace the
    partition is neither held nor yet unheld, and its open alert stays open."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    later = Watchdog(s, clock=clock)  # heartbeats gone from the topic, or never there
    _admit(later.registry, s, "P0")
    later.apply(s.topic_alerts, b"P0", messages.encode(raised))
    for dt in (1, 10, STARTUP_GRACE_S - 1):
        clock.t = T0 + 20 + dt
        assert later.check() == [], dt
    part = partition_of("P0", s.kafka_partitions)
    later.apply(s.topic_workers, b"w2", heartbeat("w2", [part], clock.t))
    clock.t += 1
    (back,) = later.check()
    assert back.event == "resolved" and back.alert_id == raised.alert_id


def test_an_answer_that_could_not_be_sent_is_sent_again_unchanged():
    """Kafka refused the `acknowledged` event: the next check makes the same event again (not
    one whose message says "acknowledged" twice), once."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    wd.apply(s.topic_alert_actions, b"P0", _ack(s, raised.alert_id, "P0", comment="on it"))
    clock.t = T0 + 25
    (first,) = wd.check()
    wd._unsent(first)
    clock.t = T0 + 30
    (again,) = wd.check()
    assert (again.event, again.by, again.comment, again.message) == \
        ("acknowledged", "nurse.kim", "on it", first.message)
    assert again.message.count("acknowledged") == 1
    assert wd.check() == []
    # a resolution that could not be sent is made again with the raised alert's own text
    wd.apply(s.topic_workers, b"w2", heartbeat("w2", list(range(s.kafka_partitions)), T0 + 31))
    clock.t = T0 + 32
    (back,) = wd.check()
    wd._unsent(back)
    assert wd.open["P0"].message == raised.message and wd.open["P0"].state == "acknowledged"
    (back2,) = wd.check()
    assert back2.event == "resolved" and wd.open == {}


def test_an_acknowledgement_under_another_patients_key_is_not_answered():
    """The dashboard writes an action under its patient's key; a record that names P0 under
    another key was not written by it."""
    wd, clock, raised = _stopped_watchdog()
    s = wd.settings
    wd.apply(s.topic_alert_actions, b"P9", _ack(s, raised.alert_id, "P0"))
    wd.apply(s.topic_alert_actions, None, _ack(s, raised.alert_id, "P0"))
    clock.t = T0 + 25
    assert wd.check() == [] and wd.acks == {}


def _alerts(s, want, timeout: float) -> list[messages.AlertEvent]:
    consumer = KafkaConsumer(s.topic_alerts, auto_offset_reset="earliest",
                             enable_auto_commit=False, **kafka_python_config(s))
    seen: list[messages.AlertEvent] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not want(seen):
            for recs in consumer.poll(timeout_ms=300).values():
                seen += [msgspec.json.decode(r.value, type=messages.AlertEvent) for r in recs]
    finally:
        consumer.close()
    return seen


def test_a_killed_worker_is_announced_to_subscribers_and_its_return_too(settings_factory,
                                                                        procs):
    port = supervise.free_port()
    s = settings_factory(worker_metrics_port=port, watchdog_silent_s=6.0)
    topics.ensure(s)
    admit(s, {"W1": "D-W1", "W2": "D-W2", "W3": "D-W3"})
    env = settings_env(s)
    worker = procs.start("worker", "worker", env=env)
    procs.start("dispatcher", "dispatcher", env=env)
    wait_for_stable_assignment(port, s.kafka_partitions, procs.log("worker"))
    time.sleep(8)  # heartbeats seen: nothing is announced while the worker lives
    assert [e for e in _alerts(s, lambda seen: False, 2) if e.kind == "monitoring_stopped"] == []
    os.kill(worker.pid, signal.SIGKILL)
    killed = time.monotonic()

    def stopped(seen):
        return {e.patient_id for e in seen if e.kind == "monitoring_stopped"
                and e.event == "raised"} == {"W1", "W2", "W3"}

    events = _alerts(s, stopped, 40)
    assert stopped(events), procs.log("dispatcher")[-3000:]
    took = time.monotonic() - killed
    assert took < 6 + 5 + 10, took  # the silence, the check interval, and the heartbeat's age
    # a nurse acknowledges W1's alert (what the dashboard's API puts on alert.actions): with its
    # worker dead, the dispatcher's watchdog answers
    (w1,) = [e for e in events if e.patient_id == "W1" and e.kind == "monitoring_stopped"]
    producer = KafkaProducer(**kafka_python_producer_config(s))
    producer.send(s.topic_alert_actions, key=b"W1", value=messages.encode(messages.AlertAction(
        action="acknowledge", patient_id="W1", by="nurse.kim", ts=messages.utc(time.time()),
        alert_id=w1.alert_id, comment="on it")))
    producer.flush()
    producer.close()

    def acknowledged(seen):
        return any(e.alert_id == w1.alert_id and e.event == "acknowledged" for e in seen)

    events = _alerts(s, acknowledged, 30)
    assert acknowledged(events), procs.log("dispatcher")[-3000:]
    (ack,) = [e for e in events if e.alert_id == w1.alert_id and e.event == "acknowledged"]
    assert (ack.by, ack.comment, ack.state) == ("nurse.kim", "on it", "acknowledged")
    procs.start("worker2", "worker", env={**env, "WORKER_METRICS_PORT": "0"})

    def resolved(seen):
        return {e.patient_id for e in seen if e.kind == "monitoring_stopped"
                and e.event == "resolved"} == {"W1", "W2", "W3"}

    events = _alerts(s, resolved, 90)
    assert resolved(events), procs.log("worker2")[-3000:]


def test_a_restarted_watchdog_resolves_the_alerts_raised_before_it():
    s = make_settings(9092, watchdog_silent_s=15.0)
    clock = Clock(T0)
    first = Watchdog(s, clock=clock)
    _admit(first.registry, s, "P0")
    part = partition_of("P0", s.kafka_partitions)
    first.apply(s.topic_workers, b"w1", heartbeat("w1", [part], T0))
    clock.t = T0 + 20
    (raised,) = first.check()
    # a new dispatcher reads the alerts topic back at start: the raised alert, and an
    # unrelated alert of another kind, and the worker's heartbeats once it is back
    later = Watchdog(s, clock=clock)
    _admit(later.registry, s, "P0")
    later.apply(s.topic_alerts, b"P0", messages.encode(raised))
    later.apply(s.topic_alerts, b"P0", messages.encode(msgspec.structs.replace(
        raised, alert_id="P0:no_data:1", kind="no_data")))
    clock.t = T0 + 30
    later.apply(s.topic_workers, b"w2", heartbeat("w2", [part], T0 + 30))
    (resolved,) = later.check()
    assert (resolved.alert_id, resolved.event) == (raised.alert_id, "resolved")
    assert later.check() == []
