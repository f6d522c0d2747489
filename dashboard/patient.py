"""Pure builders of the patient page: trends with the twin's estimate and a +-2 SD band, forecast
cones (90 % intervals), raw readings with rejected artifacts marked, the NEWS2 breakdown with the
values each score was computed from, and the patient's open alerts with their actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import plotly.graph_objects as go
from dash import dcc, html
from plotly.subplots import make_subplots

from dashboard import ward
from dashboard.body import SCORE_COLOURS, UNKNOWN
from streams.messages import AlertEvent, PatientRecord, TwinState
from twin.channels import CHANNELS, NAMES
from twin.news2 import COMPONENTS

_PARAM = {"respiration_rate": ("Respiration rate", "rr"), "spo2": ("SpO2", "spo2"),
          "air_or_oxygen": ("Air or oxygen?", None), "systolic_bp": ("Systolic BP", "sbp"),
          "pulse": ("Pulse", "hr"), "consciousness": ("Consciousness", None),
          "temperature": ("Temperature", "temp")}


def _dt(ts: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(t), UTC) for t in ts]


def _iso(t: datetime) -> str:
    """A time as it is written on Kafka (msgspec's ISO 8601: `Z` for UTC)."""
    return str(msgspec.to_builtins(t))


def trends(history: dict[str, np.ndarray] | None, state: TwinState | None) -> go.Figure:
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
    if state is not None and state.forecasts:
        t0, forecasts = state.ts, state.forecasts
        for r, ch in enumerate(CHANNELS, start=1):
            est = state.estimate.get(ch.name)
            if est is None:
                continue
            sd = state.sd.get(ch.name) or 0.0
            fx = [t0] + [t0 + timedelta(minutes=f.minutes) for f in forecasts]
            mid = [est] + [f.estimate.get(ch.name) for f in forecasts]
            lo = [est - 1.645 * sd] + [f.low90.get(ch.name) for f in forecasts]
            hi = [est + 1.645 * sd] + [f.high90.get(ch.name) for f in forecasts]
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


def news2_table(state: TwinState | None) -> html.Table:
    """The NEWS2 breakdown: each parameter's score, the twin estimate it was computed from, the
    latest raw reading and how old the channel's data is."""
    head = html.Tr([html.Th(h) for h in ("Parameter", "Score", "Twin estimate", "Latest reading",
                                         "Data age")])
    if state is None:
        return html.Table([head, html.Tr(html.Td("no data yet", colSpan=5))],
                          className="news2-table")
    comps = state.news2_components
    body = []
    for name in COMPONENTS:
        label, ch = _PARAM[name]
        score = comps.get(name)
        if ch is None:
            recorded = (state.consciousness_alert if name == "consciousness"
                        else state.on_oxygen)
            if recorded is None:
                # not measured by wearables: scored 0 by the chart's arithmetic, but unknown
                score = None
                est = raw = age = "not recorded"
            else:
                if name == "consciousness":
                    est = "Alert" if recorded else "new confusion, V, P or U"
                else:
                    est = "supplemental oxygen" if recorded else "air"
                at = state.observed_at
                raw = f"observation at {at.strftime('%Y-%m-%d %H:%M:%S') if at else ''}"
                age = "manual observation"
        else:
            e, rw = state.estimate.get(ch), state.raw.get(ch)
            unit = state.units.get(ch, "")
            est = "—" if e is None else f"{e:.1f} ± {2 * (state.sd.get(ch) or 0):.1f} {unit}"
            rejected = ch in state.rejected
            raw = "—" if rw is None else f"{rw:g} {unit}" + (" (rejected artifact)"
                                                             if rejected else "")
            a = state.age_s.get(ch)
            age = "—" if a is None else f"{a:.0f} s"
        colour = UNKNOWN if score is None else SCORE_COLOURS[min(3, int(score))]
        body.append(html.Tr([html.Td(label), html.Td(str(score if score is not None else "—"),
                                                     style={"background": colour}),
                             html.Td(est), html.Td(raw), html.Td(age)],
                            className=f"news2-{name}"))
    total = html.Tr([html.Th("Total"), html.Th(str(state.news2)),
                     html.Th(f"on estimates; {state.news2_raw} on the raw readings"),
                     html.Th("complete" if state.news2_complete else
                             "partial: consciousness / oxygen not recorded"), html.Td("")])
    return html.Table([head, *body, total], className="news2-table")


def alert_rows(alerts: list[AlertEvent], can_act: bool) -> list[html.Div]:
    """One card per open alert with what raised it and, for clinicians, acknowledge and
    escalate."""
    out = []
    for a in alerts:
        aid = a.alert_id
        ev_text = "; ".join(f"{k}: {v}" for k, v in a.evidence.items()
                            if not isinstance(v, dict | list))[:300]
        by = f" by {a.by}" if a.by else ""
        out.append(html.Div([
            html.Strong(f"{a.priority.upper()} · {a.kind} · {a.state}{by}"),
            html.Div(a.message, className="alert-message"),
            html.Div(ev_text, className="alert-evidence"),
            html.Div([
                dcc.Input(id={"type": "ack-comment", "alert": aid}, placeholder="comment",
                          disabled=not can_act, debounce=False),
                html.Button("Acknowledge", id={"type": "ack", "alert": aid},
                            disabled=not can_act or a.state == "acknowledged",
                            className="ack-button"),
                # call for help now: the rapid-response team joins the alert's audience
                html.Button("Escalate", id={"type": "escalate", "alert": aid},
                            disabled=not can_act, className="escalate-button",
                            title="call the rapid-response team now"),
            ]),
        ], className=f"alert-card alert-{a.priority}", **{"data-alert-id": aid}))
    return out or [html.Div("No open alerts.", className="no-alerts")]


def header(patient_id: str, record: PatientRecord | None, state: TwinState | None,
           now: datetime | None = None) -> html.Div:
    """Who and where the patient is, the SpO2 scale, the latest reading, and a banner while the
    data is stale or after the twin's history was lost."""
    where = (f"ward {record.ward or '—'}, bed {record.bed or '—'}" if record
             else "not in the registry")
    scale = (f"NEWS2 SpO2 scale {record.spo2_scale}"
             + (f" (set by {record.spo2_scale_set_by})" if record.spo2_scale_set_by else "")
             if record else "SpO2 scale 1")
    fresh = "no data yet" if state is None else f"latest reading {_iso(state.ts)}"
    age = ward.data_age_s(state, now or datetime.now(UTC))
    stale = [] if not ward.is_stale(age) else [html.Div(
        "STALE: no data yet" if age is None else
        f"STALE: no reading applied for {age:.0f} s; the values below are not current",
        id="patient-stale", className="stale-banner")]
    lost_at = state.history_lost_at if state else None
    lost = [] if lost_at is None else [html.Div(
        f"History lost at {_iso(lost_at)}: the Kafka broker lost its stored records (a restart "
        "of a memory-only broker). The twin went on from the worker's memory; readings waiting "
        "then and the earlier record are gone.", id="patient-history-lost",
        className="history-lost-banner")]
    # the response band in words and shape beside its colour, as in the ward views
    shown = "unknown" if state is None or ward.is_stale(age) else state.news2_band
    band = html.Div([
        f"NEWS2 {state.news2}" if state is not None else "NEWS2 no data", " · response band ",
        html.Strong(ward.band_label(shown)),
        f" (last {ward.BAND_TEXT.get(state.news2_band, state.news2_band)})"
        if state is not None and shown == "unknown" else ""],
        id="patient-band", className=f"band-badge band-{shown}",
        style={"background": ward.BAND_COLOURS.get(shown, ward.BAND_COLOURS["unknown"])})
    risk = [] if state is None or state.sepsis_risk is None else [html.Div(
        f"Sepsis risk (the twin's model, docs/validation.md): {state.sepsis_risk * 100:.1f} % "
        "chance of being within 6 h of sepsis onset or septic", id="patient-sepsis-risk",
        className="risk-line")]
    training = [] if state is None or not state.training else [html.Div(
        "TRAINING: a simulated patient of a training session", className="training-banner")]
    return html.Div([*training, html.H2(f"Patient {patient_id}"),
                     html.Div(f"{where} · {scale} · {fresh}", id="patient-meta"), band,
                     *risk, *stale, *lost])

