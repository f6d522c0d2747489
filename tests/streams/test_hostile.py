"""Hostile device input: nothing one message holds may stop the worker or freeze a twin.

The fuzz tests run generated messages through the worker's own path, `decoder.decode_batch`
(decode, validate, bounds, arrays) and then `TwinProcessor.process` (the twin step and the alert
engine): no exception may escape, and every message is either applied or dead-lettered with a
kind and a reason.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import fhir, messages
from streams.worker.batch import select
from streams.worker.decoder import Bounds, decode_batch
from streams.worker.process import TwinProcessor

NOW = time.time()
BOUNDS = Bounds(NOW)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def good(pid: str = "P1", dev: str = "D1", seq: int = 1, t: float = NOW - 10,
         hr: float = 80.0) -> dict:
    return {"schema": messages.READING_SCHEMA, "device_id": dev, "patient_id": pid, "seq": seq,
            "ts": iso(t), "values": {"hr": {"value": hr, "unit": "/min"},
                                     "spo2": {"value": 97, "unit": "%"}}}


def enc(doc: object) -> bytes:
    return json.dumps(doc).encode()


def one(value: bytes, key: bytes | None = b"P1", bounds: Bounds | None = BOUNDS):
    """decode_batch of one device message: (rejects, readings)."""
    got = decode_batch([False], [key], [value], False, bounds)
    return got.rejects, len(got.batch.readings.row)


# --- the bounds, one by one -----------------------------------------------------------------

@pytest.mark.parametrize("seq", [2**64 - 1, 2**63, -1, -(2**63) - 1])
def test_sequence_numbers_outside_signed_64_bit_are_dead_letters(seq):
    (rej,), n = one(enc(good(seq=seq)))
    assert n == 0 and rej[0] == 0 and rej[2] == "wrong_type" and "seq" in rej[1]


def test_the_largest_sequence_number_is_accepted():
    rejects, n = one(enc(good(seq=2**63 - 1)))
    assert rejects == [] and n == 1


@pytest.mark.parametrize("ts,why", [
    ("2100-01-01T00:00:00Z", "ahead"),
    (iso(NOW + 301), "ahead"),
    (iso(NOW - 86_401), "behind"),
    ("1970-01-01T00:00:00Z", "behind"),
    ("0001-01-01T00:00:00+01:00", "behind"),  # before the year 1 in UTC
    ("9999-12-31T23:59:59-01:00", "ahead"),  # after the year 9999 in UTC
], ids=["2100", "just-ahead", "just-behind", "epoch", "year-1", "year-9999"])
def test_timestamps_outside_the_window_are_dead_letters(ts, why):
    (rej,), n = one(enc({**good(), "ts": ts}))
    assert n == 0 and rej[2] == "ts_out_of_range" and why in rej[1], rej


def test_the_window_is_configurable_and_its_edges_are_inside():
    assert one(enc(good(t=NOW + 299)))[1] == 1
    assert one(enc(good(t=NOW - 86_399)))[1] == 1
    wide = Bounds(NOW, max_age_s=40 * 86_400)
    assert one(enc(good(t=NOW - 30 * 86_400)), bounds=wide)[1] == 1


@pytest.mark.parametrize("text", ["١٢٣", "²", "12345678901234567890", "9223372036854775808",
                                  "-5", "+5", " 5", "5 ", "0x10", ""])
def test_fhir_sequence_numbers_are_ascii_digits_within_64_bits(text):
    doc = fhir.encode_reading("D1", "P1", 1, iso(NOW - 5), {"hr": 70.0})
    for e in doc["entry"]:
        e["resource"]["identifier"][0]["value"] = f"D1:{text}"
    (rej,), n = one(enc(doc))
    assert n == 0 and rej[2] in ("wrong_type", "missing_field"), rej


@pytest.mark.parametrize("ref", ["Patient/" + "x" * 65, "Patient/a b", "Patient/P1\n",
                                 "Patient/é", "Patient/"])
def test_fhir_ids_go_through_the_same_id_check(ref):
    doc = fhir.encode_reading("D1", "P1", 1, iso(NOW - 5), {"hr": 70.0})
    for e in doc["entry"]:
        e["resource"]["subject"]["reference"] = ref
    (rej,), n = one(enc(doc))
    assert n == 0 and rej[2] == "wrong_type", rej


def test_sizes_and_counts_are_capped_in_both_formats():
    many = [good(seq=i, t=NOW - 600 + i) for i in range(1, 12)]
    small = Bounds(NOW, max_readings=10)
    (rej,), _ = one(enc(many), bounds=small)
    assert rej[2] == "oversized"
    bundle = fhir.encode_reading("D1", "P1", 1, iso(NOW - 5), {"hr": 70.0})
    bundle["entry"] = bundle["entry"] * 61  # more Observations than 10 readings x 6 channels
    (rej,), _ = one(enc(bundle), bounds=small)
    assert rej[2] == "oversized"
    (rej,), _ = one(enc(good()) + b" " * 300_000)
    assert rej[2] == "oversized"
    (rej,), _ = one(enc({**good(), "schema": "s" * 65}))
    assert rej[2] == "wrong_type"


def test_a_reason_quoting_the_message_is_capped():
    (rej,), _ = one(enc({**good(), "values": {"hr": {"value": 70, "unit": "u" * 60}},
                         "device_id": "d" * 64}))
    assert len(rej[1]) <= 500


# --- a twin cannot be frozen ----------------------------------------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def feed(proc: TwinProcessor, stored: dict, docs: list[dict]):
    values = [enc(d) for d in docs]
    got = decode_batch([False] * len(values), [d["patient_id"].encode() for d in docs], values,
                       False, Bounds(proc.clock()))
    assert got.rejects == []
    res = proc.process(got.batch, stored)
    stored.update(res.states)
    return res


def test_a_huge_sequence_number_does_not_freeze_the_twin():
    clock = Clock(NOW)
    proc, stored = TwinProcessor(clock=clock), {}
    feed(proc, stored, [good(seq=s, t=NOW - 100 + s) for s in range(1, 6)])
    # one forged (or glitched) reading with the patient's own device id and a huge number
    feed(proc, stored, [good(seq=2**62, t=NOW - 94)])
    # the genuine readings go on from 6: newer than the twin, so applied (a numbering reset)
    res = feed(proc, stored, [good(seq=s, t=NOW - 100 + s, hr=100.0) for s in range(7, 12)])
    assert res.applied == 5 and res.duplicates == 0
    (st,) = res.twin_states
    assert st.readings_applied == 11 and st.raw["hr"] == 100.0
    # and a redelivery of what was applied is still a duplicate, whatever its number
    res = feed(proc, stored, [good(seq=3, t=NOW - 97), good(seq=4, t=NOW - 96),
                              good(seq=2**62, t=NOW - 94)])
    assert res.applied == 0 and res.duplicates + res.late == 3


def test_readings_late_after_one_from_the_future_raise_the_cause_and_the_twin_resumes():
    clock = Clock(NOW)
    proc, stored = TwinProcessor(clock=clock), {}
    feed(proc, stored, [good(seq=s, t=NOW - 60 + s) for s in range(1, 61)])
    # a reading 4 minutes ahead (inside the window) moves the twin's time forward ...
    feed(proc, stored, [good(seq=61, t=NOW + 240)])
    kinds: dict[str, messages.AlertEvent] = {}
    # ... so each genuine reading after it, one a second, is late
    for k in range(1, 200):
        clock.t = NOW + k
        res = feed(proc, stored, [good(seq=61 + k, t=clock.t)])
        assert res.applied == 0 and res.late == 1
        (st,) = res.twin_states
        assert st.applied_at == messages.utc(NOW)  # the state says when it last moved
        kinds.update({a.kind: a for a in res.alerts if a.event == "raised"})
        if "rejected_readings" in kinds:
            break
    a = kinds["rejected_readings"]
    assert k <= 30, k  # 10 a minute at a reading a second: within half a minute
    assert a.category == "technical" and a.evidence["cause"] == "late"
    assert "device clock ahead" in a.message
    # the window bounds the freeze: once real time passes the bad reading, readings apply
    clock.t = NOW + 241
    res = feed(proc, stored, [good(seq=400, t=clock.t)])
    assert res.applied == 1 and res.twin_states[0].applied_at == messages.utc(NOW + 241)


def test_a_device_stuck_resending_raises_duplicates_then_no_data():
    clock = Clock(NOW)
    proc, stored = TwinProcessor(clock=clock), {}
    feed(proc, stored, [good(seq=s, t=NOW - 60 + s) for s in range(1, 61)])
    raised: dict[str, float] = {}
    for k in range(1, 400):
        clock.t = NOW + k
        res = feed(proc, stored, [good(seq=60, t=NOW)])  # the same reading, again and again
        assert res.applied == 0 and res.duplicates == 1
        for a in res.alerts:
            if a.event == "raised":
                raised.setdefault(a.kind, k)
                if a.kind == "rejected_readings":
                    assert a.evidence["cause"] == "duplicate"
        if "no_data" in raised:
            break
    # readings keep arriving, none is applied: that is no data, after no_data_s (300 s)
    assert raised["rejected_readings"] <= 30 and 300 <= raised["no_data"] < 310, raised


def test_dead_lettered_readings_of_a_twinned_patient_are_counted_and_alerted():
    clock = Clock(NOW)
    proc, stored = TwinProcessor(clock=clock), {}
    feed(proc, stored, [good(seq=1)])
    raised = []
    for k in range(1, 40):
        clock.t = NOW + k
        # the device's clock is a day ahead: every reading is dead-lettered before the step
        proc.rejected({("P1", "ts_out_of_range"): 1, ("NOBODY", "ts_out_of_range"): 1}, stored)
        raised += [e for e in proc.check_silent(stored) if e.event == "raised"]
        if raised:
            break
    (a,) = raised
    assert a.kind == "rejected_readings" and a.evidence["cause"] == "ts_out_of_range"
    assert proc.rejects.patients() == ["P1"]  # an id without a twin costs nothing


# --- a twin step that fails costs one message, not the batch -----------------------------

def test_a_message_the_twin_step_cannot_take_is_isolated(monkeypatch):
    from twin import history

    docs = [good("P1", seq=1), good("P2", "D2", seq=1), good("P1", seq=2, t=NOW - 9),
            good("P3", "D3", seq=1, hr=123.0), good("P2", "D2", seq=2, t=NOW - 9)]
    got = decode_batch([False] * 5, [d["patient_id"].encode() for d in docs],
                       [enc(d) for d in docs], False, BOUNDS)
    assert got.source.tolist() == [0, 1, 2, 3, 4]
    real = history.step

    def step(states, hist, readings, params, tol):
        if (readings.z[:, 0] == 123.0).any():  # a bug's stand-in, triggered by one message
            raise FloatingPointError("boom")
        return real(states, hist, readings, params, tol)

    monkeypatch.setattr(history, "step", step)
    proc = TwinProcessor(clock=Clock(NOW))
    with pytest.raises(FloatingPointError):
        proc.process(got.batch, {})
    res, failed = proc.process_each(got.batch, got.source, {})
    assert list(failed) == [3]
    assert res.applied == 4 and sorted(res.states) == ["P1", "P2"]
    alone = TwinProcessor(clock=Clock(NOW)).process(
        select(got.batch, got.source != 3), {})
    assert {p: s[:200] for p, s in res.states.items()} == \
        {p: s[:200] for p, s in alone.states.items()}
    assert {s.patient_id: s.readings_applied for s in res.twin_states} == {"P1": 2, "P2": 2}


# --- fuzzing both formats -------------------------------------------------------------------

BIG_INTS = st.sampled_from([2**64 - 1, 2**63, 2**63 - 1, -1, -(2**63), 10**100, 0])
HOSTILE_TEXT = st.one_of(
    st.text(max_size=30), st.text(min_size=60, max_size=200),
    st.sampled_from(["١٢٣", "²³", "NaN", "Infinity", "-Infinity", "1e309", "P1\n", "",
                     "\u0000", "𝟙𝟚", "2100-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
                     "9999-12-31T23:59:59-23:59", "2026-02-30T00:00:00Z", "2026-01-01T25:00Z",
                     "2026-01-01T00:00:00", "P1", "D1", "/min", "%", "Cel"]))
SCALARS = st.one_of(st.none(), st.booleans(), BIG_INTS, st.integers(), HOSTILE_TEXT,
                    st.floats(allow_nan=False, allow_infinity=False))
JSONISH = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _nest(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def json_messages(draw) -> bytes:
    doc = good(seq=draw(st.integers(1, 1000)), t=NOW - draw(st.floats(0, 3600)))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(["seq", "ts", "device_id", "patient_id", "schema", "values",
                                     "quality", "battery", "values.hr", "values.hr.value",
                                     "values.hr.unit", "values.glucose", "extra"]))
        target, *rest = path.split(".")
        value = draw(JSONISH)
        if not rest:
            doc[target] = value
        elif isinstance(doc.get("values"), dict):
            if len(rest) == 1:
                doc["values"][rest[0]] = value
            elif isinstance(doc["values"].get(rest[0]), dict):
                doc["values"][rest[0]][rest[1]] = value
    raw = enc([doc] * draw(st.integers(1, 3)) if draw(st.booleans()) else doc)
    return draw(st.sampled_from([raw, *_byte_mutations(raw, draw)]))


def _byte_mutations(raw: bytes, draw) -> list[bytes]:
    cut = draw(st.integers(0, len(raw)))
    return [
        raw[:cut] + b"\xff\xfe" + raw[cut:],  # invalid UTF-8
        raw.replace(b'"seq": ', b'"seq": 1, "seq": ', 1),  # a duplicated key
        raw.replace(b'"value": 80.0', b'"value": NaN', 1),  # NaN as text
        raw.replace(b'"value": 80.0', b'"value": Infinity', 1),
        raw.replace(b'"value": 80.0', b'"value": 1e999', 1),
        raw.replace(b'"seq": ', b'"seq": 18446744073709551615, "x": ', 1),
        _nest(draw(st.integers(1, 5000))),
        raw[:cut],
    ]


@st.composite
def fhir_messages(draw) -> bytes:
    doc = fhir.encode_reading("D1", "P1", draw(st.integers(0, 10**6)),
                              iso(NOW - draw(st.floats(0, 3600))),
                              {"hr": 70.0, "sbp": 120.0, "dbp": 80.0, "spo2": 97.0})
    entries = doc["entry"]
    for _ in range(draw(st.integers(0, 3))):
        res = draw(st.sampled_from(entries))["resource"]
        field = draw(st.sampled_from(["identifier", "effectiveDateTime", "subject", "device",
                                      "valueQuantity", "component", "status", "code",
                                      "extension", "resourceType"]))
        sub = draw(st.sampled_from(["whole", "value", "reference", "code"]))
        value = draw(JSONISH)
        if sub == "whole" or not isinstance(res.get(field), dict | list):
            res[field] = value
        elif isinstance(res[field], dict):
            res[field][sub] = value
        elif res[field] and isinstance(res[field][0], dict):
            res[field][0][sub if sub != "whole" else "value"] = value
    if draw(st.booleans()):
        doc = entries[0]["resource"]
    raw = enc(doc)
    return draw(st.sampled_from([raw, *_byte_mutations(raw, draw)]))


def _run_worker_path(values: list[bytes], keys: list[bytes | None]) -> None:
    got = decode_batch([False] * len(values), keys, values, False, BOUNDS)
    rejected = {i for i, _, _ in got.rejects}
    for _, reason, kind in got.rejects:
        assert reason and kind and isinstance(reason, str)
    # every message is either dead-lettered or has all its readings in the batch
    per_message = np.bincount(got.source, minlength=len(values))
    for i in range(len(values)):
        assert (i in rejected) != (per_message[i] > 0), (i, values[i][:200])
    res = TwinProcessor(clock=Clock(NOW)).process(got.batch, {})
    assert res.applied + res.duplicates + res.late == len(got.batch.readings.row)


FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.lists(json_messages(), min_size=1, max_size=4), st.data())
def test_fuzzed_json_messages_are_applied_or_dead_lettered(values, data):
    keys = data.draw(st.lists(st.sampled_from([b"P1", b"P2", None, b"\xff", b"x" * 300]),
                              min_size=len(values), max_size=len(values)))
    _run_worker_path(values + [enc(good())], keys + [b"P1"])


@FUZZ
@given(st.lists(fhir_messages(), min_size=1, max_size=4))
def test_fuzzed_fhir_messages_are_applied_or_dead_lettered(values):
    _run_worker_path(values + [enc(good())], [b"P1"] * (len(values) + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_applied_or_dead_lettered(raw):
    _run_worker_path([raw, b'{"resourceType"' + raw], [b"P1", b"P1"])


def test_the_unmutated_messages_are_applied():
    # the fuzz tests' baseline: without mutations, both formats give readings
    msgs = [enc(good()), enc(fhir.encode_reading("D2", "P1", 3, iso(NOW - 1), {"hr": 70.0}))]
    got = decode_batch([False, False], [b"P1", b"P1"], msgs, False, BOUNDS)
    assert got.rejects == [] and got.source.tolist() == [0, 1]
    assert TwinProcessor(clock=Clock(NOW)).process(got.batch, {}).applied == 2


def test_a_rejected_readings_alert_resolves_after_the_device_goes_silent():
    """Its counts decay away while no reading comes; the open alert is still checked, so it
    clears instead of reminding and escalating for ever (threshold 2 a minute)."""
    from twin.policy import AlertPolicy

    clock = Clock(NOW)
    proc = TwinProcessor(clock=clock, policy=AlertPolicy(reject_alert_per_min=2.0))
    stored: dict = {}
    feed(proc, stored, [good(seq=s, t=NOW - 60 + s) for s in range(1, 61)])
    raised = False
    for k in range(1, 60):
        clock.t = NOW + k
        res = feed(proc, stored, [good(seq=60, t=NOW)])  # duplicates
        raised |= any(a.kind == "rejected_readings" and a.event == "raised" for a in res.alerts)
    assert raised
    events = []
    for k in range(60, 3600, 5):  # then nothing at all: the timers run every 5 s
        clock.t = NOW + k
        events += proc.check_silent(stored)
    assert any(e.kind == "rejected_readings" and e.event == "resolved" for e in events), \
        sorted({(e.kind, e.event) for e in events})
