"""The ward in 3D, `/ward3d`: a column per bed (dashboard.ward.figure_3d), refreshed every
2 × `WARD_REFRESH_MS`; a click on a bed opens its patient. Under the figure the same beds as a
list of links by risk, the way to a bed by keyboard and without a 3D view; in low-bandwidth
mode (dashboard/lite.py) the list alone, refreshed every 5 s."""

from __future__ import annotations

from typing import Any

import dash
from dash import Dash, Input, Output, dcc, html
from flask import request

from dashboard import lite, login, ward
from dashboard.context import Context
from dashboard.pages import GL_CONFIG
from dashboard.pages.ward import WARD_REFRESH_MS


def bed_list(beds: list[ward.Bed]) -> list[Any]:
    """The beds by risk, each a link to the patient with its NEWS2 band in words and shape:
    what the 3D ward and the VR ward show, for a keyboard, a screen reader or a weak link."""
    if not beds:
        return [html.P("No patients on your wards.")]
    return [html.P(["Highest risk: ", html.Strong(ward.summary_line(beds[0]))],
                   id="ward3d-worst"),
            html.Ol([html.Li(dcc.Link(ward.summary_line(b), href=f"/patient/{b.patient_id}"),
                             className=f"band-{b.shown_band}", **{"data-patient-id":
                                                                   b.patient_id})
                     for b in beds], id="ward3d-beds", className="bed-list")]


def layout(c: Context, **_: Any) -> html.Div:
    u = login.user()
    if u is not None:
        c.audit.record(u.name, "view_ward", role=u.role,
                       detail="3D, wards " + ",".join(u.wards), remote_addr=request.remote_addr)
    refresh = dcc.Interval(id="ward3d-refresh", interval=lite.refresh_ms(2 * WARD_REFRESH_MS))
    if lite.on():
        return html.Div([
            html.H2("Beds by risk"),
            html.P("Low-bandwidth mode: the 3D ward as a list, highest risk first."),
            html.Div(id="ward3d-list"), refresh])
    return html.Div([
        html.H2("Ward in 3D"),
        html.P("Each column is a bed: height NEWS2 (0 to 20), colour and the shape on top the "
               "response band (○ none, ● low, ■ low-medium, ◆ medium, ✖ high, □ stale or no "
               "data), a red cross marks open alerts; the highest-risk bed is labelled. Click "
               "a bed, or use the list under the figure, to open the patient."),
        dcc.Graph(id="ward3d-graph", figure=ward.figure_3d([]), config=GL_CONFIG),
        dcc.Location(id="ward3d-nav", refresh="callback-nav"),
        html.H3("Beds by risk"),
        html.Div(id="ward3d-list"),
        refresh,
    ])


def register(app: Dash, c: Context) -> None:
    """The page at `/ward3d` and its callbacks: the figure's and list's refresh, opening a bed."""
    dash.register_page("ward3d", path="/ward3d", layout=lambda **kw: layout(c, **kw),
                       name="3D ward")

    @app.callback(Output("ward3d-graph", "figure"), Input("ward3d-refresh", "n_intervals"))
    def refresh(_n: int | None) -> Any:
        return ward.figure_3d(c.visible_beds())

    @app.callback(Output("ward3d-list", "children"), Input("ward3d-refresh", "n_intervals"))
    def refresh_list(_n: int | None) -> Any:
        return bed_list(c.visible_beds())

    @app.callback(Output("ward3d-nav", "href"), Input("ward3d-graph", "clickData"),
                  prevent_initial_call=True)
    def open_bed(click: dict[str, Any] | None) -> str:
        points = (click or {}).get("points") or []
        pid = points[0].get("customdata") if points else None
        return f"/patient/{pid}" if pid else dash.no_update
