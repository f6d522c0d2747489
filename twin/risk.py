"""The twin's risk: a regularised logistic model on features only a twin has.

Features come from the twin's filtered state and `twin.bank.outputs`: per-channel levels, how far
the fast level stands from the slow one (a change the slow level has not absorbed yet), their
uncertainty, time since each channel was last believed, derived physiology (shock index, mean
arterial pressure, SpO2-respiration coupling), NEWS2 on the estimates, and each channel's drift
from the patient's own baseline. Fitted offline (`devices/validate.py`, `patient-twin fit`); the
fitted coefficients ship in `risk_params.json` and `load` reads them (or a site's own file:
`use_params_file`, RISK_PARAMS_FILE). The model card is docs/risk-model.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from twin.bank import Outputs, State
from twin.channels import INDEX, NAMES
from twin.model import SPO2, ModelParams, odc
from twin.news2 import CHART, COLUMN
from twin.policy import AlertPolicy

PARAMS_FILE = Path(__file__).with_name("risk_params.json")
PARAMS_VERSION = 1
# The file `load` reads when given none: the packaged one, unless `use_params_file` chose a
# site's own (RISK_PARAMS_FILE, set once at start-up by the command line).
_params_file: Path = PARAMS_FILE

BASELINE_H = 6.0  # a channel's baseline: its twin level averaged over its first 6 observed hours
SLOW_TAU_H = 24.0  # the slow running mean's time constant
CLIP = 6.0  # standardised features are clipped to +-CLIP SD: one wild value cannot dominate

_NEWS2_CHANNELS = tuple(CHART)  # the charted vital signs, in the chart's order

FEATURES: tuple[str, ...] = (
    *(f"{c}_level" for c in NAMES),
    *(f"{c}_fast_deviation" for c in NAMES),
    *(f"{c}_sd" for c in NAMES),
    *(f"{c}_log_hours_since_obs" for c in NAMES),
    *(f"{c}_never_observed" for c in NAMES),
    *(f"{c}_drift_from_baseline" for c in NAMES),
    *(f"{c}_drift_from_slow_mean" for c in NAMES),
    "shock_index", "shock_index_sd", "map", "map_sd", "spo2_per_rr",
    "news2", *(f"news2_{c}" for c in _NEWS2_CHANNELS),
)
"""Names of the columns of `features`, in order."""

# The model the live alert engine uses (`twin.alerts`, kind `sepsis_risk`), fitted by `patient-twin
# fit sepsis2019` on the features a twin computes the same way whatever its
# sampling rate. Left out: the SDs, the time since each channel was observed and whether it ever
# was (in the ICU data they say how often a nurse charted it; for a wearable they are its
# schedule, so they would not carry over), and age (not in the registry).
LIVE_MODEL = "sepsis_risk"
LIVE_FEATURES: tuple[str, ...] = (
    *(f for f in FEATURES if not f.endswith(("_sd", "_log_hours_since_obs", "_never_observed"))),
    "hours_monitored",
)

TRAJECTORY_FEATURES: tuple[str, ...] = (
    *(f"{c}_level_mean" for c in NAMES),
    *(f"{c}_level_min" for c in NAMES),
    *(f"{c}_level_max" for c in NAMES),
    *(f"{c}_sd_mean" for c in NAMES),
    "news2_mean", "news2_max", "shock_index_max", "shock_index_mean", "map_min", "map_mean",
    "spo2_per_rr_min",
)
"""Names of the columns of `trajectory_features`, in order."""


def fast_deviation(states: State, now: np.ndarray, params: ModelParams) -> np.ndarray:
    """Each channel's fast level minus its slow level, predicted to `now (K,)` epoch s, in the
    channel's units, `(K, C)`: a change of the last minutes the slow level has not absorbed.

    The deviation fades between readings (`twin.model.transition`), as the twin's forecast does;
    SpO2's is the saturation difference of the two latent tensions."""
    dt_min = np.where(np.isnan(states["t"]), 0.0, np.maximum(now - states["t"], 0.0) / 60.0)
    level, slow = states["x"][..., 0], states["x"][..., 1]
    d = (level - slow) * np.exp(-params.fast_reversion * dt_min[:, None])
    d[:, SPO2] = odc(slow[:, SPO2] + d[:, SPO2]) - odc(slow[:, SPO2])
    return d


