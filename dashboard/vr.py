"""`/vr`: the ward as a WebXR scene (A-Frame), for a headset's browser or a desktop browser.

Each patient is a bed with a floating panel coloured by the NEWS2 response band (vitals with
their uncertainty, the NEWS2 breakdown, open alerts, sparklines of the last hour and the
forecast), a heart that beats at the twin's heart rate and a chest that breathes at its
respiration rate, and a red beacon over the bed while an alert is open (alarm sounds coded by
priority, IEC 60601-1-8, once the user turns sound on). Beds stand in risk order from the
entrance. The page polls `/vr/state.json` every second (same session as the dashboard, same
ward restrictions) and acknowledges or escalates through `/vr/alerts/<id>/<verb>` with the
patient page's checks and audit. Who else is in the ward: dashboard/presence.py.

A-Frame comes from the npm registry (`npm pack aframe@AFRAME_VERSION`, integrity pinned below),
fetched once by `patient-twin fetch-assets` or by the dashboard's first start, and served by the
dashboard itself: hospital networks are often offline, so nothing is loaded from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from flask import Blueprint, Response, jsonify, request, send_file

from dashboard import login, ward
from dashboard.context import Context
from streams.errors import PatientTwinError
from streams.messages import AlertAction
from twin.channels import NAMES
from twin.policy import split_alert_id

log = logging.getLogger("patient_twin.vr")

AFRAME_VERSION = "1.8.0"
AFRAME_INTEGRITY = ("sha512-z+6TfUCEPQ2plWMyL6CAFS6+b6XWp6t8zrU9ZNdz4qBwks98tX/lhGrfUX0QFuwPZ7BNu"
                    "sB3u5o+q6q/P2CkKA==")
VENDOR_DIR = Path(__file__).parent / "vr" / "vendor"
AFRAME_FILE = VENDOR_DIR / f"aframe-v{AFRAME_VERSION}.min.js"


class AssetError(PatientTwinError):
    """The VR front-end package could not be fetched."""


def fetch_npm_file(package: str, version: str, integrity: str, member: str, dest: Path,
                   npm: str | None = None, timeout: float = 180.0) -> Path:
    """One file of an npm package (`npm pack PACKAGE@VERSION`, the tarball checked against its
    pinned sha512 `integrity`), written to `dest` once; return `dest`. Also the tests' axe-core."""
    if dest.exists():
        return dest
    npm = npm or shutil.which("npm")
    if npm is None:
        raise AssetError("npm is not installed: install Node.js/npm (Debian: apt-get install "
                         "npm) and run `patient-twin fetch-assets`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([npm, "pack", f"{package}@{version}", "--pack-destination", tmp,
                            "--silent"], check=True, capture_output=True, timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            err = getattr(exc, "stderr", b"") or b""
            raise AssetError(f"npm pack {package}@{version} failed: "
                             f"{err.decode(errors='replace').strip()[:200] or exc}") from None
        tgz = Path(tmp) / f"{package}-{version}.tgz"
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != integrity:
            raise AssetError(f"{package}-{version}.tgz does not match its pinned integrity")
        with tarfile.open(tgz) as tar:
            data = tar.extractfile(member)
            if data is None:
                raise AssetError(f"{member} missing from the package")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_suffix(f".{os.getpid()}.part")  # concurrent first starts
            part.write_bytes(data.read())
            part.replace(dest)
    return dest


def fetch_aframe(npm: str | None = None, timeout: float = 180.0) -> Path:
    """Fetch A-Frame's browser bundle from the npm registry once; return its path."""
    return fetch_npm_file("aframe", AFRAME_VERSION, AFRAME_INTEGRITY,
                          f"package/dist/aframe-v{AFRAME_VERSION}.min.js", AFRAME_FILE,
                          npm=npm, timeout=timeout)


