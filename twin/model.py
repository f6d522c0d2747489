"""The twin's state-space model: a fast level around a slow level, per vital sign.

Channel c has state `(L, u)`: `L` is the level a reading measures, `u` the slower level it returns
to. Over seconds to minutes `L` moves as freely as a live monitor shows (`level_diffusion`); a
deviation from `u` fades with time constant `1 / fast_reversion` minutes, and `u` itself drifts
over hours (`slow_diffusion`). Time is in minutes inside the model:

    dL = -kappa (L - u) dt + level_diffusion dW1
    du =                     slow_diffusion dW2

A single random-walk level cannot be right at both timescales: PhysioNet's hourly ICU charts
(docs/calibration-notes.md) show changes over hours three times smaller than a live monitor's
per-minute diffusion implies, so today's forecasts were 3x too wide. The discretisation is exact
(`transition`), so a forecast 4 h ahead is the same in one step or in 14,400 one-second steps.
The former damped trend is gone: fitted on the same data its diffusion went to zero (the hourly
charts show no trend that persists), and its extrapolation made forecasts overconfident in rises
that then reverted.

SpO2 is not filtered as a percentage: its pair is a latent arterial oxygen tension (PaO2, mmHg),
and a reading is `odc(PaO2)`, the oxyhaemoglobin dissociation curve. Saturation is flat above about
96 %, so a change in oxygenation shows in SpO2 late and then fast; filtering the latent tension
lets the twin be uncertain where the curve is flat and react where it is steep. The unscented
filter (`twin.ukf`) handles that one nonlinear channel; the others are linear and use the closed
form of the Kalman filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.special import chdtri

from twin.channels import INDEX, NAMES, C

SPO2 = INDEX["spo2"]


def odc(pao2: np.ndarray) -> np.ndarray:
    """SpO2 (%) from PaO2 (mmHg): Severinghaus JW. Simple, accurate equations for human blood O2
    dissociation computations. J Appl Physiol 1979;46(3):599-602. Standard conditions (pH 7.4,
    37 degC, PCO2 40 mmHg). Inputs below 1 mmHg are clipped: the curve is defined for tensions."""
    p = np.maximum(pao2, 1.0)
    return 100.0 / (1.0 + 23400.0 / (p**3 + 150.0 * p))


_PAO2_GRID = np.geomspace(1.0, 700.0, 4000)
_SPO2_GRID = odc(_PAO2_GRID)


def odc_inverse(spo2: np.ndarray) -> np.ndarray:
    """PaO2 (mmHg) whose saturation is `spo2` (%), by interpolating the monotone curve.

    Saturations at or above the curve's top (about 99.99 % at 700 mmHg) map to 700 mmHg."""
    return np.interp(spo2, _SPO2_GRID, _PAO2_GRID)


# A first SpO2 reading of 100 % says only "PaO2 above about 130 mmHg": start the latent there, not
# at the top of the curve, and let the filter's broad prior do the rest.
SPO2_INIT_CAP = 99.0


def _per_channel(**values: float) -> np.ndarray:
    return np.array([values[name] for name in NAMES], dtype=float)


