"""Who may feed a twin: readings are applied only for admitted patients, from their paired devices.

The registry (`streams.registry`) says who is admitted and which devices are paired to them.
Everything else a producer sends is refused before it reaches a twin: a reading for a patient
nobody admitted (`unknown_patient`) would otherwise create a twin, a table record, twin states
and dashboard history for any id a device or a typo invents; a reading from a device that is not
paired to the patient (`unpaired_device`) could write into another patient's twin. Both go to
the dead-letter topic like any other invalid message, so nothing is dropped silently, and an id
nobody admitted costs the worker no memory at all.

Manual observations come from clinicians through the dashboard, not from a device: they need
the patient admitted, not a pairing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from streams.worker.batch import Batch
from twin.history import membership_key

OK, UNKNOWN_PATIENT, UNPAIRED_DEVICE = 0, 1, 2
KINDS = {UNKNOWN_PATIENT: "unknown_patient", UNPAIRED_DEVICE: "unpaired_device"}
REASONS = {
    UNKNOWN_PATIENT: "the patient is not admitted in the registry (`patient-twin patients "
                     "admit`); readings for patients nobody admitted are not applied",
    UNPAIRED_DEVICE: "the device is not paired to this patient in the registry "
                     "(`patient-twin patients pair`); its readings are not applied",
}


def check(batch: Batch, paired: Callable[[str], frozenset[int] | None]) -> np.ndarray:
    """Why each reading of `batch` may not be applied: `(K,)` int8, OK, UNKNOWN_PATIENT or
    UNPAIRED_DEVICE. paired: patient id -> the `device_hash` of each device paired to the
    patient (None: not admitted). One lookup per patient of the batch; the readings are matched
    against the pairs as arrays."""
    r = batch.readings
    sets = [paired(p) for p in batch.pids]
    admitted = np.fromiter((s is not None for s in sets), bool, len(sets))
    rows = [i for i, s in enumerate(sets) if s]
    pair_row = np.fromiter((i for i in rows for _ in sets[i]), np.int64)  # type: ignore[union-attr]
    pair_dev = np.fromiter((h for i in rows for h in sets[i]), np.uint64)  # type: ignore[union-attr]
    # (patient, device) pairs as one 64-bit key each; sequence number 0 for all
    ok_pair = np.isin(membership_key(r.row, r.device, np.zeros_like(r.row)),
                      membership_key(pair_row, pair_dev, np.zeros_like(pair_row)))
    if r.manual is not None:
        ok_pair |= r.manual
    out = np.where(admitted[r.row], np.where(ok_pair, OK, UNPAIRED_DEVICE), UNKNOWN_PATIENT)
    return out.astype(np.int8)
