"""Malformed device messages on purpose, one generator per kind of mistake devices make.

Each kind is named by the dead-letter `kind` the stream processor must give it
(`streams.messages.decode_readings`), so a test can check that every kind sent is dead-lettered
with the right reason. No generated message contains a newline (the JSONL file output stays one
message per line).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from streams.messages import MAX_MESSAGE_BYTES, READING_SCHEMA


def _good(patient_id: str, device_id: str, seq: int, ts: str) -> dict[str, object]:
    return {"schema": READING_SCHEMA, "device_id": device_id, "patient_id": patient_id,
            "seq": seq, "ts": ts, "values": {"hr": {"value": 80, "unit": "/min"}}}


def _dump(d: object) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


def _not_json(d: dict[str, object], rng: np.random.Generator) -> bytes:
    # A truncated upload: the first part of a valid message.
    raw = _dump(d)
    return raw[: int(rng.integers(5, len(raw) - 5))]


def _wrong_type(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["seq"] = str(d["seq"])
    return _dump(d)


def _missing_field(d: dict[str, object], rng: np.random.Generator) -> bytes:
    del d[str(rng.choice(["device_id", "patient_id", "seq", "ts"]))]
    return _dump(d)


def _unknown_channel(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["values"] = {"glucose": {"value": 5.4, "unit": "mmol/L"}}
    return _dump(d)


def _impossible_value(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["values"] = {"hr": {"value": float(rng.choice([-20.0, 999.0])), "unit": "/min"}}
    return _dump(d)


def _wrong_unit(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["values"] = {"temp": {"value": 37.2, "unit": "K"}}
    return _dump(d)


def _wrong_schema(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["schema"] = "patient-twin.reading/9"
    return _dump(d)


def _oversized(d: dict[str, object], rng: np.random.Generator) -> bytes:
    d["firmware_log"] = "x" * (MAX_MESSAGE_BYTES + 1)
    return _dump(d)


def _empty(d: dict[str, object], rng: np.random.Generator) -> bytes:
    return b""


KINDS: dict[str, Callable[[dict[str, object], np.random.Generator], bytes]] = {
    "not_json": _not_json,
    "wrong_type": _wrong_type,
    "missing_field": _missing_field,
    "unknown_channel": _unknown_channel,
    "impossible_value": _impossible_value,
    "wrong_unit": _wrong_unit,
    "wrong_schema": _wrong_schema,
    "oversized": _oversized,
    "empty": _empty,
}


def make(kind: str, rng: np.random.Generator, *, patient_id: str, device_id: str, seq: int,
         ts: str) -> bytes:
    """One malformed message of `kind` (a key of KINDS)."""
    return KINDS[kind](_good(patient_id, device_id, seq, ts), rng)
