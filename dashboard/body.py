"""The 3D twin of one patient: a schematic body whose organs take the colour of their NEWS2
component (RCP 2017) on the twin's estimates, with the heart beating at the twin's heart rate and
the lungs breathing at its respiration rate (animated in the browser by `ANIMATE_JS`).

Colours: score 0 green, 1 yellow, 2 orange, 3 red; grey when the twin has no estimate for the
organ's channels (unknown is not healthy). Heart: pulse score (and a dark outline when the shock
index, HR/SBP, is above 1, a common bedside marker of shock: Allgower & Burri 1967). Lungs: the
worse of respiration rate and SpO2 scores. Skin: temperature score. Limbs: systolic BP score
(perfusion).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from streams.messages import TwinState

SCORE_COLOURS = ("#3aa655", "#f2d22e", "#f28c28", "#d7263d")
UNKNOWN = "#9aa5b1"
SHOCK_INDEX_HIGH = 1.0  # Allgower & Burri 1967; > 1 suggests shock


def ellipsoid(c: tuple[float, float, float], r: tuple[float, float, float],
              n: int = 14) -> dict[str, np.ndarray]:
    """A closed ellipsoid mesh: x, y, z `(V,)` vertices and i, j, k `(T,)` triangles."""
    u = np.linspace(0, 2 * np.pi, n, endpoint=False)
    v = np.linspace(0, np.pi, n // 2 + 1)[1:-1]
    uu, vv = np.meshgrid(u, v)
    x = np.concatenate([[c[0]], (c[0] + r[0] * np.cos(uu) * np.sin(vv)).ravel(), [c[0]]])
    y = np.concatenate([[c[1]], (c[1] + r[1] * np.sin(uu) * np.sin(vv)).ravel(), [c[1]]])
    z = np.concatenate([[c[2] + r[2]], (c[2] + r[2] * np.cos(vv)).ravel(), [c[2] - r[2]]])
    rings, seg = len(v), n
    tris = []
    for s in range(seg):  # top cap
        tris.append((0, 1 + s, 1 + (s + 1) % seg))
    for ring in range(rings - 1):
        for s in range(seg):
            a = 1 + ring * seg + s
            b = 1 + ring * seg + (s + 1) % seg
            tris += [(a, a + seg, b), (b, a + seg, b + seg)]
    last = len(x) - 1
    base = 1 + (rings - 1) * seg
    for s in range(seg):  # bottom cap
        tris.append((last, base + (s + 1) % seg, base + s))
    t = np.array(tris)
    return {"x": x, "y": y, "z": z, "i": t[:, 0], "j": t[:, 1], "k": t[:, 2]}


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def colour(score: int | None) -> str:
    return UNKNOWN if score is None else SCORE_COLOURS[max(0, min(3, int(score)))]


# (name, centre, radii, the NEWS2 components that colour it, opacity)
PARTS: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float],
                   tuple[str, ...], float], ...] = (
    ("head", (0, 0, 1.62), (0.11, 0.13, 0.14), ("temperature",), 0.35),
    ("torso", (0, 0, 1.2), (0.22, 0.14, 0.32), ("temperature",), 0.18),
    ("left arm", (-0.32, 0, 1.18), (0.05, 0.05, 0.3), ("systolic_bp",), 0.35),
    ("right arm", (0.32, 0, 1.18), (0.05, 0.05, 0.3), ("systolic_bp",), 0.35),
    ("left leg", (-0.11, 0, 0.45), (0.07, 0.07, 0.45), ("systolic_bp",), 0.35),
    ("right leg", (0.11, 0, 0.45), (0.07, 0.07, 0.45), ("systolic_bp",), 0.35),
    ("left lung", (-0.09, 0, 1.3), (0.08, 0.07, 0.16), ("respiration_rate", "spo2"), 0.9),
    ("right lung", (0.09, 0, 1.3), (0.08, 0.07, 0.16), ("respiration_rate", "spo2"), 0.9),
    ("heart", (0.03, -0.05, 1.24), (0.06, 0.05, 0.06), ("pulse",), 1.0),
)
_CHANNEL_OF = {"respiration_rate": "rr", "spo2": "spo2", "systolic_bp": "sbp", "pulse": "hr",
               "temperature": "temp"}


def signature(state: TwinState | None) -> str:
    """What the figure shows, as a string: equal signatures, equal figures. Rates and the
    shock index are not in it: they animate the figure (`rates`) and caption it (`caption`)."""
    if state is None:
        return "none"
    est = state.estimate
    comps = sorted(state.news2_components.items())
    return "|".join([*(f"{k}={v}" for k, v in comps),
                     *(ch for ch in ("hr", "rr", "spo2", "sbp", "temp") if est.get(ch) is None)])


def rates(state: TwinState | None) -> dict[str, float | None]:
    """Heart and breathing rate per minute for the browser's animation (None: unknown)."""
    est = state.estimate if state else {}
    return {"hr": est.get("hr"), "rr": est.get("rr")}


