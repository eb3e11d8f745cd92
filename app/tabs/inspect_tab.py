"""The Inspect tab: why a candidate of the last link scored as it did (unit scores, the token map,
the image maps), with the figure data to download. (Named inspect_tab: `inspect` is a standard
library module.)"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import gradio as gr

from mimic.serving.linker import Explanation, LinkInputError
from mimic.serving.service import safe_name

from .. import figures
from ..common import PRIVATE, Shared, UserError, message
from ..context import AppContext, resolve_image

log = logging.getLogger(__name__)


# -- handlers -------------------------------------------------------------------------------------
@dataclass
class InspectView:
    note: str
    bars: object  # plotly Figure: the unit scores
    heatmap: object  # plotly Figure: entity tokens x mention tokens
    tokens: list  # [(token, 0..1)] for gr.HighlightedText
    mention_overlay: object  # PIL image or None
    entity_overlay: object
    files: list[str]  # JSON figure data first, then the overlay PNGs
    data: dict


def inspect_candidate(
    ctx: AppContext, result: dict | None, image: str | None, entity_id: str | None, *, shared_scale: bool = True
) -> InspectView:
    """Everything the Inspect tab draws for one candidate of the last link result. Candidates outside
    the explained top 3 are explained on demand (and cached in `result`)."""
    if not result:
        raise UserError("link a mention first (Link tab), then pick a candidate here")
    cands = result["candidates"]
    c = next((x for x in cands if x["entity_id"] == entity_id), None)
    if c is None or entity_id is None:
        raise UserError(f"pick a candidate of the last link (got {entity_id!r})")
    if c.get("explanation") is None:
        try:
            e = ctx.service.explain(result["sentence"], (result["start"], result["end"]), entity_id, image)
        except LinkInputError as exc:
            raise UserError(f"cannot explain {entity_id}: {exc}") from None
        c["explanation"] = asdict(e)
    e = Explanation(**c["explanation"])
    zero = result.get("scoring") == "zero-shot"
    pool = [Explanation(**x["explanation"]) for x in cands if x.get("explanation")] if shared_scale else [e]
    tv = figures.shared_range([x.tglu_attention for x in pool])
    gv = figures.shared_range([g for x in pool for g in (x.cmfu_mention_grid, x.cmfu_entity_grid)])
    if e.kind == "similarity":
        title = "Backbone token similarity (zero-shot cosine, not TGLU attention)"
    else:
        title = "TGLU attention: entity tokens (queries) × mention tokens (keys), padding masked"
    tmp = Path(tempfile.mkdtemp(prefix="mimic-inspect-"))
    files, m_ov, e_ov = [], None, None
    if image and e.cmfu_mention_grid is not None:
        m_ov = figures.overlay(image, e.cmfu_mention_grid, *gv)
        m_ov.save(tmp / f"mention_overlay_{safe_name(entity_id)}.png")
        files.append(str(tmp / f"mention_overlay_{safe_name(entity_id)}.png"))
    ent_img = resolve_image((c.get("images") or [None])[0], ctx.config.data_dir)
    if ent_img and e.cmfu_entity_grid is not None:
        e_ov = figures.overlay(ent_img, e.cmfu_entity_grid, *gv)
        e_ov.save(tmp / f"entity_overlay_{safe_name(entity_id)}.png")
        files.append(str(tmp / f"entity_overlay_{safe_name(entity_id)}.png"))
    data = {
        "sentence": result["sentence"],
        "mention": result["mention"],
        "entity_id": entity_id,
        "name": c["name"],
        "scores": {k: c.get(k) for k in ("S", "S_T", "S_V", "S_C", "S_L", "margin")},
        "scoring": result.get("scoring"),
        "map_kind": e.kind,
        "token_map_range": list(tv),
        "patch_map_range": list(gv),
        **asdict(e),
    }
    jpath = tmp / f"inspect_{safe_name(entity_id)}.json"
    jpath.write_text(json.dumps(data, indent=1), encoding="utf-8")
    files.insert(0, str(jpath))
    img_note = (
        "CMFU text→patch attention"
        if e.kind == "attention"
        else "each region's cosine to the other image's mean region state (zero-shot)"
    )
    note = (
        f"**{c['name']}** `{entity_id}` · rank {c['rank']} · "
        + (
            "maps are backbone similarities (zero-shot), not model attention. "
            if zero
            else "attention shows where a unit looked, not why it decided (Jain & Wallace 2019); the unit scores are "
            "the primary explanation. "
        )
        + (
            f"Image maps: {img_note}; colour range {gv[0]:.3g} to {gv[1]:.3g}"
            + (" (shared by the explained candidates)." if shared_scale else " (this candidate).")
            if (m_ov is not None or e_ov is not None)
            else "No image map: the mention or the entity has no image."
        )
    )
    return InspectView(
        note,
        figures.unit_bars(c, zero, figures.unit_range(cands, zero)),
        figures.token_heatmap(e, title, *tv),
        figures.token_highlights(e),
        m_ov,
        e_ov,
        files,
        data,
    )


SCALES = ("shared across candidates", "this candidate only")


def view_key(result: dict | None, entity_id: str | None, scale: str | None) -> list | None:
    """What a drawn view shows: the link (its `link_id`, new for every link), the candidate and the
    colour scale. None when there is nothing to show."""
    if not result or entity_id is None:
        return None
    return [result.get("link_id"), entity_id, scale or SCALES[0]]


def view_outputs(ctx: AppContext, result: dict | None, image: str | None, entity_id: str | None, scale) -> tuple:
    """The values of `InspectTab.show_outputs` for one candidate of a link: the note, the figures,
    the downloads, then the view's key (`view_key`; None after an error, so the next look retries)."""
    try:
        v = inspect_candidate(ctx, result, image, entity_id, shared_scale=(scale or SCALES[0]).startswith("shared"))
    except UserError as exc:
        return (message(str(exc), "error"), None, None, [], None, None, None, None)
    key = view_key(result, entity_id, scale)
    return v.note, v.bars, v.heatmap, v.tokens, v.mention_overlay, v.entity_overlay, v.files, key


