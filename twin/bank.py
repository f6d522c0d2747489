"""A bank of patient twins as one structured array, advanced by one vectorised call per batch.

Each patient's twin is one fixed-size record (`STATE_DTYPE`), so a patient's state serialises to
bytes and back without a schema library, and a batch of states unpacks with one `np.frombuffer`.
The channels are independent (fast level, slow level) pairs (`twin.model`), so a record keeps three
covariance entries per channel instead of a 12 x 12 matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin import kalman, news2, trend, ukf
from twin.channels import INDEX, PLAUSIBLE_HIGH, PLAUSIBLE_LOW, C
from twin.model import (
    SPO2,
    SPO2_INIT_CAP,
    ModelParams,
    measurement_var,
    odc,
    odc_inverse,
    spo2_hx,
    transition,
)
from twin.readings import Readings

STATE_VERSION = 7
DEVICE_SLOTS = 4
MAX_GAP = 2**31 - 1  # most readings one sequence jump counts as lost
_U32_MAX = np.iinfo(np.uint32).max  # the counters saturate instead of wrapping

_V4_FIELDS = [
        ("version", "u1"),
        ("band", "i1"),  # NEWS2 response band last reported (-1: none yet)
        ("rejects", "u2", (C,)),  # consecutive artifact rejections per channel
        ("artifacts", "u4"),  # readings rejected by the innovation gate, total
        ("missing", "u4"),  # sensor-off / out-of-range values treated as missing, total
        ("duplicates", "u4"),
        ("late", "u4"),
        ("gaps", "u4"),  # readings a device numbered but the twin never received, total
        ("applied", "u8"),  # readings applied to the twin, total
        ("t", "f8"),  # epoch seconds of the last applied reading (NaN: never)
        ("last_obs", "f8", (C,)),  # epoch seconds each channel was last believed (NaN: never)
        ("raw", "f8", (C,)),  # last value received per channel, as recorded
        ("quality", "f4"),
        ("battery", "f4"),
        # From clinicians' manual observations (NaN: never recorded): ACVPU Alert = 1, new
        # confusion/V/P/U = 0; supplemental oxygen 1, air 0; when they were last recorded.
        ("obs_alert", "f4"),
        ("obs_oxygen", "f4"),
        ("obs_t", "f8"),
        ("spo2_scale", "u1"),  # NEWS2 SpO2 scale 1 or 2 from the registry (a clinician's call)
        ("device", "u8", (DEVICE_SLOTS,)),  # 64-bit hash of the device id (0: free slot)
        ("seq", "i8", (DEVICE_SLOTS,)),  # last applied sequence number of that device
        ("x", "f8", (C, 2)),  # fast level L, slow level u per channel (spo2: latent PaO2)
        ("P", "f8", (C, 3)),  # covariance p00, p01, p11 per channel
]
# Version 5: each channel's running baselines, for the risk's drift features (`twin.risk`).
_DRIFT_FIELDS = [
    ("base_first_t", "f8", (C,)),  # when the channel's estimate first existed (NaN: not yet)
    ("base_sum", "f8", (C,)),  # sum and count of its estimates in its first hours
    ("base_n", "u4", (C,)),
    ("slow", "f8", (C,)),  # an exponential running mean of the estimate (NaN: none yet)
    ("slow_t", "f8"),  # when `slow` was last updated
]
# Version 6: the same layout, but `x[:, 1]` is the slow level (was a trend per minute, whose
# covariance entries `P[:, 1:]` are re-made on reading: `_from_trend`).
# Version 7: each channel's drift trend and the block of readings it is gathering
# (`twin.trend.FIELDS`), single precision but the times: a slope's own uncertainty is far above
# float32's rounding.
_TREND_FIELDS = [
    ("trend_x", "f4", (C, 2)),  # level, slope per minute
    ("trend_P", "f4", (C, 3)),  # covariance p00, p01, p11
    ("trend_t", "f8", (C,)),  # epoch seconds the trend stands at (NaN: not started)
    ("block_t0", "f8", (C,)),  # first reading of the open block (NaN: none)
    ("block_n", "u4", (C,)),
    ("block_sum", "f4", (C,)),
    ("block_r", "f4", (C,)),
    ("block_ts", "f4", (C,)),  # sum of its readings' seconds after block_t0
]
_V6_DTYPE = np.dtype(_V4_FIELDS + _DRIFT_FIELDS)
STATE_DTYPE = np.dtype(_V4_FIELDS + _DRIFT_FIELDS + _TREND_FIELDS)
STATE_BYTES = STATE_DTYPE.itemsize
# Records of earlier versions still read (a site's changelog outlives an upgrade): their size,
# and the dtype to read them with.
_OLD_DTYPES = {4: np.dtype(_V4_FIELDS), 5: _V6_DTYPE, 6: _V6_DTYPE}
_SIZES = {STATE_VERSION: STATE_BYTES, **{v: d.itemsize for v, d in _OLD_DTYPES.items()}}

FORECAST_MINUTES = np.array([15.0, 30.0, 60.0])
Z90 = 1.6448536269514722  # two-sided 90 % interval of a normal





def _prior(params: ModelParams) -> tuple[np.ndarray, np.ndarray]:
    """`x0 (C, 2)`, `p0 (C, 3)`: u ~ N(prior level, prior SD^2), L - u ~ N(0, fast_var)."""
    x0 = np.stack([params.prior_level, params.prior_level], axis=-1)
    s0 = params.prior_level_sd**2
    p0 = np.stack([s0 + params.fast_var, s0, s0], axis=-1)
    return x0, p0


def _from_trend(x: np.ndarray, p: np.ndarray, params: ModelParams) -> None:
    """Bring records of version <= 5 (level, trend) to (fast level, slow level) in place:
    x `(k, C, 2)`, p `(k, C, 3)`. The slow level starts at the level, as uncertain as the level
    plus the fast part's stationary spread (the old record cannot say how much of it is fast)."""
    x[..., 1] = x[..., 0]
    p[..., 1] = p[..., 0]
    p[..., 2] = p[..., 0] + params.fast_var


