import numpy as np
import pytest

from twin import bank, news2, trend
from twin.channels import INDEX, C
from twin.devices import device_hash
from twin.model import ModelParams

PARAMS = ModelParams()
T0 = 1_800_000_000.0
HR, RR = INDEX["hr"], INDEX["rr"]


def test_transition_steps_compose():
    a, b = np.array([[3.0] * C]), np.array([[7.5] * C])
    x = np.array([[[80.0, 0.2]] * C])
    p = np.array([[[4.0, 0.1, 0.01]] * C])
    once = bank.kalman.predict_pair(x, p, *trend.transition(a + b, PARAMS))
    x1, p1 = bank.kalman.predict_pair(x, p, *trend.transition(a, PARAMS))
    twice = bank.kalman.predict_pair(x1, p1, *trend.transition(b, PARAMS))
    np.testing.assert_allclose(once[0], twice[0], rtol=1e-12)
    np.testing.assert_allclose(once[1], twice[1], rtol=1e-12)


def _run(values: np.ndarray, every_s: float = 5.0, seed: int = 0) -> bank.State:
    """Feed `values (K, T)` heart rates, one reading every `every_s`, measurement noise as the
    model's, to K twins."""
    K, T = values.shape
    rng = np.random.default_rng(seed)
    s = bank.new_states(K, PARAMS)
    dev = device_hash([f"d{i}" for i in range(K)])
    for j in range(T):
        z = np.full((K, C), np.nan)
        z[:, HR] = values[:, j] + rng.normal(0.0, PARAMS.measurement_sd[HR], K)
        bank.step(s, bank.Readings(row=np.arange(K), t=np.full(K, T0 + j * every_s), z=z,
                                   quality=np.ones(K), battery=np.full(K, 0.9), device=dev,
                                   seq=np.full(K, j + 1)), PARAMS)
    return s


def test_a_steady_climb_is_seen_and_a_steady_patient_shows_none():
    """Heart rate climbing 20 /min an hour for 90 minutes: the trend's slope is within 3 SD of
    it; steady at 80: within 3 SD of 0, in each of 20 patients."""
    minutes = np.arange(0, 90 * 60, 5.0) / 60.0
    climb = np.tile(80.0 + minutes * 20.0 / 60.0, (20, 1))
    steady = np.full_like(climb, 80.0)
    s = _run(np.vstack([climb, steady]))
    now = np.full(40, T0 + minutes[-1] * 60.0)
    slope, slope_sd, mean, sd, steady = trend.forecast(s, now, 60.0, PARAMS)
    z = (slope[:, HR] - np.r_[np.full(20, 20.0), np.zeros(20)]) / slope_sd[:, HR]
    assert (np.abs(z) < 3.0).all(), z
    # on average the climb is read at its rate, and the forecast carries it on for the hour
    assert abs(slope[:20, HR].mean() - 20.0) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    assert abs(slope[20:, HR].mean()) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    # (an hour ahead the slope's uncertainty, per hour, is most of the forecast's)
    assert mean[:20, HR].mean() > 80.0 + 140.0 * 20.0 / 60.0
    assert abs(mean[20:, HR].mean() - 80.0) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    # held where it is, the climb's level is now's, below the forecast
    assert (steady[:20, HR] < mean[:20, HR]).all() and (steady[:20, HR] > 100.0).all()
    # channels never seen have no trend
    assert np.isnan(slope[:, RR]).all() and np.isnan(mean[:, RR]).all()


def test_the_slope_is_no_surer_for_more_readings_of_the_same_fluctuation():
    """Readings every second or every 5 s of the same steady patient for an hour: the fast
    fluctuation they share is averaged per block, not counted per reading, so the slope's SD is
    within 10 % (it would be sqrt(5) smaller if each reading counted as independent)."""
    sds = []
    for every in (1.0, 5.0):
        s = _run(np.full((1, int(3600 / every)), 80.0), every_s=every)
        slope, slope_sd, _, _, _ = trend.forecast(s, np.array([T0 + 3600.0]), 60.0, PARAMS)
        sds.append(slope_sd[0, HR])
    assert abs(sds[0] / sds[1] - 1.0) < 0.1, sds


