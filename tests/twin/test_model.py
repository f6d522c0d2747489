import numpy as np
import pytest

from twin.model import ModelParams, odc, odc_inverse, transition


@pytest.mark.parametrize("pao2,spo2", [(26.8, 50.0), (40.0, 75.0), (60.0, 90.6), (100.0, 97.7)])
def test_severinghaus_curve_at_textbook_points(pao2, spo2):
    # Severinghaus 1979: P50 = 26.8 mmHg; venous 40 mmHg ~ 75 %; 60 mmHg ~ 90 %
    assert odc(np.array(pao2)) == pytest.approx(spo2, abs=0.3)


def test_inverse_curve_round_trips_and_is_monotone():
    p = np.linspace(10, 300, 200)
    np.testing.assert_allclose(odc_inverse(odc(p)), p, rtol=2e-3)
    assert (np.diff(odc(p)) > 0).all()


def test_transition_integrates_the_damped_trend_consistently():
    params = ModelParams()
    a1, phi1, _ = transition(np.array([10.0]), params)
    a2, phi2, _ = transition(np.array([20.0]), params)
    # two steps of 10 minutes move the level like one step of 20
    two_steps = a1 + phi1 * a1
    np.testing.assert_allclose(two_steps, a2, rtol=1e-12)
    np.testing.assert_allclose(phi1 * phi1, phi2, rtol=1e-12)
