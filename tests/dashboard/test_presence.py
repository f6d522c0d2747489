"""Presence in the ward (issue 21 item 1, dashboard/presence.py).

First the server on the real broker with Flask's test client (the feed filled by hand): every
control tried the way an attacker would, with crafted requests; then two replicas sharing
presences through Kafka; then the real Chromium against the real stack: two clinicians of
ward A in `/vr` see each other move within a second, a clinician of ward B sees nothing of
them, and a call reaches the VR page and the ward page both ways.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from dashboard.app import close, create_app
from dashboard.auth import add_user
from dashboard.feed import TwinFeed
from dashboard.presence import EXPIRE_S, POSE_RATE, Pose, presence_id
from streams import audit, topics
from streams.config import Secret, Settings
from streams.registry import change
from tests.conftest import login, wait_until
from tests.dashboard.test_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    PASSWORD,
    SICK,
    Stack,
    _login,
    _shot,
    browser,
    stack,
)

pytestmark = [pytest.mark.broker]
PW = "long enough password"
KEY = "k" * 64


def _feed(s: Settings) -> TwinFeed:
    feed = TwinFeed(s)  # not started: filled by hand
    for pid, w in (("P1", "A"), ("P2", "A"), ("P3", "B")):
        feed.apply(s.topic_patients, pid.encode(),
                   msgspec.json.encode(change(None, pid, "admit", "t", ward=w, bed=pid[1:])))
    return feed


@pytest.fixture
def app_and_settings(settings_factory, tmp_path) -> Iterator[tuple[Any, Settings]]:  # noqa: ANN001
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    add_user(users, "amy", "clinician", ["A"], PW)
    add_user(users, "bea", "clinician", ["B"], PW)
    add_user(users, "vic", "viewer", ["A"], PW)
    add_user(users, "root", "admin", ["*"], PW)
    s = settings_factory(users_file=users, dashboard_secret_key=Secret(KEY))
    topics.ensure(s)
    app = create_app(s, feed=_feed(s))
    yield app, s
    close(app)


def _client(app: Any, name: str) -> Any:
    c = app.server.test_client()
    assert login(c, name, PW).status_code == 302
    return c


POSE = {"ward": "A", "x": 1.0, "y": 1.6, "z": -2.0, "yaw": 0.5, "pitch": -0.1}


def _pose(c: Any, **changes: Any) -> Any:
    return c.post("/presence/pose", json={**POSE, **changes})


def test_nothing_without_a_session(app_and_settings) -> None:  # noqa: ANN001
    app, _ = app_and_settings
    anon = app.server.test_client()
    for method, path in (("post", "/presence/pose"), ("post", "/presence/call"),
                         ("post", "/presence/leave"), ("get", "/presence.json"),
                         ("get", "/presence/stream")):
        r = getattr(anon, method)(path, json=POSE if method == "post" else None)
        assert r.status_code == 401, (path, r.status_code)
    # a forged cookie (signed with another key) is no session either
    forged = app.server.test_client()
    forged.set_cookie("session", "eyJfdXNlcl9pZCI6ImFubjp4In0.forged.sig")
    assert forged.post("/presence/pose", json=POSE).status_code == 401


def test_ward_scoped_and_names_from_the_session(app_and_settings) -> None:  # noqa: ANN001
    app, s = app_and_settings
    ann, amy, bea, root = (_client(app, n) for n in ("ann", "amy", "bea", "root"))
    assert _pose(ann, looking="P1", pointing="P2").status_code == 204
    assert _pose(bea, ward="B", looking="P3").status_code == 204
    seen = amy.get("/presence.json").get_json()
    assert [(p["user"], p["ward"], p["looking"], p["pointing"]) for p in seen["people"]] == [
        ("ann", "A", "P1", "P2")]
    assert seen["people"][0]["role"] == "clinician" and not seen["people"][0]["me"]
    # the other ward's clinician sees only her own ward: nothing of ann, not even a count
    theirs = bea.get("/presence.json").get_json()
    assert [p["user"] for p in theirs["people"]] == ["bea"] and theirs["people"][0]["me"]
    assert "ann" not in json.dumps(theirs) and "P1" not in json.dumps(theirs)
    # an admin of every ward sees both
    assert {p["user"] for p in root.get("/presence.json").get_json()["people"]} == {"ann",
                                                                                   "bea"}
    # a name or a role sent by the client is refused whole, never taken
    for forged in ({"user": "root"}, {"role": "admin"}, {"device": "desktop"}):
        assert _pose(ann, **forged).status_code == 400, forged
    assert {p["user"] for p in amy.get("/presence.json").get_json()["people"]} == {"ann"}
    # the session id stays secret: others get a hash of it
    with ann.session_transaction() as sess:
        sid = sess["sid"]
    assert sid not in amy.get("/presence.json").get_data(as_text=True)
    assert seen["people"][0]["id"] == presence_id(sid)


@pytest.mark.parametrize(("changes", "status"), [
    ({"x": 1001.0}, 400), ({"z": -5000}, 400), ({"y": 9.0}, 400),
    ({"yaw": 7.0}, 400), ({"pitch": -2.0}, 400), ({"x": "1"}, 400), ({"x": None}, 400),
    ({"looking": "P" * 65}, 400), ({"ward": ""}, 400), ({"extra": 1}, 400),
    ({"ward": "B"}, 403),  # not one of ann's wards
    ({"looking": "P3"}, 403),  # ward B's patient, named in ward A
    ({"ward": "A", "pointing": "P3"}, 403),
    ({"looking": "P404"}, 403),  # no such patient: the same answer
])
def test_crafted_poses_are_refused(app_and_settings, changes, status) -> None:  # noqa: ANN001
    app, _ = app_and_settings
    ann, amy = _client(app, "ann"), _client(app, "amy")
    assert _pose(ann, **changes).status_code == status
    assert amy.get("/presence.json").get_json()["people"] == []  # nothing got through


@pytest.mark.parametrize("raw", ['{"ward":"A","x":1e999}', '{"ward":"A","x":NaN}',
                                 '{"ward":"A","x":Infinity}', '{"ward":"A","y":-1e999}',
                                 '{"ward":"A"', '[]', ''])
def test_numbers_that_are_not_finite_are_refused(app_and_settings, raw) -> None:  # noqa: ANN001
    """JSON has no NaN or infinity, but a number too large for a double decodes as one."""
    app, _ = app_and_settings
    ann, amy = _client(app, "ann"), _client(app, "amy")
    r = ann.post("/presence/pose", data=raw, content_type="application/json")
    assert r.status_code == 400, raw
    assert amy.get("/presence.json").get_json()["people"] == []


def test_an_admin_cannot_show_one_wards_patient_in_another(app_and_settings) -> None:  # noqa: ANN001
    """root sees every ward, but a patient of ward B named in a ward A presence would reach the
    clinicians of ward A: refused."""
    app, _ = app_and_settings
    root = _client(app, "root")
    assert _pose(root, ward="A", looking="P3").status_code == 403
    assert _pose(root, ward="B", looking="P3").status_code == 204


def test_not_json_is_refused_so_no_other_site_can_post(app_and_settings) -> None:  # noqa: ANN001
    """A form of another site can send text/plain or form data with the cookie where SameSite
    does not hold (an old browser); only application/json is taken, which needs CORS."""
    app, _ = app_and_settings
    ann = _client(app, "ann")
    r = ann.post("/presence/call", data=json.dumps({"patient_id": "P1"}),
                 content_type="text/plain")
    assert r.status_code == 415
    r = ann.post("/presence/pose", data={"ward": "A"})
    assert r.status_code == 415
    assert ann.post("/presence/pose", data=b"x" * 5000,
                    content_type="application/json").status_code == 413


def test_a_flood_is_429_and_the_limit_is_per_session(app_and_settings) -> None:  # noqa: ANN001
    app, _ = app_and_settings
    ann, amy = _client(app, "ann"), _client(app, "amy")
    codes = [_pose(ann, x=0.01 * i).status_code for i in range(POSE_RATE + 15)]
    assert codes[:POSE_RATE] == [204] * POSE_RATE
    assert set(codes[POSE_RATE:]) == {429}
    assert _pose(amy).status_code == 204  # another session is not held up
    time.sleep(1.05)
    assert _pose(ann).status_code == 204  # a second later the session may move again
    calls = [ann.post("/presence/call", json={"patient_id": "P1"}).status_code
             for _ in range(8)]
    assert calls[:5] == [202] * 5 and set(calls[5:]) == {429}


def test_calls_are_checked_audited_and_shown_to_the_ward_only(app_and_settings) -> None:  # noqa: ANN001
    app, s = app_and_settings
    ann, amy, bea, vic = (_client(app, n) for n in ("ann", "amy", "bea", "vic"))
    assert ann.post("/presence/call", json={"patient_id": "P3"}).status_code == 403
    assert ann.post("/presence/call", json={"patient_id": "P404"}).status_code == 403
    assert ann.post("/presence/call", json={"patient_id": ["P1"]}).status_code == 400
    r = ann.post("/presence/call", json={"patient_id": "P2"})
    assert r.status_code == 202 and r.get_json()["ward"] == "A"
    calls = amy.get("/presence.json").get_json()["calls"]
    assert [(c["by"], c["patient_id"], c["ward"]) for c in calls] == [("ann", "P2", "A")]
    assert vic.get("/presence.json").get_json()["calls"] == calls  # a viewer of ward A too
    assert bea.get("/presence.json").get_json()["calls"] == []
    # a new call moves the ward's one marker
    assert amy.post("/presence/call", json={"patient_id": "P1"}).status_code == 202
    calls = ann.get("/presence.json").get_json()["calls"]
    assert [(c["by"], c["patient_id"]) for c in calls] == [("amy", "P1")]
    # joining, looking, calling and the refusals are in the audit trail; poses are not
    assert _pose(ann, looking="P1").status_code == 204
    for x in (1.0, 2.0, 3.0):
        assert _pose(ann, x=x, looking="P1").status_code == 204  # still P1: one focus record
    assert _pose(ann, looking="P2").status_code == 204
    want = {("ann", "join_presence", None), ("ann", "presence_focus", "P1"),
            ("ann", "presence_focus", "P2"), ("ann", "presence_call", "P2"),
            ("amy", "presence_call", "P1"), ("ann", "denied", "P3"), ("ann", "denied", "P404")}

    def trail() -> list[tuple[str, str, str | None]]:
        return [(a.user, a.action, a.patient_id) for a in audit.read(s)
                if a.user in ("ann", "amy") and a.action not in ("login", "view_ward")]

    assert wait_until(lambda: want <= set(trail()), timeout=15), trail()
    got = trail()
    assert got.count(("ann", "presence_focus", "P1")) == 1
    assert got.count(("ann", "join_presence", None)) == 1


def test_presences_expire_and_leave(app_and_settings) -> None:  # noqa: ANN001
    app, s = app_and_settings
    ann, amy = _client(app, "ann"), _client(app, "amy")
    assert _pose(ann).status_code == 204
    assert len(amy.get("/presence.json").get_json()["people"]) == 1
    assert ann.post("/presence/leave").status_code == 204
    assert amy.get("/presence.json").get_json()["people"] == []
    # a presence whose last update is older than EXPIRE_S is gone (a headset switched off):
    # written as another replica would have, through the board
    old = Pose(user="zed", role="clinician", ward="A", device="vr", ts=time.time() - EXPIRE_S - 1)
    fresh = Pose(user="yan", role="clinician", ward="A", device="vr", ts=time.time())
    p = _presence(app)
    for name, pose in (("old", old), ("fresh", fresh)):
        p.board.apply(s.topic_presence, f"pose:{name}".encode(), msgspec.json.encode(pose))
    assert [x["user"] for x in amy.get("/presence.json").get_json()["people"]] == ["yan"]


def _presence(app: Any) -> Any:
    from dashboard.context import Context

    for closer in app.closers:
        if isinstance(closer, Context):
            return closer.presence
    raise AssertionError("no context")


def test_replicas_share_presences_through_kafka(settings_factory, tmp_path) -> None:  # noqa: ANN001
    """A pose posted to one replica reaches a viewer on another through the presence topic,
    well within a second."""
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    add_user(users, "amy", "clinician", ["A"], PW)
    s = settings_factory(users_file=users, dashboard_secret_key=Secret(KEY))
    topics.ensure(s)
    apps = [create_app(s, feed=_feed(s)) for _ in range(2)]
    try:
        ann, amy = _client(apps[0], "ann"), _client(apps[1], "amy")
        for app in apps:
            assert _presence(app).board.follower.caught_up.wait(30)
        lags = []
        for i in range(5):
            t0 = time.monotonic()
            assert _pose(ann, x=float(i)).status_code == 204

            def arrived(i: int = i) -> bool:
                people = amy.get("/presence.json").get_json()["people"]
                return bool(people) and people[0]["x"] == float(i)

            assert wait_until(arrived, timeout=5, interval=0.01)
            lags.append(time.monotonic() - t0)
        assert max(lags) < 1.0, lags
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "presence-replicas.json").write_text(json.dumps({"lags_s": lags}))
        assert ann.post("/presence/leave").status_code == 204
        assert wait_until(lambda: amy.get("/presence.json").get_json()["people"] == [],
                          timeout=5)
    finally:
        for app in apps:
            close(app)


def test_alert_actions_from_vr_are_checked_and_audited(app_and_settings) -> None:  # noqa: ANN001
    """`POST /vr/alerts/<id>/<verb>`: the patient page's checks, tried as an attacker would."""
    from streams.messages import AlertAction
    from tests.dashboard.test_views import alert_event
    from tests.test_end_to_end import _consume_all

    app, s = app_and_settings
    feed = app.feed
    for pid in ("P1", "P3"):
        feed.apply(s.topic_alerts, pid.encode(),
                   msgspec.json.encode(alert_event(pid, f"{pid}:news2:1")))
    anon, ann, vic = app.server.test_client(), _client(app, "ann"), _client(app, "vic")
    url = "/vr/alerts/{}/{}"
    assert anon.post(url.format("P1:news2:1", "acknowledge"), json={}).status_code == 401
    assert vic.post(url.format("P1:news2:1", "acknowledge"), json={}).status_code == 403
    assert ann.post(url.format("P3:news2:1", "escalate"), json={}).status_code == 403  # ward B
    assert ann.post(url.format("P1:news2:9", "acknowledge"), json={}).status_code == 409
    assert ann.post(url.format("P1:news2:1", "delete"), json={}).status_code in (404, 405)
    assert ann.post(url.format("P1:news2:1", "escalate"), data="{}",
                    content_type="text/plain").status_code == 415
    assert ann.post(url.format("P1:news2:1", "escalate"),
                    json={"comment": "x" * 501}).status_code == 400
    r = ann.post(url.format("P1:news2:1", "escalate"), json={"comment": "from the bedside"})
    assert r.status_code == 202 and r.get_json()["by"] == "ann"
    actions = [msgspec.json.decode(r.value, type=AlertAction) for r in _consume_all(
        s, s.topic_alert_actions, lambda seen: len(seen) >= 1, 15)]
    assert [(a.action, a.alert_id, a.by, a.comment) for a in actions] == [
        ("escalate", "P1:news2:1", "ann", "from the bedside")]  # nothing refused got through
    want = {("ann", "escalate", "P1"), ("vic", "denied", "P1"), ("ann", "denied", "P3")}
    assert wait_until(lambda: want <= {(a.user, a.action, a.patient_id)
                                       for a in audit.read(s)}, timeout=15)


