"""A batch of readings as arrays, the input of `twin.bank.step`.

Its own module, numpy only: the worker's decoding child builds these from device messages and
needs nothing else of the twin (with the filtering core imported it took 94 MB, without ~50).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Readings:
    """A batch of K readings for the patients of a `(N,)` state array.

    row: `(K,)` int index of the patient's state; t: `(K,)` epoch seconds; z: `(K, C)` values in
    canonical units, NaN where the reading has no such channel; quality: `(K,)` in [0, 1] (NaN:
    unknown); battery: `(K,)` in [0, 1] (NaN: unknown); device: `(K,) uint64` from `device_hash`;
    seq: `(K,) int64` per-device sequence numbers; alert, oxygen: `(K,)` float from manual
    observations (NaN: not recorded); manual: `(K,)` bool, a clinician's observation (applied
    even if older than the twin's latest reading: it is entered after the fact); not_before:
    `(K,)` epoch seconds, a reading older than this is late whatever the twin's time or its
    device's numbering (NaN: no such limit; `twin.history` sets it from the late tolerance).
    """

    row: np.ndarray
    t: np.ndarray
    z: np.ndarray
    quality: np.ndarray
    battery: np.ndarray
    device: np.ndarray
    seq: np.ndarray
    alert: np.ndarray | None = None
    oxygen: np.ndarray | None = None
    manual: np.ndarray | None = None
    not_before: np.ndarray | None = None
