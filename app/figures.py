"""Figures of the Inspect tab: unit-score bars, the token heatmap, token highlighting and patch
overlays. Plotly for charts (bundled with Gradio, works offline); PIL for the image overlays.

Conventions (see shared spec, attention maps): real tokens only (padding is never drawn), token
positions as the axes so repeated tokens stay distinct, raw values on hover, one colour scale
shared by every candidate of a mention (the caller passes vmin/vmax).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from mimic.serving.linker import Candidate, Explanation

UNIT_LABELS = {
    "S_T": "S_T text (TGLU)",
    "S_V": "S_V image (VDLU)",
    "S_C": "S_C cross-modal (CMFU)",
    "S_L": "S_L lexical",
    "S": "S (fused)",
}
ZERO_SHOT_LABELS = {
    "S_T": "S_T text cosine",
    "S_V": "S_V image cosine",
    "S_C": "S_C text→image cosine",
    "S": "S (mean of units)",
}

# A perceptually ordered map (dark purple -> orange -> pale yellow), sampled from inferno.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def _unit_keys(c: Candidate | dict, zero_shot: bool) -> list[str]:
    s_l = c.get("S_L") if isinstance(c, dict) else getattr(c, "S_L", None)
    if not zero_shot and s_l is not None:
        return ["S_T", "S_V", "S_C", "S_L", "S"]  # a model with a lexical unit: S = β·(S_T + S_V + S_C)/3 + S_L
    return ["S_T", "S_V", "S_C", "S"]


def _score(c: Candidate | dict, k: str):
    return c.get(k) if isinstance(c, dict) else getattr(c, k, None)


def unit_range(cands, zero_shot: bool) -> tuple[float, float]:
    """One y-range for the unit-score bars of every candidate of a result: from the lowest to the
    highest unit score or S of all of them (always including 0), with room for the value labels.
    Bars drawn on it compare across candidates (S = 0.2 is a fifth of the height of S = 1.0)."""
    vals = [v for c in cands for k in _unit_keys(c, zero_shot) if (v := _score(c, k)) is not None]
    lo, hi = min([0.0, *vals]), max([0.0, *vals])
    pad = 0.15 * ((hi - lo) or 1.0)
    return lo - (pad if lo < 0 else 0), hi + pad


# plotly's default template sets `automargin` on both axes: plotly.js then measures the tick labels,
# grows the margins and lays the figure out again. Without it both figures drew in 166 ms against
# 228 (medians of 12 draws in Chromium at load 5; fastest 82 against 145). The margins are sized
# here instead, from the labels.
_FIXED_MARGINS = {"automargin": False}
_CHAR_PX = 7.5  # a tick label character at plotly's default 12 px font, with room to spare


def _token_margins(entity_tokens: list[str], mention_tokens: list[str]) -> dict:
    """Left margin for the entity tokens (horizontal) and bottom margin for the mention tokens (at
    -60 degrees), each with room for the axis title."""
    le = max((len(t) for t in entity_tokens), default=1)
    lm = max((len(t) for t in mention_tokens), default=1)
    return dict(l=int(max(60, _CHAR_PX * le + 45)), b=int(max(60, _CHAR_PX * lm * 0.87 + 55)), r=20, t=50)


def unit_bars(c: Candidate | dict, zero_shot: bool, y_range: tuple[float, float] | None = None) -> go.Figure:
    """The unit scores and S of one candidate as bars, on `y_range` (pass `unit_range` of all the
    result's candidates so that every candidate is drawn on the same axis; default: this one's)."""
    labels = ZERO_SHOT_LABELS if zero_shot else UNIT_LABELS
    keys = _unit_keys(c, zero_shot)
    vals = [_score(c, k) for k in keys]
    fig = go.Figure(
        go.Bar(
            x=[labels[k] for k in keys],
            y=[v if v is not None else 0 for v in vals],
            text=[f"{v:.4f}" if v is not None else "n/a" for v in vals],
            textposition="outside",
            marker_color=["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#333333"][: len(keys) - 1] + ["#333333"],
            hovertemplate="%{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Unit scores: {_score(c, 'name')} ({_score(c, 'entity_id')})",
        height=320,
        margin=dict(l=75, r=20, t=50, b=40),  # fixed: see _FIXED_MARGINS
        yaxis_title=("cosine" if zero_shot else "raw unit score") + " (one axis for all candidates)",
    )
    fig.update_yaxes(range=list(y_range or unit_range([c], zero_shot)), autorange=False, **_FIXED_MARGINS)
    fig.update_xaxes(**_FIXED_MARGINS)
    return fig


def token_heatmap(e: Explanation, title: str, vmin: float | None = None, vmax: float | None = None) -> go.Figure:
    z = np.asarray(e.tglu_attention, dtype=np.float32)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(len(e.mention_tokens))),
            y=list(range(len(e.entity_tokens))),
            colorscale="Inferno",
            zmin=vmin,
            zmax=vmax,
            customdata=[[f"{et} → {mt}" for mt in e.mention_tokens] for et in e.entity_tokens],
            hovertemplate="%{customdata}: %{z:.4f}<extra></extra>",
            colorbar=dict(title="attention" if e.kind == "attention" else "cosine"),
        )
    )
    fig.update_xaxes(
        tickmode="array",
        tickvals=list(range(len(e.mention_tokens))),
        ticktext=e.mention_tokens,
        tickangle=-60,
        title="mention tokens",
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(e.entity_tokens))),
        ticktext=e.entity_tokens,
        autorange="reversed",
        title="entity tokens",
        **_FIXED_MARGINS,
    )
    fig.update_xaxes(**_FIXED_MARGINS)
    fig.update_layout(
        title=title,
        height=max(320, 22 * len(e.entity_tokens) + 160),
        margin=_token_margins(e.entity_tokens, e.mention_tokens),
    )
    return fig


def token_highlights(e: Explanation) -> list[tuple[str, float]]:
    """Mention tokens with the mean attention (or similarity) they receive, scaled to [0, 1] for
    gr.HighlightedText's score mode."""
    z = np.asarray(e.tglu_attention, dtype=np.float32)
    if z.size == 0:
        return [(t, 0.0) for t in e.mention_tokens]
    col = z.mean(0)
    lo, hi = float(col.min()), float(col.max())
    scaled = (col - lo) / (hi - lo) if hi > lo else np.zeros_like(col)
    return [(t + " ", round(float(s), 4)) for t, s in zip(e.mention_tokens, scaled)]


