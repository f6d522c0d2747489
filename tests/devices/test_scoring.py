import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import mannwhitneyu

from devices import scoring

# --- AUROC -------------------------------------------------------------------------------------

@pytest.mark.parametrize("score, y, expected", [
    ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),  # perfect
    ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),  # perfectly wrong
    ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied: every pair counts half
    # pairs (pos, neg): (0.4, 0.1) win, (0.4, 0.35) win, (0.8, *) win x2, but 0.35 < 0.4 ...
    # positives 0.35 and 0.8; negatives 0.1 and 0.4: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4
    ([0.1, 0.35, 0.4, 0.8], [0, 1, 0, 1], 3 / 4),
    # a tie between a positive and a negative counts half: pairs 1 + 0.5 + 1 + 1 over 4
    ([0.1, 0.4, 0.4, 0.8], [0, 1, 0, 1], 3.5 / 4),
])
def test_auroc_hand_computed(score, y, expected):
    assert scoring.auroc(np.array(score), np.array(y)) == pytest.approx(expected)


def test_auroc_equals_mann_whitney_u_and_is_rank_invariant():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 0.7 * y, 1)  # rounding makes ties
    u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
    a = scoring.auroc(s, y)
    assert a == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    assert scoring.auroc(np.exp(s), y) == pytest.approx(a)  # monotone transform: same AUROC
    assert scoring.auroc(-s, y) == pytest.approx(1 - a)


