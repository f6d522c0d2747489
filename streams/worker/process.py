"""One batch of valid readings -> updated twin records, twin.state messages and alert events.

No Kafka here: the Faust agent hands in decoded readings and the stored twin records, and sends
what comes back. That keeps the logic testable without a broker and identical in every worker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.errors import where
from streams.messages import (
    AlertAction,
    AlertEvent,
    TwinState,
    ValidReading,
    reject,
    utc,
)
from streams.worker.batch import Batch, select, to_batch
from streams.worker.states import StateOut, encode_states
from twin import alerts, bank, history, news2, risk
from twin.model import ModelParams
from twin.policy import DEFAULT_TOLERANCE_S, EXTERNAL_KINDS, AlertPolicy, split_alert_id

Z90 = 1.6448536269514722  # the twin's 90 % forecast interval is +-Z90 SD

log = logging.getLogger("patient_twin.worker")


class StateRows:
    """The twin.state messages of one batch, built when asked for (`build`): what deciding
    whether to send one needs comes first, per state: `pids`, `ts` (the latest applied
    reading's time, epoch s), `bands` (NEWS2 band name) and `lost` (when the broker lost the
    twin's history, epoch s; None: never). The state gate (streams.worker.coalesce) holds a
    patient's state back for its turn and replaces it with the next one: built on demand, the
    replaced ones never are (twin.state building is the largest output cost, docs/performance.md).
    The worker's are `StateOut`s (`streams.worker.states`); `of` also takes `TwinState`s.
    """

    def __init__(self, pids: list[str], ts: list[float], bands: list[str],
                 lost: list[float | None], make: Callable[[list[int]], list[Any]]) -> None:
        self.pids, self.ts, self.bands, self.lost = pids, ts, bands, lost
        self._make = make
        self._built: dict[int, Any] = {}
        self.failed = 0  # states that could not be built (a bug): left out, logged

    @classmethod
    def of(cls, states: Sequence[StateOut] | Sequence[TwinState]) -> StateRows:
        """States built already."""
        built = list(states)
        if all(isinstance(st, StateOut) for st in built):
            outs: list[StateOut] = built  # type: ignore[assignment]
            return cls([o.patient_id for o in outs], [o.ts for o in outs],
                       [o.band for o in outs], [o.lost for o in outs],
                       lambda idx: [outs[i] for i in idx])
        return cls([st.patient_id for st in built], [st.ts.timestamp() for st in built],
                   [st.news2_band for st in built],
                   [None if st.history_lost_at is None else st.history_lost_at.timestamp()
                    for st in built], lambda idx: [built[i] for i in idx])

    def __len__(self) -> int:
        return len(self.pids)

    def build(self, idx: Sequence[int]) -> list[Any]:
        """The states at these positions (each built once, in one vectorised pass). A state
        that cannot be built is left out and logged: built after the twin step, outside its
        message-by-message fallback, a failure here would otherwise stop the worker on every
        restart (the twins themselves are updated and their readings committed either way)."""
        todo = sorted({i for i in idx if i not in self._built})
        if todo:
            try:
                self._built.update(zip(todo, self._make(todo), strict=True))
            except Exception as exc:  # noqa: BLE001 - find the state, keep the others
                for i in todo:
                    try:
                        (self._built[i],) = self._make([i])
                    except Exception:  # noqa: BLE001 - counted and logged below
                        self.failed += 1
                missing = sum(i not in self._built for i in todo)
                if missing:
                    log.error("%d twin state(s) could not be built and were not sent (%s)",
                              missing, where(exc))
                else:
                    log.warning("twin states built one by one after their batch's build "
                                "failed (%s)", where(exc))
        return [self._built[i] for i in idx if i in self._built]

    def all(self) -> list[Any]:
        return self.build(range(len(self.pids)))


@dataclass
class BatchResult:
    states: dict[str, bytes] = field(default_factory=dict)  # patient id -> new twin record
    # the batch's twin.state messages, built on demand (`twin_states` builds them all)
    pending: StateRows = field(default_factory=lambda: StateRows.of([]))
    alerts: list[AlertEvent] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    late: int = 0  # older than the late tolerance: skipped
    reordered: int = 0  # late but within the tolerance: applied in time order
    gaps: int = 0
    artifacts: int = 0
    missing: int = 0
    report: bank.StepReport | None = None  # per reading, in the order given
    # patients outside the batch whose alerts changed (timers): write `records` for them
    other_alert_patients: set[str] = field(default_factory=set)

    @property
    def twin_states(self) -> list[TwinState]:
        """Every twin.state message of the batch, decoded."""
        return [st if isinstance(st, TwinState) else st.decoded() for st in self.pending.all()]

    def merge(self, later: BatchResult) -> None:
        """Add the result of a later step (of other readings) to this one: the later records
        and states win, counts add up. (`report` stays this one's.)"""
        self.states.update(later.states)
        latest = {st.patient_id: st for st in self.pending.all() + later.pending.all()}
        self.pending = StateRows.of(list(latest.values()))
        self.alerts += later.alerts
        for name in ("applied", "duplicates", "late", "reordered", "gaps", "artifacts",
                     "missing"):
            setattr(self, name, getattr(self, name) + getattr(later, name))
        self.other_alert_patients = (self.other_alert_patients | later.other_alert_patients) \
            - set(self.states)


def split(record: bytes) -> tuple[bytes, bytes, bytes]:
    """A twin table record -> (the twin's fixed-size state, its history (`twin.history`, b"" if
    it was kept without one), the patient's alerts (JSON, b"" for none))."""
    n = bank.record_bytes(record)
    end = n + history.block_size(record, n)
    return record[:n], record[n:end], record[end:]


def twin_view(pids: list[str], states: bank.State, out: bank.Outputs,
              since_reading_s: np.ndarray, spo2_scale: np.ndarray,
              rejects: tuple[np.ndarray, list[str | None]] | None = None,
              p_risk: np.ndarray | None = None) -> alerts.TwinView:
    """The alert engine's view of K twins from the bank's outputs. since_reading_s: `(K,)`;
    rejects: readings rejected per minute `(K,)` and the commonest cause (`RejectRates.of`);
    p_risk: `(K,)` the twin's sepsis risk (`twin.risk`)."""
    return alerts.TwinView(
        patient_ids=pids, estimate=out.estimate, sd=out.sd, forecast=out.forecast,
        forecast_sd=(out.high90 - out.low90) / (2 * Z90), horizons_min=bank.FORECAST_MINUTES,
        news2=out.news2, components=out.components, spo2_scale=spo2_scale,
        since_reading_s=since_reading_s, channel_age_s=out.age_s, battery=states["battery"],
        rejects_per_min=None if rejects is None else rejects[0],
        reject_cause=None if rejects is None else rejects[1], risk=p_risk,
        p_trigger=out.p_trigger, p_steady=out.p_steady, slope=out.slope, slope_sd=out.slope_sd)


class RejectRates:
    """Readings rejected lately per patient, by cause (`alerts.REJECT_CAUSES`): counts that decay
    with a time constant of a minute, so at a steady rate their sum reads as rejections per
    minute. Only patients that have a twin are tracked, so ids nobody monitors cost nothing."""

    TAU_S = 60.0

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, dict[str, float]]] = {}

    def add(self, pid: str, cause: str, n: float, now: float) -> None:
        t, counts = self._counts.get(pid, (now, {}))
        decay = math.exp(-max(now - t, 0.0) / self.TAU_S)
        counts = {c: v * decay for c, v in counts.items()}
        counts[cause] = counts.get(cause, 0.0) + n
        self._counts[pid] = (now, counts)

    def of(self, pids: list[str], now: float) -> tuple[np.ndarray, list[str | None]]:
        """Per minute `(K,)` and the commonest cause (None: no rejection) of K patients."""
        rate = np.zeros(len(pids))
        cause: list[str | None] = [None] * len(pids)
        if self._counts:
            for i, p in enumerate(pids):
                if (entry := self._counts.get(p)) is not None:
                    t, counts = entry
                    rate[i] = sum(counts.values()) * math.exp(-max(now - t, 0.0) / self.TAU_S)
                    cause[i] = max(counts, key=counts.__getitem__)
        return rate, cause

    def patients(self) -> list[str]:
        return list(self._counts)

    def forget(self, pids: set[str], now: float | None = None, below: float = 0.01,
               keep: set[str] | None = None) -> None:
        """Drop these patients, and (given `now`) every patient whose count has decayed away
        but those in `keep`."""
        for p in pids:
            self._counts.pop(p, None)
        if now is not None:
            for p, (t, counts) in list(self._counts.items()):
                if p in (keep or ()):
                    continue
                if sum(counts.values()) * math.exp(-max(now - t, 0.0) / self.TAU_S) < below:
                    del self._counts[p]


