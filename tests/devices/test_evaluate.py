"""`evaluate`'s simulated ward: alerts are acknowledged, so one early latched alert does not hide
a later deterioration of the same patient."""

from __future__ import annotations

import json

import numpy as np
import pytest

from devices.evaluate import acknowledge_due
from streams import cli
from twin.alerts import AlertEngine, TwinView
from twin.channels import C

H = np.array([15.0, 30.0, 60.0])
NORMAL = [72.0, 15.0, 97.0, 124.0, 78.0, 36.9]
ORDER = ["rr", "spo2", "o2", "sbp", "hr", "cons", "temp"]


def _view(news2: int = 0, **scores: int) -> TwinView:
    est = np.array([NORMAL[:C]])
    return TwinView(
        patient_ids=["P1"], estimate=est, sd=np.ones((1, C)),
        forecast=np.repeat(est[:, None, :], len(H), axis=1), forecast_sd=np.ones((1, len(H), C)),
        horizons_min=H, news2=np.array([news2]),
        components=np.array([[scores.get(k, 0) for k in ORDER]]), spo2_scale=np.array([1]),
        since_reading_s=np.array([1.0]), channel_age_s=np.ones((1, C)),
        battery=np.array([0.9]))


def _raised(events) -> list[str]:
    return [e.alert.alert_id for e in events if e.name == "raised"]


@pytest.mark.parametrize("answered", [True, False])
def test_an_answered_start_up_alert_leaves_the_later_event_visible(answered: bool) -> None:
    """The seed-11 miss: a start-up alert (a low first cuff reading) latches; hours later the
    patient deteriorates. A ward that acknowledges gets a new alert; one that never does gets
    none, and the deterioration goes unseen."""
    eng = AlertEngine()
    red = _view(news2=7, hr=3, rr=2, sbp=2)
    first = _raised(eng.update(red, 0.0))
    assert len(first) == 1
    for t in np.arange(15.0, 4 * 3600.0, 15.0):
        eng.update(_view(), float(t))
        if answered:
            acknowledge_due(eng, float(t), 600.0)
    held = [a.state for a in eng.alerts.values()]
    later = _raised(eng.update(red, 4 * 3600.0 + 15.0))
    if answered:
        assert held == [] and len(later) == 1 and later != first
    else:
        # still the start-up alert, latched for four hours, now quietly active again
        assert held == ["latched"] and later == []


def test_only_alerts_raised_long_enough_ago_are_acknowledged() -> None:
    eng = AlertEngine()
    eng.update(_view(news2=7, hr=3, rr=2, sbp=2), 100.0)
    (alert,) = eng.alerts.values()
    assert acknowledge_due(eng, 699.0, 600.0) == 0 and alert.state == "active"
    assert acknowledge_due(eng, 700.0, 600.0) == 1
    assert alert.state == "acknowledged" and alert.acknowledged_by == "evaluate"
    assert eng.stats.ack_seconds == [600.0]
    # an acknowledged alert is not acknowledged again
    assert acknowledge_due(eng, 2000.0, 600.0) == 0


@pytest.mark.parametrize(("args", "ack"), [([], 10.0), (["--ack-after-min", "3"], 3.0),
                                           (["--no-ack"], None)])
def test_the_command_reports_the_ward_it_simulated(args: list[str], ack: float | None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["evaluate", "--patients", "3", "--hours", "0.02", "--no-progress", *args])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    result = json.loads(out[-1])
    assert result["ack_after_min"] == ack
    assert ("never acknowledged" in out[-2]) == (ack is None)


def test_acknowledging_never_and_at_once_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--ack-after-min", "0"], ["--ack-after-min", "5", "--no-ack"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["evaluate", "--patients", "1", "--hours", "0.01", *bad])
        assert exc.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
