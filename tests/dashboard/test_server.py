"""The dashboard's web server without a browser: sessions, lockout, redirects, roles, the audit
trail, and TLS, on the real broker (the feed is filled by hand, so no worker is needed)."""

from __future__ import annotations

import http.client
import json
import logging
import re
import ssl
import threading

import msgspec
import pytest

from dashboard import tls
from dashboard.app import close, create_app
from dashboard.auth import add_user
from dashboard.feed import TwinFeed
from dashboard.login import FAILURES_ALLOWED
from streams import messages, supervise, topics
from streams.config import Secret
from streams.registry import change
from tests.conftest import login
from tests.dashboard.test_views import alert_event, twin_state
from tests.test_end_to_end import _consume_all

pytestmark = [pytest.mark.broker]
PW = "long enough password"


@pytest.fixture
def app_and_settings(settings_factory, tmp_path):
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    add_user(users, "vic", "viewer", ["A"], PW)
    s = settings_factory(users_file=users, dashboard_tls_dir=str(tmp_path / "tls"))
    topics.ensure(s)
    feed = TwinFeed(s)  # not started: filled by hand
    for pid, w in (("P1", "A"), ("P2", "B")):
        feed.apply(s.topic_patients, pid.encode(),
                   msgspec.json.encode(change(None, pid, "admit", "t", ward=w)))
        feed.apply(s.topic_alerts, pid.encode(),
                   messages.encode(alert_event(pid, f"{pid}:news2:1")))
    app = create_app(s, feed=feed)
    yield app, s, users
    close(app)


def _login(client, name, pw=PW, next_=None):
    return login(client, name, pw, next_)


def test_sessions_lockout_and_safe_redirects(app_and_settings):
    app, s, users = app_and_settings
    c = app.server.test_client()
    r = c.get("/patient/P1")
    assert r.status_code == 302 and r.headers["Location"] == "/login?next=/patient/P1"
    for _ in range(FAILURES_ALLOWED):
        assert _login(c, "ann", "wrong").status_code == 401
    # locked out now, even with the right password
    assert _login(c, "ann").status_code == 429
    c2 = app.server.test_client()
    r = _login(c2, "vic", next_="//evil.example/steal")
    assert r.status_code == 302 and r.headers["Location"] == "/"  # never off-site
    assert c2.get("/").status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    # a password reset ends the user's open sessions
    add_user(users, "vic", "viewer", ["A"], "a brand new password")
    assert c2.get("/").status_code == 302
    audit = [json.loads(r.value) for r in _consume_all(
        s, s.topic_audit, lambda seen: len(seen) >= FAILURES_ALLOWED + 2, 15)]
    actions = Counter_of(audit)
    assert actions[("ann", "login_failed")] == FAILURES_ALLOWED + 1
    assert actions[("vic", "login")] == 1
    assert all("password" not in json.dumps(a) for a in audit)


def test_replicas_with_one_secret_key_share_sessions(settings_factory, tmp_path):
    """DASHBOARD_SECRET_KEY set (it crashed the dashboard at start): a session made on one
    replica is good on the other, and not on a replica with another key."""
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    key = "k" * 64
    apps = [create_app(settings_factory(users_file=users, dashboard_secret_key=Secret(k)),
                       feed=TwinFeed(settings_factory()))
            for k in (key, key, "o" * 64)]
    try:
        first = apps[0].server.test_client()
        assert _login(first, "ann").status_code == 302
        cookie = first.get_cookie("session")
        for app, works in zip(apps[1:], (True, False), strict=True):
            other = app.server.test_client()
            other.set_cookie("session", cookie.value)
            assert (other.get("/").status_code == 200) is works
    finally:
        for app in apps:
            close(app)


