import numpy as np

from streams.messages import ValidReading
from streams.process import TwinProcessor

T0 = 1_800_000_000.0


def rd(pid, seq, t, **values):
    return ValidReading(f"dev-{pid}", pid, seq, t, values, 0.95, 0.8)


def test_one_state_per_patient_and_records_round_trip():
    proc = TwinProcessor()
    batch = [rd(p, s, T0 + s, hr=70.0 + s, spo2=97.0) for s in range(1, 6) for p in ("a", "b")]
    res = proc.process(batch, {})
    assert sorted(res.states) == ["a", "b"]
    assert [st.patient_id for st in res.twin_states] == ["a", "b"]
    assert res.applied == 10
    st = res.twin_states[0]
    assert st.readings_applied == 5 and st.estimate["sbp"] is None and st.raw["hr"] == 75.0
    assert len(st.forecasts) == 3 and st.forecasts[0].minutes == 15
    # the stored record continues where it was: a redelivered batch changes nothing
    again = proc.process(batch, res.states)
    assert again.applied == 0 and again.duplicates == 10
    assert again.twin_states[0].estimate == st.estimate
    assert again.twin_states[0].readings_applied == 5 and again.twin_states[0].duplicates == 5


def test_band_alert_raised_then_resolved_once():
    proc = TwinProcessor()
    stored: dict[str, bytes] = {}
    events = []
    seq = 0
    t = T0
    # normal, then a sustained severe tachycardia with hypotension and tachypnoea, then normal
    for hr, sbp, rr in [(75, 125, 16)] * 30 + [(140, 85, 28)] * 60 + [(75, 125, 16)] * 60:
        seq += 1
        t += 1.0
        res = proc.process([rd("p", seq, t, hr=float(hr), sbp=float(sbp), rr=float(rr))], stored)
        stored.update(res.states)
        events += [(a.event, a.priority) for a in res.alerts]
    kinds = [e for e, _ in events]
    assert kinds[0] == "raised"
    assert kinds.count("raised") == 1 and kinds[-1] == "resolved"
    assert ("escalated", "high") in events or ("raised", "high") in events


def test_unknown_consciousness_and_oxygen_mark_news2_incomplete():
    res = TwinProcessor().process(
        [rd("p", 1, T0, hr=80.0, rr=16.0, spo2=97.0, sbp=120.0, temp=37.0)], {})
    st = res.twin_states[0]
    assert st.news2_complete is False and st.news2 == 0
    assert np.isclose(st.estimate["temp"], 37.0, atol=0.2)
