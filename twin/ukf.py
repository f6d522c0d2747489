"""Batched unscented Kalman filter kernels (scaled sigma points, Van der Merwe 2004).

Same shapes as `twin.kalman`: `x (N, n)`, `P (N, n, n)`, `z (N, m)`, `mask (N, m)`. The model
functions act on all sigma points of all patients at once: `fx: (N, S, n) -> (N, S, n)` and
`hx: (N, S, n) -> (N, S, m)` with `S = 2n + 1`. The loop over sigma points is inside numpy.

Defaults `alpha=1, beta=2, kappa=0` put the sigma points at `x +- sqrt(n) * columns of chol(P)`
with non-negative weights except the centre's covariance weight; they are exact for Gaussians
through linear maps (where the UKF equals the Kalman filter) and behave well through the
saturating oxygen dissociation curve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from twin.kalman import keep_unobserved, symmetrize


class Weights(NamedTuple):
    lam: float
    wm: np.ndarray  # (S,) mean weights
    wc: np.ndarray  # (S,) covariance weights


def weights(n: int, alpha: float = 1.0, beta: float = 2.0, kappa: float = 0.0) -> Weights:
    """Scaled sigma-point weights for state dimension n."""
    lam = alpha**2 * (n + kappa) - n
    wm = np.full(2 * n + 1, 1.0 / (2.0 * (n + lam)))
    wc = wm.copy()
    wm[0] = lam / (n + lam)
    wc[0] = lam / (n + lam) + (1.0 - alpha**2 + beta)
    return Weights(lam, wm, wc)


def sigma_points(x: np.ndarray, P: np.ndarray, w: Weights) -> np.ndarray:
    """Sigma points `(N, 2n + 1, n)` of means `x (N, n)` and covariances `P (N, n, n)`."""
    n = x.shape[-1]
    A = (n + w.lam) * P
    if n == 2:
        # closed-form Cholesky: LAPACK's per-matrix overhead dominates for 2 x 2
        L = np.zeros_like(A)
        L[:, 0, 0] = np.sqrt(A[:, 0, 0])
        L[:, 1, 0] = A[:, 1, 0] / L[:, 0, 0]
        L[:, 1, 1] = np.sqrt(A[:, 1, 1] - L[:, 1, 0] ** 2)
        if not np.isfinite(L).all():
            raise np.linalg.LinAlgError("covariance is not positive definite")
    else:
        L = np.linalg.cholesky(A)  # (N, n, n), columns are the spread directions
    cols = np.swapaxes(L, -1, -2)  # (N, n, n): row i = column i of L
    return np.concatenate([x[:, None, :], x[:, None, :] + cols, x[:, None, :] - cols], axis=1)


def _moments(Y: np.ndarray, w: Weights) -> tuple[np.ndarray, np.ndarray]:
    mean = np.einsum("s,nsi->ni", w.wm, Y)
    d = Y - mean[:, None, :]
    cov = np.einsum("s,nsi,nsj->nij", w.wc, d, d)
    return mean, cov


def predict(
    x: np.ndarray,
    P: np.ndarray,
    fx: Callable[[np.ndarray], np.ndarray],
    Q: np.ndarray,
    *,
    alpha: float = 1.0,
    beta: float = 2.0,
    kappa: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Unscented prediction.

    x: `(N, n)`; P: `(N, n, n)`; fx: sigma points `(N, S, n)` -> `(N, S, n)`; Q: `(n, n)` or
    `(N, n, n)`. Returns `(x (N, n), P (N, n, n))`.
    """
    w = weights(x.shape[-1], alpha, beta, kappa)
    Y = fx(sigma_points(x, P, w))
    x_new, P_new = _moments(Y, w)
    # P = sum_s Wc_s (Y_s - x)(Y_s - x)^T + Q
    return x_new, symmetrize(P_new + Q)


def update(
    x: np.ndarray,
    P: np.ndarray,
    z: np.ndarray,
    hx: Callable[[np.ndarray], np.ndarray],
    R: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 2.0,
    kappa: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unscented measurement update.

    x: `(N, n)`; P: `(N, n, n)`; z: `(N, m)`; hx: sigma points `(N, S, n)` -> `(N, S, m)`;
    R: `(m, m)` or `(N, m, m)`; mask: `(N, m)` bool, False = not observed (zero gain, nothing in
    `nis`; a patient with nothing observed is returned unchanged). Returns
    `(x (N, n), P (N, n, n), nis (N,))`.
    """
    N, n = x.shape
    m = z.shape[-1]
    if mask is None:
        mask = np.ones((N, m), dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    obs = mask.astype(x.dtype)
    w = weights(n, alpha, beta, kappa)
    X = sigma_points(x, P, w)
    Z = hx(X)  # (N, S, m)
    zhat = np.einsum("s,nsi->ni", w.wm, Z)
    dz = (Z - zhat[:, None, :]) * obs[:, None, :]
    dx = X - x[:, None, :]
    R = np.broadcast_to(R, (N, m, m))
    pair = obs[:, :, None] * obs[:, None, :]
    # Pzz = sum Wc dz dz^T + R on observed channels, identity on masked ones (keeps it invertible)
    Pzz = np.einsum("s,nsi,nsj->nij", w.wc, dz, dz) + R * pair + np.eye(m) * (1.0 - obs)[:, None, :]
    Pxz = np.einsum("s,nsi,nsj->nij", w.wc, dx, dz)
    y = np.where(mask, z - zhat, 0.0)
    if m == 1:
        # a scalar measurement: S^-1 is a division (batched 1x1 solves are slow in LAPACK)
        K = Pxz / Pzz
        nis = y[:, 0] * y[:, 0] / Pzz[:, 0, 0]
    else:
        # K = Pxz Pzz^-1
        K = np.swapaxes(np.linalg.solve(Pzz, np.swapaxes(Pxz, -1, -2)), -1, -2)
        nis = np.einsum("ni,ni->n", y, np.linalg.solve(Pzz, y[..., None])[..., 0])
    x_new = x + np.einsum("nij,nj->ni", K, y)
    # P = P - K Pzz K^T
    P_new = symmetrize(P - K @ Pzz @ np.swapaxes(K, -1, -2))
    return keep_unobserved(mask, x, P, x_new, P_new, nis)
