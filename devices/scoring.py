"""Scores for `patient-twin validate`: AUROC with a bootstrap over stays, the PhysioNet 2019
Challenge's normalised utility, alerting figures (lead time, alert burden, sensitivity, PPV), the
spread of AUROC over cross-validation folds, and calibration (Brier score, calibration intercept and
slope, a reliability table).

Everything is over flat arrays: `score (M,)` or `alert (M,) bool` per hour (or per stay), with
`stay (M,)` the stay index of each row when rows are hours.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq, minimize
from scipy.special import expit, log_expit, logit
from scipy.stats import rankdata

# PhysioNet/CinC Challenge 2019 utility (Reyna et al., Crit Care Med 2020; the Challenge's
# evaluate_sepsis_score.py): hours relative to t_sepsis, and the rewards.
DT_EARLY, DT_OPTIMAL, DT_LATE = -12.0, -6.0, 3.0
U_TP_MAX, U_FN_MIN, U_FP, U_TN = 1.0, -2.0, -0.05, 0.0


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve, ties counted half (the Mann-Whitney U / (n1 n0)).

    score, y: `(M,)`; y is 0/1. NaN if either class is absent."""
    score = np.asarray(score, dtype=float)
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(score)
    # U1 = R1 - n1 (n1 + 1) / 2
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


class _WeightedAuroc:
    """AUROC of one (score, y) pair under many weightings of its rows, sorting once.

    A bootstrap over stays gives each row the multiplicity of its stay; the AUROC of the
    resampled data is the weighted AUROC with those multiplicities as weights."""

    def __init__(self, score: np.ndarray, y: np.ndarray) -> None:
        order = np.argsort(score, kind="stable")
        s = np.asarray(score, dtype=float)[order]
        self.order = order
        self.y = np.asarray(y).astype(bool)[order]
        # tie groups of equal scores: a pair inside a group counts half
        self.group = np.r_[0, np.cumsum(s[1:] != s[:-1])]
        self.ngroups = int(self.group[-1]) + 1 if len(s) else 0

    def __call__(self, w: np.ndarray) -> float:
        w = w[self.order]
        pos = np.bincount(self.group, weights=w * self.y, minlength=self.ngroups)
        neg = np.bincount(self.group, weights=w * ~self.y, minlength=self.ngroups)
        wp, wn = pos.sum(), neg.sum()
        if wp == 0 or wn == 0:
            return float("nan")
        below = np.cumsum(neg) - neg  # negatives strictly below each group
        return float((pos * (below + 0.5 * neg)).sum() / (wp * wn))


