"""Clinical and technical alerts from the twins: conditions, priorities and the alert lifecycle.

Pure logic with an injectable clock (every call takes `now`), used by the stream worker and by
`patient-twin evaluate` alike. Conditions are computed for all patients at once from the twin's
outputs (`conditions`); the lifecycle then runs per open alert (`AlertEngine`), of which there are
few. The kinds, priorities and timings are tabled in docs/alerts.md.

Kinds (one open alert per patient and kind, updated in place):
- `news2` (clinical): the RCP 2017 clinical response triggers on the twin's estimates: a single
  parameter scoring 3, aggregate 5-6 (urgent response), aggregate 7 or more (emergency).
- `news2_forecast` (clinical, predictive): the probability that a vital sign is in its red (score 3)
  range at a forecast horizon, from the twin's forecast mean and SD, reaches `p_raise`; or the
  probability that NEWS2 meets a response trigger within the hour if each vital sign's drift
  trend goes on (`twin.trend`: the twin's own forecast returns to the patient's slow level, so it
  cannot foresee a sustained climb) reaches `trend_raise`, and the slopes add at least
  `trend_margin` to it, while no trigger is met yet.
- `sepsis_risk` (clinical, predictive): the twin's risk (`twin.risk`, fitted on PhysioNet 2019
  ICU stays: the probability that the patient is within 6 h of the clinical onset of sepsis, or
  septic) has reached the model's operating point, chosen where it was fitted
  (docs/validation.md). Low priority: a prompt to look, not a response trigger.
- `no_data` (technical): the device has been silent for `no_data_s`; the twin's uncertainty keeps
  growing meanwhile, and a silent twin is never shown as a healthy patient.
- `sensor_off` (technical): readings arrive but a worn sensor's values have not been believed
  (sensor off, zeros, repeated artifacts) for `sensor_off_s`.
- `low_battery` (technical): state of charge at or below the device's warning level.
- `rejected_readings` (technical): readings arrive but are rejected (late, duplicates, dated
  outside the accepted window) at `reject_alert_per_min` or more: the twin is not following
  the patient although data comes in, and the cause (e.g. a device clock ahead) is named.

Priorities follow IEC 60601-1-8 (high: immediate response; medium: prompt; low: awareness).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.special import ndtr

from twin import news2, trend
from twin.channels import INDEX, NAMES, C
from twin.policy import (
    CATEGORY,
    EXTERNAL_KINDS,
    KINDS,
    PRIORITIES,
    AlertPolicy,
    Priority,
    make_alert_id,
)

# What a clinician or a technician should know of each cause of rejected readings.
REJECT_CAUSES = {
    "late": "readings dated before the twin's latest (device clock ahead earlier, or set back; "
            "or delivery delayed)",
    "duplicate": "readings already applied sent again (sequence numbers repeated)",
    "ts_out_of_range": "readings dated outside the accepted window (device clock wrong)",
}
# Worn sensors whose silence means the wearable is not measuring (not the cuff or thermometer).
_WORN = [INDEX["hr"], INDEX["spo2"]]





@dataclass(frozen=True)
class TwinView:
    """What the alert engine needs to know about N patients at time `now`.

    estimate, sd: `(N, C)`; forecast, forecast_sd: `(N, H, C)` at `horizons_min (H,)`; news2: `(N,)`
    int; components: `(N, 7)` int; spo2_scale: `(N,)` 1/2; since_reading_s: `(N,)` seconds since the
    device's last reading (NaN: never); channel_age_s: `(N, C)` seconds since each channel was last
    believed (NaN: never); battery: `(N,)` 0-1 (NaN: unknown); rejects_per_min: `(N,)` readings
    rejected per minute lately (None: none known), reject_cause: N keys of REJECT_CAUSES (the
    commonest cause) or None.
    """

    patient_ids: list[str]
    estimate: np.ndarray
    sd: np.ndarray
    forecast: np.ndarray
    forecast_sd: np.ndarray
    horizons_min: np.ndarray
    news2: np.ndarray
    components: np.ndarray
    spo2_scale: np.ndarray
    since_reading_s: np.ndarray
    channel_age_s: np.ndarray
    battery: np.ndarray
    rejects_per_min: np.ndarray | None = None
    reject_cause: list[str | None] | None = None
    risk: np.ndarray | None = None
    # `(N,)` P(NEWS2 trigger within the trend's horizon), slope and its SD `(N, C)` per hour
    # (`twin.bank.Outputs`); None: not known
    p_trigger: np.ndarray | None = None
    p_steady: np.ndarray | None = None  # (N,) the same with no slope
    slope: np.ndarray | None = None
    slope_sd: np.ndarray | None = None


@dataclass(frozen=True)
class Conditions:
    """Per patient and kind: is the condition on, at what priority, and why.

    on: `(N, K)` bool (K = len(KINDS)); priority: `(N, K)` int index into PRIORITIES;
    p_red: `(N, C)` probability of a red score within the forecast window; red_channels: `(N, C)`
    bool.
    """

    on: np.ndarray
    priority: np.ndarray
    p_red: np.ndarray
    red_channels: np.ndarray
    clear: np.ndarray  # (N, K) bool: definitely clear (with hysteresis), not merely "not on"


def trend_condition(p_trigger: np.ndarray, p_steady: np.ndarray, band: np.ndarray,
                    policy: AlertPolicy) -> tuple[np.ndarray, np.ndarray]:
    """The drift trends' part of `news2_forecast`, `(on (N,), clear (N,))` from `(N,)` arrays:
    on when a NEWS2 response trigger within the hour is likely (`trend_raise`) if the trends go
    on, and the slopes add at least `trend_margin` to that probability over every channel held where
    it is (the same forecast spread). A likely trigger that does not need the slopes comes from
    the spread alone: on charts read once an hour, where a slope is hardly known, that was most
    calm hours (docs/twin.md, "Drift trend"). Clear below `p_clear`, or once a trigger is met
    (then it is the news2 alert's business)."""
    met = band >= news2.BAND_LOW_MEDIUM
    p = np.nan_to_num(p_trigger)
    added = p - np.nan_to_num(p_steady)
    on = (p >= policy.trend_raise) & (added >= policy.trend_margin) & ~met
    return on, (p < policy.p_clear) | met


def red_probability(view: TwinView, within_min: float) -> np.ndarray:
    """P(value in its red range) `(N, C)`: the largest over forecast horizons <= within_min, from
    a normal forecast (mean, SD). NaN forecasts give 0."""
    low, high = news2.red_limits(view.spo2_scale)
    use = view.horizons_min <= within_min + 1e-9
    mu = view.forecast[:, use]
    sd = np.maximum(view.forecast_sd[:, use], 1e-6)
    p_low = np.where(np.isnan(low[:, None]), 0.0, ndtr((low[:, None] - mu) / sd))
    p_high = np.where(np.isnan(high[:, None]), 0.0, 1.0 - ndtr((high[:, None] - mu) / sd))
    p = np.nan_to_num(p_low + p_high, nan=0.0)
    return p.max(axis=1) if p.shape[1] else np.zeros((mu.shape[0], C))


def conditions(view: TwinView, policy: AlertPolicy) -> Conditions:
    """Evaluate every kind for every patient at once."""
    n = len(view.patient_ids)
    K = len(KINDS)
    on = np.zeros((n, K), dtype=bool)
    clear = np.zeros((n, K), dtype=bool)
    prio = np.zeros((n, K), dtype=np.int64)
    k = {name: i for i, name in enumerate(KINDS)}
    stale = ~(view.since_reading_s < policy.no_data_s)  # NaN (never) counts as stale

    # NEWS2 response triggers (RCP 2017 Table 2) on fresh twins only: a stale twin raises no_data.
    band = news2.band(view.news2, view.components)
    on[:, k["news2"]] = (band >= news2.BAND_LOW_MEDIUM) & ~stale
    clear[:, k["news2"]] = (band < news2.BAND_LOW_MEDIUM) | stale
    prio[:, k["news2"]] = np.where(band >= news2.BAND_HIGH, 2, 1)

    p_red = red_probability(view, policy.forecast_within_min)
    # Channels already red now are the news2 alert's business; predict the ones not yet red.
    now_red = np.zeros((n, C), dtype=bool)
    for ch, col in news2.COLUMN.items():
        now_red[:, INDEX[ch]] = view.components[:, col] >= 3
    p_new = np.where(now_red, 0.0, p_red)
    red_ch = p_new >= policy.p_raise
    if view.p_trigger is None or view.p_steady is None:
        trend_on, trend_clear = np.zeros(n, dtype=bool), np.ones(n, dtype=bool)
    else:
        trend_on, trend_clear = trend_condition(view.p_trigger, view.p_steady, band, policy)
    on[:, k["news2_forecast"]] = (red_ch.any(axis=1) | trend_on) & ~stale
    clear[:, k["news2_forecast"]] = ((p_new < policy.p_clear).all(axis=1) & trend_clear) | stale
    prio[:, k["news2_forecast"]] = 0

    if view.risk is not None and policy.risk_raise is not None:
        r = np.nan_to_num(view.risk, nan=0.0)
        on[:, k["sepsis_risk"]] = (r >= policy.risk_raise) & ~stale
        clear[:, k["sepsis_risk"]] = (r < policy.risk_raise * policy.risk_clear_ratio) | stale
    prio[:, k["sepsis_risk"]] = 0  # not computed (a silent twin's check): neither on nor clear

    on[:, k["no_data"]] = stale & ~np.isnan(view.since_reading_s)
    clear[:, k["no_data"]] = ~stale
    prio[:, k["no_data"]] = 1

    # A worn sensor that has given values before and none believable for a while; a channel
    # the device never measured (NaN age) is not "off", just not there.
    worn_age = view.channel_age_s[:, _WORN]
    off = (~stale) & np.any(worn_age >= policy.sensor_off_s, axis=1)
    on[:, k["sensor_off"]] = off
    clear[:, k["sensor_off"]] = ~off
    prio[:, k["sensor_off"]] = 0

    low = view.battery <= policy.low_battery
    on[:, k["low_battery"]] = low
    clear[:, k["low_battery"]] = ~low & ~np.isnan(view.battery)
    prio[:, k["low_battery"]] = 0

    if view.rejects_per_min is not None and policy.reject_alert_per_min > 0:
        rate = np.nan_to_num(view.rejects_per_min)
        on[:, k["rejected_readings"]] = rate >= policy.reject_alert_per_min
        clear[:, k["rejected_readings"]] = rate < policy.reject_alert_per_min / 2
    else:
        clear[:, k["rejected_readings"]] = True
    prio[:, k["rejected_readings"]] = 1
    for kind in EXTERNAL_KINDS:
        clear[:, k[kind]] = True
    return Conditions(on, prio, p_red, red_ch, clear)


# --- lifecycle -----------------------------------------------------------------------------

State = Literal["pending", "active", "latched", "acknowledged", "resolved"]
EventName = Literal["raised", "updated", "reminder", "escalated", "acknowledged", "silenced",
                    "resolved"]


@dataclass
class Alert:
    """One alert of one patient and kind, from its first sign to its resolution."""

    alert_id: str
    patient_id: str
    kind: str
    priority: Priority
    state: State = "pending"
    first_seen: float = 0.0  # when the condition first held
    raised_at: float | None = None
    clear_since: float | None = None
    acknowledged_at: float | None = None
    acknowledged_by: str | None = None
    comment: str | None = None
    reminded_at: float | None = None
    escalations: int = 0
    audience: str = "ward"
    resolved_at: float | None = None
    evidence: dict[str, object] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return CATEGORY[self.kind]

    @property
    def open(self) -> bool:
        return self.state in ("active", "latched", "acknowledged")


@dataclass(frozen=True)
class Event:
    """Something that happened to an alert; `notify` False while the alert is silenced."""

    name: EventName
    alert: Alert
    t: float
    message: str
    notify: bool = True
    by: str | None = None


@dataclass
class Silence:
    patient_id: str
    kind: str
    reason: str
    until: float
    by: str


@dataclass
class FatigueStats:
    """Alarm-fatigue figures over the alerts the engine raised."""

    raised: int = 0
    escalated: int = 0
    resolved: int = 0
    resolved_within_60s: int = 0
    ack_seconds: list[float] = field(default_factory=list)

    def summary(self, patient_days: float) -> dict[str, float | None]:
        return {
            "alerts_per_patient_day": self.raised / patient_days if patient_days else None,
            "median_time_to_ack_s": float(np.median(self.ack_seconds)) if self.ack_seconds
            else None,
            "escalation_rate": self.escalated / self.raised if self.raised else None,
            "auto_resolved_within_60s": (self.resolved_within_60s / self.resolved
                                         if self.resolved else None),
        }


def _fmt(v: float) -> float | None:
    return None if not math.isfinite(v) else round(float(v), 2)


class AlertEngine:
    """Open alerts, their lifecycle and silences, driven by `update` (conditions at `now`) and
    `tick` (timers at `now`)."""

    def __init__(self, policy: AlertPolicy | None = None) -> None:
        self.policy = policy or AlertPolicy()
        self.alerts: dict[tuple[str, str], Alert] = {}
        self.silences: dict[tuple[str, str], Silence] = {}
        # (patient, kind) -> when the last `notice` of that kind was raised, kept after the
        # alert is acknowledged and resolved: the twin stays marked (e.g. its history lost)
        self.noticed: dict[tuple[str, str], float] = {}
        self.stats = FatigueStats()

    # -- conditions ------------------------------------------------------------------------
    def update(self, view: TwinView, now: float) -> list[Event]:
        """Apply the conditions of N patients at `now`. Returns the events, in order."""
        cond = conditions(view, self.policy)
        events: list[Event] = []
        # Only patients with a condition on or an alert open need the per-alert logic.
        open_pids = {pid for (pid, _), a in self.alerts.items()}
        idx = np.nonzero(cond.on.any(axis=1))[0].tolist()
        idx += [i for i, p in enumerate(view.patient_ids) if p in open_pids]
        for i in sorted(set(idx)):
            pid = view.patient_ids[i]
            for kk, kind in enumerate(KINDS):
                events += self._step(pid, kind, bool(cond.on[i, kk]), bool(cond.clear[i, kk]),
                                     PRIORITIES[int(cond.priority[i, kk])], now,
                                     lambda i=i, kind=kind: self._evidence(view, cond, i, kind))
        return events + self.tick(now)

    def _step(self, pid: str, kind: str, on: bool, clear: bool, prio: Priority, now: float,
              evidence) -> list[Event]:
        key = (pid, kind)
        a = self.alerts.get(key)
        p = self.policy
        if a is None:
            if not on:
                return []
            a = Alert(make_alert_id(pid, kind, now), pid, kind, prio, first_seen=now)
            self.alerts[key] = a
        if on:
            a.clear_since = None
            rank = PRIORITIES.index
            if a.state == "pending":
                a.priority = prio if rank(prio) > rank(a.priority) else a.priority
                wait = p.raise_after_s.get(kind, 0.0)
                if now - a.first_seen >= wait or (prio == "high" and p.raise_high_at_once):
                    a.state = "active"
                    a.raised_at = now
                    a.evidence = evidence()
                    self.stats.raised += 1
                    return [self._event("raised", a, now, self._describe(a))]
                return []
            if a.state == "latched":
                # back before anyone acknowledged it: say so, or the screen shows "cleared" on
                # a patient who is red again
                a.state = "active"
                if rank(prio) > rank(a.priority):
                    a.priority = prio
                a.evidence = evidence()
                return [self._event("updated", a, now, f"{self._describe(a)} (again, since "
                                    "the alert was latched)")]
            if rank(prio) > rank(a.priority):
                a.priority = prio
                a.evidence = evidence()
                return [self._event("updated", a, now, self._describe(a))]
            return []
        # condition not on
        if a.state == "pending":
            if clear:
                del self.alerts[key]
            return []
        if not clear:
            return []
        if a.clear_since is None:
            a.clear_since = now
        if now - a.clear_since < p.clear_after_s:
            return []
        if a.priority == "high" and a.state == "active":
            # IEC 60601-1-8 latching: a high-priority alarm stays until someone acknowledges it.
            a.state = "latched"
            return [self._event("updated", a, now, f"{self._title(a)}: condition cleared; "
                                "stays latched until acknowledged")]
        if a.state == "latched":
            return []
        return [self._resolve(a, now, "condition cleared")]

    # -- timers ----------------------------------------------------------------------------
    def tick(self, now: float) -> list[Event]:
        """Reminders, escalations and silence expiry at `now`."""
        events: list[Event] = []
        for key, s in list(self.silences.items()):
            if now >= s.until:
                del self.silences[key]
                a = self.alerts.get(key)
                if a is not None and a.open:
                    events.append(self._event("updated", a, now,
                                              f"{self._title(a)}: silence expired"))
        p = self.policy
        for a in list(self.alerts.values()):
            if a.state not in ("active", "latched") or a.raised_at is None:
                continue
            since = now - a.raised_at
            esc = p.escalate_after_s.get(a.priority)
            rem = p.remind_after_s.get(a.priority)
            if esc is not None and since >= esc * (a.escalations + 1):
                a.escalations += 1
                self.stats.escalated += a.escalations == 1
                if a.priority != "high":
                    a.priority = PRIORITIES[PRIORITIES.index(a.priority) + 1]
                a.audience = "ward+rapid-response"
                events.append(self._event("escalated", a, now,
                                          f"{self._title(a)}: unacknowledged for "
                                          f"{since / 60:.0f} min; escalated to {a.audience}"))
            elif rem is not None and since >= rem and (
                    a.reminded_at is None or now - a.reminded_at >= rem):
                a.reminded_at = now
                events.append(self._event("reminder", a, now,
                                          f"{self._title(a)}: unacknowledged for "
                                          f"{since / 60:.0f} min"))
        return events

    # -- notices -----------------------------------------------------------------------------
    def notice(self, patient_ids: list[str], kind: str, priority: Priority, message: str,
               evidence: dict[str, object], now: float,
               mark: float | None = None) -> list[Event]:
        """Raise, for each patient, an alert that is not a condition of the twin but a fact
        someone must see (`history_lost`: the broker lost the patient's stored records). It is
        raised latched: no condition clears it, and it is resolved once acknowledged. One
        already open for the patient is left as it is. `noticed` keeps `mark` (default `now`),
        the time the fact is about, past the alert's resolution."""
        events = []
        for pid in patient_ids:
            self.noticed[(pid, kind)] = now if mark is None else mark
            if (old := self.alerts.get((pid, kind))) is not None and old.open:
                continue
            a = Alert(make_alert_id(pid, kind, now), pid, kind, priority, state="latched",
                      first_seen=now, raised_at=now, evidence=dict(evidence))
            self.alerts[(pid, kind)] = a
            self.stats.raised += 1
            events.append(self._event("raised", a, now, f"{self._title(a)}: {message}"))
        return events

    # -- clinician actions -----------------------------------------------------------------
    def find(self, patient_id: str, alert_id: str) -> Alert | None:
        """The patient's alert of this id: an id alone names no patient a caller was allowed
        to act on, so a look-up never crosses patients (or wards)."""
        return next((a for k in KINDS if (a := self.alerts.get((patient_id, k))) is not None
                     and a.alert_id == alert_id), None)

    def acknowledge(self, patient_id: str, alert_id: str, by: str, now: float,
                    comment: str | None = None) -> list[Event]:
        """A clinician acknowledges an open alert of this patient. KeyError if the patient has
        no such open alert."""
        a = self.find(patient_id, alert_id)
        if a is None or not a.open:
            raise KeyError(alert_id)
        if a.state == "acknowledged":
            return []
        was_latched = a.state == "latched"
        a.state = "acknowledged"
        a.acknowledged_at, a.acknowledged_by, a.comment = now, by, comment
        if a.raised_at is not None:
            self.stats.ack_seconds.append(now - a.raised_at)
        events = [self._event("acknowledged", a, now, f"{self._title(a)}: acknowledged",
                              by=by)]
        if was_latched:
            events.append(self._resolve(a, now, "condition had cleared"))
        return events

    def escalate(self, patient_id: str, alert_id: str, by: str, now: float,
                 comment: str | None = None) -> list[Event]:
        """A clinician calls for help with an open alert of this patient now, without waiting
        for the unacknowledged-alert escalation: the priority goes up one level (high stays
        high) and the rapid-response team is in its audience. KeyError if the patient has no
        such open alert."""
        a = self.find(patient_id, alert_id)
        if a is None or not a.open:
            raise KeyError(alert_id)
        a.escalations += 1
        self.stats.escalated += a.escalations == 1
        if a.priority != "high":
            a.priority = PRIORITIES[PRIORITIES.index(a.priority) + 1]
        a.audience = "ward+rapid-response"
        if comment is not None:
            a.comment = comment
        return [self._event("escalated", a, now,
                            f"{self._title(a)}: escalated by {by} to {a.audience}", by=by)]

    def silence(self, patient_id: str, kind: str, reason: str, until: float, by: str,
                now: float) -> list[Event]:
        """Silence a patient's alerts of one kind until `until` (reason and who, required)."""
        if kind not in KINDS:
            raise ValueError(f"unknown alert kind {kind!r} (known: {', '.join(KINDS)})")
        if not reason.strip():
            raise ValueError("a silence needs a reason")
        if until <= now:
            raise ValueError("a silence must end in the future")
        if until - now > self.policy.max_silence_s:
            raise ValueError(f"a silence may last at most {self.policy.max_silence_s / 60:g} min")
        self.silences[(patient_id, kind)] = Silence(patient_id, kind, reason, until, by)
        a = self.alerts.get((patient_id, kind))
        if a is None or not a.open:
            return []
        return [Event("silenced", a, now, f"{self._title(a)}: silenced ({reason})", True, by)]

    # -- persistence -----------------------------------------------------------------------
    def export(self, patient_id: str) -> bytes:
        """The patient's open alerts and silences as bytes (b"" when there are none), for the
        worker to keep beside the twin so another worker can take over exactly."""
        alerts = [a for k in KINDS if (a := self.alerts.get((patient_id, k))) is not None]
        silences = [s for k in KINDS if (s := self.silences.get((patient_id, k))) is not None]
        noticed = {k: t for k in KINDS if (t := self.noticed.get((patient_id, k))) is not None}
        if not alerts and not silences and not noticed:
            return b""
        # vars, not dataclasses.asdict: json.dumps needs no deep copy, and asdict was half the
        # cost of a batch's exports (22 of 41 us a patient, with an open alert each)
        doc: dict[str, object] = {"alerts": [vars(a) for a in alerts],
                                  "silences": [vars(s) for s in silences]}
        if noticed:
            doc["noticed"] = noticed
        return json.dumps(doc, separators=(",", ":")).encode()

    def export_many(self, patient_ids: list[str]) -> list[bytes]:
        """`export` of each patient; the many without alerts, silences or notices cost a set
        lookup (30 dict lookups each in `export`: 5 us a patient, a batch of 5,000 every
        second)."""
        keyed = (self.alerts, self.silences, self.noticed)
        some = {p for d in keyed for p, _ in d}
        return [self.export(p) if p in some else b"" for p in patient_ids]

    def restore(self, patient_id: str, blob: bytes) -> None:
        """Replace what the engine holds for the patient by `blob` (from `export`)."""
        self.forget({patient_id})
        if not blob:
            return
        doc = json.loads(blob)
        for a in doc["alerts"]:
            self.alerts[(patient_id, a["kind"])] = Alert(**a)
        for s in doc["silences"]:
            self.silences[(patient_id, s["kind"])] = Silence(**s)
        for kind, t in doc.get("noticed", {}).items():
            self.noticed[(patient_id, kind)] = float(t)

    def forget(self, patient_ids: set[str]) -> None:
        """Drop what the engine holds for these patients (their worker changed)."""
        for store in (self.alerts, self.silences, self.noticed):
            for key in [k for k in store if k[0] in patient_ids]:
                del store[key]

    # -- helpers ---------------------------------------------------------------------------
    def _resolve(self, a: Alert, now: float, why: str) -> Event:
        a.state = "resolved"
        a.resolved_at = now
        self.stats.resolved += 1
        if a.raised_at is not None and now - a.raised_at <= 60.0:
            self.stats.resolved_within_60s += 1
        del self.alerts[(a.patient_id, a.kind)]
        # A silenced alert that resolves still tells its subscribers so.
        return Event("resolved", a, now, f"{self._title(a)}: resolved ({why})", True)

    def _event(self, name: EventName, a: Alert, now: float, message: str,
               by: str | None = None) -> Event:
        silenced = (a.patient_id, a.kind) in self.silences
        return Event(name, a, now, message, notify=not silenced or name == "resolved", by=by)

    @staticmethod
    def _title(a: Alert) -> str:
        return {"news2": "NEWS2", "news2_forecast": "Predicted red NEWS2 parameter",
                "sepsis_risk": "Sepsis risk",
                "no_data": "No data", "sensor_off": "Sensor off",
                "low_battery": "Low battery", "rejected_readings": "Readings rejected",
                "monitoring_stopped": "Monitoring stopped",
                "history_lost": "Stored history lost"}[a.kind]

    def _describe(self, a: Alert) -> str:
        ev = a.evidence
        if a.kind == "news2":
            return (f"NEWS2 {ev.get('news2')} ({ev.get('band')} band) on the twin's estimates; "
                    f"scoring: {', '.join(ev.get('scoring', [])) or 'none'}")
        if a.kind == "news2_forecast":
            parts = [f"P({c} red within {self.policy.forecast_within_min:.0f} min) = {p:.2f}"
                     for c, p in ev.get("p_red", {}).items()]
            if (p_t := ev.get("p_trigger")) is not None and p_t >= self.policy.trend_raise:
                # an index of how strongly the trends point at a trigger, not a calibrated
                # probability (docs/twin.md): said so where a clinician reads it
                rising = ", ".join(f"{c} {v:+g}/h" for c, v in ev.get("trend_per_h", {}).items())
                parts.append(f"the trends point to a NEWS2 trigger within "
                             f"{ev.get('trigger_within_min', 60):.0f} min (trend index "
                             f"{p_t:.2f} if they go on, {ev.get('p_steady', 0):.2f} held where "
                             "they are; not a calibrated probability)"
                             + (f" (trends: {rising})" if rising else ""))
            return "; ".join(parts)
        if a.kind == "sepsis_risk":
            return (f"the twin's sepsis risk is {ev.get('risk', 0):.3f} (operating point "
                    f"{ev.get('threshold', 0):.3f}): P(within 6 h of sepsis onset, or septic), "
                    "from a model fitted on ICU stays (docs/validation.md)")
        if a.kind == "no_data":
            return f"no reading for {ev.get('since_reading_s', 0) / 60:.0f} min"
        if a.kind == "sensor_off":
            return f"no believable value from {', '.join(ev.get('channels', []))}"
        if a.kind == "rejected_readings":
            cause = REJECT_CAUSES.get(str(ev.get("cause")), "unknown cause")
            return (f"{ev.get('per_min', 0):.0f} readings a minute rejected: {cause}; the twin "
                    "is not following these readings")
        return f"battery at {ev.get('battery', 0) * 100:.0f} %"

    def _evidence(self, view: TwinView, cond: Conditions, i: int, kind: str) -> dict[str, object]:
        est = {ch: _fmt(view.estimate[i, j]) for j, ch in enumerate(NAMES)}
        sd = {ch: _fmt(view.sd[i, j]) for j, ch in enumerate(NAMES)}
        comp = view.components[i]
        ev: dict[str, object] = {"estimate": est, "sd": sd, "news2": int(view.news2[i]),
                                 "components": {n: int(c) for n, c in
                                                zip(news2.COMPONENTS, comp, strict=True)}}
        if kind == "news2":
            band = int(news2.band(view.news2[i:i + 1], view.components[i:i + 1])[0])
            ev["band"] = news2.BAND_NAMES[band]
            ev["scoring"] = [n for n, c in zip(news2.COMPONENTS, comp, strict=True) if c > 0]
        elif kind == "news2_forecast":
            ev["p_red"] = {ch: round(float(cond.p_red[i, j]), 3) for j, ch in enumerate(NAMES)
                           if cond.red_channels[i, j]}
            ev["forecast"] = {f"{int(h)}min": {ch: _fmt(view.forecast[i, hj, j])
                                                for j, ch in enumerate(NAMES)}
                              for hj, h in enumerate(view.horizons_min)}
            if view.p_trigger is not None and view.p_steady is not None:
                ev["p_trigger"] = round(float(np.nan_to_num(view.p_trigger[i])), 3)
                ev["p_steady"] = round(float(np.nan_to_num(view.p_steady[i])), 3)
                ev["trigger_within_min"] = trend.HORIZON_MIN
            if view.slope is not None and view.slope_sd is not None:
                # the trends that stand out from their own uncertainty (2 SD), per hour
                ev["trend_per_h"] = {ch: round(float(view.slope[i, j]), 2)
                                     for j, ch in enumerate(NAMES)
                                     if abs(view.slope[i, j]) >= 2.0 * view.slope_sd[i, j]}
        elif kind == "sepsis_risk" and view.risk is not None:
            r = float(view.risk[i])
            ev["risk"] = round(r, 4) if math.isfinite(r) else None
            ev["threshold"] = self.policy.risk_raise
        elif kind == "no_data":
            ev["since_reading_s"] = _fmt(view.since_reading_s[i])
        elif kind == "sensor_off":
            ev["channels"] = [NAMES[j] for j in _WORN
                              if view.channel_age_s[i, j] >= self.policy.sensor_off_s]
        elif kind == "low_battery":
            ev["battery"] = _fmt(view.battery[i])
        elif kind == "rejected_readings" and view.rejects_per_min is not None:
            ev["per_min"] = _fmt(view.rejects_per_min[i])
            ev["cause"] = view.reject_cause[i] if view.reject_cause else None
        return ev
