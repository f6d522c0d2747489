"""Calibrate the twin's state-space model: forecast-interval coverage/width, predictive likelihood
and minute-scale responsiveness for candidate model structures and parameters.

Measures, changes nothing in the product. Candidates:

- `a_default`: today's `ModelParams()` (random-walk level + damped trend).
- `b_rw_ml`: the same structure, per-channel `level_diffusion` and `measurement_sd` fitted by
  maximum likelihood (the filter's innovation likelihood) on the 2019 hourly stays.
- `c_ou_slow`: an Ornstein-Uhlenbeck level that reverts at rate `kappa` (per minute) towards the
  twin's 24 h running mean of its own estimate (`slow`, as `twin.risk.update_drift` keeps it;
  for SpO2 the running mean of the latent PaO2), kappa, diffusion and measurement SD fitted by ML.
- `d_ou_latent`: the same OU level reverting towards a latent patient mean that is a state of
  the filter (a slow random walk): a proper linear Gaussian Markov model with no plug-in, fitted
  by ML (kappa, level diffusion, mean diffusion, measurement SD).
- `e_two_scale`: level = a slow state u + a fast deviation. The fast deviation keeps today's
  `level_diffusion` (and trend), so the twin moves as today over seconds to minutes, but
  reverts to u at a fitted rate kappa (minutes), which bounds its variance; u reverts to a
  constant patient mean m at kappa2 (hours) with diffusion `mean_diffusion`; all fitted by ML
  with the measurement SD.

Every structure is one continuous-time model, per channel, with state s = (L, b, u, m):
    dL = (b - kappa (L - u)) dt + level_diffusion dW1
    db = -trend_decay b dt + trend_diffusion dW2
    du = -kappa2 (u - m) dt + mean_diffusion dW3
    dm = mean2_diffusion dW4
discretised exactly for any step (Van Loan with squaring), so the same model holds at 1 s or
1 h steps. kappa = 0 is today's model (u, m then play no part; `discretization="product"` uses
the product's first-order Q instead of the exact one). For `c_ou_slow`, u is set to the running
mean before each prediction with zero variance (an exogenous input); for `d_ou_latent` u is the
latent mean (kappa2 = 0).

The prototype filter (`run_proto`) mirrors `twin.bank` (prior centred on the first reading, the
innovation gate with restart after `max_consecutive_rejections`, the SpO2 unscented update on the
latent PaO2 with the bank's sigma points); with `a_default` its coverage matches `run_twin`'s
(checked in the output). Coverage is `devices.validate.forecast_coverage` on a `TwinRun`-like
object, with the measurement SD it adds taken from the candidate (see `_coverage`).

Run (see docs/calibration-notes.md for timings):
    # evaluate today's defaults and the recorded fits (RECORDED below)
    .venv/bin/python -m bench.calibrate_model --recorded --out /tmp/calibration.json
    # refit one candidate on the even-numbered stays (b, c, d, e; --channels hr,rr to refit some)
    .venv/bin/python -m bench.calibrate_model --fit e --params-out /tmp/e.json
    .venv/bin/python -m bench.calibrate_model --params /tmp/e.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.linalg import expm
from scipy.optimize import minimize

from devices import physionet, validate
from devices.records import read_wfdb
from twin import bank
from twin.channels import INDEX, NAMES, C
from twin.model import SPO2, SPO2_INIT_CAP, ModelParams, odc, odc_inverse

SEPSIS_DIR = "/work/shared/data/physionet-sepsis2019-dev/training"
MIMIC_REC = "/work/shared/data/mimic2-numerics/s25047-2704-05-04-10-44n"
HOURLY_H = np.array([60.0, 120.0, 240.0])
MINUTE_H = np.array([15.0, 30.0, 60.0])
SLOW_TAU_MIN = 24 * 60.0  # twin.risk.SLOW_TAU_H
LOG2PI = np.log(2 * np.pi)
FAST_KAPPA = 0.1  # per minute: the fast deviation's time constant of 10 min (two_scale)
PRE_S = 1800.0  # seconds of steady readings before a simulated change


@dataclasses.dataclass(frozen=True)
class Cand:
    """A candidate model: structure and per-channel `(C,)` parameters (per minute units)."""

    name: str
    structure: str  # "rw", "ou_slow", "ou_latent"
    level_diffusion: np.ndarray
    trend_diffusion: np.ndarray
    measurement_sd: np.ndarray
    kappa: np.ndarray  # per minute (0 for rw)
    mean_diffusion: np.ndarray  # per sqrt(minute), ou_latent only
    base: ModelParams = dataclasses.field(default_factory=ModelParams)
    discretization: str = "exact"  # or "product": twin.model.transition's first-order Q
    # two_scale only: the slow state u reverts at kappa2 (per min) to the patient mean m, which
    # is a random walk with mean2_diffusion (0: a constant the filter learns)
    kappa2: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(C))
    mean2_diffusion: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(C))

    def params(self) -> ModelParams:
        """The product's ModelParams with this candidate's RW figures (valid for rw only)."""
        return dataclasses.replace(self.base, level_diffusion=self.level_diffusion,
                                   trend_diffusion=self.trend_diffusion,
                                   measurement_sd=self.measurement_sd)

    def with_channel(self, c: int, **kw: float) -> Cand:
        upd = {}
        for k, v in kw.items():
            arr = getattr(self, k).copy()
            arr[c] = v
            upd[k] = arr
        return dataclasses.replace(self, **upd)

    def table(self) -> dict[str, dict[str, float]]:
        out = {}
        for c, n in enumerate(NAMES):
            d = {"level_diffusion": self.level_diffusion[c],
                 "trend_diffusion": self.trend_diffusion[c],
                 "measurement_sd": self.measurement_sd[c]}
            if self.structure != "rw":
                d["kappa_per_min"] = self.kappa[c]
                d["reversion_half_life_h"] = (np.log(2) / self.kappa[c] / 60
                                              if self.kappa[c] > 0 else None)
                d["stationary_sd"] = (self.level_diffusion[c] / np.sqrt(2 * self.kappa[c])
                                      if self.kappa[c] > 0 else None)
            if self.structure in ("ou_latent", "two_scale"):
                d["mean_diffusion"] = self.mean_diffusion[c]
            if self.structure == "two_scale":
                k2 = self.kappa2[c]
                d["kappa2_per_min"] = k2
                d["slow_half_life_h"] = np.log(2) / k2 / 60 if k2 > 0 else None
                d["slow_stationary_sd"] = (self.mean_diffusion[c] / np.sqrt(2 * k2)
                                           if k2 > 0 else None)
                d["mean2_diffusion"] = self.mean2_diffusion[c]
            out[n] = {k: (None if v is None else float(f"{v:.4g}")) for k, v in d.items()}
        return out


def default_cand() -> Cand:
    p = ModelParams()
    z = np.zeros(C)
    return Cand("a_default", "rw", p.level_diffusion, p.trend_diffusion, p.measurement_sd, z, z)


# ---------------------------------------------------------------------------------------------
# exact discretisation


def discretize(cand: Cand, h_min: float, chans=None) -> tuple[np.ndarray, np.ndarray]:
    """Transition Phi `(Cn, 4, 4)` and process noise Q `(Cn, 4, 4)` of (L, b, u, m) over h
    minutes (exact: Van Loan). With `cand.discretization == "product"` Q is the product's
    first-order one, `diag(h q_level, h q_trend, ...)` (twin.model.transition), Phi exact."""
    lam = cand.base.trend_decay
    chans = list(range(C)) if chans is None else chans
    Phi = np.empty((len(chans), 4, 4))
    Q = np.empty((len(chans), 4, 4))
    for i, c in enumerate(chans):
        k, k2 = cand.kappa[c], cand.kappa2[c]
        A = np.array([[-k, 1.0, k, 0.0], [0.0, -lam, 0.0, 0.0], [0.0, 0.0, -k2, k2],
                      [0.0, 0.0, 0.0, 0.0]])
        G = np.diag([cand.level_diffusion[c] ** 2, cand.trend_diffusion[c] ** 2,
                     cand.mean_diffusion[c] ** 2, cand.mean2_diffusion[c] ** 2])
        # Van Loan on a sub-step of at most 5 min (its e^{+kappa h} block overflows the
        # precision for fast reversion over hours), then squaring: Phi(2h) = Phi(h)^2,
        # Q(2h) = Phi(h) Q(h) Phi(h)^T + Q(h)
        n_sq = max(0, int(np.ceil(np.log2(max(h_min, 1e-12) / 5.0))))
        hs = h_min / 2 ** n_sq
        M = np.zeros((8, 8))
        M[:4, :4] = -A
        M[:4, 4:] = G
        M[4:, 4:] = A.T
        E = expm(M * hs)
        F = E[4:, 4:].T
        Qs = F @ E[:4, 4:]
        for _ in range(n_sq):
            Qs = F @ Qs @ F.T + Qs
            F = F @ F
        Phi[i] = F
        if cand.discretization == "product":
            Q[i] = G * h_min
        else:
            Q[i] = 0.5 * (Qs + Qs.T)
    return Phi, Q


# ---------------------------------------------------------------------------------------------
# the prototype filter, vectorised over stays (and channels)


def _prior_cov(cand: Cand, chans: list[int]) -> np.ndarray:
    """Prior covariance `(Cn, 4, 4)` of (L, b, u, m) centred on a first reading: m ~ the prior
    level SD, u = m + its stationary deviation, L = u + its stationary deviation (each term only
    where the structure has it)."""
    p = cand.base
    v = p.prior_level_sd[chans] ** 2
    k, k2 = cand.kappa[chans], cand.kappa2[chans]
    sf = np.where(k > 0, cand.level_diffusion[chans] ** 2 / (2 * np.maximum(k, 1e-12)), 0.0)
    su = np.where(k2 > 0, cand.mean_diffusion[chans] ** 2 / (2 * np.maximum(k2, 1e-12)), 0.0)
    if cand.structure in ("rw", "ou_slow"):
        sf = np.zeros_like(v)  # L itself has the prior SD (u is unused or exogenous)
    if cand.structure != "two_scale":
        su = np.zeros_like(v)
    P0 = np.zeros((len(chans), 4, 4))
    vm, vu, vl = v, v + su, v + su + sf
    P0[:, 0, 0] = vl
    P0[:, 1, 1] = p.prior_trend_sd[chans] ** 2
    P0[:, 2, 2] = vu
    P0[:, 3, 3] = vm
    P0[:, 0, 2] = P0[:, 2, 0] = vu
    P0[:, 0, 3] = P0[:, 3, 0] = vm
    P0[:, 2, 3] = P0[:, 3, 2] = vm
    return P0


def _spo2_update(x: np.ndarray, P: np.ndarray, z: np.ndarray, r: np.ndarray):
    """The bank's unscented SpO2 update (2-state sigma points, alpha 1, beta 2, kappa 0) for
    (L, b, m): the gain of b and m follows from their covariance with L (exact for these sigma
    points). x `(N, 3)`, P `(N, 3, 3)`, z, r `(N,)`. Returns x, P, y, S."""
    L = x[:, 0]
    p00 = np.maximum(P[:, 0, 0], 1e-12)
    a = np.sqrt(2.0 * p00)
    zp, zm, z0 = odc(L + a), odc(L - a), odc(L)
    zhat = 0.25 * (zp + zm) + 0.5 * z0
    pzz = 2.0 * (z0 - zhat) ** 2 + 0.25 * ((zp - zhat) ** 2 + (zm - zhat) ** 2
                                           + 2 * (z0 - zhat) ** 2) + r
    plz = 0.25 * a * (zp - zm)
    K = P[:, :, 0] / p00[:, None] * (plz / pzz)[:, None]
    y = z - zhat
    xn = x + K * y[:, None]
    Pn = P - pzz[:, None, None] * K[:, :, None] * K[:, None, :]
    return xn, 0.5 * (Pn + np.swapaxes(Pn, 1, 2)), y, pzz


def run_proto(cand: Cand, Z: np.ndarray, dt_min: float, horizons: np.ndarray | None = None,
              warm=None, chans: list[int] | None = None, want_est: bool = True):
    """Filter dense readings Z `(S, T, Cn)` (NaN: none) of channels `chans` (default all C) on a
    regular grid of dt_min minutes.

    Returns a namespace: nlpd_sum/nlpd_n `(Cn,)` (Gaussian predictive density of each reading,
    believed or not, except a channel's first or a restart), est `(S, T, Cn)` (clinical units;
    all channels only), forecast/low90/high90 `(S, T, len(horizons), C)` when horizons are given
    (all channels only), rejects `(S, T, Cn)` bool, final state for `warm`."""
    chans = list(range(C)) if chans is None else list(chans)
    S, T, Cn = Z.shape
    assert Cn == len(chans)
    allc = Cn == C
    p = cand.base
    Phi, Q = discretize(cand, dt_min, chans)
    fc_mats = [discretize(cand, h, chans) for h in horizons] if horizons is not None else []
    r = cand.measurement_sd[chans] ** 2
    P0 = _prior_cov(cand, chans)
    x = np.zeros((S, Cn, 4))
    x[:, :, 0] = p.prior_level[chans]
    P = np.broadcast_to(P0, (S, Cn, 4, 4)).copy()
    seen = np.zeros((S, Cn), dtype=bool)
    rejects = np.zeros((S, Cn), dtype=np.int64)
    slow = np.full((S, Cn), np.nan)
    o2c = chans.index(SPO2) if SPO2 in chans else None
    lin = [i for i, c in enumerate(chans) if c != SPO2]
    nl_sum = np.zeros(Cn)
    nl_n = np.zeros(Cn)
    est_all = np.full((S, T, Cn), np.nan) if (want_est and allc) else None
    rej_all = np.zeros((S, T, Cn), dtype=bool)
    nh = len(fc_mats)
    fc = np.full((S, T, nh, Cn), np.nan)
    lo = np.full_like(fc, np.nan)
    hi = np.full_like(fc, np.nan)
    if warm is not None:  # (x, P, seen, slow) from an earlier run
        x, P, seen, slow = (w.copy() for w in warm)
    alpha_slow = 1.0 - np.exp(-dt_min / SLOW_TAU_MIN)
    ou_slow = cand.structure == "ou_slow"
    for t in range(T):
        if t > 0 or warm is not None:
            if ou_slow:
                x[:, :, 2] = np.where(np.isnan(slow), x[:, :, 0], slow)
                P[:, :, 2, :] = 0.0
                P[:, :, :, 2] = 0.0
            x = np.einsum("cij,scj->sci", Phi, x)
            P = Phi @ P @ np.swapaxes(Phi, -1, -2) + Q
        z = Z[:, t]
        obs = ~np.isnan(z)
        if not obs.any() and not nh and est_all is None:
            continue
        fresh = obs & (~seen | (rejects >= p.max_consecutive_rejections))
        if fresh.any():
            start = z.copy()
            if o2c is not None:
                start[:, o2c] = odc_inverse(np.minimum(start[:, o2c], SPO2_INIT_CAP))
            xs = np.stack([start, np.zeros((S, Cn)), start, start], axis=-1)
            x = np.where(fresh[..., None], xs, x)
            P = np.where(fresh[..., None, None], P0, P)
        zf = np.where(obs, z, 0.0)
        xu = x.copy()
        Pu = P.copy()
        y = np.zeros((S, Cn))
        Sv = np.ones((S, Cn))
        if lin:  # linear channels, H = [1, 0, 0]
            Pl = P[:, lin]
            s_l = Pl[..., 0, 0] + r[lin]
            K = Pl[..., :, 0] / s_l[..., None]
            y_l = zf[:, lin] - x[:, lin, 0]
            xu[:, lin] = x[:, lin] + K * y_l[..., None]
            Pu[:, lin] = Pl - s_l[..., None, None] * K[..., :, None] * K[..., None, :]
            y[:, lin], Sv[:, lin] = y_l, s_l
        if o2c is not None:
            o2 = obs[:, o2c]
            if o2.any():
                xs_, Ps_, ys_, ss_ = _spo2_update(x[o2, o2c], P[o2, o2c], zf[o2, o2c],
                                                  np.full(o2.sum(), r[o2c]))
                xu[o2, o2c], Pu[o2, o2c] = xs_, Ps_
                y[o2, o2c], Sv[o2, o2c] = ys_, ss_
        nis = y * y / Sv
        scored = obs & ~fresh
        nl = 0.5 * (LOG2PI + np.log(Sv) + nis)
        nl_sum += np.where(scored, nl, 0.0).sum(axis=0)
        nl_n += scored.sum(axis=0)
        reject = scored & (nis > p.gate)
        use = obs & ~reject
        x = np.where(use[..., None], xu, x)
        P = np.where(use[..., None, None], Pu, P)
        P = 0.5 * (P + np.swapaxes(P, -1, -2))
        rejects = np.where(reject, rejects + 1, np.where(use, 0, rejects))
        seen |= obs
        rej_all[:, t] = reject
        if ou_slow:
            lat = np.where(seen, x[:, :, 0], np.nan)
            slow = np.where(np.isnan(slow), lat,
                            np.where(seen, slow + alpha_slow * (lat - slow), slow))
        if est_all is not None:
            est_all[:, t] = np.where(seen, _clinical(x, P)[0], np.nan)
        for j, (Ph, Qh) in enumerate(fc_mats):
            xm, Pm = x, P
            if ou_slow:
                xm = x.copy()
                xm[:, :, 2] = np.where(np.isnan(slow), x[:, :, 0], slow)
                Pm = P.copy()
                Pm[:, :, 2, :] = 0.0
                Pm[:, :, :, 2] = 0.0
            xh = np.einsum("cij,scj->sci", Ph, xm)
            Phh = Ph @ Pm @ np.swapaxes(Ph, -1, -2) + Qh
            f, _, l_, h_ = _clinical(xh, Phh)
            fc[:, t, j] = np.where(seen, f, np.nan)
            lo[:, t, j] = np.where(seen, l_, np.nan)
            hi[:, t, j] = np.where(seen, h_, np.nan)
    return SimpleNamespace(nlpd_sum=nl_sum, nlpd_n=nl_n, est=est_all, forecast=fc, low90=lo,
                           high90=hi, rejects=rej_all, final=(x, P, seen, slow))


def _clinical(x: np.ndarray, P: np.ndarray):
    """bank._channels on flattened (L, b) pairs: estimate, sd, low90, high90 `(S, C)`."""
    S = x.shape[0]
    x2 = x[..., :2].reshape(S * C, 2).reshape(S, C, 2)
    p3 = np.stack([P[..., 0, 0], P[..., 0, 1], P[..., 1, 1]], axis=-1)
    return bank._channels(x2, p3)


# ---------------------------------------------------------------------------------------------
# coverage through devices.validate.forecast_coverage


@contextlib.contextmanager
def _coverage_setup(measurement_sd: np.ndarray, horizons: np.ndarray):
    """forecast_coverage widens the level's interval by `ModelParams().measurement_sd` (the
    defaults, whatever params the run used) at the module's CALIBRATION_MINUTES: point both at
    the candidate's for the call."""
    old_mp, old_h = validate.ModelParams, validate.CALIBRATION_MINUTES
    validate.ModelParams = lambda: SimpleNamespace(measurement_sd=measurement_sd)
    validate.CALIBRATION_MINUTES = horizons
    try:
        yield
    finally:
        validate.ModelParams, validate.CALIBRATION_MINUTES = old_mp, old_h


