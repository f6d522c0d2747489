"""National Early Warning Score 2, vectorised over patients.

Source: Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising the
assessment of acute-illness severity in the NHS. Updated report of a working party. London: RCP,
2017. Chart 1 (the NEWS2 scoring system), Chart 2 (SpO2 scale 2) and Table 2 / Chart 3 (clinical
response thresholds). Every threshold below is transcribed from that chart; none is invented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Column order of the `components` array, as on the RCP chart.
COMPONENTS: tuple[str, ...] = (
    "respiration_rate",
    "spo2",
    "air_or_oxygen",
    "systolic_bp",
    "pulse",
    "consciousness",
    "temperature",
)

# Clinical response bands (RCP 2017, Table 2): aggregate 0-4 low; a single red score (3 in one
# parameter) low-medium; aggregate 5-6 medium; aggregate 7 or more high.
BAND_NONE, BAND_LOW, BAND_LOW_MEDIUM, BAND_MEDIUM, BAND_HIGH = 0, 1, 2, 3, 4
BAND_NAMES: tuple[str, ...] = ("none", "low", "low-medium", "medium", "high")


@dataclass(frozen=True)
class Parameter:
    """One row of the RCP 2017 chart for a measured vital sign: a value at or below `edges[0]`
    scores `scores[0]`, ..., above the last edge `scores[-1]`. The chart reads values at
    `resolution` (whole numbers; temperature in tenths of a degree)."""

    component: str  # its column in `COMPONENTS`
    edges: tuple[float, ...]
    scores: tuple[int, ...]
    resolution: float = 1.0

    def continuous_edges(self) -> np.ndarray:
        """Where the score changes on a continuous scale: half-way between the chart's values
        (RR <= 8 scores 3 means RR < 8.5 does), `(E,)`."""
        return (np.asarray(self.edges) / self.resolution + 0.5) * self.resolution


# The NEWS2 chart (RCP 2017, Chart 1), the one table every score, band edge and red limit of the
# project comes from. SpO2 is scale 1 here; scale 2 (Chart 2) is below.
CHART: dict[str, Parameter] = {
    # Respiration rate: <=8 -> 3; 9-11 -> 1; 12-20 -> 0; 21-24 -> 2; >=25 -> 3
    "rr": Parameter("respiration_rate", (8, 11, 20, 24), (3, 1, 0, 2, 3)),
    # SpO2 scale 1: <=91 -> 3; 92-93 -> 2; 94-95 -> 1; >=96 -> 0
    "spo2": Parameter("spo2", (91, 93, 95), (3, 2, 1, 0)),
    # Systolic BP: <=90 -> 3; 91-100 -> 2; 101-110 -> 1; 111-219 -> 0; >=220 -> 3
    "sbp": Parameter("systolic_bp", (90, 100, 110, 219), (3, 2, 1, 0, 3)),
    # Pulse: <=40 -> 3; 41-50 -> 1; 51-90 -> 0; 91-110 -> 1; 111-130 -> 2; >=131 -> 3
    "hr": Parameter("pulse", (40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3)),
    # Temperature: <=35.0 -> 3; 35.1-36.0 -> 1; 36.1-38.0 -> 0; 38.1-39.0 -> 1; >=39.1 -> 2
    "temp": Parameter("temperature", (35.0, 36.0, 38.0, 39.0), (3, 1, 0, 1, 2), 0.1),
}
# SpO2 scale 2 (RCP 2017, Chart 2): <=83 -> 3; 84-85 -> 2; 86-87 -> 1; 88-92 (or >=93 on air)
# -> 0; on oxygen: 93-94 -> 1; 95-96 -> 2; >=97 -> 3
SPO2_SCALE2_AIR = Parameter("spo2", (83, 85, 87), (3, 2, 1, 0))
SPO2_SCALE2_OXYGEN = Parameter("spo2", (83, 85, 87, 92, 94, 96), (3, 2, 1, 0, 1, 2, 3))
# The `components` column of each charted vital sign (channel names of `twin.channels`).
COLUMN: dict[str, int] = {ch: COMPONENTS.index(p.component) for ch, p in CHART.items()}


def score_values(channel: str, v: np.ndarray) -> np.ndarray:
    """The chart's score of continuous values of one vital sign (scale 1 for SpO2), `v: (...)`
    -> `(...)` int: a value on an edge of `Parameter.continuous_edges` scores the lower band."""
    p = CHART[channel]
    return np.asarray(p.scores)[np.searchsorted(p.continuous_edges(), v)]


def _whole(v: np.ndarray) -> np.ndarray:
    # The chart scores whole numbers; round half up, as a nurse reading a monitor would.
    return np.floor(v + 0.5)


def _score_bins(v: np.ndarray, p: Parameter) -> np.ndarray:
    """Score `v`, read at the chart's resolution (`v` in units of `p.resolution`), by the
    right-closed bins of `p`. NaN scores 0."""
    edges = np.round(np.asarray(p.edges, dtype=float) / p.resolution)
    idx = np.searchsorted(edges, v, side="left")
    out = np.asarray(p.scores, dtype=np.int64)[idx]
    return np.where(np.isnan(v), 0, out)


def news2(
    rr: np.ndarray,
    spo2: np.ndarray,
    temp: np.ndarray,
    sbp: np.ndarray,
    hr: np.ndarray,
    on_oxygen: np.ndarray,
    alert: np.ndarray,
    spo2_scale: int | np.ndarray = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score NEWS2 for N patients.

    rr, spo2, temp (degC), sbp, hr: `(N,)` float, NaN = not available; on_oxygen: `(N,)` bool or
    float (1 = supplemental oxygen, 0 = air, NaN = unknown); alert: `(N,)` bool or float (1 = Alert
    on ACVPU, 0 = new Confusion, Voice, Pain or Unresponsive, NaN = unknown); spo2_scale: 1 or 2,
    scalar or `(N,)` (scale 2 only where a clinician prescribed a target of 88-92 %).

    Returns `total (N,) int`, `components (N, 7) int` in the order of `COMPONENTS`, and
    `complete (N,) bool`, False where any parameter is NaN (that parameter scored 0).
    """
    rr = _whole(np.asarray(rr, dtype=float))
    spo2 = _whole(np.asarray(spo2, dtype=float))
    sbp = _whole(np.asarray(sbp, dtype=float))
    hr = _whole(np.asarray(hr, dtype=float))
    # Temperature is charted to 0.1 degC; work in tenths as integers to avoid 38.05 -> 38.0.
    temp10 = np.floor(np.asarray(temp, dtype=float) * 10.0 + 0.5 + 1e-9)
    oxy = np.asarray(on_oxygen, dtype=float)
    alert_f = np.asarray(alert, dtype=float)
    N = np.broadcast_shapes(rr.shape, spo2.shape, temp10.shape, sbp.shape, hr.shape,
                            oxy.shape, alert_f.shape)
    scale = np.broadcast_to(np.asarray(spo2_scale), N)

    s_rr = _score_bins(rr, CHART["rr"])
    s_sp1 = _score_bins(spo2, CHART["spo2"])
    s_sp2 = np.where(oxy == 1.0, _score_bins(spo2, SPO2_SCALE2_OXYGEN),
                     _score_bins(spo2, SPO2_SCALE2_AIR))
    s_spo2 = np.where(scale == 2, s_sp2, s_sp1)
    # Air or oxygen: oxygen -> 2; air -> 0
    s_o2 = np.where(oxy == 1.0, 2, 0)
    s_sbp = _score_bins(sbp, CHART["sbp"])
    s_hr = _score_bins(hr, CHART["hr"])
    # Consciousness: Alert -> 0; new Confusion, Voice, Pain, Unresponsive -> 3
    s_cons = np.where(alert_f == 0.0, 3, 0)
    s_temp = _score_bins(temp10, CHART["temp"])

    components = np.stack(
        [np.broadcast_to(s, N) for s in (s_rr, s_spo2, s_o2, s_sbp, s_hr, s_cons, s_temp)],
        axis=-1,
    ).astype(np.int64)
    total = components.sum(axis=-1)
    complete = ~(
        np.isnan(rr) | np.isnan(spo2) | np.isnan(temp10) | np.isnan(sbp) | np.isnan(hr)
        | np.isnan(oxy) | np.isnan(alert_f)
    )
    return total, components, np.broadcast_to(complete, N).copy()


