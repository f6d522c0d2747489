"""Every message the project puts on Kafka, defined once, versioned, validated with a reason.

JSON on the wire. Each message carries `schema`, a name with a major version
(`patient-twin.reading/1`); a consumer rejects a major version it does not know. Examples of each
message are in docs/messages.md and are checked by tests against these definitions.
"""

from __future__ import annotations

import functools
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from streams.errors import InvalidMessage
from twin.channels import CHANNELS, UNIT_ALIASES, UNITS

READING_SCHEMA = "patient-twin.reading/1"
PATIENT_SCHEMA = "patient-twin.patient/1"
OBSERVATION_SCHEMA = "patient-twin.observation/1"
TWIN_STATE_SCHEMA = "patient-twin.twin-state/1"
ALERT_SCHEMA = "patient-twin.alert/1"

MAX_MESSAGE_BYTES = 256 * 1024  # a gateway batch of 500 readings fits; a data dump does not
MAX_READINGS_PER_MESSAGE = 500
# Sequence numbers are stored as signed 64-bit integers (the twin's per-device slots, Kafka-side
# arrays): anything larger could not be applied, and would stop the batch it arrived in.
MAX_SEQ = 2**63 - 1
MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 64  # schema names, units, observer names: short by nature

# \Z, not $: "$" also matches before a final newline, which would let "P1\n" through into Kafka
# keys and InfluxDB line protocol (streams.worker.sink writes ids unescaped).
ID_PATTERN = r"^[A-Za-z0-9._:-]+\Z"
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
# Device readings check ID_PATTERN after decoding (`_check_ids`, cached per id): msgspec's regex on
# two fields per reading was 60 % of decoding a gateway message, and a batch repeats a few ids.
_ReadingId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
_ID_RE = re.compile(ID_PATTERN)
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Channel = Literal["hr", "rr", "spo2", "sbp", "dbp", "temp"]
_DEVICE_MAX = {c.name: c.device_max for c in CHANNELS}


class Quantity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value with its UCUM unit."""

    value: float
    unit: _Text


class Reading(msgspec.Struct, frozen=True, kw_only=True):
    """One measurement instant from one device: one or more channel values."""

    schema: _Text
    device_id: _ReadingId  # matching ID_PATTERN: checked by decode_readings
    patient_id: _ReadingId
    seq: Seq  # per-device, increasing
    ts: datetime  # measurement time, ISO-8601 with a UTC offset
    values: dict[Channel, Quantity]
    quality: Fraction | None = None  # signal quality index, 1 = best
    battery: Fraction | None = None  # state of charge


class PatientRecord(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The registry entry of a patient (compacted topic, key = patient id)."""

    schema: _Text
    patient_id: Id
    event: Literal["admit", "transfer", "discharge", "update"]
    ts: datetime
    ward: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    bed: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    devices: list[Id] = []
    # NEWS2 SpO2 scale 2 is for a prescribed target of 88-92 % (RCP 2017); a clinician decides it.
    spo2_scale: Literal[1, 2] = 1
    spo2_scale_set_by: _Text | None = None
    by: _Text | None = None  # who made the change


class Observation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A clinician's manual observation, scored by NEWS2 like device readings."""

    schema: _Text
    patient_id: Id
    observer: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: datetime
    acvpu: Literal["A", "C", "V", "P", "U"] | None = None
    supplemental_o2: bool | None = None
    o2_flow: Quantity | None = None  # LOINC 3151-8, unit L/min
    values: dict[Channel, Quantity] = {}


class Forecast(msgspec.Struct, frozen=True):
    minutes: int
    estimate: dict[str, float | None]
    low90: dict[str, float | None]
    high90: dict[str, float | None]


# Times the worker writes carry their UTC offset: the pages and the dispatcher compare them with
# an aware now, and a naive one would raise there.
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]
# An aggregate NEWS2 score: 0 to 20 (seven parameters, at most 3 each but air/oxygen at most 2;
# Royal College of Physicians 2017).
Score = Annotated[int, msgspec.Meta(ge=0, le=20)]


