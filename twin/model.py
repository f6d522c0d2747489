"""The twin's state-space model: a damped local linear trend (level, trend) per vital sign.

State layout for C channels: `x[2c]` is channel c's level (canonical unit), `x[2c + 1]` its trend
(unit per minute). Time is in minutes inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2

from twin.channels import NAMES, C


def _per_channel(**values: float) -> np.ndarray:
    return np.array([values[name] for name in NAMES], dtype=float)


@dataclass(frozen=True)
class ModelParams:
    """Per-channel parameters, each `(C,)` in the order of `twin.channels.CHANNELS`.

    The noise figures are engineering choices tuned on the simulator and the MIMIC-II record (see
    docs/twin.md), not clinical thresholds.
    """

    # Population-typical starting level and its SD, used only until a channel is first observed.
    prior_level: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=75, rr=16, spo2=97, sbp=120, dbp=75, temp=37.0))
    prior_level_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=30, rr=8, spo2=5, sbp=30, dbp=20, temp=1.5))
    prior_trend_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.5, rr=0.2, spo2=0.1, sbp=0.5, dbp=0.4,
                                             temp=0.01))
    # Random-walk diffusion per sqrt(minute): process noise grows linearly with dt.
    level_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=2.0, rr=0.8, spo2=0.5, sbp=2.0, dbp=1.5,
                                             temp=0.03))
    trend_diffusion: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=0.05, rr=0.02, spo2=0.01, sbp=0.05, dbp=0.04,
                                             temp=0.001))
    # Measurement SD at signal quality 1; R = sd^2 / max(quality, min_quality).
    measurement_sd: np.ndarray = field(
        default_factory=lambda: _per_channel(hr=3.0, rr=2.0, spo2=1.5, sbp=6.0, dbp=5.0,
                                             temp=0.15))
    min_quality: float = 0.1
    # Trend decays by this factor per minute so forecasts do not extrapolate a blip for an hour.
    trend_damping: float = 0.98
    # A reading whose normalised innovation exceeds this chi-square(1) quantile is an artifact.
    gate_probability: float = 0.999
    # After this many consecutive rejections the channel is re-initialised on the new reading:
    # a sustained change is physiology, not an artifact.
    max_consecutive_rejections: int = 5

    @property
    def gate(self) -> float:
        return float(chi2.ppf(self.gate_probability, df=1))


N_STATE = 2 * C
LEVEL = np.arange(0, N_STATE, 2)
TREND = LEVEL + 1


def prior(params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """Initial mean `(n,)` and covariance `(n, n)` of a patient never observed."""
    x0 = np.zeros(N_STATE)
    x0[LEVEL] = params.prior_level
    P0 = np.zeros((N_STATE, N_STATE))
    P0[LEVEL, LEVEL] = params.prior_level_sd**2
    P0[TREND, TREND] = params.prior_trend_sd**2
    return x0, P0


def transition(dt_min: np.ndarray, params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient transition and process noise for elapsed times.

    dt_min: `(N,)` minutes since each patient's last update (>= 0).
    Returns `F (N, n, n)`, `Q (N, n, n)`.
    """
    N = dt_min.shape[0]
    phi = params.trend_damping ** dt_min  # (N,)
    F = np.zeros((N, N_STATE, N_STATE))
    F[:, LEVEL, LEVEL] = 1.0
    F[:, LEVEL, TREND] = dt_min[:, None]
    F[:, TREND, TREND] = phi[:, None]
    Q = np.zeros((N, N_STATE, N_STATE))
    Q[:, LEVEL, LEVEL] = dt_min[:, None] * params.level_diffusion**2
    Q[:, TREND, TREND] = dt_min[:, None] * params.trend_diffusion**2
    return F, Q


def observation_matrix() -> np.ndarray:
    """H `(C, n)`: every channel observes its level."""
    H = np.zeros((C, N_STATE))
    H[np.arange(C), LEVEL] = 1.0
    return H


def measurement_noise(quality: np.ndarray, params: ModelParams) -> np.ndarray:
    """R `(N, C, C)` diagonal, scaled by signal quality `(N,)` in [0, 1]."""
    q = np.clip(np.nan_to_num(quality, nan=1.0), params.min_quality, 1.0)
    var = params.measurement_sd[None, :] ** 2 / q[:, None]
    R = np.zeros((quality.shape[0], C, C))
    R[:, np.arange(C), np.arange(C)] = var
    return R
