"""A bank of patient twins as one structured array, advanced by one vectorised call per batch.

Each patient's twin is one fixed-size record (`STATE_DTYPE`), so a patient's state serialises to
bytes and back without a schema library, and a batch of states unpacks with one `np.frombuffer`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from twin import kalman, news2
from twin.channels import INDEX, PLAUSIBLE_HIGH, PLAUSIBLE_LOW, C
from twin.model import (
    LEVEL,
    N_STATE,
    TREND,
    ModelParams,
    measurement_noise,
    observation_matrix,
    prior,
    transition,
)

STATE_VERSION = 1
DEVICE_SLOTS = 4
_TRIU = np.triu_indices(N_STATE)

STATE_DTYPE = np.dtype(
    [
        ("version", "u1"),
        ("band", "i1"),  # NEWS2 response band last reported (-1: none yet)
        ("rejects", "u2", (C,)),  # consecutive artifact rejections per channel
        ("artifacts", "u4"),  # readings rejected by the innovation gate, total
        ("missing", "u4"),  # sensor-off / out-of-range values treated as missing, total
        ("applied", "u8"),  # readings applied to the twin, total
        ("duplicates", "u4"),
        ("late", "u4"),
        ("t", "f8"),  # epoch seconds of the last applied reading (NaN: never)
        ("last_obs", "f8", (C,)),  # epoch seconds each channel was last believed (NaN: never)
        ("raw", "f8", (C,)),  # last value received per channel, as recorded
        ("quality", "f4"),
        ("battery", "f4"),
        ("device", "u8", (DEVICE_SLOTS,)),  # 64-bit hash of the device id (0: free slot)
        ("seq", "i8", (DEVICE_SLOTS,)),  # last applied sequence number of that device
        ("x", "f8", (N_STATE,)),
        ("P", "f8", (len(_TRIU[0]),)),  # upper triangle of the covariance
    ]
)
STATE_BYTES = STATE_DTYPE.itemsize

FORECAST_MINUTES = np.array([15.0, 30.0, 60.0])
Z90 = 1.6448536269514722  # two-sided 90 % interval of a normal


def device_hash(device_ids: list[str]) -> np.ndarray:
    """64-bit non-zero hashes of device ids, `(K,) uint64`."""
    out = np.empty(len(device_ids), dtype=np.uint64)
    for i, d in enumerate(device_ids):
        h = int.from_bytes(hashlib.blake2b(d.encode(), digest_size=8).digest(), "little")
        out[i] = h or 1
    return out


def new_states(n: int, params: ModelParams) -> np.ndarray:
    """`n` twins that have seen nothing: `(n,)` of `STATE_DTYPE`."""
    s = np.zeros(n, dtype=STATE_DTYPE)
    x0, P0 = prior(params)
    s["version"] = STATE_VERSION
    s["band"] = -1
    s["t"] = np.nan
    s["last_obs"] = np.nan
    s["raw"] = np.nan
    s["quality"] = np.nan
    s["battery"] = np.nan
    s["x"] = x0
    s["P"] = P0[_TRIU]
    return s


def to_bytes(state: np.ndarray) -> bytes:
    """One twin record (a 0-d or `(1,)` array of `STATE_DTYPE`) to bytes."""
    return np.ascontiguousarray(state, dtype=STATE_DTYPE).tobytes()


def from_bytes(blobs: list[bytes]) -> np.ndarray:
    """Records serialised by `to_bytes` back to `(K,)` of `STATE_DTYPE`.

    Raises ValueError if a blob has the wrong size or version.
    """
    if any(len(b) != STATE_BYTES for b in blobs):
        raise ValueError(f"twin state must be {STATE_BYTES} bytes (version {STATE_VERSION})")
    s = np.frombuffer(b"".join(blobs), dtype=STATE_DTYPE).copy()
    if (s["version"] != STATE_VERSION).any():
        raise ValueError(f"unsupported twin state version (expected {STATE_VERSION})")
    return s


def covariance(states: np.ndarray) -> np.ndarray:
    """Full covariances `(K, n, n)` of `(K,)` records."""
    K = states.shape[0]
    P = np.zeros((K, N_STATE, N_STATE))
    P[:, _TRIU[0], _TRIU[1]] = states["P"]
    P[:, _TRIU[1], _TRIU[0]] = states["P"]
    return P


@dataclass(frozen=True)
class Readings:
    """A batch of K readings for the patients of a `(N,)` state array.

    row: `(K,)` int index of the patient's state; t: `(K,)` epoch seconds; z: `(K, C)` values in
    canonical units, NaN where the reading has no such channel; quality: `(K,)` in [0, 1] (NaN:
    unknown); battery: `(K,)` in [0, 1] (NaN: unknown); device: `(K,) uint64` from `device_hash`;
    seq: `(K,) int64` per-device sequence numbers.
    """

    row: np.ndarray
    t: np.ndarray
    z: np.ndarray
    quality: np.ndarray
    battery: np.ndarray
    device: np.ndarray
    seq: np.ndarray


@dataclass(frozen=True)
class StepReport:
    """What a `step` did, per reading `(K,)` and per channel `(K, C)`."""

    applied: np.ndarray  # (K,) bool: the reading moved the twin
    duplicate: np.ndarray  # (K,) bool: seq at or below the device's last applied seq
    late: np.ndarray  # (K,) bool: older than the twin's last applied reading
    artifact: np.ndarray  # (K, C) bool: rejected by the innovation gate
    missing: np.ndarray  # (K, C) bool: sensor-off or out-of-range value


def step(states: np.ndarray, readings: Readings, params: ModelParams) -> StepReport:
    """Apply a batch of readings to the twins in `states` (updated in place), in time order.

    states: `(N,)` of `STATE_DTYPE`; readings: K readings (see `Readings`). Readings of different
    patients are applied together in one vectorised update; a patient's own readings are applied
    one after another, so the loop runs over the largest number of readings any one patient has
    in the batch, never over patients.
    """
    K = readings.row.shape[0]
    applied = np.zeros(K, dtype=bool)
    duplicate = np.zeros(K, dtype=bool)
    late = np.zeros(K, dtype=bool)
    artifact = np.zeros((K, C), dtype=bool)
    missing = np.zeros((K, C), dtype=bool)
    if K == 0:
        return StepReport(applied, duplicate, late, artifact, missing)

    order = np.lexsort((readings.seq, readings.t, readings.row))
    rows_sorted = readings.row[order]
    first = np.r_[True, rows_sorted[1:] != rows_sorted[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(K), 0))
    rank = np.arange(K) - group_start

    H = observation_matrix()
    x0, P0 = prior(params)
    gate = params.gate
    for k in range(int(rank.max()) + 1):
        sel = order[rank == k]  # reading indices, at most one per patient
        r = readings.row[sel]
        s = states[r]
        t = readings.t[sel]
        z = readings.z[sel]

        # Idempotence: the last applied sequence number per device lives in the twin itself, so a
        # redelivered reading after a failover is recognised even by another worker.
        dev = readings.device[sel]
        match = s["device"] == dev[:, None]  # (k, slots)
        known = match.any(axis=1)
        slot = np.where(known, match.argmax(axis=1), (s["device"] == 0).argmax(axis=1))
        # With every slot taken by other devices, reuse the one with the oldest sequence.
        full = ~known & ~(s["device"] == 0).any(axis=1)
        slot = np.where(full, s["seq"].argmin(axis=1), slot)
        last_seq = s["seq"][np.arange(len(r)), slot]
        dup = known & (readings.seq[sel] <= last_seq)
        is_late = ~dup & (t < s["t"])  # NaN t (new twin) compares False
        ok = ~dup & ~is_late
        duplicate[sel] = dup
        late[sel] = is_late

        present = ~np.isnan(z)
        plausible = (z >= PLAUSIBLE_LOW) & (z <= PLAUSIBLE_HIGH)
        miss = present & ~plausible & ok[:, None]
        obs = present & plausible & ok[:, None]
        missing[sel] = miss

        x = s["x"]
        P = covariance(s)
        dt_min = np.where(np.isnan(s["t"]), 0.0, np.maximum(t - s["t"], 0.0) / 60.0)
        F, Q = transition(dt_min, params)
        xp, Pp = kalman.predict(x, P, F, Q)

        # A channel forced through after repeated rejections starts afresh from the prior spread.
        force = obs & (s["rejects"] >= params.max_consecutive_rejections)
        fresh = obs & (np.isnan(s["last_obs"]) | force)
        if fresh.any():
            fi, fc = np.nonzero(fresh)
            li, ti = LEVEL[fc], TREND[fc]
            Pp[fi, li, :] = 0.0
            Pp[fi, :, li] = 0.0
            Pp[fi, ti, :] = 0.0
            Pp[fi, :, ti] = 0.0
            Pp[fi, li, li] = P0[li, li]
            Pp[fi, ti, ti] = P0[ti, ti]
            xp[fi, li] = x0[li]
            xp[fi, ti] = 0.0

        R = measurement_noise(readings.quality[sel], params)
        # Innovation gate per channel: y_c^2 / S_cc against a chi-square(1) quantile.
        y = np.where(obs, z, 0.0) - xp[:, LEVEL]
        S_diag = Pp[:, LEVEL, LEVEL] + R[:, np.arange(C), np.arange(C)]
        reject = obs & ~fresh & (y * y / S_diag > gate)
        use = obs & ~reject
        artifact[sel] = reject

        xu, Pu, _ = kalman.update(xp, Pp, z, H, R, mask=use)
        move = ok  # a reading with nothing believable still advances the clock
        s["x"] = np.where(move[:, None], xu, x)
        Pn = np.where(move[:, None, None], Pu, P)
        s["P"] = Pn[:, _TRIU[0], _TRIU[1]]
        s["t"] = np.where(move, t, s["t"])
        s["last_obs"] = np.where(use, t[:, None], s["last_obs"])
        s["raw"] = np.where(present & ok[:, None], z, s["raw"])
        s["rejects"] = np.where(reject, s["rejects"] + 1, np.where(use, 0, s["rejects"]))
        s["artifacts"] += reject.sum(axis=1).astype(np.uint32)
        s["missing"] += miss.sum(axis=1).astype(np.uint32)
        s["applied"] += move.astype(np.uint64)
        s["duplicates"] += dup.astype(np.uint32)
        s["late"] += is_late.astype(np.uint32)
        q, b = readings.quality[sel], readings.battery[sel]
        s["quality"] = np.where(move & ~np.isnan(q), q, s["quality"])
        s["battery"] = np.where(move & ~np.isnan(b), b, s["battery"])
        idx = np.arange(len(r))
        dev_col = s["device"].copy()
        seq_col = s["seq"].copy()
        dev_col[idx[ok], slot[ok]] = dev[ok]
        seq_col[idx[ok], slot[ok]] = readings.seq[sel][ok]
        s["device"] = dev_col
        s["seq"] = seq_col
        applied[sel] = move
        states[r] = s
    return StepReport(applied, duplicate, late, artifact, missing)


@dataclass(frozen=True)
class Outputs:
    """What the twin says about K patients.

    estimate, sd: `(K, C)` (NaN for a channel never observed); forecast, forecast_sd:
    `(K, 3, C)` at `FORECAST_MINUTES`; news2: `(K,)` int on the estimates, news2_raw on the last
    raw values; components `(K, 7)`; complete `(K,)` bool; band `(K,)` int; age_s `(K, C)` seconds
    since each channel was last believed.
    """

    estimate: np.ndarray
    sd: np.ndarray
    forecast: np.ndarray
    forecast_sd: np.ndarray
    news2: np.ndarray
    news2_raw: np.ndarray
    components: np.ndarray
    complete: np.ndarray
    band: np.ndarray
    age_s: np.ndarray


def outputs(
    states: np.ndarray,
    now: np.ndarray,
    params: ModelParams,
    on_oxygen: np.ndarray | None = None,
    alert: np.ndarray | None = None,
    spo2_scale: np.ndarray | int = 1,
) -> Outputs:
    """Estimates, forecasts and NEWS2 for `(K,)` records at times `now (K,)` epoch s.

    on_oxygen, alert: `(K,)` float (NaN: no manual observation yet, so NEWS2 is incomplete).
    """
    K = states.shape[0]
    P = covariance(states)
    never = np.isnan(states["last_obs"])
    dt_min = np.where(np.isnan(states["t"]), 0.0, np.maximum(now - states["t"], 0.0) / 60.0)
    F, Q = transition(dt_min, params)
    x, P = kalman.predict(states["x"], P, F, Q)
    est = np.where(never, np.nan, x[:, LEVEL])
    sd = np.where(never, np.nan, np.sqrt(P[:, LEVEL, LEVEL]))

    fc = np.empty((K, len(FORECAST_MINUTES), C))
    fsd = np.empty_like(fc)
    for j, h in enumerate(FORECAST_MINUTES):  # three horizons, not patients
        Fh, Qh = transition(np.full(K, h), params)
        xh, Ph = kalman.predict(x, P, Fh, Qh)
        fc[:, j] = np.where(never, np.nan, xh[:, LEVEL])
        fsd[:, j] = np.where(never, np.nan, np.sqrt(Ph[:, LEVEL, LEVEL]))

    nan = np.full(K, np.nan)
    oxy = nan if on_oxygen is None else on_oxygen
    alrt = nan if alert is None else alert

    def score(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return news2.news2(v[:, INDEX["rr"]], v[:, INDEX["spo2"]], v[:, INDEX["temp"]],
                           v[:, INDEX["sbp"]], v[:, INDEX["hr"]], oxy, alrt, spo2_scale)

    total, comp, complete = score(est)
    raw = states["raw"]
    raw_ok = np.where((raw >= PLAUSIBLE_LOW) & (raw <= PLAUSIBLE_HIGH), raw, np.nan)
    total_raw, _, _ = score(raw_ok)
    age = np.where(never, np.nan, now[:, None] - states["last_obs"])
    return Outputs(est, sd, fc, fsd, total, total_raw, comp, complete,
                   news2.band(total, comp), age)
