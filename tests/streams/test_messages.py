import base64
import json
import re
from pathlib import Path

import msgspec
import pytest

from streams import messages, webhooks
from streams.errors import InvalidMessage

DOCS = Path(__file__).resolve().parents[2] / "docs" / "messages.md"
GOOD = {
    "schema": "patient-twin.reading/1", "device_id": "d1", "patient_id": "p1", "seq": 7,
    "ts": "2026-01-01T00:00:00Z", "values": {"hr": {"value": 72, "unit": "/min"}},
}


def enc(doc) -> bytes:
    return json.dumps(doc).encode()


def with_(**kw):
    return {**GOOD, **kw}


def without(field):
    return {k: v for k, v in GOOD.items() if k != field}


@pytest.mark.parametrize("data,kind,fragment", [
    (b"", "empty", "empty"),
    (b"{not json", "not_json", "not JSON"),
    (b"x" * (messages.MAX_MESSAGE_BYTES + 1), "oversized", "exceeds"),
    (enc(without("device_id")), "missing_field", "device_id"),
    (enc(with_(seq="7")), "wrong_type", "$.seq"),
    (enc(with_(seq=-1)), "wrong_type", "$.seq"),
    (enc(with_(ts="yesterday")), "wrong_type", "$.ts"),
    (enc(with_(ts="2026-01-01T00:00:00")), "wrong_type", "UTC offset"),
    (enc(with_(values={"glucose": {"value": 5, "unit": "mmol/L"}})), "unknown_channel",
     "glucose"),
    (enc(with_(values={"hr": {"value": 72, "unit": "Hz"}})), "wrong_unit", "'/min'"),
    (enc(with_(values={"hr": {"value": -3, "unit": "/min"}})), "impossible_value", "impossible"),
    (enc(with_(values={"spo2": {"value": 101, "unit": "%"}})), "impossible_value", "spo2"),
    (enc(with_(values={})), "missing_field", "at least one"),
    (enc(with_(schema="patient-twin.reading/2")), "wrong_schema", "reading/2"),
    (enc(with_(quality=1.5)), "wrong_type", "$.quality"),
    (enc([]), "empty", "empty"),
    (enc([GOOD] * (messages.MAX_READINGS_PER_MESSAGE + 1)), "oversized", "readings"),
    (enc([GOOD, with_(seq="x")]), "wrong_type", "$[1].seq"),
])
def test_every_rejection_has_a_kind_and_a_reason(data, kind, fragment):
    with pytest.raises(InvalidMessage) as exc:
        messages.decode_readings(data)
    assert exc.value.kind == kind
    assert fragment in str(exc.value)


def test_good_reading_is_converted_to_canonical_units():
    doc = with_(values={"temp": {"value": 100.4, "unit": "[degF]"},
                        "sbp": {"value": 16, "unit": "kPa"}, "hr": {"value": 0, "unit": "/min"}})
    (r,) = messages.decode_readings(enc(doc))
    assert r.values["temp"] == pytest.approx(38.0)
    assert r.values["sbp"] == pytest.approx(120.0, abs=0.1)
    assert r.values["hr"] == 0.0  # sensor-off zero passes: the twin decides
    assert r.t == 1767225600.0


def test_gateway_batch_and_unknown_optional_field_are_accepted():
    rs = messages.decode_readings(enc([GOOD, with_(seq=8, firmware="2.1")]))
    assert [r.seq for r in rs] == [7, 8]


def test_built_reading_round_trips():
    msg = messages.reading("d", "p", 3, messages.utc(1.8e9), {"hr": 80.0, "spo2": 97.0},
                           quality=0.9, battery=0.5)
    (r,) = messages.decode_readings(messages.encode(msg))
    assert r.values == {"hr": 80.0, "spo2": 97.0} and r.quality == 0.9 and r.seq == 3


