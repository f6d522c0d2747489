"""Sessions as a hospital security review wants them, tried the way an attacker would: a cookie
kept and replayed after logout (on this replica and another), idle and absolute timeouts, login
and logout forms posted without their CSRF token, password spraying and lockouts, Secure cookies
unless plain http is asked for. Real broker (the revocations are a Kafka topic)."""

from __future__ import annotations

import time

import pytest

from dashboard.app import close, create_app, serve
from dashboard.auth import add_user
from dashboard.feed import TwinFeed
from dashboard.login import ADDRESS_FAILURES_ALLOWED, FAILURES_ALLOWED, _Throttle
from streams import audit, topics
from streams.config import Secret
from streams.errors import ConfigError
from tests.conftest import csrf_of, login, wait_until

pytestmark = [pytest.mark.broker]
PW = "long enough password"
KEY = Secret("s" * 64)


@pytest.fixture
def make_app(settings_factory, tmp_path):
    users = str(tmp_path / "users.jsonl")
    add_user(users, "ann", "clinician", ["A"], PW)
    s = settings_factory(users_file=users, dashboard_secret_key=KEY)
    topics.ensure(s)
    apps = []

    def make(**overrides):
        import msgspec

        app = create_app(msgspec.structs.replace(s, **overrides), feed=TwinFeed(s))
        apps.append(app)
        return app

    make.settings = s  # type: ignore[attr-defined]
    yield make
    for app in apps:
        close(app)


def _logged_in(app):
    c = app.server.test_client()
    assert login(c, "ann", PW).status_code == 302
    assert c.get("/").status_code == 200
    return c


def _logout(c):
    return c.post("/logout", data={"csrf": csrf_of(c.get("/logout").text)})


def test_a_cookie_replayed_after_logout_gets_the_login_page_on_every_replica(make_app):
    one, two = make_app(), make_app()  # two replicas: one key, one sessions topic
    c = _logged_in(one)
    stolen = c.get_cookie("session").value
    thief = two.server.test_client()
    thief.set_cookie("session", stolen)
    assert thief.get("/").status_code == 200  # before the logout the copy works (shared key)
    assert _logout(c).status_code == 302
    assert c.get("/").status_code == 302
    replay = one.server.test_client()
    replay.set_cookie("session", stolen)
    r = replay.get("/patient/P1")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")
    # the other replica learns it from the topic
    assert wait_until(lambda: thief.get("/").status_code == 302, timeout=10)


def test_idle_and_absolute_timeouts_end_a_session(make_app):
    app = make_app(session_idle_minutes=1, session_max_hours=1)
    c = _logged_in(app)
    with c.session_transaction() as sess:
        sess["seen"] = time.time() - 50
    # a page's own timer is not activity: it does not push the idle clock on
    timer = {"output": "x.children", "outputs": {"id": "x", "property": "children"},
             "inputs": [{"id": "ward-refresh", "property": "n_intervals", "value": 9}],
             "changedPropIds": ["ward-refresh.n_intervals"]}
    c.post("/_dash-update-component", json=timer)
    with c.session_transaction() as sess:
        assert time.time() - sess["seen"] >= 50
        sess["seen"] = time.time() - 61
    assert c.get("/").status_code == 302  # idle for more than a minute
    c = _logged_in(app)
    with c.session_transaction() as sess:
        sess["t0"] = time.time() - 3601  # logged in more than an hour ago, busy all along
    assert c.get("/").status_code == 302


def test_login_and_logout_need_their_forms_csrf_token(make_app):
    app = make_app()
    c = app.server.test_client()
    # a login posted by another site's page: no token, or another session's token
    assert c.post("/login", data={"username": "ann", "password": PW}).status_code == 400
    other = app.server.test_client()
    token = csrf_of(other.get("/login").text)
    assert c.post("/login", data={"username": "ann", "password": PW,
                                  "csrf": token}).status_code == 400
    assert c.get("/").status_code == 302  # not logged in
    c = _logged_in(app)
    assert c.post("/logout").status_code == 400  # a cross-site POST cannot log her out
    assert c.get("/logout").status_code == 200  # GET only shows the form
    assert c.get("/").status_code == 200


