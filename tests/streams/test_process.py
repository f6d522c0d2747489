import msgspec
import numpy as np
import pytest

from streams.messages import ValidReading, encode
from streams.worker.process import TwinProcessor, alert_event, split

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
    # values stored as float32 in the twin come out as the numbers the device sent
    assert st.quality == 0.95 and st.battery == 0.8
    assert b'"quality":0.95}' in encode(st)
    # the stored record continues where it was: a redelivered batch changes nothing
    again = proc.process(batch, res.states)
    assert again.applied == 0 and again.duplicates == 10
    assert again.twin_states[0].estimate == st.estimate
    assert again.twin_states[0].readings_applied == 5 and again.twin_states[0].duplicates == 5


def test_news2_alert_raised_once_latched_then_resolved_on_acknowledgement():
    proc = TwinProcessor()
    stored: dict[str, bytes] = {}
    events = []
    seq = 0
    t = T0
    # normal, then a sustained severe tachycardia with hypotension and tachypnoea, then normal
    for hr, sbp, rr in [(75, 125, 16)] * 30 + [(140, 85, 28)] * 60 + [(75, 125, 16)] * 400:
        seq += 1
        t += 1.0
        res = proc.process([rd("p", seq, t, hr=float(hr), sbp=float(sbp), rr=float(rr))], stored,
                           now=t)
        stored.update(res.states)
        events += res.alerts
    news = [e for e in events if e.kind == "news2"]
    names = [e.event for e in news]
    assert names.count("raised") == 1  # one alert, updated in place, no storm
    raised = news[names.index("raised")]
    assert raised.category == "clinical" and raised.priority in ("medium", "high")
    assert raised.evidence["estimate"]["hr"] > 100 and raised.news2 >= 5
    assert {e.alert_id for e in news} == {raised.alert_id}
    # high priority: latched once the condition cleared, resolved only when acknowledged
    latched = [e for e in news if e.state == "latched"]
    assert latched and latched[0].event == "updated" and "latched" in latched[0].message
    assert news[-1].state == "latched" and "resolved" not in names
    (ack, resolved) = [alert_event(ev) for ev in proc.engine.acknowledge(
        raised.patient_id, raised.alert_id, "nurse.kim", t + 1, comment="seen")]
    assert (ack.event, ack.by, ack.comment) == ("acknowledged", "nurse.kim", "seen")
    assert resolved.event == "resolved" and resolved.alert_id == raised.alert_id


def test_a_silent_device_raises_no_data_and_not_a_healthy_patient():
    clock = {"t": T0}
    proc = TwinProcessor(clock=lambda: clock["t"])
    stored: dict[str, bytes] = {}
    for k in range(1, 31):
        clock["t"] = T0 + k
        res = proc.process([rd("p", k, T0 + k, hr=75.0, spo2=97.0, rr=16.0)], stored)
        stored.update(res.states)
    clock["t"] = T0 + 30 + 299
    assert proc.check_silent(stored) == []
    clock["t"] = T0 + 30 + 301
    (ev,) = proc.check_silent(stored)
    assert (ev.kind, ev.category, ev.event, ev.priority) == ("no_data", "technical", "raised",
                                                            "medium")
    assert proc.check_silent(stored) == []  # one open alert, not one per check
    # data again: the alert resolves once the device has been back for the clear time
    for k in range(31, 400):
        clock["t"] = T0 + 301 + k
        res = proc.process([rd("p", k, T0 + 301 + k, hr=75.0, spo2=97.0, rr=16.0)], stored)
        stored.update(res.states)
        if any(a.event == "resolved" for a in res.alerts):
            break
    assert any(a.kind == "no_data" and a.event == "resolved" for a in res.alerts)


def test_unknown_consciousness_and_oxygen_mark_news2_incomplete():
    res = TwinProcessor().process(
        [rd("p", 1, T0, hr=80.0, rr=16.0, spo2=97.0, sbp=120.0, temp=37.0)], {})
    st = res.twin_states[0]
    assert st.news2_complete is False and st.news2 == 0
    assert np.isclose(st.estimate["temp"], 37.0, atol=0.2)