def _doc_examples() -> dict[str, dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    out = {}
    for b in blocks:
        doc = json.loads(b)
        out[doc.get("schema") or doc["resourceType"]] = doc
    return out


def test_docs_examples_match_the_definitions():
    ex = _doc_examples()
    assert set(ex) == {messages.READING_SCHEMA, messages.PATIENT_SCHEMA,
                       messages.OBSERVATION_SCHEMA, messages.TWIN_STATE_SCHEMA,
                       messages.ALERT_SCHEMA, "patient-twin.dead-letter/1", "Bundle",
                       webhooks.SUBSCRIPTION_SCHEMA, "patient-twin.webhook-dead-letter/1",
                       messages.AUDIT_SCHEMA}
    msgspec.json.decode(enc(ex[messages.AUDIT_SCHEMA]), type=messages.AuditRecord)
    msgspec.json.decode(enc(ex[webhooks.SUBSCRIPTION_SCHEMA]), type=webhooks.Subscription)
    msgspec.json.decode(enc(ex["patient-twin.webhook-dead-letter/1"]),
                        type=webhooks.WebhookDeadLetter)
    messages.decode_readings(enc(ex[messages.READING_SCHEMA]))
    (fhir_reading,) = messages.decode_readings(enc(ex["Bundle"]))
    assert fhir_reading.values == {"hr": 88.0, "sbp": 131.0, "dbp": 82.0}
    messages.decode_patient(enc(ex[messages.PATIENT_SCHEMA]))
    messages.decode_observation(enc(ex[messages.OBSERVATION_SCHEMA]))
    msgspec.json.decode(enc(ex[messages.TWIN_STATE_SCHEMA]), type=messages.TwinState)
    msgspec.json.decode(enc(ex[messages.ALERT_SCHEMA]), type=messages.AlertEvent)
    dead = msgspec.json.decode(enc(ex["patient-twin.dead-letter/1"]), type=messages.DeadLetter)
    assert dead.original == base64.b64decode(ex["patient-twin.dead-letter/1"]["original"])


@pytest.mark.parametrize("change,fragment", [
    ({"event": "move"}, "$.event"),
    ({"spo2_scale": 3}, "$.spo2_scale"),
    ({"schema": "patient-twin.patient/9"}, "not supported"),
])
def test_patient_record_rejections(change, fragment):
    doc = {**_doc_examples()[messages.PATIENT_SCHEMA], **change}
    with pytest.raises(InvalidMessage, match=re.escape(fragment)):
        messages.decode_patient(enc(doc))


def test_observation_rejects_wrong_flow_unit_and_acvpu():
    base = _doc_examples()[messages.OBSERVATION_SCHEMA]
    with pytest.raises(InvalidMessage, match="L/min"):
        messages.decode_observation(enc({**base, "o2_flow": {"value": 2, "unit": "mL/s"}}))
    with pytest.raises(InvalidMessage, match=re.escape("$.acvpu")):
        messages.decode_observation(enc({**base, "acvpu": "X"}))


@pytest.mark.parametrize("doc, fragment", [
    ({"action": "acknowledge", "patient_id": "P1", "by": "x", "ts": "2026-01-01T00:00:00Z"},
     "alert_id"),
    ({"action": "silence", "patient_id": "P1", "by": "x", "ts": "2026-01-01T00:00:00Z",
      "kind": "news2", "until": "2026-01-01T01:00:00Z"}, "reason"),
    ({"action": "snooze", "patient_id": "P1", "by": "x", "ts": "2026-01-01T00:00:00Z"},
     "$.action"),
])
def test_alert_action_rejections(doc, fragment):
    with pytest.raises(InvalidMessage, match=re.escape(fragment)):
        messages.decode_action(enc({"schema": messages.ALERT_ACTION_SCHEMA, **doc}))


def test_ids_are_checked_in_single_readings_and_in_gateway_batches_newline_included():
    ok = messages.encode(messages.reading("dev-1", "P1", 1, messages.utc(1.8e9), {"hr": 70.0}))
    assert messages.decode_readings(ok)[0].patient_id == "P1"
    for bad, path in (("P 1", "$.patient_id"), ("P1\n", "$.patient_id")):
        data = ok.replace(b'"P1"', msgspec.json.encode(bad))
        with pytest.raises(InvalidMessage) as err:
            messages.decode_readings(data)
        assert err.value.kind == "wrong_type" and path in str(err.value)
    batch = b"[" + ok + b"," + ok.replace(b'"dev-1"', b'"dev/1"') + b"]"
    with pytest.raises(InvalidMessage, match=r"at `\$\[1\]\.device_id`"):
        messages.decode_readings(batch)