def refresh_outputs(
    ctx: AppContext, result: dict | None, image: str | None, entity_id: str | None, scale, drawn
) -> tuple:
    """When the Inspect tab is opened: the view of the latest link's selected candidate, unless it
    is already the one drawn (`drawn`, its key); then nothing changes."""
    key = view_key(result, entity_id, scale)
    if key is not None and key == drawn:
        return (gr.update(),) * 8
    if not result:
        return (message("Link a mention first (Link tab); its candidates are explained here."),) + (None,) * 7
    if entity_id is None:
        return (message("Pick a candidate above."),) + (None,) * 7
    return view_outputs(ctx, result, image, entity_id, scale)


def after_link_outputs(ctx: AppContext, result: dict | None, image: str | None, entity_id: str | None, scale) -> tuple:
    """After every link: the view of its top candidate (the picker's value), computed at once so that
    opening the tab only shows what is there (it is mounted with the page, hidden). It replaces the
    earlier link's figures in the same step; whatever goes wrong, they are taken away, never kept."""
    try:
        return refresh_outputs(ctx, result, image, entity_id, scale, None)
    except Exception:
        log.exception("Inspect view after a link")
        return (message("The link's view could not be drawn; pick a candidate above to retry.", "error"),) + (None,) * 7


# -- the tab --------------------------------------------------------------------------------------
class InspectTab:
    """The Inspect tab's components and events. `show` draws the picked candidate; the Link and
    Analysis tabs chain it after switching here (app/ui.py)."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        # the view of every link is drawn while the tab may be hidden (after its first opening it stays
        # mounted): studio.css lays a hidden Inspect tab out off-screen at its visible width, so that
        # plotly draws at the size it is shown at (it does not resize when a tab opens)
        with gr.Tab("Inspect", id="inspect", elem_id="tab_inspect") as self.tab:
            self.drawn = gr.State(None)  # view_key of the figures shown
            self.note = gr.Markdown(elem_id="inspect_note")
            with gr.Row():
                self.shared.candidate_picker.render()
                self.scale = gr.Radio(
                    list(SCALES),
                    value=SCALES[0],
                    label="Colour scale",
                    scale=2,
                    elem_id="inspect_scale",
                )
            self.bars = gr.Plot(label="Unit scores", elem_id="inspect_bars")
            self.heatmap = gr.Plot(label="Token map", elem_id="inspect_heatmap")
            self.tokens = gr.HighlightedText(
                label="Mention sentence coloured by the map (mean over entity tokens)",
                elem_id="inspect_tokens",
                combine_adjacent=False,
                show_legend=False,
            )
            with gr.Row():
                self.mention_overlay = gr.Image(
                    label="Mention image", interactive=False, elem_id="inspect_mention_overlay", type="pil", height=300
                )
                self.entity_overlay = gr.Image(
                    label="Entity image", interactive=False, elem_id="inspect_entity_overlay", type="pil", height=300
                )
            self.files = gr.File(
                label="Downloads: figure data (JSON) and overlays (PNG)",
                file_count="multiple",
                elem_id="inspect_downloads",
            )

    @property
    def show_inputs(self) -> list:
        s = self.shared
        return [s.link_state, s.link_image_state, s.candidate_picker, self.scale]

    @property
    def show_outputs(self) -> list:
        return [
            self.note,
            self.bars,
            self.heatmap,
            self.tokens,
            self.mention_overlay,
            self.entity_overlay,
            self.files,
            self.drawn,
        ]

    def _wire(self):
        # .input (user choices only): a new link sets the dropdown and app/ui.py chains `after_link`
        # (the view of its top candidate, drawn into the hidden tab); opening the tab draws only what
        # is not drawn yet (an error, or a state changed elsewhere), without a progress overlay
        inference = self.shared.inference
        gr.on(
            [self.shared.candidate_picker.input, self.scale.input],
            self.show,
            self.show_inputs,
            self.show_outputs,
            **inference,
            **PRIVATE,
        )
        self.tab.select(
            self.refresh,
            self.show_inputs + [self.drawn],
            self.show_outputs,
            show_progress="hidden",
            **inference,
            **PRIVATE,
        )

    def show(self, result, image, entity_id, scale):
        """-> the values of `show_outputs`."""
        return view_outputs(self.ctx, result, image, entity_id, scale)

    def refresh(self, result, image, entity_id, scale, drawn):
        return refresh_outputs(self.ctx, result, image, entity_id, scale, drawn)

    def after_link(self, result, image, entity_id, scale):
        return after_link_outputs(self.ctx, result, image, entity_id, scale)


def build(ctx: AppContext, shared: Shared) -> InspectTab:
    return InspectTab(ctx, shared)