def coverage_from_dense(res, stays, pos, horizons, measurement_sd):
    """`forecast_coverage` for a prototype run on the dense grid (rows = stays' samples)."""
    stay = stays.stay
    run = SimpleNamespace(stay=stay, t=stays.t, forecast=res.forecast[stay, pos],
                          low90=res.low90[stay, pos], high90=res.high90[stay, pos])
    with _coverage_setup(measurement_sd, horizons):
        return validate.forecast_coverage(run, stays)


def nlpd(res) -> dict[str, float]:
    return {n: round(float(res.nlpd_sum[c] / max(res.nlpd_n[c], 1)), 3)
            for c, n in enumerate(NAMES)}


# ---------------------------------------------------------------------------------------------
# data


def dense_2019(stays) -> tuple[np.ndarray, np.ndarray]:
    """Plausible readings `(S, T, C)` on the hourly grid and each sample's grid position."""
    stay = stays.stay
    pos = np.arange(len(stay)) - stays.start[stay]
    # rows are one per ICU hour (checked): position = row index within the stay
    assert np.all(np.diff(stays.t)[np.diff(stay) == 0] == 3600.0)
    z = validate.plausible(stays.z)
    T = int(pos.max()) + 1
    Z = np.full((stays.n, T, C), np.nan)
    Z[stay, pos] = z
    return Z, pos


