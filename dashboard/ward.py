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
# Never colour alone (issue 21 item 5): each band also has a word and a shape. The shapes are
# plotly's 3D marker symbols, and the same shapes as text wherever a band is written.
BAND_TEXT = {"none": "NONE", "low": "LOW", "low-medium": "LOW-MEDIUM", "medium": "MEDIUM",
             "high": "HIGH", "unknown": "UNKNOWN"}
BAND_SYMBOLS = {"none": "circle-open", "low": "circle", "low-medium": "square",
                "medium": "diamond", "high": "x", "unknown": "square-open"}
BAND_GLYPHS = {"none": "○", "low": "●", "low-medium": "■", "medium": "◆", "high": "✖",
               "unknown": "□"}
NEWS2_MAX = 20  # the highest aggregate NEWS2 (RCP 2017): the 3D ward's height scale
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
    def shown_band(self) -> str:
        """The band the views show: "unknown" while the data is stale or missing."""
        return "unknown" if self.stale else self.band

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


def band_label(band: str) -> str:
    """A band as text with its shape, e.g. "✖ HIGH" (the same shape as in the 3D ward)."""
    return f"{BAND_GLYPHS.get(band, BAND_GLYPHS['unknown'])} {BAND_TEXT.get(band, band.upper())}"


def alerts_text(alerts: list[AlertEvent]) -> str:
    """Every open alert, highest priority first: what the VR panel lists."""
    if not alerts:
        return "—"
    return f"{len(alerts)}: " + ", ".join(f"{a.kind} ({a.priority})" for a in alerts)


def _value(state: TwinState, ch: str) -> str:
    est = state.estimate.get(ch)
    if est is None:
        return "—"
    sd = state.sd.get(ch)
    trend = ""
    fc = state.forecasts
    if fc and (ahead := fc[0].estimate.get(ch)) is not None and sd:
        # The twin's forecast returns from the fast level towards the slow one (twin/model.py),
        # so a value standing above where it is heading has risen recently: the arrow shows that
        # recent change, as a monitor's trend arrow does, not the expected return.
        recent = est - ahead
        trend = " ↑" if recent > sd else " ↓" if recent < -sd else " →"
    digits = 1 if ch == "temp" else 0
    return f"{est:.{digits}f}{trend}"


