"""Device readings as FHIR R4 vital-signs Observations, both ways.

A message in FHIR format is a `Bundle` of type `collection` holding the Observations of one
measurement instant (or a single `Observation`). Each Observation follows the vital-signs profile:
category `vital-signs`, a LOINC code, a UCUM `valueQuantity`, `subject` = `Patient/<patient id>`,
`device` = `Device/<device id>`, `effectiveDateTime`; blood pressure is the panel 85354-9 with
systolic and diastolic components; SpO2 carries 2708-6 and 59408-5. The per-device sequence
number that deduplication needs travels as an identifier in the system `SEQ_SYSTEM`.

Decoding reads only the subset above with msgspec (fast, in the worker's hot path); tests check
what `encode_reading` writes against the `fhir.resources` models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from streams.messages import (
    MAX_READINGS_PER_MESSAGE,
    MAX_SEQ,
    Quantity,
    ValidReading,
    canonical_values,
    check_id,
    check_ts,
    decode_with,
    reject,
)
from twin.channels import CHANNELS, SPO2_PULSE_OX_LOINC

SEQ_SYSTEM = "urn:patient-twin:device-seq"
# Device state has no element on an Observation: two extensions carry it (decimal, 0-1).
BATTERY_EXT = "urn:patient-twin:extension:battery"
QUALITY_EXT = "urn:patient-twin:extension:signal-quality"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BP_PANEL = "85354-9"
_PROFILE = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
_CATEGORY = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                          "code": "vital-signs", "display": "Vital Signs"}]}]
_BY_CODE = {c.loinc: c for c in CHANNELS}
_BY_CODE[SPO2_PULSE_OX_LOINC] = _BY_CODE["2708-6"]


def _quantity(ch: str, value: float) -> dict[str, Any]:
    unit = next(c.unit for c in CHANNELS if c.name == ch)
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _code(ch: str) -> dict[str, Any]:
    c = next(c for c in CHANNELS if c.name == ch)
    coding = [{"system": LOINC, "code": c.loinc, "display": c.display}]
    if ch == "spo2":
        coding.append({"system": LOINC, "code": SPO2_PULSE_OX_LOINC,
                       "display": "Oxygen saturation in Arterial blood by Pulse oximetry"})
    return {"coding": coding, "text": c.display}


def encode_reading(device_id: str, patient_id: str, seq: int, ts: str,
                   values: dict[str, float], quality: float | None = None,
                   battery: float | None = None) -> dict[str, Any]:
    """One measurement instant as a FHIR Bundle (collection) of vital-signs Observations."""
    ext = [{"url": url, "valueDecimal": v} for url, v in ((QUALITY_EXT, quality),
                                                         (BATTERY_EXT, battery)) if v is not None]
    common = {
        "resourceType": "Observation", "status": "final", "category": _CATEGORY,
        "meta": {"profile": [_PROFILE]},
        "identifier": [{"system": SEQ_SYSTEM, "value": f"{device_id}:{seq}"}],
        "subject": {"reference": f"Patient/{patient_id}"},
        "device": {"reference": f"Device/{device_id}"},
        "effectiveDateTime": ts,
        **({"extension": ext} if ext else {}),
    }
    entries = []
    for ch, v in values.items():
        if ch in ("sbp", "dbp"):
            continue
        entries.append({**common, "code": _code(ch), "valueQuantity": _quantity(ch, v)})
    if "sbp" in values or "dbp" in values:
        comps = [{"code": _code(ch), "valueQuantity": _quantity(ch, values[ch])}
                 for ch in ("sbp", "dbp") if ch in values]
        entries.append({**common, "code": {"coding": [
            {"system": LOINC, "code": BP_PANEL,
             "display": "Blood pressure panel with all children optional"}],
            "text": "Blood pressure"}, "component": comps})
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": e} for e in entries]}


# --- decoding: the subset the encoder writes ------------------------------------------------


class _Coding(msgspec.Struct):
    system: str | None = None
    code: str | None = None


class _Concept(msgspec.Struct):
    coding: list[_Coding] = []


class _Quantity(msgspec.Struct):
    value: float
    unit: str | None = None
    code: str | None = None


class _Ref(msgspec.Struct):
    reference: str


class _Extension(msgspec.Struct):
    url: str
    valueDecimal: float | None = None  # noqa: N815


class _Identifier(msgspec.Struct):
    system: str | None = None
    value: str | None = None


class _Component(msgspec.Struct):
    code: _Concept
    valueQuantity: _Quantity | None = None  # noqa: N815 - FHIR's name


class _Observation(msgspec.Struct, tag_field="resourceType", tag="Observation"):
    status: str
    code: _Concept
    effectiveDateTime: datetime  # noqa: N815
    subject: _Ref
    device: _Ref | None = None
    identifier: list[_Identifier] = []
    extension: list[_Extension] = []
    valueQuantity: _Quantity | None = None  # noqa: N815
    component: list[_Component] = []


class _Entry(msgspec.Struct):
    resource: _Observation


class _Bundle(msgspec.Struct, tag_field="resourceType", tag="Bundle"):
    type: str
    entry: list[_Entry] = []


_decoder = msgspec.json.Decoder(_Bundle | _Observation)


def _channel(concept: _Concept) -> str | None:
    for coding in concept.coding:
        if coding.system == LOINC and coding.code in _BY_CODE:
            return _BY_CODE[coding.code].name
    return None


def _ref_id(ref: _Ref, kind: str) -> str:
    prefix = f"{kind}/"
    if not ref.reference.startswith(prefix) or len(ref.reference) == len(prefix):
        raise reject(f"{kind.lower()} reference is not '{prefix}<id>'", "wrong_type")
    return check_id(ref.reference[len(prefix):], f"{kind.lower()}.reference")


def _seq(text: str, identifier: str) -> int:
    """A sequence number written in ASCII digits, within 0..MAX_SEQ (str.isdigit also takes
    other scripts' digits and superscripts, which int() then reads or refuses)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_SEQ):
        raise reject(f"FHIR identifier {identifier!r} is not '<device id>:<sequence number "
                     f"0 to {MAX_SEQ}>'", "wrong_type")
    return int(text)


def decode(data: bytes, max_readings: int = MAX_READINGS_PER_MESSAGE) -> list[ValidReading]:
    """FHIR message -> readings, one per (device, seq); InvalidMessage with the reason
    otherwise. Every Observation of one reading must agree on patient, device and time. At most
    `max_readings` readings, of at most one Observation per channel each."""
    doc = decode_with(_decoder, data, "FHIR: ")
    obs = [e.resource for e in doc.entry] if isinstance(doc, _Bundle) else [doc]
    if not obs:
        raise reject("FHIR Bundle has no Observation", "empty")
    if len(obs) > max_readings * len(CHANNELS):
        raise reject(f"{len(obs)} Observations in one message exceed "
                     f"{max_readings * len(CHANNELS)}", "oversized")
    readings: dict[tuple[str, int], tuple[str, datetime, dict[str, Any]]] = {}
    device_state: dict[tuple[str, int], dict[str, float]] = {}
    for o in obs:
        if o.status not in ("final", "amended", "corrected", "preliminary"):
            raise reject(f"FHIR Observation status {o.status!r} carries no usable value",
                         "wrong_type")
        if o.device is None:
            raise reject("FHIR Observation has no device reference", "missing_field")
        seq_ids = [i.value for i in o.identifier if i.system == SEQ_SYSTEM and i.value]
        if not seq_ids:
            raise reject(f"FHIR Observation has no identifier in {SEQ_SYSTEM} "
                         "(<device id>:<sequence number>)", "missing_field")
        device = _ref_id(o.device, "Device")
        dev, _, seq_text = seq_ids[0][:200].rpartition(":")
        if dev != device:
            raise reject("FHIR identifier's device is not the Observation's device",
                         "wrong_type")
        seq = _seq(seq_text, seq_ids[0][:200])
        patient = _ref_id(o.subject, "Patient")
        check_ts(o.effectiveDateTime)
        parts: list[tuple[_Concept, _Quantity | None]] = (
            [(c.code, c.valueQuantity) for c in o.component] if o.component
            else [(o.code, o.valueQuantity)])
        key = (device, seq)
        pid, ts, vals = readings.setdefault(key, (patient, o.effectiveDateTime, {}))
        if pid != patient or ts != o.effectiveDateTime:
            raise reject(f"FHIR Observations of {seq_ids[0]} disagree on patient or time",
                         "wrong_type")
        for e in o.extension:
            if e.url in (QUALITY_EXT, BATTERY_EXT) and e.valueDecimal is not None:
                if not 0.0 <= e.valueDecimal <= 1.0:
                    raise reject(f"FHIR extension {e.url} must be 0-1, got {e.valueDecimal}",
                                 "impossible_value")
                device_state.setdefault(key, {})[e.url] = e.valueDecimal
        for concept, q in parts:
            ch = _channel(concept)
            if ch is None:
                codes = ", ".join(f"{c.system}|{c.code}" for c in concept.coding)
                raise reject(f"FHIR code {codes} is not a vital sign the twin models",
                             "unknown_channel")
            if q is None:
                raise reject(f"FHIR Observation of {ch} has no valueQuantity", "missing_field")
            vals[ch] = {"value": q.value, "unit": q.code or q.unit or ""}
    if len(readings) > max_readings:
        raise reject(f"{len(readings)} readings in one message exceed {max_readings}",
                     "oversized")
    out = []
    for (device, seq), (patient, ts, vals) in readings.items():
        values = canonical_values({ch: Quantity(v["value"], v["unit"]) for ch, v in vals.items()})
        ds = device_state.get((device, seq), {})
        out.append(ValidReading(device, patient, seq, check_ts(ts), values,
                                ds.get(QUALITY_EXT), ds.get(BATTERY_EXT)))
    return out