# ---- the real browser against the real stack -------------------------------------------------

_READY = """() => window.vrWard && window.__presence
    && document.querySelectorAll('a-entity.patient').length > 0"""
# Move the camera rig (as walking does) and say when, on the wall clock both pages share.
_MOVE = """([x, z]) => { document.getElementById('rig').object3D.position.set(x, 0, z);
    return Date.now(); }"""
# When this page's avatar of `user` stands at x (the scene's metres, two decimals).
_SEEN_AT = """([user, x]) => { const a = document.querySelector(
    '.avatar[data-user="' + user + '"]'); return a && a.dataset.x === x.toFixed(2)
    ? Date.now() : null; }"""


_STILL = "() => document.querySelector('a-scene').renderer.setAnimationLoop(null)"


def _vr(browser, stack: Stack, name: str):  # noqa: ANN001, ANN202, F811
    page = _login(browser, stack, name, "/vr")
    # Small: here WebGL is software (SwiftShader) on two shared cores, and three full-size
    # scenes render at about 1 frame a second, which delays every timer of the pages by
    # seconds (measured); a headset renders on its GPU. The latency measured is presence's.
    page.set_viewport_size({"width": 320, "height": 240})
    page.wait_for_function(_READY, timeout=45_000)
    return page


@pytest.mark.slow
def test_clinicians_of_a_ward_see_each_other_in_vr_and_others_do_not(
        stack: Stack, browser) -> None:  # noqa: ANN001, F811
    users = stack.settings.users_file
    assert users is not None
    add_user(users, "amy", "clinician", ["A"], PASSWORD)
    add_user(users, "bert", "clinician", ["B"], PASSWORD)
    alice, amy, bert = (_vr(browser, stack, n) for n in ("alice", "amy", "bert"))
    amy.wait_for_selector('.avatar[data-user="alice"]', state="attached", timeout=10_000)
    alice.wait_for_selector('.avatar[data-user="amy"]', state="attached", timeout=10_000)
    # Only amy's screen is measured: alice's and bert's pages stop drawing (their presence
    # code runs on, on timers), so that this machine's software WebGL draws one scene, not
    # three, as each headset draws its own on its GPU.
    for p in (alice, bert):
        p.evaluate(_STILL)
    # moving: amy's page shows alice's avatar where alice now stands, within a second
    lags = []
    for i in range(10):
        x, z = -3.0 + i * 0.75, 4.0 - i * 0.5
        t0 = alice.evaluate(_MOVE, [x, z])
        seen = amy.wait_for_function(_SEEN_AT, arg=["alice", x], polling=20, timeout=5_000)
        lags.append((seen.json_value() - t0) / 1000)
        time.sleep(0.3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "presence-vr.json").write_text(json.dumps({"lags_s": lags}))
    assert max(lags) < 1.0, lags
    # who looks at which patient: alice stands 6 m in front of the sick patient's bed and
    # looks along the row at it; amy's page and list say so
    bed = alice.evaluate(f"window.vrWard.beds.find(b => b.patient_id === '{SICK}')")
    alice.evaluate(_MOVE, [bed["x"], bed["z"] + 6.0])
    amy.wait_for_function(f"""() => {{ const a = document.querySelector(
        '.avatar[data-user="alice"]'); return a && a.dataset.looking === '{SICK}'; }}""",
                          timeout=5_000)
    assert f"alice (clinician, 3D, ward A) looking at {SICK}" in amy.inner_text(
        "#presence-list")
    # ward B's clinician sees none of them, and her stream never carried them
    time.sleep(1.0)
    assert bert.locator(".avatar").count() == 0
    people = bert.evaluate("window.__presence.doc.people.map(p => p.user)")
    assert people == ["bert"], people
    assert "alice" not in bert.inner_text("#presence-list")
    # calling by keyboard in VR (key C: the bed alice looks at): amy is told, bert is not
    alice.keyboard.press("c")
    amy.wait_for_function(f"""() => (document.body.dataset.presenceMsg || '').includes(
        'alice (clinician) calls you to {SICK}')""", timeout=5_000)
    marker = amy.locator(".call-marker")
    assert marker.get_attribute("data-patient-id") == SICK
    assert marker.get_attribute("data-by") == "alice"
    # the marker stands at the bed, in amy's scene
    at = amy.evaluate("(() => { const p = document.querySelector('.call-marker')"
                      ".object3D.position; return [p.x, p.z]; })()")
    assert at == pytest.approx([bed["x"], bed["z"]], abs=0.01)
    # docs/dashboard.md's pictures: amy's view (alice's avatar, her ray, the marker) and the
    # sick patient's bedside panel as drawn on its canvas
    amy.set_viewport_size({"width": 1200, "height": 800})
    time.sleep(2.0)
    _shot(amy, "vr-two-clinicians")
    panel = amy.evaluate(f"document.getElementById('panel-{SICK}').toDataURL('image/png')")
    (ARTIFACTS / "vr-bedside-panel.png").write_bytes(base64.b64decode(panel.split(",", 1)[1]))
    amy.set_viewport_size({"width": 320, "height": 240})
    assert "You called" in alice.inner_text("#presence-msg")
    time.sleep(1.0)
    assert bert.locator(".call-marker").count() == 0
    assert not bert.evaluate("document.body.dataset.presenceMsg || ''")
    # the desktop: amy on the ward page sees who is here and what they look at, and calls by
    # keyboard; alice, in VR, is told
    desk = _login(browser, stack, "amy", "/")
    desk.wait_for_selector(".presence-person[data-user='alice']", timeout=15_000)
    assert f"looking at {SICK}" in desk.inner_text(".presence-person[data-user='alice']")
    desk.focus("#call-patient")
    desk.keyboard.type("P00001")
    desk.keyboard.press("Enter")
    desk.wait_for_selector("text=You called your colleagues of ward A to P00001",
                           timeout=10_000)
    alice.wait_for_function("""() => (document.body.dataset.presenceMsg || '').includes(
        'amy (clinician) calls you to P00001')""", timeout=5_000)
    # amy is on alice's list twice: in the 3D ward and on the ward page
    alice.wait_for_function("""() => [...document.querySelectorAll('#presence-list li')]
        .filter(li => li.dataset.user === 'amy').length === 2""", timeout=5_000)
    # a crafted call of ward B's patient from the ward page is refused
    desk.fill("#call-patient", "P00002")
    desk.click("#call-submit")
    desk.wait_for_selector("text=Not called", timeout=10_000)
    # crafted requests with amy's own session: another ward's patient, a flood
    refused = amy.evaluate("""async () => (await fetch('/presence/pose', {method: 'POST',
        headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({ward: 'A', x: 0, z: 0, looking: 'P00002'})})).status""")
    assert refused == 403
    codes = amy.evaluate("""async () => Promise.all([...Array(30).keys()].map(async i =>
        (await fetch('/presence/pose', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({ward: 'A', x: i * 0.01, z: 0})})).status))""")
    assert 429 in codes and codes.count(204) <= POSE_RATE, codes
    # and without a session at all
    req = urllib.request.Request(f"{stack.url}/presence/pose", data=json.dumps(POSE).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    # leaving: closing alice's page takes her avatar away on amy's page
    alice.close()
    amy.wait_for_selector('.avatar[data-user="alice"]', state="detached",
                          timeout=(EXPIRE_S + 3) * 1000)
    # the audit trail: who joined, looked at and called to which patient
    want = {("alice", "join_presence", None), ("alice", "presence_focus", SICK),
            ("alice", "presence_call", SICK), ("amy", "presence_call", "P00001"),
            ("amy", "denied", "P00002")}

    def trail() -> set[tuple[str, str, str | None]]:
        return {(a.user, a.action, a.patient_id) for a in audit.read(stack.settings)
                if a.action in ("join_presence", "presence_focus", "presence_call",
                                "denied")}

    assert wait_until(lambda: want <= trail(), timeout=20), trail()
    for p in (amy, bert, desk):
        p.close()


# ---- item 2: the ward laid out sickest first, alarms coded by priority ---------------------


def test_vr_ward_puts_the_sickest_first_near_the_entrance() -> None:
    """Each ward's beds in risk order from the entrance (the rig starts at z = 6 m and looks
    along -z: the first row is z = 0, the next ones further in), whatever their bed numbers;
    the sickest stand out; and the wards' frames (presence) hold for every bed."""
    from datetime import timedelta

    from dashboard import vr, ward
    from dashboard.auth import User
    from tests.dashboard.test_views import NOW, alert_event, twin_state

    recs = {p: change(None, p, "admit", "t", ward=w, bed=b)
            for p, w, b in (("P1", "A", "1"), ("P2", "A", "2"), ("P3", "A", "3"),
                            ("P4", "A", "4"), ("P5", "A", "5"), ("P6", "B", "1"))}
    fresh = NOW - timedelta(seconds=5)
    states = {"P1": twin_state("P1", fresh, news2_band="low", news2=1),
              "P2": twin_state("P2", fresh, news2_band="none", news2=0),
              "P3": twin_state("P3", fresh, news2_band="none", news2=0),
              "P4": twin_state("P4", fresh, news2_band="high", news2=9),
              "P5": twin_state("P5", fresh, news2_band="low-medium", news2=3),
              "P6": twin_state("P6", fresh, news2_band="medium", news2=5)}
    alerts = [alert_event("P5", "P5:news2:1", priority="high")]
    beds = ward.beds(User("r", "admin", ("*",), "-"), states, recs, alerts, NOW)
    scene = {b["patient_id"]: b for b in vr.scene_state(beds)}
    a_rows = sorted((b for b in scene.values() if b["ward"] == "A"), key=lambda b: -b["z"])
    # ward A from the entrance inwards: P4 (high), P5 (an open high alert), P1, then P2, P3
    assert [b["patient_id"] for b in a_rows[:2]] == ["P4", "P5"]
    assert a_rows[0]["z"] == a_rows[1]["z"] == 0.0 > a_rows[2]["z"]
    assert scene["P4"]["rank"] == 1 and scene["P2"]["rank"] > scene["P1"]["rank"]
    assert {p for p, b in scene.items() if b["highlight"]} == {"P4", "P5", "P6"}
    # every bed lies inside its ward's frame: 0-4 m across from the ward's origin
    origins = vr.ward_origins(beds)
    assert set(origins) == {"A", "B"}
    for b in scene.values():
        assert 0.0 <= b["x"] - origins[b["ward"]]["x"] <= 4.0, b
    assert len({(b["x"], b["z"]) for b in scene.values()}) == len(scene)


def test_bedside_sparklines_hold_the_last_hour_and_the_forecast() -> None:
    from dashboard import vr
    from dashboard.feed import History
    from streams.messages import Forecast
    from tests.dashboard.test_views import twin_state

    h, t0 = History(), 1_000_000.0
    for k in range(0, 90 * 60, 10):  # 90 minutes of states, one per 10 s; HR rising
        h.add(twin_state(estimate={"hr": 60.0 + k / 60, "rr": 16.0}), t0 + k)
    now = t0 + 90 * 60
    fc = [Forecast(minutes=m, estimate={"hr": 150.0 + m}, low90={"hr": 140.0 + m},
                   high90={"hr": 160.0 + m}) for m in (15, 30, 60)]
    t = vr.trend(h.series(), twin_state(forecasts=fc), now)
    past = t["hr"]["past"]
    assert len(past) <= vr.TREND_POINTS + 1 and past == sorted(past)
    assert all(-60.0 <= m <= 0.0 for m, _ in past) and past[0][0] <= -57.0
    assert past[-1] == [round((t0 + 90 * 60 - 10 - now) / 60, 1), round(60.0 + 5390 / 60, 1)]
    assert t["hr"]["ahead"] == [[15, 165.0, 155.0, 175.0], [30, 180.0, 170.0, 190.0],
                                [60, 210.0, 200.0, 220.0]]
    assert t["rr"]["ahead"] == [] and {v for _, v in t["rr"]["past"]} == {16.0}
    assert t["spo2"]["past"] == []  # never measured: no line, not a line at zero
    assert vr.trend(None, None, now) == {}


# IEC 60601-1-8:2006+A1:2012 Table 3 (burst) and Table 4 (pulse), in seconds
X, Y = (0.050, 0.125), (0.125, 0.250)
TD = {"high": (0.075, 0.200), "medium": (0.125, 0.250), "low": (0.125, 0.250)}
EVERY = {"high": (2.5, 15.0), "medium": (2.5, 30.0)}


def _within(v: float, lo_hi: tuple[float, float]) -> bool:
    return lo_hi[0] - 1e-9 <= v <= lo_hi[1] + 1e-9


@pytest.mark.slow
def test_vr_alarm_sounds_follow_iec_60601_1_8_and_the_sickest_bed_is_first(
        stack: Stack, browser) -> None:  # noqa: ANN001, F811
    page = _vr(browser, stack, "alice")
    bursts = {p: page.evaluate(f"window.alarmPattern('{p}')") for p in ("high", "medium", "low")}
    settings = page.evaluate("window.alarmSettings")
    for prio, pulses in bursts.items():
        assert all(_within(td, TD[prio]) for _, td in pulses), (prio, pulses)
        # spacing: from the end of one pulse to the start of the next
        spaces = [b[0] - (a[0] + a[1]) for a, b in zip(pulses, pulses[1:], strict=False)]
        if prio == "high":
            assert len(pulses) == 10
            x, td = spaces[0], pulses[0][1]
            assert _within(x, X)
            for i in (0, 1, 3, 5, 6, 8):
                assert spaces[i] == pytest.approx(x), spaces
            for i in (2, 7):
                assert spaces[i] == pytest.approx(2 * x + td), spaces
            assert _within(spaces[4], (0.35, 1.30)), spaces
        elif prio == "medium":
            assert len(pulses) == 3 and all(_within(s, Y) for s in spaces), spaces
        else:
            assert len(pulses) in (1, 2) and all(_within(s, Y) for s in spaces), spaces
        every = settings[prio]["every"]
        if prio == "low":
            assert every is None or every > 15.0
        else:
            assert _within(every, EVERY[prio])
        # fundamental 150-1000 Hz (its 2nd-5th harmonics then lie within 300-4000 Hz)
        assert 150 <= settings[prio]["f0"] <= 1000 and 5 * settings[prio]["f0"] <= 4000
    # the ward has an open high-priority alert (the sick patient's): the high burst sounds
    # once the user turns sound on
    page.wait_for_function("() => document.body.dataset.alarm === 'high'", timeout=15_000)
    page.click("#sound")
    page.wait_for_function("() => document.body.dataset.lastAlarm === 'high'",
                           timeout=(settings["high"]["every"] + 3) * 1000)
    # the sickest patient is first, in the row nearest the entrance, with a halo
    sick = page.locator(f"#bed-{SICK}")
    assert sick.get_attribute("data-rank") == "1" and sick.get_attribute("data-highlight")
    zs = page.evaluate("[...document.querySelectorAll('a-entity.patient')]"
                       ".map(e => e.object3D.position.z)")
    assert page.evaluate(f"document.getElementById('bed-{SICK}').object3D.position.z") == max(zs)
    assert page.evaluate(f"document.querySelector('#bed-{SICK} .halo').getAttribute('visible')")
    # the bedside panel: values with their uncertainty, the NEWS2 breakdown, the sparklines
    text = sick.get_attribute("data-vitals") or ""
    assert re.search(r"HR \d+ ±\d+/min", text), text  # the twin's 1 SD beside the value
    assert re.search(r"^= RR \d \+ SpO2 \d \+ O2 \d \+ SBP \d \+ HR \d", text, re.M), text
    page.wait_for_function("() => document.getElementById('bed-P00001').dataset.sparkPast > 0",
                           timeout=15_000)
    # escalating the sick patient's alert from the scene by keyboard: look at the bed, press E
    bed = page.evaluate(f"window.vrWard.beds.find(b => b.patient_id === '{SICK}')")
    page.evaluate(_MOVE, [bed["x"], bed["z"] + 6.0])
    page.wait_for_function(f"() => window.vrTarget() === '{SICK}'", timeout=5_000)
    page.keyboard.press("e")
    page.wait_for_function("() => (document.body.dataset.alertMsg || '').startsWith("
                           f"'Escalation of {SICK}:')", timeout=10_000)
    assert wait_until(lambda: any(
        a.user == "alice" and a.action == "escalate" and a.patient_id == SICK
        and "from VR" in (a.detail or "") for a in audit.read(stack.settings)), timeout=15)
    page.close()