class TwinState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """The twin of one patient after a batch (topic twin.state, key = patient id)."""

    schema: str = TWIN_STATE_SCHEMA
    patient_id: str
    ts: UtcTime  # time of the latest applied reading (the device's clock)
    # When the worker applied it (its own clock): what "stale" is measured from, since a
    # device clock may be ahead or behind (None: from an older worker).
    applied_at: UtcTime | None = None
    # When the broker lost the twin's stored history (a restart of a memory-only broker): the
    # twin went on from a worker's memory, and the readings not yet processed then, the twin's
    # earlier records and its alerts' history are gone. None: never.
    history_lost_at: UtcTime | None = None
    units: dict[str, str]
    estimate: dict[str, float | None]  # None: channel never observed
    sd: dict[str, float | None]
    raw: dict[str, float | None]  # last value received, as recorded
    age_s: dict[str, float | None]  # seconds since the channel was last believed
    forecasts: list[Forecast]
    # mean arterial pressure (mm[Hg]) and shock index (HR/SBP), with SDs; None when unknown
    derived: dict[str, float | None]
    # minutes until the forecast enters a worse NEWS2 score for that channel (None: not within 60)
    minutes_to_band: dict[str, float | None]
    news2: Score
    news2_raw: Score
    news2_complete: bool  # False until consciousness and oxygen are known and all vitals seen
    news2_band: str
    # the twin's sepsis risk (twin.risk, docs/validation.md): P(within 6 h of the clinical onset
    # of sepsis, or septic), 0-1; None: not computed
    sepsis_risk: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    training: bool = False  # a training ward's simulated patient (`patient-twin train`)
    # NEWS2 component scores on the estimates, by parameter (RCP 2017 chart order)
    news2_components: dict[str, int] = {}
    rejected: list[str] = []  # channels whose latest value the innovation gate rejected (artifact)
    # From the latest manual observation (None: never recorded) and the registry
    consciousness_alert: bool | None = None  # ACVPU: True = Alert
    on_oxygen: bool | None = None
    observed_at: UtcTime | None = None
    spo2_scale: int = 1
    readings_applied: int
    artifacts: int
    missing: int
    duplicates: int
    late: int
    sequence_gaps: int  # readings the devices numbered that never arrived
    battery: float | None
    quality: float | None


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An alert event (topic alerts, key = patient id). See docs/alerts.md for the lifecycle."""

    schema: str = ALERT_SCHEMA
    alert_id: str  # the same through the alert's whole lifecycle
    patient_id: str
    ts: UtcTime
    event: Literal["raised", "updated", "reminder", "escalated", "acknowledged", "silenced",
                   "resolved"]
    kind: str
    category: Literal["clinical", "technical"]
    priority: Literal["high", "medium", "low"]
    state: Literal["active", "latched", "acknowledged", "resolved"] = "active"
    channels: list[str] = []
    message: str
    news2: Score | None = None
    by: str | None = None  # who acknowledged or silenced
    comment: str | None = None
    audience: str = "ward"  # "ward+rapid-response" once escalated
    raised_at: UtcTime | None = None
    notify: bool = True  # False while the alert is silenced (subscribers skip it)
    evidence: dict[str, Any] = {}  # the values, scores and forecast that raised it
    training: bool = False  # a training ward's alert: its message starts "TRAINING: " too


ALERT_ACTION_SCHEMA = "patient-twin.alert-action/1"


class AlertAction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A clinician's action on alerts (topic alert.actions, key = patient id): acknowledge one
    alert, escalate one (call for help now: a priority up and the rapid-response team told), or
    silence a patient's alerts of one kind until a time, with a reason."""

    schema: _Text = ALERT_ACTION_SCHEMA
    action: Literal["acknowledge", "escalate", "silence"]
    patient_id: Id
    by: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts: datetime
    alert_id: Annotated[str, msgspec.Meta(max_length=200)] | None = None  # acknowledge, escalate
    comment: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    kind: _Text | None = None  # silence
    reason: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    until: datetime | None = None


_action_decoder = msgspec.json.Decoder(AlertAction)


def decode_action(data: bytes) -> AlertAction:
    """Decode an alert action; InvalidMessage with the reason otherwise."""
    a = decode_with(_action_decoder, data)
    _check_schema(a.schema, ALERT_ACTION_SCHEMA)
    check_ts(a.ts)
    if a.action in ("acknowledge", "escalate") and not a.alert_id:
        raise reject(f"{a.action} needs alert_id", "missing_field")
    if a.action == "silence" and (not a.kind or not a.reason or a.until is None):
        raise reject("silence needs kind, reason and until", "missing_field")
    return a


