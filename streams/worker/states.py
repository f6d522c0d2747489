"""A batch's twin.state messages and their InfluxDB points, written straight from its arrays.

At one reading a message every reading makes a twin.state: building each as a `TwinState` (a
dozen dicts of floats, three `Forecast`s) and encoding it cost the worker's main thread 45-85 us a
state, a quarter of its time at 10,000 patients (docs/performance.md). Every state of a batch has
the same layout, so the JSON is a fixed template with the values between its pieces: the values
of all the batch's states are encoded by msgspec in one call, as a `(K, slots)` list of lists,
cut into tokens, and each message is its template pieces and its tokens joined. The bytes are
the ones `messages.encode` makes of the same `TwinState` (tests/streams/test_states.py encodes
the decoded message again and compares), and the `twin` point reuses the value tokens.

Strings are never cut from the encoded batch (an id could hold a comma): the patient id, the band
and the rejected channels are encoded one by one into their slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec
import numpy as np

from streams.messages import TWIN_STATE_SCHEMA, TwinState, decode_twin_state, utc
from twin import bank, news2
from twin.channels import NAMES, UNITS, C

_enc = msgspec.json.encode
_DERIVED = ("map", "map_sd", "shock_index", "shock_index_sd")
_COUNTS = ("spo2_scale", "readings_applied", "artifacts", "missing", "duplicates", "late",
           "sequence_gaps")
_COUNT_FIELDS = ("spo2_scale", "applied", "artifacts", "missing", "duplicates", "late", "gaps")


def _layout() -> tuple[list[bytes], dict[str, int]]:
    """The template: pieces[0] slot0 pieces[1] slot1 ... pieces[-1], and where each named slot
    is. The order is `TwinState`'s field order (msgspec encodes a struct's fields in it)."""
    pieces: list[bytes] = []
    slots: dict[str, int] = {}
    lit = [b'{"schema":' + _enc(TWIN_STATE_SCHEMA) + b',"patient_id":']

    def slot(name: str) -> None:
        slots[name] = len(pieces)
        pieces.append(b"".join(lit))
        lit.clear()

    def channels(prefix: str, keys: Sequence[str] = NAMES) -> None:
        for j, k in enumerate(keys):
            lit.append((b"{" if j == 0 else b",") + _enc(k) + b":")
            slot(f"{prefix}{j}")
        lit.append(b"}")

    slot("patient_id")
    for name in ("ts", "applied_at", "history_lost_at"):
        lit.append(b',"' + name.encode() + b'":')
        slot(name)
    lit.append(b',"units":' + _enc(UNITS))
    for name in ("estimate", "sd", "raw", "age_s"):
        lit.append(b',"' + name.encode() + b'":')
        channels(name)
    lit.append(b',"forecasts":[')
    for h, minutes in enumerate(bank.FORECAST_MINUTES.tolist()):
        lit.append((b"," if h else b"") + b'{"minutes":' + _enc(int(minutes)))
        for name in ("estimate", "low90", "high90"):
            lit.append(b',"' + name.encode() + b'":')
            channels(f"f{h}{name}")
        lit.append(b"}")
    lit.append(b'],"derived":')
    channels("derived", _DERIVED)
    lit.append(b',"minutes_to_band":')
    channels("to_band")
    for name in ("news2", "news2_raw", "news2_complete", "news2_band", "sepsis_risk",
                 "training"):
        lit.append(b',"' + name.encode() + b'":')
        slot(name)
    lit.append(b',"news2_components":')
    channels("component", news2.COMPONENTS)
    for name in ("rejected", "consciousness_alert", "on_oxygen", "observed_at", *_COUNTS,
                 "battery", "quality"):
        lit.append(b',"' + name.encode() + b'":')
        slot(name)
    lit.append(b"}")
    pieces.append(b"".join(lit))
    return pieces, slots


_PIECES, _SLOT = _layout()
_N = len(_PIECES) - 1
_BAND_TOKENS = [_enc(name) for name in news2.BAND_NAMES]
_EST = [_SLOT[f"estimate{j}"] for j in range(C)]
_SD = [_SLOT[f"sd{j}"] for j in range(C)]
_DERIVED_SLOTS = [(f"{k}=".encode(), _SLOT[f"derived{j}"]) for j, k in enumerate(_DERIVED)]
_LINE_CHANNELS = [(f"{ch}_est=".encode(), f",{ch}_sd=".encode(), e, d)
                  for ch, e, d in zip(NAMES, _EST, _SD, strict=True)]
_NEWS2, _NEWS2_RAW, _COMPLETE, _SEPSIS = (_SLOT[k] for k in ("news2", "news2_raw",
                                                               "news2_complete", "sepsis_risk"))


@dataclass(frozen=True, slots=True)
class StateOut:
    """One twin.state message ready to go: patient_id, ts (its latest applied reading, epoch s),
    band (NEWS2 band name), lost (when the broker lost its history, epoch s; None: never), data
    (the message's JSON) and line (its InfluxDB `twin` point; None when not asked for)."""

    patient_id: str
    ts: float
    band: str
    lost: float | None
    data: bytes
    line: str | None

    def decoded(self) -> TwinState:
        return decode_twin_state(self.data)


# Forecasts and their 90 % bands to a tenth of each channel's unit (/min, %, mm[Hg], Cel): a
# band is several units wide, so more digits are noise, which the broker keeps and compresses
# worst of all the message (54 of its ~130 numbers).
FORECAST_DECIMALS = 1


def _floats(col: np.ndarray, a: np.ndarray, decimals: int = 3) -> None:
    """Rounded to `decimals` (float32 fields widened first, so a stored 0.95 comes out as 0.95),
    None where NaN or infinite (JSON has neither), into the object columns `col`."""
    a = a.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # a huge value rounds to inf: null
        r = np.round(a, decimals)
    col[...] = r
    col[~np.isfinite(r)] = None


def _times(ts: list[float | None]) -> list:
    return [None if t is None else utc(t) for t in ts]


def encode_states(pids: list[str], s: bank.State, out: bank.Outputs, rows: np.ndarray,
                  applied_at: list[float | None] | None = None,
                  history_lost_at: list[float | None] | None = None,
                  p_risk: np.ndarray | None = None, training: bool = False,
                  lines: bool = True) -> list[StateOut]:
    """The twin.state messages of `pids`, which are rows `rows` `(K,)` of the batch's states `s`
    and outputs `out`; applied_at: K times their latest readings were applied (the worker's
    clock; None: not known); history_lost_at: K times the broker lost their stored history
    (None: never); p_risk: `(N,)` the twin's sepsis risk over the batch (None: not computed);
    lines: also each state's InfluxDB point (a worker without a sink leaves them out: a fifth of
    the cost)."""
    K = len(pids)
    if K == 0:
        return []
    S = _SLOT
    v = np.empty((K, _N), dtype=object)

    def take(a: np.ndarray) -> np.ndarray:
        return a[rows]

    for name, a in (("estimate", out.estimate), ("sd", out.sd), ("raw", s["raw"]),
                    ("age_s", out.age_s), ("to_band", out.minutes_to_band)):
        _floats(v[:, S[f"{name}0"]:S[f"{name}0"] + C], take(a))
    for h in range(len(bank.FORECAST_MINUTES)):
        for name, a in (("estimate", out.forecast), ("low90", out.low90),
                        ("high90", out.high90)):
            first = S[f"f{h}{name}0"]
            _floats(v[:, first:first + C], take(a)[:, h], FORECAST_DECIMALS)
    _floats(v[:, S["derived0"]:S["derived0"] + len(_DERIVED)], np.stack(
        [take(out.map), take(out.map_sd), take(out.shock_index), take(out.shock_index_sd)],
        axis=1))
    _floats(v[:, S["battery"]], take(s["battery"]))
    _floats(v[:, S["quality"]], take(s["quality"]))
    if p_risk is None:
        v[:, S["sepsis_risk"]] = None
    else:
        _floats(v[:, S["sepsis_risk"]], take(p_risk))
    first = S["component0"]
    v[:, first:first + len(news2.COMPONENTS)] = take(out.components).astype(np.int64)
    for name, a in (("news2", out.news2), ("news2_raw", out.news2_raw),
                    *zip(_COUNTS, (s[f] for f in _COUNT_FIELDS), strict=True)):
        v[:, S[name]] = take(a).astype(np.int64)
    v[:, S["news2_complete"]] = take(out.complete).astype(bool)
    v[:, S["training"]] = bool(training)
    for name, field in (("consciousness_alert", "obs_alert"), ("on_oxygen", "obs_oxygen")):
        a = take(s[field])
        col = v[:, S[name]]
        col[...] = a == 1
        col[np.isnan(a)] = None
    t = take(s["t"]).tolist()
    ts = _times(t)
    v[:, S["ts"]] = ts
    v[:, S["applied_at"]] = _times(applied_at or [None] * K)
    v[:, S["history_lost_at"]] = _times(history_lost_at or [None] * K)
    obs_t = np.round(take(s["obs_t"]).astype(np.float64), 3)  # as the message has long had it
    v[:, S["observed_at"]] = _times(np.where(np.isnan(obs_t), None, obs_t).tolist())
    # the string slots: None here, their tokens set one by one below
    for name in ("patient_id", "news2_band", "rejected"):
        v[:, S[name]] = None

    # One encoding for the batch; no value holds "[", "]" or "," (strings are not here).
    rows_json = _enc(v.tolist())[2:-2].split(b"],[")
    bands = take(out.band).astype(np.int64).tolist()
    rejected = take(s["rejects"]) != 0
    any_rejected = rejected.any(axis=1).tolist()
    pieces, n = _PIECES, _N
    i_pid, i_band, i_rej = S["patient_id"], S["news2_band"], S["rejected"]
    result = []
    for k, pid in enumerate(pids):
        tokens = rows_json[k].split(b",")
        assert len(tokens) == n
        tokens[i_pid] = _enc(pid)
        tokens[i_band] = _BAND_TOKENS[bands[k]]
        tokens[i_rej] = _enc([ch for ch, r in zip(NAMES, rejected[k].tolist(), strict=True)
                              if r]) if any_rejected[k] else b"[]"
        joined = [b""] * (2 * n + 1)
        joined[0::2] = pieces
        joined[1::2] = tokens
        result.append(StateOut(pid, t[k], news2.BAND_NAMES[bands[k]],
                               None if history_lost_at is None else history_lost_at[k],
                               b"".join(joined), _line(pid, tokens, ts[k]) if lines else None))
    return result


def _line(pid: str, tokens: list[bytes], ts: datetime) -> str:
    """A state's InfluxDB `twin` point from its message's number tokens (ASCII, as line protocol
    writes them)."""
    fields = [pre_e + tokens[e] + pre_s + tokens[d] for pre_e, pre_s, e, d in _LINE_CHANNELS
              if tokens[e] != b"null" and tokens[d] != b"null"]
    fields.append(b"news2=" + tokens[_NEWS2] + b"i,news2_raw=" + tokens[_NEWS2_RAW] +
                  b"i,news2_complete=" + tokens[_COMPLETE])
    fields.extend(key + tokens[j] for key, j in _DERIVED_SLOTS if tokens[j] != b"null")
    if tokens[_SEPSIS] != b"null":
        fields.append(b"sepsis_risk=" + tokens[_SEPSIS])
    return (f"twin,patient_id={pid} {b','.join(fields).decode()} "
            f"{round(ts.timestamp() * 1e6) * 1000}")


def twin_states(pids: list[str], s: bank.State, out: bank.Outputs, rows: np.ndarray,
                applied_at: list[float | None] | None = None,
                history_lost_at: list[float | None] | None = None,
                p_risk: np.ndarray | None = None, training: bool = False) -> list[TwinState]:
    """`encode_states`, decoded: the batch's twin.state messages as `TwinState`s."""
    return [o.decoded() for o in encode_states(pids, s, out, rows, applied_at, history_lost_at,
                                               p_risk, training)]
