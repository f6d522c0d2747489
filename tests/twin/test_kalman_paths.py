"""The shared-matrix fast paths of `twin.kalman` (Kronecker predict, patient-last update, BLAS calls
cut into one-thread blocks) against filterpy and against the general path."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.twin.test_kalman import _spd, assert_equals_filterpy
from twin import kalman


def _shared_case(seed: int, N: int, n: int, m: int, per_patient_noise: bool):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, n))
    P = np.stack([_spd(rng, n) for _ in range(N)])
    F = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    H = rng.standard_normal((m, n))
    if per_patient_noise:
        Q = np.stack([_spd(rng, n, 0.01) for _ in range(N)])
        R = np.stack([_spd(rng, m, 0.5) for _ in range(N)])
    else:
        Q, R = _spd(rng, n, 0.01), _spd(rng, m, 0.5)
    z = rng.standard_normal((N, m))
    mask = rng.random((N, m)) < 0.6
    mask[0] = False  # a patient with nothing observed
    if N > 1:
        mask[1] = True  # and one with everything
    return x, P, F, Q, H, R, z, mask


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 6), n=st.integers(1, 9),
       m=st.integers(1, 4), per_patient_noise=st.booleans(), masked=st.booleans())
def test_shared_model_equals_filterpy_per_patient(seed, N, n, m, per_patient_noise, masked):
    """n up to 9 and m up to 4 cover both sides of every fast path's size limit."""
    x, P, F, Q, H, R, z, mask = _shared_case(seed, N, n, m, per_patient_noise)
    if not masked:
        mask = None
    xp, Pp = kalman.predict(x, P, F, Q)
    xu, Pu, nis = kalman.update(xp, Pp, z, H, R, mask)
    assert_equals_filterpy(x, P, F, Q, H, R, z, mask, (xp, Pp), (xu, Pu, nis))


@pytest.mark.parametrize(("n", "m"), [(4, 2), (3, 3), (9, 2), (4, 4)])
def test_returned_covariances_are_exactly_symmetric(n, m):
    x, P, F, Q, H, R, z, mask = _shared_case(5, 7, n, m, per_patient_noise=False)
    P = P + 1e-9 * np.random.default_rng(1).standard_normal(P.shape)  # not exactly symmetric
    Q = Q + 1e-9 * np.triu(np.ones((n, n)))
    xp, Pp = kalman.predict(x, P, F, Q)
    np.testing.assert_array_equal(Pp, np.swapaxes(Pp, 1, 2))
    for mk in (None, mask):
        _, Pu, _ = kalman.update(xp, Pp, z, H, R, mk)
        np.testing.assert_array_equal(Pu, np.swapaxes(Pu, 1, 2))


def test_blocks_of_patients_give_the_same_answer(monkeypatch):
    """BLAS calls cut into one-thread blocks (and the update's patient blocks), with N not a
    multiple of the block, equal one call over all patients."""
    x, P, F, Q, H, R, z, mask = _shared_case(11, 37, 4, 2, per_patient_noise=True)
    whole = kalman.update(*kalman.predict(x, P, F, Q), z, H, R, mask)
    monkeypatch.setattr(kalman, "_BLAS_ONE_THREAD", 80)  # 1 to 10 patients a BLAS call
    blocks = kalman.update(*kalman.predict(x, P, F, Q), z, H, R, mask)
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_fast_paths_equal_the_general_ones(monkeypatch):
    x, P, F, Q, H, R, z, mask = _shared_case(2, 9, 5, 3, per_patient_noise=False)
    fast = [*kalman.predict(x, P, F, Q), *kalman.update(x, P, z, H, R, mask)]
    monkeypatch.setattr(kalman, "_KRONECKER_MAX_STATES", 0)
    monkeypatch.setattr(kalman, "_LOOP_MAX_STATES", 0)
    general = [*kalman.predict(x, P, F, Q), *kalman.update(x, P, z, H, R, mask)]
    for a, b in zip(fast, general, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_any_memory_layout_and_integer_means():
    x, P, F, Q, H, R, z, mask = _shared_case(4, 6, 4, 2, per_patient_noise=False)
    x = np.round(3 * x).astype(int)
    ref = kalman.update(*kalman.predict(x.astype(float), P, F, Q), z, H, R, mask)
    # patient-last storage (views whose patient axis is the contiguous one), Fortran order
    P_last = np.ascontiguousarray(P.transpose(1, 2, 0)).transpose(2, 0, 1)
    got = kalman.update(*kalman.predict(np.asfortranarray(x), P_last, F, Q),
                        np.asfortranarray(z), H, R, np.asfortranarray(mask))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(kalman.update(x.astype(float), P, z, H, R, mask),
                    kalman.update(x, P, z, H, R, mask), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_inverse_keeps_a_patient_last_layout(m):
    rng = np.random.default_rng(m)
    S = np.stack([_spd(rng, m) for _ in range(8)])
    S_last = np.ascontiguousarray(S.transpose(1, 2, 0)).transpose(2, 0, 1)
    inv = kalman.inverse(S_last)
    assert inv.transpose(1, 2, 0).flags.c_contiguous
    np.testing.assert_allclose(inv, np.linalg.inv(S), rtol=1e-10)
    np.testing.assert_allclose(kalman.inverse(S), np.linalg.inv(S), rtol=1e-10)
