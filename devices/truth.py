"""Ground truth of a simulation: what really happened to each simulated patient.

For every patient: profile, scenario, onset, and the first time each vital sign's NEWS2 parameter
score in the TRUE (noise-free) signal rose above its score at the start (levels 1, 2 and 3), and
the first time the true aggregate reached the RCP 2017 response triggers (a single parameter
scoring 3; aggregate 5; aggregate 7). Scored on air and Alert, with the patient's SpO2 scale.
Alert sensitivity and lead time (`patient-twin evaluate`) are measured against these times.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import numpy as np

from devices import scenarios
from devices.faults import Delivery
from devices.simulator import Cohort
from twin import news2
from twin.channels import INDEX

TRUTH_SCHEMA = "patient-twin.sim-truth/1"
GRID_S = 10.0  # the true signal is evaluated every 10 s

_SCORED = news2.COLUMN  # the NEWS2 component column of each charted vital sign


class PatientTruth(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the ground-truth file."""

    schema: str = TRUTH_SCHEMA
    patient_id: str
    device_id: str
    profile: dict[str, object]
    scenario: str
    onset: datetime | None  # None: stable patient, or onset after the simulation ended
    severity: float | None
    start_scores: dict[str, int]  # channel -> NEWS2 parameter score of the true signal at start
    # channel -> {"1"|"2"|"3": first time the true score reached that level}, levels above start
    crossings: dict[str, dict[str, datetime]]
    first_red: datetime | None  # a single true parameter scoring 3 (if none at start)
    first_news2_5: datetime | None
    first_news2_7: datetime | None
    low_battery: datetime | None
    battery_empty: datetime | None


def _when(start: float, t: float) -> datetime:
    return datetime.fromtimestamp(start + t, UTC)


def score_truth(cohort: Cohort, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NEWS2 of true values on air and Alert. values: `(N, C)`. Returns total `(N,)`, components
    `(N, 7)`."""
    n = values.shape[0]
    total, comp, _ = news2.news2(values[:, INDEX["rr"]], values[:, INDEX["spo2"]],
                                 values[:, INDEX["temp"]], values[:, INDEX["sbp"]],
                                 values[:, INDEX["hr"]], np.zeros(n), np.ones(n),
                                 cohort.profiles.spo2_scale)
    return total, comp


def compute(cohort: Cohort, elapsed_s: float, delivery: Delivery | None = None,
            grid_s: float = GRID_S) -> list[PatientTruth]:
    """Ground truth over simulated seconds [0, elapsed_s]."""
    n = cohort.n
    grid = np.arange(0.0, elapsed_s + 1e-9, grid_s)
    first = {ch: np.full((n, 4), np.nan) for ch in _SCORED}
    first_red = np.full(n, np.nan)
    first5 = np.full(n, np.nan)
    first7 = np.full(n, np.nan)
    start_comp = None
    for t in grid:
        total, comp = score_truth(cohort, cohort.true_values(float(t)))
        if start_comp is None:
            start_comp = comp
            start_total = total
            start_red = (comp >= 3).any(axis=1)
        for ch, col in _SCORED.items():
            f = first[ch]
            for level in (1, 2, 3):
                hit = (comp[:, col] >= level) & (start_comp[:, col] < level) & np.isnan(
                    f[:, level])
                f[:, level] = np.where(hit, t, f[:, level])
        red = (comp >= 3).any(axis=1) & ~start_red & np.isnan(first_red)
        first_red = np.where(red, t, first_red)
        first5 = np.where((total >= 5) & (start_total < 5) & np.isnan(first5), t, first5)
        first7 = np.where((total >= 7) & (start_total < 7) & np.isnan(first7), t, first7)
    assert start_comp is not None

    def opt(v: float) -> datetime | None:
        return None if np.isnan(v) else _when(cohort.start, v)

    out = []
    for i in range(n):
        onset = cohort.onset_s[i]
        crossings = {ch: {str(level): _when(cohort.start, first[ch][i, level])
                          for level in (1, 2, 3) if not np.isnan(first[ch][i, level])}
                     for ch in _SCORED}
        out.append(PatientTruth(
            patient_id=cohort.patient_ids[i], device_id=cohort.device_ids[i],
            profile=cohort.profiles.describe(i),
            scenario=scenarios.SCENARIOS[int(cohort.scenario[i])],
            onset=_when(cohort.start, onset) if onset <= elapsed_s else None,
            severity=(None if cohort.scenario[i] == scenarios.STABLE
                      else round(float(cohort.severity[i]), 3)),
            start_scores={ch: int(start_comp[i, col]) for ch, col in _SCORED.items()},
            crossings={ch: c for ch, c in crossings.items() if c},
            first_red=opt(first_red[i]), first_news2_5=opt(first5[i]),
            first_news2_7=opt(first7[i]),
            low_battery=opt(delivery.low_at[i]) if delivery is not None else None,
            battery_empty=opt(delivery.empty_at[i]) if delivery is not None else None))
    return out


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PatientTruth)


def write(path: str, truths: list[PatientTruth]) -> None:
    with open(path, "wb") as f:
        for tr in truths:
            f.write(_encoder.encode(tr) + b"\n")


def read(path: str) -> list[PatientTruth]:
    with open(path, "rb") as f:
        return [_decoder.decode(line) for line in f if line.strip()]