_MIGRATION_PARAMS = ModelParams()  # only for the defaults of fields an old record lacks

State = dict[str, np.ndarray]
"""A bank's working state: one contiguous array per field of `STATE_DTYPE`, patients on axis 0
(struct of arrays: the filter's elementwise passes run over contiguous memory)."""


def new_states(n: int, params: ModelParams) -> State:
    """`n` twins that have seen nothing."""
    s = {name: np.zeros((n, *STATE_DTYPE[name].shape), dtype=STATE_DTYPE[name].base)
         for name in STATE_DTYPE.names}
    x0, p0 = _prior(params)
    s["version"][:] = STATE_VERSION
    s["band"][:] = -1
    for f in ("t", "last_obs", "raw", "quality", "battery", "obs_alert", "obs_oxygen", "obs_t",
              "base_first_t", "slow", "slow_t", "trend_t", "block_t0"):
        s[f][:] = np.nan
    s["spo2_scale"][:] = 1
    s["x"][:] = x0
    s["P"][:] = p0
    return s


def take(states: State, rows: np.ndarray) -> State:
    """The twins at `rows (K,)`, copied."""
    return {f: a[rows] for f, a in states.items()}


def put(states: State, rows: np.ndarray, part: State) -> None:
    """Write `part` (from `take`) back at `rows`."""
    for f, a in states.items():
        a[rows] = part[f]


def to_bytes(states: State) -> list[bytes]:
    """Each twin as one fixed-size record of `STATE_DTYPE` (`STATE_BYTES` bytes)."""
    n = states["t"].shape[0]
    rec = np.empty(n, dtype=STATE_DTYPE)
    for f, a in states.items():
        rec[f] = a
    return [rec[i].tobytes() for i in range(n)]


def record_bytes(data: bytes, offset: int = 0) -> int:
    """The size of the twin record at `offset` of `data`, from its version byte; ValueError for
    a version this code cannot read."""
    v = data[offset] if len(data) > offset else -1
    if v not in _SIZES:
        raise ValueError(f"unsupported twin state version {v} (this code reads "
                         f"{', '.join(map(str, sorted(_SIZES)))})")
    return _SIZES[v]


