"""The twin's risk: a regularised logistic model on features only a twin has.

Features come from the twin's filtered state and `twin.bank.outputs`: per-channel levels, trends
and their uncertainty, time since each channel was last believed, derived physiology (shock index,
mean arterial pressure, SpO2-respiration coupling), NEWS2 on the estimates, and each channel's
drift from the patient's own baseline. Fitted offline (`devices/validate.py`); the fitted
coefficients ship in `risk_params.json` and `load` reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from twin.bank import Outputs, State
from twin.channels import INDEX, NAMES, C
from twin.model import ModelParams, transition
from twin.news2 import CHART, COLUMN

PARAMS_FILE = Path(__file__).with_name("risk_params.json")
PARAMS_VERSION = 1

BASELINE_H = 6.0  # a channel's baseline: its twin level averaged over its first 6 observed hours
SLOW_TAU_H = 24.0  # the slow running mean's time constant
CLIP = 6.0  # standardised features are clipped to +-CLIP SD: one wild value cannot dominate

_NEWS2_CHANNELS = tuple(CHART)  # the charted vital signs, in the chart's order

FEATURES: tuple[str, ...] = (
    *(f"{c}_level" for c in NAMES),
    *(f"{c}_trend_per_h" for c in NAMES),
    *(f"{c}_sd" for c in NAMES),
    *(f"{c}_log_hours_since_obs" for c in NAMES),
    *(f"{c}_never_observed" for c in NAMES),
    *(f"{c}_drift_from_baseline" for c in NAMES),
    *(f"{c}_drift_from_slow_mean" for c in NAMES),
    "shock_index", "shock_index_sd", "map", "map_sd", "spo2_per_rr",
    "news2", *(f"news2_{c}" for c in _NEWS2_CHANNELS),
)
"""Names of the columns of `features`, in order."""

TRAJECTORY_FEATURES: tuple[str, ...] = (
    *(f"{c}_level_mean" for c in NAMES),
    *(f"{c}_level_min" for c in NAMES),
    *(f"{c}_level_max" for c in NAMES),
    *(f"{c}_sd_mean" for c in NAMES),
    "news2_mean", "news2_max", "shock_index_max", "shock_index_mean", "map_min", "map_mean",
    "spo2_per_rr_min",
)
"""Names of the columns of `trajectory_features`, in order."""


def trend_now(states: State, now: np.ndarray, params: ModelParams) -> np.ndarray:
    """Each channel's trend predicted to `now (K,)` epoch s, per hour, `(K, C)`.

    The trend decays between readings (`twin.model.transition`), as the twin's forecast does."""
    dt_min = np.where(np.isnan(states["t"]), 0.0, np.maximum(now - states["t"], 0.0) / 60.0)
    _, phi, _ = transition(dt_min, params)
    return states["x"][..., 1] * phi * 60.0


@dataclass
class Drift:
    """Running per-patient baselines of the twin's levels, all `(N, C)`.

    first_t: when each channel's estimate first existed (NaN: not yet); base_sum, base_n: sum and
    count of the estimates in its first `BASELINE_H` hours; slow: an exponential running mean with
    time constant `SLOW_TAU_H`; last_t: `(N,)` when it was last updated."""

    first_t: np.ndarray
    base_sum: np.ndarray
    base_n: np.ndarray
    slow: np.ndarray
    last_t: np.ndarray

    @classmethod
    def new(cls, n: int) -> Drift:
        nan = np.full((n, C), np.nan)
        return cls(nan.copy(), np.zeros((n, C)), np.zeros((n, C)), nan.copy(),
                   np.full(n, np.nan))

    def update(self, rows: np.ndarray, estimate: np.ndarray, now: np.ndarray) -> None:
        """Fold the estimates `(K, C)` of patients `rows (K,)` at `now (K,)` epoch s in."""
        seen = ~np.isnan(estimate)
        first = np.where(np.isnan(self.first_t[rows]) & seen, now[:, None], self.first_t[rows])
        early = seen & (now[:, None] - first <= BASELINE_H * 3600.0)
        self.first_t[rows] = first
        self.base_sum[rows] += np.where(early, estimate, 0.0)
        self.base_n[rows] += early
        # slow += alpha (estimate - slow), alpha = 1 - exp(-dt / tau)
        dt_h = np.where(np.isnan(self.last_t[rows]), 0.0,
                        np.maximum(now - self.last_t[rows], 0.0) / 3600.0)
        alpha = 1.0 - np.exp(-dt_h / SLOW_TAU_H)[:, None]
        old = self.slow[rows]
        self.slow[rows] = np.where(np.isnan(old), estimate,
                                   np.where(seen, old + alpha * (estimate - old), old))
        self.last_t[rows] = now

    def baseline(self, rows: np.ndarray) -> np.ndarray:
        """Each channel's baseline level `(K, C)` (NaN: not observed yet)."""
        n = self.base_n[rows]
        return np.where(n > 0, self.base_sum[rows] / np.maximum(n, 1), np.nan)