def test_a_worker_taking_over_continues_the_patients_open_alerts():
    from datetime import UTC, datetime

    from streams.messages import AlertAction

    sick = dict(hr=140.0, sbp=85.0, rr=30.0, spo2=84.0)
    a = TwinProcessor()
    res = a.process([rd("p", 1, T0, **sick)], {}, now=T0)
    (raised,) = [e for e in res.alerts if e.kind == "news2"]
    assert raised.event == "raised" and raised.priority == "high"
    stored = dict(res.states)
    assert raised.alert_id.encode() in split(stored["p"])[2]  # the open alert beside the twin

    # another worker (a restart or a failover) continues from the table: same alert, no new one
    b = TwinProcessor()
    res2 = b.process([rd("p", 2, T0 + 1, **sick)], stored, now=T0 + 1)
    assert [e.event for e in res2.alerts if e.kind == "news2"] == []
    assert b.engine.alerts[("p", "news2")].alert_id == raised.alert_id
    ack = AlertAction(action="acknowledge", patient_id="p", by="dr", ts=datetime.now(UTC),
                      alert_id=raised.alert_id)
    (acked,) = b.act(ack, now=T0 + 2)
    assert acked.event == "acknowledged" and acked.raised_at == raised.raised_at
    # without the stored alerts the new worker would raise a duplicate: what the table prevents
    c = TwinProcessor()
    fresh = {"p": stored["p"][:len(stored["p"]) - len(a.engine.export("p"))]}
    res3 = c.process([rd("p", 2, T0 + 1, **sick)], fresh, now=T0 + 1)
    assert [e.event for e in res3.alerts if e.kind == "news2"] == ["raised"]

    # a worker that loses the patient forgets its alerts and no longer times them
    b.release({"p"})
    assert b.engine.alerts == {} and "p" not in b.last_arrival
    records = b.records({"p"}, {"p": res2.states["p"]})
    assert records["p"] == res2.states["p"][:len(records["p"])]


def test_acting_on_the_watchdogs_alert_is_left_to_the_watchdog():
    """`monitoring_stopped` is raised and answered by the dispatcher's watchdog (no worker holds
    it): a worker taking the acknowledgement neither refuses it to the dead letters nor takes
    the patient on; an unknown alert of its own kinds is still refused."""
    from datetime import UTC, datetime

    from streams.errors import InvalidMessage
    from streams.messages import AlertAction

    proc = TwinProcessor()
    ack = AlertAction(action="acknowledge", patient_id="p", by="dr", ts=datetime.now(UTC),
                      alert_id="p:monitoring_stopped:1900000000000")
    assert proc.act(ack, now=T0) == []
    assert proc.engine.alerts == {} and proc.owned == set()  # the patient is not taken on
    with pytest.raises(InvalidMessage, match="no open alert"):
        proc.act(msgspec.structs.replace(ack, alert_id="p:news2:1900000000000"), now=T0)
    # the watchdog answers acknowledgements only: an escalation of its alert is refused, not
    # silently swallowed (the clinician must not believe help was called)
    with pytest.raises(InvalidMessage, match="no open alert"):
        proc.act(msgspec.structs.replace(ack, action="escalate"), now=T0)


def test_late_reading_within_tolerance_is_applied_in_time_order_across_batches():
    """Reading 10 of 20 is delivered after reading 20, in a later batch: the twin is the one the
    readings make in time order (through the stored record, as after a restart), and a reading
    later than the tolerance is counted late and skipped."""
    def reading(k):
        return rd("p", k, T0 + k, hr=70.0 + (k % 7), spo2=96.0 + (k % 3), rr=14.0 + (k % 5))

    in_order = TwinProcessor().process([reading(k) for k in range(1, 21)], {}, now=T0 + 20)
    proc = TwinProcessor(late_tolerance_s=30.0)
    first = proc.process([reading(k) for k in range(1, 21) if k != 10], {}, now=T0 + 20)
    assert first.twin_states[0].sequence_gaps == 1
    res = TwinProcessor(late_tolerance_s=30.0).process([reading(10)], first.states, now=T0 + 21)
    assert res.reordered == 1 and res.applied == 1 and res.late == 0 and res.duplicates == 0
    got, want = res.twin_states[0], in_order.twin_states[0]
    assert got.estimate == want.estimate and got.sd == want.sd and got.forecasts == want.forecasts
    assert got.readings_applied == 20 and got.sequence_gaps == 0

    # 40 s later the same reading is beyond the tolerance: late, and the twin does not move
    ahead = proc.process([reading(k) for k in range(21, 61)], res.states, now=T0 + 60)
    again = proc.process([rd("p", 1000, T0 + 15, hr=150.0)], ahead.states, now=T0 + 61)
    assert again.late == 1 and again.applied == 0 and again.reordered == 0
    assert again.twin_states[0].estimate == ahead.twin_states[0].estimate
    # and a redelivery of an applied reading is a duplicate, not a late reading
    dup = proc.process([reading(50)], ahead.states, now=T0 + 61)
    assert dup.duplicates == 1 and dup.late == 0 and dup.reordered == 0

    # with no tolerance the late reading is not applied
    off = TwinProcessor(late_tolerance_s=0.0)
    skipped = off.process([reading(10)], off.process(
        [reading(k) for k in range(1, 21) if k != 10], {}, now=T0 + 20).states, now=T0 + 21)
    assert skipped.applied == 0 and skipped.reordered == 0
    assert skipped.twin_states[0].estimate == first.twin_states[0].estimate


