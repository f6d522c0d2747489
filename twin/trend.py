"""Sustained drift of each vital sign: a local linear trend beside the twin, for prediction.

The twin's own model (`twin.model`) says where a channel is and where it returns to: a fast level
reverting within minutes to a slow level that wanders over hours. Its forecasts are calibrated on
ICU charts (docs/risk-model.md), and by construction they never extrapolate a rise: a channel that
climbs for an hour is, to that model, a run of deviations that will fade. A deterioration is
exactly such a climb, so the predictive alert asks a second question of the same readings: is
there a sustained slope, and where does it lead within the hour?

Per channel, a level `a` and a slope `b` (units per minute) follow the local linear trend model
(Harrison & Stevens 1976; the "multi-process" filters of patient monitoring, Smith & West 1983):

    da = b dt,    db = slope_diffusion dW

observed through the means of blocks of readings `ModelParams.trend_interval_min` long, with
their measurement noise plus the twin's fast fluctuation averaged over the block (`noise_var`,
`_block`). The fast fluctuations are correlated over a few minutes (the twin's
`1 / fast_reversion`), so a block's mean is one observation, not as many as it has readings: the
slope's uncertainty stays honest instead of shrinking with the reading rate.

Forecasts of each channel at a horizon give, under independence between channels, the
probability that NEWS2 meets a RCP 2017 response trigger then (`trigger_probability`: a single
parameter scoring 3, or an aggregate of 5 or more), computed exactly from the score distribution
of each parameter. Shapes: K twins, C channels (`twin.channels`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from twin import kalman, news2
from twin.channels import INDEX, C
from twin.model import SPO2, ModelParams, odc, odc_inverse

_CHANNELS = tuple(news2.CHART)  # the charted vital signs
# How far ahead the predictive alert looks along the trends: an hour, as the twin's forecasts.
HORIZON_MIN = 60.0


def transition(dt_min: np.ndarray, params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """The exact transition of every channel's `(a, b)` over elapsed times.

    dt_min: `(K, C)` minutes (>= 0). Returns `F (K, C, 3)` entries `(1, dt, 1)` of
    `[[1, dt], [0, 1]]` and `q (K, C, 3)` entries of the integrated slope diffusion
    `s^2 (dt^3 / 3, dt^2 / 2, dt)`."""
    s2 = params.trend_slope_diffusion**2
    F = np.empty(dt_min.shape + (3,))
    F[..., 0] = 1.0
    F[..., 1] = dt_min
    F[..., 2] = 1.0
    q = np.empty_like(F)
    q[..., 0] = s2 * dt_min**3 / 3.0
    q[..., 1] = s2 * dt_min**2 / 2.0
    q[..., 2] = s2 * dt_min
    return F, q


def noise_var(params: ModelParams) -> np.ndarray:
    """`(C,)` what a single reading adds around the trend beyond its measurement noise: the twin's
    stationary fast fluctuation (`ModelParams.fast_var`). SpO2's is the latent's mapped through
    the dissociation curve's slope at the prior level (the trend follows SpO2 itself)."""
    v = params.fast_var.copy()
    level = odc_inverse(np.array([params.prior_level[SPO2]]))[0]
    slope = (odc(np.array([level + 0.5])) - odc(np.array([level - 0.5])))[0]
    v[SPO2] = params.fast_var[SPO2] * slope**2
    return v


FIELDS = ("trend_x", "trend_P", "trend_t", "block_t0", "block_n", "block_sum", "block_r",
          "block_ts")
"""The bank's fields this module keeps (`twin.bank.STATE_DTYPE`), per patient and channel:
trend_x `(C, 2)` level and slope per minute; trend_P `(C, 3)`; trend_t `(C,)` epoch s the trend
stands at (NaN: not started); the block being gathered: block_t0 `(C,)` its first reading's time
(NaN: none open), block_n `(C,)` readings, block_sum their sum, block_r the sum of their
measurement variances, block_ts the sum of their times after block_t0 (s)."""


def prior(params: ModelParams) -> np.ndarray:
    """`(C, 3)` covariance entries of a new trend before its first block: no slope known beyond
    `trend_slope_prior_sd` (the level's variance is the block's)."""
    p0 = np.zeros((C, 3))
    p0[:, 2] = params.trend_slope_prior_sd**2
    return p0


