"""The ward in 3D, `/ward3d`: a column per bed (dashboard.ward.figure_3d), refreshed every
2 × `WARD_REFRESH_MS`; a click on a bed opens its patient."""

from __future__ import annotations

from typing import Any

import dash
from dash import Dash, Input, Output, dcc, html
from flask import request

from dashboard import login, ward
from dashboard.context import Context
from dashboard.pages import GL_CONFIG
from dashboard.pages.ward import WARD_REFRESH_MS


def layout(c: Context, **_: Any) -> html.Div:
    u = login.user()
    if u is not None:
        c.audit.record(u.name, "view_ward", role=u.role,
                       detail="3D, wards " + ",".join(u.wards), remote_addr=request.remote_addr)
    return html.Div([
        html.H2("Ward in 3D"),
        html.P("Each column is a bed: height NEWS2, colour the response band, a diamond marks "
               "open alerts, blue-grey means stale or no data. Click a bed to open the patient."),
        dcc.Graph(id="ward3d-graph", figure=ward.figure_3d([]), config=GL_CONFIG),
        dcc.Location(id="ward3d-nav", refresh="callback-nav"),
        dcc.Interval(id="ward3d-refresh", interval=2 * WARD_REFRESH_MS),
    ])


def register(app: Dash, c: Context) -> None:
    """The page at `/ward3d` and its callbacks: the figure's refresh and opening a bed."""
    dash.register_page("ward3d", path="/ward3d", layout=lambda **kw: layout(c, **kw),
                       name="3D ward")

    @app.callback(Output("ward3d-graph", "figure"), Input("ward3d-refresh", "n_intervals"))
    def refresh(_n: int | None) -> Any:
        return ward.figure_3d(c.visible_beds())

    @app.callback(Output("ward3d-nav", "href"), Input("ward3d-graph", "clickData"),
                  prevent_initial_call=True)
    def open_bed(click: dict[str, Any] | None) -> str:
        points = (click or {}).get("points") or []
        pid = points[0].get("customdata") if points else None
        return f"/patient/{pid}" if pid else dash.no_update