# the twin record's fields `update_drift` reads and writes (twin.bank state version 5)
DRIFT_FIELDS = ("base_first_t", "base_sum", "base_n", "slow", "slow_t")


def update_drift(states: State, estimate: np.ndarray, now: np.ndarray) -> None:
    """Fold K twins' estimates `(K, C)` at `now (K,)` epoch s into their running baselines (the
    `DRIFT_FIELDS` of `states`, K twins, updated in place): each channel's mean estimate over
    its first `BASELINE_H` hours, and an exponential running mean with time constant
    `SLOW_TAU_H` (weighted by time, so it is the same at any sampling rate)."""
    seen = ~np.isnan(estimate)
    first = np.where(np.isnan(states["base_first_t"]) & seen, now[:, None],
                     states["base_first_t"])
    early = seen & (now[:, None] - first <= BASELINE_H * 3600.0)
    states["base_first_t"] = first
    states["base_sum"] += np.where(early, estimate, 0.0)
    states["base_n"] += early.astype(states["base_n"].dtype)
    # mean += alpha (estimate - mean), alpha = 1 - exp(-dt / tau)
    last = states["slow_t"]
    dt_h = np.where(np.isnan(last), 0.0, np.maximum(now - last, 0.0) / 3600.0)
    for f, tau in (("slow", SLOW_TAU_H),):
        alpha = 1.0 - np.exp(-dt_h / tau)[:, None]
        old = states[f]
        states[f] = np.where(np.isnan(old), estimate,
                             np.where(seen, old + alpha * (estimate - old), old))
    states["slow_t"] = np.where(seen.any(axis=1), now, last)


def baseline(states: State) -> np.ndarray:
    """Each channel's baseline level `(K, C)` of K twins (NaN: not observed yet)."""
    n = states["base_n"]
    return np.where(n > 0, states["base_sum"] / np.maximum(n, 1), np.nan)


def hours_monitored(states: State, now: np.ndarray) -> np.ndarray:
    """Hours since any channel of each of K twins was first estimated, `(K,)` (NaN: never)."""
    first = states["base_first_t"]
    seen = ~np.isnan(first).all(axis=1)
    start = np.where(seen, np.nanmin(np.where(np.isnan(first), np.inf, first), axis=1), np.nan)
    return (now - start) / 3600.0


def features(out: Outputs, deviation: np.ndarray, baseline: np.ndarray,
             slow: np.ndarray) -> np.ndarray:
    """The twin's features of K patients at one time each, `(K, len(FEATURES))` (NaN: unknown).

    out: `twin.bank.outputs` for the K patients; deviation: `(K, C)` (`fast_deviation`);
    baseline, slow: `(K, C)` from `baseline` and the twins' `slow` (NaN where none yet)."""
    est, sd = out.estimate, out.sd
    never = np.isnan(est)
    hours_since = np.log1p(np.maximum(out.age_s, 0.0) / 3600.0)
    deviation = np.where(never, np.nan, deviation)
    # SpO2 over respiratory rate: the ROX index without FiO2 (Roca O et al. J Crit Care
    # 2016;35:200-205); with FiO2 unknown (room air assumed) it couples oxygenation to the work
    # of breathing that maintains it.
    with np.errstate(divide="ignore", invalid="ignore"):
        rox = est[:, INDEX["spo2"]] / est[:, INDEX["rr"]]
    comps = out.components
    news_cols = np.stack([comps[:, COLUMN[c]] for c in _NEWS2_CHANNELS], axis=1)
    cols = [est, deviation, sd, hours_since, never.astype(float), est - baseline, est - slow,
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


def load(name: str, path: Path | str | None = None) -> RiskModel:
    """The model `name` (e.g. "sepsis2019", "icu2012", `LIVE_MODEL`) from the parameter file
    `path` (default: the packaged `risk_params.json`, or the one `use_params_file` chose).

    Raises ValueError (one line) for a file that cannot be read or is not JSON, an unsupported
    file version, an unknown name, or a model whose arrays do not fit its feature names."""
    path = Path(path or _params_file)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"risk parameters: cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSON, or bytes that are not UTF-8
        raise ValueError(f"risk parameters: {path} is not a JSON parameter file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != PARAMS_VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise ValueError(f"risk parameters: {path}: unsupported version {version!r} "
                         f"(expected {PARAMS_VERSION})")
    models = doc.get("models", {})
    if not isinstance(models, dict) or name not in models:
        have = ", ".join(models) if isinstance(models, dict) else "none"
        raise ValueError(f"risk parameters: {path}: no model {name!r} (have: {have})")
    try:
        m = RiskModel.from_dict(models[name])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"risk parameters: {path}: model {name!r} is malformed "
                         f"({type(exc).__name__}: {exc})") from None
    F = len(m.names)
    if not (m.mean.shape == m.scale.shape == m.coef.shape == (F,)) or not (
            np.isfinite(m.mean).all() and np.isfinite(m.coef).all()
            and (m.scale > 0).all() and np.isfinite(m.intercept)):
        raise ValueError(f"risk parameters: {path}: model {name!r} is malformed (mean, scale "
                         f"and coef must be {F} finite numbers each, scales positive)")
    return m


