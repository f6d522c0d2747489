"""The training debrief: trainees' actions timed against the NEWS2 escalation guidance (RCP 2017),
from the alert events and the audit trail of a training ward."""

from __future__ import annotations

from datetime import UTC, datetime

from streams import config
from streams.debrief import debrief
from streams.messages import AlertEvent, AuditRecord

T0 = 1_800_000_000.0


def ts(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


def ev(pid: str, alert: str, event: str, t: float, priority: str = "medium",
       kind: str = "news2", by: str | None = None, news2: int | None = 5) -> AlertEvent:
    return AlertEvent(alert_id=alert, patient_id=pid, ts=ts(t), event=event, kind=kind,
                      category="technical" if kind == "no_data" else "clinical",
                      priority=priority, message="m", news2=news2, by=by, raised_at=ts(0 if
                      alert.endswith("a") else 100), training=True)


def au(user: str, action: str, pid: str, t: float) -> AuditRecord:
    return AuditRecord(ts=ts(t), user=user, action=action, patient_id=pid)  # type: ignore[arg-type]


def test_times_to_recognise_and_escalate_against_the_guidance():
    events = [
        ev("P1", "P1:news2:a", "raised", 0),  # 5-6: urgent response expected
        ev("P1", "P1:news2:a", "escalated", 60, by="trainee1"),
        ev("P1", "P1:news2:a", "acknowledged", 70, by="trainee1"),
        ev("P2", "P2:news2:b", "raised", 100, priority="high", news2=8),  # emergency, missed
        ev("P2", "P2:news2:b", "escalated", 400, priority="high", news2=8),  # the engine's own
        ev("P3", "P3:no_data:a", "raised", 0, kind="no_data"),  # technical: not in the debrief
        ev("P4", "P4:news2_forecast:a", "raised", 0, priority="low", kind="news2_forecast"),
    ]
    audit = [
        au("trainee1", "view_patient", "P1", 30),
        au("instructor", "view_patient", "P2", 120),  # not a trainee: does not count
        au("trainee2", "view_patient", "P4", -5),  # before the alert: does not count
        au("trainee2", "observation", "P4", 50),
    ]
    d = debrief(events, audit, {"trainee1", "trainee2"})
    by_id = {r["alert_id"]: r for r in d["responses"]}
    assert set(by_id) == {"P1:news2:a", "P2:news2:b", "P4:news2_forecast:a"}
    p1 = by_id["P1:news2:a"]
    assert (p1["guidance"], p1["time_to_recognise_s"], p1["time_to_escalate_s"]) == (
        "urgent response", 30.0, 60.0)
    assert p1["met_guidance"] and not p1["missed"] and p1["escalated_by"] == "trainee1"
    p2 = by_id["P2:news2:b"]
    assert p2["guidance"] == "emergency response" and p2["missed"]
    assert not p2["met_guidance"] and p2["time_to_escalate_s"] is None  # the engine is no one
    p4 = by_id["P4:news2_forecast:a"]
    assert p4["guidance"] == "awareness" and p4["time_to_recognise_s"] == 50.0
    assert p4["met_guidance"] and not p4["escalation_expected"]
    assert d["summary"] == {"clinical_alerts": 3, "recognised": 2, "missed": 1,
                            "escalation_expected": 2, "escalated_as_expected": 1,
                            "median_time_to_recognise_s": 40.0,
                            "median_time_to_escalate_s": 60.0}
    # the timeline interleaves the twin's alerts and the trainees' actions in time order
    assert [x["what"] for x in d["timeline"]["P1"]] == [
        "alert news2 raised", "view_patient", "alert news2 escalated",
        "alert news2 acknowledged"]


def test_a_training_ward_has_topics_of_its_own():
    """TRAINING=true puts every topic and the consumer group in their own namespace, so a
    training worker never reads or writes a real patient's topic."""
    real = config.load({})
    train = config.load({"TRAINING": "true"})
    topics = [f for f in config.FIELDS if f.startswith("topic_")]
    assert topics and all(getattr(train, f) == "training." + getattr(real, f) for f in topics)
    assert train.app_id == real.app_id + "-training"
    assert not set(getattr(train, f) for f in topics) & set(getattr(real, f) for f in topics)
    again = config.training_namespace(train)  # idempotent
    assert again == train
