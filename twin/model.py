"""The twin's state-space model: a damped level/trend pair per vital sign.

Channel c has state `(level, trend)`; the trend is per minute and decays with rate `lambda`, so the
level follows `L(t + h) = L + b (1 - exp(-lambda h)) / lambda`. Time is in minutes inside the model.

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
from scipy.stats import chi2

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

    # Starting level and SD, used only until a channel is first observed.
    prior_level: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=75, rr=16, spo2=95, sbp=120, dbp=75, temp=37.0))
    prior_level_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=30, rr=8, spo2=25, sbp=30, dbp=20, temp=1.5))
    prior_trend_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.5, rr=0.2, spo2=0.5, sbp=0.5, dbp=0.4,
                                             temp=0.01))
    # Random-walk diffusion per sqrt(minute): process noise grows linearly with dt.
    level_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=3.0, rr=1.2, spo2=3.0, sbp=4.0, dbp=3.0,
                                             temp=0.03))
    trend_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.05, rr=0.02, spo2=0.05, sbp=0.05, dbp=0.04,
                                             temp=0.001))
    # Measurement SD at signal quality 1; R = sd^2 / max(quality, min_quality).
    measurement_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=3.0, rr=3.0, spo2=1.5, sbp=6.0, dbp=5.0,
                                             temp=0.15))
    min_quality: float = 0.1
    # Trend decay rate per minute (half-life ln 2 / 0.02 = 35 min): forecasts do not extrapolate
    # a blip for an hour.
    trend_decay: float = 0.02
    # A reading whose normalised innovation exceeds this chi-square(1) quantile is an artifact.
    gate_probability: float = 0.9999
    # After this many consecutive rejections the channel restarts on the new reading: a sustained
    # change is physiology, not an artifact.
    max_consecutive_rejections: int = 5
    # ...or after a second rejection in a row once nothing was believed for this long: counted in
    # readings alone, a device reading once a minute (or a cuff every 15 min) would have a real
    # change thrown away for 5 minutes (5 hours).
    max_rejected_s: float = 120.0

    @cached_property
    def gate(self) -> float:
        # computed once per parameter set: scipy's ppf costs ~0.3 ms, more than a twin step of a
        # few hundred patients (cached_property writes the instance dict, which frozen allows)
        return float(chi2.ppf(self.gate_probability, df=1))


def transition(dt_min: np.ndarray, params: ModelParams) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Damped-trend transition for elapsed times.

    dt_min: `(N,)` minutes (>= 0). Returns `a (N, 1)`, `phi (N, 1)` (`F = [[1, a], [0, phi]]`,
    the same for every channel, broadcasting against `(N, C)`) and the diagonal process noise
    `q (N, C, 2)`.
    """
    lam = params.trend_decay
    dt = dt_min[:, None]
    phi = np.exp(-lam * dt)
    a = (1.0 - phi) / lam
    q = np.empty((dt_min.shape[0], C, 2))
    q[..., 0] = dt * params.level_diffusion**2
    q[..., 1] = dt * params.trend_diffusion**2
    return a, phi, q


def measurement_var(quality: np.ndarray, params: ModelParams) -> np.ndarray:
    """Measurement variances `(N, C)` for signal qualities `(N,)` in [0, 1] (NaN: assume 1)."""
    q = np.clip(np.nan_to_num(quality, nan=1.0), params.min_quality, 1.0)
    return params.measurement_sd[None, :] ** 2 / q[:, None]


def spo2_hx(sigmas: np.ndarray) -> np.ndarray:
    """Measurement function of the SpO2 pair for `twin.ukf`: `(N, S, 2) -> (N, S, 1)`."""
    return odc(sigmas[..., :1])