def caption(state: TwinState | None) -> str:
    """The line under the body: rates and the shock index."""
    if state is None:
        return "no data yet"
    est = state.estimate
    si = state.derived.get("shock_index")
    return (f"HR {_num(est.get('hr'))}/min · RR {_num(est.get('rr'))}/min"
            + (f" · shock index {si:.2f}" + (" (high)" if si > SHOCK_INDEX_HIGH else "")
               if si is not None else ""))


def figure(state: TwinState | None) -> tuple[go.Figure, dict[str, Any]]:
    """The body figure for a twin state (None: no data) and what the browser animation needs:
    heart and lung trace indices, their centres and base vertices (the rates come from
    `rates`, which change far more often than the figure)."""
    comps = state.news2_components if state else {}
    est = state.estimate if state else {}
    fig = go.Figure()
    anim: dict[str, Any] = {"parts": []}
    for idx, (name, c, r, comp_names, opacity) in enumerate(PARTS):
        known = [comps[k] for k in comp_names if est.get(_CHANNEL_OF[k]) is not None
                 and k in comps]
        score = max(known) if known else None
        mesh = ellipsoid(c, r)
        hover = name + ": " + (", ".join(f"{k.replace('_', ' ')} score {comps[k]}"
                                         for k in comp_names if k in comps and
                                         est.get(_CHANNEL_OF[k]) is not None) or "no data")
        fig.add_trace(go.Mesh3d(**mesh, color=colour(score), opacity=opacity, name=name,
                                hovertext=hover, hoverinfo="text", flatshading=False))
        if name in ("heart", "left lung", "right lung"):
            anim["parts"].append({"index": idx, "kind": "heart" if name == "heart" else "lung",
                                  "centre": list(c), "x": mesh["x"].round(4).tolist(),
                                  "y": mesh["y"].round(4).tolist(),
                                  "z": mesh["z"].round(4).tolist()})
    fig.update_layout(
        showlegend=False, height=460, uirevision="body",
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        scene={"xaxis": {"visible": False}, "yaxis": {"visible": False},
               "zaxis": {"visible": False}, "aspectmode": "data",
               "camera": {"eye": {"x": 0.0, "y": -2.2, "z": 0.4}}})
    return fig, anim


# Clientside: scale the heart by a beat at HR and the lungs by a breath at RR, from wall time.
ANIMATE_JS = """
function(n, fig, anim, rates) {
  if (!fig || !anim || !anim.parts || anim.parts.length === 0 || !rates) {
    return window.dash_clientside.no_update;
  }
  const t = Date.now() / 1000;
  const data = fig.data.slice();
  for (const p of anim.parts) {
    const rate = p.kind === 'heart' ? rates.hr : rates.rr;
    if (rate === null || rate === undefined) { continue; }
    const phase = (t * rate / 60) % 1;
    const s = p.kind === 'heart'
      ? 1 + 0.18 * Math.exp(-Math.pow((phase - 0.15) / 0.1, 2))
      : 1 + 0.12 * Math.sin(2 * Math.PI * phase);
    const c = p.centre;
    data[p.index] = Object.assign({}, data[p.index], {
      x: p.x.map(v => c[0] + (v - c[0]) * s),
      y: p.y.map(v => c[1] + (v - c[1]) * s),
      z: p.z.map(v => c[2] + (v - c[2]) * s),
    });
  }
  return Object.assign({}, fig, {data: data});
}
"""
