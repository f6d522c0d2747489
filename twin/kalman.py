"""Batched linear Kalman filter kernels: one call advances every patient of a bank.

Axis order is fixed: patient, then state. Shared model matrices broadcast against per-patient ones,
so `F` may be `(n, n)` for all patients or `(N, n, n)` when each patient has its own `dt`.
"""

from __future__ import annotations

import numpy as np

# Up to this many states a shared F is applied to all covariances at once as one product with the
# `(n^2, n^2)` Kronecker matrix: n^4 multiplications per patient but no temporary; beyond, the
# general path's n^3 wins (measured on N = 10,000: 4x faster at n = 6, even at n = 8).
_KRONECKER_MAX_STATES = 7
# Up to this many states and channels, `update` with a shared H loops over state and channel
# pairs, each step one operation over all patients; beyond, those loops cost more Python calls
# than numpy's batched small matmuls of the general path (measured: 2.5x faster at n = 8, m = 3,
# even at n = 10 or m = 4).
_LOOP_MAX_STATES = 8
_LOOP_MAX_CHANNELS = 3
# OpenBLAS multiplies on one thread up to this many multiply-adds per call (its default
# SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD), on two from twice that.
_BLAS_ONE_THREAD = 65536 * 4


def symmetrize(P: np.ndarray) -> np.ndarray:
    """Return `(P + P^T) / 2`. P: `(..., n, n)`."""
    out = np.add(P, np.swapaxes(P, -1, -2))
    out *= 0.5  # in place: one fresh array, not two (fresh memory is what costs most here)
    return out


