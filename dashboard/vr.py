"""`/vr`: the ward as a WebXR scene (A-Frame), for a headset's browser or a desktop browser.

Each patient is a bed with a floating panel of vitals coloured by the NEWS2 response band, a
heart that beats at the twin's heart rate and a chest that breathes at its respiration rate, and
a red beacon over the bed while an alert is open (a soft tone for new high-priority alerts once
the user turns sound on). The page polls `/vr/state.json` every second (same session as the
dashboard, same ward restrictions).

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

from flask import Blueprint, Response, jsonify, request, send_file

from dashboard import login, ward
from dashboard.context import Context
from streams.errors import PatientTwinError

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


def scene_state(beds: list[ward.Bed]) -> list[dict[str, Any]]:
    """What the scene shows per bed (positions in metres, centred on the ward)."""
    pos = ward.positions(beds)
    if pos:
        cx = (min(p[0] for p in pos.values()) + max(p[0] for p in pos.values())) / 2
    else:
        cx = 0.0
    out = []
    for b in beds:
        est = b.state.estimate if b.state else {}
        out.append({
            "patient_id": b.patient_id, "ward": b.ward, "bed": b.bed,
            "x": round(pos[b.patient_id][0] - cx, 2), "z": round(-pos[b.patient_id][1], 2),
            "colour": ward.BAND_COLOURS.get("unknown" if b.stale else b.band, "#ccc"),
            "band": b.band, "stale": b.stale, "band_label": ward.band_label(b.shown_band),
            "news2": b.state.news2 if b.state else None,
            "vitals": {ch: est.get(ch) for ch in ("hr", "rr", "spo2", "sbp", "temp")},
            "alerts": [{"kind": a.kind, "priority": a.priority, "alert_id": a.alert_id}
                       for a in b.alerts],
        })
    return out


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

    @bp.get("/vr/<any(components, ward):name>.js")
    def code(name: str) -> Response:
        return send_file(Path(__file__).parent / "vr" / f"{name}.js", mimetype="text/javascript")

    @bp.get("/vr/state.json")
    def state() -> Response:
        beds = c.visible_beds()
        return jsonify({"ts": datetime.now(UTC).isoformat(), "beds": scene_state(beds)})

    return bp