def test_twins_held_through_a_broker_loss_are_marked_and_their_patients_alerted():
    proc = TwinProcessor()
    res = proc.process([rd(p, 1, T0, hr=70.0, spo2=97.0) for p in ("a", "b")], {}, now=T0)
    assert all(st.history_lost_at is None for st in res.twin_states)
    records, events = proc.history_lost(dict(res.states), lost_at=T0 + 5, now=T0 + 6)
    assert sorted(records) == ["a", "b"]
    assert [(e.patient_id, e.kind, e.event, e.category, e.state) for e in events] == [
        (p, "history_lost", "raised", "technical", "latched") for p in ("a", "b")]
    assert "lost its stored records at" in events[0].message
    # the twin itself is unchanged (state and history); only its alerts part grew
    assert split(records["a"])[:2] == split(res.states["a"])[:2]
    # a restarted worker continues from these records: its twin states carry the mark
    fresh = TwinProcessor()
    res2 = fresh.process([rd("a", 2, T0 + 7, hr=71.0, spo2=97.0)], records, now=T0 + 7)
    (st,) = res2.twin_states
    assert st.history_lost_at is not None and st.history_lost_at.timestamp() == T0 + 5
    assert st.readings_applied == 2  # carried on, not started over


def test_the_twins_sepsis_risk_rises_with_a_septic_course_and_raises_its_alert():
    """The risk `validate` fitted, live: a patient whose vital signs take a septic course over
    hours (RCP 2017 and Sepsis-3 signs: tachycardia, tachypnoea, fever, falling pressure) gets
    a rising risk and one low-priority `sepsis_risk` alert; a stable patient neither."""
    from twin import risk

    proc = TwinProcessor()
    threshold = risk.threshold(proc.risk)
    stored: dict[str, bytes] = {}
    events, seq, risks = [], 0, {"sick": [], "well": []}
    for k in range(12 * 12):  # every 5 minutes for 12 hours
        t = T0 + k * 300.0
        f = min(max((k / 12.0 - 2.0) / 8.0, 0.0), 1.0)  # hours 2-10: the course
        seq += 1
        batch = [rd("sick", seq, t, hr=75 + 50 * f, rr=14 + 14 * f, temp=36.8 + 2.4 * f,
                    sbp=125 - 35 * f, dbp=75 - 20 * f, spo2=97 - 4 * f),
                 rd("well", seq, t, hr=72.0, rr=14.0, temp=36.8, sbp=125.0, dbp=75.0,
                    spo2=97.0)]
        res = proc.process(batch, stored, now=t)
        stored.update(res.states)
        events += res.alerts
        for st in res.twin_states:
            risks[st.patient_id].append(st.sepsis_risk)
    assert risks["sick"][-1] > threshold > risks["well"][-1] >= 0.0
    assert risks["sick"][-1] > 3 * risks["sick"][12]  # it rose with the course
    raised = [e for e in events if e.kind == "sepsis_risk" and e.event == "raised"]
    assert [e.patient_id for e in raised] == ["sick"]
    assert (raised[0].category, raised[0].priority) == ("clinical", "low")
    assert raised[0].evidence["risk"] >= threshold


def test_only_twins_that_applied_a_reading_move_their_baselines():
    """A batch where one twin applies readings and another's are all duplicates: the first
    twin's running baselines move, the second's record stays exactly as it was."""
    from twin import bank

    proc = TwinProcessor()
    first = proc.process([rd(p, 1, T0 + 1, hr=70.0) for p in ("a", "b")], {})
    again = proc.process([rd("a", 2, T0 + 61, hr=90.0), rd("b", 1, T0 + 1, hr=70.0)],
                         first.states)
    assert again.duplicates == 1
    a0, a1 = (bank.from_bytes([split(r.states["a"])[0]]) for r in (first, again))
    assert a1["slow_t"][0] > a0["slow_t"][0] and a1["base_n"][0].sum() > a0["base_n"][0].sum()
    b0, b1 = (bank.from_bytes([split(r.states["b"])[0]]) for r in (first, again))
    for f in ("base_first_t", "base_sum", "base_n", "slow", "slow_t"):
        np.testing.assert_array_equal(b1[f], b0[f])
