import json

import numpy as np
import pytest
from scipy.special import expit

from twin import bank, risk
from twin.channels import INDEX, C
from twin.devices import device_hash
from twin.model import ModelParams


def _synthetic(n=20000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=[5.0, -2.0, 0.0], scale=[2.0, 0.5, 1.0], size=(n, 3))
    coef = np.array([0.8, -1.5, 0.0])  # per raw unit
    eta = -1.0 + (x - [5.0, -2.0, 0.0]) @ coef
    y = (rng.random(n) < expit(eta)).astype(int)
    return x, y, coef


def test_fit_recovers_a_known_logistic_model():
    x, y, coef = _synthetic()
    m = risk.fit(x, y, ("a", "b", "c"), lam=1e-6)
    # coefficients are per standardised unit: back to raw units
    np.testing.assert_allclose(m.coef / m.scale, coef, atol=0.08)
    p = risk.predict(m, x)
    assert p.shape == (len(y),)
    assert ((p > 0) & (p < 1)).all()
    true_p = expit(-1.0 + (x - [5.0, -2.0, 0.0]) @ coef)
    assert np.abs(p - true_p).max() < 0.05


def test_l2_shrinks_and_nan_is_imputed_at_the_mean():
    x, y, _ = _synthetic(5000, 1)
    weak = risk.fit(x, y, ("a", "b", "c"), lam=1e-6)
    strong = risk.fit(x, y, ("a", "b", "c"), lam=1.0)
    assert np.abs(strong.coef).sum() < 0.5 * np.abs(weak.coef).sum()
    row = np.array([[np.nan, np.nan, np.nan]])
    # every feature unknown -> the intercept alone
    assert risk.predict(weak, row)[0] == pytest.approx(expit(weak.intercept))
    with pytest.raises(ValueError):
        risk.predict(weak, x[:, :2])


def test_round_trip_through_the_parameter_file(tmp_path):
    x, y, _ = _synthetic(3000, 2)
    m = risk.fit(x, y, ("a", "b", "c"), lam=1e-3)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"version": 1, "models": {"demo": m.to_dict()}}))
    back = risk.load("demo", path)
    np.testing.assert_allclose(risk.predict(back, x), risk.predict(m, x))
    with pytest.raises(ValueError, match="no model"):
        risk.load("other", path)
    path.write_text(json.dumps({"version": 99, "models": {}}))
    with pytest.raises(ValueError, match="version"):
        risk.load("demo", path)


@pytest.mark.parametrize("name", ["sepsis2019", "icu2012", risk.LIVE_MODEL])
def test_shipped_parameter_file_loads_and_predicts(name):
    m = risk.load(name)
    assert m.meta["version"] == 1
    assert m.meta["dataset"] == ("sepsis2019" if name == risk.LIVE_MODEL else name)
    assert len(m.names) == len(m.coef) == len(m.mean) == len(m.scale)
    if name == risk.LIVE_MODEL:
        assert m.names == risk.LIVE_FEATURES and 0 < risk.threshold(m) < 1
    else:
        assert set(risk.FEATURES) <= set(m.names)
    assert (m.scale > 0).all() and np.isfinite(m.coef).all()
    assert 0.5 < m.meta["cv_auroc"] <= 1.0
    p = risk.predict(m, np.tile(m.mean, (4, 1)))
    assert p.shape == (4,) and np.allclose(p, expit(m.intercept))


def _twins(n=3):
    params = ModelParams()
    s = bank.new_states(n, params)
    z = np.full((n, C), np.nan)
    z[:, INDEX["hr"]] = [80, 120, 60][:n]
    z[:, INDEX["sbp"]] = [120, 80, 140][:n]
    z[:, INDEX["dbp"]] = [70, 50, 80][:n]
    z[0, INDEX["spo2"]] = 97
    z[0, INDEX["rr"]] = 16
    nan = np.full(n, np.nan)
    bank.step(s, bank.Readings(np.arange(n), np.zeros(n), z, nan, nan,
                               device_hash(["d"] * n), np.ones(n, np.int64)), params)
    return s, params


