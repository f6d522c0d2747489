"""Late readings applied in time order: a checkpoint of each twin's past and the readings since.

A wearable's gateway may hold a message back and deliver it seconds late. A Kalman filter cannot
take an update back, so to apply a late reading in its place each twin keeps a short past: a
*base*, a copy of the twin as it was at an earlier time, and every reading applied since. A
reading older than the twin but within `tolerance_s` of it rewinds the twin to its base and
replays the buffered readings and the late one together, in time order, in the same vectorised
`bank.step` as the rest of the batch. The twin that comes out is the twin the readings would have
made in time order. An older reading is counted late and skipped, as without a tolerance.

The base stays more than `tolerance_s` behind the twin, so every reading within the tolerance is
later than it. When it falls 1.5 x tolerance behind, it moves up to a tolerance behind the
twin's newest reading, and the readings up to there leave the buffer, so a twin holds at most
1.5 x tolerance of readings: at a reading a second and 30 s, about 3.1 KB beside its 475-byte
state. A base that moves to where the twin already is, or beyond, is copied from the twin as
the step passes that time (a batch from a backlog, spanning more than the tolerance); one that
moves less far has the buffered readings applied to it again. Everything here works on flat
arrays grouped by twin; no loop runs over patients.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import numpy as np

from twin import bank
from twin.channels import C
from twin.model import ModelParams

READING_DTYPE = np.dtype([
    ("t", "f8"),  # as applied (a manual observation's may be later than it was taken)
    ("seq", "i8"),
    ("device", "u8"),
    ("z", "f4", (C,)),
    ("quality", "f4"),
    ("battery", "f4"),
    ("alert", "f4"),
    ("oxygen", "f4"),
    ("manual", "?"),
])
"""One buffered reading, as `bank.Readings` holds it. Values and quality are float32: `step`
rounds every reading's to float32 before it is applied the first time (7 significant digits,
beyond any monitor's), so a replay reproduces the original updates exactly at half the size."""

_HEADER = struct.Struct("<BI")  # version, buffered readings
_VERSION = 1
HEADER_BYTES = _HEADER.size
ROLL_AT = 1.5  # the base moves up once it is this many tolerances behind the twin

# Fields a rewind keeps from the twin as it is rather than from the base: counts of readings
# that were never applied (so not in the buffer to be counted again), the band last reported
# (alerts compare against what was said), and the registry's SpO2 scale.
_KEEP = ("duplicates", "late", "band", "spo2_scale")


@dataclass(frozen=True)
class History:
    """The past of the N twins of a `bank.State`.

    base: `bank.State` of N twins, each as it was before its buffered readings (t NaN: the twin
    before any reading); buf_row: `(B,)` int64 twin of each buffered reading, non-decreasing;
    buf: `(B,)` READING_DTYPE, each twin's in (t, seq) order, all later than its base.
    """

    base: bank.State
    buf_row: np.ndarray
    buf: np.ndarray


def start(states: bank.State) -> History:
    """A history that begins at the twins as they are, with no readings buffered."""
    return History({f: a.copy() for f, a in states.items()}, np.zeros(0, np.int64),
                   np.zeros(0, READING_DTYPE))


def block_size(data: bytes, offset: int = 0) -> int:
    """The size of the history block at `offset` of `data` (0: there is none there)."""
    if len(data) < offset + HEADER_BYTES or data[offset] != _VERSION:
        return 0
    _, k = _HEADER.unpack_from(data, offset)
    try:
        base = bank.record_bytes(data, offset + HEADER_BYTES)
    except ValueError:
        return 0
    return HEADER_BYTES + base + k * READING_DTYPE.itemsize


def decode(blocks: list[bytes | None], states: bank.State) -> History:
    """The history of the N twins of `states` from their blocks (`encode`); a None or empty
    block (a new twin, or a record kept without history) starts at the twin as it is.

    Raises ValueError for a block of another version or the wrong size.
    """
    n = len(blocks)
    counts = np.zeros(n, np.int64)
    bases, bufs = [], []
    for i, b in enumerate(blocks):
        if not b:
            continue
        if block_size(b) != len(b):
            raise ValueError(f"twin history block of an unknown version or size (expected "
                             f"version {_VERSION})")
        counts[i] = _HEADER.unpack_from(b)[1]
        end = HEADER_BYTES + bank.record_bytes(b, HEADER_BYTES)
        bases.append(b[HEADER_BYTES:end])
        bufs.append(b[end:])
    base = {f: a.copy() for f, a in states.items()}
    if bases:
        had = np.flatnonzero([bool(b) for b in blocks])
        bank.put(base, had, bank.from_bytes(bases))
    buf = np.frombuffer(b"".join(bufs), READING_DTYPE).copy() if bufs else \
        np.zeros(0, READING_DTYPE)
    return History(base, np.repeat(np.arange(n), counts), buf)


