"""Device ids as the 64-bit hashes that twins and their readings carry (`twin.readings.Readings`).

Its own module, with numpy only once an array is asked for: the registry (in every process that
checks pairings: ingest, MQTT bridge, dispatcher) hashes paired devices one by one
(`device_key`), and importing the filtering core for it cost each process about 30 MB, numpy
alone ~15 MB.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@functools.lru_cache(maxsize=1 << 16)
def device_key(device_id: str) -> int:
    """The 64-bit non-zero hash of one device id (what `device_hash` puts in its array)."""
    # The same devices come back every batch: a worker's decoding child spent 7 % of its time
    # hashing them again (10,000 patients, docs/performance.md); bounded, so ids a hostile
    # device makes up cost memory only up to the bound.
    return int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(),
                          "little") or 1


def device_hash(device_ids: list[str]) -> np.ndarray:
    """64-bit non-zero hashes of device ids, `(K,) uint64`."""
    import numpy as np  # here: the registry's processes (ingest, MQTT bridge) use `device_key`

    return np.fromiter(map(device_key, device_ids), np.uint64, len(device_ids))
