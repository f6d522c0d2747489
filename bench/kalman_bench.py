"""`patient-twin bench kalman`: the generic batched filter (`twin.kalman.predict/update`) against
filterpy one patient at a time and against a plain batched numpy filter of the same model, in one
run.

The model is the textbook one: a constant-velocity target in two dimensions (4 states: position and
velocity per axis), both positions measured (2 measurements), shared F, Q, H and R; every patient
observed every step. Rates are patient-steps per second (one predict and one update), medians of
`--repeats` timed steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from twin import kalman

DT = 1.0


def model() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """F, Q `(4, 4)`, H `(2, 4)`, R `(2, 2)` of the constant-velocity model."""
    f = np.array([[1.0, DT], [0.0, 1.0]])
    q = 0.01 * np.array([[DT**3 / 3, DT**2 / 2], [DT**2 / 2, DT]])
    F = np.kron(np.eye(2), f)
    Q = np.kron(np.eye(2), q)
    H = np.kron(np.eye(2), np.array([[1.0, 0.0]]))
    R = 0.25 * np.eye(2)
    return F, Q, H, R


def start(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    P = np.broadcast_to(np.eye(4), (n, 4, 4)).copy()
    z = rng.standard_normal((n, 2))
    return x, P, z


def plain_step(x: np.ndarray, P: np.ndarray, z: np.ndarray, F: np.ndarray, Q: np.ndarray,
               H: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same filter written directly for this model (no masks, shared matrices, standard
    covariance update): what a data scientist would write for one fixed model."""
    x = x @ F.T
    P = F @ P @ F.T + Q
    PHt = P @ H.T
    S = H @ PHt + R
    K = PHt @ np.linalg.inv(S)
    x = x + np.einsum("nij,nj->ni", K, z - x @ H.T)
    P = P - K @ H @ P
    return x, P


def _median_rate(step, n: int, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def rates(n: int, repeats: int, reference: int) -> dict[str, float]:
    from filterpy.kalman import KalmanFilter

    F, Q, H, R = model()
    x, P, z = start(n)

    def api() -> None:
        xp, Pp = kalman.predict(x, P, F, Q)
        kalman.update(xp, Pp, z, H, R)

    def plain() -> None:
        plain_step(x, P, z, F, Q, H, R)

    filters = []
    for i in range(reference):
        kf = KalmanFilter(dim_x=4, dim_z=2)
        kf.x, kf.P, kf.F, kf.Q, kf.H, kf.R = x[i].copy(), P[i].copy(), F, Q, H, R
        filters.append(kf)

    def loop() -> None:
        for i, kf in enumerate(filters):
            kf.predict()
            kf.update(z[i])

    api()  # warm up
    return {"api": _median_rate(api, n, repeats), "plain": _median_rate(plain, n, repeats),
            "filterpy": _median_rate(loop, reference, repeats)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench kalman", description=__doc__)
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--reference", type=int, default=1000,
                    help="patients in the filterpy loop (its rate is per patient)")
    args = ap.parse_args(argv)
    if args.patients < 1 or args.repeats < 1 or args.reference < 1:
        ap.error("--patients, --repeats and --reference must be at least 1")
    r = rates(args.patients, args.repeats, args.reference)
    print(f"{'patients':>9} {'api steps/s':>13} {'plain steps/s':>14} {'filterpy steps/s':>17} "
          f"{'api/filterpy':>13} {'plain/filterpy':>15} {'api/plain':>10}")
    print(f"{args.patients:>9} {r['api']:>13,.0f} {r['plain']:>14,.0f} {r['filterpy']:>17,.0f} "
          f"{r['api'] / r['filterpy']:>13.1f} {r['plain'] / r['filterpy']:>15.1f} "
          f"{r['api'] / r['plain']:>10.2f}")
    print("4-state constant-velocity model, 2 measurements, every patient observed each step; "
          "a step = predict + update; medians")
    print(json.dumps({"patients": args.patients, "api_per_s": r["api"],
                      "plain_per_s": r["plain"], "filterpy_per_s": r["filterpy"],
                      "api_vs_filterpy": r["api"] / r["filterpy"],
                      "plain_vs_filterpy": r["plain"] / r["filterpy"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