def _right(B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """`B @ A`: B `(..., b)` times a shared A `(b, c)` is `(..., c)`; B `(N, a, b)` times
    per-patient A `(N, b, c)` is `(N, a, c)`.

    A shared A multiplies all rows of B (every patient's) in BLAS calls of at most
    `_BLAS_ONE_THREAD` multiply-adds, which OpenBLAS runs on the calling thread: for these thin
    products a second thread gains little on idle cores, and on busy shared ones OpenBLAS's
    threaded path measured up to 200 times slower than one thread."""
    if A.ndim != 2:
        return B @ A
    b, c = A.shape
    rows = B.reshape(-1, b)
    out = np.empty((rows.shape[0], c), dtype=np.result_type(B, A, 1.0))
    step = max(1, _BLAS_ONE_THREAD // (b * c))
    for s in range(0, rows.shape[0], step):
        np.matmul(rows[s:s + step], A, out=out[s:s + step])
    return out.reshape(*B.shape[:-1], c)


def inverse(S: np.ndarray) -> np.ndarray:
    """Inverses of N symmetric positive definite matrices, `(N, m, m)` -> `(N, m, m)`.

    In closed form (elementwise over patients) for m <= 3, where LAPACK's per-matrix call costs
    more than the arithmetic; `np.linalg.inv` beyond. The closed form returns S's memory layout,
    so a patient-last S (each `S[:, i, j]` contiguous, as `update` passes it) is inverted with
    contiguous operations only."""
    m = S.shape[-1]
    if m > 3:
        return np.linalg.inv(S)
    if m == 1:
        return 1.0 / S
    s = [[S[..., i, j] for j in range(m)] for i in range(m)]
    out = np.empty_like(S)  # order "K": S's layout
    if m == 2:
        r = 1.0 / (s[0][0] * s[1][1] - s[0][1] * s[1][0])
        np.multiply(s[1][1], r, out=out[..., 0, 0])
        np.multiply(s[0][0], r, out=out[..., 1, 1])
        np.negative(r, out=r)
        np.multiply(s[0][1], r, out=out[..., 0, 1])
        np.multiply(s[1][0], r, out=out[..., 1, 0])
        return out
    for i in range(3):
        for j in range(3):  # adjugate: transposed cofactors
            np.subtract(s[(j + 1) % 3][(i + 1) % 3] * s[(j + 2) % 3][(i + 2) % 3],
                        s[(j + 1) % 3][(i + 2) % 3] * s[(j + 2) % 3][(i + 1) % 3],
                        out=out[..., i, j])
    det = s[0][0] * out[..., 0, 0] + s[0][1] * out[..., 1, 0] + s[0][2] * out[..., 2, 0]
    out /= det[..., None, None]
    return out


def predict(
    x: np.ndarray, P: np.ndarray, F: np.ndarray, Q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate every patient's state one step.

    x: `(N, n)` means; P: `(N, n, n)` covariances; F: `(n, n)` or `(N, n, n)` transition;
    Q: `(n, n)` or `(N, n, n)` process noise. Returns `(x (N, n), P (N, n, n))`, P exactly
    symmetric.
    """
    N, n = x.shape
    if F.ndim == 2 and n <= _KRONECKER_MAX_STATES:
        x_new = _right(x, F.T)
        # vec(F P F^T) = (F kron F) vec(P), vec row-major: one BLAS product for all patients
        # that reads P as stored and writes the returned array, with no transposed copy and no
        # temporary
        P_new = _right(P.reshape(N, n * n), np.kron(F, F).T).reshape(N, n, n)
        P_new += Q
        # Exactly symmetric by copying one triangle onto the other (averaging would need a
        # pass over the transposed array)
        for i in range(n):
            for j in range(i + 1, n):
                P_new[:, j, i] = P_new[:, i, j]
        return x_new, P_new
    # x = F x
    x_new = _right(x, F.T) if F.ndim == 2 else np.einsum("nij,nj->ni", F, x)
    # P = F P F^T + Q
    P_new = _right(F @ P, np.swapaxes(F, -1, -2)) + Q
    return x_new, symmetrize(P_new)


def update(
    x: np.ndarray,
    P: np.ndarray,
    z: np.ndarray,
    H: np.ndarray,
    R: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correct every patient's state with the channels observed this step.

    x: `(N, n)`; P: `(N, n, n)`; z: `(N, m)` observations (values under a False mask are ignored,
    NaN allowed there); H: `(m, n)` or `(N, m, n)`; R: `(m, m)` or `(N, m, m)`;
    mask: `(N, m)` bool, False = not observed this step (default: all observed).

    A masked channel gets zero gain and adds nothing to `nis`; a patient with no observed channel
    is returned unchanged. Returns `(x (N, n), P (N, n, n), nis (N,))` where `nis` is the
    normalised innovation squared `y^T S^-1 y` over the observed channels (0 when none). P is
    returned exactly symmetric (an unchanged patient's as given).
    """
    N, n = x.shape
    m = z.shape[-1]
    if mask is not None and (mask := np.asarray(mask, dtype=bool)).all():
        mask = None  # every channel observed: no masking arithmetic, nobody to keep unchanged
    if H.ndim == 2 and n <= _LOOP_MAX_STATES and m <= _LOOP_MAX_CHANNELS:
        # Patient-last: T[i, a], S[a, b], ... are rows over the patients (T[i, a] is patient
        # p's (P H^T)[i, a] at [i, a, p]), so every step is one contiguous operation over all of
        # them, and the temporaries are few and small: fresh memory (page faults) costs more
        # than the arithmetic at this size. Patients go in blocks only so that each BLAS call
        # stays on one thread (see `_right`).
        dtype = np.result_type(x, P, z, H, R, 1.0)
        x_new = x.astype(dtype)  # a copy, updated in place
        P_new = np.empty((N, n, n), dtype)
        nis = np.zeros(N, dtype)
        block = max(1, _BLAS_ONE_THREAD // (m * n))
        for s in range(0, N, block):
            p = slice(s, s + block)
            Pb = P[p]
            T = np.matmul(H, Pb.transpose(1, 2, 0))  # P H^T, (n, m, B): BLAS reads P as stored
            # S = H P H^T + R, (m, m, B)
            S = np.matmul(H, T.transpose(1, 0, 2)).transpose(1, 0, 2)
            S += R[:, :, None] if R.ndim == 2 else R[p].transpose(1, 2, 0)
            y = z[p].T - H @ x[p].T  # (m, B)
            if mask is not None:
                obs = mask[p].T
                w = obs.astype(x.dtype)
                # A masked channel: zero column of P H^T (so of the gain), zero innovation, and
                # unit, uncorrelated noise in S, which keeps S invertible.
                T *= w
                S *= w[:, None] * w[None, :]
                for a in range(m):
                    S[a, a] += 1.0 - w[a]
                y = np.where(obs, y, 0.0)
            Si = inverse(S.transpose(2, 0, 1)).transpose(1, 2, 0)
            del S
            for a in range(m):  # nis = y^T S^-1 y
                v = Si[a, 0] * y[0]
                for b in range(1, m):
                    v += Si[a, b] * y[b]
                v *= y[a]
                nis[p] += v
            for i in range(n):
                # row i of the gain K = (P H^T) S^-1, dropped once its row of P is done
                k = []
                for b in range(m):
                    kb = T[i, 0] * Si[0, b]
                    for a in range(1, m):
                        kb += T[i, a] * Si[a, b]
                    k.append(kb)
                dx = k[0] * y[0]  # x = x + K y
                for b in range(1, m):
                    dx += k[b] * y[b]
                x_new[p, i] += dx
                # P = P - K S K^T = P - K (P H^T)^T with the optimal gain (what the Joseph
                # form reduces to), on one triangle and copied onto the other: exactly symmetric
                for j in range(i, n):
                    c = k[0] * T[j, 0]
                    for b in range(1, m):
                        c += k[b] * T[j, b]
                    np.subtract(Pb[:, i, j], c, out=P_new[p, i, j])
                    if j > i:
                        P_new[p, j, i] = P_new[p, i, j]
        if mask is None:
            return x_new, P_new, nis
        return keep_unobserved(mask, x, P, x_new, P_new, nis)

    # General path: patient-first batched products (per-patient H, or more states or channels
    # than the patient-last loops are worth).
    if mask is None:
        # every channel observed: the shared matrices stay shared (one BLAS call each)
        Hm, Rm, zm = H, R, z
    else:
        obs = mask.astype(x.dtype)
        # A masked channel becomes a zero row of H with unit, uncorrelated noise: its innovation
        # is 0, its column of the gain is 0, and S stays invertible.
        Hm = np.broadcast_to(H, (N, m, n)) * obs[:, :, None]
        pair = obs[:, :, None] * obs[:, None, :]
        Rm = np.broadcast_to(R, (N, m, m)) * pair + np.eye(m) * (1.0 - obs)[:, None, :]
        zm = np.where(mask, z, 0.0)

    # y = z - H x
    y = zm - (_right(x, Hm.T) if Hm.ndim == 2 else np.einsum("nij,nj->ni", Hm, x))
    PHt = _right(P, np.swapaxes(Hm, -1, -2))  # (N, n, m)
    # S = H P H^T + R
    S = Hm @ PHt + Rm
    S_inv = inverse(S)
    K = PHt @ S_inv  # (N, n, m)
    x_new = x + np.einsum("nij,nj->ni", K, y)
    # P = P - K S K^T = P - K (P H^T)^T with the optimal gain (what the Joseph form reduces
    # to), symmetrised: three times fewer small products than the Joseph form
    P_new = symmetrize(P - K @ np.swapaxes(PHt, -1, -2))
    nis = np.einsum("ni,nij,nj->n", y, S_inv, y)
    if mask is None:
        return x_new, P_new, nis
    return keep_unobserved(mask, x, P, x_new, P_new, nis)


def keep_unobserved(mask: np.ndarray, x: np.ndarray, P: np.ndarray, x_new: np.ndarray,
                    P_new: np.ndarray, nis: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Return patients with no observed channel exactly as they were (not merely within
    rounding of the update). mask `(N, m)`; x, x_new `(N, n)`; P, P_new `(N, n, n)`; nis `(N,)`."""
    none = ~mask.any(axis=1)
    if none.any():
        x_new[none] = x[none]
        P_new[none] = P[none]
        nis[none] = 0.0
    return x_new, P_new, nis


def predict_pair(
    x: np.ndarray, p: np.ndarray, F: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`predict` for many independent 2-state pairs with upper-triangular transitions, in closed
    form (elementwise).

    x: `(..., 2)` means; p: `(..., 3)` covariance entries (p00, p01, p11); F: `(..., 3)` the
    transition's entries (f00, f01, f11) of `[[f00, f01], [0, f11]]`; q: `(..., 3)` process
    noise entries (q00, q01, q11). Shapes broadcast.
    Equal to `predict` with those 2x2 matrices, without the cost of tiny matmuls.
    """
    f00, f01, f11 = F[..., 0], F[..., 1], F[..., 2]
    shape = np.broadcast_shapes(x.shape[:-1], p.shape[:-1], F.shape[:-1], q.shape[:-1])
    xn = np.empty(shape + (2,))
    pn = np.empty(shape + (3,))
    xn[..., 0] = f00 * x[..., 0] + f01 * x[..., 1]
    xn[..., 1] = f11 * x[..., 1]
    p00, p01, p11 = p[..., 0], p[..., 1], p[..., 2]
    # P = F P F^T + Q
    pn[..., 0] = f00 * f00 * p00 + 2.0 * f00 * f01 * p01 + f01 * f01 * p11 + q[..., 0]
    pn[..., 1] = f11 * (f00 * p01 + f01 * p11) + q[..., 1]
    pn[..., 2] = f11 * f11 * p11 + q[..., 2]
    return xn, pn


def update_level(
    x: np.ndarray, p: np.ndarray, z: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`update` of 2-state pairs observed through their first state (`H = [1, 0]`), closed form.

    x: `(..., 2)`; p: `(..., 3)`; z, r: `(...)` observation and its variance (no mask: the caller
    keeps the prior where a value is not observed). Returns `(x, p, nis)` with `nis (...)`.
    """
    p00, p01, p11 = p[..., 0], p[..., 1], p[..., 2]
    S = p00 + r
    k0 = p00 / S
    k1 = p01 / S
    y = z - x[..., 0]
    xn = np.empty_like(x)
    pn = np.empty_like(p)
    xn[..., 0] = x[..., 0] + k0 * y
    xn[..., 1] = x[..., 1] + k1 * y
    # P = P - K S K^T
    pn[..., 0] = p00 * (1.0 - k0)
    pn[..., 1] = p01 * (1.0 - k0)
    pn[..., 2] = p11 - p01 * k1
    return xn, pn, y * y / S
