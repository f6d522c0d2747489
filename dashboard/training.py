"""The training session's debrief in the dashboard: `/debrief` (a page) and `/debrief.json`.

Only on a training ward's dashboard (`TRAINING=true`, `patient-twin train`); elsewhere both are
404. Computed at each request from the ward's alerts and audit trail (`streams.debrief`), so an
instructor can open it during the session as well as after. Reading it reads the audit trail:
that is recorded (`view_audit`).
"""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from dashboard import login
from dashboard.auth import UserStore
from dashboard.context import Context


def _cell(v: Any) -> str:
    return "—" if v is None else html.escape(str(v))


def page(result: dict[str, Any]) -> str:
    """The debrief as an accessible HTML page (tables with headers, no script)."""
    sm = result["summary"]
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in (
            "patient_id", "kind", "priority", "news2_max", "guidance", "recognised_by",
            "time_to_recognise_s", "escalated_by", "time_to_escalate_s")) +
        f"<td>{'yes' if r['met_guidance'] else 'NO'}</td>"
        f"<td>{'MISSED' if r['missed'] else ''}</td></tr>" for r in result["responses"])
    head = "".join(f'<th scope="col">{h}</th>' for h in (
        "patient", "alert", "priority", "NEWS2 max", "guidance (RCP 2017)", "recognised by",
        "time to recognise (s)", "escalated by", "time to escalate (s)", "met guidance",
        "missed"))
    summary = "".join(f"<li>{html.escape(k.replace('_', ' '))}: {_cell(v)}</li>"
                      for k, v in sm.items())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>patient-twin · '
            f'training debrief</title><link rel="stylesheet" href="/assets/style.css"></head>'
            f'<body><div class="training-banner" role="status">TRAINING debrief</div><main>'
            f'<h1>Training debrief</h1><p>{html.escape(result["guidance"])}. Times are seconds '
            f'after the alert was raised; only the trainees\' actions count.</p>'
            f'<h2>Summary</h2><ul>{summary}</ul><h2>Each clinical alert</h2>'
            f'<table class="debrief"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f'</table><p><a href="/debrief.json">JSON</a> · <a href="/">Ward</a></p></main>'
            f'</body></html>')


def blueprint(c: Context, users: UserStore) -> Blueprint:
    """`/debrief` and `/debrief.json` (404 unless this is a training ward's dashboard). The
    trainees are the session's clinicians: the instructor's (admin) actions do not count."""
    bp = Blueprint("training", __name__)

    def result() -> dict[str, Any]:
        from streams.debrief import read

        if not c.settings.training:
            abort(404)
        u = login.user()
        c.audit.record(u.name if u else "?", "view_audit", role=u.role if u else None,
                       detail="training debrief", remote_addr=request.remote_addr, wait=True)
        trainees = {x.name for x in users.users() if x.role != "admin"}
        return read(c.settings, trainees)

    @bp.get("/debrief")
    def debrief_page() -> Response:
        return Response(page(result()), mimetype="text/html")

    @bp.get("/debrief.json")
    def debrief_json() -> Response:
        return jsonify(result())

    return bp
