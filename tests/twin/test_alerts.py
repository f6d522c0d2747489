"""The alert engine: conditions from the twin, and every lifecycle transition, on a fake clock."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twin.alerts import AlertEngine, TwinView, conditions, red_probability
from twin.channels import INDEX, C
from twin.policy import KINDS, AlertPolicy

H = np.array([15.0, 30.0, 60.0])
NORMAL = {"hr": 72.0, "rr": 15.0, "spo2": 97.0, "sbp": 124.0, "dbp": 78.0, "temp": 36.9}


def view(n: int = 1, *, news2=0, components=None, since=1.0, age=1.0, battery=0.9,
         estimate=None, forecast=None, forecast_sd=1.0, scale=1) -> TwinView:
    est = np.tile([NORMAL[k] for k in NORMAL], (n, 1)) if estimate is None else estimate
    fc = np.repeat(est[:, None, :], len(H), axis=1) if forecast is None else forecast
    comp = np.zeros((n, 7), dtype=np.int64) if components is None else np.asarray(components)
    return TwinView(
        patient_ids=[f"P{i}" for i in range(n)], estimate=est, sd=np.ones((n, C)),
        forecast=fc, forecast_sd=np.full(fc.shape, forecast_sd), horizons_min=H,
        news2=np.broadcast_to(np.asarray(news2), (n,)).astype(np.int64), components=comp,
        spo2_scale=np.full(n, scale), since_reading_s=np.full(n, since, dtype=float),
        channel_age_s=np.full((n, C), age, dtype=float), battery=np.full(n, battery))


def comp(**scores) -> np.ndarray:
    order = ["rr", "spo2", "o2", "sbp", "hr", "cons", "temp"]
    return np.array([[scores.get(k, 0) for k in order]])


K = {k: i for i, k in enumerate(KINDS)}


def test_conditions_follow_the_news2_response_triggers():
    p = AlertPolicy()
    assert not conditions(view(news2=4, components=comp(hr=2, rr=2)), p).on[0, K["news2"]]
    c = conditions(view(news2=3, components=comp(rr=3)), p)  # a single red parameter
    assert c.on[0, K["news2"]] and c.priority[0, K["news2"]] == 1
    c = conditions(view(news2=5, components=comp(hr=2, rr=2, temp=1)), p)
    assert c.on[0, K["news2"]] and c.priority[0, K["news2"]] == 1
    c = conditions(view(news2=7, components=comp(hr=3, rr=2, sbp=2)), p)
    assert c.on[0, K["news2"]] and c.priority[0, K["news2"]] == 2


def test_a_stale_twin_raises_no_data_instead_of_reporting_anything_clinical():
    p = AlertPolicy(no_data_s=300)
    c = conditions(view(news2=7, components=comp(hr=3, rr=2, sbp=2), since=301), p)
    assert c.on[0, K["no_data"]] and not c.on[0, K["news2"]]
    c = conditions(view(since=299), p)
    assert not c.on[0, K["no_data"]] and c.clear[0, K["no_data"]]


def test_sensor_off_and_low_battery():
    p = AlertPolicy(sensor_off_s=120, low_battery=0.2)
    assert conditions(view(age=121), p).on[0, K["sensor_off"]]
    assert not conditions(view(age=100), p).on[0, K["sensor_off"]]
    # a device without an SpO2 sensor: that channel was never seen, which is not "sensor off"
    no_spo2 = view(age=10)
    no_spo2.channel_age_s[0, INDEX["spo2"]] = np.nan
    assert not conditions(no_spo2, p).on[0, K["sensor_off"]]
    assert conditions(view(battery=0.2), p).on[0, K["low_battery"]]
    c = conditions(view(battery=np.nan), p)
    assert not c.on[0, K["low_battery"]] and not c.clear[0, K["low_battery"]]


def test_red_probability_is_the_normal_tail_beyond_the_chart_limit():
    est = np.tile([NORMAL[k] for k in NORMAL], (1, 1))
    fc = np.repeat(est[:, None, :], 3, axis=1)
    fc[0, 1, INDEX["spo2"]] = 91.5  # at the scale-1 red limit at 30 min: P = 1/2
    fc[0, 2, INDEX["spo2"]] = 80.0  # far below at 60 min: outside the 30-min window
    p = red_probability(view(estimate=est, forecast=fc, forecast_sd=2.0), within_min=30)
    assert p[0, INDEX["spo2"]] == pytest.approx(0.5)
    # on SpO2 scale 2 (target 88-92 %), 91.5 % is nowhere near red (<= 83)
    p2 = red_probability(view(estimate=est, forecast=fc, forecast_sd=2.0, scale=2), 30)
    assert p2[0, INDEX["spo2"]] < 1e-4
    fc[0, 0, INDEX["hr"]] = 140.0  # hr >= 131 scores 3
    p = red_probability(view(estimate=est, forecast=fc, forecast_sd=3.0), 30)
    assert p[0, INDEX["hr"]] > 0.99
    assert p[0, INDEX["dbp"]] == 0.0  # diastolic pressure is not scored


def test_predictive_alert_raises_and_clears_with_probability_hysteresis():
    eng = AlertEngine(AlertPolicy(raise_after_s={**AlertPolicy().raise_after_s,
                                                 "news2_forecast": 0.0}))
    est = np.tile([NORMAL[k] for k in NORMAL], (1, 1))

    def at(spo2_30min: float) -> TwinView:
        fc = np.repeat(est[:, None, :], 3, axis=1)
        fc[0, 1, INDEX["spo2"]] = spo2_30min
        return view(estimate=est, forecast=fc, forecast_sd=1.0)

    ev = eng.update(at(89.0), 0.0)  # P(SpO2 <= 91 in 30 min) ~ 0.99
    assert [e.name for e in ev] == ["raised"]
    assert "P(spo2 red within 30 min) = 0.99" in ev[0].message
    assert ev[0].alert.category == "clinical" and ev[0].alert.priority == "low"
    assert eng.update(at(91.8), 10.0) == []  # P ~ 0.38: below p_raise, not below p_clear... yet
    assert eng.update(at(93.0), 20.0) == []  # clear, but not for 5 minutes
    assert [e.name for e in eng.update(at(93.0), 321.0)] == ["resolved"]


def test_drift_trends_raise_the_predictive_alert_until_news2_itself_triggers():
    """A NEWS2 trigger likely within the hour if the trends go on raises `news2_forecast`, with
    the trends named; once the trigger is met it is the news2 alert's business, and the
    prediction clears below `p_clear`."""
    eng = AlertEngine(AlertPolicy(raise_after_s={**AlertPolicy().raise_after_s,
                                                 "news2_forecast": 0.0}))
    slope = np.zeros((1, C))
    slope[0, INDEX["rr"]] = 6.0
    slope_sd = np.ones((1, C))

    def at(p: float, steady: float = 0.1, **kw) -> TwinView:
        return dataclasses.replace(view(**kw), p_trigger=np.array([p]),
                                   p_steady=np.array([steady]), slope=slope, slope_sd=slope_sd)

    # likely from the spread alone (as likely with every channel held): not a prediction
    cond = conditions(at(0.9, steady=0.85, news2=4, components=comp(rr=2, hr=2)), AlertPolicy())
    assert not cond.on[0, K["news2_forecast"]]
    # the slopes must add `trend_margin` (0.25) to it, however likely the trigger is held still
    near = {"news2": 4, "components": comp(rr=2, hr=2)}
    assert not conditions(at(0.9, steady=0.7, **near), AlertPolicy()).on[0, K["news2_forecast"]]
    assert conditions(at(0.95, steady=0.6, **near), AlertPolicy()).on[0, K["news2_forecast"]]
    assert not conditions(at(0.95, steady=0.6, **near),
                          AlertPolicy(trend_margin=0.4)).on[0, K["news2_forecast"]]
    ev = eng.update(at(0.85, news2=3, components=comp(rr=2, hr=1)), 0.0)
    assert [e.name for e in ev] == ["raised"] and ev[0].alert.kind == "news2_forecast"
    assert ("the trends point to a NEWS2 trigger within 60 min (trend index 0.85 if they go "
            "on, 0.10 held where they are; not a calibrated probability)" in ev[0].message)
    assert "rr +6/h" in ev[0].message and "hr" not in ev[0].message.split("trends:")[1]
    assert ev[0].alert.evidence["p_trigger"] == 0.85
    cond = conditions(at(0.85, news2=5, components=comp(rr=3, hr=2)), AlertPolicy())
    assert not cond.on[0, K["news2_forecast"]] and cond.clear[0, K["news2_forecast"]]
    # raised from `trend_raise` (0.7), cleared below `p_clear` (0.5)
    assert conditions(at(0.72), AlertPolicy()).on[0, K["news2_forecast"]]
    assert not conditions(at(0.72), AlertPolicy(trend_raise=0.8)).on[0, K["news2_forecast"]]
    cond = conditions(at(0.6), AlertPolicy())
    assert not cond.on[0, K["news2_forecast"]] and not cond.clear[0, K["news2_forecast"]]
    assert conditions(at(0.4), AlertPolicy()).clear[0, K["news2_forecast"]]


def test_raise_waits_for_the_condition_to_persist_and_one_alert_is_updated_in_place():
    eng = AlertEngine(AlertPolicy())
    five = view(news2=5, components=comp(hr=2, rr=2, temp=1))
    assert eng.update(five, 0.0) == []  # pending: must hold 60 s
    assert eng.update(five, 30.0) == []
    ev = eng.update(five, 61.0)
    assert [e.name for e in ev] == ["raised"] and ev[0].alert.priority == "medium"
    assert "NEWS2 5 (medium band)" in ev[0].message
    assert ev[0].alert.evidence["estimate"]["hr"] == 72.0
    assert eng.update(five, 70.0) == []  # no duplicate
    seven = view(news2=7, components=comp(hr=3, rr=2, sbp=2))
    ev = eng.update(seven, 80.0)
    assert [e.name for e in ev] == ["updated"] and ev[0].alert.priority == "high"
    assert len(eng.alerts) == 1


def test_a_blip_shorter_than_the_raise_delay_raises_nothing():
    eng = AlertEngine()
    eng.update(view(news2=5, components=comp(hr=2, rr=2, temp=1)), 0.0)
    assert eng.update(view(), 20.0) == []
    assert eng.alerts == {}
    assert eng.update(view(news2=5, components=comp(hr=2, rr=2, temp=1)), 70.0) == []


def test_high_priority_raises_at_once_and_stays_latched_until_acknowledged():
    eng = AlertEngine()
    seven = view(news2=7, components=comp(hr=3, rr=2, sbp=2))
    (ev,) = eng.update(seven, 0.0)
    assert ev.name == "raised" and ev.alert.priority == "high"
    assert eng.update(view(), 10.0) == []
    # flapping back resets the clear timer (hysteresis)
    eng.update(seven, 200.0)
    assert eng.update(view(), 210.0) == []
    ev = eng.update(view(), 511.0)
    assert [e.name for e in ev if e.name != "reminder" and e.name != "escalated"] == ["updated"]
    alert = next(iter(eng.alerts.values()))
    assert alert.state == "latched"
    # long after the condition cleared: still latched, still reminding, never resolved alone
    later = eng.update(view(), 2000.0)
    assert {e.name for e in later} <= {"reminder", "escalated"}
    assert alert.state == "latched" and len(eng.alerts) == 1
    evs = eng.acknowledge(alert.patient_id, alert.alert_id, "nurse.kim", 2100.0,
                          comment="reviewed, stable")
    assert [e.name for e in evs] == ["acknowledged", "resolved"]
    assert evs[0].by == "nurse.kim" and evs[0].alert.comment == "reviewed, stable"
    assert eng.alerts == {}


def test_a_latched_alert_whose_condition_returns_says_so():
    """Latched (cleared, unacknowledged), then the patient is red again: the screen must not
    go on saying "cleared"; the alert becomes active with an `updated` event and new evidence."""
    eng = AlertEngine()
    eng.update(view(news2=7, components=comp(hr=3, rr=2, sbp=2)), 0.0)
    eng.update(view(), 10.0)
    eng.update(view(), 400.0)
    (alert,) = eng.alerts.values()
    assert alert.state == "latched"
    back = [e for e in eng.update(view(news2=8, components=comp(spo2=3, rr=3, sbp=2)), 415.0)
            if e.name not in ("reminder", "escalated")]
    assert [e.name for e in back] == ["updated"] and "again" in back[0].message
    assert alert.state == "active" and alert.evidence["news2"] == 8
    assert len(eng.alerts) == 1  # the same alert, not a second one


def test_medium_alert_resolves_by_itself_after_the_clear_time():
    eng = AlertEngine()
    five = view(news2=5, components=comp(hr=2, rr=2, temp=1))
    eng.update(five, 0.0)
    eng.update(five, 60.0)
    assert eng.update(view(), 100.0) == []
    assert [e.name for e in eng.update(view(), 401.0)] == ["resolved"]
    assert eng.stats.raised == 1 and eng.stats.resolved == 1


def test_unacknowledged_alerts_remind_then_escalate_and_acknowledgement_stops_that():
    eng = AlertEngine()
    seven = view(news2=7, components=comp(hr=3, rr=2, sbp=2))
    (raised,) = eng.update(seven, 0.0)
    assert eng.update(seven, 119.0) == []
    assert [e.name for e in eng.update(seven, 121.0)] == ["reminder"]
    assert eng.update(seven, 200.0) == []
    ev = eng.update(seven, 301.0)
    assert [e.name for e in ev] == ["escalated"]
    assert ev[0].alert.audience == "ward+rapid-response" and ev[0].alert.escalations == 1
    eng.acknowledge(raised.alert.patient_id, raised.alert.alert_id, "dr.li", 310.0)
    assert eng.update(seven, 2000.0) == []
    assert eng.stats.ack_seconds == [310.0] and eng.stats.escalated == 1


def test_escalation_raises_medium_to_high():
    eng = AlertEngine()
    five = view(news2=5, components=comp(hr=2, rr=2, temp=1))
    eng.update(five, 0.0)
    eng.update(five, 60.0)
    ev = [e for e in eng.update(five, 60.0 + 1801.0) if e.name == "escalated"]
    assert ev and ev[0].alert.priority == "high"


def test_silence_suppresses_notification_but_not_the_resolved_event_and_expires():
    eng = AlertEngine()
    five = view(news2=5, components=comp(hr=2, rr=2, temp=1))
    assert eng.silence("P0", "news2", "known chronic tachypnoea", 1000.0, "dr.li", 0.0) == []
    eng.update(five, 0.0)
    (raised,) = eng.update(five, 60.0)
    assert raised.name == "raised" and not raised.notify
    eng.update(view(), 100.0)
    (resolved,) = eng.update(view(), 401.0)
    assert resolved.name == "resolved" and resolved.notify
    # expiry: an open alert under an expiring silence says so
    eng.update(five, 500.0)
    (again,) = eng.update(five, 560.0)
    assert not again.notify
    ev = eng.tick(1000.0)
    assert [e.name for e in ev] == ["updated"] and "silence expired" in ev[0].message
    assert ev[0].notify


def test_silencing_an_open_alert_is_an_event_with_who_and_why():
    eng = AlertEngine()
    (raised,) = eng.update(view(news2=7, components=comp(hr=3, rr=2, sbp=2)), 0.0)
    (ev,) = eng.silence("P0", "news2", "patient walking", 600.0, "nurse.kim", 10.0)
    assert ev.name == "silenced" and ev.by == "nurse.kim" and "patient walking" in ev.message


@pytest.mark.parametrize("kind, reason, until, match", [
    ("flu", "x", 10.0, "unknown alert kind"),
    ("news2", "  ", 10.0, "needs a reason"),
    ("news2", "x", 0.0, "future"),
    ("news2", "x", 1.0 + 4 * 3600 + 1, "at most 240 min"),  # AlertPolicy.max_silence_s
])
def test_bad_silences_are_refused(kind, reason, until, match):
    with pytest.raises(ValueError, match=match):
        AlertEngine().silence("P0", kind, reason, until, "x", 1.0)


def test_acknowledging_an_unknown_alert_is_a_key_error():
    with pytest.raises(KeyError):
        AlertEngine().acknowledge("P0", "nope", "x", 0.0)


def test_an_alert_is_acknowledged_only_through_its_own_patient():
    """An acknowledge naming patient P1 (whom the clinician may act on) and the alert id of
    P0 (another ward's patient) must not touch P0's alert."""
    eng = AlertEngine()
    (ev,) = eng.update(view(since=400.0), 0.0)  # P0's no_data alert
    with pytest.raises(KeyError):
        eng.acknowledge("P1", ev.alert.alert_id, "intruder", 1.0)
    assert eng.alerts[("P0", "no_data")].state != "acknowledged"
    assert eng.acknowledge("P0", ev.alert.alert_id, "nurse", 2.0)


def test_a_clinician_escalates_an_open_alert_of_its_own_patient_only():
    """Calling for help now: priority up one level, the rapid-response team in the audience,
    recorded by whom; never through another patient, never on a closed alert."""
    eng = AlertEngine()
    (ev,) = eng.update(view(since=400.0), 0.0)  # P0's no_data alert, medium
    with pytest.raises(KeyError):
        eng.escalate("P1", ev.alert.alert_id, "intruder", 1.0)
    assert eng.alerts[("P0", "no_data")].priority == "medium"
    (esc,) = eng.escalate("P0", ev.alert.alert_id, "nurse.kim", 2.0, comment="worse")
    assert (esc.name, esc.by, esc.alert.priority) == ("escalated", "nurse.kim", "high")
    assert esc.alert.audience == "ward+rapid-response" and "nurse.kim" in esc.message
    (again,) = eng.escalate("P0", ev.alert.alert_id, "nurse.kim", 3.0)
    assert again.alert.priority == "high"  # high stays high
    eng.acknowledge("P0", ev.alert.alert_id, "nurse.kim", 4.0)
    eng.update(view(since=1.0), 10.0)
    eng.update(view(since=1.0), 400.0)  # cleared and resolved
    with pytest.raises(KeyError):
        eng.escalate("P0", ev.alert.alert_id, "nurse.kim", 500.0)


def test_technical_alerts_and_the_fatigue_figures():
    eng = AlertEngine()
    (ev,) = eng.update(view(since=400.0), 0.0)
    assert ev.alert.kind == "no_data" and ev.alert.category == "technical"
    assert ev.alert.priority == "medium" and "no reading for 7 min" in ev.message
    eng.update(view(since=1.0), 10.0)
    (res,) = eng.update(view(since=1.0), 320.0)
    assert res.name == "resolved"
    (b,) = eng.update(view(battery=0.15), 400.0)
    assert b.alert.kind == "low_battery" and "15 %" in b.message
    s = eng.stats.summary(patient_days=0.5)
    assert s["alerts_per_patient_day"] == 4.0 and s["auto_resolved_within_60s"] == 0.0


def test_many_patients_only_those_with_conditions_get_alerts():
    n = 1000
    est = np.tile([NORMAL[k] for k in NORMAL], (n, 1))
    news = np.zeros(n, dtype=np.int64)
    components = np.zeros((n, 7), dtype=np.int64)
    news[[3, 500]] = 7
    components[[3, 500]] = comp(hr=3, rr=2, sbp=2)
    v = dataclasses.replace(view(n, estimate=est), news2=news, components=components)
    ev = AlertEngine().update(v, 0.0)
    assert sorted(e.alert.patient_id for e in ev) == ["P3", "P500"]


def test_a_notice_is_raised_latched_kept_past_an_update_and_resolved_by_acknowledgement():
    eng = AlertEngine()
    (ev,) = eng.notice(["P0"], "history_lost", "low", "the broker lost it", {"lost_at": 5.0},
                       now=10.0)
    assert (ev.name, ev.alert.state, ev.alert.category) == ("raised", "latched", "technical")
    assert ev.message.startswith("Stored history lost: the broker lost it")
    assert eng.notice(["P0"], "history_lost", "low", "again", {}, now=11.0) == []  # one open
    # no condition of the twin clears it, however long the twin is well
    assert [e for e in eng.update(view(), now=1000.0) if e.alert.kind == "history_lost"] == []
    assert eng.alerts[("P0", "history_lost")].state == "latched"
    # the mark travels with the patient's record to another worker...
    other = AlertEngine()
    other.restore("P0", eng.export("P0"))
    assert other.noticed[("P0", "history_lost")] == 11.0
    names = [e.name for e in other.acknowledge(ev.alert.patient_id, ev.alert.alert_id, "nurse",
                                               now=1001.0)]
    assert names == ["acknowledged", "resolved"]
    # ...and outlives the alert: the twin stays marked once the alert is resolved
    assert other.noticed[("P0", "history_lost")] == 11.0
    assert b'"noticed"' in other.export("P0")
    other.forget({"P0"})
    assert other.export("P0") == b""


def test_export_many_is_export_of_each_patient() -> None:
    """A patient with an alert, one with only a silence, one with only a notice mark (its alert
    resolved) and one with nothing: the batch export is each patient's own export."""
    n = 4
    news = np.zeros(n, dtype=np.int64)
    components = np.zeros((n, 7), dtype=np.int64)
    news[0] = 7
    components[0] = comp(hr=3, rr=2, sbp=2)
    eng = AlertEngine()
    est = np.tile([NORMAL[k] for k in NORMAL], (n, 1))
    assert eng.update(dataclasses.replace(view(n, estimate=est), news2=news,
                                          components=components), 0.0)
    eng.silence("P1", "news2", "family at the bedside", 600.0, "nurse", now=1.0)
    (ev,) = eng.notice(["P2"], "history_lost", "low", "the broker lost it", {}, now=2.0)
    eng.acknowledge("P2", ev.alert.alert_id, "nurse", now=3.0)
    pids = ["P0", "P1", "P2", "P3", "nobody"]
    blobs = eng.export_many(pids)
    assert blobs == [eng.export(p) for p in pids]
    assert all(blobs[:3]) and blobs[3:] == [b"", b""]
