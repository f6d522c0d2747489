"""The patient registry: who is admitted to which ward and bed, with which devices and which NEWS2
SpO2 scale. It lives on the compacted `patients` topic (key = patient id, value = the patient's
whole current record), so every view (dashboard, dispatcher, worker) rebuilds it by reading the
topic, and every change writes the full record again.

`change` is the one place that turns a clinician's request into the next record; the CLI
(`patient-twin patients`) and the dashboard both use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from streams.config import Settings
from streams.errors import PatientTwinError
from streams.follow import Follower, TopicWriter, record_key
from streams.messages import PATIENT_SCHEMA, PatientRecord, decode_patient
from twin.devices import device_key

EVENTS = ("admit", "transfer", "discharge", "update")


class RegistryError(PatientTwinError):
    """A registry change that cannot apply (e.g. transferring a patient who is not admitted)."""


def change(current: PatientRecord | None, patient_id: str, event: str, by: str,
           *, ward: str | None = None, bed: str | None = None,
           devices: list[str] | None = None, spo2_scale: int | None = None,
           now: datetime | None = None) -> PatientRecord:
    """The record after `event` on `current` (None: unknown patient). RegistryError if the
    event does not apply. `devices` adds devices (pairing); `spo2_scale` is recorded with `by`."""
    admitted = current is not None and current.event != "discharge"
    if event == "admit":
        if admitted:
            raise RegistryError(f"{patient_id} is already admitted (ward {current.ward}); "
                                "use transfer")
        if not ward:
            raise RegistryError("admit needs a ward")
    elif not admitted:
        raise RegistryError(f"{patient_id} is not admitted")
    elif event == "transfer" and not ward:
        raise RegistryError("transfer needs the new ward")
    elif event not in EVENTS:
        raise RegistryError(f"unknown registry event {event!r} (one of {', '.join(EVENTS)})")
    base: dict[str, Any] = {} if current is None or event == "admit" else \
        msgspec.structs.asdict(current)
    rec = {**base, "schema": PATIENT_SCHEMA, "patient_id": patient_id, "event": event,
           "ts": (now or datetime.now(UTC)), "by": by}
    if ward is not None:
        rec["ward"] = ward
    if bed is not None or event == "transfer":
        rec["bed"] = bed
    if devices:
        rec["devices"] = list(dict.fromkeys([*rec.get("devices", []), *devices]))
    if event == "discharge":
        rec["devices"] = []  # devices are unpaired on discharge so they can go to the next patient
    if spo2_scale is not None:
        if spo2_scale not in (1, 2):
            raise RegistryError("the SpO2 scale is 1 or 2 (NEWS2, RCP 2017)")
        rec["spo2_scale"] = spo2_scale
        rec["spo2_scale_set_by"] = by
    try:
        return msgspec.convert(rec, PatientRecord)
    except msgspec.ValidationError as exc:
        raise RegistryError(f"invalid registry record: {exc}") from None


class Registry:
    """The current record of every patient, kept from the `patients` topic by `Follower` (or fed
    by hand through `apply` in tests and by views that follow more topics)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._records: dict[str, PatientRecord] = {}
        # admitted patient -> the device hashes (`twin.devices.device_key`) paired to them
        self._paired: dict[str, frozenset[int]] = {}
        self.follower: Follower | None = None

    def start(self, client_id: str = "patient-twin-registry",
              on_reset: Callable[[set[str]], None] | None = None) -> Registry:
        """Follow the patients topic; on_reset: told when the broker lost its records
        (`Follower`), while this registry still holds them (`records`)."""
        # Registry changes are a clinician's actions: half a second is fresh enough, and the
        # embedded broker's 100 ms fetches cost a worker ~5 % of its CPU for an idle topic.
        self.follower = Follower(self.settings, (self.settings.topic_patients,),
                                 self.apply, client_id, fetch_max_wait_ms=500,
                                 on_reset=on_reset).start()
        return self

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()

    @property
    def skipped(self) -> dict[str, int]:
        """Records passed over because they are not valid, by topic (this registry's own
        follower; a view that feeds it counts them in its own)."""
        return dict(self.follower.skipped) if self.follower is not None else {}

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the patients topic; InvalidMessage, the registry unchanged, for a
        record that is not valid."""
        if value is None:  # a tombstone erases the patient's record
            pid = record_key(key)
            with self._lock:
                self._records.pop(pid, None)
                self._paired.pop(pid, None)
            return
        rec = decode_patient(value)
        paired = None if rec.event == "discharge" else \
            frozenset(map(device_key, rec.devices))
        with self._lock:
            self._records[rec.patient_id] = rec
            if paired is None:
                self._paired.pop(rec.patient_id, None)
            else:
                self._paired[rec.patient_id] = paired

    def get(self, patient_id: str) -> PatientRecord | None:
        with self._lock:
            return self._records.get(patient_id)

    def paired(self, patient_id: str) -> frozenset[int] | None:
        """The device hashes paired to an admitted patient; None if not admitted."""
        return self._paired.get(patient_id)

    def sync(self, timeout: float) -> bool:
        """Read the registry up to its end now (`Follower.sync`); False without a follower."""
        return self.follower.sync(timeout) if self.follower is not None else False

    def records(self) -> list[PatientRecord]:
        """Every patient's current record (discharged ones too)."""
        with self._lock:
            return list(self._records.values())

    def admitted(self) -> dict[str, PatientRecord]:
        """Patients currently admitted (not discharged)."""
        with self._lock:
            return {p: r for p, r in self._records.items() if r.event != "discharge"}

    def wards(self) -> dict[str, str | None]:
        """patient id -> ward of every admitted patient."""
        return {p: r.ward for p, r in self.admitted().items()}

    def spo2_scale(self, patient_ids: list[str]) -> list[int]:
        with self._lock:
            return [r.spo2_scale if (r := self._records.get(p)) else 1 for p in patient_ids]