def mimic_stays():
    """The MIMIC-II numerics record (1-minute) as a one-stay `Stays`."""
    rec = read_wfdb(MIMIC_REC)
    t = rec.t - rec.t[0]
    return physionet.Stays(ids=["mimic2"], start=np.array([0, len(t)]), t=t, z=rec.z,
                           extra={}, age=np.array([np.nan])), rec


# ---------------------------------------------------------------------------------------------
# maximum likelihood


def fit(base: Cand, Z: np.ndarray, names: tuple[str, ...], channels=range(C),
        maxiter: int = 60) -> Cand:
    """Fit `names` (parameters of `Cand`, positive, on a log scale) per channel by minimising the
    mean innovation NLPD of the next reading on hourly Z, channel by channel (channels are
    independent). `measurement_sd` is floored at the product's device figure (ModelParams()):
    without the floor the hourly likelihood drives it to 0 and lets the trend carry all the
    variance (a degenerate optimum that makes the twin reject almost every reading at 1 Hz)."""
    cand = base
    floor = ModelParams().measurement_sd

    def vals(c, v):
        d = {n: float(np.exp(vi)) for n, vi in zip(names, v, strict=True)}
        if "measurement_sd" in d:
            d["measurement_sd"] = max(d["measurement_sd"], floor[c])
        return d

    for c in channels:
        x0 = np.log([max(getattr(cand, n)[c], 1e-4) for n in names])

        def f(v, c=c, cand=cand):
            cc = cand.with_channel(c, **vals(c, v))
            res = run_proto(cc, Z[:, :, c:c + 1], 60.0, chans=[c], want_est=False)
            return res.nlpd_sum[0] / res.nlpd_n[0]

        r = minimize(f, x0, method="Nelder-Mead",
                     options={"maxiter": maxiter, "xatol": 0.02, "fatol": 1e-4})
        cand = cand.with_channel(c, **vals(c, r.x))
        print(f"  fit {base.name} {NAMES[c]}: " + ", ".join(
            f"{n}={v:.4g}" for n, v in vals(c, r.x).items()) + f"  nlpd={r.fun:.4f} "
            f"({r.nfev} evals)", file=sys.stderr, flush=True)
    return cand


