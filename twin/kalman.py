"""Batched linear Kalman filter kernels: one call advances every patient of a bank.

Axis order is fixed: patient, then state. Shared model matrices broadcast against per-patient ones,
so `F` may be `(n, n)` for all patients or `(N, n, n)` when each patient has its own `dt`.
"""

from __future__ import annotations

import numpy as np


def symmetrize(P: np.ndarray) -> np.ndarray:
    """Return `(P + P^T) / 2`. P: `(..., n, n)`."""
    return 0.5 * (P + np.swapaxes(P, -1, -2))


def _right(B: np.ndarray, A: np.ndarray) -> np.ndarray:
    """`B @ A` for B `(N, a, b)` and A `(b, c)` or `(N, b, c)`: `(N, a, c)` (one BLAS call for
    a shared A)."""
    if A.ndim == 2:
        N, a, b = B.shape
        return (B.reshape(N * a, b) @ A).reshape(N, a, A.shape[1])
    return B @ A


def inverse(S: np.ndarray) -> np.ndarray:
    """Inverses of N symmetric positive definite matrices, `(N, m, m)`.

    In closed form (elementwise over patients) for m <= 3, where LAPACK's per-matrix call costs
    more than the arithmetic; `np.linalg.inv` beyond."""
    m = S.shape[-1]
    if m == 1:
        return 1.0 / S
    if m == 2:
        a, b, c, d = S[:, 0, 0], S[:, 0, 1], S[:, 1, 0], S[:, 1, 1]
        det = a * d - b * c
        return np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2) / det[:, None, None]
    if m == 3:
        s = [[S[:, i, j] for j in range(3)] for i in range(3)]
        cof = [[s[(j + 1) % 3][(i + 1) % 3] * s[(j + 2) % 3][(i + 2) % 3]
                - s[(j + 1) % 3][(i + 2) % 3] * s[(j + 2) % 3][(i + 1) % 3]
                for j in range(3)] for i in range(3)]  # adjugate: transposed cofactors
        det = s[0][0] * cof[0][0] + s[0][1] * cof[1][0] + s[0][2] * cof[2][0]
        return np.stack([np.stack(row, -1) for row in cof], -2) / det[:, None, None]
    return np.linalg.inv(S)


def predict(
    x: np.ndarray, P: np.ndarray, F: np.ndarray, Q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate every patient's state one step.

    x: `(N, n)` means; P: `(N, n, n)` covariances; F: `(n, n)` or `(N, n, n)` transition;
    Q: `(n, n)` or `(N, n, n)` process noise. Returns `(x (N, n), P (N, n, n))`.
    """
    # x = F x
    x_new = x @ F.T if F.ndim == 2 else np.einsum("nij,nj->ni", F, x)
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
    normalised innovation squared `y^T S^-1 y` over the observed channels (0 when none).
    """
    N, n = x.shape
    m = z.shape[-1]
    if mask is None or (mask := np.asarray(mask, dtype=bool)).all():
        # every channel observed: the shared matrices stay shared (one BLAS call each)
        mask = None
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
    y = zm - (x @ Hm.T if Hm.ndim == 2 else np.einsum("nij,nj->ni", Hm, x))
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