def load_live(path: Path | str | None = None) -> RiskModel:
    """The live alert engine's model (`LIVE_MODEL`) from `path` (default as `load`), checked
    for what the worker relies on: the feature columns `live_features` computes, and an
    operating point that is a probability. Raises ValueError (one line) otherwise."""
    m = load(LIVE_MODEL, path)
    where = Path(path or _params_file)
    if m.names != LIVE_FEATURES:
        raise ValueError(f"risk parameters: {where}: model {LIVE_MODEL!r} has other features than "
                         "this twin computes (refit it: patient-twin fit sepsis2019)")
    try:
        thr = threshold(m)
    except (TypeError, ValueError):
        thr = float("nan")
    if not 0.0 < thr < 1.0:
        raise ValueError(f"risk parameters: {where}: model {LIVE_MODEL!r} has no operating point "
                         "in (0, 1) (refit it: patient-twin fit sepsis2019)")
    return m


def use_params_file(path: Path | str | None) -> RiskModel:
    """Make `path` the parameter file `load` and the live alert engine read from now on (None:
    the packaged one again), after checking its live model (`load_live`); returns that model.
    Raises ValueError (one line) and keeps the previous file if `path` is not usable."""
    global _params_file
    chosen = PARAMS_FILE if path is None else Path(path)
    m = load_live(chosen)
    _params_file = chosen
    return m


def params_file() -> Path:
    """The parameter file `load` reads by default."""
    return _params_file


def live_features(states: State, out: Outputs, now: np.ndarray,
                  params: ModelParams) -> np.ndarray:
    """`LIVE_FEATURES` of K twins at `now (K,)` epoch s, `(K, len(LIVE_FEATURES))` (NaN:
    unknown). out: `twin.bank.outputs` of the same K twins at `now`."""
    x = features(out, fast_deviation(states, now, params), baseline(states), states["slow"])
    full = np.concatenate([x, hours_monitored(states, now)[:, None]], axis=1)
    return full[:, _LIVE_COLUMNS]


_LIVE_COLUMNS = np.array([(*FEATURES, "hours_monitored").index(f) for f in LIVE_FEATURES])


def threshold(model: RiskModel) -> float:
    """The model's operating point (a probability), chosen when it was fitted."""
    return float(model.meta.get("threshold", float("nan")))


def with_live_model(policy: AlertPolicy | None) -> tuple[RiskModel, AlertPolicy]:
    """The shipped live model, and `policy` with its operating point as the `sepsis_risk`
    alert's level (unless the policy turns the alert off or sets its own level)."""
    model = load_live()
    policy = policy or AlertPolicy()
    if policy.risk_alert and policy.risk_raise is None:
        policy = replace(policy, risk_raise=threshold(model))
    return model, policy


def score_live(model: RiskModel, states: State, out: Outputs, now: np.ndarray,
               params: ModelParams) -> np.ndarray:
    """The live model's probability for K twins at `now (K,)` epoch s, `(K,)` (NaN: a twin that
    has seen nothing). out: `twin.bank.outputs` of the K twins at `now`."""
    p = predict(model, live_features(states, out, now, params))
    p[np.isnan(states["t"])] = np.nan
    return p
