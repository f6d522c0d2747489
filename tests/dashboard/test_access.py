"""Access for everyone (issue 21 item 5) and the 3D ward at a glance (item 6), in the real
Chromium against the real stack (the fixtures of tests/dashboard/test_browser.py, a stack of this
module's own).

axe-core comes from the npm registry like A-Frame (`npm pack`, pinned sha512 integrity), fetched
once into tests/dashboard/vendor/ (gitignored). It is injected with `page.evaluate(source)`:
Playwright's evaluation goes through the DevTools protocol, which the page's
Content-Security-Policy does not govern, so the policy stays exactly as served.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dashboard import vr
from tests.dashboard.test_browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    PASSWORD,
    SICK,
    Stack,
    _login,
    _shot,
    browser,
    dashboard_up,
    stack,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

AXE_VERSION = "4.14.1"
AXE_INTEGRITY = ("sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtu"
                 "FooJpZe37OgudVGtQ==")
VENDOR = Path(__file__).parent / "vendor"
BLOCKING = ("serious", "critical")


@pytest.fixture(scope="session")
def axe_source() -> str:
    path = vr.fetch_npm_file("axe-core", AXE_VERSION, AXE_INTEGRITY, "package/axe.min.js",
                             VENDOR / f"axe-core-{AXE_VERSION}.min.js")
    return path.read_text()


def _axe(page, source: str) -> list[dict]:  # noqa: ANN001
    """axe-core's violations on the page as it is now (WCAG 2.x A/AA and best practices)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(source)
    return page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']}))
        .violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                               nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))""")


PAGES = {
    "/": "() => document.querySelectorAll('#ward-table td').length > 0",
    f"/patient/{SICK}": "() => document.querySelector('#news2-breakdown tr') "
                        "&& document.querySelector('.alert-card, .no-alerts')",
    "/ward3d": "() => { const g = document.querySelector('#ward3d-graph .js-plotly-plot');"
               " return g && g.data && g.data[0].customdata "
               "&& document.querySelector('#ward3d-beds'); }",
}
LITE_PAGES = {
    "/?lite=1": PAGES["/"],
    f"/patient/{SICK}": PAGES[f"/patient/{SICK}"],
    "/ward3d": "() => document.querySelector('#ward3d-beds')",
}


def test_axe_finds_no_serious_or_critical_violation(stack: Stack, browser, axe_source) -> None:  # noqa: ANN001, F811
    """Login, ward, patient (its forms opened), 3D ward, and the same pages in low-bandwidth
    mode (the training pages: test_axe_on_a_training_wards_pages)."""
    found: dict[str, list[dict]] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(stack.url + "/login")
    page.wait_for_selector("#username")
    found["/login"] = _axe(page, axe_source)
    page.close()
    page = _login(browser, stack, "alice")
    for mode, pages in (("", PAGES), ("lite ", LITE_PAGES)):
        for path, ready in pages.items():
            page.goto(stack.url + path)
            page.wait_for_function(ready, timeout=45_000)
            if path.startswith("/patient/"):
                page.click("details summary")  # the forms too
            time.sleep(1.0)  # callbacks and frames after the first render
            found[mode + path] = _axe(page, axe_source)
    page.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "axe.json").write_text(json.dumps(found, indent=1))
    bad = {p: [v for v in vs if v["impact"] in BLOCKING] for p, vs in found.items()}
    assert not any(bad.values()), bad


# plotly.js 4.1 (plotly 7.1's bundle): a scene's camera matrices and data scale, as its own
# 3D annotations use them (src/plots/gl3d/project.js): clip coordinates of data points.
_PROJECT = """() => {
  const gd = document.querySelector('#ward3d-graph .js-plotly-plot');
  const sc = gd._fullLayout.scene._scene, cam = sc.glplot.cameraParams, ds = sc.dataScale;
  const xf = (m, v) => { const o = [0, 0, 0, 0];
    for (let i = 0; i < 4; i++) { for (let j = 0; j < 4; j++) { o[j] += m[4 * i + j] * v[i]; } }
    return o; };
  const ndc = (x, y, z) => { const p = xf(cam.projection, xf(cam.view, xf(cam.model,
    [x * ds[0], y * ds[1], z * ds[2], 1]))); return [p[0] / p[3], p[1] / p[3]]; };
  const beds = gd.data[0], mesh = gd.data[1];
  return beds.customdata.map((id, n) => ({id: id, top: mesh.z[8 * n + 4],
    floor: ndc(beds.x[n], beds.y[n], 0), head: ndc(beds.x[n], beds.y[n], mesh.z[8 * n + 4])}));
}"""


@pytest.mark.parametrize("width", [1400, 768])
def test_ward3d_worst_bed_is_tallest_labelled_and_in_the_default_view(
        stack: Stack, browser, width: int) -> None:  # noqa: ANN001, F811
    """Item 6: from the default camera, without rotating, every bed is on screen and the sickest
    patient's bar is the tallest, with the one large label naming them."""
    page = _login(browser, stack, "root", "/ward3d")
    page.set_viewport_size({"width": width, "height": 1000})
    n = len(stack.wards())
    page.wait_for_function(
        f"() => {{ const g = document.querySelector('#ward3d-graph .js-plotly-plot');"
        f" return g && g.data && g.data[0].customdata && g.data[0].customdata.length == {n}"
        f" && g._fullLayout.scene._scene; }}", timeout=45_000)
    time.sleep(1.0)  # the relayout at the new width
    beds = page.evaluate(_PROJECT)
    assert {b["id"] for b in beds} == set(stack.wards())
    tallest = max(beds, key=lambda b: b["top"])
    assert tallest["id"] == SICK
    assert all(b["top"] < tallest["top"] for b in beds if b["id"] != SICK), beds
    off = [b for b in beds for p in (b["floor"], b["head"])
           if not (-1 <= p[0] <= 1 and -1 <= p[1] <= 1)]
    assert not off, off  # every bed's foot and top inside the canvas
    # the label: drawn, naming the sickest patient, inside the figure
    # read in one go in the page: the live figure redraws its annotations on each update, and
    # a label found in one call could be detached (no box) by the next
    box = page.wait_for_function(
        "() => { const a = [...document.querySelectorAll('#ward3d-graph g.annotation-scene')]"
        ".filter(e => e.textContent.includes('Highest risk'));"
        " if (a.length !== 1) return null; const r = a[0].getBoundingClientRect();"
        " return r.width > 0 ? {n: a.length, text: a[0].textContent, x: r.x, y: r.y,"
        " width: r.width} : null; }", timeout=10_000).json_value()
    assert box["n"] == 1 and SICK in box["text"]
    fig = page.locator("#ward3d-graph").bounding_box()
    assert fig and fig["x"] <= box["x"] and box["x"] + box["width"] <= fig["x"] + fig[
        "width"] and fig["y"] <= box["y"] <= fig["y"] + fig["height"], (box, fig)
    # and in words under the figure, first in the list of beds
    assert SICK in page.locator("#ward3d-worst").inner_text()
    assert page.locator("#ward3d-beds li").first.get_attribute("data-patient-id") == SICK
    assert "HIGH" in page.locator("#ward3d-beds li").first.inner_text() or "STALE" in (
        page.locator("#ward3d-beds li").first.inner_text())
    if width == 1400:
        page.screenshot(path=str(ARTIFACTS / "ward3d-default-view.png"))
    page.close()