def test_hourly_readings_each_count_and_the_latest_is_in_the_forecast():
    """Charted once an hour (PhysioNet-like): every reading is a block of its own, and the
    forecast counts the newest one although its block is still open."""
    s = _run(np.array([[80.0, 90.0, 100.0, 110.0]]), every_s=3600.0)
    assert s["block_n"][0, HR] == 1 and s["trend_t"][0, HR] == T0 + 2 * 3600.0
    slope, _, mean, _, _ = trend.forecast(s, np.array([T0 + 3 * 3600.0]), 60.0, PARAMS)
    assert 5.0 < slope[0, HR] < 12.0 and mean[0, HR] > 110.0


def test_a_block_of_one_reading_has_the_reading_s_variance():
    s = {"block_n": np.ones((1, C), np.uint32), "block_sum": np.full((1, C), 80.0),
         "block_r": np.full((1, C), 9.0), "block_ts": np.zeros((1, C)),
         "block_t0": np.full((1, C), T0)}
    mean, at, var = trend._block(s, PARAMS)
    np.testing.assert_allclose(var[0], 9.0 + trend.noise_var(PARAMS))
    assert (mean == 80.0).all() and (at == T0).all()


def _mc_trigger(mean, sd, oxy, alert, scale, n=200_000, seed=1):
    rng = np.random.default_rng(seed)
    v = mean[None, :] + sd[None, :] * rng.standard_normal((n, len(mean)))
    ch = {c: np.where(np.isnan(mean[INDEX[c]]), np.nan, v[:, INDEX[c]]) for c in INDEX}
    total, comp, _ = news2.news2(ch["rr"], ch["spo2"], ch["temp"], ch["sbp"], ch["hr"],
                                 np.full(n, oxy), np.full(n, alert), scale)
    return float((((comp >= 3).any(axis=1)) | (total >= 5)).mean())


@pytest.mark.parametrize("case", [
    # (hr, rr, spo2, sbp, dbp, temp) means; sd; oxygen; alert; scale
    ((95.0, 22.0, 95.0, 115.0, 70.0, 37.5), 3.0, 0.0, 1.0, 1),
    ((115.0, 19.0, 93.0, 105.0, 65.0, 38.2), 4.0, 0.0, 1.0, 1),
    ((80.0, 16.0, 97.0, 125.0, 75.0, 37.0), 1.0, 0.0, 1.0, 1),
    ((80.0, 16.0, 90.0, 125.0, 75.0, 37.0), 1.5, 1.0, 1.0, 2),
    ((80.0, 24.0, np.nan, 125.0, 75.0, 37.0), 2.0, 1.0, 1.0, 1),
    ((80.0, 16.0, 97.0, 125.0, 75.0, 37.0), 1.0, 0.0, 0.0, 1),
])
def test_trigger_probability_is_the_chart_applied_to_the_forecast(case):
    """Exact under independence: equal to scoring random draws with `news2.news2`."""
    means, s, oxy, alert, scale = case
    mean = np.asarray(means, dtype=float)
    sd = np.full(C, s) * np.where(np.arange(C) == INDEX["temp"], 0.2, 1.0)
    got = trend.trigger_probability(mean[None], sd[None], np.array([oxy]), np.array([alert]),
                                    scale)[0]
    want = _mc_trigger(mean, sd, oxy, alert, scale)
    assert abs(got - want) < 4e-3, (got, want)


def test_a_mixed_ward_scores_each_patient_on_their_own_spo2_scale():
    """Scale 2 (and its oxygen column) only where set, in one call for the ward: each patient
    as if alone."""
    rng = np.random.default_rng(4)
    K = 30
    mean = np.column_stack([rng.normal(95, 15, K), rng.normal(20, 4, K), rng.normal(90, 4, K),
                            rng.normal(110, 15, K), rng.normal(70, 8, K), rng.normal(37.5, 1, K)])
    sd = np.abs(rng.normal(3, 1, (K, C)))
    scale = rng.choice([1, 2], K)
    oxy = rng.choice([0.0, 1.0], K)
    alert = np.ones(K)
    ward = trend.trigger_probability(mean, sd, oxy, alert, scale)
    alone = [trend.trigger_probability(mean[i:i + 1], sd[i:i + 1], oxy[i:i + 1], alert[i:i + 1],
                                       int(scale[i]))[0] for i in range(K)]
    np.testing.assert_allclose(ward, alone, rtol=0, atol=1e-15)
    assert (scale == 2).any() and (scale == 1).any()