def test_auroc_undefined_with_one_class():
    assert np.isnan(scoring.auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_bootstrap_resamples_stays_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    stays = 300
    hours = rng.integers(5, 40, stays)
    stay = np.repeat(np.arange(stays), hours)
    pos_stay = rng.random(stays) < 0.2
    y = pos_stay[stay].astype(int)
    s = rng.normal(size=len(stay)) + 0.8 * y
    a, lo, hi = scoring.bootstrap_auroc(s, y, stay, n_boot=300, seed=1)
    assert a == pytest.approx(scoring.auroc(s, y))
    assert lo < a < hi
    assert 0.0 < hi - lo < 0.3
    # Rows of one stay move together: a copy of every row within its own stay (same stay id)
    # leaves the point estimate and does not narrow the interval the way independent rows
    # would; giving each duplicate its own stay id (pretending rows are independent) does.
    stay2 = np.r_[stay, stay]
    a2, lo2, hi2 = scoring.bootstrap_auroc(np.r_[s, s], np.r_[y, y], stay2, 300, 1)
    _, lo3, hi3 = scoring.bootstrap_auroc(np.r_[s, s], np.r_[y, y],
                                          np.r_[stay, stay + stays], 300, 1)
    assert a2 == pytest.approx(a)
    assert hi2 - lo2 > 1.2 * (hi3 - lo3)


def test_weighted_auroc_equals_auroc_of_repeated_rows():
    rng = np.random.default_rng(5)
    s = np.round(rng.normal(size=60), 1)
    y = rng.integers(0, 2, 60)
    w = rng.integers(0, 4, 60)
    rep = np.repeat(np.arange(60), w)
    assert scoring._WeightedAuroc(s, y)(w.astype(float)) == pytest.approx(
        scoring.auroc(s[rep], y[rep]))


# --- utility -----------------------------------------------------------------------------------

def _cohort():
    """Two septic stays (onset t_sepsis = 20 and 10, label from t_sepsis - 6) and two that never
    become septic; rows of a stay contiguous."""
    lens = [40, 30, 25, 50]
    label = []
    for n, first in zip(lens, [14, 4, None, None], strict=True):
        lab = np.zeros(n, dtype=int)
        if first is not None:
            lab[first:] = 1
        label.append(lab)
    stay = np.repeat(np.arange(4), lens)
    return np.concatenate(label), stay


def test_onset_is_first_label_plus_six():
    label, stay = _cohort()
    t = scoring.onset_index(label, stay, 4)
    assert t[0] == 20 and t[1] == 10 and np.isnan(t[2:]).all()


def test_perfect_predictor_scores_one_nothing_scores_zero():
    label, stay = _cohort()
    t = scoring._row_time(stay)
    tsep = scoring.onset_index(label, stay, 4)[stay]
    with np.errstate(invalid="ignore"):
        best = (t - tsep >= -12) & (t - tsep <= 3)
    assert scoring.utility(best, label, stay) == pytest.approx(1.0)
    assert scoring.utility(np.zeros_like(label), label, stay) == pytest.approx(0.0)
    # alerting on every hour is worse than the optimum (false alarms, early alerts)
    assert scoring.utility(np.ones_like(label), label, stay) < 1.0


def test_utility_by_hand():
    # One septic stay of 30 rows with t_sepsis = 15 (label from row 9) and one non-septic stay
    # of 10 rows. Predict 1 at t = 9 (d = -6: +1), t = 18 (d = +3: 0), t = 25 (d = +10: not
    # counted), and on 4 rows of the non-septic stay (4 x -0.05).
    label = np.r_[np.zeros(9), np.ones(21), np.zeros(10)].astype(int)
    stay = np.r_[np.zeros(30), np.ones(10)].astype(int)
    alert = np.zeros(40, dtype=bool)
    alert[[9, 18, 25, 30, 31, 32, 33]] = True
    # U: +1 + 0 + (-0.2) + missed hours d = -5..+3 except +3: m3 = -2/9, u = -2/9 (d + 6)
    missed = sum(-2 / 9 * (d + 6) for d in range(-5, 3))
    u = 1.0 + 0.0 - 0.2 + missed
    # U_best: predict 1 for d in -12..+3: sum of max(-0.05, (d + 12) / 6) for d <= -6 and
    # (3 - d) / 9 for -6 < d <= 3
    u_best = sum(max(-0.05, (d + 12) / 6) for d in range(-12, -5)) + sum(
        (3 - d) / 9 for d in range(-5, 4))
    u_none = sum(-2 / 9 * (d + 6) for d in range(-5, 4))
    assert scoring.utility(alert, label, stay) == pytest.approx(
        (u - u_none) / (u_best - u_none))


def test_late_hours_do_not_count_and_false_alarms_cost():
    label, stay = _cohort()
    t = scoring._row_time(stay)
    late = (stay == 0) & (t > 23)  # after t_sepsis + 3 of stay 0
    assert scoring.utility(late, label, stay) == pytest.approx(0.0)
    fa = stay == 2
    assert scoring.utility(fa, label, stay) < 0


# --- alerting ----------------------------------------------------------------------------------

def test_sepsis_alerting_detection_lead_and_burden():
    label, stay = _cohort()
    t = scoring._row_time(stay)
    alert = np.zeros(len(label), dtype=bool)
    alert[(stay == 0) & (t == 12)] = True  # 8 h before t_sepsis = 20: in the window
    alert[(stay == 0) & (t == 30)] = True  # late: not the first in-window alert
    alert[(stay == 1) & (t == 14)] = True  # 4 h after t_sepsis = 10: outside the window
    alert[(stay == 3) & (t < 5)] = True  # 5 false alarm hours
    r = scoring.sepsis_alerting(alert, label, stay)
    assert r["detected"] == pytest.approx(0.5)
    assert r["median_lead_h"] == pytest.approx(8.0)
    assert r["alert_hours_per_patient_day"] == pytest.approx(8 / (145 / 24))


def test_at_burden_alerts_the_k_highest_scores_only():
    score = np.array([0.2, np.nan, 0.9, 0.5, 0.9, 0.1])
    np.testing.assert_array_equal(scoring.at_burden(score, 3),
                                  [False, False, True, True, True, False])
    assert not scoring.at_burden(score, 0).any()
    assert scoring.at_burden(score, 6).sum() == 6  # NaN last


def test_sens_ppv():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    a = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    r = scoring.sens_ppv(a, y)
    assert r["sensitivity"] == pytest.approx(2 / 3)
    assert r["ppv"] == pytest.approx(2 / 3)
    assert r["alerted"] == pytest.approx(3 / 8)


def test_best_threshold_maximises_the_gain_exactly():
    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=200), 1)
    g = rng.normal(size=200) + s
    thr = scoring.best_threshold(s, g)
    best = max(g[s >= c].sum() for c in np.unique(s))
    assert g[s >= thr].sum() == pytest.approx(max(best, 0.0))
    # when every alert loses, alert on nothing
    assert scoring.best_threshold(s, -np.abs(g) - 1) == np.inf


def test_paired_difference_of_a_score_with_itself_is_exactly_zero():
    rng = np.random.default_rng(4)
    stay = np.repeat(np.arange(100), 10)
    y = (rng.random(100) < 0.3)[stay].astype(int)
    s = rng.normal(size=1000) + y
    d, lo, hi = scoring.bootstrap_auroc_difference(s, s, y, stay, 200, 0)
    assert d == lo == hi == 0.0
    noisy = s + rng.normal(scale=2.0, size=1000)
    d, lo, hi = scoring.bootstrap_auroc_difference(s, noisy, y, stay, 200, 0)
    assert d == pytest.approx(scoring.auroc(s, y) - scoring.auroc(noisy, y))
    assert 0 < lo < d < hi  # the less noisy score is better, and the interval says so