def positions(beds: list[ward.Bed]) -> dict[str, tuple[float, float]]:
    """Floor positions of the VR ward: the wards side by side as in `ward.positions` (the same
    frame, so presence's ward origins hold), but each ward's beds in risk order, not by bed
    number: the sickest in the first row, nearest the entrance where a clinician comes in (the
    rig starts at z = 6 m, looking along -z), the next ones behind. `beds` is risk-ordered."""
    wards = sorted({b.ward or "—" for b in beds})
    pos = {}
    for w_i, w in enumerate(wards):
        for j, b in enumerate(b for b in beds if (b.ward or "—") == w):
            pos[b.patient_id] = (w_i * 8.0 + (j % 2) * 4.0, (j // 2) * 2.5)
    return pos


def highlighted(b: ward.Bed) -> bool:
    """A bed that stands out from the entrance: a medium or high NEWS2 response band, stale or
    missing data (unknown is not healthy), or an open high-priority alert."""
    return b.shown_band in ("medium", "high", "unknown") or any(
        a.priority == "high" for a in b.alerts)


def scene_state(beds: list[ward.Bed]) -> list[dict[str, Any]]:
    """What the scene shows per bed (positions in metres, centred on the wards), in risk order
    (`rank` 1 = the sickest of the user's wards)."""
    pos = positions(beds)
    if pos:
        cx = (min(p[0] for p in pos.values()) + max(p[0] for p in pos.values())) / 2
    else:
        cx = 0.0
    out = []
    for rank, b in enumerate(beds, start=1):
        est = b.state.estimate if b.state else {}
        out.append({
            "patient_id": b.patient_id, "ward": b.ward, "bed": b.bed,
            "x": round(pos[b.patient_id][0] - cx, 2), "z": round(-pos[b.patient_id][1], 2),
            "colour": ward.BAND_COLOURS.get("unknown" if b.stale else b.band, "#ccc"),
            "band": b.band, "stale": b.stale, "band_label": ward.band_label(b.shown_band),
            "news2": b.state.news2 if b.state else None,
            "vitals": {ch: est.get(ch) for ch in VITALS},
            # the twin's uncertainty (1 SD) beside each value, and what makes up its NEWS2
            "sd": {ch: (b.state.sd.get(ch) if b.state else None) for ch in VITALS},
            "news2_parts": dict(b.state.news2_components) if b.state else {},
            "alerts": [{"kind": a.kind, "priority": a.priority, "alert_id": a.alert_id,
                        "state": a.state} for a in b.alerts],
            "rank": rank, "highlight": highlighted(b),
        })
    return out


VITALS = ("hr", "rr", "spo2", "sbp", "temp")
TREND_CHANNELS = ("hr", "rr", "spo2", "sbp")  # the bedside sparklines
TREND_MINUTES = 60  # the sparklines' past; the twin's forecast (up to 60 min) follows it
TREND_POINTS = 30  # one point per 2 min: a sparkline 0.8 m wide shows no finer


def trend(history: dict[str, Any] | None, state: Any, now_s: float) -> dict[str, Any]:
    """One bed's sparklines: per channel of TREND_CHANNELS the estimates of the last
    TREND_MINUTES (`past`: [minutes before now, value], at most TREND_POINTS) and the twin's
    forecast (`ahead`: [minutes after now, estimate, low90, high90])."""
    out: dict[str, Any] = {}
    if history is not None and len(history["ts"]):
        ts = history["ts"]
        keep = ts >= now_s - TREND_MINUTES * 60
        idx = [i for i in range(len(ts)) if keep[i]]
        step = max(1, len(idx) // TREND_POINTS)
        idx = idx[::-1][::step][::-1]  # the latest sample always in
        for ch in TREND_CHANNELS:
            c = NAMES.index(ch)
            out[ch] = {"past": [[round((ts[i] - now_s) / 60, 1), round(float(v), 1)]
                                for i in idx if (v := history["estimate"][i, c]) == v],
                       "ahead": []}
    if state is not None:
        for ch in TREND_CHANNELS:
            out.setdefault(ch, {"past": [], "ahead": []})["ahead"] = [
                [f.minutes, f.estimate.get(ch), f.low90.get(ch), f.high90.get(ch)]
                for f in state.forecasts if f.estimate.get(ch) is not None]
    return out


def ward_origins(beds: list[ward.Bed]) -> dict[str, dict[str, float]]:
    """Where each ward's frame begins in this scene (its first bed slot, metres): presence
    poses are sent and shown in the ward's frame, so a clinician who sees one ward and an admin
    who sees them all side by side agree on where a colleague stands."""
    pos = positions(beds)
    if not pos:
        return {}
    cx = (min(p[0] for p in pos.values()) + max(p[0] for p in pos.values())) / 2
    wards = sorted({b.ward or "—" for b in beds})
    return {w: {"x": round(i * 8.0 - cx, 2), "z": 0.0} for i, w in enumerate(wards) if w != "—"}


def blueprint(c: Context) -> Blueprint:
    """`/vr`, its A-Frame bundle and `/vr/state.json`."""
    bp = Blueprint("vr", __name__)
    page_html = (Path(__file__).parent / "vr" / "index.html").read_text().replace(
        "{{AFRAME}}", f"/vr/aframe-v{AFRAME_VERSION}.min.js")
    if c.settings.training:
        page_html = page_html.replace('<div id="hud">', '<div id="hud"><strong>TRAINING</strong>'
                                      ' (simulated patients) · ', 1)

    @bp.get("/vr")
    def page() -> Response:
        u = login.user()
        if u is not None:
            c.audit.record(u.name, "view_vr", role=u.role, remote_addr=request.remote_addr)
        if not AFRAME_FILE.exists():
            return Response(
                "<p>The VR scene needs A-Frame, which is not installed yet: run "
                "<code>patient-twin fetch-assets</code> (needs npm and the npm registry once) "
                "and reload.</p>", status=503, mimetype="text/html")
        return Response(page_html, mimetype="text/html")

    @bp.get(f"/vr/aframe-v{AFRAME_VERSION}.min.js")
    def aframe() -> Response:
        return send_file(AFRAME_FILE, mimetype="text/javascript", max_age=86400)

    @bp.get("/vr/<any(components, ward, presence):name>.js")
    def code(name: str) -> Response:
        return send_file(Path(__file__).parent / "vr" / f"{name}.js", mimetype="text/javascript")

    @bp.post("/vr/alerts/<alert_id>/<any(acknowledge, escalate):verb>")
    def act(alert_id: str, verb: str) -> tuple[Response, int]:
        """Acknowledge or escalate an alert from the VR scene: the patient page's checks (a
        clinician or admin, a patient of her wards, an open alert of that patient) and audit
        record, then the same action to the worker. JSON only: a form of another site cannot
        send it (see dashboard/presence.py)."""
        u = login.user()
        if u is None:
            return jsonify({"error": "log in first"}), 401
        if request.mimetype != "application/json":
            return jsonify({"error": "send application/json"}), 415
        body = request.get_json(silent=True)
        comment = body.get("comment") if isinstance(body, dict) else None
        if comment is not None and not (isinstance(comment, str) and len(comment) <= 500):
            return jsonify({"error": "comment must be text of at most 500 characters"}), 400
        pid = split_alert_id(alert_id)[0]

        def refuse(status: int, why: str) -> tuple[Response, int]:
            c.audit.record(u.name, "denied", role=u.role, patient_id=pid, alert_id=alert_id,
                           detail=f"vr {verb}: {why}", remote_addr=request.remote_addr)
            return jsonify({"error": why}), status

        if not u.can_act or not c.may_see(u, pid):
            return refuse(403, f"your role or wards do not allow you to {verb} this alert")
        if all(a.alert_id != alert_id for a in c.feed.open_alerts(pid)):
            return refuse(409, "not an open alert of this patient")
        action = AlertAction(action=verb, patient_id=pid, by=u.name,  # type: ignore[arg-type]
                             ts=datetime.now(UTC), alert_id=alert_id, comment=comment)
        # the audit record is safe before the change is requested
        c.audit.record(u.name, verb, role=u.role, patient_id=pid, alert_id=alert_id,
                       detail=f"from VR{': ' + comment if comment else ''}",
                       remote_addr=request.remote_addr, wait=True)
        c.actions.put(pid, msgspec.json.encode(action))
        return jsonify({"accepted": True, "alert_id": alert_id, "by": u.name}), 202

    @bp.get("/vr/state.json")
    def state() -> Response:
        beds = c.visible_beds()
        scene = scene_state(beds)
        if request.args.get("trends") == "1":  # the page asks every 10 s: they change slowly
            now_s = datetime.now(UTC).timestamp()
            for b, item in zip(beds, scene, strict=True):
                item["trend"] = trend(c.feed.history(b.patient_id), b.state, now_s)
        return jsonify({"ts": datetime.now(UTC).isoformat(), "beds": scene,
                        "wards": ward_origins(beds)})

    return bp
