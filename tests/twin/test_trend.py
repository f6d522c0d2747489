import numpy as np
import pytest

from twin import bank, news2, trend
from twin.channels import INDEX, C
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
    dev = bank.device_hash([f"d{i}" for i in range(K)])
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
    slope, slope_sd, mean, sd = trend.forecast(s["trend_x"], s["trend_P"], s["trend_t"], now,
                                               60.0, PARAMS)
    z = (slope[:, HR] - np.r_[np.full(20, 20.0), np.zeros(20)]) / slope_sd[:, HR]
    assert (np.abs(z) < 3.0).all(), z
    # on average the climb is read at its rate, and the forecast carries it on for the hour
    assert abs(slope[:20, HR].mean() - 20.0) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    assert abs(slope[20:, HR].mean()) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    # (an hour ahead the slope's uncertainty, per hour, is most of the forecast's)
    assert mean[:20, HR].mean() > 80.0 + 140.0 * 20.0 / 60.0
    assert abs(mean[20:, HR].mean() - 80.0) < 3.0 * slope_sd[0, HR] / np.sqrt(20)
    # channels never seen have no trend
    assert np.isnan(slope[:, RR]).all() and np.isnan(mean[:, RR]).all()


def test_readings_feed_the_trend_at_most_once_per_interval():
    """At 5 s a reading for 30 minutes, the trend takes one per `trend_interval_min`: its last
    reading's time steps by the interval, not by the reading rate."""
    s = _run(np.full((1, 30 * 12), 80.0))
    t_last = s["trend_t"][0, HR] - T0
    assert t_last % (PARAMS.trend_interval_min * 60.0) == 0.0
    assert t_last >= 30 * 60.0 - PARAMS.trend_interval_min * 60.0


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