def encode(h: History, n: int) -> list[bytes]:
    """Each of the n twins' history as one block: a header, its base, its readings."""
    k = np.bincount(h.buf_row, minlength=n).tolist()
    bases = bank.to_bytes(h.base)
    buf = h.buf.tobytes()
    size = READING_DTYPE.itemsize
    out, at = [], 0
    for base, ki in zip(bases, k, strict=True):
        out.append(_HEADER.pack(_VERSION, ki) + base + buf[at:at + ki * size])
        at += ki * size
    return out


def _readings(buf: np.ndarray, row: np.ndarray) -> bank.Readings:
    """Buffered readings `(B,)` of twins `row (B,)` as a `bank.Readings`."""
    return bank.Readings(
        row=row, t=buf["t"].copy(), z=buf["z"].astype(np.float64),
        quality=buf["quality"].astype(np.float64),
        battery=buf["battery"].astype(np.float64), device=buf["device"].copy(),
        seq=buf["seq"].copy(), alert=buf["alert"].astype(np.float64),
        oxygen=buf["oxygen"].astype(np.float64), manual=buf["manual"].copy())


def _buffered(r: bank.Readings, t: np.ndarray) -> np.ndarray:
    """Readings `(K,)` applied at times `t (K,)` -> `(K,)` READING_DTYPE."""
    out = np.empty(r.row.shape[0], READING_DTYPE)
    out["t"], out["seq"], out["device"], out["z"] = t, r.seq, r.device, r.z
    out["quality"], out["battery"] = r.quality, r.battery
    out["alert"] = np.nan if r.alert is None else r.alert
    out["oxygen"] = np.nan if r.oxygen is None else r.oxygen
    out["manual"] = False if r.manual is None else r.manual
    return out


def _concat(parts: list[bank.Readings]) -> bank.Readings:
    """The readings of `parts`, one after another (optional fields filled where one has none)."""
    fill = {"alert": np.nan, "oxygen": np.nan, "manual": False, "not_before": np.nan}
    out = {}
    for f in ("row", "t", "z", "quality", "battery", "device", "seq", *fill):
        given = [getattr(p, f) for p in parts]
        out[f] = None if all(g is None for g in given) else np.concatenate([
            np.full(p.row.shape[0], fill[f]) if g is None else g
            for p, g in zip(parts, given, strict=True)])
    return bank.Readings(**out)


