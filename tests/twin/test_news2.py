"""NEWS2 against the Royal College of Physicians' chart (2017), boundary by boundary."""

import numpy as np
import pytest

from twin import news2

NORMAL = dict(rr=16.0, spo2=98.0, temp=37.0, sbp=120.0, hr=70.0, on_oxygen=0.0, alert=1.0)


def score(**kw):
    args = {k: np.array([float(v)]) for k, v in {**NORMAL, **kw}.items() if k != "spo2_scale"}
    total, comp, complete = news2.news2(**args, spo2_scale=kw.get("spo2_scale", 1))
    return int(total[0]), comp[0], bool(complete[0])


@pytest.mark.parametrize("rr,expected", [(5, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0),
                                         (21, 2), (24, 2), (25, 3), (40, 3)])
def test_respiration_rate(rr, expected):
    assert score(rr=rr)[1][0] == expected


@pytest.mark.parametrize("spo2,expected", [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1),
                                           (96, 0), (100, 0)])
def test_spo2_scale_1(spo2, expected):
    assert score(spo2=spo2)[1][1] == expected


@pytest.mark.parametrize("spo2,oxygen,expected", [
    (83, 0, 3), (84, 0, 2), (85, 0, 2), (86, 0, 1), (87, 0, 1), (88, 0, 0), (92, 0, 0),
    (93, 0, 0), (99, 0, 0),  # >= 93 on air scores 0 on scale 2
    (88, 1, 0), (92, 1, 0), (93, 1, 1), (94, 1, 1), (95, 1, 2), (96, 1, 2), (97, 1, 3),
    (100, 1, 3), (83, 1, 3),
])
def test_spo2_scale_2(spo2, oxygen, expected):
    assert score(spo2=spo2, on_oxygen=oxygen, spo2_scale=2)[1][1] == expected


def test_oxygen_scores_two_and_consciousness_three():
    assert score(on_oxygen=1)[1][2] == 2
    assert score(alert=0)[1][5] == 3
    assert score()[0] == 0


@pytest.mark.parametrize("sbp,expected", [(70, 3), (90, 3), (91, 2), (100, 2), (101, 1),
                                          (110, 1), (111, 0), (219, 0), (220, 3)])
def test_systolic(sbp, expected):
    assert score(sbp=sbp)[1][3] == expected


@pytest.mark.parametrize("hr,expected", [(35, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0),
                                         (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)])
def test_pulse(hr, expected):
    assert score(hr=hr)[1][4] == expected


@pytest.mark.parametrize("temp,expected", [(34.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0),
                                           (38.0, 0), (38.1, 1), (39.0, 1), (39.1, 2), (41, 2),
                                           (38.05, 1), (35.04, 3)])
def test_temperature_at_tenths(temp, expected):
    assert score(temp=temp)[1][6] == expected


def test_values_are_scored_at_chart_resolution():
    # 20.4 breaths/min reads as 20 (score 0); 20.5 as 21 (score 2).
    assert score(rr=20.4)[1][0] == 0
    assert score(rr=20.5)[1][0] == 2
    assert score(spo2=95.6)[1][1] == 0


def test_nan_parameter_scores_zero_and_marks_incomplete():
    total, comp, complete = score(hr=np.nan, sbp=85)
    assert comp[4] == 0 and comp[3] == 3 and total == 3 and not complete
    assert score()[2]
    assert not score(alert=np.nan)[2]


def test_vectorised_over_patients_with_shapes():
    N = 5
    rr = np.array([16, 26, 16, 16, np.nan])
    ones = np.ones(N)
    total, comp, complete = news2.news2(rr, 98 * ones, 37 * ones, 120 * ones, 70 * ones,
                                        0 * ones, ones, spo2_scale=np.array([1, 1, 2, 1, 1]))
    assert total.shape == (N,) and comp.shape == (N, 7) and complete.shape == (N,)
    assert comp.dtype.kind == "i"
    np.testing.assert_array_equal(total, [0, 3, 0, 0, 0])
    np.testing.assert_array_equal(complete, [True, True, True, True, False])


def test_aggregate_example_and_bands():
    # RR 22 (2) + SpO2 93 (2) + SBP 105 (1) + HR 115 (2) + temp 38.5 (1) = 8
    total, comp, _ = score(rr=22, spo2=93, sbp=105, hr=115, temp=38.5)
    assert total == 8
    bands = news2.band(np.array([0, 4, 3, 5, 6, 7]),
                       np.array([[0] * 7, [1, 1, 1, 1, 0, 0, 0], [3, 0, 0, 0, 0, 0, 0],
                                 [2, 2, 1, 0, 0, 0, 0], [2, 2, 2, 0, 0, 0, 0],
                                 [3, 2, 2, 0, 0, 0, 0]]))
    np.testing.assert_array_equal(bands, [news2.BAND_LOW, news2.BAND_LOW, news2.BAND_LOW_MEDIUM,
                                          news2.BAND_MEDIUM, news2.BAND_MEDIUM, news2.BAND_HIGH])


@pytest.mark.parametrize("channel", sorted(news2.CHART))
def test_every_score_of_a_vital_sign_comes_from_the_one_chart(channel):
    """The continuous scoring (forecasts, minutes to the next band, red limits) and the chart's
    scoring of readings agree on every value the chart can show."""
    p = news2.CHART[channel]
    lo, hi = p.edges[0] - 10 * p.resolution, p.edges[-1] + 10 * p.resolution
    values = np.round(np.arange(lo, hi, p.resolution), 1)
    normal = {"rr": 15.0, "spo2": 97.0, "temp": 37.0, "sbp": 120.0, "hr": 70.0}
    args = {ch: np.full(values.shape, v) for ch, v in normal.items()}
    args[channel] = values
    _, comps, _ = news2.news2(**args, on_oxygen=np.zeros(values.shape),
                              alert=np.ones(values.shape))
    assert comps[:, news2.COLUMN[channel]].tolist() == \
        news2.score_values(channel, values).tolist()
    low, high = news2.red_limits(np.array([1]))
    red = comps[:, news2.COLUMN[channel]] == 3
    from twin.channels import INDEX

    lim_lo, lim_hi = low[0, INDEX[channel]], high[0, INDEX[channel]]
    beyond = (values < lim_lo) | (values >= lim_hi)  # NaN limits compare False
    assert red.tolist() == beyond.tolist()
