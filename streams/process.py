"""One batch of valid readings -> updated twin records, twin.state messages and alert events.

No Kafka here: the Faust agent hands in decoded readings and the stored twin records, and sends
what comes back. That keeps the logic testable without a broker and identical in every worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from streams.messages import AlertEvent, Forecast, TwinState, ValidReading, utc
from twin import bank, news2
from twin.channels import INDEX, NAMES, UNITS, C
from twin.model import ModelParams

# Response bands that raise an alert, with the IEC 60601-1-8 priority of each. NEWS2 bands are
# from RCP 2017 Table 2: a medium score calls for an urgent response, a high one for an emergency.
_ALERT_PRIORITY = {
    news2.BAND_LOW_MEDIUM: "low",
    news2.BAND_MEDIUM: "medium",
    news2.BAND_HIGH: "high",
}


@dataclass
class BatchResult:
    states: dict[str, bytes] = field(default_factory=dict)  # patient id -> new twin record
    twin_states: list[TwinState] = field(default_factory=list)
    alerts: list[AlertEvent] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    gaps: int = 0
    artifacts: int = 0
    missing: int = 0
    report: bank.StepReport | None = None  # per reading, in the order given


def _opt(v: float) -> float | None:
    return None if np.isnan(v) else round(float(v), 3)


def _by_channel(row: np.ndarray) -> dict[str, float | None]:
    return {ch: _opt(row[i]) for i, ch in enumerate(NAMES)}


class TwinProcessor:
    """Advances the twins of the patients in a batch with one vectorised `twin.bank.step`."""

    def __init__(self, params: ModelParams | None = None) -> None:
        self.params = params or ModelParams()

    def process(self, readings: list[ValidReading],
                stored: Mapping[str, bytes | None]) -> BatchResult:
        """readings: valid readings in arrival order; stored: patient id -> record or None."""
        result = BatchResult()
        if not readings:
            return result
        pids = list(dict.fromkeys(r.patient_id for r in readings))
        row_of = {p: i for i, p in enumerate(pids)}
        states = bank.new_states(len(pids), self.params)
        known = [i for i, p in enumerate(pids) if stored.get(p) is not None]
        if known:
            bank.put(states, np.asarray(known),
                     bank.from_bytes([stored[pids[i]] for i in known]))  # type: ignore[misc]

        K = len(readings)
        z = np.full((K, C), np.nan)
        for k, r in enumerate(readings):
            for ch, v in r.values.items():
                z[k, INDEX[ch]] = v
        batch = bank.Readings(
            row=np.fromiter((row_of[r.patient_id] for r in readings), np.int64, K),
            t=np.fromiter((r.t for r in readings), float, K),
            z=z,
            quality=np.array([np.nan if r.quality is None else r.quality for r in readings]),
            battery=np.array([np.nan if r.battery is None else r.battery for r in readings]),
            device=bank.device_hash([r.device_id for r in readings]),
            seq=np.fromiter((r.seq for r in readings), np.int64, K),
        )
        old_band = states["band"].copy()
        report = bank.step(states, batch, self.params)
        result.report = report
        result.applied = int(report.applied.sum())
        result.duplicates = int(report.duplicate.sum())
        result.late = int(report.late.sum())
        result.gaps = int(report.gap.sum())
        result.artifacts = int(report.artifact.sum())
        result.missing = int(report.missing.sum())

        now = np.where(np.isnan(states["t"]), 0.0, states["t"])
        out = bank.outputs(states, now, self.params)
        states["band"] = np.where(np.isnan(states["t"]), old_band, out.band)

        blobs = bank.to_bytes(states)
        for i, pid in enumerate(pids):
            if np.isnan(states["t"][i]):
                continue  # nothing applied yet (all duplicates of an unknown twin): no state
            result.states[pid] = blobs[i]
            ts = utc(float(states["t"][i]))
            result.twin_states.append(self._twin_state(pid, ts, bank.take(states, [i]), out, i))
            alert = self._band_alert(pid, ts, int(old_band[i]), int(out.band[i]),
                                     int(out.news2[i]), out.components[i])
            if alert is not None:
                result.alerts.append(alert)
        return result

    def _twin_state(self, pid: str, ts, s: bank.State, out: bank.Outputs, i: int) -> TwinState:
        forecasts = []
        for j, h in enumerate(bank.FORECAST_MINUTES):
            forecasts.append(Forecast(int(h), _by_channel(out.forecast[i, j]),
                                      _by_channel(out.low90[i, j]), _by_channel(out.high90[i, j])))
        return TwinState(
            patient_id=pid, ts=ts, units=UNITS, estimate=_by_channel(out.estimate[i]),
            sd=_by_channel(out.sd[i]), raw=_by_channel(s["raw"][0]),
            age_s=_by_channel(out.age_s[i]),
            forecasts=forecasts,
            derived={"map": _opt(out.map[i]), "map_sd": _opt(out.map_sd[i]),
                     "shock_index": _opt(out.shock_index[i]),
                     "shock_index_sd": _opt(out.shock_index_sd[i])},
            minutes_to_band=_by_channel(out.minutes_to_band[i]),
            news2=int(out.news2[i]), news2_raw=int(out.news2_raw[i]),
            news2_complete=bool(out.complete[i]),
            news2_band=news2.BAND_NAMES[int(out.band[i])],
            readings_applied=int(s["applied"][0]), artifacts=int(s["artifacts"][0]),
            missing=int(s["missing"][0]), duplicates=int(s["duplicates"][0]),
            late=int(s["late"][0]), sequence_gaps=int(s["gaps"][0]),
            battery=_opt(s["battery"][0]), quality=_opt(s["quality"][0]),
        )

    @staticmethod
    def _band_alert(pid: str, ts, old: int, new: int, score: int,
                    components: np.ndarray) -> AlertEvent | None:
        if new == old or old < 0 and new < news2.BAND_LOW_MEDIUM:
            return None
        kind = "news2-band"
        alert_id = f"{pid}:{kind}"
        contributors = [news2.COMPONENTS[j] for j in np.nonzero(components)[0]]
        if new >= news2.BAND_LOW_MEDIUM and new > old:
            event = "raised" if old < news2.BAND_LOW_MEDIUM else "escalated"
            return AlertEvent(
                alert_id=alert_id, patient_id=pid, ts=ts, event=event, kind=kind,
                category="clinical", priority=_ALERT_PRIORITY[new], channels=contributors,
                message=f"NEWS2 {score} ({news2.BAND_NAMES[new]} band) on the twin's estimates",
                news2=score)
        if new < news2.BAND_LOW_MEDIUM <= old:
            return AlertEvent(
                alert_id=alert_id, patient_id=pid, ts=ts, event="resolved", kind=kind,
                category="clinical", priority=_ALERT_PRIORITY[old], channels=contributors,
                message=f"NEWS2 {score}: back to the low band", news2=score)
        return None