# ---------------------------------------------------------------------------------------------
# minute scale: a step / ramp of heart rate at one reading per second (or per minute)


def step_response(cand: Cand, rise: float = 40.0, ramp_s: float = 0.0, every_s: float = 1.0,
                  noise_sd: float = 3.0, n: int = 200, seed: int = 0) -> dict:
    """n simulated patients: HR 80 for PRE_S (filter settles, running mean at 80), then +rise,
    reached after ramp_s seconds, readings every every_s with noise N(0, noise_sd); the other
    channels are not observed. Reports the seconds from the start of the change until the
    estimate is and stays within 5 /min of the true level (the new level for a step; the ramp's
    current value for a ramp) (median, 90th percentile) and the
    readings the gate rejected in the 10 minutes after the change (mean per patient) and in the
    PRE_S before it (false rejections at rest, per hour)."""
    rng = np.random.default_rng(seed)
    hr = INDEX["hr"]
    pre = int(round(PRE_S / every_s))
    post = int(round(600 / every_s))
    tt = np.arange(1, post + 1) * every_s
    level = 80 + rise * np.clip(tt / ramp_s, 0, 1) if ramp_s > 0 else np.full(post, 80 + rise)
    dt = every_s / 60.0
    Z = np.full((n, pre, C), np.nan)
    Z[:, :, hr] = 80 + rng.normal(0, noise_sd, (n, pre))
    r0 = run_proto(cand, Z, dt)
    Z2 = np.full((n, post, C), np.nan)
    Z2[:, :, hr] = level[None, :] + rng.normal(0, noise_sd, (n, post))
    r1 = run_proto(cand, Z2, dt, np.array([30.0]), warm=r0.final)
    err = np.abs(r1.est[:, :, hr] - level[None, :])
    ok = err <= 5.0
    # first time after which it stays within 5
    stay_ok = np.flip(np.cumprod(np.flip(ok, 1), axis=1), 1).astype(bool)
    first = np.where(stay_ok.any(1), stay_ok.argmax(1), post)
    secs = tt[np.minimum(first, post - 1)]
    secs = np.where(first >= post, np.inf, secs)
    return {"seconds_to_within_5_median": float(np.median(secs)),
            "seconds_to_within_5_p90": float(np.percentile(secs, 90)),
            "forecast30_mean_at_2min_median": round(float(np.median(
                r1.forecast[:, int(round(120 / every_s)) - 1, 0, hr])), 1),
            "forecast30_mean_at_10min_median": round(float(np.median(
                r1.forecast[:, int(round(600 / every_s)) - 1, 0, hr])), 1),
            "max_error_after_change_median": round(float(np.median(err.max(1))), 1),
            "rejected_after_change_mean": round(float(r1.rejects[:, :, hr].sum(1).mean()), 2),
            "rejected_at_rest_per_hour": round(
                float(r0.rejects[:, :, hr].sum() / n / (PRE_S / 3600)), 3)}


