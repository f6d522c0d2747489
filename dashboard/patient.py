"""Pure builders of the patient page: trends with the twin's estimate and a +-2 SD band, forecast
cones (90 % intervals), raw readings with rejected artifacts marked, the NEWS2 breakdown with the
values each score was computed from, and the patient's open alerts with their actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import dcc, html
from plotly.subplots import make_subplots

from dashboard import ward
from dashboard.body import SCORE_COLOURS, UNKNOWN
from twin.channels import CHANNELS, NAMES
from twin.news2 import COMPONENTS

_PARAM = {"respiration_rate": ("Respiration rate", "rr"), "spo2": ("SpO2", "spo2"),
          "air_or_oxygen": ("Air or oxygen?", None), "systolic_bp": ("Systolic BP", "sbp"),
          "pulse": ("Pulse", "hr"), "consciousness": ("Consciousness", None),
          "temperature": ("Temperature", "temp")}
SILENCE_MINUTES = (15, 30, 60, 120, 240)


def _dt(ts: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(t), UTC) for t in ts]


def trends(history: dict[str, np.ndarray] | None, state: dict[str, Any] | None) -> go.Figure:
    """One panel per vital sign over the kept history (`history` from `TwinFeed.history`)."""
    fig = make_subplots(rows=len(CHANNELS), cols=1, shared_xaxes=True, vertical_spacing=0.025,
                        subplot_titles=[f"{c.display} ({c.unit})" for c in CHANNELS])
    if history is not None and len(history["ts"]):
        x = _dt(history["ts"])
        for r, ch in enumerate(CHANNELS, start=1):
            j = NAMES.index(ch.name)
            est, sd, raw = history["estimate"][:, j], history["sd"][:, j], history["raw"][:, j]
            rej = history["rejected"][:, j]
            fig.add_trace(go.Scatter(x=x, y=est + 2 * sd, mode="lines", line={"width": 0},
                                     hoverinfo="skip", showlegend=False), row=r, col=1)
            fig.add_trace(go.Scatter(x=x, y=est - 2 * sd, mode="lines", line={"width": 0},
                                     fill="tonexty", fillcolor="rgba(31,95,159,0.18)",
                                     name="±2 SD", showlegend=r == 1, hoverinfo="skip"),
                          row=r, col=1)
            fig.add_trace(go.Scatter(x=x, y=est, mode="lines", line={"color": "#1f5f9f"},
                                     name="twin estimate", showlegend=r == 1), row=r, col=1)
            ok = ~rej & ~np.isnan(raw)
            fig.add_trace(go.Scatter(x=[x[i] for i in np.flatnonzero(ok)], y=raw[ok],
                                     mode="markers", marker={"size": 4, "color": "#555"},
                                     name="reading", showlegend=r == 1), row=r, col=1)
            if rej.any():
                fig.add_trace(go.Scatter(x=[x[i] for i in np.flatnonzero(rej)], y=raw[rej],
                                         mode="markers", name="rejected artifact",
                                         marker={"size": 8, "color": "#d7263d",
                                                 "symbol": "x"}, showlegend=True),
                              row=r, col=1)
    if state is not None and state.get("forecasts"):
        t0 = datetime.fromisoformat(state["ts"])
        for r, ch in enumerate(CHANNELS, start=1):
            est = state["estimate"].get(ch.name)
            if est is None:
                continue
            sd = state["sd"].get(ch.name) or 0.0
            fx = [t0] + [t0 + timedelta(minutes=f["minutes"]) for f in state["forecasts"]]
            mid = [est] + [f["estimate"].get(ch.name) for f in state["forecasts"]]
            lo = [est - 1.645 * sd] + [f["low90"].get(ch.name) for f in state["forecasts"]]
            hi = [est + 1.645 * sd] + [f["high90"].get(ch.name) for f in state["forecasts"]]
            fig.add_trace(go.Scatter(x=fx, y=hi, mode="lines", line={"width": 0},
                                     hoverinfo="skip", showlegend=False), row=r, col=1)
            fig.add_trace(go.Scatter(x=fx, y=lo, mode="lines", line={"width": 0},
                                     fill="tonexty", fillcolor="rgba(242,140,40,0.25)",
                                     name="forecast 90 %", showlegend=r == 1), row=r, col=1)
            fig.add_trace(go.Scatter(x=fx, y=mid, mode="lines",
                                     line={"dash": "dot", "color": "#f28c28"},
                                     name="forecast", showlegend=r == 1), row=r, col=1)
    fig.update_layout(height=170 * len(CHANNELS), margin={"l": 50, "r": 10, "t": 30, "b": 30},
                      uirevision="trends", legend={"orientation": "h", "y": 1.03})
    return fig


def news2_table(state: dict[str, Any] | None) -> html.Table:
    """The NEWS2 breakdown: each parameter's score, the twin estimate it was computed from, the
    latest raw reading and how old the channel's data is."""
    head = html.Tr([html.Th(h) for h in ("Parameter", "Score", "Twin estimate", "Latest reading",
                                         "Data age")])
    if state is None:
        return html.Table([head, html.Tr(html.Td("no data yet", colSpan=5))],
                          className="news2-table")
    comps = state.get("news2_components") or {}
    units = state.get("units") or {}
    body = []
    for name in COMPONENTS:
        label, ch = _PARAM[name]
        score = comps.get(name)
        if ch is None:
            recorded = state.get("consciousness_alert" if name == "consciousness"
                                 else "on_oxygen")
            if recorded is None:
                # not measured by wearables: scored 0 by the chart's arithmetic, but unknown
                score = None
                est = raw = age = "not recorded"
            else:
                if name == "consciousness":
                    est = "Alert" if recorded else "new confusion, V, P or U"
                else:
                    est = "supplemental oxygen" if recorded else "air"
                raw = f"observation at {state.get('observed_at', '')[:19].replace('T', ' ')}"
                age = "manual observation"
        else:
            e, rw = state["estimate"].get(ch), state["raw"].get(ch)
            unit = units.get(ch, "")
            est = "—" if e is None else f"{e:.1f} ± {2 * (state['sd'].get(ch) or 0):.1f} {unit}"
            rejected = ch in (state.get("rejected") or [])
            raw = "—" if rw is None else f"{rw:g} {unit}" + (" (rejected artifact)"
                                                             if rejected else "")
            a = (state.get("age_s") or {}).get(ch)
            age = "—" if a is None else f"{a:.0f} s"
        colour = UNKNOWN if score is None else SCORE_COLOURS[min(3, int(score))]
        body.append(html.Tr([html.Td(label), html.Td(str(score if score is not None else "—"),
                                                     style={"background": colour}),
                             html.Td(est), html.Td(raw), html.Td(age)],
                            className=f"news2-{name}"))
    total = html.Tr([html.Th("Total"), html.Th(str(state.get("news2", "—"))),
                     html.Th(f"on estimates; {state.get('news2_raw', '—')} on the raw readings"),
                     html.Th("complete" if state.get("news2_complete") else
                             "partial: consciousness / oxygen not recorded"), html.Th("")])
    return html.Table([head, *body, total], className="news2-table")