COLUMNS = [
    {"id": "where", "name": "Ward / bed"},
    {"id": "patient", "name": "Patient", "presentation": "markdown"},
    {"id": "news2", "name": "NEWS2", "presentation": "markdown"},
    {"id": "band_label", "name": "Response band"},
    *[{"id": f"v_{c.name}", "name": f"{c.display} ({c.unit})"} for c in CHANNELS],
    {"id": "alerts", "name": "Open alerts"},
    {"id": "last", "name": "Last data"},
]
# Colours by hidden fields of each row (band, top alert priority, stale).
STYLES = [
    *[{"if": {"filter_query": f'{{band}} = "{b}"', "column_id": "news2"}, "backgroundColor": c}
      for b, c in BAND_COLOURS.items()],
    *[{"if": {"filter_query": f'{{shown_band}} = "{b}"', "column_id": "band_label"},
       "backgroundColor": c} for b, c in BAND_COLOURS.items()],
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
            "shown_band": b.shown_band,
            "band_label": band_label(b.shown_band) + (
                f" (last {BAND_TEXT.get(b.band, b.band)})" if b.stale and st is not None
                else ""),
            "alerts": alerts_text(b.alerts),
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


def where(b: Bed) -> str:
    return f"{b.ward or '—'}/{b.bed or '—'}"


def summary_line(b: Bed) -> str:
    """One bed in a sentence: who, where, NEWS2 with its band in words and shape, alerts."""
    score = "no data" if b.state is None else f"NEWS2 {b.state.news2}"
    return " · ".join([b.patient_id, where(b), score, band_label(b.shown_band)]
                      + (["STALE"] if b.stale and b.state is not None else [])
                      + ([f"{len(b.alerts)} open alert{'s' if len(b.alerts) > 1 else ''}"]
                         if b.alerts else []))


_BOX_FACES = [(0, 1, 2), (0, 2, 3), (4, 6, 5), (4, 7, 6), (0, 4, 5), (0, 5, 1),
              (1, 5, 6), (1, 6, 2), (2, 6, 7), (2, 7, 3), (3, 7, 4), (3, 4, 0)]
BAR_HALF_M = 0.6  # a bar's footprint, half its side in metres (beds are 2.5 m apart)
BAR_STUB = 0.3  # the height of a NEWS2 0 (or no data) bar: every bed stands out of the floor


def _bars(xs: list[float], ys: list[float], hs: list[float], colours: list[str]) -> go.Mesh3d:
    """One solid box per bed (8 vertices, 12 triangles each), coloured per box."""
    vx: list[float] = []
    vy: list[float] = []
    vz: list[float] = []
    ii: list[int] = []
    jj: list[int] = []
    kk: list[int] = []
    faces: list[str] = []
    d = BAR_HALF_M
    for n, (x, y, h, c) in enumerate(zip(xs, ys, hs, colours, strict=True)):
        for z in (0.0, h):
            vx += [x - d, x + d, x + d, x - d]
            vy += [y - d, y - d, y + d, y + d]
            vz += [z] * 4
        for a, b_, c_ in _BOX_FACES:
            ii.append(8 * n + a)
            jj.append(8 * n + b_)
            kk.append(8 * n + c_)
        faces += [c] * len(_BOX_FACES)
    return go.Mesh3d(x=vx, y=vy, z=vz, i=ii, j=jj, k=kk, facecolor=faces, flatshading=True,
                     name="NEWS2", hoverinfo="skip", showlegend=False,
                     lighting={"ambient": 0.75, "diffuse": 0.5, "specular": 0.05})


def figure_3d(beds_: list[Bed]) -> go.Figure:
    """Beds on the ward floor in 3D, read at a glance from the default camera (issue 21 item 6):
    every bed in view, a solid bar per bed as tall as its NEWS2 on one fixed scale (0 to
    NEWS2_MAX, so heights compare between refreshes), coloured by the response band and topped
    by the band's shape and word; the highest-risk bed (the ward table's first row, `beds_[0]`)
    carries the one large label. Click a bed to open the patient (customdata = patient id)."""
    pos = positions(beds_)
    xs = [pos[b.patient_id][0] for b in beds_]
    ys = [pos[b.patient_id][1] for b in beds_]
    scores = [b.state.news2 if b.state else 0 for b in beds_]
    heights = [max(float(s), BAR_STUB) for s in scores]
    bands = [b.shown_band for b in beds_]
    colours = [BAND_COLOURS.get(band, BAND_COLOURS["unknown"]) for band in bands]
    text = [summary_line(b) for b in beds_]
    ids = [b.patient_id for b in beds_]
    fig = go.Figure()
    # trace 0, the beds on the floor (what a click on the floor opens)
    fig.add_trace(go.Scatter3d(
        x=xs, y=ys, z=[0.0] * len(beds_), mode="markers", name="beds",
        marker={"symbol": "square", "size": 10, "color": "#8fa3b8"},
        customdata=ids, hovertext=text, hoverinfo="text"))
    fig.add_trace(_bars(xs, ys, heights, colours))
    fig.add_trace(go.Scatter3d(
        x=xs, y=ys, z=[h + 0.6 for h in heights], mode="markers+text", name="risk",
        marker={"size": 7, "color": "#1b1f24", "symbol": [BAND_SYMBOLS[b] for b in bands]},
        text=[f"{b.patient_id} {BAND_TEXT[band]}" for b, band in zip(beds_, bands,
                                                                     strict=True)],
        textposition="top center", textfont={"size": 11, "color": "#1b1f24"},
        customdata=ids, hovertext=text, hoverinfo="text"))
    alerting = [n for n, b in enumerate(beds_) if b.alerts]
    if alerting:
        fig.add_trace(go.Scatter3d(
            x=[xs[n] + BAR_HALF_M for n in alerting], y=[ys[n] for n in alerting],
            z=[heights[n] for n in alerting], mode="markers", name="open alerts",
            marker={"size": 8, "symbol": "cross", "color": "#b00020"},
            customdata=[ids[n] for n in alerting], hovertext=[text[n] for n in alerting],
            hoverinfo="text"))
    annotations = []
    if beds_:
        top = beds_[0]
        annotations.append({
            "x": xs[0], "y": ys[0], "z": heights[0], "showarrow": True,
            "text": "<b>Highest risk: " + summary_line(top).replace(" · NEWS2", "<br>NEWS2")
                    .replace(" · no data", "<br>no data") + "</b>", "align": "left",
            # the label opens towards the middle of the ward: never cut at the figure's edge
            "xanchor": "left" if xs[0] <= (min(xs) + max(xs)) / 2 else "right",
            "arrowhead": 2, "arrowwidth": 2, "ax": 0, "ay": -60, "font": {"size": 15,
                                                                       "color": "#1b1f24"},
            "bgcolor": "#ffffff", "bordercolor": "#1b1f24", "borderwidth": 1, "borderpad": 4})
    span_x = (min(xs, default=0.0) - 2.0, max(xs, default=0.0) + 2.0)
    span_y = (min(ys, default=0.0) - 2.0, max(ys, default=0.0) + 2.0)
    wide = max(span_x[1] - span_x[0], span_y[1] - span_y[0])
    fig.update_layout(
        uirevision="ward3d", showlegend=False, margin={"l": 0, "r": 0, "t": 0, "b": 0},
        height=620, scene={
            "xaxis": {"title": "", "showticklabels": False, "range": list(span_x)},
            "yaxis": {"title": "", "showticklabels": False, "range": list(span_y)},
            "zaxis": {"title": "NEWS2", "range": [0, NEWS2_MAX + 2],
                      "tickvals": list(range(0, NEWS2_MAX + 1, 5))},
            "aspectmode": "manual",
            "aspectratio": {"x": (span_x[1] - span_x[0]) / wide,
                            "y": (span_y[1] - span_y[0]) / wide, "z": 0.7},
            # from the ward's front edge, above: every bed in view, no bar hiding another's top
            "camera": {"eye": {"x": 0.0, "y": -1.2, "z": 1.0},
                       "center": {"x": 0.0, "y": 0.0, "z": -0.1}},
            "annotations": annotations})
    return fig