class RegistryWriter:
    """Applies changes: reads the current record from a caught-up registry, writes the next."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.registry = registry
        self.writer = TopicWriter(settings, settings.topic_patients)

    def apply(self, patient_id: str, event: str, by: str, **fields: Any) -> PatientRecord:
        rec = change(self.registry.get(patient_id), patient_id, event, by, **fields)
        self.write(rec)
        return rec

    def write(self, rec: PatientRecord) -> None:
        """Write a record (from `change`) and show it in this process's registry at once."""
        value = msgspec.json.encode(rec)
        self.writer.put(rec.patient_id, value)
        self.registry.apply(self.registry.settings.topic_patients, rec.patient_id.encode(), value)

    def republish(self) -> int:
        """Write every record the registry holds again (after the broker lost them); returns
        how many. A record is written as it was, so one changed meanwhile by a clinician, and
        already read back, is written in its changed form."""
        return self.writer.put_all((rec.patient_id, msgspec.json.encode(rec))
                                   for rec in self.registry.records())

    def close(self) -> None:
        self.writer.close()


def caught_up(settings: Settings, timeout: float = 30.0) -> Registry:
    """A registry that has read everything on the topic (BrokerError if Kafka does not answer)."""
    from streams.errors import BrokerError

    reg = Registry(settings).start("patient-twin-patients-cli")
    assert reg.follower is not None
    if not reg.follower.caught_up.wait(timeout):
        reg.stop()
        raise BrokerError(f"could not read the registry topic {settings.topic_patients} from "
                          f"{settings.bootstrap} within {timeout:g} s (is Kafka up and are the "
                          "topics created?)")
    return reg


def listing(records: dict[str, PatientRecord]) -> list[str]:
    """The registry as aligned text lines (for `patient-twin patients list`)."""
    lines = [f"{'patient':<12} {'ward':<10} {'bed':<6} {'scale':<5} {'devices'}"]
    for pid in sorted(records):
        r = records[pid]
        lines.append(f"{pid:<12} {r.ward or '-':<10} {r.bed or '-':<6} {r.spo2_scale:<5} "
                     f"{','.join(r.devices) or '-'}")
    return lines
