"""The debrief of a training session: what happened to each simulated patient, what the trainees
did, and how that compares with the NEWS2 escalation guidance.

Guidance (Royal College of Physicians, National Early Warning Score (NEWS) 2, 2017, Chart 4 and
Table 2, "clinical response"): an aggregate score of 5-6, or 3 in any single parameter (a "red
score"), calls for an **urgent response** (the registered nurse immediately informs the medical
team caring for the patient; urgent assessment by a clinician); 7 or more for an **emergency
response** (immediately informing the medical team, emergency assessment by a team with
critical-care competencies). In the product those are the `news2` alerts of priority medium and
high (docs/alerts.md). The guidance names who responds, not a number of minutes, so the debrief
reports the times and whether the expected escalation happened, and sets no minute target of its
own.

From the training ward's topics (`Settings.training`): the alert events (what the twin raised,
who acknowledged or escalated) and the audit trail (who opened which patient, entered an
observation, acknowledged, escalated).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from streams.config import Settings
from streams.messages import AlertEvent, AuditRecord

GUIDANCE = {"medium": "urgent response", "high": "emergency response"}
# what a trainee can do that shows they recognised a patient's deterioration
RECOGNISE = ("view_patient", "acknowledge", "escalate", "observation")


def _ts(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


def _since(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def debrief(events: Iterable[AlertEvent], audit: Iterable[AuditRecord],
            trainees: set[str] | None = None) -> dict[str, Any]:
    """The debrief as a JSON-ready dict: per patient a timeline, and per clinical alert the
    guidance it called for, when a trainee first recognised it (opened the patient, entered an
    observation, acknowledged or escalated after it was raised: never is "missed"), when one
    escalated it, and whether that met the guidance; then a summary. trainees: whose actions
    count (None: everyone's)."""
    audit = sorted((a for a in audit if trainees is None or a.user in trainees),
                   key=lambda a: a.ts)
    events = sorted(events, key=lambda e: e.ts)
    timeline: dict[str, list[dict[str, Any]]] = {}
    alerts: dict[str, dict[str, Any]] = {}
    for e in events:
        timeline.setdefault(e.patient_id, []).append({
            "t": e.ts.isoformat(), "what": f"alert {e.kind} {e.event}", "priority": e.priority,
            "by": e.by, "news2": e.news2})
        if e.category != "clinical":
            continue
        a = alerts.setdefault(e.alert_id, {
            "alert_id": e.alert_id, "patient_id": e.patient_id, "kind": e.kind,
            "raised_at": _ts(e.raised_at) or e.ts.timestamp(), "priority": e.priority,
            "news2_max": e.news2, "escalated_at": None, "escalated_by": None,
            "acknowledged_at": None, "resolved_at": None})
        if e.kind == "news2" and e.event != "escalated":
            # the guidance follows the score, not the unacknowledged-alert escalation's priority
            a["priority"] = max(a["priority"], e.priority, key=("low", "medium", "high").index)
        if e.news2 is not None:
            a["news2_max"] = max(a["news2_max"] or 0, e.news2)
        who = e.by if e.by is not None and (trainees is None or e.by in trainees) else None
        if e.event == "escalated" and who and a["escalated_at"] is None:
            a["escalated_at"], a["escalated_by"] = e.ts.timestamp(), who
        if e.event == "acknowledged" and a["acknowledged_at"] is None:
            a["acknowledged_at"] = e.ts.timestamp()
        if e.event == "resolved":
            a["resolved_at"] = e.ts.timestamp()
    for r in audit:
        if r.patient_id is not None and r.action in RECOGNISE:
            timeline.setdefault(r.patient_id, []).append({
                "t": r.ts.isoformat(), "what": r.action, "by": r.user})
    responses = []
    for a in alerts.values():
        raised = a["raised_at"]
        first = next((r for r in audit if r.patient_id == a["patient_id"]
                      and r.action in RECOGNISE and r.ts.timestamp() >= raised), None)
        guidance = GUIDANCE.get(a["priority"]) if a["kind"] == "news2" else None
        escalated = a["escalated_at"]
        recognised = _ts(first.ts) if first else None
        responses.append({
            **{k: a[k] for k in ("alert_id", "patient_id", "kind", "priority", "news2_max",
                                 "escalated_by")},
            "raised_at": raised, "guidance": guidance or "awareness",
            "recognised_by": first.user if first else None,
            "time_to_recognise_s": _since(recognised, raised),
            "time_to_escalate_s": _since(escalated, raised),
            "escalation_expected": guidance is not None,
            "met_guidance": (escalated is not None) if guidance else recognised is not None,
            "missed": recognised is None,
        })
    responses.sort(key=lambda r: r["raised_at"])
    expected = [r for r in responses if r["escalation_expected"]]
    recognise = [r["time_to_recognise_s"] for r in responses
                 if r["time_to_recognise_s"] is not None]
    escalate = [r["time_to_escalate_s"] for r in expected if r["time_to_escalate_s"] is not None]
    for t in timeline.values():
        t.sort(key=lambda x: x["t"])
    return {
        "training": True,
        "trainees": sorted(trainees) if trainees is not None else None,
        "summary": {
            "clinical_alerts": len(responses),
            "recognised": sum(r["time_to_recognise_s"] is not None for r in responses),
            "missed": sum(r["missed"] for r in responses),
            "escalation_expected": len(expected),
            "escalated_as_expected": sum(r["met_guidance"] for r in expected),
            "median_time_to_recognise_s": statistics.median(recognise) if recognise else None,
            "median_time_to_escalate_s": statistics.median(escalate) if escalate else None,
        },
        "responses": responses,
        "timeline": timeline,
        "guidance": "RCP 2017 NEWS2: 5-6 or a single red parameter -> urgent response; "
                    "7 or more -> emergency response",
    }


def read(settings: Settings, trainees: set[str] | None = None) -> dict[str, Any]:
    """The debrief of the training ward whose topics `settings` name (`Settings.training`)."""
    from streams.audit import read as read_audit
    from streams.follow import read_all

    if not settings.training:
        raise ValueError("a debrief reads a training ward's topics (TRAINING=true)")
    dec = msgspec.json.Decoder(AlertEvent)
    events = []
    for _, value in read_all(settings, settings.topic_alerts):
        try:
            events.append(dec.decode(value or b""))
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue
    return debrief(events, read_audit(settings), trainees)
