import numpy as np
import pytest
from scipy.integrate import quad_vec
from scipy.linalg import expm

from twin.model import ModelParams, odc, odc_inverse, transition


@pytest.mark.parametrize("pao2,spo2", [(26.8, 50.0), (40.0, 75.0), (60.0, 90.6), (100.0, 97.7)])
def test_severinghaus_curve_at_textbook_points(pao2, spo2):
    # Severinghaus 1979: P50 = 26.8 mmHg; venous 40 mmHg ~ 75 %; 60 mmHg ~ 90 %
    assert odc(np.array(pao2)) == pytest.approx(spo2, abs=0.3)


def test_inverse_curve_round_trips_and_is_monotone():
    p = np.linspace(10, 300, 200)
    np.testing.assert_allclose(odc_inverse(odc(p)), p, rtol=2e-3)
    assert (np.diff(odc(p)) > 0).all()


def _matrices(F: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Fm = np.zeros(F.shape[:-1] + (2, 2))
    Fm[..., 0, 0], Fm[..., 0, 1], Fm[..., 1, 1] = F[..., 0], F[..., 1], F[..., 2]
    Qm = np.stack([np.stack([q[..., 0], q[..., 1]], -1), np.stack([q[..., 1], q[..., 2]], -1)],
                  -2)
    return Fm, Qm


@pytest.mark.parametrize("h", [1e-4, 1.0 / 60.0, 1.0, 10.0, 60.0, 240.0, 1440.0])
def test_transition_is_the_exact_integral_of_the_diffusion(h):
    # Q = int_0^h e^{As} G e^{A's} ds, by quadrature, against the closed form; at every channel's
    # timescale, from a 1 Hz step (~1e-2 min) to a day
    params = ModelParams()
    F, q = transition(np.array([h]), params)
    Fm, Qm = _matrices(F[0], q[0])
    for c in range(len(params.fast_reversion)):
        k = params.fast_reversion[c]
        A = np.array([[-k, k], [0.0, 0.0]])
        G = np.diag([params.level_diffusion[c] ** 2, params.slow_diffusion[c] ** 2])
        Q, _ = quad_vec(lambda s, A=A, G=G: expm(A * s) @ G @ expm(A * s).T, 0.0, h,
                        epsrel=1e-11)
        np.testing.assert_allclose(Fm[c], expm(A * h), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(Qm[c], Q, rtol=1e-7)


def test_transition_composes_so_the_sampling_rate_does_not_change_the_answer():
    # one 4 h step equals 14,400 one-second steps: a forecast does not depend on how often
    # readings came (the old first-order noise gave a heart-rate SD of 46.5 in one step and
    # 56.5 in minute steps)
    params = ModelParams()
    F1, q1 = transition(np.array([240.0]), params)
    Fs, qs = transition(np.array([1.0 / 60.0]), params)
    Fm, Qm = _matrices(Fs[0], qs[0])
    P = np.zeros_like(Qm)
    M = np.broadcast_to(np.eye(2), Qm.shape).copy()
    for _ in range(14_400):
        P = Fm @ P @ np.swapaxes(Fm, -1, -2) + Qm
        M = Fm @ M
    F1m, Q1m = _matrices(F1[0], q1[0])
    np.testing.assert_allclose(M, F1m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(P, Q1m, rtol=1e-8)


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="fast_reversion"):
        ModelParams(fast_reversion=np.zeros(6))