def membership_key(row: np.ndarray, device: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """One 64-bit key per (twin, device, sequence number) `(K,)`, for membership tests (a
    false match needs a 64-bit collision)."""
    with np.errstate(over="ignore"):
        return (device.astype(np.uint64) ^ (seq.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
                ^ (row.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)))


def _t(a: np.ndarray) -> np.ndarray:
    """Times with NaN (the twin before any reading) as minus infinity, for ordering."""
    return np.where(np.isnan(a), -np.inf, a)


@dataclass(frozen=True)
class Step:
    """What `step` did: the bank's report for the given readings, the new history, and how many
    of the readings arrived late but within the tolerance and were applied in time order."""

    report: bank.StepReport
    history: History
    reordered: int


def step(states: bank.State, h: History, readings: bank.Readings, params: ModelParams,
         tolerance_s: float) -> Step:
    """`bank.step` with late readings within `tolerance_s` seconds of their twin applied in time
    order (the twin rewound to its base and replayed); `states` is updated in place.

    states: N twins; h: their history; readings: K new readings (values and quality are rounded
    to float32, see `READING_DTYPE`). One `bank.step` call advances the twins, replays the
    rewound ones and copies the bases that move up to where it passes; a second moves up the
    other bases that fell too far behind. The report covers exactly the K given readings, in
    their order.
    """
    N = states["t"].shape[0]
    readings = replace(readings, z=readings.z.astype(np.float32).astype(np.float64),
                       quality=readings.quality.astype(np.float32).astype(np.float64))
    row, t = readings.row, readings.t
    tc = states["t"][row]
    base_t = _t(h.base["t"])
    # A reading at or before the base cannot be put in its place: late.
    not_before = np.maximum(tc - tolerance_s, np.nextafter(base_t[row], np.inf))
    manual = np.zeros(row.shape[0], bool) if readings.manual is None else readings.manual
    # A reading the buffer holds is a redelivery: a duplicate, however old (the bank tells by
    # the device's numbering). Manual observations are entered after the fact and apply at the
    # twin's time: never late.
    # Only readings older than their twin can be either; in a steady stream there are none,
    # so the buffer's keys are not even computed.
    older = np.flatnonzero(t < tc)
    again = np.zeros(row.shape[0], bool)
    if len(older):
        again[older] = np.isin(
            membership_key(row[older], readings.device[older], readings.seq[older]),
            membership_key(h.buf_row, h.buf["device"], h.buf["seq"]))
    not_before[again | manual] = np.nan
    within = ~manual & ~again & (t < tc) & (t >= not_before)
    first = np.full(N, np.inf)  # each twin's earliest late reading
    np.minimum.at(first, row[within], t[within])
    rewind = np.isfinite(first)
    # Bases 1.5 tolerances behind move up to one tolerance behind (and before any late reading
    # of this batch): their buffered readings older than that are applied to them.
    ahead = np.full(N, np.nan)
    np.fmax.at(ahead, row, t)
    t_next = np.fmax(states["t"], ahead)
    # a twin's first base is the twin before any reading: measured from its first reading
    oldest = _firsts(N, h.buf_row, h.buf["t"])
    since = np.where(np.isnan(h.base["t"]), oldest, h.base["t"])
    roll = t_next - since >= ROLL_AT * tolerance_s  # NaN: no
    cut = t_next - tolerance_s
    # A base that moves up to a time at or after its twin's, with nothing to replay, is copied
    # from the twin as this step passes that time (`bank.step`'s checkpoint): its buffered
    # readings all leave, and new readings up to the cut go into the base instead of the buffer.
    # Other bases apply their buffered readings again. A batch from a backlog spans more than
    # the tolerance, so there the twin step is not done twice.
    capture = roll & ~rewind & (cut >= _t(states["t"]))
    rolled = (roll[h.buf_row] & (h.buf["t"] <= cut[h.buf_row])
              & (h.buf["t"] < first[h.buf_row]))
    reapply = rolled & ~capture[h.buf_row]
    base = h.base
    if rolled.any() or capture.any():
        base = {f: a.copy() for f, a in base.items()}
    if reapply.any():
        rows_b = np.flatnonzero(roll & ~capture)
        moved = bank.take(base, rows_b)
        at = np.full(N, -1)
        at[rows_b] = np.arange(len(rows_b))
        bank.step(moved, _readings(h.buf[reapply], at[h.buf_row[reapply]]), params)
        bank.put(base, rows_b, moved)
    checkpoint = None
    if capture.any():
        rows_c = np.flatnonzero(capture)
        bank.put(base, rows_c, bank.take(states, rows_c))
        checkpoint = (np.where(capture, cut, np.nan), base)
    # Twins with a late reading go back to their base and replay what they applied since.
    replayed = rewind[h.buf_row] & ~rolled
    if rewind.any():
        rows_r = np.flatnonzero(rewind)
        kept = {f: states[f][rows_r].copy() for f in _KEEP}
        bank.put(states, rows_r, bank.take(base, rows_r))
        for f, a in kept.items():
            states[f][rows_r] = a

    R = int(replayed.sum())
    batch = replace(readings, not_before=not_before)
    if R:
        batch = _concat([_readings(h.buf[replayed], h.buf_row[replayed]), batch])
    report = bank.step(states, batch, params, checkpoint)
    mine = bank.StepReport(*(getattr(report, f)[R:]
                             for f in bank.StepReport.__dataclass_fields__))

    # The buffer: what was neither replayed nor moved into a base, what the replay applied
    # again, and the new readings that were applied after their twin's base.
    stay = ~replayed & ~rolled
    stay[np.flatnonzero(replayed)[report.applied[:R]]] = True
    new = mine.applied & ~(capture[row] & (mine.t <= cut[row]))
    buf = np.concatenate([h.buf[stay], _buffered(readings, mine.t)[new]])
    buf_row = np.concatenate([h.buf_row[stay], row[new]])
    order = _order(buf_row, buf["t"], buf["seq"])
    return Step(mine, History(base, buf_row[order], buf[order]),
                int((within & mine.applied).sum()))


def _firsts(n: int, row: np.ndarray, t: np.ndarray) -> np.ndarray:
    """`(n,)` each twin's earliest buffered time (NaN: none), from a buffer in (row, t) order
    (`History`): the first entry of each twin's run. (`np.fmin.at` over the buffer was 8 ms of
    a 5,000-twin batch.)"""
    out = np.full(n, np.nan)
    if len(row):
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        out[row[starts]] = t[starts]
    return out


def _order(row: np.ndarray, t: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """The permutation that sorts the buffer by (row, t, seq), stably: `np.lexsort`'s. The
    buffer is the sorted one of the last step with this batch's readings after it, which in a
    steady stream are each later than their twin's buffered ones: a stable sort by row alone
    (two sorted runs, merged in one pass) is then already in order, checked in one pass; the
    three-key lexsort (23 ms of a 5,000-twin batch, 40 readings each) only when it is not."""
    order = np.argsort(row, kind="stable")
    r, tt, sq = row[order], t[order], seq[order]
    same = r[1:] == r[:-1]
    back = (tt[1:] < tt[:-1]) | ((tt[1:] == tt[:-1]) & (sq[1:] < sq[:-1]))
    if not (same & back).any():
        return order
    return np.lexsort((seq, t, row))
