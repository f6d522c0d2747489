import numpy as np
from filterpy.kalman import KalmanFilter
from hypothesis import given, settings
from hypothesis import strategies as st

from twin import kalman


def _spd(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    A = rng.standard_normal((n, n))
    return scale * (A @ A.T + n * np.eye(n))


def _case(seed: int, N: int, n: int, m: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, n))
    P = np.stack([_spd(rng, n) for _ in range(N)])
    F = np.eye(n) + 0.1 * rng.standard_normal((N, n, n))
    Q = np.stack([_spd(rng, n, 0.01) for _ in range(N)])
    H = rng.standard_normal((m, n))
    R = _spd(rng, m, 0.5)
    z = rng.standard_normal((N, m))
    mask = rng.random((N, m)) < 0.6
    mask[0] = False  # always include a patient with nothing observed
    return x, P, F, Q, H, R, z, mask


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 6), n=st.integers(1, 5),
       m=st.integers(1, 4))
def test_batched_predict_update_equals_filterpy_per_patient(seed, N, n, m):
    x, P, F, Q, H, R, z, mask = _case(seed, N, n, m)
    xp, Pp = kalman.predict(x, P, F, Q)
    xu, Pu, nis = kalman.update(xp, Pp, z, H, R, mask)
    assert_equals_filterpy(x, P, F, Q, H, R, z, mask, (xp, Pp), (xu, Pu, nis))


def assert_equals_filterpy(x, P, F, Q, H, R, z, mask, predicted, updated) -> None:
    """`kalman.predict`'s and `update`'s outputs equal filterpy's, one patient at a time. F, Q, R:
    shared `(n, n)`/`(m, m)` or per patient `(N, ...)`; mask None: every channel observed."""
    xp, Pp = predicted
    xu, Pu, nis = updated
    N, n = x.shape
    m = z.shape[1]
    assert xu.shape == (N, n) and Pu.shape == (N, n, n) and nis.shape == (N,)
    for i in range(N):
        obs = np.arange(m) if mask is None else np.nonzero(mask[i])[0]
        kf = KalmanFilter(dim_x=n, dim_z=max(len(obs), 1))
        kf.x, kf.P = x[i].copy(), P[i].copy()
        kf.F = F[i] if F.ndim == 3 else F
        kf.Q = Q[i] if Q.ndim == 3 else Q
        kf.predict()
        np.testing.assert_allclose(xp[i], kf.x, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(Pp[i], kf.P, rtol=1e-8, atol=1e-10)
        if len(obs) == 0:
            # no observed channel: returned unchanged, nis 0
            np.testing.assert_array_equal(xu[i], xp[i])
            np.testing.assert_array_equal(Pu[i], Pp[i])
            assert nis[i] == 0.0
            continue
        kf.H = H[obs]
        kf.R = (R[i] if R.ndim == 3 else R)[np.ix_(obs, obs)]
        kf.update(z[i, obs])
        np.testing.assert_allclose(xu[i], kf.x, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(Pu[i], kf.P, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(nis[i], kf.y @ np.linalg.solve(kf.S, kf.y), rtol=1e-8)


def test_shared_matrices_broadcast_like_per_patient_ones():
    x, P, F, Q, H, R, z, mask = _case(7, 5, 4, 3)
    Fs, Qs = F[1], Q[1]
    a = kalman.predict(x, P, Fs, Qs)
    b = kalman.predict(x, P, np.broadcast_to(Fs, F.shape), np.broadcast_to(Qs, Q.shape))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
    Hn = np.broadcast_to(H, (5, *H.shape))
    Rn = np.broadcast_to(R, (5, *R.shape))
    u1 = kalman.update(x, P, z, H, R, mask)
    u2 = kalman.update(x, P, z, Hn, Rn, mask)
    for p, q in zip(u1, u2, strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-12)


def test_masked_values_may_be_nan_and_are_ignored():
    x, P, F, Q, H, R, z, mask = _case(3, 4, 3, 3)
    z_nan = np.where(mask, z, np.nan)
    a = kalman.update(x, P, z, H, R, mask)
    b = kalman.update(x, P, z_nan, H, R, mask)
    for p, q in zip(a, b, strict=True):
        assert np.isfinite(q).all()
        np.testing.assert_array_equal(p, q)


def test_closed_form_pairs_equal_the_general_kernels():
    rng = np.random.default_rng(9)
    N, C = 50, 6
    x = rng.standard_normal((N, C, 2))
    A = rng.standard_normal((N, C, 2, 2))
    P = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(2)
    p = np.stack([P[..., 0, 0], P[..., 0, 1], P[..., 1, 1]], -1)
    f = np.stack([rng.uniform(0, 1, (N, C)), rng.uniform(-2, 5, (N, C)),
                  rng.uniform(0.5, 1.5, (N, C))], -1)
    B = rng.standard_normal((N, C, 2, 2))
    Qf = B @ np.swapaxes(B, -1, -2)  # a full (correlated) process noise
    q = np.stack([Qf[..., 0, 0], Qf[..., 0, 1], Qf[..., 1, 1]], -1)
    z, r = rng.standard_normal((N, C)), rng.uniform(0.1, 2, (N, C))
    xc, pc = kalman.predict_pair(x, p, f, q)
    xc, pc, nis_c = kalman.update_level(xc, pc, z, r)
    F = np.zeros((N * C, 2, 2))
    F[:, 0, 0], F[:, 0, 1], F[:, 1, 1] = f[..., 0].ravel(), f[..., 1].ravel(), f[..., 2].ravel()
    xg, Pg = kalman.predict(x.reshape(-1, 2), P.reshape(-1, 2, 2), F, Qf.reshape(-1, 2, 2))
    xg, Pg, nis_g = kalman.update(xg, Pg, z.reshape(-1, 1), np.array([[1.0, 0.0]]),
                                  r.reshape(-1, 1, 1))
    np.testing.assert_allclose(xc.reshape(-1, 2), xg, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pc[..., 0].ravel(), Pg[:, 0, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pc[..., 1].ravel(), Pg[:, 0, 1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pc[..., 2].ravel(), Pg[:, 1, 1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nis_c.ravel(), nis_g, rtol=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 6), m=st.integers(1, 5))
def test_closed_form_inverse_equals_lapack(seed, N, m):
    rng = np.random.default_rng(seed)
    S = np.stack([_spd(rng, m, scale=10.0 ** rng.uniform(-3, 3)) for _ in range(N)])
    np.testing.assert_allclose(kalman.inverse(S) @ S, np.broadcast_to(np.eye(m), S.shape),
                               atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 6), n=st.integers(1, 5),
       m=st.integers(1, 4))
def test_every_channel_observed_takes_the_shared_matrix_path_to_the_same_answer(seed, N, n, m):
    """No mask (shared H and R stay shared) and a per-patient H with an all-True mask agree."""
    x, P, F, Q, H, R, z, _ = _case(seed, N, n, m)
    fast = kalman.update(x, P, z, H, R)
    slow = kalman.update(x, P, z, np.broadcast_to(H, (N, m, n)).copy(),
                         np.broadcast_to(R, (N, m, m)).copy(), np.ones((N, m), bool))
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # a shared F in predict is the same as the same F per patient
    Fs = F[0]
    np.testing.assert_allclose(kalman.predict(x, P, Fs, Q)[1],
                               kalman.predict(x, P, np.broadcast_to(Fs, (N, n, n)), Q)[1],
                               rtol=1e-12, atol=1e-12)
