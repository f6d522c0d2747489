"""The patient page, `/patient/<id>`: the twin of one patient on the user's wards (header, NEWS2
breakdown, the 3D body, open alerts, trends), kept current by the live push (dashboard/live.py)
or a poll, and the clinicians' actions on the patient: acknowledge an alert, silence alerts of
one kind, record a manual observation, and the registry changes (SpO2 scale, transfer, discharge,
pair a device). Every action is audited before it is written; a viewer's attempt is refused on
the server, whatever the page showed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dash
import msgspec
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from flask import request

from dashboard import body, lite, live
from dashboard.auth import User
from dashboard.context import Context
from dashboard.pages import GL_CONFIG
from dashboard.pages.ward import WARD_REFRESH_MS
from dashboard.patient import alert_rows, header, news2_table, trends
from streams.errors import InvalidMessage
from streams.messages import OBSERVATION_SCHEMA, AlertAction, decode_observation
from streams.registry import RegistryError, change
from twin.policy import KINDS

ANIMATE_MS = 120
SILENCE_MINUTES = (15, 30, 60, 120, 240)
ACVPU = (("A", "Alert"), ("C", "new Confusion"), ("V", "responds to Voice"),
         ("P", "responds to Pain"), ("U", "Unresponsive"))
# Hand-taken vitals a clinician may enter, with their UCUM units (as on the device schema).
MANUAL_CHANNELS = (("rr", "RR", "/min"), ("spo2", "SpO2", "%"), ("sbp", "SBP", "mm[Hg]"),
                   ("hr", "HR", "/min"), ("temp", "Temp", "Cel"))


def observation_form(disabled: bool) -> html.Div:
    """Manual observation: ACVPU, air or oxygen, and optional hand-taken vitals."""
    return html.Div([
        html.H4("Manual observation (scored by NEWS2 like device readings)"),
        dcc.Dropdown([{"label": f"{k}: {v}", "value": k} for k, v in ACVPU], id="obs-acvpu",
                     placeholder="consciousness (ACVPU)", disabled=disabled),
        dcc.RadioItems([{"label": "air", "value": "air"},
                        {"label": "supplemental oxygen", "value": "oxygen"}],
                       id="obs-o2", inline=True),
        *[dcc.Input(id=f"obs-{ch}", type="number", placeholder=f"{label} ({unit})",
                    disabled=disabled, style={"width": "8em"})
          for ch, label, unit in MANUAL_CHANNELS],
        html.Button("Record observation", id="obs-submit", disabled=disabled),
    ], className="form")


def layout(c: Context, patient_id: str | None = None, **_: Any) -> html.Div:
    """The page of `patient_id`, or "not found" (audited as denied) when it is not on the
    user's wards."""
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
    low = lite.on()
    # low-bandwidth mode: no 3D body, no trends figure, no live stream; values every 5 s
    body_col = [html.Div(id="body-caption", className="body-caption"),
                dcc.Store(id="body-rates")] if low else [
        dcc.Graph(id="body3d", config=GL_CONFIG),
        html.Div(id="body-caption", className="body-caption"),
        html.P("Organs take the colour of their NEWS2 parameter's score (green 0, yellow 1, "
               "orange 2, red 3, grey no data); the scores are in the NEWS2 table.",
               className="body-legend"),
        dcc.Store(id="body-anim"), dcc.Store(id="body-rates"), dcc.Store(id="body-seen")]
    trends_part = [html.P("Trends are not drawn in low-bandwidth mode (switch it off in the "
                          "header to see them).")] if low else [
        dcc.Graph(id="trends", config={"displaylogo": False}),
        dcc.Interval(id="trends-refresh", interval=5 * WARD_REFRESH_MS),
        dcc.Interval(id="animate", interval=ANIMATE_MS)]
    return html.Div([
        dcc.Store(id="patient-id", data=patient_id),
        dcc.Store(id="patient-mode", data="lite" if low else "full"),
        html.Div(id="patient-header"),
        html.Div([
            html.Div(body_col, className="col body-col"),
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
                dcc.Dropdown([{"label": f"{m} min", "value": m}
                              for m in silence_minutes(c.settings.alert_silence_max_minutes)],
                             value=60, id="silence-minutes", clearable=False,
                             disabled=disabled),
                html.Button("Silence", id="silence-submit", disabled=disabled),
            ], className="form"),
            observation_form(disabled),
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
        *trends_part,
        dcc.Store(id="patient-push"), dcc.Store(id="patient-live"),
        dcc.Interval(id="patient-refresh",
                     interval=lite.LITE_REFRESH_MS if low else live.POLL_MS),
    ])


