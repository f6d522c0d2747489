import numpy as np
from filterpy.kalman import MerweScaledSigmaPoints, UnscentedKalmanFilter
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.twin.test_kalman import _case
from twin import kalman, ukf


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 6), n=st.integers(1, 5),
       m=st.integers(1, 4))
def test_linear_ukf_reproduces_the_kalman_filter(seed, N, n, m):
    x, P, F, Q, H, R, z, mask = _case(seed, N, n, m)
    kx, kP = kalman.predict(x, P, F, Q)
    ux, uP = ukf.predict(x, P, lambda s: np.einsum("nij,nsj->nsi", F, s), Q)
    np.testing.assert_allclose(ux, kx, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(uP, kP, rtol=1e-8, atol=1e-9)
    kx2, kP2, knis = kalman.update(kx, kP, z, H, R, mask)
    ux2, uP2, unis = ukf.update(kx, kP, z, lambda s: s @ H.T, R, mask)
    np.testing.assert_allclose(ux2, kx2, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(uP2, kP2, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(unis, knis, rtol=1e-8, atol=1e-9)


def _nonlinear_case(seed, N=7, n=3, m=2):
    x, P, F, Q, H, R, z, mask = _case(seed, N, n, m)

    def fx(s):
        return s + 0.1 * np.sin(s)

    def hx(s):
        return np.tanh(s @ H.T) + 0.05 * (s @ H.T) ** 2

    return x, P, Q, R, z, mask, fx, hx


def test_batched_equals_each_patient_alone_with_nonlinear_models():
    x, P, Q, R, z, mask, fx, hx = _nonlinear_case(11)
    bx, bP = ukf.predict(x, P, fx, Q)
    bx, bP, bnis = ukf.update(bx, bP, z, hx, R, mask)
    assert bx.shape == x.shape and bP.shape == P.shape and bnis.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        sx, sP = ukf.predict(x[i:i + 1], P[i:i + 1], fx, Q[i:i + 1])
        sx, sP, snis = ukf.update(sx, sP, z[i:i + 1], hx, R, mask[i:i + 1])
        np.testing.assert_allclose(bx[i], sx[0], rtol=1e-10)
        np.testing.assert_allclose(bP[i], sP[0], rtol=1e-10)
        np.testing.assert_allclose(bnis[i], snis[0], rtol=1e-10)


def test_matches_filterpy_ukf_on_a_nonlinear_model_when_all_observed():
    x, P, Q, R, z, _, fx, hx = _nonlinear_case(5, N=3)
    n = x.shape[1]
    for i in range(x.shape[0]):
        pts = MerweScaledSigmaPoints(n, alpha=1.0, beta=2.0, kappa=0.0)
        f = UnscentedKalmanFilter(dim_x=n, dim_z=z.shape[1], dt=1.0, points=pts,
                                  fx=lambda s, dt: fx(s[None, None])[0, 0],
                                  hx=lambda s: hx(s[None, None])[0, 0])
        f.x, f.P, f.Q, f.R = x[i].copy(), P[i].copy(), Q[i], R
        f.predict()
        bx, bP = ukf.predict(x[i:i + 1], P[i:i + 1], fx, Q[i:i + 1])
        np.testing.assert_allclose(bx[0], f.x, rtol=1e-8)
        np.testing.assert_allclose(bP[0], f.P, rtol=1e-8, atol=1e-10)
        # filterpy reuses its predicted sigma points; redraw them from (x, P) for the update
        f.sigmas_f = pts.sigma_points(f.x, f.P)
        f.update(z[i])
        ux, uP, _ = ukf.update(bx, bP, z[i:i + 1], hx, R)
        np.testing.assert_allclose(ux[0], f.x, rtol=1e-8)
        np.testing.assert_allclose(uP[0], f.P, rtol=1e-8, atol=1e-10)