AUDIT_SCHEMA = "patient-twin.audit/1"


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who did what in the dashboard and its API (topic audit, key = user name, `token:NAME`
    for an API token): logins, patient views, alert acknowledgements and silences, registry
    changes, subscriptions, refusals. Patient ids, never patient values."""

    schema: str = AUDIT_SCHEMA
    ts: datetime
    user: str
    role: str | None = None
    action: Literal["login", "login_failed", "logout", "view_ward", "view_patient", "view_vr",
                    "acknowledge", "escalate", "silence", "admit", "transfer", "discharge",
                    "update", "observation", "denied", "subscribe", "unsubscribe",
                    "view_subscriptions", "view_alerts", "view_audit", "join_presence",
                    "leave_presence", "presence_focus", "presence_call"]
    patient_id: str | None = None
    alert_id: str | None = None
    detail: str | None = None
    remote_addr: str | None = None


HEARTBEAT_SCHEMA = "patient-twin.worker-heartbeat/1"


class WorkerHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A live worker and the vitals.raw partitions it holds (topic workers, key = worker id),
    every few seconds while it is healthy (`streams.watchdog`)."""

    schema: _Text = HEARTBEAT_SCHEMA
    worker: Annotated[str, msgspec.Meta(max_length=200)]
    ts: datetime
    partitions: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=100_000)]],
                          msgspec.Meta(max_length=100_000)]


_heartbeat_decoder = msgspec.json.Decoder(WorkerHeartbeat)