def from_bytes(blobs: list[bytes]) -> State:
    """Records written by `to_bytes` (this version or an earlier one, brought up to this one)
    back to a `State` (writable arrays of their own).

    Raises ValueError if a blob has an unknown version or the wrong size.
    """
    sizes = [record_bytes(b) if b else -1 for b in blobs]
    if any(len(b) != n for b, n in zip(blobs, sizes, strict=True)):
        raise ValueError(f"twin state must be {STATE_BYTES} bytes (version {STATE_VERSION})")
    if all(b[0] == STATE_VERSION for b in blobs):
        rec = np.frombuffer(b"".join(blobs), dtype=STATE_DTYPE)
        return {f: rec[f].copy() for f in STATE_DTYPE.names}
    out = new_states(len(blobs), _MIGRATION_PARAMS)
    for version, dtype in (*_OLD_DTYPES.items(), (STATE_VERSION, STATE_DTYPE)):
        rows = [i for i, b in enumerate(blobs) if b[0] == version]
        if rows:
            old = np.frombuffer(b"".join(blobs[i] for i in rows), dtype=dtype)
            for f in dtype.names:
                out[f][rows] = old[f]
            if version < 6:
                x, p = out["x"][rows], out["P"][rows]
                _from_trend(x, p, _MIGRATION_PARAMS)
                out["x"][rows], out["P"][rows] = x, p
    out["version"][:] = STATE_VERSION  # fields an old record lacks start empty: baselines begin now
    return out


def _pair_cov(p: np.ndarray) -> np.ndarray:
    """(k, 3) covariance entries -> (k, 2, 2)."""
    return np.stack([np.stack([p[:, 0], p[:, 1]], -1), np.stack([p[:, 1], p[:, 2]], -1)], -2)


@dataclass(frozen=True)
class StepReport:
    """What a `step` did, per reading `(K,)` and per channel `(K, C)`."""

    applied: np.ndarray  # (K,) bool: the reading moved the twin
    duplicate: np.ndarray  # (K,) bool: seq at or below the device's last applied seq
    late: np.ndarray  # (K,) bool: older than the twin's last applied reading
    gap: np.ndarray  # (K,) int: sequence numbers skipped before this reading (lost upstream)
    artifact: np.ndarray  # (K, C) bool: rejected by the innovation gate
    missing: np.ndarray  # (K, C) bool: sensor-off or out-of-range value
    t: np.ndarray  # (K,) the time the reading was applied at (a manual observation's may be later)