def test_spraying_and_lockouts_are_per_address_and_name(make_app):
    app = make_app()
    attacker = app.server.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "127.0.0.9"
    for _ in range(FAILURES_ALLOWED):
        assert login(attacker, "ann", "guess").status_code == 401
    assert login(attacker, "ann", PW).status_code == 429  # ann locked for this address...
    nurse = app.server.test_client()  # ...but not for ann at her own workstation
    assert login(nurse, "ann", PW).status_code == 302
    sprayer = app.server.test_client()
    sprayer.environ_base["REMOTE_ADDR"] = "127.0.0.10"
    for i in range(ADDRESS_FAILURES_ALLOWED):
        assert login(sprayer, f"user{i}", "Winter2026!").status_code == 401
    assert login(sprayer, "someone-else", "Winter2026!").status_code == 429


def test_the_throttle_store_is_bounded():
    t = _Throttle(max_keys=100)
    for i in range(10_000):
        t.fail(f"name{i}", f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(t) <= 100


def test_cookies_are_secure_unless_plain_http_is_asked_for(make_app, settings_factory):
    app = make_app(dashboard_allow_http=False)
    c = app.server.test_client()
    r = c.get("/login")
    assert "Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
    with pytest.raises(ConfigError, match="--https"):
        serve(settings_factory(dashboard_allow_http=False, users_file="/dev/null"))


def test_a_post_from_another_sites_page_is_refused_even_with_the_cookie_and_token(make_app):
    """What a browser sends when another site's page posts to the dashboard with the clinician's
    cookie (a stolen token included): Origin and Sec-Fetch-Site name the other site. Refused,
    and audited; the same request from the dashboard's own pages, from an origin the site
    configured (a TLS proxy's) or from a client that is no browser goes through."""
    app = make_app(dashboard_origins="https://ward.example.org")
    c = _logged_in(app)
    token = csrf_of(c.get("/logout").text)
    for headers in ({"Origin": "https://evil.example"},
                    # a sandboxed frame or a data: URL of another site
                    {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "http://localhost.evil.example", "Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "cross-site"}):
        r = c.post("/logout", data={"csrf": token}, headers=headers)
        assert r.status_code == 403, headers
        assert c.get("/").status_code == 200  # still logged in: the logout was not done
    # a login posted from another site is refused before its password is even checked
    other = app.server.test_client()
    r = other.post("/login", data={"username": "ann", "password": PW,
                                   "csrf": csrf_of(other.get("/login").text)},
                   headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    # the dashboard's own origin (scheme aside: behind a TLS proxy it is https), the
    # configured one, and no Origin at all (curl, an API client) reach the handler
    assert c.post("/logout", data={"csrf": token},
                  headers={"Origin": "https://localhost"}).status_code == 302
    c = _logged_in(app)
    token = csrf_of(c.get("/logout").text)
    assert c.post("/logout", data={"csrf": token},
                  headers={"Origin": "https://ward.example.org",
                           "Sec-Fetch-Site": "same-site"}).status_code == 302
    c = _logged_in(app)
    assert c.post("/logout", data={"csrf": csrf_of(c.get("/logout").text)}).status_code == 302
    # our own login form under Referrer-Policy no-referrer: Chromium sends Origin null
    c = _logged_in(app)
    assert c.post("/logout", data={"csrf": csrf_of(c.get("/logout").text)},
                  headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}).status_code == 302

    def refusals() -> list[tuple[str, str]]:
        return [(a.user, a.detail or "") for a in audit.read(make_app.settings)
                if a.action == "denied"]

    assert wait_until(lambda: len(refusals()) >= 5, timeout=15), refusals()
    got = refusals()
    assert [u for u, _ in got].count("ann") == 4 and "POST /login: origin 'https://evil" in \
        " ".join(d for _, d in got)