def test_features_shapes_and_physiology():
    s, params = _twins()
    now = np.full(3, 1800.0)
    out = bank.outputs(s, now, params, on_oxygen=np.zeros(3), alert=np.ones(3))
    risk.update_drift(s, out.estimate, now)
    f = risk.features(out, risk.fast_deviation(s, now, params), risk.baseline(s), s["slow"])
    assert f.shape == (3, len(risk.FEATURES))
    col = {n: i for i, n in enumerate(risk.FEATURES)}
    # the second twin is tachycardic and hypotensive: the higher shock index
    assert f[1, col["shock_index"]] > f[0, col["shock_index"]] > f[2, col["shock_index"]]
    np.testing.assert_allclose(f[:, col["hr_level"]], out.estimate[:, INDEX["hr"]])
    # half an hour since the only reading
    np.testing.assert_allclose(f[:, col["hr_log_hours_since_obs"]], np.log1p(0.5))
    # temperature never observed: unknown level, flagged
    assert np.isnan(f[:, col["temp_level"]]).all()
    assert (f[:, col["temp_never_observed"]] == 1).all()
    assert np.isnan(f[1:, col["spo2_per_rr"]]).all() and np.isfinite(f[0, col["spo2_per_rr"]])
    # the first update sets the baseline: no drift yet
    np.testing.assert_allclose(f[:, col["hr_drift_from_baseline"]], 0.0)


def test_drift_tracks_a_change_from_the_patients_own_baseline():
    params = ModelParams()
    s = bank.new_states(2, params)
    est = np.full((2, C), np.nan)
    for h in range(30):  # hours, not patients
        est[:, INDEX["hr"]] = [80.0, 80.0 if h < 10 else 120.0]
        risk.update_drift(s, est.copy(), np.full(2, h * 3600.0))
    base = risk.baseline(s)
    assert base[:, INDEX["hr"]] == pytest.approx([80.0, 80.0])  # the first 6 h only
    drift_slow = est[:, INDEX["hr"]] - s["slow"][:, INDEX["hr"]]
    assert drift_slow[0] == pytest.approx(0.0)
    assert 5.0 < drift_slow[1] < 40.0  # the slow mean lags the jump
    assert np.isnan(base[:, INDEX["temp"]]).all()
    np.testing.assert_allclose(risk.hours_monitored(s, np.full(2, 30 * 3600.0)), 30.0)
    # the baselines travel with the twin's record
    back = bank.from_bytes(bank.to_bytes(s))
    np.testing.assert_array_equal(risk.baseline(back), base)


def test_the_slow_mean_is_the_same_at_any_sampling_rate():
    """A wearable's twin (every minute) and a charted one (every hour) get the same running
    mean of the same course: the live risk sees what the fitted one saw."""
    params = ModelParams()
    fine, coarse = bank.new_states(1, params), bank.new_states(1, params)
    est = np.full((1, C), np.nan)
    for m in range(0, 12 * 60 + 1):  # minutes of one patient
        est[0, INDEX["hr"]] = 70.0 + 30.0 * min(m / 600.0, 1.0)
        risk.update_drift(fine, est.copy(), np.array([m * 60.0]))
        if m % 60 == 0:
            risk.update_drift(coarse, est.copy(), np.array([m * 60.0]))
    a, b = fine["slow"][0, INDEX["hr"]], coarse["slow"][0, INDEX["hr"]]
    assert abs(a - b) < 1.5, (a, b)


