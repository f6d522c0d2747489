"""Pure parts of the dashboard: registry changes, accounts, ward ordering, history, the 3D body."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pytest

from dashboard import body, live, vr, ward
from dashboard.auth import User, UserStore, add_user
from dashboard.feed import HISTORY_STEP_S, History, TwinFeed
from streams import config, messages
from streams.errors import ConfigError
from streams.messages import AlertEvent, TwinState
from streams.registry import RegistryError, change
from twin.channels import NAMES

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def twin_state(pid: str = "P1", ts: datetime = NOW, **fields: Any) -> TwinState:
    """A whole twin state as the worker writes one (the feed reads no other), empty but for
    `fields`."""
    empty: dict[str, Any] = {
        "units": {}, "estimate": {}, "sd": {}, "raw": {}, "age_s": {}, "forecasts": [],
        "derived": {}, "minutes_to_band": {}, "news2": 0, "news2_raw": 0,
        "news2_complete": False, "news2_band": "none", "readings_applied": 0, "artifacts": 0,
        "missing": 0, "duplicates": 0, "late": 0, "sequence_gaps": 0, "battery": None,
        "quality": None}
    return TwinState(patient_id=pid, ts=ts, **{**empty, **fields})


def alert_event(pid: str, alert_id: str, priority: str = "high", kind: str = "news2",
                event: str = "raised") -> AlertEvent:
    return AlertEvent(alert_id=alert_id, patient_id=pid, ts=NOW, event=event, kind=kind,
                      category="clinical", priority=priority, message=kind)


def test_registry_lifecycle_and_its_refusals():
    rec = change(None, "P1", "admit", "ann", ward="A", bed="3", devices=["D1"], now=NOW)
    assert (rec.event, rec.ward, rec.bed, rec.devices, rec.by) == ("admit", "A", "3", ["D1"],
                                                                   "ann")
    with pytest.raises(RegistryError, match="already admitted"):
        change(rec, "P1", "admit", "ann", ward="B")
    paired = change(rec, "P1", "update", "bob", devices=["D2", "D1"])
    assert paired.devices == ["D1", "D2"]  # added, not duplicated
    scaled = change(paired, "P1", "update", "dr-c", spo2_scale=2)
    assert (scaled.spo2_scale, scaled.spo2_scale_set_by, scaled.ward) == (2, "dr-c", "A")
    moved = change(scaled, "P1", "transfer", "ann", ward="B")
    assert (moved.ward, moved.bed, moved.spo2_scale) == ("B", None, 2)  # the bed is not carried
    out = change(moved, "P1", "discharge", "ann")
    assert out.event == "discharge" and out.devices == []  # devices free for the next patient
    with pytest.raises(RegistryError, match="not admitted"):
        change(out, "P1", "transfer", "ann", ward="C")
    with pytest.raises(RegistryError, match="not admitted"):
        change(None, "P2", "update", "ann", spo2_scale=2)
    with pytest.raises(RegistryError, match="1 or 2"):
        change(rec, "P1", "update", "ann", spo2_scale=3)
    again = change(out, "P1", "admit", "ann", ward="C")  # readmission starts a fresh record
    assert again.spo2_scale == 1 and again.ward == "C"


def test_accounts_are_hashed_and_checked(tmp_path):
    path = str(tmp_path / "users.jsonl")
    add_user(path, "ann", "clinician", ["A", "B"], "a long password")
    text = (tmp_path / "users.jsonl").read_text()
    assert "a long password" not in text and '"password": "scrypt:' in text
    store = UserStore(path)
    u = store.authenticate("ann", "a long password")
    assert u is not None and u.wards == ("A", "B") and u.can_act
    assert store.authenticate("ann", "a long passworD") is None
    assert store.authenticate("nobody", "a long password") is None
    old_hash = u.password_hash
    add_user(path, "ann", "viewer", ["A"], "another long one")  # reset: replaces, not appends
    assert len((tmp_path / "users.jsonl").read_text().splitlines()) == 1
    u2 = store.get("ann")
    assert u2 is not None and u2.role == "viewer" and not u2.can_act
    assert u2.password_hash != old_hash
    admin = add_user(path, "root", "admin", [], "long enough!")
    assert admin.wards == ("*",) and admin.sees_ward(None) and admin.sees_ward("Z")
    with pytest.raises(ConfigError, match="at least 10"):
        add_user(path, "x", "viewer", ["A"], "short")
    with pytest.raises(ConfigError, match="needs --wards"):
        add_user(path, "x", "viewer", [], "long enough!")
    with pytest.raises(ConfigError, match="role"):
        add_user(path, "x", "nurse", ["A"], "long enough!")


def _state(pid: str, band: str, news2: int, age_s: float) -> TwinState:
    return twin_state(pid, NOW - timedelta(seconds=age_s), news2_band=band, news2=news2)


def test_ward_order_and_visibility():
    recs = {p: change(None, p, "admit", "t", ward=w, bed=b)
            for p, w, b in (("P1", "A", "1"), ("P2", "A", "2"), ("P3", "B", "1"),
                            ("P4", "A", "3"), ("P5", "A", "4"))}
    states = {"P1": _state("P1", "low", 1, 5), "P2": _state("P2", "medium", 5, 5),
              "P3": _state("P3", "high", 9, 5), "P4": _state("P4", "low", 0, 600),
              "P9": _state("P9", "low", 0, 5)}  # P5: admitted, no data; P9: not in the registry
    alerts = [alert_event("P1", "P1:low_battery:1", priority="low", kind="low_battery")]
    nurse = User("n", "clinician", ("A",), "-")
    beds = ward.beds(nurse, states, recs, alerts, NOW)
    # stale and no-data patients rank just under the high band: unknown is not healthy
    assert [b.patient_id for b in beds] == ["P4", "P5", "P2", "P1"]
    assert [b.stale for b in beds] == [True, True, False, False]
    assert beds[3].alerts == alerts
    admin = User("r", "admin", ("*",), "-")
    assert [b.patient_id for b in ward.beds(admin, states, recs, [], NOW)][:1] == ["P3"]
    assert {b.patient_id for b in ward.beds(admin, states, recs, [], NOW)} == {
        "P1", "P2", "P3", "P4", "P5", "P9"}
    pos = ward.positions(beds)
    assert len(set(pos.values())) == len(beds)  # no two beds in one place
    scene = vr.scene_state(beds)
    assert [s["patient_id"] for s in scene] == ["P4", "P5", "P2", "P1"]
    assert scene[1]["news2"] is None and scene[1]["colour"] == ward.BAND_COLOURS["unknown"]


def test_history_keeps_a_bounded_ordered_ring_and_every_artifact():
    h = History(points=5)
    t0 = 1_000_000.0
    for k in range(20):  # one state per second: one sample per HISTORY_STEP_S kept
        h.add(twin_state(estimate={"hr": 60.0 + k}, sd={"hr": 1.0}, raw={"hr": 60.0 + k},
                         news2=k), t0 + k)
    s = h.series()
    assert np.all(np.diff(s["ts"]) >= HISTORY_STEP_S)
    h.add(twin_state(estimate={"hr": 70.0}, raw={"rr": 80.0}, rejected=["rr"]), t0 + 20.5)
    s = h.series()
    assert s["rejected"][-1, 1] and np.isnan(s["estimate"][-1, 1])
    for k in range(40):
        h.add(twin_state(estimate={"hr": 1.0 * k}), t0 + 100 + k * HISTORY_STEP_S)
    s = h.series()
    assert len(s["ts"]) == 5 and np.all(np.diff(s["ts"]) > 0)
    assert s["estimate"][-1, 0] == 39.0


def _feed() -> tuple[TwinFeed, config.Settings]:
    s = config.load({})
    return TwinFeed(s), s  # not started: filled by hand


def _twin(s: config.Settings, pid: str, hr: float) -> tuple[str, bytes, bytes]:
    return (s.topic_twin_state, pid.encode(),
            messages.encode(twin_state(pid, estimate={"hr": hr})))


def _alert(s: config.Settings, pid: str, n: int) -> tuple[str, bytes, bytes]:
    return s.topic_alerts, pid.encode(), messages.encode(alert_event(pid, f"{pid}:news2:{n}"))


def test_live_listeners_get_their_patient_only_and_never_hold_up_the_feed():
    feed, s = _feed()
    p1, everyone, tiny = feed.listen("P1"), feed.listen(), feed.listen("P1", maxsize=2)
    feed.apply(*_twin(s, "P1", 70.0))
    feed.apply(*_twin(s, "P2", 80.0))
    feed.apply(*_alert(s, "P1", 1))
    feed.apply(*_alert(s, "P2", 2))
    got = [p1.get_nowait() for _ in range(p1.qsize())]
    assert [(e.event, e.patient_id) for e in got] == [("state", "P1"), ("raised", "P1")]
    # the alert stream: every patient's alerts, no twin states
    assert [everyone.get_nowait().alert_id for _ in range(everyone.qsize())] == \
        ["P1:news2:1", "P2:news2:2"]
    # a reader that does not keep up loses events (counted); the feed goes on regardless
    for k in range(5):
        feed.apply(*_twin(s, "P1", 90.0 + k))
    assert tiny.qsize() == 2 and tiny.dropped == 5
    assert feed.state("P1").estimate["hr"] == 94.0
    assert p1.qsize() == 5 and p1.dropped == 0
    feed.unlisten(p1)
    feed.apply(*_twin(s, "P1", 95.0))
    assert p1.qsize() == 5


def test_live_stream_sends_one_update_per_burst_and_ends():
    feed, s = _feed()
    stream = live.events(feed, "P1", stream_s=1.5, keepalive_s=0.3)
    assert next(stream).startswith("retry: ")  # subscribes the listener
    for k in range(3):  # a burst: one event, the page reads the latest state anyway
        feed.apply(*_twin(s, "P1", 70.0 + k))
    assert next(stream) == "event: update\ndata: {}\n\n"
    assert next(stream) == "event: ping\ndata: {}\n\n"  # nothing more arrived
    feed.apply(*_twin(s, "P2", 60.0))  # another patient's: not this stream's
    rest = list(stream)  # ends by itself after stream_s
    assert rest and all(chunk == "event: ping\ndata: {}\n\n" for chunk in rest)
    assert not feed._listeners  # the listener went with the stream
    # a stopping feed ends its streams at once, not after their keepalive
    stream = live.events(feed, "P1", keepalive_s=60)
    next(stream)
    feed.apply(*_twin(s, "P1", 75.0))
    t = time.monotonic()
    feed.stop()
    assert list(stream) == []  # ended (a last update is moot: the page goes with the server)
    assert time.monotonic() - t < 5


def test_body_meshes_are_closed_and_organs_take_their_score_colour():
    m = body.ellipsoid((0, 0, 0), (1, 2, 3))
    edges = Counter()
    for tri in zip(m["i"], m["j"], m["k"], strict=True):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edges[tuple(sorted((int(a), int(b))))] += 1
    assert set(edges.values()) == {2}  # watertight: every edge between exactly two triangles
    assert np.allclose((m["x"] / 1) ** 2 + (m["y"] / 2) ** 2 + (m["z"] / 3) ** 2, 1.0)
    st = twin_state(estimate={"hr": 135.0, "rr": 14.0, "spo2": None},
                    news2_components={"pulse": 3, "respiration_rate": 0, "spo2": 0,
                                      "temperature": 0, "systolic_bp": 0},
                    derived={"shock_index": 1.2})
    fig, anim = body.figure(st)
    colours = {t.name: t.color for t in fig.data}
    assert colours["heart"] == body.SCORE_COLOURS[3]
    assert colours["left lung"] == body.SCORE_COLOURS[0]  # RR known (0); SpO2 unknown
    assert colours["head"] == body.UNKNOWN  # no temperature estimate: unknown, not green
    assert {p["kind"] for p in anim["parts"]} == {"heart", "lung"}
    assert body.rates(st) == {"hr": 135.0, "rr": 14.0}
    assert "shock index 1.20 (high)" in body.caption(st)
    assert body.rates(None) == {"hr": None, "rr": None}
    # a new heart rate moves the animation and the caption, not the figure's colours
    faster = msgspec.structs.replace(st, estimate={**st.estimate, "hr": 140.0})
    assert body.signature(faster) == body.signature(st)
    assert body.signature(msgspec.structs.replace(
        st, news2_components={**st.news2_components, "pulse": 2})) != body.signature(st)


def test_aframe_fetch_refuses_a_package_that_does_not_match_its_integrity(tmp_path, monkeypatch):
    # a registry or mirror serving different bytes under the same version is a fault we cannot
    # otherwise cause: a stand-in npm writes a tarball with other contents
    fake = tmp_path / "npm"
    fake.write_text("#!/bin/sh\ncd \"$4\" && mkdir -p package/dist && echo x > "
                    "package/dist/aframe-v1.8.0.min.js && tar czf aframe-1.8.0.tgz package\n")
    fake.chmod(0o755)
    monkeypatch.setattr(vr, "AFRAME_FILE", tmp_path / "vendor" / "aframe.min.js")
    with pytest.raises(vr.AssetError, match="integrity"):
        vr.fetch_aframe(npm=str(fake))
    assert not (tmp_path / "vendor" / "aframe.min.js").exists()
    json.dumps(vr.scene_state([]))  # an empty ward is a valid scene


def test_the_patient_header_says_when_the_twins_history_was_lost():
    from dashboard.patient import header

    now = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    state = twin_state(ts=now, applied_at=now, history_lost_at=None)
    assert "patient-history-lost" not in json.dumps(header("P1", None, state, now).to_plotly_json(),
                                                    default=str)
    state = msgspec.structs.replace(state,
                                    history_lost_at=datetime(2026, 11, 29, 7, 59, tzinfo=UTC))
    shown = json.dumps(header("P1", None, state, now).to_plotly_json(), default=str)
    assert "patient-history-lost" in shown and "History lost at 2026-11-29T07:59:00" in shown
    assert "patient-stale" not in shown  # lost history is not staleness: the twin is current


def _vr_bed(stale_s: float = 2.0) -> ward.Bed:
    st = twin_state("P7", NOW, news2=9, news2_band="high",
                    estimate={"hr": 131.0, "rr": 26.0, "spo2": 90.0, "sbp": 88.0, "temp": 38.6},
                    sd={"hr": 1.0, "rr": 1.0, "spo2": 1.0, "sbp": 1.0, "temp": 0.1})
    alerts = [alert_event("P7", "P7:news2:1"),
              alert_event("P7", "P7:sepsis_risk:1", priority="medium", kind="sepsis_risk")]
    return ward.Bed("P7", "A", "12", st, alerts, stale_s)


@pytest.mark.parametrize("age_s", [2.0, 600.0])
def test_the_ward_row_shows_everything_the_vr_panel_shows(age_s: float):
    """Issue 21 item 5: what /vr shows per bed has a desktop and tablet equivalent, the ward
    table's row (and the patient page its link opens: heart and breathing animated there)."""
    b = _vr_bed(age_s)
    scene = vr.scene_state([b])[0]
    row = ward.rows([b])[0]
    shown = " ".join(str(v) for v in row.values())
    assert scene["patient_id"] in row["patient"] and f"/patient/{b.patient_id}" in row["patient"]
    assert row["where"] == f"{scene['ward']} / {scene['bed']}"
    assert str(scene["news2"]) in row["news2"]
    assert scene["band_label"] == row["band_label"].split(" (")[0]  # words and shape, both
    for ch, v in scene["vitals"].items():
        digits = 1 if ch == "temp" else 0
        assert row[f"v_{ch}"].startswith(f"{v:.{digits}f}"), (ch, row)
    for a in scene["alerts"]:  # every open alert, not only the first
        assert f"{a['kind']} ({a['priority']})" in row["alerts"]
    assert ("STALE" in shown) == scene["stale"]