def register(app: Dash, c: Context) -> None:
    """The page at `/patient/<id>`, the callbacks that show the twin and those that act."""
    dash.register_page("patient", path_template="/patient/<patient_id>",
                       layout=lambda **kw: layout(c, **kw), name="Patient")
    _register_views(app, c)
    _register_actions(app, c)


def _register_views(app: Dash, c: Context) -> None:
    """What the page shows, each on the poll and the live push (`patient-push`)."""
    feed = c.feed

    @app.callback(Output("patient-header", "children"), Output("news2-breakdown", "children"),
                  Output("body-caption", "children"), Output("body-rates", "data"),
                  Input("patient-refresh", "n_intervals"),
                  Input("patient-push", "data"), State("patient-id", "data"))
    def refresh(_n: int | None, _push: int | None, pid: str) -> tuple[Any, ...]:
        u = c.user()
        if not c.may_see(u, pid):
            raise dash.exceptions.PreventUpdate
        st = feed.state(pid)
        return (header(pid, feed.registry.get(pid), st), news2_table(st),
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
        sig = [f"{a.alert_id}|{a.state}|{a.priority}|{a.by}" for a in alerts]
        if sig == seen:
            raise dash.exceptions.PreventUpdate
        return alert_rows(alerts, u.can_act), sig

    @app.callback(Output("trends", "figure"), Input("trends-refresh", "n_intervals"),
                  State("patient-id", "data"))
    def refresh_trends(_n: int | None, pid: str) -> Any:
        if not c.may_see(c.user(), pid):
            raise dash.exceptions.PreventUpdate
        return trends(feed.history(pid), feed.state(pid))

    app.clientside_callback(live.CONNECT_JS, Output("patient-live", "data"),
                            Input("patient-id", "data"), State("patient-mode", "data"))
    app.clientside_callback(body.ANIMATE_JS, Output("body3d", "figure", allow_duplicate=True),
                            Input("animate", "n_intervals"), State("body3d", "figure"),
                            State("body-anim", "data"), State("body-rates", "data"),
                            prevent_initial_call=True)


def silence_minutes(longest: int) -> list[int]:
    """The silence lengths offered: the usual steps up to ALERT_SILENCE_MAX_MINUTES."""
    return [m for m in SILENCE_MINUTES if m < longest] + [longest]


def _refuse(c: Context, u: User, pid: str, what: str, alert_id: str | None = None) -> None:
    """A refused action is audited like a done one: who tried what on which patient."""
    c.audit.record(u.name, "denied", role=u.role, patient_id=pid, alert_id=alert_id,
                   detail=what, remote_addr=request.remote_addr)


def _actor(c: Context, pid: str, what: str, alert_id: str | None = None
           ) -> tuple[User, str | None]:
    """The user acting on patient `pid` (the id comes from the browser: checked here), and,
    if their role or wards do not allow it, the refusal to show (audited)."""
    u = c.user()
    if u.can_act and c.may_see(u, pid):
        return u, None
    _refuse(c, u, pid, what, alert_id)
    return u, f"Your role cannot {what}."


def _act(c: Context, u: User, pid: str, action: AlertAction, audit_action: str,
         detail: str) -> None:
    """Request an alert action from the worker that owns the patient."""
    # the audit record is safe before the change is requested
    c.audit.record(u.name, audit_action, role=u.role, patient_id=pid,
                   alert_id=action.alert_id, detail=detail, wait=True)
    c.actions.put(pid, msgspec.json.encode(action))


def _register_actions(app: Dash, c: Context) -> None:
    """The clinicians' actions, each answered on the page's status line (`action-status`)."""

    @app.callback(Output("action-status", "children"),
                  Input({"type": "ack", "alert": ALL}, "n_clicks"),
                  Input({"type": "escalate", "alert": ALL}, "n_clicks"),
                  State({"type": "ack-comment", "alert": ALL}, "value"),
                  State("patient-id", "data"), prevent_initial_call=True)
    def alert_action(acks: list[int | None], escalations: list[int | None],
                     comments: list[str | None], pid: str) -> str:
        trig = ctx.triggered_id
        if not isinstance(trig, dict) or not any(acks + escalations):
            raise dash.exceptions.PreventUpdate
        verb = "acknowledge" if trig["type"] == "ack" else "escalate"
        u, refused = _actor(c, pid, f"{verb} alerts", trig["alert"])
        if refused:
            return refused
        # The alert id comes from the browser too: it must be an open alert of this patient
        # (whom the user may act on), not any alert id of any ward.
        if all(a.alert_id != trig["alert"] for a in c.feed.open_alerts(pid)):
            _refuse(c, u, pid, f"{verb}: not an open alert of this patient", trig["alert"])
            return "That alert is not open for this patient."
        ids = [i["id"]["alert"] for i in ctx.states_list[0]]
        comment = comments[ids.index(trig["alert"])] if trig["alert"] in ids else None
        action = AlertAction(action=verb, patient_id=pid, by=u.name,  # type: ignore[arg-type]
                             ts=datetime.now(UTC), alert_id=trig["alert"],
                             comment=(comment or None))
        _act(c, u, pid, action, verb, comment or "")
        if verb == "escalate":
            return (f"Escalation of {trig['alert']} sent as {u.name}: rapid-response team "
                    "called.")
        return f"Acknowledgement of {trig['alert']} sent as {u.name}."

    @app.callback(Output("action-status", "children", allow_duplicate=True),
                  Input("silence-submit", "n_clicks"), State("silence-kind", "value"),
                  State("silence-reason", "value"), State("silence-minutes", "value"),
                  State("patient-id", "data"), prevent_initial_call=True)
    def silence(n: int | None, kind: str | None, reason: str | None, minutes: int,
                pid: str) -> str:
        if not n:
            raise dash.exceptions.PreventUpdate
        u, refused = _actor(c, pid, "silence alerts")
        if refused:
            return refused
        if kind not in KINDS or not (reason or "").strip():
            return "Choose a kind and give a reason to silence."
        if minutes not in silence_minutes(c.settings.alert_silence_max_minutes):
            _refuse(c, u, pid, f"silence: {minutes!r} min is not offered")
            return (f"A silence lasts one of "
                    f"{silence_minutes(c.settings.alert_silence_max_minutes)} minutes.")
        now = datetime.now(UTC)
        action = AlertAction(action="silence", patient_id=pid, by=u.name, ts=now, kind=kind,
                             reason=reason.strip()[:500],  # type: ignore[union-attr]
                             until=now + timedelta(minutes=int(minutes)))
        _act(c, u, pid, action, "silence", f"{kind} for {minutes} min: {reason}")
        return f"{kind} alerts silenced for {minutes} min by {u.name}."

    @app.callback(Output("action-status", "children", allow_duplicate=True),
                  Input("obs-submit", "n_clicks"), State("obs-acvpu", "value"),
                  State("obs-o2", "value"),
                  *[State(f"obs-{ch}", "value") for ch, _, _ in MANUAL_CHANNELS],
                  State("patient-id", "data"), prevent_initial_call=True)
    def observe(n: int | None, acvpu: str | None, o2: str | None, *rest: Any) -> str:
        if not n:
            raise dash.exceptions.PreventUpdate
        *vals, pid = rest
        u, refused = _actor(c, pid, "record observations")
        if refused:
            return refused
        values = {ch: {"value": float(v), "unit": unit}
                  for (ch, _, unit), v in zip(MANUAL_CHANNELS, vals, strict=True)
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
        u, refused = _actor(c, pid, "change the registry")
        if refused:
            return refused
        current = c.feed.registry.get(pid)
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