def decode_heartbeat(data: bytes | None) -> WorkerHeartbeat:
    """Decode a worker heartbeat; InvalidMessage with the reason otherwise."""
    hb = decode_record(_heartbeat_decoder, data)
    _check_schema(hb.schema, HEARTBEAT_SCHEMA)
    check_ts(hb.ts)
    return hb


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A rejected input message (topic vitals.dlq): the reason and the original bytes."""

    schema: str = "patient-twin.dead-letter/1"
    reason: str
    kind: str  # short machine-readable class of the reason
    topic: str
    partition: int
    offset: int
    received: datetime
    original: bytes  # base64 in JSON


_reading_decoder = msgspec.json.Decoder(Reading | list[Reading])
_patient_decoder = msgspec.json.Decoder(PatientRecord)
_observation_decoder = msgspec.json.Decoder(Observation)
_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def _kind_of(reason: str) -> str:
    if reason.startswith("not JSON") or "malformed" in reason.lower():
        return "not_json"
    if "missing required field" in reason:
        return "missing_field"
    if "unknown field" in reason.lower():
        return "unknown_field"
    if "Invalid enum value" in reason and ".values" in reason:
        return "unknown_channel"
    return "wrong_type"


def reject(reason: str, kind: str | None = None) -> InvalidMessage:
    return InvalidMessage(reason, kind or _kind_of(reason))


def _check_schema(schema: str, expected: str) -> None:
    if schema != expected:
        raise reject(f"schema {schema!r} is not supported (expected {expected!r})",
                     "wrong_schema")


def check_ts(ts: datetime) -> float:
    """The time as epoch seconds; InvalidMessage if it has no UTC offset or no epoch time (the
    year 1 at a positive offset is before the year 1 in UTC)."""
    if ts.tzinfo is None:
        raise reject("ts has no UTC offset (expected ISO-8601 like 2026-01-01T12:00:00Z)",
                     "wrong_type")
    try:
        return ts.timestamp()
    except (OverflowError, ValueError, OSError):
        raise reject("ts is outside the range of a date", "ts_out_of_range") from None


def check_window(t: float, now: float, max_age_s: float, max_ahead_s: float) -> None:
    """InvalidMessage (`ts_out_of_range`) unless `now - max_age_s <= t <= now + max_ahead_s`.

    A device's clock decides where its readings go in the twin's time: one reading dated in the
    future would make every later genuine reading look late and freeze the twin, and one from
    long ago can never be applied. Both are refused with the offset, so the device's owner can
    see which way its clock is wrong."""
    if t > now + max_ahead_s:
        raise reject(f"ts is {t - now:.0f} s ahead of the worker's clock (at most "
                     f"{max_ahead_s:g} s accepted: is the device clock ahead?)", "ts_out_of_range")
    if not t >= now - max_age_s:  # NaN never gets here: check_ts gives finite times
        raise reject(f"ts is {now - t:.0f} s behind the worker's clock (at most "
                     f"{max_age_s:g} s accepted: is the device clock behind?)",
                     "ts_out_of_range")


# (channel, unit) -> (scale, offset, largest value a device reports in the canonical unit): one
# lookup per value, since every reading of every batch goes through here.
_CONVERT = {(ch, unit): (scale, offset, _DEVICE_MAX[ch])
            for ch, units in UNIT_ALIASES.items() for unit, (scale, offset) in units.items()}


def canonical_values(values: dict[str, Quantity]) -> dict[str, float]:
    """Values in canonical units; InvalidMessage for an unknown unit or an impossible value."""
    out: dict[str, float] = {}
    convert = _CONVERT.get
    for ch, q in values.items():
        conv = convert((ch, q.unit))
        if conv is None or not 0.0 <= (v := q.value * conv[0] + conv[1]) <= conv[2]:
            raise _bad_value(ch, q)  # also for NaN and infinities
        out[ch] = v
    return out


def _bad_value(ch: str, q: Quantity) -> InvalidMessage:
    """Why `canonical_values` refuses this value."""
    conv = _CONVERT.get((ch, q.unit))
    if conv is None:
        return reject(f"values.{ch}: unit {q.unit!r} is not accepted (expected {UNITS[ch]!r})",
                      "wrong_unit")
    if not math.isfinite(q.value):
        return reject(f"values.{ch}: value is not a finite number", "impossible_value")
    return reject(f"values.{ch}: {q.value} {q.unit} is impossible "
                  f"(a device reports 0 to {conv[2]:g} {UNITS[ch]})", "impossible_value")


# gc=False: the cyclic collector never tracks these (strings, floats and a dict of floats cannot
# form a cycle). A batch of 8,000 gateway messages keeps ~40,000 of them alive until they become
# arrays (`worker.batch.to_batch`), and tracked they set off about twice as many gen0 collections
# (~25 ms each, measured in the worker before decoding moved to `streams.worker.decoder`).
class ValidReading(msgspec.Struct, frozen=True, gc=False):
    """A reading that passed validation, values converted to canonical units."""

    device_id: str
    patient_id: str
    seq: int
    t: float  # epoch seconds
    values: dict[str, float]
    quality: float | None
    battery: float | None
    alert: float | None = None  # manual observation: ACVPU Alert 1, C/V/P/U 0
    on_oxygen: float | None = None  # manual observation: supplemental oxygen 1, air 0
    manual: bool = False


@functools.lru_cache(maxsize=1 << 16)
def _id_ok(value: str) -> bool:
    return _ID_RE.search(value) is not None


def check_id(value: str, path: str) -> str:
    """The one check of a device or patient id from outside, in every format (JSON readings,
    FHIR references): 1-64 characters matching ID_PATTERN. Returns the id."""
    if not (len(value) <= MAX_ID_CHARS and _id_ok(value)):
        raise reject(f"Expected `str` of 1 to {MAX_ID_CHARS} characters matching regex "
                     f"{ID_PATTERN!r} - at `{path}`", "wrong_type")
    return value


def decode_readings(data: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES,
                    max_readings: int = MAX_READINGS_PER_MESSAGE) -> list[ValidReading]:
    """Decode one device message (a reading or a JSON array of readings from a gateway).

    Raises InvalidMessage with the reason (and `.kind`) if anything in it is invalid; a message is
    accepted or rejected whole, so a gateway batch never half-applies.
    """
    if not data:
        raise reject("empty message", "empty")
    if len(data) > max_bytes:
        raise reject(f"message of {len(data)} bytes exceeds {max_bytes}", "oversized")
    if b'"resourceType"' in data[:200]:  # FHIR R4 Observations (streams.fhir)
        from streams import fhir

        return fhir.decode(data, max_readings)
    decoded = decode_with(_reading_decoder, data)
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise reject("empty list of readings", "empty")
    if len(items) > max_readings:
        raise reject(f"{len(items)} readings in one message exceed {max_readings}", "oversized")
    out = []
    for i, r in enumerate(items):
        if not (_id_ok(r.device_id) and _id_ok(r.patient_id)):
            path = f"$[{i}]" if isinstance(decoded, list) else "$"
            check_id(r.device_id, f"{path}.device_id")
            check_id(r.patient_id, f"{path}.patient_id")
        _check_schema(r.schema, READING_SCHEMA)
        t = check_ts(r.ts)
        if not r.values:
            raise reject("values is empty (expected at least one channel)", "missing_field")
        out.append(ValidReading(r.device_id, r.patient_id, r.seq, t,
                                canonical_values(r.values), r.quality, r.battery))
    return out


def decode_with(decoder: msgspec.json.Decoder, data: bytes, prefix: str = "") -> Any:
    """Decode with a msgspec decoder; InvalidMessage with the reason (and kind) otherwise."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise reject(f"{prefix}{exc}") from exc
    except msgspec.DecodeError as exc:
        raise reject(f"not JSON: {exc}", "not_json") from exc
    except UnicodeDecodeError as exc:  # msgspec's error for a JSON string that is not UTF-8
        raise reject("not JSON: a string is not UTF-8", "not_json") from exc


