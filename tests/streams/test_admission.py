"""Readings apply only for admitted patients from their paired devices
(streams.worker.admission)."""

from __future__ import annotations

from streams.messages import ValidReading
from streams.worker import admission
from streams.worker.batch import to_batch
from twin.devices import device_hash


def rd(pid: str, dev: str, manual: bool = False) -> ValidReading:
    return ValidReading(dev, pid, 1, 1.0e9, {"hr": 70.0}, None, None, manual=manual)


def test_unknown_patients_and_unpaired_devices_are_refused_reading_by_reading():
    pairs = {"P1": frozenset(device_hash(["D1", "D1b"]).tolist()),
             "P2": frozenset(device_hash(["D2"]).tolist()),
             "P3": frozenset()}  # admitted, nothing paired yet
    batch = to_batch([rd("P1", "D1"), rd("P1", "D2"), rd("P2", "D2"), rd("P9", "D9"),
                      rd("P1", "D1b"), rd("P2", "D1"), rd("P3", "D3"),
                      rd("P3", "manual-observation", manual=True),
                      rd("P9", "manual-observation", manual=True)])
    got = admission.check(batch, pairs.get)
    ok, U, D = admission.OK, admission.UNKNOWN_PATIENT, admission.UNPAIRED_DEVICE
    assert got.tolist() == [ok, D, ok, U, ok, D, D, ok, U]


def test_a_device_paired_to_one_patient_cannot_write_for_another():
    # the same device id under another patient's key: the pair, not the device, is checked
    pairs = {"P1": frozenset(device_hash(["D1"]).tolist()), "P2": frozenset()}
    batch = to_batch([rd("P2", "D1")] * 3 + [rd("P1", "D1")])
    assert admission.check(batch, pairs.get).tolist() == [admission.UNPAIRED_DEVICE] * 3 + [0]


def test_no_readings_no_work():
    assert admission.check(to_batch([]), {}.get).shape == (0,)
    assert admission.check(to_batch([rd("P1", "D1")]), {}.get).tolist() == \
        [admission.UNKNOWN_PATIENT]