def alert_event(ev: alerts.Event, training: bool = False) -> AlertEvent:
    """The Kafka message of an alert engine event (of a training ward: marked, and its message
    says so first, wherever it is forwarded)."""
    a = ev.alert
    channels: list[str] = []
    if a.kind == "news2":
        channels = list(a.evidence.get("scoring", []))  # type: ignore[arg-type]
    elif a.kind == "news2_forecast":
        channels = list(a.evidence.get("p_red", {}))  # type: ignore[arg-type]
    elif a.kind == "sensor_off":
        channels = list(a.evidence.get("channels", []))  # type: ignore[arg-type]
    state = "resolved" if a.state == "resolved" else a.state if a.state != "pending" \
        else "active"
    news = a.evidence.get("news2")
    return AlertEvent(
        alert_id=a.alert_id, patient_id=a.patient_id, ts=utc(ev.t), event=ev.name,
        kind=a.kind, category=a.category, priority=a.priority, state=state,  # type: ignore[arg-type]
        channels=channels, message=f"TRAINING: {ev.message}" if training else ev.message,
        training=training,
        news2=int(news) if isinstance(news, int) else None, by=ev.by, comment=a.comment,
        audience=a.audience, notify=ev.notify, evidence=a.evidence,
        raised_at=None if a.raised_at is None else utc(a.raised_at))




