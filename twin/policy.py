"""What alerts there are and how they run: kinds, priorities, ids, the alert engine's policy, and
the late-reading tolerance (`twin.alerts` raises and runs them; docs/alerts.md tables them).

Plain values, importable without numpy or scipy: every process reads its configuration
(`streams.config` takes its defaults from here), and the lightest of them (the ingest endpoint,
the MQTT bridge, the dispatcher, the demo's supervisor) need neither; importing the twin's
filtering core for these cost each about 30 MB (docs/performance.md, "Broker memory").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_TOLERANCE_S = 30.0
"""Readings up to this much older than their twin are applied in time order (`twin.history`).
The simulated gateways deliver late messages 2-30 s late (`devices.faults`)."""


Priority = Literal["high", "medium", "low"]
PRIORITIES: tuple[Priority, ...] = ("low", "medium", "high")
KINDS: tuple[str, ...] = ("news2", "news2_forecast", "sepsis_risk", "no_data", "sensor_off",
                          "low_battery", "rejected_readings", "monitoring_stopped",
                          "history_lost")
CATEGORY = {"news2": "clinical", "news2_forecast": "clinical", "sepsis_risk": "clinical",
            "no_data": "technical",
            "sensor_off": "technical", "low_battery": "technical",
            "rejected_readings": "technical", "monitoring_stopped": "technical",
            "history_lost": "technical"}
# Raised outside the twins, by the dispatcher's watchdog when no worker processes a patient's
# readings (streams.watchdog): listed for subscribers' filters, never a condition here.
EXTERNAL_KINDS = frozenset({"monitoring_stopped"})


def make_alert_id(patient_id: str, kind: str, t: float) -> str:
    """An alert's id, `patient:kind:milliseconds`: unique across restarts and workers (one open
    alert per patient and kind, and a new one cannot begin in the same millisecond as the
    last); the same for every dispatcher that raises it from the same time."""
    return f"{patient_id}:{kind}:{int(t * 1000)}"


def split_alert_id(alert_id: str) -> tuple[str, str]:
    """(patient id, kind) of an alert id made by `make_alert_id`; the kind is "" (and the
    patient id the whole text) for text that is not one."""
    parts = alert_id.rsplit(":", 2)
    return parts[0], parts[1] if len(parts) == 3 else ""


@dataclass(frozen=True)
class AlertPolicy:
    """Timings and levels of the alert engine (seconds; probabilities 0-1)."""

    # A condition must hold this long before an alert is raised (0: at once). Emergencies at once.
    raise_after_s: dict[str, float] = field(default_factory=lambda: {
        "news2": 60.0, "news2_forecast": 120.0, "sepsis_risk": 300.0, "no_data": 0.0,
        "sensor_off": 0.0,
        "low_battery": 0.0, "rejected_readings": 0.0})
    raise_high_at_once: bool = True
    # ...and must be clear this long before it resolves (hysteresis in time).
    clear_after_s: float = 300.0
    # Predictive: raise at this probability of a red score within `forecast_within_min`, clear
    # below `p_clear` (hysteresis in probability).
    p_raise: float = 0.8
    p_clear: float = 0.5
    # The drift trends' part of `news2_forecast` (`trend_condition`): raise at this trigger
    # probability if the trends go on, when the slopes add at least `trend_margin` to it (a
    # trigger "likely" from the hour-ahead spread alone is not a trend). Neither is a calibrated
    # probability: operating points, measured in docs/twin.md ("Drift trend"): 0.7 gave the
    # simulator's +30 min median lead, 0.8 fewer false alerts and less lead.
    trend_raise: float = 0.7
    trend_margin: float = 0.25
    forecast_within_min: float = 30.0
    # The twin's sepsis risk: raise at `risk_raise` (None: never; the worker passes the shipped
    # model's operating point), clear below `risk_clear_ratio` times it (hysteresis).
    risk_raise: float | None = None
    risk_clear_ratio: float = 0.75
    risk_alert: bool = True  # False: the worker sets no risk_raise (ALERT_SEPSIS_RISK)
    no_data_s: float = 300.0
    sensor_off_s: float = 120.0
    low_battery: float = 0.2
    # rejected readings per minute that raise `rejected_readings`; 0: never
    reject_alert_per_min: float = 10.0
    # Unacknowledged: a reminder after `remind_after_s`, escalation (priority up one level, wider
    # audience) after `escalate_after_s`. Per priority; None: never.
    remind_after_s: dict[str, float | None] = field(default_factory=lambda: {
        "high": 120.0, "medium": 600.0, "low": None})
    escalate_after_s: dict[str, float | None] = field(default_factory=lambda: {
        "high": 300.0, "medium": 1800.0, "low": None})
    # Longest silence a clinician may set: a forgotten silence hides a deteriorating patient.
    # A site policy (ALERT_SILENCE_MAX_MINUTES), not a clinical threshold; 4 h by default.
    max_silence_s: float = 4 * 3600.0