def test_live_features_are_the_fitted_columns_of_the_full_set():
    s, params = _twins()
    now = np.full(3, 1800.0)
    out = bank.outputs(s, now, params, on_oxygen=np.zeros(3), alert=np.ones(3))
    risk.update_drift(s, out.estimate, now)
    full = risk.features(out, risk.fast_deviation(s, now, params), risk.baseline(s), s["slow"])
    live = risk.live_features(s, out, now, params)
    assert live.shape == (3, len(risk.LIVE_FEATURES))
    for j, name in enumerate(risk.LIVE_FEATURES[:-1]):
        np.testing.assert_array_equal(live[:, j], full[:, risk.FEATURES.index(name)])
    assert not any(n.endswith(("_sd", "_never_observed")) for n in risk.LIVE_FEATURES)
    np.testing.assert_allclose(live[:, -1], 0.0)  # monitored since this very estimate


def test_an_older_twin_record_is_read_and_its_baselines_begin_empty():
    """A site's changelog outlives an upgrade: version-4 records (before the baselines) are
    brought up to date instead of refused."""
    s, params = _twins()
    v4 = np.dtype(bank._V4_FIELDS)
    rec = np.zeros(3, v4)
    for f in v4.names:
        rec[f] = s[f]
    rec["version"] = 4
    back = bank.from_bytes([r.tobytes() for r in rec])
    # versions <= 5 held (level, trend): the level is kept, the slow level starts at it
    np.testing.assert_array_equal(back["x"][..., 0], s["x"][..., 0])
    np.testing.assert_array_equal(back["x"][..., 1], s["x"][..., 0])
    np.testing.assert_array_equal(back["P"][..., 0], s["P"][..., 0])
    assert (back["P"][..., 2] > back["P"][..., 0]).all()
    assert (back["version"] == bank.STATE_VERSION).all()
    assert np.isnan(back["slow"]).all() and (back["base_n"] == 0).all()
    # versions 5 and 6 have the same size: the version byte alone says how to read them
    old = np.zeros(3, bank._V6_DTYPE)
    for f in bank._V6_DTYPE.names:
        old[f] = s[f]
    v5 = [b"\x05" + r.tobytes()[1:] for r in old]
    v6 = [b"\x06" + r.tobytes()[1:] for r in old]
    back5 = bank.from_bytes([*v5, *v6, *bank.to_bytes(s)])
    np.testing.assert_array_equal(back5["x"][:3, :, 1], s["x"][..., 0])
    np.testing.assert_array_equal(back5["x"][3:6], s["x"])  # v6 had the slow level
    np.testing.assert_array_equal(back5["x"][6:], s["x"])
    np.testing.assert_array_equal(back5["slow"][:3], s["slow"])  # v5 had the baselines
    # versions before 7 had no drift trend: it starts at the next reading
    assert np.isnan(back5["trend_t"][:6]).all()
    np.testing.assert_array_equal(back5["trend_t"][6:], s["trend_t"])
    with pytest.raises(ValueError, match="version"):
        bank.from_bytes([b"\x09" + bytes(bank.STATE_BYTES - 1)])


def test_trajectory_features_shapes_and_nan_handling():
    N, H = 2, 5
    est = np.full((N, H, C), np.nan)
    est[0, :, INDEX["hr"]] = [70, 80, 90, 100, 110]
    est[1, 2:, INDEX["hr"]] = 60
    sd = np.ones((N, H, C))
    f = risk.trajectory_features(est, sd, np.zeros((N, H), int), np.full((N, H), np.nan),
                                 np.full((N, H), 70.0))
    assert f.shape == (N, len(risk.TRAJECTORY_FEATURES))
    col = {n: i for i, n in enumerate(risk.TRAJECTORY_FEATURES)}
    assert f[0, col["hr_level_mean"]] == 90 and f[0, col["hr_level_max"]] == 110
    assert f[1, col["hr_level_min"]] == 60 and f[1, col["hr_level_mean"]] == 60
    assert np.isnan(f[:, col["shock_index_max"]]).all()
    assert np.isnan(f[:, col["temp_level_mean"]]).all()
