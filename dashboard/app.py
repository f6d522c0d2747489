"""The Dash app: `create_app(settings)` builds it around its own Kafka feed; `serve` runs it.

Pages: `/` ward overview, `/ward3d` the ward in 3D, `/patient/<id>` the patient's twin, `/vr`
the WebXR ward (dashboard/vr.py), `/api/*` the subscribers' API (dashboard/api.py). Every page
needs a logged-in user (dashboard/login.py); what a user sees is limited to their wards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dash
import msgspec
from dash import ALL, Dash, Input, Output, State, ctx, dash_table, dcc, html
from flask import request

from dashboard import api, body, live, login, patient, vr, ward
from dashboard.audit import AuditLog
from dashboard.auth import User, UserStore
from dashboard.feed import TwinFeed
from streams.config import Settings
from streams.errors import ConfigError, InvalidMessage
from streams.follow import TopicWriter
from streams.messages import OBSERVATION_SCHEMA, AlertAction, decode_observation
from streams.registry import RegistryError, RegistryWriter, change
from streams.webhooks import SubscriptionView
from twin.alerts import KINDS

log = logging.getLogger("patient_twin.dashboard")

# Live updates reach the screen within 2 s: the worker's batch window (0.1 s), then the patient
# page is pushed each new state (dashboard/live.py; it polls when it cannot get the push) and the
# ward overview (every patient's row, 158 KB for 500) polls once a second: at twice a second 50
# viewers of 500 patients pushed its p95 from 46 ms to 1.9 s on 2 cores (bench dashboard).
WARD_REFRESH_MS = 1000
ANIMATE_MS = 120
# plotly.js draws 3D scenes at twice the pixel ratio by default (four times the pixels) whatever
# the display; at 1 a workstation without a GPU draws the animated body a quarter as hard, which
# is what kept values from reaching its screen in time (docs/performance.md).
GL_CONFIG = {"displaylogo": False, "plotGlPixelRatio": 1}


def _nav() -> html.Nav:
    return html.Nav([dcc.Link("Ward", href="/"), " · ", dcc.Link("3D ward", href="/ward3d"),
                     " · ", html.A("VR ward", href="/vr"), " · ",
                     html.Span(id="whoami"), " · ", html.A("Log out", href="/logout")],
                    className="nav")


def ward_layout(**_: Any) -> html.Div:
    u = login.user()
    disabled = u is None or not u.can_act
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
        html.Div(id="ward-summary"),
        dash_table.DataTable(id="ward-table", columns=ward.COLUMNS, data=[],
                             markdown_options={"link_target": "_self"},
                             page_action="native", page_size=100, sort_action="none",
                             style_data_conditional=ward.STYLES, style_as_list_view=True,
                             style_cell={"textAlign": "left", "padding": "4px 8px",
                                         "fontFamily": "system-ui, sans-serif"},
                             style_header={"fontWeight": "bold", "whiteSpace": "normal"}),
        dcc.Interval(id="ward-refresh", interval=WARD_REFRESH_MS),
    ])


def ward3d_layout(**_: Any) -> html.Div:
    return html.Div([
        html.H2("Ward in 3D"),
        html.P("Each column is a bed: height NEWS2, colour the response band, a diamond marks "
               "open alerts, blue-grey means stale or no data. Click a bed to open the patient."),
        dcc.Graph(id="ward3d-graph", figure=ward.figure_3d([]), config=GL_CONFIG),
        dcc.Location(id="ward3d-nav", refresh="callback-nav"),
        dcc.Interval(id="ward3d-refresh", interval=2 * WARD_REFRESH_MS),
    ])


class Context:
    """What the pages and callbacks share."""

    def __init__(self, settings: Settings, feed: TwinFeed, audit: AuditLog) -> None:
        self.settings = settings
        self.feed = feed
        self.audit = audit
        self.actions = TopicWriter(settings, settings.topic_alert_actions)
        self.registry_writer = RegistryWriter(settings, feed.registry)
        self.observations = TopicWriter(settings, settings.topic_observations)

    def close(self) -> None:
        for w in (self.actions, self.registry_writer, self.observations):
            w.close()

    def register(self, u: User, rec: Any, fields: dict[str, Any]) -> str:
        """Write a registry change (audited first) and show it at once in this replica."""
        self.audit.record(u.name, rec.event, role=u.role, patient_id=rec.patient_id,
                          detail=", ".join(f"{k}={v}" for k, v in fields.items()), wait=True)
        self.registry_writer.write(rec)
        return f"{rec.event} of {rec.patient_id} recorded by {u.name}."

    def user(self) -> User:
        u = login.user()
        if u is None:  # the guard in front of every route makes this unreachable
            raise PermissionError("not logged in")
        return u

    def may_see(self, u: User, patient_id: str) -> bool:
        rec = self.feed.registry.get(patient_id)
        ward_ = rec.ward if rec and rec.event != "discharge" else None
        return u.sees_ward(ward_)


def patient_layout(c: Context, patient_id: str | None = None, **_: Any) -> html.Div:
    u = c.user()
    if not patient_id or not c.may_see(u, patient_id):
        c.audit.record(u.name, "denied", role=u.role, patient_id=patient_id,
                       remote_addr=request.remote_addr)
        return html.Div([html.H2("Patient not found"),
                         html.P("No such patient on your wards."), dcc.Link("Ward", href="/")])
    c.audit.record(u.name, "view_patient", role=u.role, patient_id=patient_id,
                   remote_addr=request.remote_addr)
    rec = c.feed.registry.get(patient_id)
    disabled = not u.can_act
    return html.Div([
        dcc.Store(id="patient-id", data=patient_id),
        html.Div(id="patient-header"),
        html.Div([
            html.Div([dcc.Graph(id="body3d", config=GL_CONFIG),
                      html.Div(id="body-caption", className="body-caption"),
                      dcc.Store(id="body-anim"), dcc.Store(id="body-rates"),
                      dcc.Store(id="body-seen")],
                     className="col body-col"),
            html.Div([html.H3("NEWS2", id="news2"), html.Div(id="news2-breakdown"),
                      html.H3("Open alerts"), html.Div(id="patient-alerts"),
                      dcc.Store(id="patient-alerts-seen"),
                      html.Div(id="action-status", role="status")], className="col"),
        ], className="row"),
        html.Details([
            html.Summary("Observation, silence, SpO2 scale, transfer, discharge"),
            html.Div([
                html.H4("Silence alerts"),
                dcc.Dropdown(list(KINDS), id="silence-kind", placeholder="kind",
                             disabled=disabled),
                dcc.Input(id="silence-reason", placeholder="reason (required)",
                          disabled=disabled),
                dcc.Dropdown([{"label": f"{m} min", "value": m} for m in patient.SILENCE_MINUTES],
                             value=60, id="silence-minutes", clearable=False,
                             disabled=disabled),
                html.Button("Silence", id="silence-submit", disabled=disabled),
            ], className="form"),
            patient.observation_form(disabled),
            html.Div([
                html.H4("NEWS2 SpO2 scale (a clinical decision: recorded with your name)"),
                dcc.RadioItems([{"label": "Scale 1", "value": 1},
                                {"label": "Scale 2 (target 88-92 %, hypercapnic failure)",
                                 "value": 2}], value=rec.spo2_scale if rec else 1,
                               id="spo2-scale", inline=True),
                html.Button("Set scale", id="spo2-scale-submit", disabled=disabled),
            ], className="form"),
            html.Div([
                html.H4("Transfer or discharge"),
                dcc.Input(id="transfer-ward", placeholder="new ward", disabled=disabled),
                dcc.Input(id="transfer-bed", placeholder="bed", disabled=disabled),
                html.Button("Transfer", id="transfer-submit", disabled=disabled),
                html.Button("Discharge", id="discharge-submit", disabled=disabled),
            ], className="form"),
            html.Div([
                html.H4("Pair a device"),
                dcc.Input(id="pair-device", placeholder="device id", disabled=disabled),
                html.Button("Pair", id="pair-submit", disabled=disabled),
            ], className="form"),
        ]),
        html.H3("Trends"),
        dcc.Graph(id="trends", config={"displaylogo": False}),
        dcc.Store(id="patient-push"), dcc.Store(id="patient-live"),
        dcc.Interval(id="patient-refresh", interval=live.POLL_MS),
        dcc.Interval(id="trends-refresh", interval=5 * WARD_REFRESH_MS),
        dcc.Interval(id="animate", interval=ANIMATE_MS),
    ])


def create_app(settings: Settings, feed: TwinFeed | None = None,
               subscriptions: SubscriptionView | None = None,
               users: UserStore | None = None, audit: AuditLog | None = None,
               secure_cookies: bool = False) -> Dash:
    """The dashboard for these settings; `feed` and `subscriptions` default to started views of
    their Kafka topics, `users` to USERS_FILE."""
    if users is None:
        if settings.users_file is None:
            raise ConfigError("USERS_FILE is not set: the dashboard has no anonymous access; "
                              "create an account with `patient-twin users add NAME --role admin`"
                              " and set USERS_FILE to its file")
        users = UserStore(settings.users_file)
    started: list[Any] = []  # what this function started, stopped by `close`
    if feed is None:
        feed = TwinFeed(settings).start()
        started.append(feed)
    if subscriptions is None:
        subscriptions = SubscriptionView(settings, "patient-twin-dashboard-subscriptions").start()
        started.append(subscriptions)
    if audit is None:
        audit = AuditLog(settings)
        started.append(audit)
    c = Context(settings, feed, audit)
    app = Dash(__name__, use_pages=True, pages_folder="", title="patient-twin",
               suppress_callback_exceptions=True)
    dash.register_page("ward", path="/", layout=ward_layout, name="Ward")
    dash.register_page("ward3d", path="/ward3d", layout=ward3d_layout, name="3D ward")
    dash.register_page("patient", path_template="/patient/<patient_id>",
                       layout=lambda **kw: patient_layout(c, **kw), name="Patient")
    app.layout = html.Div([html.Header([html.H1("patient-twin"), _nav()]),
                           dash.page_container])
    app.feed = feed  # type: ignore[attr-defined]
    app.closers = [*started, c]  # type: ignore[attr-defined]
    login.install(app.server, settings, users, audit, secure_cookies)
    api_bp = api.blueprint(settings, feed, subscriptions)
    app.server.register_blueprint(api_bp)
    app.closers += list(api_bp.writers)  # type: ignore[attr-defined]
    app.server.register_blueprint(vr.blueprint(c))
    app.server.register_blueprint(live.blueprint(c))
    _callbacks(app, c)
    return app


def _ward_view(beds: list[ward.Bed], connected: bool) -> tuple[list[dict[str, Any]], str]:
    with_data = sum(b.state is not None for b in beds)
    stale = sum(b.stale for b in beds)
    alerts = sum(len(b.alerts) for b in beds)
    summary = (f"{len(beds)} patients · {with_data} with data · {stale} stale or no data · "
               f"{alerts} open alerts" if connected or beds else "waiting for Kafka…")
    return ward.rows(beds), summary


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


def _callbacks(app: Dash, c: Context) -> None:
    feed = c.feed

    @app.callback(Output("whoami", "children"), Input("whoami", "id"))
    def whoami(_: str) -> str:
        u = c.user()
        wards = "all wards" if "*" in u.wards else "wards " + ", ".join(u.wards)
        return f"{u.name} ({u.role}, {wards})"

    def visible_beds() -> list[ward.Bed]:
        states, _ = feed.snapshot()
        return ward.beds(c.user(), states, feed.registry.admitted(), feed.open_alerts(),
                         datetime.now(UTC))

    cache = WardCache()

    @app.callback(Output("ward-table", "data"), Output("ward-summary", "children"),
                  Input("ward-refresh", "n_intervals"))
    def refresh(_n: int | None) -> tuple[list[dict[str, Any]], str]:
        # every viewer of the same wards within the cache's ttl shares one computation
        return cache.get(c.user().wards, lambda: _ward_view(visible_beds(), feed.connected))

    @app.callback(Output("ward3d-graph", "figure"), Input("ward3d-refresh", "n_intervals"))
    def refresh3d(_n: int | None) -> Any:
        return ward.figure_3d(visible_beds())

    @app.callback(Output("ward3d-nav", "href"), Input("ward3d-graph", "clickData"),
                  prevent_initial_call=True)
    def open_bed(click: dict[str, Any] | None) -> str:
        points = (click or {}).get("points") or []
        pid = points[0].get("customdata") if points else None
        return f"/patient/{pid}" if pid else dash.no_update

    @app.callback(Output("patient-header", "children"), Output("news2-breakdown", "children"),
                  Output("body-caption", "children"), Output("body-rates", "data"),
                  Input("patient-refresh", "n_intervals"),
                  Input("patient-push", "data"), State("patient-id", "data"))
    def refresh_patient(_n: int | None, _push: int | None, pid: str) -> tuple[Any, ...]:
        u = c.user()
        if not c.may_see(u, pid):
            raise dash.exceptions.PreventUpdate
        st = feed.state(pid)
        return (patient.header(pid, feed.registry.get(pid), st), patient.news2_table(st),
                body.caption(st), body.rates(st))

    @app.callback(Output("body3d", "figure"), Output("body-anim", "data"),
                  Output("body-seen", "data"),
                  Input("patient-refresh", "n_intervals"),
                  Input("patient-push", "data"), State("patient-id", "data"),
                  State("body-seen", "data"))
    def refresh_body(_n: int | None, _push: int | None, pid: str,
                     seen: str | None) -> tuple[Any, ...]:
        # A callback of its own: the 3D body (tens of KB, re-rendered in WebGL) is sent only
        # when its colours change, and never holds up the values beside it.
        if not c.may_see(c.user(), pid):
            raise dash.exceptions.PreventUpdate
        st = feed.state(pid)
        sig = body.signature(st)
        if sig == seen:
            raise dash.exceptions.PreventUpdate
        fig, anim = body.figure(st)
        return fig, anim, sig

    @app.callback(Output("patient-alerts", "children"), Output("patient-alerts-seen", "data"),
                  Input("patient-refresh", "n_intervals"),
                  Input("patient-push", "data"), State("patient-id", "data"),
                  State("patient-alerts-seen", "data"))
    def refresh_alerts(_n: int | None, _push: int | None, pid: str,
                       seen: list[str] | None) -> tuple[Any, Any]:
        u = c.user()
        if not c.may_see(u, pid):
            raise dash.exceptions.PreventUpdate
        alerts = feed.open_alerts(pid)
        # re-render only when an alert changed, or a comment being typed would be wiped out
        sig = [f"{a['alert_id']}|{a.get('state')}|{a.get('priority')}|{a.get('by')}"
               for a in alerts]
        if sig == seen:
            raise dash.exceptions.PreventUpdate
        return patient.alert_rows(alerts, u.can_act), sig

    @app.callback(Output("trends", "figure"), Input("trends-refresh", "n_intervals"),
                  State("patient-id", "data"))
    def refresh_trends(_n: int | None, pid: str) -> Any:
        if not c.may_see(c.user(), pid):
            raise dash.exceptions.PreventUpdate
        return patient.trends(feed.history(pid), feed.state(pid))

    app.clientside_callback(live.CONNECT_JS, Output("patient-live", "data"),
                            Input("patient-id", "data"))
    app.clientside_callback(body.ANIMATE_JS, Output("body3d", "figure", allow_duplicate=True),
                            Input("animate", "n_intervals"), State("body3d", "figure"),
                            State("body-anim", "data"), State("body-rates", "data"),
                            prevent_initial_call=True)

    def act(u: User, pid: str, action: AlertAction, audit_action: str, detail: str) -> None:
        # the audit record is safe before the change is requested
        c.audit.record(u.name, audit_action, role=u.role, patient_id=pid,
                       alert_id=action.alert_id, detail=detail, wait=True)
        c.actions.put(pid, msgspec.json.encode(action))

    @app.callback(Output("action-status", "children"),
                  Input({"type": "ack", "alert": ALL}, "n_clicks"),
                  State({"type": "ack-comment", "alert": ALL}, "value"),
                  State("patient-id", "data"), prevent_initial_call=True)
    def acknowledge(clicks: list[int | None], comments: list[str | None], pid: str) -> str:
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or not any(clicks):
            raise dash.exceptions.PreventUpdate
        u = c.user()
        if not u.can_act or not c.may_see(u, pid):
            c.audit.record(u.name, "denied", role=u.role, patient_id=pid,
                           alert_id=trig["alert"], detail="acknowledge")
            return "Your role cannot acknowledge alerts."
        ids = [i["id"]["alert"] for i in ctx.states_list[0]]
        comment = comments[ids.index(trig["alert"])] if trig["alert"] in ids else None
        action = AlertAction(action="acknowledge", patient_id=pid, by=u.name,
                             ts=datetime.now(UTC), alert_id=trig["alert"],
                             comment=(comment or None))
        act(u, pid, action, "acknowledge", comment or "")
        return f"Acknowledgement of {trig['alert']} sent as {u.name}."

    @app.callback(Output("action-status", "children", allow_duplicate=True),
                  Input("silence-submit", "n_clicks"), State("silence-kind", "value"),
                  State("silence-reason", "value"), State("silence-minutes", "value"),
                  State("patient-id", "data"), prevent_initial_call=True)
    def silence(n: int | None, kind: str | None, reason: str | None, minutes: int,
                pid: str) -> str:
        if not n:
            raise dash.exceptions.PreventUpdate
        u = c.user()
        if not u.can_act or not c.may_see(u, pid):
            return "Your role cannot silence alerts."
        if kind not in KINDS or not (reason or "").strip():
            return "Choose a kind and give a reason to silence."
        now = datetime.now(UTC)
        action = AlertAction(action="silence", patient_id=pid, by=u.name, ts=now, kind=kind,
                             reason=reason.strip()[:500],  # type: ignore[union-attr]
                             until=now + timedelta(minutes=int(minutes)))
        act(u, pid, action, "silence", f"{kind} for {minutes} min: {reason}")
        return f"{kind} alerts silenced for {minutes} min by {u.name}."

    @app.callback(Output("action-status", "children", allow_duplicate=True),
                  Input("obs-submit", "n_clicks"), State("obs-acvpu", "value"),
                  State("obs-o2", "value"),
                  *[State(f"obs-{ch}", "value") for ch, _, _ in patient.MANUAL_CHANNELS],
                  State("patient-id", "data"), prevent_initial_call=True)
    def observe(n: int | None, acvpu: str | None, o2: str | None, *rest: Any) -> str:
        if not n:
            raise dash.exceptions.PreventUpdate
        *vals, pid = rest
        u = c.user()
        if not u.can_act or not c.may_see(u, pid):
            return "Your role cannot record observations."
        values = {ch: {"value": float(v), "unit": unit}
                  for (ch, _, unit), v in zip(patient.MANUAL_CHANNELS, vals, strict=True)
                  if v is not None and v != ""}
        if acvpu is None and o2 is None and not values:
            return "Nothing to record: choose ACVPU, air/oxygen or enter a value."
        doc = {"schema": OBSERVATION_SCHEMA, "patient_id": pid, "observer": u.name,
               "ts": datetime.now(UTC).isoformat(), "acvpu": acvpu,
               "supplemental_o2": None if o2 is None else o2 == "oxygen", "values": values}
        body_ = msgspec.json.encode(doc)
        try:
            decode_observation(body_)  # the worker's own check, before anything is written
        except InvalidMessage as exc:
            return f"Not recorded: {exc}"
        c.audit.record(u.name, "observation", role=u.role, patient_id=pid, wait=True)
        c.observations.put(pid, body_)
        return f"Observation recorded by {u.name}."

    @app.callback(Output("action-status", "children", allow_duplicate=True),
                  Input("spo2-scale-submit", "n_clicks"), Input("transfer-submit", "n_clicks"),
                  Input("discharge-submit", "n_clicks"), Input("pair-submit", "n_clicks"),
                  State("spo2-scale", "value"), State("transfer-ward", "value"),
                  State("transfer-bed", "value"), State("pair-device", "value"),
                  State("patient-id", "data"), prevent_initial_call=True)
    def registry_change(n1: int | None, n2: int | None, n3: int | None, n4: int | None,
                        scale: int, new_ward: str | None, new_bed: str | None,
                        device: str | None, pid: str) -> str:
        if not ctx.triggered_id or not (n1 or n2 or n3 or n4):
            raise dash.exceptions.PreventUpdate
        u = c.user()
        if not u.can_act or not c.may_see(u, pid):
            return "Your role cannot change the registry."
        current = feed.registry.get(pid)
        try:
            if ctx.triggered_id == "spo2-scale-submit":
                event, fields = "update", {"spo2_scale": int(scale)}
            elif ctx.triggered_id == "pair-submit":
                if not (device or "").strip():
                    return "Give the device id to pair."
                event, fields = "update", {"devices": [device.strip()]}  # type: ignore[union-attr]
            elif ctx.triggered_id == "transfer-submit":
                if new_ward and not u.sees_ward(new_ward):
                    return f"You cannot transfer to ward {new_ward} (not one of yours)."
                event, fields = "transfer", {"ward": new_ward or None, "bed": new_bed or None}
            else:
                event, fields = "discharge", {}
            return c.register(u, change(current, pid, event, u.name, **fields), fields)
        except RegistryError as exc:
            return str(exc)

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
            return c.register(u, change(feed.registry.get(pid), pid, "admit", u.name, **fields),
                              fields)
        except RegistryError as exc:
            return str(exc)


def close(app: Dash) -> None:
    """Stop the Kafka views and writers `create_app` started (tests, benchmarks)."""
    for item in getattr(app, "closers", []):
        (item.stop if hasattr(item, "stop") else item.close)()


def serve(settings: Settings, https: bool = False, cert: str | None = None,
          key: str | None = None) -> None:
    """Serve the dashboard with cheroot (threads for long-lived SSE and VR clients) until
    interrupted; over TLS with `https` (the given certificate, or a generated self-signed one)."""
    from cheroot import wsgi

    from dashboard import tls

    app = create_app(settings, secure_cookies=https)
    server = wsgi.Server((settings.dashboard_host, settings.dashboard_port), app.server,
                         numthreads=settings.dashboard_threads, server_name="patient-twin")
    if https:
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        cert, key = tls.certificate(settings, cert, key)
        server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    try:
        server.start()
    finally:
        app.feed.end_streams()  # type: ignore[attr-defined]  # or stop() waits for each
        server.stop()