_FOCUS = """() => { const e = document.activeElement, s = getComputedStyle(e);
  return {tag: e.tagName, id: e.id, cls: String(e.className), href: e.getAttribute('href'),
          text: (e.innerText || e.value || '').slice(0, 40),
          ring: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2,
          x: e.getBoundingClientRect().left}; }"""


def _tab_to(page, selector: str, most: int = 120) -> list[dict]:  # noqa: ANN001
    """Press Tab until the focused element matches `selector`; every stop on the way must show
    a focus ring. Returns the stops."""
    stops = []
    for _ in range(most):
        page.keyboard.press("Tab")
        f = page.evaluate(_FOCUS)
        stops.append(f)
        if f["tag"] != "BODY":
            assert f["ring"], ("no visible focus", f)
        if page.evaluate(f"document.activeElement.matches({json.dumps(selector)})"):
            return stops
    raise AssertionError(f"{selector} not reached by keyboard: {stops[-10:]}")


def test_every_action_is_reachable_by_keyboard(stack: Stack, browser) -> None:  # noqa: ANN001, F811
    """A skip link first; from the ward to the sickest patient, acknowledging their alert, and
    from the 3D ward's list to a patient: Tab and Enter only, a focus ring at every stop."""
    page = _login(browser, stack, "alice")
    page.wait_for_selector(f"#ward-table a[href='/patient/{SICK}']", timeout=45_000)
    page.keyboard.press("Tab")
    first = page.evaluate(_FOCUS)
    assert "skip-link" in first["cls"] and first["ring"] and first["x"] >= 0, first
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    _tab_to(page, f"#ward-table a[href='/patient/{SICK}']")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/patient/{SICK}", timeout=15_000)
    page.locator(".alert-card", has_text="· news2 ·").first.wait_for(timeout=45_000)
    _tab_to(page, ".alert-card input")
    page.keyboard.type("seen by keyboard")
    _tab_to(page, ".alert-card button.ack-button", most=3)
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Acknowledgement of", timeout=10_000)
    # the forms: opened and used by keyboard too (a manual observation: Alert, on air)
    _tab_to(page, "details summary")
    page.keyboard.press("Enter")
    _tab_to(page, "#obs-acvpu")  # a dropdown: Enter opens it, arrows choose, Enter takes
    page.keyboard.press("Enter")
    # Dash's dropdown moves the focus into its search box a frame after it opens; an arrow
    # pressed before that lands on the closed button and only reopens it, so wait for the focus
    # at each step instead of for the elements
    page.wait_for_function("() => document.activeElement"
                           " && document.activeElement.matches('.dash-dropdown-search')"
                           " && document.querySelector('.dash-dropdown-option')",
                           timeout=5_000)
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => { const o = document.activeElement"
                           " && document.activeElement.closest('.dash-dropdown-option');"
                           " return o && o.innerText.includes('A: Alert'); }", timeout=5_000)
    page.keyboard.press("Enter")
    # the chosen value shows once the dropdown re-renders
    page.wait_for_function("() => document.querySelector('#obs-acvpu').innerText"
                           ".includes('A: Alert')", timeout=5_000)
    _tab_to(page, "#obs-o2 input[value='air']")
    page.keyboard.press("Space")
    _tab_to(page, "#obs-submit")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=Observation recorded by alice", timeout=10_000)
    # the 3D ward: its beds are links in a list under the figure
    page.goto(stack.url + "/ward3d")
    page.wait_for_selector(f"#ward3d-beds a[href='/patient/{SICK}']", timeout=30_000)
    _tab_to(page, f"#ward3d-beds a[href='/patient/{SICK}']")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/patient/{SICK}", timeout=15_000)
    page.close()