# ---------------------------------------------------------------------------------------------


def variogram(Z: np.ndarray, lags: list[int]) -> dict[str, dict[str, float]]:
    """Model-free: RMS half-difference sqrt(0.5 E[(z(t+k) - z(t))^2]) of readings k grid steps
    apart within the same stay, per channel. Z `(S, T, C)`. A random walk's grows like sqrt(k);
    a level that returns to the patient's own mean levels off."""
    out = {}
    for c, n in enumerate(NAMES):
        row = {}
        for k in lags:
            d = Z[:, k:, c] - Z[:, :-k, c]
            d = d[np.isfinite(d)]
            row[str(k)] = round(float(np.sqrt(0.5 * np.mean(d * d))), 2) if d.size else None
        out[n] = row
    return out


def fmt_cov(cov: dict) -> list[str]:
    rows = ["| horizon | " + " | ".join(NAMES) + " |", "|---" * (C + 1) + "|"]
    for h, per in cov.items():
        cells = [f"{v['coverage']:.2f} ({v['median_width']:.1f})" if v["coverage"] is not None
                 else "-" for v in per.values()]
        rows.append(f"| {h} | " + " | ".join(cells) + " |")
    return rows


def cand_to_json(c: Cand) -> dict:
    return {"name": c.name, "structure": c.structure, "discretization": c.discretization,
            **{k: [float(v) for v in getattr(c, k)] for k in
               ("level_diffusion", "trend_diffusion", "measurement_sd", "kappa",
                "mean_diffusion", "kappa2", "mean2_diffusion")}}