def bootstrap_auroc(score: np.ndarray, y: np.ndarray, stay: np.ndarray, n_boot: int = 500,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """AUROC and its percentile bootstrap interval, resampling stays (not rows) with replacement.

    score, y, stay: `(M,)`; stay: int index of each row's stay (rows of one stay are not
    independent, so they are resampled together). Returns (auroc, low, high)."""
    stay = np.asarray(stay)
    _, inv = np.unique(stay, return_inverse=True)
    n = int(inv.max()) + 1 if len(inv) else 0
    point = auroc(score, y)
    if n == 0 or np.isnan(point):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    wa = _WeightedAuroc(score, y)
    draws = np.empty(n_boot)
    for b in range(n_boot):  # replicates, not patients
        mult = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        draws[b] = wa(mult[inv])
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(draws, [a, 1.0 - a])
    return point, float(lo), float(hi)


def bootstrap_auroc_difference(score_a: np.ndarray, score_b: np.ndarray, y: np.ndarray,
                               stay: np.ndarray, n_boot: int = 500, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same rows, with a paired bootstrap interval over stays (both
    scores see the same resampled stays, so what they share cancels). `(M,)` each."""
    stay = np.asarray(stay)
    _, inv = np.unique(stay, return_inverse=True)
    n = int(inv.max()) + 1 if len(inv) else 0
    point = auroc(score_a, y) - auroc(score_b, y)
    if n == 0 or np.isnan(point):
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    wa, wb = _WeightedAuroc(score_a, y), _WeightedAuroc(score_b, y)
    draws = np.empty(n_boot)
    for b in range(n_boot):  # replicates, not patients
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)[inv]
        draws[b] = wa(w) - wb(w)
    a = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(draws, [a, 1.0 - a])
    return point, float(lo), float(hi)


def onset_index(label: np.ndarray, stay: np.ndarray, n_stays: int) -> np.ndarray:
    """Row index within its stay of t_sepsis per stay, `(S,)` float (NaN: never septic).

    The 2019 label is 1 from 6 h before onset (dt_optimal), so t_sepsis = first label row + 6."""
    pos = np.flatnonzero(np.asarray(label) == 1)
    first = np.full(n_stays, np.nan)
    starts = np.searchsorted(stay, np.arange(n_stays))
    # the first positive row of each stay (rows of a stay are contiguous and in time order)
    s_pos = stay[pos]
    keep = np.r_[True, s_pos[1:] != s_pos[:-1]]
    first[s_pos[keep]] = pos[keep] - starts[s_pos[keep]]
    return first - DT_OPTIMAL


def _row_time(stay: np.ndarray) -> np.ndarray:
    """Row index within its stay (the hour t of the Challenge), `(M,)`."""
    m = len(stay)
    new = np.r_[True, stay[1:] != stay[:-1]] if m else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(new, np.arange(m), 0))
    return np.arange(m) - start


def utility_rows(label: np.ndarray, stay: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Per row: the utility of predicting 1, of predicting 0, and whether the row counts.

    label, stay: `(M,)` SepsisLabel and stay index, rows of a stay contiguous and in time order.
    Returns u_pos, u_neg `(M,)` float and counted `(M,)` bool (t <= t_sepsis + dt_late for a
    septic stay; every row of a stay that never becomes septic)."""
    stay = np.asarray(stay)
    n = int(stay.max()) + 1 if len(stay) else 0
    t_sep = onset_index(label, stay, n)[stay]  # (M,)
    t = _row_time(stay).astype(float)
    septic = ~np.isnan(t_sep)
    d = t - np.where(septic, t_sep, 0.0)
    m1 = 1.0 / (DT_OPTIMAL - DT_EARLY)
    b1 = -m1 * DT_EARLY
    m2 = -1.0 / (DT_LATE - DT_OPTIMAL)
    b2 = -m2 * DT_LATE
    m3 = -2.0 / (DT_LATE - DT_OPTIMAL)  # U_FN_MIN / (dt_late - dt_optimal)
    b3 = -m3 * DT_OPTIMAL
    early = d <= DT_OPTIMAL
    u_pos = np.where(early, np.maximum(U_FP, m1 * d + b1), m2 * d + b2)
    u_neg = np.where(early, 0.0, m3 * d + b3)
    u_pos = np.where(septic, u_pos, U_FP)
    u_neg = np.where(septic, u_neg, U_TN)
    counted = ~septic | (d <= DT_LATE)
    return u_pos, u_neg, counted


def utility(alert: np.ndarray, label: np.ndarray, stay: np.ndarray) -> float:
    """The Challenge's normalised utility (U - U_none) / (U_best - U_none) of binary hourly
    predictions. alert, label, stay: `(M,)`.

    U_best predicts 1 exactly on rows with t_sepsis + dt_early <= t <= t_sepsis + dt_late of each
    septic stay; U_none predicts nothing. 1 is perfect, 0 is doing nothing."""
    alert = np.asarray(alert).astype(bool)
    u_pos, u_neg, counted = utility_rows(label, stay)
    stay = np.asarray(stay)
    n = int(stay.max()) + 1 if len(stay) else 0
    t_sep = onset_index(label, stay, n)[stay]
    d = _row_time(stay) - t_sep  # NaN for stays that never become septic
    with np.errstate(invalid="ignore"):
        best = (d >= DT_EARLY) & (d <= DT_LATE)
    u = np.where(alert, u_pos, u_neg)[counted].sum()
    u_best = np.where(best, u_pos, u_neg)[counted].sum()
    u_none = u_neg[counted].sum()
    if u_best == u_none:
        return float("nan")
    return float((u - u_none) / (u_best - u_none))


def sepsis_alerting(alert: np.ndarray, label: np.ndarray, stay: np.ndarray,
                    hours_per_row: float = 1.0) -> dict[str, float]:
    """Alerting figures of hourly binary alerts. alert, label, stay: `(M,)`.

    detected: share of septic stays with an alert from t_sepsis - 12 h to t_sepsis + 3 h
    (detected_stays: how many);
    median_lead_h: median over those stays of t_sepsis minus the first alert in that window
    (negative: after onset); alert_hours_per_patient_day: alerted rows per 24 monitored hours
    (every row of every stay)."""
    alert = np.asarray(alert).astype(bool)
    stay = np.asarray(stay)
    n = int(stay.max()) + 1 if len(stay) else 0
    t_sep = onset_index(label, stay, n)
    d = _row_time(stay) - t_sep[stay]
    with np.errstate(invalid="ignore"):
        window = alert & (d >= DT_EARLY) & (d <= DT_LATE)
    septic = ~np.isnan(t_sep)
    first = np.full(n, np.inf)
    np.minimum.at(first, stay[window], d[window])
    hit = np.isfinite(first)
    lead = -first[hit]
    days = len(alert) * hours_per_row / 24.0
    return {
        "detected": float(hit.sum() / septic.sum()) if septic.any() else float("nan"),
        "detected_stays": int(hit.sum()),
        "median_lead_h": float(np.median(lead)) if hit.any() else float("nan"),
        "alert_hours_per_patient_day": float(alert.sum() * hours_per_row / days)
        if days else float("nan"),
    }


def at_burden(score: np.ndarray, k: int) -> np.ndarray:
    """Alerts on the `k` highest of `score (M,)`, `(M,) bool`: an operating point chosen by alert
    burden alone (no label is used), so two scores compare at the same number of alert-hours.
    Ties are broken by row order."""
    alert = np.zeros(len(score), dtype=bool)
    alert[np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")[:max(k, 0)]] = True
    return alert


def sens_ppv(alert: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Sensitivity, PPV and the share alerted of binary per-stay alerts, `(S,)` each."""
    alert = np.asarray(alert).astype(bool)
    y = np.asarray(y).astype(bool)
    tp = int((alert & y).sum())
    return {
        "sensitivity": tp / int(y.sum()) if y.any() else float("nan"),
        "ppv": tp / int(alert.sum()) if alert.any() else float("nan"),
        "alerted": float(alert.mean()) if len(alert) else float("nan"),
    }


def best_threshold(score: np.ndarray, gain: np.ndarray) -> float:
    """The threshold t maximising the summed `gain` of the rows alerted (score >= t), exactly.

    score, gain: `(M,)`. Alerting on nothing (gain 0) is a candidate: it returns +inf then.
    Utility: gain = u_pos - u_neg on counted rows (0 elsewhere); Youden's J: 1 / n_pos for a
    positive, -1 / n_neg for a negative."""
    s = np.asarray(score, dtype=float)
    g = np.asarray(gain, dtype=float)
    ok = np.isfinite(s)
    s, g = s[ok], g[ok]
    if not len(s):
        return float("inf")
    order = np.argsort(-s, kind="stable")
    s, g = s[order], g[order]
    total = np.cumsum(g)
    # only the last row of a tie group is a possible cut: equal scores alert together
    last = np.r_[s[1:] != s[:-1], True]
    cut = np.flatnonzero(last)
    best = int(cut[np.argmax(total[cut])])
    return float(s[best]) if total[best] > 0 else float("inf")


def fold_aurocs(score: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """AUROC within each cross-validation fold, `(K,)` in fold order (NaN: a fold with one class
    only). score, y, fold: `(M,)`. The spread over folds says how much a figure moves with the
    split, which one pooled AUROC hides."""
    return np.array([auroc(score[fold == f], y[fold == f]) for f in np.unique(fold)])


def calibration(prob: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """How far predicted probabilities are from observed frequencies. prob, y: `(M,)`.

    brier: mean squared error of the probabilities (Brier, Mon Weather Rev 1950;78:1-3);
    intercept: calibration-in-the-large, the a of logit P(y) = a + logit(p) (slope fixed at 1;
    0 is right, < 0 means the model predicts too high); slope: the b of logit P(y) = a + b
    logit(p) (1 is right, < 1 means predictions too extreme, over-fitting), both by maximum
    likelihood (Cox, Biometrika 1958;45:562-565; Van Calster et al., BMC Med 2019;17:230);
    bins: `bins` equal-count bins of ascending p, each with its mean prediction, observed
    frequency, its 95 % Wilson interval (rows taken as independent) and its size."""
    p = np.asarray(prob, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(p)
    p, y = p[ok], y[ok]
    if not len(p) or y.min() == y.max():
        return {"brier": None, "intercept": None, "slope": None, "bins": []}
    lp = logit(np.clip(p, 1e-12, 1.0 - 1e-12))

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta
        eta = a + b * lp
        r = expit(eta) - y
        return (float(-(y * log_expit(eta) + (1.0 - y) * log_expit(-eta)).mean()),
                np.array([r.mean(), (r * lp).mean()]))

    slope = minimize(nll, np.array([0.0, 1.0]), jac=True, method="L-BFGS-B",
                     options={"gtol": 1e-10}).x[1]
    # the intercept with the slope held at 1: its score equation is monotone in a
    intercept = brentq(lambda a: float((expit(a + lp) - y).sum()), -30.0, 30.0)
    order = np.argsort(p, kind="stable")
    rows = []
    for idx in np.array_split(order, min(bins, len(p))):
        n = len(idx)
        obs = float(y[idx].mean())
        lo, hi = _wilson(obs, n)
        rows.append({"predicted": float(p[idx].mean()), "observed": obs, "low95": lo,
                     "high95": hi, "n": n})
    return {"brier": float(((p - y) ** 2).mean()), "intercept": float(intercept),
            "slope": float(slope), "bins": rows}


def _wilson(share: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (Wilson, JASA 1927;22:209-212)."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))
