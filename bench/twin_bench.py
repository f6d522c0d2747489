"""Twin core throughput, side by side in one run: the bank's vectorised step, a per-patient
filterpy loop on the same model, and the memory-bandwidth bound (copying the same arrays once).

Run: `patient-twin bench twin` or `python -m bench.twin_bench [--sizes 1000,10000,100000]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from twin import bank
from twin.channels import INDEX, C
from twin.devices import device_hash
from twin.model import SPO2, ModelParams, measurement_var, odc, transition

LINEAR = [c for c in range(C) if c != SPO2]
T0 = 1_800_000_000.0


def _readings(N: int, rng: np.random.Generator, tick: int, dev: np.ndarray) -> bank.Readings:
    z = np.full((N, C), np.nan)
    # a wearable tick: HR, SpO2 and RR every time; a cuff and a thermometer for a tenth of them
    z[:, INDEX["hr"]] = rng.normal(80, 3, N)
    z[:, INDEX["spo2"]] = np.round(rng.normal(96, 1, N))
    z[:, INDEX["rr"]] = rng.normal(16, 2, N)
    cuff = rng.random(N) < 0.1
    z[cuff, INDEX["sbp"]] = rng.normal(120, 6, cuff.sum())
    z[cuff, INDEX["dbp"]] = rng.normal(75, 5, cuff.sum())
    z[cuff, INDEX["temp"]] = rng.normal(37, 0.2, cuff.sum())
    return bank.Readings(np.arange(N), np.full(N, T0 + 5.0 * tick), z, np.full(N, 0.95),
                         np.full(N, 0.8), dev, np.full(N, tick, dtype=np.int64))


def bank_rate(N: int, repeats: int, params: ModelParams) -> float:
    rng = np.random.default_rng(1)
    states = bank.new_states(N, params)
    dev = device_hash([f"d{i}" for i in range(N)])
    batches = [_readings(N, rng, k + 1, dev) for k in range(repeats + 1)]
    bank.step(states, batches[0], params)  # first readings initialise every channel
    times = []
    for b in batches[1:]:
        t = time.perf_counter()
        bank.step(states, b, params)
        times.append(time.perf_counter() - t)
    return N / statistics.median(times)


def copy_rate(N: int, params: ModelParams, repeats: int = 5) -> float:
    """Patient-updates/s if a step cost one read and one write of the twins' state arrays."""
    src = bank.new_states(N, params)
    dst = {f: np.empty_like(a) for f, a in src.items()}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for f, a in src.items():
            np.copyto(dst[f], a)
        times.append(time.perf_counter() - t)
    return N / statistics.median(times)


def filterpy_rate(n_patients: int, params: ModelParams) -> float:
    """The same model, one patient at a time, with filterpy: a KalmanFilter over the five linear
    (fast, slow) level pairs and an UnscentedKalmanFilter for the SpO2 pair through the curve."""
    from filterpy.kalman import KalmanFilter, MerweScaledSigmaPoints, UnscentedKalmanFilter

    rng = np.random.default_rng(2)
    dt_min = 5.0 / 60.0
    f, q = transition(np.array([dt_min]), params)

    def pair(m: np.ndarray, c: int) -> np.ndarray:
        return np.array([[m[0, c, 0], m[0, c, 1]], [m[0, c, 1] if m is q else 0.0, m[0, c, 2]]])

    lin = len(LINEAR)
    F = np.zeros((2 * lin, 2 * lin))
    Q = np.zeros_like(F)
    for j, c in enumerate(LINEAR):
        F[2 * j:2 * j + 2, 2 * j:2 * j + 2] = pair(f, c)
        Q[2 * j:2 * j + 2, 2 * j:2 * j + 2] = pair(q, c)
    Fs = pair(f, SPO2)
    r = measurement_var(np.array([0.95]), params)[0]
    filters = []
    for _ in range(n_patients):
        kf = KalmanFilter(dim_x=2 * lin, dim_z=lin)
        kf.x = np.zeros(2 * lin)
        kf.x[0::2] = kf.x[1::2] = params.prior_level[LINEAR]
        kf.F, kf.Q = F, Q
        kf.H = np.zeros((lin, 2 * lin))
        kf.H[np.arange(lin), 2 * np.arange(lin)] = 1.0
        kf.R = np.diag(r[LINEAR])
        pts = MerweScaledSigmaPoints(2, alpha=1.0, beta=2.0, kappa=0.0)
        uk = UnscentedKalmanFilter(dim_x=2, dim_z=1, dt=dt_min, points=pts,
                                   fx=lambda s, dt: Fs @ s, hx=lambda s: odc(s[:1]))
        uk.x = np.array([90.0, 90.0])
        uk.P = np.array([[25.0**2 + 15.0, 25.0**2], [25.0**2, 25.0**2]])
        uk.Q = pair(q, SPO2)
        uk.R = np.array([[r[SPO2]]])
        filters.append((kf, uk))
    z = rng.normal([80, 16, 120, 75, 37], [3, 2, 6, 5, 0.2], (n_patients, lin))
    zs = np.round(rng.normal(96, 1, n_patients))
    t = time.perf_counter()
    for i, (kf, uk) in enumerate(filters):
        kf.predict()
        kf.update(z[i])
        uk.predict()
        uk.update(zs[i:i + 1])
    return n_patients / (time.perf_counter() - t)


def run(sizes: list[int], repeats: int = 7, reference_patients: int = 300) -> list[dict]:
    params = ModelParams()
    ref = filterpy_rate(reference_patients, params)
    rows = []
    for N in sizes:
        b = bank_rate(N, repeats, params)
        c = copy_rate(N, params)
        rows.append({"patients": N, "bank_per_s": b, "filterpy_per_s": ref, "copy_per_s": c,
                     "vs_filterpy": b / ref, "copy_over_bank": c / b,
                     "state_bytes": bank.STATE_BYTES})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="patient-twin bench twin", description=__doc__)
    ap.add_argument("--sizes", default="1000,10000,100000",
                    help="comma-separated patient counts (default 1000,10000,100000)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: expected whole numbers separated by commas, got {args.sizes!r}")
    rows = run(sizes, args.repeats)
    print(f"{'patients':>9} {'bank upd/s':>12} {'filterpy upd/s':>15} {'copy upd/s':>12} "
          f"{'x filterpy':>11} {'copy/bank':>10} {'B/patient':>10}")
    for r in rows:
        print(f"{r['patients']:>9} {r['bank_per_s']:>12,.0f} {r['filterpy_per_s']:>15,.0f} "
              f"{r['copy_per_s']:>12,.0f} {r['vs_filterpy']:>11.1f} {r['copy_over_bank']:>10.1f} "
              f"{r['state_bytes']:>10}")
    print("bank: median of the vectorised step over all patients (one wearable reading each); "
          "filterpy: per-patient loop on the same model (KalmanFilter + UKF for SpO2); copy: one "
          "copy of the same state arrays (memory-bandwidth bound).")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