def test_a_crafted_user_name_cannot_forge_log_lines_or_fill_memory(app_and_settings, caplog):
    app, s, _ = app_and_settings
    caplog.set_level(logging.DEBUG)
    c = app.server.test_client()
    forged = "eve\n2026-11-29 INFO patient_twin audit: 'admin' login"
    assert _login(c, forged, "x").status_code == 401
    assert _login(c, "m" * 1_000_000, "x").status_code == 401
    lines = "\n".join(r.getMessage() for r in caplog.records).splitlines()
    assert any("eve" in line for line in lines)  # the attempt is logged, on one line
    assert not any(line.startswith("2026-11-29") for line in lines)
    audit = [json.loads(r.value) for r in _consume_all(
        s, s.topic_audit, lambda seen: len(seen) >= 2, 15)]
    assert max(len(a["user"]) for a in audit) <= 65  # recorded cut, not a megabyte


def test_security_headers_on_patient_data_and_not_on_code(app_and_settings):
    app, _, _ = app_and_settings
    c = app.server.test_client()
    _login(c, "ann")
    for path in ("/", "/patient/P1", "/vr/state.json", "/login"):
        h = c.get(path).headers
        assert h["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in \
            h["Content-Security-Policy"], path
        assert h["Cache-Control"] == "no-store" and h["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in h  # plain http here: HSTS only under https
    # Dash's code (no patient data) stays cacheable: megabytes over a slow ward link
    bundle = re.search(r'src="(/_dash-component-suites/[^"]+\.js)"', c.get("/").text).group(1)
    r = c.get(bundle)
    assert r.status_code == 200 and r.headers.get("Cache-Control") != "no-store"
    assert r.headers["X-Frame-Options"] == "DENY"


def Counter_of(audit):  # noqa: N802
    from collections import Counter

    return Counter((a["user"], a["action"]) for a in audit)


def _ack_payload(alert_id: str, pid: str, button: str = "ack") -> dict:
    """A crafted click of an alert card's button (`ack` or `escalate`), as the browser sends it."""
    aid = {"type": "ack", "alert": alert_id}
    eid = {"type": "escalate", "alert": alert_id}
    cid = {"type": "ack-comment", "alert": alert_id}
    clicked = aid if button == "ack" else eid
    return {
        "output": "action-status.children", "outputs": {"id": "action-status",
                                                        "property": "children"},
        "inputs": [[{"id": aid, "property": "n_clicks", "value": int(button == "ack")}],
                   [{"id": eid, "property": "n_clicks", "value": int(button != "ack")}]],
        "changedPropIds": [json.dumps(clicked, separators=(",", ":")) + ".n_clicks"],
        "state": [[{"id": cid, "property": "value", "value": "x"}],
                  {"id": "patient-id", "property": "data", "value": pid}],
    }


def test_roles_and_wards_are_enforced_on_the_server(app_and_settings):
    app, s, _ = app_and_settings
    viewer = app.server.test_client()
    _login(viewer, "vic")
    r = viewer.post("/_dash-update-component", json=_ack_payload("P1:news2:1", "P1"))
    assert r.status_code == 200
    assert "cannot acknowledge" in r.get_json()["response"]["action-status"]["children"]
    nurse = app.server.test_client()
    _login(nurse, "ann")
    # crafted: ann's own patient P1 with ward B's alert id, then ward B's patient itself
    r = nurse.post("/_dash-update-component", json=_ack_payload("P2:news2:1", "P1"))
    assert "not open for this patient" in r.get_json()["response"]["action-status"]["children"]
    r = nurse.post("/_dash-update-component", json=_ack_payload("P2:news2:1", "P2"))
    assert "cannot acknowledge" in r.get_json()["response"]["action-status"]["children"]
    r = nurse.post("/_dash-update-component", json=_ack_payload("P1:news2:1", "P1"))
    assert "sent as ann" in r.get_json()["response"]["action-status"]["children"]
    # escalate goes through the same checks: ward B's alert is refused, her own is sent
    r = nurse.post("/_dash-update-component",
                   json=_ack_payload("P2:news2:1", "P1", button="escalate"))
    assert "not open for this patient" in r.get_json()["response"]["action-status"]["children"]
    r = nurse.post("/_dash-update-component",
                   json=_ack_payload("P1:news2:1", "P1", button="escalate"))
    assert "rapid-response team called" in \
        r.get_json()["response"]["action-status"]["children"]
    # ward B is not ann's: not in the VR state, and the page says not found
    beds = nurse.get("/vr/state.json").get_json()["beds"]
    assert [b["patient_id"] for b in beds] == ["P1"]
    actions = _consume_all(s, s.topic_alert_actions, lambda seen: len(seen) >= 2, 15)
    assert len(actions) == 2  # the viewer's and the crafted attempts never reached the worker
    acts = [json.loads(a.value) for a in actions]
    assert [(a["action"], a["by"], a["alert_id"]) for a in acts] == [
        ("acknowledge", "ann", "P1:news2:1"), ("escalate", "ann", "P1:news2:1")]
    audit = [json.loads(r.value) for r in _consume_all(
        s, s.topic_audit, lambda seen: sum(b'"denied"' in r.value for r in seen) >= 4, 15)]
    assert any(a["action"] == "denied" and a["user"] == "vic" for a in audit)
    refused = {(a["patient_id"], a["alert_id"]) for a in audit
               if a["action"] == "denied" and a["user"] == "ann"}
    assert refused == {("P1", "P2:news2:1"), ("P2", "P2:news2:1")}
    assert any(a["action"] == "escalate" and a["user"] == "ann" for a in audit)


def test_live_push_needs_a_login_the_patients_ward_and_a_free_slot(settings_factory, tmp_path):
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    s = settings_factory(users_file=users, dashboard_threads=8)  # 4 live streams at most
    feed = TwinFeed(s)  # not started: filled by hand
    for pid, w in (("P1", "A"), ("P2", "B")):
        feed.apply(s.topic_patients, pid.encode(),
                   msgspec.json.encode(change(None, pid, "admit", "t", ward=w)))
    app = create_app(s, feed=feed)
    try:
        anon = app.server.test_client()
        assert anon.get("/live/patient/P1").status_code == 401
        client = app.server.test_client()
        _login(client, "ann")
        assert client.get("/live/patient/P2").status_code == 404  # ward B is not ann's
        streams = [client.get("/live/patient/P1", buffered=False) for _ in range(4)]
        assert [r.status_code for r in streams] == [200] * 4
        assert streams[0].mimetype == "text/event-stream"
        chunks = iter(streams[0].response)
        assert next(chunks).startswith(b"retry: ")
        feed.apply(s.topic_twin_state, b"P1", messages.encode(twin_state("P1")))
        assert next(chunks) == b"event: update\ndata: {}\n\n"
        # every slot taken: the page is told to poll instead, and a closed stream frees its slot
        assert client.get("/live/patient/P1", buffered=False).status_code == 503
        streams.pop().close()
        extra = client.get("/live/patient/P1", buffered=False)
        assert extra.status_code == 200
        for r in (*streams, extra):
            r.close()
    finally:
        close(app)


def test_https_serves_the_dashboard_with_a_generated_certificate(app_and_settings):
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    app, s, _ = app_and_settings
    cert, key = tls.certificate(s, None, None)
    assert tls.certificate(s, None, None) == (cert, key)  # generated once, then reused
    port = supervise.free_port()
    server = wsgi.Server(("127.0.0.1", port), app.server, numthreads=4)
    server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    server.prepare()
    th = threading.Thread(target=server.serve, daemon=True)
    th.start()
    try:
        ctx = ssl.create_default_context(cafile=cert)  # trusts exactly this certificate
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        conn.request("GET", "/login")
        r = conn.getresponse()
        assert r.status == 200 and b'name="password"' in r.read()
        conn.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            plain = http.client.HTTPSConnection("127.0.0.1", port,
                                                context=ssl.create_default_context(),
                                                timeout=10)
            plain.request("GET", "/login")
    finally:
        server.stop()
        th.join(5)
    assert len(tls.fingerprint(cert).split(":")) == 32


def _post(client, outputs, inputs, state, changed):
    out = (outputs[0] if len(outputs) == 1 else None)
    payload = {
        "output": f"{out['id']}.{out['property']}" if out else
        "..".join(f"{o['id']}.{o['property']}" for o in outputs),
        "outputs": out or outputs, "inputs": inputs, "state": state,
        "changedPropIds": [changed],
    }
    r = client.post("/_dash-update-component", json=payload)
    assert r.status_code == 200, r.data[:300]
    return r.get_json()["response"]


def _admit(client, pid, ward, device):
    vals = {"admit-patient": pid, "admit-ward": ward, "admit-bed": "4", "admit-device": device}
    return _post(client, [{"id": "admit-status", "property": "children"}],
                 [{"id": "admit-submit", "property": "n_clicks", "value": 1}],
                 [{"id": k, "property": "value", "value": v} for k, v in vals.items()],
                 "admit-submit.n_clicks")["admit-status"]["children"]


def test_admit_and_pair_from_the_dashboard_write_the_registry(app_and_settings):
    app, s, _ = app_and_settings
    viewer = app.server.test_client()
    _login(viewer, "vic")
    assert "cannot admit" in _admit(viewer, "P7", "A", "D7")
    nurse = app.server.test_client()
    _login(nurse, "ann")
    assert "not one of yours" in _admit(nurse, "P7", "B", "D7")
    assert _admit(nurse, "P7", "A", "D7") == "admit of P7 recorded by ann."
    assert "already admitted" in _admit(nurse, "P7", "A", "D7")
    # pair a second device from the patient page
    inputs = [{"id": i, "property": "n_clicks", "value": 1 if i == "pair-submit" else None}
              for i in ("spo2-scale-submit", "transfer-submit", "discharge-submit",
                        "pair-submit")]
    state = [{"id": "spo2-scale", "property": "value", "value": 1},
             {"id": "transfer-ward", "property": "value", "value": None},
             {"id": "transfer-bed", "property": "value", "value": None},
             {"id": "pair-device", "property": "value", "value": "D8"},
             {"id": "patient-id", "property": "data", "value": "P7"}]
    # several callbacks write the status line: Dash tells them apart by a suffix on the output
    (key,) = [k for k in app.callback_map if k.startswith("action-status.children@")
              and any(i["id"] == "pair-submit" for i in app.callback_map[k]["inputs"])]
    resp = _post(nurse, [{"id": "action-status", "property": key.split(".", 1)[1]}], inputs,
                 state, "pair-submit.n_clicks")
    assert resp["action-status"] == {"children": "update of P7 recorded by ann."}
    recs = [json.loads(r.value) for r in _consume_all(
        s, s.topic_patients, lambda seen: sum(r.key == b"P7" for r in seen) >= 2, 15)]
    p7 = [r for r in recs if r["patient_id"] == "P7"]
    assert (p7[-1]["ward"], p7[-1]["bed"], p7[-1]["devices"], p7[-1]["by"]) == (
        "A", "4", ["D7", "D8"], "ann")


def test_a_training_dashboard_says_training_on_every_view(settings_factory, tmp_path):
    """TRAINING=true: the login page, every page's frame and the VR page say so; a normal
    dashboard says nothing of the kind."""
    from streams import config

    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["T"], PW)
    for training in (True, False):
        s = settings_factory(users_file=users)
        if training:
            s = config.training_namespace(msgspec.structs.replace(s, training=True))
        topics.ensure(s)
        app = create_app(s, feed=TwinFeed(s))
        try:
            c = app.server.test_client()
            assert ("TRAINING" in c.get("/login").text) is training
            _login(c, "ann")
            assert ("TRAINING" in c.get("/_dash-layout").text) is training
            vr = c.get("/vr")
            assert vr.status_code in (200, 503)  # 503: A-Frame not fetched on this machine
            if vr.status_code == 200:
                assert ("TRAINING" in vr.text) is training
            # the debrief exists only on a training ward, and reading it is audited
            page, doc = c.get("/debrief"), c.get("/debrief.json")
            if training:
                assert page.status_code == 200 and "Training debrief" in page.text
                assert doc.get_json()["summary"]["clinical_alerts"] == 0
                assert doc.get_json()["trainees"] == ["ann"]
            else:
                assert (page.status_code, doc.status_code) == (404, 404)
        finally:
            close(app)