def test_bands_are_words_and_shapes_not_colour_alone():
    from twin.news2 import BAND_NAMES

    bands = [*BAND_NAMES, "unknown"]
    # every band has a colour, a word, a 3D marker shape and a glyph; no two share a shape
    for table in (ward.BAND_COLOURS, ward.BAND_TEXT, ward.BAND_SYMBOLS, ward.BAND_GLYPHS):
        assert set(table) == set(bands)
    assert len(set(ward.BAND_SYMBOLS.values())) == len(bands)
    assert len(set(ward.BAND_GLYPHS.values())) == len(bands)
    assert len(set(ward.BAND_TEXT.values())) == len(bands)
    assert ward.band_label("high") == "✖ HIGH"
    stale = ward.rows([_vr_bed(600.0)])[0]
    assert stale["band_label"] == "□ UNKNOWN (last HIGH)"  # stale: not shown as its old band


def test_the_3d_ward_makes_the_highest_risk_bed_the_tallest_and_labels_it():
    beds = [ward.Bed(f"Q{i}", "AB"[i % 2], str(i), twin_state(f"Q{i}", news2=i % 3,
                                                               news2_band="low"), [], 2.0)
            for i in range(1, 9)]
    worst = _vr_bed()
    beds = [worst, *beds]  # `beds` gives them highest risk first
    fig = ward.figure_3d(beds)
    ids = list(fig.data[0].customdata)
    mesh = fig.data[1]
    tops = {pid: mesh.z[8 * n + 4] for n, pid in enumerate(ids)}
    assert max(tops, key=tops.get) == "P7" and tops["P7"] == 9
    assert min(tops.values()) == ward.BAR_STUB  # a NEWS2 of 0 still stands out of the floor
    assert len(mesh.facecolor) == 12 * len(beds)
    assert fig.data[2].marker.symbol[0] == ward.BAND_SYMBOLS["high"]
    (label,) = fig.layout.scene.annotations
    assert "Highest risk: P7" in label.text and "✖ HIGH" in label.text
    assert (label.x, label.y, label.z) == (fig.data[0].x[0], fig.data[0].y[0], 9)
    # one fixed height scale, whatever the ward: heights compare between refreshes
    assert tuple(fig.layout.scene.zaxis.range) == (0, ward.NEWS2_MAX + 2)
    assert ward.figure_3d([]).layout.scene.annotations == ()