def cand_from_json(d: dict) -> Cand:
    z = [0.0] * C
    return Cand(d["name"], d["structure"],
                *(np.array(d[k], dtype=float) for k in
                  ("level_diffusion", "trend_diffusion", "measurement_sd", "kappa",
                   "mean_diffusion")), discretization=d["discretization"],
                kappa2=np.array(d.get("kappa2", z), dtype=float),
                mean2_diffusion=np.array(d.get("mean2_diffusion", z), dtype=float))


def fit_candidate(which: str, Zfit: np.ndarray, start: Cand | None = None,
                  channels=range(C)) -> Cand:
    """Fit candidate b, c or d by ML on hourly Zfit (measurement SD floored at the device's)."""
    a = default_cand()
    if which == "b":
        return fit(dataclasses.replace(a, name="b_rw_ml", discretization="product",
                                       measurement_sd=a.measurement_sd * 1.5), Zfit,
                   ("level_diffusion", "measurement_sd", "trend_diffusion"), maxiter=70,
                   channels=channels)
    if which == "c":
        init = dataclasses.replace(
            a, name="c_ou_slow", structure="ou_slow", kappa=np.full(C, 1 / 60.0),
            level_diffusion=a.level_diffusion / 2, trend_diffusion=a.trend_diffusion / 3,
            measurement_sd=a.measurement_sd * 1.5)
        return fit(init, Zfit, ("kappa", "level_diffusion", "measurement_sd",
                                "trend_diffusion"), maxiter=90, channels=channels)
    if which == "d":
        init = start if start is not None else dataclasses.replace(
            a, kappa=np.full(C, 1 / 60.0), level_diffusion=a.level_diffusion / 2,
            trend_diffusion=a.trend_diffusion / 3)
        init = dataclasses.replace(init, name="d_ou_latent", structure="ou_latent",
                                   mean_diffusion=init.level_diffusion / 5,
                                   discretization="exact")
        return fit(init, Zfit, ("kappa", "level_diffusion", "mean_diffusion",
                                "measurement_sd"), maxiter=90, channels=channels)
    if which == "e":
        # L = u + a fast deviation: its diffusion stays today's level_diffusion (the live
        # twin's response in seconds to minutes is unchanged); its reversion rate kappa (hence
        # its stationary SD) is fitted, as are the slow state u (-> patient mean m at kappa2,
        # diffusion mean_diffusion) and the measurement SD. m is a constant the filter learns.
        a = default_cand()
        init = dataclasses.replace(
            a, name="e_two_scale", structure="two_scale", discretization="exact",
            # (capped: started at ~0.9 /min the SpO2 sigma points lose positive definiteness)
            kappa=np.minimum(a.level_diffusion ** 2 / (2 * (1.5 * a.measurement_sd) ** 2), 0.3),
            mean_diffusion=a.level_diffusion / 6, kappa2=np.full(C, 1 / 480.0),
            mean2_diffusion=np.zeros(C))
        return fit(init, Zfit, ("kappa", "mean_diffusion", "kappa2", "measurement_sd"),
                   maxiter=90, channels=channels)
    raise ValueError(which)


