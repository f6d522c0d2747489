"""The ward overview, `/`: the user's patients by risk in a table refreshed every
`WARD_REFRESH_MS` (one computation shared by every viewer of the same wards, `WardCache`), and
the form that admits a patient to one of the user's wards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import dash
from dash import Dash, Input, Output, State, dash_table, dcc, html
from flask import request, session

from dashboard import lite, login, ward
from dashboard.context import Context
from dashboard.presence import Refused
from streams.registry import RegistryError, change

# Live updates reach the screen within 2 s: the worker's batch window (0.1 s), then the patient
# page is pushed each new state (dashboard/live.py; it polls when it cannot get the push) and the
# ward overview (every patient's row, 158 KB for 500) polls once a second: at twice a second 50
# viewers of 500 patients pushed its p95 from 46 ms to 1.9 s on 2 cores (bench dashboard).
WARD_REFRESH_MS = 1000


def layout(c: Context, **_: Any) -> html.Div:
    u = login.user()
    disabled = u is None or not u.can_act
    if u is not None:
        c.audit.record(u.name, "view_ward", role=u.role, detail="wards " + ",".join(u.wards),
                       remote_addr=request.remote_addr)
    return html.Div([
        html.H2("Ward overview"),
        html.Details([
            html.Summary("Admit a patient"),
            html.Div([
                dcc.Input(id="admit-patient", placeholder="patient id", disabled=disabled),
                dcc.Input(id="admit-ward", placeholder="ward", disabled=disabled),
                dcc.Input(id="admit-bed", placeholder="bed", disabled=disabled),
                dcc.Input(id="admit-device", placeholder="device id (optional)",
                          disabled=disabled),
                html.Button("Admit", id="admit-submit", disabled=disabled),
                html.Span(id="admit-status", role="status"),
            ], className="form"),
        ]),
        html.Section([
            html.H3("Who is here", id="presence-heading"),
            html.Ul(id="presence-here", **{"aria-labelledby": "presence-heading"}),
            html.Div([
                html.Label("Call colleagues to the bed of patient", htmlFor="call-patient"),
                dcc.Input(id="call-patient", placeholder="patient id", debounce=False),
                html.Button("Call colleagues", id="call-submit"),
            ], className="form"),
            html.Div(id="call-status", role="status", **{"aria-live": "assertive"}),
        ], className="presence"),
        html.Div(id="ward-summary"),
        dash_table.DataTable(id="ward-table", columns=ward.COLUMNS, data=[],
                             markdown_options={"link_target": "_self"},
                             page_action="native", page_size=100, sort_action="none",
                             style_data_conditional=ward.STYLES, style_as_list_view=True,
                             # a tablet scrolls the table, not the page
                             style_table={"overflowX": "auto"},
                             style_cell={"textAlign": "left", "padding": "4px 8px",
                                         "fontFamily": "system-ui, sans-serif"},
                             style_header={"fontWeight": "bold", "whiteSpace": "normal"}),
        dcc.Interval(id="ward-refresh", interval=lite.refresh_ms(WARD_REFRESH_MS)),
    ])


def view(beds: list[ward.Bed], connected: bool) -> tuple[list[dict[str, Any]], str]:
    """The table's rows and the summary line above it."""
    with_data = sum(b.state is not None for b in beds)
    stale = sum(b.stale for b in beds)
    alerts = sum(len(b.alerts) for b in beds)
    summary = (f"{len(beds)} patients · {with_data} with data · {stale} stale or no data · "
               f"{alerts} open alerts" if connected or beds else "waiting for Kafka…")
    return ward.rows(beds), summary


