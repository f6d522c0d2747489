"""Device ids as the 64-bit hashes that twins and their readings carry (`twin.readings.Readings`).

Its own module, without scipy: the registry (in every process that checks pairings: ingest, MQTT
bridge, dispatcher) hashes paired devices too, and importing the filtering core for it cost each
process about 30 MB.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np


@functools.lru_cache(maxsize=1 << 16)
def _device_hash(device_id: str) -> int:
    # The same devices come back every batch: a worker's decoding child spent 7 % of its time
    # hashing them again (10,000 patients, docs/performance.md); bounded, so ids a hostile
    # device makes up cost memory only up to the bound.
    return int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(),
                          "little") or 1


def device_hash(device_ids: list[str]) -> np.ndarray:
    """64-bit non-zero hashes of device ids, `(K,) uint64`."""
    return np.fromiter(map(_device_hash, device_ids), np.uint64, len(device_ids))