def evaluate(cand: Cand, stays, Z, pos, ms, zm, run_twin: bool, held_out) -> dict:
    tr = time.monotonic()
    res = run_proto(cand, Z, 60.0, HOURLY_H)
    run_s = time.monotonic() - tr
    cov = coverage_from_dense(res, stays, pos, HOURLY_H, cand.measurement_sd)
    hs, hZ, hpos = held_out
    resh = run_proto(cand, hZ, 60.0, HOURLY_H)
    covh = coverage_from_dense(resh, hs, hpos, HOURLY_H, cand.measurement_sd)
    resm = run_proto(cand, zm, 1.0, MINUTE_H)
    covm = coverage_from_dense(resm, ms, np.arange(len(ms.t)), MINUTE_H, cand.measurement_sd)
    entry = {
        "params": cand.table(), "structure": cand.structure,
        "discretization": cand.discretization,
        "hourly_coverage_90": cov, "hourly_coverage_90_held_out": covh,
        "hourly_nlpd_next": nlpd(res), "hourly_nlpd_next_held_out": nlpd(resh),
        "hourly_gate_rejections": int(res.rejects.sum()),
        "proto_run_with_forecasts_s": round(run_s, 1),
        "mimic_coverage_90": covm, "mimic_nlpd_next": nlpd(resm),
        "mimic_gate_rejections": int(resm.rejects.sum()),
        "minute_scale": {
            "step40_1Hz": step_response(cand),
            "ramp40_60s_1Hz": step_response(cand, ramp_s=60.0),
            "ramp40_300s_1Hz": step_response(cand, ramp_s=300.0),
            "step40_every60s": step_response(cand, every_s=60.0),
        },
    }
    if run_twin and cand.structure == "rw" and cand.discretization == "product":
        tr = time.monotonic()
        run = validate.run_twin(stays, stays.start, stays.t, params=cand.params(),
                                progress=False)
        entry["run_twin_s"] = round(time.monotonic() - tr, 1)
        with _coverage_setup(cand.measurement_sd, validate.CALIBRATION_MINUTES):
            entry["run_twin_coverage_90"] = validate.forecast_coverage(run, stays)
    return entry


def report(name: str, cand: Cand, entry: dict) -> None:
    print(f"\n## {name} ({cand.structure}, {cand.discretization} discretisation)", flush=True)
    print(json.dumps(entry["params"]))
    print("hourly 2019, all 2000 stays: coverage (median width)")
    print("\n".join(fmt_cov(entry["hourly_coverage_90"])))
    print("hourly 2019, held-out odd stays:")
    print("\n".join(fmt_cov(entry["hourly_coverage_90_held_out"])))
    if "run_twin_coverage_90" in entry:
        print("run_twin (product code), all stays:")
        print("\n".join(fmt_cov(entry["run_twin_coverage_90"])))
    print("nlpd next reading (hourly, all / held-out):", entry["hourly_nlpd_next"],
          entry["hourly_nlpd_next_held_out"], "gate rejections:",
          entry["hourly_gate_rejections"])
    print("MIMIC-II 1-min (one patient, 72 min):")
    print("\n".join(fmt_cov(entry["mimic_coverage_90"])))
    print("nlpd next reading (1-min):", entry["mimic_nlpd_next"],
          "gate rejections:", entry["mimic_gate_rejections"])
    print("minute scale:", json.dumps(entry["minute_scale"]), flush=True)