def test_the_ward_arrow_shows_a_recent_rise_of_the_real_twin_as_a_rise():
    """The twin's forecast returns towards its slow level, so after a rise it points down; the
    ward's arrow must still say the value rose (a trend arrow read the other way round would
    tell a nurse a rising heart rate is falling)."""
    from streams.worker.states import twin_states
    from twin import bank
    from twin.model import ModelParams

    params = ModelParams()
    s = bank.new_states(3, params)
    t0 = 1.7e9
    hr = {"rising": [80.0] * 60 + [80.0 + 2 * i for i in range(1, 16)],
          "falling": [110.0] * 60 + [110.0 - 2 * i for i in range(1, 16)],
          "steady": [80.0] * 75}
    for row, values in enumerate(hr.values()):
        n = len(values)
        z = np.full((n, len(params.measurement_sd)), np.nan)
        z[:, 0] = values
        bank.step(s, bank.Readings(np.full(n, row), t0 + 60.0 * np.arange(n), z, np.ones(n),
                                   np.ones(n), np.full(n, row + 1, np.uint64),
                                   np.arange(1, n + 1)), params)
    now = np.full(3, t0 + 60.0 * 74)
    out = bank.outputs(s, now, params)
    states = twin_states(list(hr), s, out, np.arange(3))
    rows = ward.rows([ward.Bed(st.patient_id, "A", str(i), st, [], 0.0)
                      for i, st in enumerate(states)])
    got = {pid: next(r["v_hr"][-1] for r in rows if pid in r["patient"]) for pid in hr}
    assert got == {"rising": "↑", "falling": "↓", "steady": "→"}, rows


def test_history_hands_back_values_as_recorded_not_their_single_precision_neighbours():
    """The ring keeps float32 (half the dashboard's memory per patient); what the pages plot and
    hover is the value as recorded, 36.7 and not 36.70000076293945."""
    h = History(points=3)
    h.add(twin_state(estimate={"temp": 36.7, "hr": 72.35}, sd={"temp": 0.05},
                     raw={"temp": 36.7, "spo2": 97.0}), 1_000_000.0)
    s = h.series()
    t, hr, spo2 = NAMES.index("temp"), NAMES.index("hr"), NAMES.index("spo2")
    assert s["estimate"].dtype == np.float64
    assert s["estimate"][0, t] == 36.7 and s["raw"][0, t] == 36.7 and s["sd"][0, t] == 0.05
    assert s["estimate"][0, hr] == 72.35 and s["raw"][0, spo2] == 97.0
    assert np.isnan(s["raw"][0, hr])
    assert h.estimate.dtype == np.float32