def band(total: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Clinical response band per patient (RCP 2017, Table 2).

    total: `(N,)` int; components: `(N, 7)` int. Returns `(N,)` int among `BAND_LOW` (0-4),
    `BAND_LOW_MEDIUM` (a single parameter scoring 3), `BAND_MEDIUM` (5-6), `BAND_HIGH` (>=7).
    """
    total = np.asarray(total)
    red = (np.asarray(components) >= 3).any(axis=-1)
    out = np.full(total.shape, BAND_LOW, dtype=np.int64)
    out = np.where(red, BAND_LOW_MEDIUM, out)
    out = np.where(total >= 5, BAND_MEDIUM, out)
    return np.where(total >= 7, BAND_HIGH, out)


# Where a single parameter scores 3, from the chart, on the continuous scale (RR <= 8 means
# RR < 8.5). SpO2 depends on the scale (on air).
_RED_LOW = {ch: float(p.continuous_edges()[0]) for ch, p in CHART.items() if p.scores[0] == 3}
_RED_HIGH = {ch: float(p.continuous_edges()[-1]) for ch, p in CHART.items()
             if p.scores[-1] == 3}
_RED_LOW_SPO2_SCALE2 = float(SPO2_SCALE2_AIR.continuous_edges()[0])


def red_limits(spo2_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous limits beyond which a vital sign scores 3.

    spo2_scale: `(N,)` 1 or 2. Returns `low (N, C)` (a value below scores 3) and `high (N, C)`
    (a value at or above scores 3), NaN where there is no such limit (e.g. diastolic pressure).
    """
    from twin.channels import INDEX, C

    scale = np.asarray(spo2_scale)
    n = scale.shape[0]
    low = np.full((n, C), np.nan)
    high = np.full((n, C), np.nan)
    for ch, v in _RED_LOW.items():
        low[:, INDEX[ch]] = v
    for ch, v in _RED_HIGH.items():
        high[:, INDEX[ch]] = v
    low[:, INDEX["spo2"]] = np.where(scale == 2, _RED_LOW_SPO2_SCALE2, _RED_LOW["spo2"])
    return low, high