def alert_rows(alerts: list[dict[str, Any]], can_act: bool) -> list[html.Div]:
    """One card per open alert with what raised it and, for clinicians, acknowledge."""
    out = []
    for a in alerts:
        aid = a["alert_id"]
        evidence = a.get("evidence") or {}
        ev_text = "; ".join(f"{k}: {v}" for k, v in evidence.items()
                            if not isinstance(v, dict | list))[:300]
        by = f" by {a['by']}" if a.get("by") else ""
        out.append(html.Div([
            html.Strong(f"{a['priority'].upper()} · {a['kind']} · {a.get('state', '')}{by}"),
            html.Div(a.get("message", ""), className="alert-message"),
            html.Div(ev_text, className="alert-evidence"),
            html.Div([
                dcc.Input(id={"type": "ack-comment", "alert": aid}, placeholder="comment",
                          disabled=not can_act, debounce=False),
                html.Button("Acknowledge", id={"type": "ack", "alert": aid},
                            disabled=not can_act or a.get("state") == "acknowledged",
                            className="ack-button"),
            ]),
        ], className=f"alert-card alert-{a['priority']}", **{"data-alert-id": aid}))
    return out or [html.Div("No open alerts.", className="no-alerts")]


def header(patient_id: str, record: Any, state: dict[str, Any] | None,
           now: datetime | None = None) -> html.Div:
    where = (f"ward {record.ward or '—'}, bed {record.bed or '—'}" if record
             else "not in the registry")
    scale = (f"NEWS2 SpO2 scale {record.spo2_scale}"
             + (f" (set by {record.spo2_scale_set_by})" if record.spo2_scale_set_by else "")
             if record else "SpO2 scale 1")
    fresh = "no data yet" if state is None else f"latest reading {state['ts']}"
    age = ward.data_age_s(state, now or datetime.now(UTC))
    stale = [] if not ward.is_stale(age) else [html.Div(
        "STALE: no data yet" if age is None else
        f"STALE: no reading applied for {age:.0f} s; the values below are not current",
        id="patient-stale", className="stale-banner")]
    lost_at = (state or {}).get("history_lost_at")
    lost = [] if not lost_at else [html.Div(
        f"History lost at {lost_at}: the Kafka broker lost its stored records (a restart of a "
        "memory-only broker). The twin went on from the worker's memory; readings waiting then "
        "and the earlier record are gone.", id="patient-history-lost",
        className="history-lost-banner")]
    return html.Div([html.H2(f"Patient {patient_id}"),
                     html.Div(f"{where} · {scale} · {fresh}", id="patient-meta"), *stale, *lost])


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