class TwinProcessor:
    """Advances the twins of the patients in a batch with one vectorised `twin.bank.step`, and
    runs the alert engine on them.

    clock: wall-clock seconds (injectable for tests); the alert lifecycle's timers run on it.
    Readings' own timestamps drive the twin; arrival times drive "no data" detection.
    """

    def __init__(self, params: ModelParams | None = None,
                 policy: AlertPolicy | None = None,
                 clock: Callable[[], float] = time.time,
                 spo2_scale: Callable[[list[str]], list[int]] | None = None,
                 late_tolerance_s: float = DEFAULT_TOLERANCE_S,
                 training: bool = False, lines: bool = True) -> None:
        self.params = params or ModelParams()
        self.training = training  # a training ward: every message it makes says so
        self.lines = lines  # twin.states carry their InfluxDB points (a worker with a sink)
        # readings up to this much older than their twin are applied in time order (0: late)
        self.late_tolerance_s = late_tolerance_s
        # the registry's NEWS2 SpO2 scale per patient (None: scale 1 unless the twin has one)
        self.spo2_scale = spo2_scale
        # The twin's risk, the model `validate` fitted and ships (twin/risk_params.json): its
        # operating point raises `sepsis_risk` unless the policy says otherwise.
        self.risk, policy = risk.with_live_model(policy)
        self.engine = alerts.AlertEngine(policy)
        self.clock = clock
        # Patients' last applied reading, on the clock: a twin whose readings all arrive and are
        # all rejected is not being updated, and raises no_data like a silent one.
        self.last_arrival: dict[str, float] = {}
        self.applied_at: dict[str, float] = {}  # when a reading was last applied, exactly
        self.rejects = RejectRates()
        # Patients whose alerts this engine holds (restored from their records, or new here).
        self.owned: set[str] = set()

    def _own(self, pids: list[str], stored: Mapping[str, bytes | None]) -> None:
        """Take over the alerts of patients new to this worker from their stored records."""
        for p in pids:
            if p not in self.owned:
                rec = stored.get(p)
                self.engine.restore(p, split(rec)[2] if rec is not None else b"")
                self.owned.add(p)

    def release(self, pids: set[str]) -> None:
        """Forget patients another worker now owns (their partition moved)."""
        self.engine.forget(pids)
        self.owned -= pids
        self.rejects.forget(pids)
        for p in pids:
            self.last_arrival.pop(p, None)
            self.applied_at.pop(p, None)

    def rejected(self, counts: Mapping[tuple[str, str], int], stored: Mapping[str, bytes | None],
                 now: float | None = None) -> None:
        """Count readings rejected before the twin step (`(patient id, cause) -> n`, e.g. dated
        outside the window) for the patients that have a twin (stored: their records)."""
        now = self.clock() if now is None else now
        for (pid, cause), n in counts.items():
            if stored.get(pid) is not None:
                self.rejects.add(pid, cause, n, now)
                self.last_arrival.setdefault(pid, now)

    def _states(self, pids: list[str], stored: Mapping[str, bytes | None]
                ) -> tuple[bank.State, list[bytes | None]]:
        """The twins of `pids` from their stored records (new twins where there is none), on
        the registry's SpO2 scale, and their history blocks (None: none); takes over their
        alerts if they are new to this worker."""
        states = bank.new_states(len(pids), self.params)
        parts = [None if (rec := stored.get(p)) is None else split(rec) for p in pids]
        known = [i for i, part in enumerate(parts) if part is not None]
        if known:
            bank.put(states, np.asarray(known), bank.from_bytes(
                [parts[i][0] for i in known]))  # type: ignore[index]
        self._own(pids, stored)
        if self.spo2_scale is not None:
            states["spo2_scale"][:] = self.spo2_scale(pids)
        return states, [None if part is None else part[1] for part in parts]

    def records(self, pids: set[str], stored: Mapping[str, bytes | None]) -> dict[str, bytes]:
        """The table records of patients whose alerts changed outside a reading batch: their
        stored twin and history with their current alerts."""
        return {p: b"".join(split(rec)[:2]) + self.engine.export(p) for p in pids
                if (rec := stored.get(p)) is not None}

    def process(self, readings: Batch | Sequence[ValidReading],
                stored: Mapping[str, bytes | None], now: float | None = None) -> BatchResult:
        """readings: valid readings in arrival order (as a `Batch`, or a list `to_batch` makes
        one of); stored: patient id -> record or None; now: the alert engine's clock (default
        `clock()`)."""
        now = self.clock() if now is None else now
        result = BatchResult()
        given = readings if isinstance(readings, Batch) else to_batch(readings)
        if not given.pids:
            return result
        pids, batch = given.pids, given.readings
        states, blocks = self._states(pids, stored)
        old_band = states["band"].copy()
        if self.late_tolerance_s > 0:
            done = history.step(states, history.decode(blocks, states), batch, self.params,
                                self.late_tolerance_s)
            report = done.report
            result.reordered = done.reordered
            kept = history.encode(done.history, len(pids))
        else:
            report = bank.step(states, batch, self.params)
            kept = [b""] * len(pids)
        result.report = report
        result.applied = int(report.applied.sum())
        result.duplicates = int(report.duplicate.sum())
        result.late = int(report.late.sum())
        result.gaps = int(report.gap.sum())
        result.artifacts = int(report.artifact.sum())
        result.missing = int(report.missing.sum())

        at = np.where(np.isnan(states["t"]), 0.0, states["t"])
        out = bank.outputs(states, at, self.params)
        states["band"] = np.where(np.isnan(states["t"]), old_band, out.band)
        # Only twins that applied a reading in this batch are fresh: one whose readings are all
        # rejected (late, duplicates) is frozen, and its state says when it last applied one.
        fresh = np.bincount(batch.row[report.applied], minlength=len(pids)) > 0
        # the baselines follow what the twin believed, once per new belief; only their own
        # fields are copied when some twins of the batch applied nothing
        if fresh.all():
            risk.update_drift(states, out.estimate, at)
        elif fresh.any():
            upd = np.flatnonzero(fresh)
            part = {f: states[f][upd] for f in risk.DRIFT_FIELDS}
            risk.update_drift(part, out.estimate[upd], at[upd])
            for f in risk.DRIFT_FIELDS:
                states[f][upd] = part[f]
        p_risk = risk.score_live(self.risk, states, out, at, self.params)

        blobs = bank.to_bytes(states)
        seen = ~np.isnan(states["t"])
        # nothing applied yet (all duplicates of an unknown twin): no state
        rows = np.flatnonzero(seen)
        for i in rows.tolist():
            result.states[pids[i]] = blobs[i] + kept[i]  # + alerts, once the engine has run
        for i in np.flatnonzero(fresh).tolist():
            self.last_arrival[pids[i]] = self.applied_at[pids[i]] = now
        if (report.duplicate | report.late).any():
            for cause, flags in (("duplicate", report.duplicate), ("late", report.late)):
                n = np.bincount(batch.row[flags], minlength=len(pids))
                for i in np.flatnonzero(n).tolist():
                    self.rejects.add(pids[i], cause, float(n[i]), now)
        emitted = [pids[i] for i in rows.tolist()]
        noticed = self.engine.noticed  # empty unless the broker ever lost its records
        applied_at = [self.applied_at.get(p) for p in emitted]
        lost = [noticed.get((p, "history_lost")) for p in emitted] if noticed \
            else [None] * len(emitted)
        training, lines = self.training, self.lines

        def make(idx: list[int], states: bank.State = states, out: bank.Outputs = out,
                 p_risk: np.ndarray | None = p_risk) -> list[StateOut]:
            return encode_states([emitted[i] for i in idx], states, out, rows[idx],
                                 [applied_at[i] for i in idx], [lost[i] for i in idx], p_risk,
                                 training, lines)

        result.pending = StateRows(emitted, states["t"][rows].tolist(),
                                   [news2.BAND_NAMES[b] for b in out.band[rows].tolist()],
                                   lost, make)
        since = np.array([now - self.last_arrival[p] if p in self.last_arrival else np.nan
                          for p in pids])
        view = twin_view(pids, states, out, since, states["spo2_scale"],
                         self.rejects.of(pids, now), p_risk)
        events = self.engine.update(view, now)
        result.alerts = [alert_event(ev, self.training) for ev in events]
        # The twin table keeps each patient's open alerts beside the twin, so a worker that takes
        # the patient over (restart, failover) continues the same alerts instead of raising new
        # ones. Timers can change alerts of patients outside the batch: those records too.
        kept_pids = list(result.states)
        for pid, alerts_blob in zip(kept_pids, self.engine.export_many(kept_pids), strict=True):
            result.states[pid] += alerts_blob
        result.other_alert_patients = {ev.alert.patient_id for ev in events} - set(result.states)
        return result

    def process_each(self, batch: Batch, source: np.ndarray, stored: Mapping[str, bytes | None],
                     now: float | None = None) -> tuple[BatchResult, dict[int, Exception]]:
        """`process` one message at a time, for a batch whose step failed: source `(K,)` is the
        message each reading came from. Returns the merged result of the messages that
        worked, and the error of each that did not (by message), so one message the twin step
        cannot take costs that message, never the batch."""
        now = self.clock() if now is None else now
        result, failed = BatchResult(), {}
        records = dict(stored)
        for m in np.unique(source).tolist():
            try:
                part = self.process(select(batch, source == m), records, now)
            except Exception as exc:  # noqa: BLE001 - the caller dead-letters the message
                failed[m] = exc
                continue
            records.update(part.states)
            result.merge(part)
        return result, failed

    def check_silent(self, stored: Mapping[str, bytes | None],
                     now: float | None = None) -> list[AlertEvent]:
        """Alert timers, and "no data" for twins whose devices went silent (run every few
        seconds). stored: the records of at least the patients `silent_candidates` names."""
        now = self.clock() if now is None else now
        pids = [p for p in self.silent_candidates(now) if stored.get(p) is not None]
        self.rejects.forget(set(), now, keep=set(self._rejected_open()))
        if not pids:
            return [alert_event(ev, self.training) for ev in self.engine.tick(now)]
        states, _ = self._states(pids, stored)
        since = np.array([now - self.last_arrival.setdefault(p, now) for p in pids])
        # the twin predicted forward over the silence: its uncertainty has grown
        out = bank.outputs(states, states["t"] + since, self.params)
        view = twin_view(pids, states, out, since, states["spo2_scale"],
                         self.rejects.of(pids, now))
        return [alert_event(ev, self.training) for ev in self.engine.update(view, now)]

    def history_lost(self, stored: Mapping[str, bytes], lost_at: float,
                     now: float | None = None) -> tuple[dict[str, bytes], list[AlertEvent]]:
        """The broker lost its stored records at `lost_at` (a memory-only broker restarted)
        while this worker held the twins in `stored` (patient id -> record). Marks each twin
        (`TwinState.history_lost_at`) and raises the technical alert `history_lost` for its
        patient (low priority, resolved once acknowledged). Returns the twins' records to write
        again and the alert events."""
        now = self.clock() if now is None else now
        pids = sorted(stored)
        self._own(pids, stored)
        when = utc(lost_at).strftime("%Y-%m-%d %H:%M:%S UTC")
        events = self.engine.notice(
            pids, "history_lost", "low",
            f"the Kafka broker lost its stored records at {when} (a restart of a memory-only "
            "broker). The twin goes on from the worker's memory; readings sent but not yet "
            "processed then, the twin's earlier twin.state records and its alerts' history "
            "are gone from Kafka", {"lost_at": lost_at}, now, mark=lost_at)
        return self.records(set(pids), stored), [alert_event(ev, self.training)
                                                  for ev in events]

    def act(self, action: AlertAction, now: float | None = None,
            stored: bytes | None = None) -> list[AlertEvent]:
        """Apply a clinician's acknowledge, escalate or silence (stored: the patient's record, for a
        patient this worker has not seen yet). InvalidMessage if it cannot apply (an alert that
        is not open, a silence that is not valid)."""
        now = self.clock() if now is None else now
        if action.action == "acknowledge" and \
                split_alert_id(action.alert_id or "")[1] in EXTERNAL_KINDS:
            return []  # raised and answered outside the workers (streams.watchdog)
        self._own([action.patient_id], {action.patient_id: stored})
        try:
            if action.action == "acknowledge":
                events = self.engine.acknowledge(action.patient_id, action.alert_id or "",
                                                 action.by, now, action.comment)
            elif action.action == "escalate":
                events = self.engine.escalate(action.patient_id, action.alert_id or "",
                                              action.by, now, action.comment)
            else:
                assert action.until is not None and action.kind and action.reason
                events = self.engine.silence(action.patient_id, action.kind, action.reason,
                                             action.until.timestamp(), action.by, now)
        except KeyError:
            raise reject(f"no open alert {action.alert_id} of this patient", "not_open") from None
        except ValueError as exc:
            raise reject(str(exc), "invalid_silence") from None
        return [alert_event(ev, self.training) for ev in events]

    def silent_candidates(self, now: float) -> list[str]:
        """Patients silent for at least the no-data time without an open no-data alert, and
        patients with readings rejected lately (whose rejected-readings alert may be due, or
        may clear)."""
        limit = self.engine.policy.no_data_s
        silent = [p for p, t in self.last_arrival.items() if now - t >= limit
                  and (p, "no_data") not in self.engine.alerts]
        # an open rejected-readings alert is checked until it clears, whatever its counts
        return list(dict.fromkeys(silent + self.rejects.patients() + self._rejected_open()))

    def _rejected_open(self) -> list[str]:
        return [p for p, kind in self.engine.alerts if kind == "rejected_readings"]