def _block(s: dict[str, np.ndarray], params: ModelParams) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """The gathered blocks as observations of the trend: mean `(K, C)`, at their readings' mean
    time `(K, C)` epoch s, with variance `(K, C)`. Exact for a linear course: the mean of
    `a + b t` over the readings is `a + b` at their mean time. The variance is the mean's
    measurement noise plus the twin's fast fluctuation averaged over the block's span (an
    Ornstein-Uhlenbeck mean over `T`: `fast_var 2 (x - 1 + e^-x) / x^2`, `x = kappa T`, taking
    the span as twice the mean offset)."""
    n = np.maximum(s["block_n"].astype(np.float64), 1.0)
    mean = s["block_sum"] / n
    offset = s["block_ts"] / n
    at = s["block_t0"] + offset
    x = np.maximum(params.fast_reversion * 2.0 * offset / 60.0, 1e-9)
    shrink = np.where(x < 1e-4, 1.0 - x / 3.0, 2.0 * (x - 1.0 + np.exp(-x)) / (x * x))
    var = s["block_r"] / (n * n) + noise_var(params) * shrink
    return mean, at, var


def _apply(x: np.ndarray, p: np.ndarray, t_last: np.ndarray, z: np.ndarray, at: np.ndarray,
           var: np.ndarray, mask: np.ndarray, params: ModelParams) -> None:
    """Observe `z (K, C)` at `at (K, C)` with variance `var (K, C)` where `mask (K, C)`, in
    place: a trend not yet started starts there with no slope known."""
    start = mask & np.isnan(t_last)
    due = mask & ~start
    if start.any():
        x[..., 0] = np.where(start, z, x[..., 0])
        x[..., 1] = np.where(start, 0.0, x[..., 1])
        p0 = np.broadcast_to(prior(params), p.shape).copy()
        p0[..., 0] = var
        p[...] = np.where(start[..., None], p0, p)
        t_last[...] = np.where(start, at, t_last)
    if due.any():
        dt = np.where(due, np.maximum(at - t_last, 0.0) / 60.0, 0.0)
        xp, pp = kalman.predict_pair(x, p, *transition(dt, params))
        xu, pu, _ = kalman.update_level(xp, pp, np.where(due, z, 0.0), np.where(due, var, 1.0))
        x[...] = np.where(due[..., None], xu, x)
        p[...] = np.where(due[..., None], pu, p)
        t_last[...] = np.where(due, at, t_last)


def update(s: dict[str, np.ndarray], t: np.ndarray, z: np.ndarray, use: np.ndarray,
           r: np.ndarray, params: ModelParams) -> np.ndarray:
    """Gather believed readings into blocks of `trend_interval_min` per channel, and give each
    block to the trend, as one observation, when a reading comes after its end. In place.

    s: K twins' `FIELDS`; t: `(K,)` epoch s (in time order per twin, as `twin.bank.step`
    applies them); z: `(K, C)`; use: `(K, C)` bool, the readings the twin believed; r: `(K, C)`
    their measurement variances. Returns the `(K, C)` bool mask of blocks given to the trend.
    """
    tt = t[:, None]
    done = use & (s["block_n"] > 0) & (tt - s["block_t0"] >= params.trend_interval_min * 60.0)
    if done.any():
        _apply(s["trend_x"], s["trend_P"], s["trend_t"], *_block(s, params), done, params)
        s["block_n"][done] = 0
    new = use & (s["block_n"] == 0)
    s["block_t0"][...] = np.where(new, tt, s["block_t0"])
    for f in ("block_sum", "block_r", "block_ts"):
        s[f][new] = 0.0
    s["block_n"] += use.astype(s["block_n"].dtype)
    s["block_sum"] += np.where(use, z, 0.0).astype(s["block_sum"].dtype)
    s["block_r"] += np.where(use, r, 0.0).astype(s["block_r"].dtype)
    s["block_ts"] += np.where(use, tt - s["block_t0"], 0.0).astype(s["block_ts"].dtype)
    return done


