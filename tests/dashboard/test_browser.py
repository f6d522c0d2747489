"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against the
real stack: broker, worker, simulated patients in two wards, dashboard process, accounts.

Screenshots go to test-artifacts/ (or $TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from kafka import KafkaProducer

from dashboard.auth import add_user
from streams import audit, messages, supervise, topics
from streams.config import Settings, kafka_python_producer_config
from streams.registry import change
from tests.conftest import ROOT, Procs, make_settings, settings_env, wait_until
from tests.test_end_to_end import _consume_all

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Chromium on a machine with no GPU and no outside network: software WebGL for the 3D views, and
# no background connections (they are refused here, many at a time).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PASSWORD = "correct horse battery"
SIMULATED = 16
SICK = "P90001"  # a patient the test makes very unwell: a high-priority NEWS2 alert
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


class Stack:
    def __init__(self, settings: Settings, url: str, procs: Procs) -> None:
        self.settings = settings
        self.url = url
        self.procs = procs

    def wards(self) -> dict[str, str]:
        return {f"P{i:05d}": "AB"[(i - 1) % 2] for i in range(1, SIMULATED + 1)} | {SICK: "A"}


def _send_sick_patient(s: Settings) -> None:
    producer = KafkaProducer(**kafka_python_producer_config(s))
    rec = change(None, SICK, "admit", "test", ward="A", bed="99", devices=["WR-SICK"])
    producer.send(s.topic_patients, key=SICK.encode(), value=msgspec.json.encode(rec))
    # NEWS2 (RCP 2017): RR 30 -> 3, SpO2 84 -> 3, SBP 85 -> 3, HR 140 -> 3, temp 39.5 -> 2
    now = time.time()
    for k in range(5):
        r = messages.reading("WR-SICK", SICK, k + 1, messages.utc(now - 5 + k),
                             {"hr": 140, "rr": 30, "spo2": 84, "sbp": 85, "dbp": 50,
                              "temp": 39.5})
        producer.send(s.topic_vitals_raw, key=SICK.encode(), value=messages.encode(r))
    producer.flush()
    producer.close()


def dashboard_up(url: str) -> bool:
    """Whether a dashboard answers its login page at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/login", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(broker_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} missing: run `bash .ci/deps` (as root)"
    tmp = tmp_path_factory.mktemp("browser")
    users = str(tmp / "users.jsonl")
    add_user(users, "alice", "clinician", ["A"], PASSWORD)
    add_user(users, "vic", "viewer", ["B"], PASSWORD)
    add_user(users, "root", "admin", [], PASSWORD)
    port = supervise.free_port()
    s = make_settings(broker_port, users_file=users, dashboard_port=port,
                      dashboard_tls_dir=str(tmp / "tls"))
    topics.ensure(s)
    env = settings_env(s)
    procs = Procs(tmp)
    try:
        procs.start("worker", "worker", env=env)
        procs.start("simulator", "simulate", "--patients", str(SIMULATED), "--rate", "1",
                    "--seed", "5", "--wards", "A,B", "--scenarios", "stable=1",
                    "--no-progress", env=env)
        procs.start("dashboard", "dashboard", env=env)
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: dashboard_up(url), timeout=90), \
            procs.log("dashboard")[-2000:]
        _send_sick_patient(s)
        yield Stack(s, url, procs)
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _login(browser, stack: Stack, name: str, path: str = "/"):  # noqa: ANN001, ANN202
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(stack.url + path)
    assert "/login" in page.url  # nothing without a login
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(lambda u: "/login" not in u, timeout=15_000)
    return page


def _shot(page, name: str) -> None:  # noqa: ANN001
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _column(page, name: str) -> list[str]:  # noqa: ANN001
    return page.locator(f"#ward-table td[data-dash-column={name}]").all_inner_texts()


def _ward_ids(page) -> set[str]:  # noqa: ANN001
    return {t.strip() for t in _column(page, "patient")}


def test_login_is_required_and_enforced(stack: Stack, browser) -> None:  # noqa: ANN001
    # no session: the callback endpoint, the VR state and the pages all refuse
    req = urllib.request.Request(f"{stack.url}/_dash-update-component", data=b"{}",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{stack.url}/vr/state.json", timeout=5)
    assert err.value.code == 401
    page = browser.new_page()
    page.goto(stack.url + "/patient/P00001")
    assert "/login" in page.url
    page.fill("#username", "alice")
    page.fill("#password", "wrong password!")
    page.click("#login")
    assert "Wrong user name or password" in page.content()
    assert "/login" in page.url
    page.close()
    # a viewer of ward B sees ward B only and cannot acknowledge
    page = _login(browser, stack, "vic")
    want_b = {p for p, w in stack.wards().items() if w == "B"}
    assert wait_until(lambda: _ward_ids(page) == want_b, timeout=30), _ward_ids(page)
    page.goto(stack.url + f"/patient/{SICK}")  # ward A: not vic's
    page.wait_for_selector("text=Patient not found")
    page.close()
    # what vic read, and tried to read, is in the audit trail
    def vics() -> list[tuple[str, str | None]]:
        return [(a.action, a.patient_id) for a in audit.read(stack.settings, user="vic")]

    assert wait_until(lambda: {("view_ward", None), ("denied", SICK)} <= set(vics()),
                      timeout=15), vics()


def test_ward_shows_exactly_the_simulated_patients(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "root")
    assert wait_until(lambda: _ward_ids(page) == set(stack.wards()), timeout=45), (
        _ward_ids(page), stack.procs.log("worker")[-2000:])
    # every simulated patient's row is fresh; the sick patient is first (highest risk)
    def stale() -> list[str]:
        return [p.strip() for p, last in zip(_column(page, "patient"), _column(page, "last"),
                                             strict=True) if "STALE" in last]

    assert wait_until(lambda: set(stale()) <= {SICK}, timeout=20), stale()
    assert wait_until(lambda: _column(page, "patient")[0].strip() == SICK, timeout=20), (
        _column(page, "patient"), _column(page, "news2"))
    _shot(page, "ward")
    page.close()
    page = _login(browser, stack, "alice")
    want_a = {p for p, w in stack.wards().items() if w == "A"}
    assert wait_until(lambda: _ward_ids(page) == want_a, timeout=30), _ward_ids(page)
    page.close()


def test_patient_page_renders_the_3d_twin_and_trends(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "alice", "/patient/P00001")
    page.wait_for_selector("#body3d .gl-container canvas", timeout=30_000)
    traces = page.evaluate("document.getElementById('body3d').querySelector('.js-plotly-plot')"
                           ".data.map(t => t.type + ':' + t.name)")
    assert "mesh3d:heart" in traces and "mesh3d:left lung" in traces
    page.wait_for_function(
        "() => { const g = document.querySelector('#trends .js-plotly-plot');"
        " return g && g.data && g.data.some(t => t.name === 'twin estimate'); }",
        timeout=30_000)
    panels = page.locator("#trends .subplot").count()
    assert panels == 6
    assert page.locator(".news2-table tr").count() == 9  # header, 7 parameters, total
    # the lungs breathe and the heart beats: their vertices move between animation frames
    def z0(organ: str) -> float:
        return page.evaluate("document.querySelector('#body3d .js-plotly-plot').data"
                             f".find(t => t.name === '{organ}').z[0]")

    lung, heart = set(), set()
    for _ in range(40):  # 2 s: at least one beat at any heart rate the twin can have (> 30/min)
        lung.add(z0("left lung"))
        heart.add(z0("heart"))
        time.sleep(0.05)
    assert len(lung) > 3 and len(heart) > 1, (lung, heart)
    # a manual observation flows through Kafka and the worker into the twin's NEWS2
    assert "not recorded" in page.locator("tr.news2-consciousness").inner_text()
    page.click("details summary")
    page.click("#obs-acvpu")
    page.click("text=A: Alert")
    page.click("text=supplemental oxygen")
    page.click("#obs-submit")
    page.wait_for_selector("text=Observation recorded by alice", timeout=10_000)
    row = page.locator("tr.news2-consciousness")
    assert wait_until(lambda: "Alert" in row.inner_text(), timeout=30), row.inner_text()
    oxygen = page.locator("tr.news2-air_or_oxygen").inner_text()
    assert "supplemental oxygen" in oxygen and "\t2\t" in oxygen  # RCP 2017: oxygen scores 2
    _shot(page, "patient")
    page.close()


def test_patient_page_is_pushed_new_values(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "alice", f"/patient/{SICK}")
    page.wait_for_selector("tr.news2-pulse", timeout=30_000)
    page.wait_for_function("window.__patientLive && window.__patientLive.readyState === 1",
                           timeout=15_000)
    # no more polling: from here only the push can bring a new value to the page
    page.evaluate("window.dash_clientside.set_props('patient-refresh', {disabled: true})")
    time.sleep(1)  # a poll already on its way lands before the new reading exists
    row = page.locator("tr.news2-pulse")
    assert "150" not in row.inner_text()
    producer = KafkaProducer(**kafka_python_producer_config(stack.settings))
    r = messages.reading("WR-SICK", SICK, 1000, messages.utc(time.time()),
                         {"hr": 150, "rr": 30, "spo2": 84, "sbp": 85, "temp": 39.5})
    producer.send(stack.settings.topic_vitals_raw, key=SICK.encode(), value=messages.encode(r))
    producer.flush()
    producer.close()
    assert wait_until(lambda: "150" in row.inner_text(), timeout=15), row.inner_text()
    page.close()


def test_acknowledging_an_alert_changes_its_state_end_to_end(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "alice", f"/patient/{SICK}")
    card = page.locator(".alert-card", has_text="· news2 ·").first
    card.wait_for(timeout=45_000)
    alert_id = card.get_attribute("data-alert-id")
    assert alert_id and alert_id.startswith(SICK)
    card.locator("input").fill("seen, doctor called")
    card.locator("button.ack-button").click()
    page.wait_for_selector("text=Acknowledgement of", timeout=10_000)
    s = stack.settings

    def acked(seen) -> bool:  # noqa: ANN001
        return any(json.loads(r.value).get("event") == "acknowledged" for r in seen)

    events = [json.loads(r.value) for r in _consume_all(s, s.topic_alerts, acked, timeout=30)]
    ack = [e for e in events if e["event"] == "acknowledged"]
    assert ack, [e["event"] for e in events]
    assert ack[0]["alert_id"] == alert_id and ack[0]["by"] == "alice"
    assert ack[0]["comment"] == "seen, doctor called" and ack[0]["state"] == "acknowledged"
    # the page shows the new state, and the audit trail has who viewed and who acknowledged
    page.locator(".alert-card", has_text="acknowledged by alice").first.wait_for(timeout=15_000)
    _shot(page, "patient-acknowledged")
    audit = [json.loads(r.value) for r in _consume_all(
        s, s.topic_audit, lambda seen: any(b'"acknowledge"' in r.value for r in seen), 15)]
    assert {"user": "alice", "action": "view_patient", "patient_id": SICK} in [
        {k: a.get(k) for k in ("user", "action", "patient_id")} for a in audit]
    assert any(a["action"] == "acknowledge" and a["alert_id"] == alert_id for a in audit)
    page.close()


def test_ward3d_shows_every_bed(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "root", "/ward3d")
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('#ward3d-graph .js-plotly-plot');"
        f" return g && g.data && g.data[0].customdata && g.data[0].customdata.length "
        f"== {len(stack.wards())}; }}", timeout=30_000)
    ids = page.evaluate("document.querySelector('#ward3d-graph .js-plotly-plot')"
                        ".data[0].customdata")
    assert set(ids) == set(stack.wards())
    _shot(page, "ward3d")
    page.close()


def test_vr_scene_has_one_entity_per_patient_and_live_values(stack: Stack, browser) -> None:  # noqa: ANN001
    page = _login(browser, stack, "root", "/vr")
    n = len(stack.wards())
    page.wait_for_function(f"() => document.querySelectorAll('a-entity.patient').length == {n}",
                           timeout=30_000)
    ids = page.evaluate("[...document.querySelectorAll('a-entity.patient')]"
                        ".map(e => e.dataset.patientId)")
    assert set(ids) == set(stack.wards())
    assert page.evaluate("document.querySelector('a-scene').renderer !== undefined")
    beacon = page.evaluate(f"document.getElementById('bed-{SICK}').dataset.alerts")
    assert int(beacon) >= 1

    def vitals() -> dict[str, str]:
        return page.evaluate("Object.fromEntries([...document.querySelectorAll("
                             "'a-entity.patient')].map(e => [e.dataset.patientId, "
                             "e.dataset.vitals]))")

    first = vitals()
    assert all("HR" in v for v in first.values())
    assert wait_until(lambda: any(vitals()[p] != first[p] for p in first if p != SICK),
                      timeout=30, interval=1.0)
    heart = page.evaluate("document.querySelector('#bed-P00001 .heart')"
                          ".getAttribute('beat').rate")
    assert 30 < heart < 200
    # each bed's panel shows its own canvas (the scene is built without markup from ids)
    assert page.evaluate("""[...document.querySelectorAll('a-entity.patient')].every(e => {
        const m = e.querySelector('.panel').getObject3D('mesh');
        return m && m.material.map && m.material.map.image === e._canvas; })""")
    _shot(page, "vr")
    page.close()


_CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def test_content_security_policy_runs_only_our_scripts(stack: Stack, browser) -> None:  # noqa: ANN001
    """Every page works under the policy (no violation reported: Dash's inline scripts are
    allowed by hash, plotly's WebGL and A-Frame run), and a script slipped into a page, as a
    stored cross-site scripting attack would, does not run."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.add_init_script(_CSP_WATCH)
    console: list[str] = []
    page = ctx.new_page()
    page.on("console", lambda m: console.append(m.text))
    page.goto(stack.url + "/login")
    page.wait_for_selector("#username")
    assert page.evaluate("window.__csp") == []
    page.fill("#username", "root")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(lambda u: "/login" not in u, timeout=15_000)
    waits = {
        "/": "() => document.querySelectorAll('#ward-table td').length > 0",
        f"/patient/{SICK}": "() => document.querySelector('#body3d .gl-container canvas') "
                            "&& document.querySelector('#trends .js-plotly-plot')",
        "/ward3d": "() => { const g = document.querySelector('#ward3d-graph .js-plotly-plot');"
                   " return g && g.data && g.data[0].customdata; }",
        "/vr": "() => document.querySelectorAll('a-entity.patient').length > 0",
    }
    for path, ready in waits.items():
        page.goto(stack.url + path)
        page.wait_for_function(ready, timeout=30_000)
        time.sleep(1.0)  # callbacks and frames after the first render
        assert page.evaluate("window.__csp") == [], (path, page.evaluate("window.__csp"))
    assert not [c for c in console if "Content Security Policy" in c], console
    # an attacker's script in the page: inline, an event handler, and from another origin
    page.goto(stack.url + "/")
    page.wait_for_function(waits["/"], timeout=30_000)
    page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.__pwned = 1';
        document.body.appendChild(s);
        const i = document.createElement('img');
        i.setAttribute('src', 'data:,x');
        i.setAttribute('onerror', 'window.__pwned = 2');
        document.body.appendChild(i);
        const r = document.createElement('script');
        r.src = 'http://127.0.0.2:9/x.js';
        document.body.appendChild(r);
    }""")
    time.sleep(1.0)
    assert page.evaluate("window.__pwned") is None
    blocked = page.evaluate("window.__csp")
    assert sum(v.startswith("script-src") for v in blocked) >= 3, blocked
    ctx.close()
