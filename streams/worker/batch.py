"""Valid readings as one columnar batch (`Batch`), the twin step's input.

Built in the worker's decoding child (`streams.worker.decoder`), which imports only this, the
message schemas and the device hashes of the twin: not the filtering core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from streams.messages import ValidReading
from twin.channels import INDEX, C
from twin.devices import device_hash
from twin.readings import Readings


@dataclass(frozen=True)
class Batch:
    """Valid readings as arrays: pids, the batch's patients in order of first reading; readings,
    K readings whose `row` indexes pids (`Readings`, in arrival order)."""

    pids: list[str]
    readings: Readings


def select(b: Batch, mask: np.ndarray) -> Batch:
    """The readings of `b` where `mask (K,)` is True, with only their patients."""
    r = b.readings
    used, row = np.unique(r.row[mask], return_inverse=True)
    return Batch([b.pids[i] for i in used.tolist()], Readings(**{
        f: row if f == "row" else None if (v := getattr(r, f)) is None else v[mask]
        for f in r.__dataclass_fields__}))


def to_batch(readings: Sequence[ValidReading]) -> Batch:
    """Decoded readings -> a `Batch` (one pass per field over the readings)."""
    pids = list(dict.fromkeys(r.patient_id for r in readings))
    row_of = {p: i for i, p in enumerate(pids)}
    K = len(readings)
    z = np.full((K, C), np.nan)
    for k, r in enumerate(readings):
        for ch, v in r.values.items():
            z[k, INDEX[ch]] = v
    batch = Readings(
        row=np.fromiter((row_of[r.patient_id] for r in readings), np.int64, K),
        t=np.fromiter((r.t for r in readings), float, K),
        z=z,
        quality=np.array([np.nan if r.quality is None else r.quality for r in readings]),
        battery=np.array([np.nan if r.battery is None else r.battery for r in readings]),
        device=device_hash([r.device_id for r in readings]),
        seq=np.fromiter((r.seq for r in readings), np.int64, K),
    )
    if any(r.manual for r in readings):
        batch = replace(
            batch,
            alert=np.array([np.nan if r.alert is None else r.alert for r in readings]),
            oxygen=np.array([np.nan if r.on_oxygen is None else r.on_oxygen for r in readings]),
            manual=np.array([r.manual for r in readings]))
    return Batch(pids, batch)
