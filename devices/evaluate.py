"""`patient-twin evaluate`: the twin's alerts and a naive threshold baseline, against ground truth.

A simulated cohort (`devices`, faults on) runs offline through the same twin bank and alert engine
as the worker, vectorised over patients: one bank step per tick, the alert engine every
`--alert-every` simulated seconds. The baseline is what a bedside monitor without a twin does:
an alarm each time one raw reading scores 3 on a NEWS2 parameter, or the aggregate NEWS2 of the
latest raw value of each vital sign (implausible values ignored) reaches 5; an alarm is counted when
the condition starts (edge-triggered, as monitors alarm), not for every reading while it lasts.

Ground truth: a deterioration event is a scenario patient whose TRUE (noise-free) signal meets a
RCP 2017 response trigger (a single red parameter, or aggregate 5) for at least 10 minutes after
the onset; the event time is the start of that period (`deterioration_events`). A
clinical alert for that patient at or after the onset detects it; the lead time is the event time
minus the first such alert (positive: the alert came first). Any other clinical alert (stable
patients, or before the onset) is false. Rates are per patient-day of simulated time.

A ward answers its alerts: every open alert is acknowledged `--ack-after-min` (default 10) after
it was raised (`acknowledge_due`), as a nurse would at the bedside. Without that, one early alert
that latches (IEC 60601-1-8: a high-priority alarm stays until acknowledged) hides every later
deterioration of that patient, which measures the simulation, not the twin. The delay is a
modelling assumption, not a clinical threshold; `--no-ack` gives the never-answered worst case.
The baseline needs no acknowledgement: it alarms on every rising edge, as a bedside monitor does.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from devices.faults import Delivery, DeviceEffects
from devices.simulator import Cohort
from devices.truth import score_truth
from streams.worker.process import twin_view
from twin import bank, news2, risk
from twin.alerts import AlertEngine
from twin.channels import INDEX, PLAUSIBLE_HIGH, PLAUSIBLE_LOW, C
from twin.devices import device_hash
from twin.model import ModelParams
from twin.policy import AlertPolicy


@dataclass
class Alarms:
    """Clinical alert times per patient (simulated seconds since the start)."""

    times: dict[int, list[float]] = field(default_factory=dict)

    def add(self, i: int, t: float) -> None:
        self.times.setdefault(i, []).append(t)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.times.values())


ACK_AFTER_MIN = 10.0


def acknowledge_due(engine: AlertEngine, now: float, after_s: float,
                    by: str = "evaluate") -> int:
    """Acknowledge every open, unacknowledged alert raised at least `after_s` before `now`, as
    a ward that answers its alerts would. Returns how many were acknowledged."""
    due = [a for a in engine.alerts.values()
           if a.state in ("active", "latched") and a.raised_at is not None
           and now - a.raised_at >= after_s]
    for a in due:
        engine.acknowledge(a.patient_id, a.alert_id, by, now)
    return len(due)


EVENT_GRID_S = 60.0
EVENT_MIN_S = 600.0


def deterioration_events(cohort: Cohort, duration: float) -> np.ndarray:
    """Per patient, the start of the first period after the scenario's onset in which the TRUE
    signal meets a RCP 2017 response trigger (a single red parameter, or aggregate >= 5) for at
    least `EVENT_MIN_S` (a passing peak during an activity bout is not a deterioration). NaN:
    no event (stable patients included). `(N,)` simulated seconds."""
    n = cohort.n
    grid = np.arange(0.0, duration + 1e-9, EVENT_GRID_S)
    need = int(EVENT_MIN_S // EVENT_GRID_S)
    run = np.zeros(n, dtype=np.int64)
    event = np.full(n, np.nan)
    deteriorating = cohort.scenario != 0
    for t in grid:
        total, comp = score_truth(cohort, cohort.true_values(float(t)))
        trig = ((comp >= 3).any(axis=1) | (total >= 5)) & (t >= cohort.onset_s) & deteriorating
        run = np.where(trig, run + 1, 0)
        hit = (run >= need) & np.isnan(event)
        event = np.where(hit, t - (need - 1) * EVENT_GRID_S, event)
    return event


def _score_metrics(alarms: Alarms, event_t: np.ndarray, onset: np.ndarray, patients: int,
                   hours: float) -> dict[str, float | None]:
    detected = 0
    leads: list[float] = []
    false = 0
    has_event = ~np.isnan(event_t)
    for i, ts in alarms.times.items():
        good = [t for t in ts if has_event[i] and t >= onset[i]]
        false += len(ts) - len(good)
    for i in np.nonzero(has_event)[0]:
        good = [t for t in alarms.times.get(int(i), []) if t >= onset[i]]
        if good:
            detected += 1
            leads.append((event_t[i] - min(good)) / 60.0)
    days = patients * hours / 24.0
    n_events = int(has_event.sum())
    return {
        "sensitivity": detected / n_events if n_events else None,
        "median_lead_min": float(np.median(leads)) if leads else None,
        "false_per_patient_day": false / days,
        "alerts_per_patient_day": alarms.total / days,
    }


def evaluate(patients: int, hours: float, seed: int, *, rate: float = 0.2,
             alert_every: float = 15.0, mix: str | None = None,
             policy: AlertPolicy | None = None, progress: bool = True,
             ack_after_min: float | None = ACK_AFTER_MIN) -> dict:
    """Run the cohort; returns the result object printed as the last line. `ack_after_min`:
    minutes after which the simulated ward acknowledges an alert (None: never)."""
    from devices.scenarios import DEFAULT_MIX

    duration = hours * 3600.0
    start = 1.8e9
    params = ModelParams()
    cohort = Cohort(patients, seed=seed, mix=mix or DEFAULT_MIX, horizon_s=duration,
                    start=start, rate=rate, effects=DeviceEffects())
    delivery = Delivery(patients, cohort.effects, np.random.default_rng([seed, 1]))
    states = bank.new_states(patients, params)
    model, policy = risk.with_live_model(policy)  # the worker's risk and its operating point
    engine = AlertEngine(policy)
    scale = cohort.profiles.spo2_scale
    ids = cohort.patient_ids
    devices = device_hash(cohort.device_ids)
    seq = np.zeros(patients, dtype=np.int64)
    twin_alarms, base_alarms, technical = Alarms(), Alarms(), 0
    raw_latest = np.full((patients, C), np.nan)
    base_on = np.zeros(patients, dtype=bool)
    rows = np.arange(patients)
    dt = 1.0 / rate
    next_alert = 0.0
    steps = int(np.ceil(duration / dt))
    for k in tqdm(range(steps), unit="step", file=sys.stderr, disable=not progress,
                  desc="evaluate", mininterval=1.0):
        t = k * dt
        tick = cohort.tick(t)
        fate = delivery.step(t, dt)
        send = tick.due.any(axis=1) & fate.alive
        seq += send
        # lost and late messages do not reach the twin in time (a late one is skipped as late)
        deliver = send & ~fate.lost & ~(fate.delay_s > 0)
        if deliver.any():
            r = rows[deliver]
            z = tick.values[r]
            bank.step(states, bank.Readings(
                row=r, t=start + t + delivery.skew_s[r], z=z,
                quality=np.where(tick.active[r], 0.8, 0.95), battery=delivery.battery[r],
                device=devices[r], seq=seq[r]), params)
            # the naive monitor: latest plausible raw value per channel, scored as it arrives
            ok = (z >= PLAUSIBLE_LOW) & (z <= PLAUSIBLE_HIGH)
            raw_latest[r] = np.where(ok, z, raw_latest[r])
            v = raw_latest
            total, comp, _ = news2.news2(v[:, INDEX["rr"]], v[:, INDEX["spo2"]],
                                         v[:, INDEX["temp"]], v[:, INDEX["sbp"]],
                                         v[:, INDEX["hr"]], np.zeros(patients),
                                         np.ones(patients), scale)
            fresh = np.zeros((patients, C), dtype=bool)
            fresh[r] = ok & ~np.isnan(z)
            # a red score in a reading that just arrived, or the aggregate reaching 5
            red_now = np.zeros(patients, dtype=bool)
            for ch, col in news2.COLUMN.items():
                red_now |= fresh[:, INDEX[ch]] & (comp[:, col] >= 3)
            on = red_now | (total >= 5)
            for i in np.nonzero(on & ~base_on)[0]:
                base_alarms.add(int(i), t)
            base_on = on
        if t >= next_alert:
            next_alert += alert_every
            now = np.full(patients, start + t)
            out = bank.outputs(states, now, params, spo2_scale=scale)
            since = np.where(np.isnan(states["t"]), np.nan, start + t - states["t"])
            risk.update_drift(states, out.estimate, now)
            view = twin_view(ids, states, out, since, scale,
                             p_risk=risk.score_live(model, states, out, now, params))
            for ev in engine.update(view, start + t):
                if ev.name != "raised":
                    continue
                if ev.alert.category == "clinical":
                    twin_alarms.add(int(ev.alert.patient_id[1:]) - 1, t)
                else:
                    technical += 1
            if ack_after_min is not None:
                acknowledge_due(engine, start + t, ack_after_min * 60.0)

    onset = cohort.onset_s.copy()
    event_t = deterioration_events(cohort, duration)
    result = {
        "twin": _score_metrics(twin_alarms, event_t, onset, patients, hours),
        "baseline": _score_metrics(base_alarms, event_t, onset, patients, hours),
        "patients": patients, "hours": hours, "events": int((~np.isnan(event_t)).sum()),
        "seed": seed, "ack_after_min": ack_after_min,
        "technical_per_patient_day": technical / (patients * hours / 24.0),
        "fatigue": engine.stats.summary(patients * hours / 24.0),
    }
    return result


def table(result: dict) -> str:
    """The human-readable side-by-side table printed before the JSON line."""
    rows = [("sensitivity", "{:.2f}"), ("median_lead_min", "{:+.1f}"),
            ("false_per_patient_day", "{:.2f}"), ("alerts_per_patient_day", "{:.2f}")]
    lines = [f"{'':24} {'twin':>10} {'baseline':>10}"]
    for key, fmt in rows:
        cells = [fmt.format(result[w][key]) if result[w][key] is not None else "-"
                 for w in ("twin", "baseline")]
        lines.append(f"{key:24} {cells[0]:>10} {cells[1]:>10}")
    lines.append(f"{result['patients']} patients x {result['hours']:g} h, {result['events']} "
                 f"deterioration events (seed {result['seed']}); technical alerts "
                 f"{result['technical_per_patient_day']:.2f} per patient-day; alerts "
                 + ("never acknowledged" if result["ack_after_min"] is None else
                    f"acknowledged after {result['ack_after_min']:g} min"))
    return "\n".join(lines)


def main(patients: int, hours: float, seed: int, progress: bool,
         ack_after_min: float | None = ACK_AFTER_MIN) -> int:
    result = evaluate(patients, hours, seed, progress=progress, ack_after_min=ack_after_min)
    print(table(result))
    print(json.dumps(result))
    return 0