def _colormap(x: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8."""
    pos = np.clip(x, 0, 1) * (len(_INFERNO) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    f = (pos - lo)[..., None]
    return (_INFERNO[lo] * (1 - f) + _INFERNO[hi] * f).astype(np.uint8)


def overlay(image_path: str, grid, vmin: float, vmax: float, alpha: float = 0.5, max_side: int = 384) -> Image.Image:
    """The patch grid upsampled (bilinear) over the image, coloured on the shared [vmin, vmax] scale."""
    src = Image.open(image_path)
    src.draft("RGB", (max_side, max_side))
    img = src.convert("RGB")
    img.thumbnail((max_side, max_side))
    g = np.asarray(grid, dtype=np.float32)
    span = (vmax - vmin) if vmax > vmin else 1.0
    norm = (g - vmin) / span
    heat = Image.fromarray((np.clip(norm, 0, 1) * 255).astype(np.uint8)).resize(img.size, Image.Resampling.BILINEAR)
    colored = Image.fromarray(_colormap(np.asarray(heat, dtype=np.float32) / 255.0))
    return Image.blend(img, colored, alpha)


def shared_range(values) -> tuple[float, float]:
    arr = [np.asarray(v, dtype=np.float32).ravel() for v in values if v is not None]
    arr = [a for a in arr if a.size]
    if not arr:
        return 0.0, 1.0
    allv = np.concatenate(arr)
    return float(allv.min()), float(allv.max())


# -- the session's first Inspect ---------------------------------------------------------------
# It cost 6-7 s on a loaded machine, two things that happen once: in the server, plotly builds its
# first figures (the validators of Bar, Heatmap and the layout load on first use: about 0.6 s of a
# CPU); in the browser, Gradio's Plot component imports plotly.js (a 4.6 MB module) when the first
# figure arrives. `prewarm` does the first in the background once the model has loaded; the page
# head from `plotly_preload_head` does the second while the page sits idle after loading.


def prewarm() -> list[str]:
    """Build and serialise one figure of each kind (what the first Inspect would pay for); -> their names."""
    e = Explanation(["a", "b"], ["c", "d", "e"], [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [[0.1, 0.2]], None)
    c = {"entity_id": "Q0", "name": "warm-up", "S": 0.5, "S_T": 0.1, "S_V": 0.2, "S_C": 0.3, "S_L": 0.1}
    built = []
    for zero in (False, True):
        if unit_bars(c, zero, unit_range([c], zero)).to_json():
            built.append("unit_bars" + (" (zero-shot)" if zero else ""))
    if token_heatmap(e, "warm-up", *shared_range([e.tglu_attention])).to_json():
        built.append("token_heatmap")
    if len(token_highlights(e)) == len(e.mention_tokens):
        built.append("token_highlights")
    return built


def _gradio_assets() -> Path | None:
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "templates" / "frontend" / "assets"


# drawn once off-screen after the import: plotly.js's first bar chart and heatmap in a page cost
# 150-250 ms each (its code's first run), paid here instead of by the first Inspect
_WARM_DRAW = """const draw = async () => {
  const P = window.Plotly;
  if (!P || !document.body) return;
  const d = document.createElement("div");
  d.style.cssText = "position:absolute;left:-10000px;top:0;width:900px;height:320px;visibility:hidden";
  document.body.appendChild(d);
  const ticks = {tickmode: "array", tickvals: [0, 1, 2], ticktext: ["a", "b", "c"]};
  try {
    await P.newPlot(d, [{type: "bar", x: ["S_T", "S_V", "S"], y: [0.2, 0.5, 0.7], text: ["0.2", "0.5", "0.7"],
      textposition: "outside", marker: {color: ["#4C78A8", "#F58518", "#333333"]}}],
      {title: {text: "warm-up"}, height: 320, yaxis: {range: [0, 1], title: {text: "score"}}});
    await P.react(d, [{type: "heatmap", z: [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], colorscale: "Inferno",
      colorbar: {title: {text: "attention"}}}], {title: {text: "warm-up"}, height: 320,
      xaxis: {...ticks, tickangle: -60, title: {text: "x"}}, yaxis: {...ticks, autorange: "reversed"}});
  } catch (e) {} finally { P.purge(d); d.remove(); }
};
"""


def plotly_preload_head(assets: Path | None = None) -> str:
    """A page-head script that imports Gradio's plotly.js chunk once the page is idle, so that the
    first plot finds it loaded (the Plot component's dynamic import resolves to the same module),
    then draws a small bar chart and heatmap off-screen and removes them (`_WARM_DRAW`). The chunk's
    name carries a build hash: it is looked up in the installed Gradio; "" when there is not exactly
    one (a Gradio without it: the first plot then loads it as before)."""
    folder = assets if assets is not None else _gradio_assets()
    found = sorted(folder.glob("PlotlyPlot-*.js")) if folder is not None and folder.is_dir() else []
    if len(found) != 1:
        return ""
    url = f"./assets/{found[0].name}"  # relative to the page's base, like Gradio's own assets
    return (
        '<script type="module">\n'
        + _WARM_DRAW
        + "const warm = () => import("
        + repr(url).replace("'", '"')
        + ").then(draw).catch(() => {});\n"
        'const idle = () => ("requestIdleCallback" in window ? requestIdleCallback(warm, {timeout: 3000})'
        " : setTimeout(warm, 1500));\n"
        'if (document.readyState === "complete") idle(); else window.addEventListener("load", idle);\n'
        "</script>\n"
    )