def decode_patient(data: bytes) -> PatientRecord:
    """Decode a registry record; InvalidMessage with the reason otherwise."""
    rec = decode_with(_patient_decoder, data)
    _check_schema(rec.schema, PATIENT_SCHEMA)
    check_ts(rec.ts)
    return rec


def decode_observation(data: bytes) -> Observation:
    """Decode a manual observation; InvalidMessage with the reason otherwise."""
    obs = decode_with(_observation_decoder, data)
    _check_schema(obs.schema, OBSERVATION_SCHEMA)
    check_ts(obs.ts)
    canonical_values(obs.values)
    if obs.o2_flow is not None and obs.o2_flow.unit != "L/min":
        raise reject(f"o2_flow: unit {obs.o2_flow.unit!r} is not accepted (expected 'L/min')",
                     "wrong_unit")
    return obs


_twin_state_decoder = msgspec.json.Decoder(TwinState)
_alert_decoder = msgspec.json.Decoder(AlertEvent)


def decode_record(decoder: msgspec.json.Decoder, data: bytes | None) -> Any:
    """`decode_with` for a record read back from a topic: InvalidMessage also for a null or
    empty value and one over MAX_MESSAGE_BYTES."""
    if not data:
        raise reject("empty or null value", "empty")
    if len(data) > MAX_MESSAGE_BYTES:
        raise reject(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}", "oversized")
    return decode_with(decoder, data)


def _decode_patient_message(decoder: msgspec.json.Decoder, schema: str,
                            data: bytes | None) -> Any:
    """A record about one patient: its schema, its patient id and its time checked too."""
    msg = decode_record(decoder, data)
    _check_schema(msg.schema, schema)
    check_id(msg.patient_id, "$.patient_id")
    check_ts(msg.ts)
    return msg


def decode_twin_state(data: bytes | None) -> TwinState:
    """Decode a twin state (topic twin.state); InvalidMessage with the reason otherwise."""
    return _decode_patient_message(_twin_state_decoder, TWIN_STATE_SCHEMA, data)


def decode_alert(data: bytes | None) -> AlertEvent:
    """Decode an alert event (topic alerts); InvalidMessage with the reason otherwise."""
    return _decode_patient_message(_alert_decoder, ALERT_SCHEMA, data)


MANUAL_DEVICE = "manual-observation"


def observation_reading(obs: Observation) -> ValidReading:
    """A manual observation as the twin applies it: hand-taken values like a device's, plus
    consciousness and oxygen. One pseudo-device for all observers, numbered by time (ms), so a
    redelivered observation is recognised as a duplicate."""
    t = check_ts(obs.ts)
    return ValidReading(
        MANUAL_DEVICE, obs.patient_id, int(t * 1000), t, canonical_values(obs.values), None,
        None, alert=None if obs.acvpu is None else float(obs.acvpu == "A"),
        on_oxygen=None if obs.supplemental_o2 is None else float(obs.supplemental_o2),
        manual=True)


def reading(device_id: str, patient_id: str, seq: int, ts: datetime,
            values: dict[str, float], quality: float | None = None,
            battery: float | None = None) -> Reading:
    """Build a Reading with canonical units (for simulators and tests)."""
    return Reading(schema=READING_SCHEMA, device_id=device_id, patient_id=patient_id, seq=seq,
                   ts=ts, values={ch: Quantity(float(v), UNITS[ch]) for ch, v in values.items()},
                   quality=quality, battery=battery)


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


