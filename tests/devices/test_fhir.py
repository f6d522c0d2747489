"""FHIR R4 vital-signs Observations: what the simulator writes validates against fhir.resources,
and the stream processor decodes it to the same readings as the project's own format."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from devices.faults import DeviceEffects
from devices.run import Ward
from streams import fhir, messages
from streams.errors import InvalidMessage
from tests.devices.test_simulator import START, ListOutput
from twin.channels import CHANNELS, SPO2_PULSE_OX_LOINC


def test_simulated_fhir_bundles_validate_and_decode_like_json_readings():
    ward_fhir = Ward(6, seed=5, rate=1.0, mix="stable=0.5,sepsis=0.5", horizon_s=3600.0,
                     start=START, effects=DeviceEffects.clean(), fmt="fhir")
    ward_json = Ward(6, seed=5, rate=1.0, mix="stable=0.5,sepsis=0.5", horizon_s=3600.0,
                     start=START, effects=DeviceEffects.clean())
    as_fhir, as_json = ListOutput(), ListOutput()
    while ward_json.t < 200:  # one of each channel: cuff and thermometer within 60 s
        ward_fhir.step(as_fhir)
        ward_json.step(as_json)
    assert len(as_fhir.items) == len(as_json.items)
    codes = set()
    for (_, f), (_, j) in zip(as_fhir.items, as_json.items, strict=True):
        bundle = Bundle.model_validate_json(f)  # raises on anything FHIR R4(B) forbids
        for e in bundle.entry:
            obs = e.resource
            assert obs.status == "final"
            assert obs.category[0].coding[0].code == "vital-signs"
            assert obs.subject.reference.startswith("Patient/")
            codes.update(c.code for c in obs.code.coding)
            codes.update(c.code for comp in obs.component or [] for c in comp.code.coding)
            quantities = [obs.valueQuantity] if obs.valueQuantity else [
                c.valueQuantity for c in obs.component]
            for q in quantities:
                assert q.system == "http://unitsofmeasure.org" and q.code == q.unit
        assert messages.decode_readings(f) == messages.decode_readings(j)
    # every channel's LOINC code, the BP panel and the pulse-oximetry SpO2 code appear
    assert {c.loinc for c in CHANNELS} | {fhir.BP_PANEL, SPO2_PULSE_OX_LOINC} <= codes


def _obs(**over):
    o = fhir.encode_reading("D1", "P1", 7, "2026-11-27T00:00:00Z", {"hr": 80.0})["entry"][0][
        "resource"]
    o.update(over)
    return json.dumps(o).encode()


@pytest.mark.parametrize("change, kind", [
    ({"code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}}, "unknown_channel"),
    ({"identifier": []}, "missing_field"),
    ({"device": None}, "missing_field"),
    ({"subject": {"reference": "Group/5"}}, "wrong_type"),
    ({"valueQuantity": {"value": 80, "unit": "Hz", "code": "Hz"}}, "wrong_unit"),
    ({"valueQuantity": {"value": 900, "unit": "/min", "code": "/min"}}, "impossible_value"),
    ({"effectiveDateTime": "2026-11-27T00:00:00"}, "wrong_type"),
    ({"status": "entered-in-error"}, "wrong_type"),
    ({"extension": [{"url": fhir.BATTERY_EXT, "valueDecimal": 7}]}, "impossible_value"),
])
def test_bad_fhir_observations_are_rejected_with_a_reason(change, kind):
    if change.get("device", 1) is None:
        o = json.loads(_obs())
        del o["device"]
        body = json.dumps(o).encode()
    else:
        body = _obs(**change)
    with pytest.raises(InvalidMessage) as exc:
        messages.decode_readings(body)
    assert exc.value.kind == kind, str(exc.value)


def test_a_single_observation_is_accepted():
    (r,) = messages.decode_readings(_obs())
    assert (r.device_id, r.patient_id, r.seq, r.values) == ("D1", "P1", 7, {"hr": 80.0})