@dataclass(frozen=True)
class ModelParams:
    """Per-channel parameters, each `(C,)` in the order of `twin.channels.CHANNELS`.

    For `spo2` the level/trend figures are for the latent PaO2 (mmHg); its measurement SD is in %.
    The noise figures are engineering choices (docs/twin.md), not clinical thresholds.
    """

    # Starting slow level and its SD, used only until a channel is first observed (the fast
    # level starts around it with the fast part's stationary SD, `fast_sd`).
    prior_level: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=75, rr=16, spo2=95, sbp=120, dbp=75, temp=37.0))
    prior_level_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=30, rr=8, spo2=25, sbp=30, dbp=20, temp=1.5))
    # The fast level's diffusion per sqrt(minute): how far a monitor's value moves in minutes.
    level_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=3.0, rr=1.2, spo2=3.0, sbp=4.0, dbp=3.0,
                                             temp=0.03))
    # How fast a deviation from the slow level fades, per minute, and the slow level's diffusion
    # per sqrt(minute): fitted by maximum likelihood of the next hourly reading on the 1,000
    # even-numbered PhysioNet 2019 stays, the fast diffusion held at the value above
    # (docs/calibration-notes.md, candidate e; its slow-level reversion over 11-64 h is left
    # out: it changes a 4 h forecast's SD by less than 5 %).
    fast_reversion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.3051, rr=0.323, spo2=0.2898, sbp=0.09271,
                                             dbp=0.2373, temp=0.007495))
    slow_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.6201, rr=0.1239, spo2=0.7649, sbp=0.7518,
                                             dbp=0.4504, temp=0.02511))
    # Measurement SD at signal quality 1; R = sd^2 / max(quality, min_quality).
    measurement_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=3.0, rr=3.0, spo2=1.5, sbp=6.0, dbp=5.0,
                                             temp=0.15))
    min_quality: float = 0.1
    # A reading whose normalised innovation exceeds this chi-square(1) quantile is an artifact.
    # Systolic and diastolic pressure move together: their 60-240 min forecast errors on the
    # PhysioNet 2019 hours correlate +0.52 to +0.57 (other pairs of channels at most 0.15), so
    # MAP's uncertainty counts that correlation. With the channels taken as independent, MAP's
    # 90 % interval covered 0.84-0.85 of later readings there; with it, 0.90-0.91
    # (docs/twin.md, "Cross-channel coupling").
    bp_correlation: float = 0.55
    gate_probability: float = 0.9999
    # After this many consecutive rejections the channel restarts on the new reading: a sustained
    # change is physiology, not an artifact.
    max_consecutive_rejections: int = 5
    # ...or after a second rejection in a row once nothing was believed for this long: counted in
    # readings alone, a device reading once a minute (or a cuff every 15 min) would have a real
    # change thrown away for 5 minutes (5 hours).
    max_rejected_s: float = 120.0
    # The drift trend beside the twin (`twin.trend`, for the predictive alert): how much a
    # channel's slope may change, per minute per sqrt(minute), and how unsure a new trend's slope
    # is, per minute. A slope of one NEWS2 middle band's width per hour (heart rate 20 /min,
    # respiration 4 /min, SpO2 2 %, pressures 10 mmHg, temperature 1 degC: RCP 2017 Chart 1)
    # may develop within half an hour; a new trend's slope is unknown to about that width per
    # hour. Engineering choices, not fitted: hourly ICU charts cannot show a slope that starts
    # and ends within hours. Measured against other choices in docs/twin.md, "Drift trend".
    trend_slope_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=20.0, rr=4.0, spo2=2.0, sbp=10.0, dbp=10.0,
                                             temp=1.0) / 60.0 / np.sqrt(30.0))
    trend_slope_prior_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=20.0, rr=4.0, spo2=2.0, sbp=10.0, dbp=10.0,
                                             temp=1.0) / 60.0)
    # Readings are gathered into blocks this long, each one observation of the trend: fast
    # fluctuations decorrelate within 1 / fast_reversion (about 3 minutes for heart rate,
    # respiration and SpO2).
    trend_interval_min: float = 5.0

    @cached_property
    def gate(self) -> float:
        # The chi-square(1) quantile, computed once per parameter set (cached_property writes
        # the instance dict, which frozen allows). scipy.special's inverse, not scipy.stats'
        # chi2.ppf (the same value): importing scipy.stats costs every process that loads the
        # twin ~70 MB of memory and 0.6 s.
        return float(chdtri(1, 1.0 - self.gate_probability))

    @property
    def fast_var(self) -> np.ndarray:
        """`(C,)` the stationary variance of `L - u`: how far the fast level strays."""
        return self.level_diffusion**2 / (2.0 * self.fast_reversion)

    def __post_init__(self) -> None:
        if not (np.all(self.fast_reversion > 0) and np.all(self.level_diffusion > 0)
                and np.all(self.slow_diffusion >= 0) and np.all(self.measurement_sd > 0)):
            raise ValueError("ModelParams: fast_reversion, level_diffusion and measurement_sd "
                             "must be > 0 and slow_diffusion >= 0")


def transition(dt_min: np.ndarray, params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """The exact transition of every channel's `(L, u)` over elapsed times.

    dt_min: `(N,)` minutes (>= 0). Returns `F (N, C, 3)`, the entries `(f00, f01, f11)` of the
    upper-triangular `F = [[e, 1 - e], [0, 1]]` with `e = exp(-kappa dt)`, and the process noise
    `q (N, C, 3)` as `(q00, q01, q11)`: the integral of the diffusion over the step, so that
    steps compose (`transition(a + b)` is `transition(a)` then `transition(b)`).
    """
    k = params.fast_reversion
    s_l, s_u = params.level_diffusion**2, params.slow_diffusion**2
    h = dt_min[:, None]
    x = k * h  # (N, C)
    one_minus_e = -np.expm1(-x)  # 1 - exp(-k h), precise for tiny steps
    one_minus_e2 = -np.expm1(-2.0 * x)
    F = np.empty((dt_min.shape[0], C, 3))
    F[..., 0] = 1.0 - one_minus_e
    F[..., 1] = one_minus_e
    F[..., 2] = 1.0
    # With A = [[-k, k], [0, 0]] and G = diag(s_l, s_u) (eigenvectors (1, 0), (1, 1)):
    #   q11 = s_u h,  q01 = s_u (h - (1 - e) / k),
    #   q00 = (s_l + s_u) (1 - e^2) / (2 k) - 2 s_u (1 - e) / k + s_u h
    # i.e. q00 = s_l (1 - e^2) / (2 k) + s_u (lag - (1 - e)^2 / (2 k)), lag = h - (1 - e) / k;
    # the bracket is ~ k^2 h^3 / 3 >= 0 and only rounding can take it below.
    lag = h - one_minus_e / k
    q = np.empty_like(F)
    q[..., 2] = s_u * h
    q[..., 1] = s_u * lag
    q[..., 0] = (s_l * one_minus_e2 / (2.0 * k)
                 + s_u * np.maximum(lag - one_minus_e**2 / (2.0 * k), 0.0))
    return F, q


def measurement_var(quality: np.ndarray, params: ModelParams) -> np.ndarray:
    """Measurement variances `(N, C)` for signal qualities `(N,)` in [0, 1] (NaN: assume 1)."""
    q = np.clip(np.nan_to_num(quality, nan=1.0), params.min_quality, 1.0)
    return params.measurement_sd[None, :] ** 2 / q[:, None]


def spo2_hx(sigmas: np.ndarray) -> np.ndarray:
    """Measurement function of the SpO2 pair for `twin.ukf`: `(N, S, 2) -> (N, S, 1)` (a reading
    measures the fast level)."""
    return odc(sigmas[..., :1])