@pytest.mark.parametrize("path", ["/", f"/patient/{SICK}", "/ward3d"])
def test_pages_fit_a_tablet(stack: Stack, browser, path: str) -> None:  # noqa: ANN001, F811
    """768 px wide (a tablet held upright): nothing wider than the screen, the nav on it."""
    page = browser.new_page(viewport={"width": 768, "height": 1024})
    page.goto(stack.url + "/login?next=" + path)
    page.fill("#username", "root")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_function(PAGES[path], timeout=45_000)
    time.sleep(1.0)
    assert page.evaluate("document.documentElement.scrollWidth") <= 768
    nav = page.locator("nav").bounding_box()
    assert nav and nav["x"] + nav["width"] <= 768
    if path == "/ward3d":
        page.screenshot(path=str(ARTIFACTS / "ward3d-tablet.png"), full_page=True)
    page.close()


def test_low_bandwidth_mode(stack: Stack, browser) -> None:  # noqa: ANN001, F811
    """`?lite=1`: no 3D and no plotly.js, no live stream, at most one update every 5 s, and how
    many bytes each update is (written to test-artifacts/lite.json for docs/dashboard.md);
    remembered for the session until `?lite=0`."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    page = ctx.new_page()
    page.goto(stack.url + "/login")
    page.fill("#username", "root")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(lambda u: "/login" not in u, timeout=15_000)
    seen: list[dict] = []

    def record(req) -> None:  # noqa: ANN001
        if "_dash-update-component" not in req.url:
            if "plotly" in req.url:
                seen.append({"plotly": req.url})
            return
        resp = req.response()
        body = resp.body() if resp is not None and resp.status == 200 else b""
        # when the browser sent it (not when the answer came back: a slow answer under load
        # would make the next period look short)
        seen.append({"t": req.timing["startTime"] / 1000.0,
                     "output": json.loads(req.post_data)["output"],
                     "request": len(req.post_data_buffer or b""), "response": len(body),
                     "status": resp.status if resp else None})

    page.on("requestfinished", record)
    sizes = {}
    for path, ready, output in (
            ("/?lite=1", PAGES["/"], "ward-table.data"),
            (f"/patient/{SICK}", PAGES[f"/patient/{SICK}"], "patient-header.children"),
            ("/ward3d", LITE_PAGES["/ward3d"], "ward3d-list.children")):
        seen.clear()
        page.goto(stack.url + path)
        page.wait_for_function(ready, timeout=45_000)
        assert "Low bandwidth: on" in page.locator("#lite-toggle").inner_text()
        page.wait_for_timeout(11_500)  # two periods of 5 s after the first answer
        assert not [s for s in seen if "plotly" in s], seen
        assert page.locator(".js-plotly-plot, canvas").count() == 0
        calls = [s for s in seen if "output" in s]
        mine = [s for s in calls if output in s["output"]]
        assert 2 <= len(mine) <= 3, mine  # the first answer, then one per 5 s
        gaps = [b["t"] - a["t"] for a, b in zip(mine, mine[1:], strict=False)]
        assert all(g > 4.5 for g in gaps), gaps
        # every callback of the page: none more often than every 5 s
        per_output: dict[str, list[float]] = {}
        for s in calls:
            per_output.setdefault(s["output"], []).append(s["t"])
        for out, ts in per_output.items():
            assert all(b - a > 4.5 for a, b in zip(ts, ts[1:], strict=False)), (out, ts)
        updates = [s for s in calls if s["t"] >= mine[1]["t"] - 0.5]  # one period's requests
        sizes[path] = {
            "response_bytes": max(s["response"] for s in mine[1:]),
            "request_bytes": max(s["request"] for s in mine[1:]),
            "all_callbacks_one_period_bytes": sum(s["response"] + s["request"]
                                                  for s in updates
                                                  if s["t"] < mine[1]["t"] + 4.0)}
    assert page.evaluate("window.__patientLive || null") is None  # no stream was opened
    (ARTIFACTS / "lite.json").write_text(json.dumps(
        {"patients": len(stack.wards()), "sizes": sizes}, indent=1))
    # small: for 17 patients the ward's whole update is a few kilobytes
    assert sizes["/?lite=1"]["response_bytes"] < 16_000, sizes
    assert sizes[f"/patient/{SICK}"]["response_bytes"] < 12_000, sizes
    # switched off again: the 3D ward is back
    page.goto(stack.url + "/ward3d?lite=0")
    page.wait_for_selector("#ward3d-graph .js-plotly-plot", timeout=45_000)
    assert "Low bandwidth: off" in page.locator("#lite-toggle").inner_text()
    ctx.close()


def test_axe_on_a_training_wards_pages(stack: Stack, browser, axe_source, tmp_path) -> None:  # noqa: ANN001, F811
    """The training pages: a training ward's dashboard (its own topics on the same broker) with
    the TRAINING banner on the login page and the ward, and the debrief page."""
    import msgspec

    from dashboard.auth import add_user
    from streams import config, supervise, topics
    from tests.conftest import settings_env, wait_until

    users = str(tmp_path / "users.jsonl")
    add_user(users, "trainee1", "clinician", ["T"], PASSWORD)
    port = supervise.free_port()
    s = config.training_namespace(msgspec.structs.replace(
        stack.settings, training=True, users_file=users, dashboard_port=port))
    topics.ensure(s)
    stack.procs.start("training-dashboard", "dashboard",
                      env={**settings_env(s), "TRAINING": "true"})
    url = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: dashboard_up(url), timeout=90), \
        stack.procs.log("training-dashboard")[-2000:]
    found: dict[str, list[dict]] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url + "/login")
    page.wait_for_selector("#username")
    assert "TRAINING" in page.inner_text("body")
    found["training /login"] = _axe(page, axe_source)
    page.fill("#username", "trainee1")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(lambda u: "/login" not in u, timeout=15_000)
    page.wait_for_selector(".training-banner", timeout=30_000)
    time.sleep(1.0)
    found["training /"] = _axe(page, axe_source)
    # a session's worth of events: an urgent-response alert the trainee opened and escalated
    from datetime import UTC, datetime, timedelta

    from kafka import KafkaProducer

    from streams import messages
    from streams.config import kafka_python_producer_config

    t0 = datetime.now(UTC) - timedelta(minutes=3)
    raised = messages.AlertEvent(alert_id="P00001:news2:1", patient_id="P00001", ts=t0,
                                 event="raised", kind="news2", category="clinical",
                                 priority="medium", message="TRAINING: NEWS2 6", news2=6,
                                 raised_at=t0, training=True)
    producer = KafkaProducer(**kafka_python_producer_config(s))
    for ev in (raised, msgspec.structs.replace(raised, event="escalated", by="trainee1",
                                               ts=t0 + timedelta(seconds=95))):
        producer.send(s.topic_alerts, key=b"P00001", value=messages.encode(ev))
    producer.send(s.topic_audit, key=b"trainee1", value=messages.encode(messages.AuditRecord(
        ts=t0 + timedelta(seconds=40), user="trainee1", action="view_patient",
        patient_id="P00001")))
    producer.flush()
    producer.close()
    page.goto(url + "/debrief")
    page.wait_for_selector("table.debrief")
    assert "urgent response" in page.inner_text("table.debrief")
    found["training /debrief"] = _axe(page, axe_source)
    _shot(page, "debrief")
    page.close()
    bad = {p: [v for v in vs if v["impact"] in BLOCKING] for p, vs in found.items()}
    assert not any(bad.values()), bad