def forecast(s: dict[str, np.ndarray], now: np.ndarray, horizon_min: float,
             params: ModelParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                           np.ndarray]:
    """Each channel's trend at `now (K,)`, counting the block still being gathered, and its
    forecast `horizon_min` later.

    s: K twins' `FIELDS` (not changed). Returns `slope (K, C)` per hour and its SD, the
    forecast's mean and SD `(K, C)` (the trend's level and slope carried forward, plus the fast
    fluctuation a value shows around it), and `steady (K, C)`: the level now, what the forecast
    mean would be with no slope. NaN where a channel has no trend and no block."""
    x = s["trend_x"].astype(np.float64)
    p = s["trend_P"].astype(np.float64)
    t_last = s["trend_t"].copy()
    pending = s["block_n"] > 0
    if pending.any():
        _apply(x, p, t_last, *_block(s, params), pending, params)
    dt = np.nan_to_num(np.maximum(now[:, None] - t_last, 0.0) / 60.0)
    xh, ph = kalman.predict_pair(x, p, *transition(dt + horizon_min, params))
    none = np.isnan(t_last)
    mean = np.where(none, np.nan, xh[..., 0])
    sd = np.where(none, np.nan, np.sqrt(np.maximum(ph[..., 0], 0.0) + noise_var(params)))
    # the slope now: its variance grows with the time since the trend's last block
    slope_var = p[..., 2] + params.trend_slope_diffusion**2 * dt
    slope = np.where(none, np.nan, x[..., 1] * 60.0)
    steady = np.where(none, np.nan, x[..., 0] + x[..., 1] * dt)
    return slope, np.sqrt(slope_var) * 60.0, mean, sd, steady


def _score_distribution(param: news2.Parameter, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """P(score = 0..3) `(K, 4)` of a normal value against one chart parameter (NaN: score 0)."""
    edges = param.continuous_edges()
    cdf = ndtr((edges[None, :] - mean[:, None]) / np.maximum(sd, 1e-9)[:, None])  # (K, E)
    bins = np.diff(np.concatenate([np.zeros((len(mean), 1)), cdf, np.ones((len(mean), 1))],
                                  axis=1), axis=1)  # (K, E + 1)
    out = np.zeros((len(mean), 4))
    for j, s in enumerate(param.scores):  # a handful of chart bins
        out[:, s] += bins[:, j]
    unknown = np.isnan(mean)
    out[unknown] = (1.0, 0.0, 0.0, 0.0)
    return out


def trigger_probability(mean: np.ndarray, sd: np.ndarray, on_oxygen: np.ndarray,
                        alert: np.ndarray, spo2_scale: np.ndarray | int) -> np.ndarray:
    """P(NEWS2 meets a RCP 2017 response trigger: a parameter scoring 3, or aggregate >= 5),
    `(K,)`, for normal, independent values of the vital signs.

    mean, sd: `(K, C)` (NaN mean: the parameter is not known and scores 0, as in `news2.news2`);
    on_oxygen, alert: `(K,)` as in `news2.news2` (they score as recorded); spo2_scale: 1, 2 or
    `(K,)`. The chart is read on the continuous scale (`news2.Parameter.continuous_edges`)."""
    K = mean.shape[0]
    oxy = np.broadcast_to(np.asarray(on_oxygen, dtype=float), (K,))
    scale = np.broadcast_to(np.asarray(spo2_scale), (K,))
    fixed = np.where(oxy == 1.0, 2, 0) + np.where(np.asarray(alert, dtype=float) == 0.0, 3, 0)
    fixed = np.broadcast_to(fixed, (K,))
    # P(total of the charted vital signs = 0..4 with none scoring 3), built channel by channel
    calm = np.zeros((K, 5))
    calm[:, 0] = 1.0
    for ch in _CHANNELS:  # five vital signs, not patients
        c = INDEX[ch]
        dist = _score_distribution(news2.CHART[ch], mean[:, c], sd[:, c])
        if c == SPO2 and (two := np.flatnonzero(scale == 2)).size:
            # scale 2 only where a clinician set it (few patients): RCP 2017 Chart 2
            m2, s2 = mean[two, c], sd[two, c]
            dist[two] = np.where((oxy[two] == 1.0)[:, None],
                                 _score_distribution(news2.SPO2_SCALE2_OXYGEN, m2, s2),
                                 _score_distribution(news2.SPO2_SCALE2_AIR, m2, s2))
        nxt = np.zeros_like(calm)
        for s in range(3):  # scores 0-2: a 3 is a trigger by itself
            nxt[:, s:] += calm[:, :5 - s] * dist[:, s:s + 1]
        calm = nxt
    # the aggregate stays under 5 when the vital signs add at most 4 - fixed
    limit = 4 - fixed
    ok = np.where(limit[:, None] >= np.arange(5)[None, :], calm, 0.0).sum(axis=1)
    # a new confusion (ACVPU other than Alert) scores 3: a trigger already
    ok = np.where(np.broadcast_to(np.asarray(alert, dtype=float) == 0.0, (K,)), 0.0, ok)
    return np.clip(1.0 - ok, 0.0, 1.0)
