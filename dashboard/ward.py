"""Pure builders of the ward overview: twin states in, Dash components out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dash import html

from twin.channels import CHANNELS

BAND_COLOURS = {"none": "#d0d0d0", "low": "#cfe8cf", "low-medium": "#fff3a0",
                "medium": "#ffc27a", "high": "#ff8a80"}
_BAND_RANK = {"none": 0, "low": 1, "low-medium": 2, "medium": 3, "high": 4}
STALE_AFTER_S = 60.0  # no reading for a minute from a 1 Hz wearable means the data stopped


def _age_s(state: dict[str, Any], now: datetime) -> float:
    return (now - datetime.fromisoformat(state["ts"])).total_seconds()


def sort_key(state: dict[str, Any]) -> tuple[int, int, str]:
    return (-_BAND_RANK.get(state.get("news2_band", "none"), 0), -int(state.get("news2", 0)),
            state["patient_id"])


def _value(state: dict[str, Any], ch: str) -> str:
    est = state.get("estimate", {}).get(ch)
    if est is None:
        return "—"
    sd = state.get("sd", {}).get(ch)
    trend = ""
    fc = state.get("forecasts") or []
    if fc and fc[0]["estimate"].get(ch) is not None and sd:
        delta = fc[0]["estimate"][ch] - est
        trend = " ↑" if delta > sd else " ↓" if delta < -sd else " →"
    digits = 1 if ch == "temp" else 0
    return f"{est:.{digits}f}{trend}"


def header() -> html.Tr:
    cells = ["Patient", "NEWS2", *[f"{c.display} ({c.unit})" for c in CHANNELS], "Last data",
             "Readings"]
    return html.Tr([html.Th(c) for c in cells])


def rows(states: dict[str, dict[str, Any]], now: datetime) -> list[html.Tr]:
    """One row per patient, highest risk first; stale data marked, never shown as healthy."""
    out = []
    for st in sorted(states.values(), key=sort_key):
        age = _age_s(st, now)
        stale = age > STALE_AFTER_S
        band = st.get("news2_band", "none")
        score = f"{st['news2']}" + ("" if st.get("news2_complete") else " (partial)")
        cells = [
            html.Td(st["patient_id"], className="patient-id"),
            html.Td(score, className="news2", style={"background": BAND_COLOURS.get(band)}),
            *[html.Td(_value(st, c.name), className=f"v-{c.name}") for c in CHANNELS],
            html.Td(f"STALE {age:.0f} s ago" if stale else f"{age:.0f} s ago",
                    className="stale" if stale else "fresh"),
            html.Td(str(st.get("readings_applied", 0))),
        ]
        out.append(html.Tr(cells, id={"type": "ward-row", "patient": st["patient_id"]},
                           className="ward-row stale-row" if stale else "ward-row"))
    return out