def presence_items(doc: dict[str, Any]) -> list[html.Li]:
    """Who is here (dashboard/presence.py) in words: each person, where they are, which
    patient they look at (a link to that patient), and the wards' open calls."""
    items = []
    for p in doc["people"]:
        where = "in the 3D ward" if p["device"] == "vr" else "on the ward page"
        parts: list[Any] = [f"{'you' if p['me'] else p['user']} ({p['role']}, {where}, "
                            f"ward {p['ward']})"]
        if p["looking"]:
            parts += [" looking at ", dcc.Link(p["looking"], href=f"/patient/{p['looking']}")]
        items.append(html.Li(parts, className="presence-person",
                             **{"data-user": p["user"]}))
    for cl in doc["calls"]:
        items.append(html.Li([f"{cl['by']} ({cl['role']}) called colleagues to ",
                              dcc.Link(cl["patient_id"], href=f"/patient/{cl['patient_id']}"),
                              f" (ward {cl['ward']}) at "
                              f"{time.strftime('%H:%M:%S', time.localtime(cl['ts']))}"],
                             className="presence-call"))
    return items or [html.Li("nobody else yet", className="presence-none")]


class WardCache:
    """The ward view per set of wards, recomputed at most every `ttl_s` (live updates reach the
    screen within WARD_REFRESH_MS + ttl_s)."""

    def __init__(self, ttl_s: float = 0.25) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._items: dict[tuple[str, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
            value = compute()  # under the lock: concurrent viewers wait for one computation
            self._items[key] = (now, value)
            return value


def register(app: Dash, c: Context) -> None:
    """The page at `/` and its callbacks: the table's refresh and admitting a patient."""
    dash.register_page("ward", path="/", layout=lambda **kw: layout(c, **kw), name="Ward")
    cache = WardCache()

    @app.callback(Output("ward-table", "data"), Output("ward-summary", "children"),
                  Input("ward-refresh", "n_intervals"))
    def refresh(_n: int | None) -> tuple[list[dict[str, Any]], str]:
        # every viewer of the same wards within the cache's ttl shares one computation
        return cache.get(c.user().wards, lambda: view(c.visible_beds(), c.feed.connected))

    @app.callback(Output("presence-here", "children"), Input("ward-refresh", "n_intervals"))
    def here(_n: int | None) -> list[html.Li]:
        # on the ward page of one ward, this user is in that ward's presence (desktop)
        u, sid, p = c.user(), str(session.get("sid") or ""), c.presence
        assert p is not None
        own = [w for w in u.wards if w != "*"]
        if len(own) == 1 and sid:
            try:
                p.update(u, sid, None, "desktop", ward=own[0])
            except Refused:
                pass  # over the rate (several tabs of one session): shown next time
        return presence_items(p.snapshot(u, sid or None))

    @app.callback(Output("call-status", "children"), Input("call-submit", "n_clicks"),
                  Input("call-patient", "n_submit"), State("call-patient", "value"),
                  prevent_initial_call=True)
    def call(n: int | None, entered: int | None, pid: str | None) -> str:
        if not n and not entered:
            raise dash.exceptions.PreventUpdate
        u, sid, p = c.user(), str(session.get("sid") or ""), c.presence
        assert p is not None
        pid = (pid or "").strip()
        if not pid:
            return "Give the patient id of the bed."
        try:
            made = p.call(u, sid, pid)
        except Refused as why:
            return f"Not called: {why.message}."
        return f"You called your colleagues of ward {made.ward} to {made.patient_id}."

    @app.callback(Output("admit-status", "children"), Input("admit-submit", "n_clicks"),
                  State("admit-patient", "value"), State("admit-ward", "value"),
                  State("admit-bed", "value"), State("admit-device", "value"),
                  prevent_initial_call=True)
    def admit(n: int | None, pid: str | None, ward_: str | None, bed: str | None,
              device: str | None) -> str:
        if not n:
            raise dash.exceptions.PreventUpdate
        u = c.user()
        pid, ward_ = (pid or "").strip(), (ward_ or "").strip()
        if not u.can_act:
            return "Your role cannot admit patients."
        if not pid or not ward_:
            return "Give the patient id and the ward."
        if not u.sees_ward(ward_):
            return f"Ward {ward_} is not one of yours."
        fields = {"ward": ward_, "bed": (bed or "").strip() or None,
                  "devices": [device.strip()] if (device or "").strip() else None}
        try:
            return c.register(u, change(c.feed.registry.get(pid), pid, "admit", u.name,
                                        **fields), fields)
        except RegistryError as exc:
            return str(exc)