def features(out: Outputs, trend: np.ndarray, baseline: np.ndarray,
             slow: np.ndarray) -> np.ndarray:
    """The twin's features of K patients at one time each, `(K, len(FEATURES))` (NaN: unknown).

    out: `twin.bank.outputs` for the K patients; trend: `(K, C)` per hour (`trend_now`);
    baseline, slow: `(K, C)` from `Drift` (NaN where none yet)."""
    est, sd = out.estimate, out.sd
    never = np.isnan(est)
    hours_since = np.log1p(np.maximum(out.age_s, 0.0) / 3600.0)
    trend = np.where(never, np.nan, trend)
    # SpO2 over respiratory rate: the ROX index without FiO2 (Roca O et al. J Crit Care
    # 2016;35:200-205); with FiO2 unknown (room air assumed) it couples oxygenation to the work
    # of breathing that maintains it.
    with np.errstate(divide="ignore", invalid="ignore"):
        rox = est[:, INDEX["spo2"]] / est[:, INDEX["rr"]]
    comps = out.components
    news_cols = np.stack([comps[:, COLUMN[c]] for c in _NEWS2_CHANNELS], axis=1)
    cols = [est, trend, sd, hours_since, never.astype(float), est - baseline, est - slow,
            out.shock_index[:, None], out.shock_index_sd[:, None], out.map[:, None],
            out.map_sd[:, None], rox[:, None], out.news2[:, None].astype(float),
            news_cols.astype(float)]
    x = np.concatenate(cols, axis=1)
    return np.where(np.isfinite(x), x, np.nan)


def trajectory_features(estimate: np.ndarray, sd: np.ndarray, news2: np.ndarray,
                        shock_index: np.ndarray, map_: np.ndarray) -> np.ndarray:
    """Summaries of N twins' hourly trajectories, `(N, len(TRAJECTORY_FEATURES))`.

    estimate, sd: `(N, H, C)`; news2, shock_index, map_: `(N, H)`. NaN entries (a channel not yet
    observed) are left out of each summary; a summary of nothing is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rox = estimate[..., INDEX["spo2"]] / estimate[..., INDEX["rr"]]

    def mean(a: np.ndarray) -> np.ndarray:
        ok = np.isfinite(a)
        n = ok.sum(axis=1)
        return np.where(n > 0, np.where(ok, a, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)

    def ext(a: np.ndarray, fn: np.ufunc, fill: float) -> np.ndarray:
        r = fn.reduce(np.where(np.isfinite(a), a, fill), axis=1)
        return np.where(np.isfinite(r), r, np.nan)

    cols = [mean(estimate), ext(estimate, np.minimum, np.inf), ext(estimate, np.maximum, -np.inf),
            mean(sd), mean(news2.astype(float))[:, None],
            ext(news2.astype(float), np.maximum, -np.inf)[:, None],
            ext(shock_index, np.maximum, -np.inf)[:, None], mean(shock_index)[:, None],
            ext(map_, np.minimum, np.inf)[:, None], mean(map_)[:, None],
            ext(rox, np.minimum, np.inf)[:, None]]
    return np.concatenate(cols, axis=1)


@dataclass(frozen=True)
class RiskModel:
    """A fitted logistic model: p = expit(clip((x - mean) / scale) @ coef + intercept), NaN
    features imputed at the mean. names, mean, scale, coef: `(F,)`."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    lam: float
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"features": list(self.names), "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "l2": self.lam, "clip_sd": CLIP, **self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> RiskModel:
        known = {"features", "mean", "scale", "coef", "intercept", "l2", "clip_sd"}
        return cls(tuple(d["features"]), np.asarray(d["mean"], float),
                   np.asarray(d["scale"], float), np.asarray(d["coef"], float),
                   float(d["intercept"]), float(d["l2"]),
                   {k: v for k, v in d.items() if k not in known})