def _filter(x: np.ndarray, p: np.ndarray, dt_min: np.ndarray, z: np.ndarray,
            obs: np.ndarray, fresh: np.ndarray, r: np.ndarray,
            params: ModelParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Predict and update k twins' channels. x `(k, C, 2)`, p `(k, C, 3)`, dt_min `(k,)`,
    z/obs/fresh/r `(k, C)`. Returns new x, p, the gate rejections and the accepted mask."""
    xp, pp = kalman.predict_pair(x, p, *transition(dt_min, params))
    if fresh.any():
        # A channel seen for the first time (or forced after repeated rejections) starts from the
        # broad prior, centred on the reading so the first update is not a large jump.
        x0, p0 = _prior(params)
        start = np.where(obs, z, x0[:, 0])
        start[:, SPO2] = odc_inverse(np.minimum(start[:, SPO2], SPO2_INIT_CAP))
        xp[..., 0] = np.where(fresh, start, xp[..., 0])
        xp[..., 1] = np.where(fresh, start, xp[..., 1])
        pp = np.where(fresh[..., None], p0, pp)
    zf = np.where(obs, z, 0.0)
    xu, pu, nis = kalman.update_level(xp, pp, zf, r)
    # SpO2 through the dissociation curve of its latent PaO2: the unscented update.
    o2_mask = obs[:, SPO2]
    if o2_mask.any():
        o2 = slice(None) if o2_mask.all() else o2_mask  # a slice avoids copies in the usual case
        sx, sP, snis = ukf.update(xp[o2, SPO2], _pair_cov(pp[o2, SPO2]), zf[o2, SPO2:SPO2 + 1],
                                  spo2_hx, r[o2, SPO2, None, None])
        xu[o2, SPO2] = sx
        pu[o2, SPO2, 0], pu[o2, SPO2, 1], pu[o2, SPO2, 2] = sP[:, 0, 0], sP[:, 0, 1], sP[:, 1, 1]
        nis[o2, SPO2] = snis
    reject = obs & ~fresh & (nis > params.gate)
    use = obs & ~reject
    keep = ~use[..., None]
    np.copyto(xu, xp, where=keep)
    np.copyto(pu, pp, where=keep)
    return xu, pu, reject, use


def step(states: State, readings: Readings, params: ModelParams,
         checkpoint: tuple[np.ndarray, State] | None = None) -> StepReport:
    """Apply a batch of readings to the twins in `states` (updated in place), in time order.

    states: N twins; readings: K readings (see `Readings`). Readings of different
    patients are applied together in one vectorised update; a patient's own readings are applied
    one after another, so the loop runs over the largest number of readings any one patient has
    in the batch, never over patients.

    checkpoint: `(at, into)`, at `(N,)` epoch seconds and into N twins: each twin with a finite
    `at` is copied into `into` as it is after its last reading applied at or before `at` (left
    as it is if none is), so `twin.history` gets a past state without applying readings twice.
    """
    K = readings.row.shape[0]
    applied = np.zeros(K, dtype=bool)
    duplicate = np.zeros(K, dtype=bool)
    late = np.zeros(K, dtype=bool)
    gap = np.zeros(K, dtype=np.int64)
    artifact = np.zeros((K, C), dtype=bool)
    missing = np.zeros((K, C), dtype=bool)
    t_applied = readings.t.astype(np.float64, copy=True)
    if K == 0:
        return StepReport(applied, duplicate, late, gap, artifact, missing, t_applied)

    order = np.lexsort((readings.seq, readings.t, readings.row))
    rows_sorted = readings.row[order]
    first = np.r_[True, rows_sorted[1:] != rows_sorted[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(K), 0))
    rank = np.empty(K, dtype=np.int64)
    rank[order] = np.arange(K) - group_start
    n_ranks = int(rank.max()) + 1

    for k in range(n_ranks):  # readings per patient in this batch, not patients
        sel = np.nonzero(rank == k)[0] if n_ranks > 1 else np.arange(K)
        r = readings.row[sel]
        # A batch with one reading for every twin, in order, works on the arrays themselves.
        whole = len(r) == len(states["t"]) and bool((r == np.arange(len(r))).all())
        s = states if whole else take(states, r)
        t = readings.t[sel]
        if readings.manual is not None:
            # an observation entered after the fact is applied at the twin's current time
            t = np.where(readings.manual[sel] & (t < s["t"]), s["t"], t)
            t_applied[sel] = t
        z = readings.z[sel]
        idx = np.arange(len(r))

        # Idempotence: the last applied sequence number per device lives in the twin itself, so a
        # redelivered reading after a failover is recognised even by another worker.
        dev = readings.device[sel]
        seq = readings.seq[sel]
        slots = s["device"]
        match = slots == dev[:, None]
        known = match.any(axis=1)
        empty = slots == 0
        slot = np.where(known, match.argmax(axis=1),
                        np.where(empty.any(axis=1), empty.argmax(axis=1),
                                 s["seq"].argmin(axis=1)))  # all taken: reuse the stalest
        last_seq = s["seq"][idx, slot]
        # A number at or below the device's last is a redelivery only if the reading is not
        # newer than the twin: a newer one comes from a device that restarted its numbering (a
        # reboot, a replaced unit), or after one forged huge number; treating those as
        # duplicates would freeze the twin for good.
        dup = known & (seq <= last_seq) & ~(t > s["t"])
        is_late = ~dup & (t < s["t"])  # NaN t (new twin) compares False
        if readings.not_before is not None:
            # older than the twin's history: late, whatever the device's numbering says
            too_old = t < readings.not_before[sel]
            dup &= ~too_old
            is_late |= too_old
        ok = ~dup & ~is_late
        # A jump in a device's numbering means readings were lost before they reached the twin:
        # count them, so a twin never looks complete when it is not.
        # (at most MAX_GAP per reading: a jump across the 64-bit range is not that many lost)
        skipped = np.where(known & ok, np.clip(seq - last_seq - 1, 0, MAX_GAP), 0)
        gap[sel] = skipped
        duplicate[sel] = dup
        late[sel] = is_late

        present = ~np.isnan(z)
        plausible = (z >= PLAUSIBLE_LOW) & (z <= PLAUSIBLE_HIGH)
        miss = present & ~plausible & ok[:, None]
        obs = present & plausible & ok[:, None]
        missing[sel] = miss

        dt_min = np.where(np.isnan(s["t"]), 0.0, np.maximum(t - s["t"], 0.0) / 60.0)
        fresh = obs & (np.isnan(s["last_obs"])
                       | (s["rejects"] >= params.max_consecutive_rejections)
                       | ((s["rejects"] >= 1)
                          & (t[:, None] - s["last_obs"] >= params.max_rejected_s)))
        r_var = measurement_var(readings.quality[sel], params)
        x, p, reject, use = _filter(s["x"], s["P"], dt_min, z, obs, fresh, r_var, params)
        artifact[sel] = reject
        trend.update(s, t, z, use, r_var, params)

        move = ok  # a reading with nothing believable still advances the clock
        np.copyto(s["x"], x, where=move[:, None, None])
        np.copyto(s["P"], p, where=move[:, None, None])
        s["t"][...] = np.where(move, t, s["t"])
        s["last_obs"][...] = np.where(use, t[:, None], s["last_obs"])
        s["raw"][...] = np.where(present & ok[:, None], z, s["raw"])
        s["rejects"][...] = np.where(reject, s["rejects"] + 1, np.where(use, 0, s["rejects"]))
        s["artifacts"] += reject.sum(axis=1).astype(np.uint32)
        s["missing"] += miss.sum(axis=1).astype(np.uint32)
        s["applied"] += move.astype(np.uint64)
        s["duplicates"] += dup.astype(np.uint32)
        s["late"] += is_late.astype(np.uint32)
        s["gaps"][...] = np.minimum(s["gaps"] + skipped.astype(np.uint64), _U32_MAX)
        q, b = readings.quality[sel], readings.battery[sel]
        s["quality"][...] = np.where(move & ~np.isnan(q), q, s["quality"])
        s["battery"][...] = np.where(move & ~np.isnan(b), b, s["battery"])
        for field_, given in (("obs_alert", readings.alert), ("obs_oxygen", readings.oxygen)):
            if given is not None:
                g = given[sel]
                rec = ok & ~np.isnan(g)
                s[field_][...] = np.where(rec, g, s[field_])
                s["obs_t"][...] = np.where(rec, t, s["obs_t"])
        s["device"][idx[ok], slot[ok]] = dev[ok]
        s["seq"][idx[ok], slot[ok]] = seq[ok]
        applied[sel] = move
        if checkpoint is not None:
            # ranks run in time order per twin, so the last copy is the one at or before `at`
            at_or_before = t <= checkpoint[0][r]
            if at_or_before.any():
                put(checkpoint[1], r[at_or_before], take(s, idx[at_or_before]))
        if not whole:
            put(states, r, s)
    return StepReport(applied, duplicate, late, gap, artifact, missing, t_applied)


@dataclass(frozen=True)
class Outputs:
    """What the twin says about K patients at given times.

    estimate, sd: `(K, C)` (NaN for a channel never observed); forecast, low90, high90:
    `(K, H, C)` at the forecast horizons (`FORECAST_MINUTES` unless asked); news2, news2_raw:
    `(K,)` int on the estimates and on the last raw values (a last value outside the plausibility
    limits, e.g. a sensor-off zero, scores nothing for its parameter); components `(K, 7)`;
    complete `(K,)` bool; band `(K,)` int; age_s `(K, C)` seconds since each channel was last
    believed; map, map_sd, shock_index, shock_index_sd: `(K,)` derived (NaN when an input is
    unknown); minutes_to_band `(K, C)`: when the forecast mean crosses into a worse NEWS2 score
    within an hour (NaN: not within the hour); slope, slope_sd `(K, C)`: each channel's drift
    trend per hour and its SD (NaN: no trend yet); p_trigger `(K,)`: the probability that NEWS2
    meets a response trigger (a red parameter, or 5 or more) `trend.HORIZON_MIN` from now if the
    trends go on (`twin.trend`); p_steady `(K,)`: the same with every channel held where it is
    (the uncertainty alone, no slope).
    """

    estimate: np.ndarray
    sd: np.ndarray
    forecast: np.ndarray
    low90: np.ndarray
    high90: np.ndarray
    news2: np.ndarray
    news2_raw: np.ndarray
    components: np.ndarray
    complete: np.ndarray
    band: np.ndarray
    age_s: np.ndarray
    map: np.ndarray
    map_sd: np.ndarray
    shock_index: np.ndarray
    shock_index_sd: np.ndarray
    minutes_to_band: np.ndarray
    slope: np.ndarray
    slope_sd: np.ndarray
    p_trigger: np.ndarray
    p_steady: np.ndarray


def _spo2_moments(level: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of odc(PaO2) for PaO2 ~ N(level, var), by the unscented transform. `(K,)`."""
    w = ukf.weights(1)
    sig = ukf.sigma_points(level[:, None], np.maximum(var, 1e-12)[:, None, None], w)
    y = odc(sig[..., 0])  # (K, 3)
    mean = y @ w.wm
    return mean, np.sqrt(np.maximum(((y - mean[:, None]) ** 2) @ w.wc, 0.0))


def _channels(x: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """Estimate, SD and 90 % interval per channel in clinical units.

    x: `(K, C, 2)`; p: `(K, C, 3)`. Returns four `(K, C)` arrays."""
    est = x[..., 0].copy()
    sd = np.sqrt(np.maximum(p[..., 0], 0.0))
    lo, hi = est - Z90 * sd, est + Z90 * sd
    m, s = _spo2_moments(x[:, SPO2, 0], p[:, SPO2, 0])
    # The curve is monotone, so the latent's quantiles map exactly to SpO2 quantiles.
    lo[:, SPO2] = odc(x[:, SPO2, 0] - Z90 * sd[:, SPO2])
    hi[:, SPO2] = odc(x[:, SPO2, 0] + Z90 * sd[:, SPO2])
    est[:, SPO2], sd[:, SPO2] = m, s
    return est, sd, lo, hi


def _minutes_to_band(x: np.ndarray, params: ModelParams, horizon: float = 60.0) -> np.ndarray:
    """Minutes until each channel's forecast mean enters a worse NEWS2 score. `(K, C)`.

    x: `(K, C, 2)`. The mean fast level moves monotonically from `L` towards the slow level `u`,
    `L(h) = u + (L - u) exp(-kappa h)`, so it can cross only the edges between the two."""
    K = x.shape[0]
    out = np.full((K, C), np.nan)
    for ch, param in news2.CHART.items():  # five channels, not patients
        c = INDEX[ch]
        kappa = params.fast_reversion[c]
        edges = param.continuous_edges()
        level, slow = x[:, c, 0], x[:, c, 1]
        # the latent moves as above; compare it with the edges mapped through the curve
        e = odc_inverse(np.asarray(edges)) if c == SPO2 else np.asarray(edges, dtype=float)
        now_score = news2.score_values(ch, odc(level) if c == SPO2 else level)
        dev = (level - slow)[:, None]  # (K, 1)
        # e = u + d exp(-kappa h)  =>  h = -ln((e - u) / d) / kappa, for a ratio in (0, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (e[None, :] - slow[:, None]) / dev
            h = np.where((ratio > 0) & (ratio < 1), -np.log(ratio) / kappa, np.inf)
        beyond = e[None, :] - np.sign(dev) * 1e-3  # just past the edge, on the way to u
        after = news2.score_values(ch, odc(beyond) if c == SPO2 else beyond)
        h = np.where(after > now_score[:, None], h, np.inf)
        best = h.min(axis=1)
        out[:, c] = np.where(best <= horizon, best, np.nan)
    return out


def outputs(
    states: State,
    now: np.ndarray,
    params: ModelParams,
    on_oxygen: np.ndarray | None = None,
    alert: np.ndarray | None = None,
    spo2_scale: np.ndarray | int | None = None,
    horizons: np.ndarray = FORECAST_MINUTES,
) -> Outputs:
    """Estimates, forecasts and NEWS2 for K twins at times `now (K,)` epoch s.

    on_oxygen, alert: `(K,)` float (NaN: no manual observation yet, so NEWS2 is incomplete);
    default: the twins' latest manual observations. spo2_scale: 1, 2 or `(K,)`; default: the
    twins' scale from the registry. horizons: `(H,)` minutes ahead of the forecasts (forecast,
    low90, high90 are then `(K, H, C)`).
    """
    K = states["t"].shape[0]
    never = np.isnan(states["last_obs"])
    dt_min = np.where(np.isnan(states["t"]), 0.0, np.maximum(now - states["t"], 0.0) / 60.0)
    x, p = kalman.predict_pair(states["x"], states["P"], *transition(dt_min, params))
    est, sd, _, _ = _channels(x, p)
    est[never] = np.nan
    sd[never] = np.nan

    H = len(horizons)
    fc, lo, hi = (np.empty((K, H, C)) for _ in range(3))
    for j, h in enumerate(horizons):  # a few horizons, not patients
        xh, ph = kalman.predict_pair(x, p, *transition(np.full(K, h), params))
        fc[:, j], _, lo[:, j], hi[:, j] = _channels(xh, ph)
    for arr in (fc, lo, hi):
        arr[np.broadcast_to(never[:, None, :], arr.shape)] = np.nan

    oxy = states["obs_oxygen"].astype(float) if on_oxygen is None else on_oxygen
    alrt = states["obs_alert"].astype(float) if alert is None else alert
    if spo2_scale is None:
        spo2_scale = states["spo2_scale"]

    def score(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return news2.news2(v[:, INDEX["rr"]], v[:, INDEX["spo2"]], v[:, INDEX["temp"]],
                           v[:, INDEX["sbp"]], v[:, INDEX["hr"]], oxy, alrt, spo2_scale)

    total, comp, complete = score(est)
    raw = states["raw"]
    raw_ok = np.where((raw >= PLAUSIBLE_LOW) & (raw <= PLAUSIBLE_HIGH), raw, np.nan)
    total_raw, _, _ = score(raw_ok)
    age = np.where(never, np.nan, now[:, None] - states["last_obs"])

    sbp, dbp, hr = (INDEX[c] for c in ("sbp", "dbp", "hr"))
    # MAP = DBP + (SBP - DBP) / 3 = SBP / 3 + 2 DBP / 3; the two pressures' errors correlate
    # (`ModelParams.bp_correlation`), so the covariance term counts.
    mean_ap = est[:, dbp] + (est[:, sbp] - est[:, dbp]) / 3.0
    a, b = sd[:, sbp] / 3.0, 2.0 * sd[:, dbp] / 3.0
    map_sd = np.sqrt(a * a + b * b + 2.0 * params.bp_correlation * a * b)
    # Shock index = HR / SBP, SD by the delta method.
    si = est[:, hr] / est[:, sbp]
    si_sd = np.abs(si) * np.sqrt((sd[:, hr] / est[:, hr]) ** 2 + (sd[:, sbp] / est[:, sbp]) ** 2)
    mtb = _minutes_to_band(x, params)
    mtb[never] = np.nan
    slope, slope_sd, t_mean, t_sd, steady = trend.forecast(states, now, trend.HORIZON_MIN, params)
    p_trigger = trend.trigger_probability(t_mean, t_sd, oxy, alrt, spo2_scale)
    p_steady = trend.trigger_probability(steady, t_sd, oxy, alrt, spo2_scale)
    return Outputs(est, sd, fc, lo, hi, total, total_raw, comp, complete,
                   news2.band(total, comp), age, mean_ap, map_sd, si, si_sd, mtb, slope,
                   slope_sd, p_trigger, p_steady)