def _reference_utility(labels, predictions):
    """The Challenge's rules row by row, one stay at a time (the README's wording)."""
    dt_early, dt_optimal, dt_late = -12, -6, 3
    m1, b1 = 1 / (dt_optimal - dt_early), -dt_early / (dt_optimal - dt_early)
    m2 = -1 / (dt_late - dt_optimal)
    b2 = -m2 * dt_late
    m3 = -2 / (dt_late - dt_optimal)
    b3 = -m3 * dt_optimal
    septic = any(labels)
    ts = (list(labels).index(1) + 6) if septic else np.inf
    u = 0.0
    for t, p in enumerate(predictions):
        if t > ts + dt_late:
            continue
        if not septic:
            u += -0.05 if p else 0.0
        elif p:
            u += max(-0.05, m1 * (t - ts) + b1) if t <= ts + dt_optimal else m2 * (t - ts) + b2
        elif t > ts + dt_optimal:
            u += m3 * (t - ts) + b3
    return u


def test_utility_equals_a_row_by_row_reference():
    rng = np.random.default_rng(11)
    for _ in range(5):
        labels, preds, best = [], [], []
        for _ in range(30):
            n = int(rng.integers(3, 80))
            lab = np.zeros(n, dtype=int)
            if rng.random() < 0.4:
                lab[int(rng.integers(0, n)):] = 1
            labels.append(lab)
            preds.append((rng.random(n) < 0.2).astype(int))
            b = np.zeros(n, dtype=int)
            if lab.any():
                ts = int(np.argmax(lab)) + 6
                b[max(0, ts - 12):min(ts + 4, n)] = 1
            best.append(b)
        u = sum(_reference_utility(lab, p) for lab, p in zip(labels, preds, strict=True))
        u_best = sum(_reference_utility(lab, b) for lab, b in zip(labels, best, strict=True))
        u_none = sum(_reference_utility(lab, 0 * lab) for lab in labels)
        stay = np.concatenate([np.full(len(lab), i) for i, lab in enumerate(labels)])
        got = scoring.utility(np.concatenate(preds), np.concatenate(labels), stay)
        assert got == pytest.approx((u - u_none) / (u_best - u_none))


# --- spread over folds, calibration ------------------------------------------------------------

def test_fold_aurocs_are_each_folds_own():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y * np.repeat([0.0, 1.0, 3.0], 100)  # folds differ in signal
    fold = np.repeat([2, 0, 1], 100)  # fold ids out of row order
    per = scoring.fold_aurocs(s, y, fold)
    for f, a in enumerate(per):
        assert a == pytest.approx(scoring.auroc(s[fold == f], y[fold == f]))
    assert per[2] < per[0] < per[1]  # the weak fold is fold 2, the strong one fold 1
    y1 = y.copy()
    y1[fold == 0] = 1  # a fold with one class only has no AUROC
    assert np.isnan(scoring.fold_aurocs(s, y1, fold)[0])


def test_brier_and_bins_by_hand():
    p = np.array([0.1, 0.2, 0.6, 0.9])
    y = np.array([0, 1, 0, 1])
    c = scoring.calibration(p, y, bins=2)
    assert c["brier"] == pytest.approx((0.01 + 0.64 + 0.36 + 0.01) / 4)
    lo, hi = c["bins"]
    assert (lo["predicted"], lo["observed"], lo["n"]) == (pytest.approx(0.15), 0.5, 2)
    assert (hi["predicted"], hi["observed"], hi["n"]) == (pytest.approx(0.75), 0.5, 2)
    assert 0.0 < lo["low95"] < 0.5 < lo["high95"] < 1.0


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from known probabilities: logit p ~ N(-3, 1.5), a rare outcome as in the
    sepsis hours."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(-3.0, 1.5, n)
    return lp, (rng.random(n) < expit(lp)).astype(int)


def test_calibration_intercept_and_slope_recover_known_miscalibration():
    lp, y = _draw(200_000, 5)
    right = scoring.calibration(expit(lp), y)
    assert right["intercept"] == pytest.approx(0.0, abs=0.03)
    assert right["slope"] == pytest.approx(1.0, abs=0.03)
    # predictions twice as extreme on the logit scale (over-fitting): slope 1/2
    assert scoring.calibration(expit(2.0 * lp), y)["slope"] == pytest.approx(0.5, abs=0.02)
    # predictions too high by 1 on the logit scale: intercept -1, slope still 1
    high = scoring.calibration(expit(lp + 1.0), y)
    assert high["intercept"] == pytest.approx(-1.0, abs=0.03)
    assert high["slope"] == pytest.approx(1.0, abs=0.03)
    assert high["brier"] > right["brier"]
    # every bin of the calibrated model sees what it predicted
    for b in right["bins"]:
        assert b["low95"] - 0.002 <= b["predicted"] <= b["high95"] + 0.002


def test_calibration_of_one_class_is_undefined():
    c = scoring.calibration(np.array([0.1, 0.2]), np.array([0, 0]))
    assert c["brier"] is None and c["slope"] is None and c["bins"] == []