def _standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (x - mean) / scale
    return np.clip(np.where(np.isnan(z), 0.0, z), -CLIP, CLIP)


def fit(x: np.ndarray, y: np.ndarray, names: tuple[str, ...], lam: float = 1e-3,
        weight: np.ndarray | None = None) -> RiskModel:
    """L2-regularised logistic regression on standardised features.

    x: `(M, F)` (NaN: unknown, imputed at the training mean); y: `(M,)` 0/1; weight: `(M,)`
    optional row weights. Minimises mean log-loss + lam / 2 |coef|^2 (the intercept is not
    penalised) by L-BFGS with the exact gradient."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(names) or len(y) != len(x):
        raise ValueError(f"x must be (M, {len(names)}) and y (M,)")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, float)
    w = w / w.sum()
    ok = np.isfinite(x)
    n = ok.sum(axis=0)
    mean = np.where(n > 0, np.where(ok, x, 0.0).sum(axis=0) / np.maximum(n, 1), 0.0)
    var = np.where(ok, (x - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n - 1, 1)
    scale = np.where(var > 1e-12, np.sqrt(var), 1.0)
    z = _standardise(x, mean, scale)
    F = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        b, c = theta[0], theta[1:]
        eta = z @ c + b
        # log-loss = -(y log p + (1 - y) log(1 - p)), p = expit(eta), computed stably
        ll = -(y * log_expit(eta) + (1.0 - y) * log_expit(-eta))
        r = w * (expit(eta) - y)
        grad = np.r_[r.sum(), z.T @ r + lam * c]
        return float(w @ ll + 0.5 * lam * c @ c), grad

    p0 = np.clip((w * y).sum(), 1e-6, 1 - 1e-6)
    theta0 = np.r_[np.log(p0 / (1 - p0)), np.zeros(F)]
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-9})
    return RiskModel(tuple(names), mean, scale, res.x[1:], float(res.x[0]), lam)


def predict(model: RiskModel, x: np.ndarray) -> np.ndarray:
    """Probability of the outcome for rows `x (M, F)` in the model's feature order, `(M,)`."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(model.names):
        raise ValueError(f"x must be (M, {len(model.names)})")
    return expit(_standardise(x, model.mean, model.scale) @ model.coef + model.intercept)


def load(name: str, path: Path | None = None) -> RiskModel:
    """The shipped model `name` (e.g. "sepsis2019", "icu2012") from `risk_params.json`.

    Raises ValueError (one line) for an unknown name or an unsupported file version."""
    with open(path or PARAMS_FILE, encoding="utf-8") as f:
        doc = json.load(f)
    if doc.get("version") != PARAMS_VERSION:
        raise ValueError(f"risk parameters: unsupported version {doc.get('version')!r} "
                         f"(expected {PARAMS_VERSION})")
    models = doc.get("models", {})
    if name not in models:
        raise ValueError(f"risk parameters: no model {name!r} (have: {', '.join(models)})")
    return RiskModel.from_dict(models[name])