def _half(stays, keep: np.ndarray):
    """The stays at `keep` (indices) as a Stays."""
    lens = np.diff(stays.start)[keep]
    idx = np.concatenate([np.arange(stays.start[k], stays.start[k + 1]) for k in keep])
    return physionet.Stays(ids=[stays.ids[k] for k in keep],
                           start=np.r_[0, np.cumsum(lens)], t=stays.t[idx], z=stays.z[idx],
                           extra={}, age=stays.age[keep])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=SEPSIS_DIR)
    ap.add_argument("--fit", choices=("b", "c", "d", "e"), default=None,
                    help="fit one candidate on the even-numbered stays, write it to --params-out")
    ap.add_argument("--start", default=None, help="JSON candidate to start the fit of d from")
    ap.add_argument("--params-out", default=None)
    ap.add_argument("--channels", default=None,
                    help="comma-separated channels to fit (others: kept from --params-out if it "
                         "exists)")
    ap.add_argument("--params", nargs="*", default=[],
                    help="JSON files of fitted candidates to evaluate (besides the defaults)")
    ap.add_argument("--recorded", action="store_true",
                    help="evaluate the recorded fits (RECORDED) besides the defaults")
    ap.add_argument("--no-run-twin", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t0 = time.monotonic()
    stays = physionet.read_sepsis(args.dir, None)
    Z, pos = dense_2019(stays)
    print(f"loaded {stays.n} stays, grid {Z.shape} in {time.monotonic() - t0:.1f} s",
          file=sys.stderr, flush=True)
    if args.fit:
        tf = time.monotonic()
        start = cand_from_json(json.load(open(args.start))) if args.start else None
        chans = ([INDEX[n] for n in args.channels.split(",")] if args.channels
                 else list(range(C)))
        cand = fit_candidate(args.fit, Z[0::2], start, chans)
        d = cand_to_json(cand)
        if args.channels:
            with contextlib.suppress(OSError):
                old = json.load(open(args.params_out))
                for k, v in old.items():
                    if isinstance(v, list):
                        d[k] = [d[k][c] if c in chans else v[c] for c in range(C)]
        d["fit_seconds"] = round(time.monotonic() - tf, 1)
        d["fitted_on"] = "even-numbered stays (1000 of 2000), hourly"
        with open(args.params_out, "w") as f:
            json.dump(d, f, indent=1)
        print(json.dumps(d))
        return 0
    hs = _half(stays, np.arange(1, stays.n, 2))
    hZ, hpos = dense_2019(hs)
    ms, _ = mimic_stays()
    zm = validate.plausible(ms.z)[None]
    vg = {"hourly_2019_lag_h": variogram(Z, [1, 2, 4, 8, 12, 24]),
          "mimic_1min_lag_min": variogram(zm, [1, 2, 5, 15, 30, 60])}
    print("variogram sqrt(0.5 E[dz^2]) by lag:", json.dumps(vg), flush=True)
    cands = {"a_default": dataclasses.replace(default_cand(), discretization="product")}
    if args.recorded:
        for d in RECORDED.values():
            cands[d["name"]] = cand_from_json(d)
    for path in args.params:
        c = cand_from_json(json.load(open(path)))
        cands[c.name] = c
    cands.update(EXTRA(cands))
    out: dict = {"variogram": vg, "candidates": {}}
    for name, cand in cands.items():
        entry = evaluate(cand, stays, Z, pos, ms, zm, not args.no_run_twin, (hs, hZ, hpos))
        out["candidates"][name] = entry
        report(name, cand, entry)
    out["consistency"] = consistency(cands)
    print("\nrate consistency (level SD of a 240-min forecast: one step vs 240 1-min steps):")
    print(json.dumps(out["consistency"]))
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(f"\nwall {out['wall_s']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return 0


def consistency(cands: dict[str, Cand]) -> dict:
    """Level SD after 240 min from a known state, in one step and in 240 steps of 1 min."""
    out = {}
    for name, cand in cands.items():
        Phi1, Q1 = discretize(cand, 1.0)
        P = np.zeros((C, 4, 4))
        for _ in range(240):
            P = Phi1 @ P @ np.swapaxes(Phi1, -1, -2) + Q1
        _, Q240 = discretize(cand, 240.0)
        out[name] = {n: [round(float(np.sqrt(Q240[c, 0, 0])), 2),
                         round(float(np.sqrt(P[c, 0, 0])), 2)] for c, n in enumerate(NAMES)}
    return out


# The fits of 29 Nov 2026 (docs/calibration-notes.md), 4 significant digits: `--recorded`.
RECORDED: dict[str, dict] = json.loads(
    Path(__file__).with_name("calibration_fits.json").read_text(encoding="utf-8"))


def EXTRA(cands: dict[str, Cand]) -> dict[str, Cand]:
    """Further hand-set candidates built from the fitted ones (see docs/calibration-notes.md)."""
    return {}


if __name__ == "__main__":
    sys.exit(main())
