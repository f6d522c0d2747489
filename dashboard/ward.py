"""Pure builders of the ward views: twin states, registry records and open alerts in, Dash
components and plotly figures out.

Risk order: the NEWS2 clinical response band of the twin's estimates (RCP 2017), then the score,
then open alerts. A patient whose data is stale or missing is never shown as healthy: it ranks
just below the high band (we do not know how they are) and its row says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

from dashboard.auth import User
from streams.messages import AlertEvent, PatientRecord, TwinState
from twin.channels import CHANNELS

BAND_COLOURS = {"none": "#d0d0d0", "low": "#cfe8cf", "low-medium": "#fff3a0",
                "medium": "#ffc27a", "high": "#ff8a80", "unknown": "#b7c4d6"}
_BAND_RANK = {"none": 0, "low": 1, "low-medium": 2, "medium": 3, "high": 4}
_UNKNOWN_RANK = 3.5
PRIORITY_RANK = {"high": 3, "medium": 2, "low": 1}
STALE_AFTER_S = 60.0  # no reading for a minute from a 1 Hz wearable means the data stopped


def data_age_s(state: TwinState | None, now: datetime) -> float | None:
    """Seconds since the twin last applied a reading (None: never). Measured from when the
    worker applied it (`applied_at`, the worker's clock), not from the reading's own time: a
    device whose clock runs ahead would otherwise look fresh while its readings are refused."""
    if state is None:
        return None
    return (now - (state.applied_at or state.ts)).total_seconds()


def is_stale(age_s: float | None) -> bool:
    return age_s is None or age_s > STALE_AFTER_S


@dataclass(frozen=True)
class Bed:
    """One patient as the ward views show them."""

    patient_id: str
    ward: str | None
    bed: str | None
    state: TwinState | None  # latest twin state; None: no data yet
    alerts: list[AlertEvent]  # open alerts, highest priority first
    age_s: float | None  # seconds since the latest applied reading

    @property
    def stale(self) -> bool:
        return is_stale(self.age_s)

    @property
    def band(self) -> str:
        return "unknown" if self.state is None else self.state.news2_band

    @property
    def risk(self) -> tuple[float, int, int]:
        rank: float = _BAND_RANK.get(self.band, 0)
        if self.stale:
            rank = max(rank, _UNKNOWN_RANK)
        top = max((PRIORITY_RANK[a.priority] for a in self.alerts), default=0)
        return rank, self.state.news2 if self.state else 0, top


def beds(user: User, states: dict[str, TwinState], records: dict[str, PatientRecord],
         alerts: list[AlertEvent], now: datetime) -> list[Bed]:
    """The patients `user` may see, highest risk first: admitted patients of the user's wards
    (with or without data), and for users of every ward also twins without a registry record."""
    by_patient: dict[str, list[AlertEvent]] = {}
    for a in alerts:
        by_patient.setdefault(a.patient_id, []).append(a)
    out = []
    for pid in set(records) | set(states):
        rec = records.get(pid)
        ward = rec.ward if rec else None
        if not user.sees_ward(ward):
            continue
        st = states.get(pid)
        age = data_age_s(st, now)
        out.append(Bed(pid, ward, rec.bed if rec else None, st, by_patient.get(pid, []), age))
    out.sort(key=lambda b: (tuple(-v for v in b.risk), b.ward or "", b.patient_id))
    return out


def _value(state: TwinState, ch: str) -> str:
    est = state.estimate.get(ch)
    if est is None:
        return "—"
    sd = state.sd.get(ch)
    trend = ""
    fc = state.forecasts
    if fc and (ahead := fc[0].estimate.get(ch)) is not None and sd:
        delta = ahead - est
        trend = " ↑" if delta > sd else " ↓" if delta < -sd else " →"
    digits = 1 if ch == "temp" else 0
    return f"{est:.{digits}f}{trend}"


COLUMNS = [
    {"id": "where", "name": "Ward / bed"},
    {"id": "patient", "name": "Patient", "presentation": "markdown"},
    {"id": "news2", "name": "NEWS2", "presentation": "markdown"},
    *[{"id": f"v_{c.name}", "name": f"{c.display} ({c.unit})"} for c in CHANNELS],
    {"id": "alerts", "name": "Open alerts"},
    {"id": "last", "name": "Last data"},
]
# Colours by hidden fields of each row (band, top alert priority, stale).
STYLES = [
    *[{"if": {"filter_query": f'{{band}} = "{b}"', "column_id": "news2"}, "backgroundColor": c}
      for b, c in BAND_COLOURS.items()],
    *[{"if": {"filter_query": f'{{alert_priority}} = "{p}"', "column_id": "alerts"},
       "backgroundColor": c}
      for p, c in (("high", "#ff8a80"), ("medium", "#ffc27a"), ("low", "#fff3a0"))],
    {"if": {"filter_query": '{stale} = "yes"', "column_id": "last"}, "color": "#b00020",
     "fontWeight": "bold"},
]


def rows(beds_: list[Bed]) -> list[dict[str, Any]]:
    """One table row per patient in the order given (`id` = patient id)."""
    out = []
    for b in beds_:
        st = b.state
        row: dict[str, Any] = {
            "id": b.patient_id, "where": f"{b.ward or '—'} / {b.bed or '—'}",
            "patient": f"[{b.patient_id}](/patient/{b.patient_id})",
            "band": b.band if st is not None else "unknown",
            "stale": "yes" if b.stale else "no",
            "alerts": (f"{len(b.alerts)}: {b.alerts[0].kind} ({b.alerts[0].priority})"
                       if b.alerts else "—"),
            "alert_priority": b.alerts[0].priority if b.alerts else "",
        }
        if st is None:
            row.update({"news2": f"[no data](/patient/{b.patient_id}#news2)", "last": "NO DATA",
                        **{f"v_{c.name}": "—" for c in CHANNELS}})
        else:
            age = f"{max(b.age_s or 0.0, 0.0):.0f} s ago"  # device clocks can run ahead
            row.update({
                # the score links to its breakdown: the readings and observations behind it
                "news2": f"[{st.news2}{'' if st.news2_complete else ' (partial)'}]"
                         f"(/patient/{b.patient_id}#news2)",
                "last": f"STALE {age}" if b.stale else age,
                **{f"v_{c.name}": _value(st, c.name) for c in CHANNELS}})
        out.append(row)
    return out


def positions(beds_: list[Bed]) -> dict[str, tuple[float, float]]:
    """Floor positions of the beds: one row of beds per ward, beds in bed-number order, wards
    side by side (metres; 2.5 m between beds, 8 m between wards)."""
    wards = sorted({b.ward or "—" for b in beds_})
    pos = {}
    for w_i, w in enumerate(wards):
        members = sorted((b for b in beds_ if (b.ward or "—") == w),
                         key=lambda b: (int(b.bed) if (b.bed or "").isdigit() else 10**6,
                                        b.bed or "", b.patient_id))
        for j, b in enumerate(members):
            pos[b.patient_id] = (w_i * 8.0 + (j % 2) * 4.0, (j // 2) * 2.5)
    return pos


def figure_3d(beds_: list[Bed]) -> go.Figure:
    """Beds on the ward floor in 3D: a column per bed as tall as its NEWS2 score, coloured by the
    response band; click a bed to open the patient (customdata = patient id)."""
    pos = positions(beds_)
    xs = [pos[b.patient_id][0] for b in beds_]
    ys = [pos[b.patient_id][1] for b in beds_]
    heights = [0.3 + (b.state.news2 if b.state else 0) * 0.3 for b in beds_]
    colours = [BAND_COLOURS.get("unknown" if b.stale else b.band, "#ccc") for b in beds_]
    text = [f"{b.patient_id} · {b.ward or '—'}/{b.bed or '—'} · "
            + (f"NEWS2 {b.state.news2}" if b.state else "no data")
            + (" · STALE" if b.stale else "")
            + (f" · {len(b.alerts)} open alerts" if b.alerts else "") for b in beds_]
    fig = go.Figure()
    # beds: a flat marker on the floor; risk: a vertical bar above it
    fig.add_trace(go.Scatter3d(
        x=xs, y=ys, z=[0.0] * len(beds_), mode="markers", name="beds",
        marker={"symbol": "square", "size": 14, "color": "#8fa3b8"},
        customdata=[b.patient_id for b in beds_], hovertext=text, hoverinfo="text"))
    bx, by, bz = [], [], []
    for x, y, h in zip(xs, ys, heights, strict=True):
        bx += [x, x, None]
        by += [y, y, None]
        bz += [0.0, h, None]
    fig.add_trace(go.Scatter3d(x=bx, y=by, z=bz, mode="lines", hoverinfo="skip",
                               line={"width": 12, "color": "#999"}, name="NEWS2",
                               showlegend=False))
    fig.add_trace(go.Scatter3d(
        x=xs, y=ys, z=heights, mode="markers+text", name="risk",
        marker={"size": 9, "color": colours, "line": {"width": 1, "color": "#333"},
                "symbol": ["diamond" if b.alerts else "circle" for b in beds_]},
        text=[b.patient_id for b in beds_], textposition="top center",
        customdata=[b.patient_id for b in beds_], hovertext=text, hoverinfo="text"))
    fig.update_layout(
        uirevision="ward3d", showlegend=False, margin={"l": 0, "r": 0, "t": 0, "b": 0},
        height=600, scene={"xaxis": {"title": "", "showticklabels": False},
                           "yaxis": {"title": "", "showticklabels": False},
                           "zaxis": {"title": "NEWS2", "range": [0, 6.5]},
                           "aspectmode": "data"})
    return fig
