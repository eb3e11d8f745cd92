"""The Link tab: rank the KB entities for a mention (typed, or selected in the sentence) and save the
user's decision as an annotation."""

from __future__ import annotations

import html
import time
import uuid
from pathlib import Path

import gradio as gr

from mimic.serving.linker import LinkInputError, LinkResult

from ..common import (
    CANDIDATE_COLUMNS,
    NIL,
    PRIVATE,
    Shared,
    UserError,
    candidate_gallery,
    candidates_table,
    candidates_view,
    decision_choices,
    message,
    parse_choice,
    public_path,
    rounded,
    scrub_paths,
    user_errors,
    username_of,
)
from ..context import AppContext, candidates_for_store


# -- handlers -------------------------------------------------------------------------------------
@user_errors
def link(ctx: AppContext, image: str | None, sentence: str, mention, top_k: int | None = None) -> LinkResult:
    """Rank KB entities for the mention. `mention` is its text or a (start, end) span."""
    if isinstance(mention, str) and not mention.strip() and isinstance(sentence, str) and sentence.strip():
        raise UserError("mark the mention: type it (it must occur in the sentence) or select it in the sentence")
    try:
        return ctx.service.link(sentence, mention, image or None, top_k=top_k or ctx.config.top_k, explain=True)
    except LinkInputError as exc:
        msg = str(exc)
        if isinstance(image, str) and image:
            msg = msg.replace(image, Path(image).name)  # no server paths in messages
        raise UserError(scrub_paths(msg)) from None


def link_state(result: LinkResult) -> dict:
    """The link result as the tabs keep it (`Shared.link_state`): its dict plus `link_id`, new for
    every link, by which Inspect tells figures of an earlier link from the latest one's."""
    d = result.to_dict()
    d["link_id"] = uuid.uuid4().hex
    return d


def result_json(ctx: AppContext, result: LinkResult) -> dict:
    """The /link API answer: ranked candidates with unit scores (explanations left out). Paths
    (the model's checkpoint and index, entity images) are shown relative or by name only."""
    d = result.to_dict()
    for c in d["candidates"]:
        c.pop("explanation", None)
        for k in ("S", "S_T", "S_V", "S_C", "S_L", "margin"):
            c[k] = rounded(c.get(k), 6)
        c["images"] = [public_path(p) for p in c.get("images") or []]
    model = ctx.service.describe()
    for k in ("checkpoint", "index"):
        model[k] = public_path(model.get(k))
    d["model"] = model
    return d


@user_errors
def save_link(
    ctx: AppContext,
    username: str | None,
    result: dict,
    choice: str | None,
    *,
    image: str | None = None,
    request_id: str | None = None,
    seconds_spent: float | None = None,
):
    """Store the linked mention, the model's prediction and the user's decision (one annotation)."""
    annotator = ctx.require("annotate", username)
    if not result:
        raise UserError("link a mention first")
    decision, entity_id = parse_choice(choice)
    m = ctx.store.add_mention(
        result["sentence"], result["mention"], result["start"], result["end"], image=image or None, source="link"
    )
    pred = (
        ctx.store.add_prediction(m.id, ctx.service.served.version, candidates_for_store(result["candidates"]))
        if result["candidates"]
        else None
    )
    return ctx.store.submit(
        annotator,
        m.id,
        decision,
        entity_id,
        prediction_id=pred.id if pred else None,
        request_id=request_id or uuid.uuid4().hex,
        seconds_spent=seconds_spent,
    )


def describe_candidates(cands: list[dict]) -> str:
    lines = []
    for c in cands:
        d = html.escape((c.get("description") or "").strip())
        lines.append(f"**{c['rank']}. {html.escape(c['name'])}** `{c['entity_id']}` — {d}")
    return "\n\n".join(lines) or "_no candidates_"


# -- the tab --------------------------------------------------------------------------------------
class MentionImage(gr.Image):
    """gr.Image that hands the uploaded file's path to the handler without opening it first, so a
    corrupt or oversized upload reaches the linker's validation and gets its clear message."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None) and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


class LinkTab:
    """The Link tab's components and events. `do_link` is the one link event (button, Enter in the
    sentence or the mention); the Analysis tab reuses it to open a mention."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        examples = [[m.image, m.sentence, m.mention] for m in self.ctx.examples[:16]]
        with gr.Tab("Link", id="link", elem_id="tab_link"):
            with gr.Row():
                with gr.Column(scale=1):
                    self.image = MentionImage(
                        type="filepath",
                        sources=["upload", "clipboard"],
                        label="Image (optional)",
                        elem_id="link_image",
                        height=260,
                    )
                with gr.Column(scale=2):
                    self.sentence = gr.Textbox(
                        label="Sentence",
                        lines=3,
                        elem_id="link_sentence",
                        placeholder="Type a sentence, then type or select the mention in it",
                    )
                    self.mention = gr.Textbox(
                        label="Mention (type it, or select it in the sentence)", elem_id="link_mention"
                    )
                    self.button = gr.Button("Link", variant="primary", elem_id="link_btn")
            self.status = gr.Markdown(elem_id="link_status")
            self.table = gr.Dataframe(
                headers=CANDIDATE_COLUMNS, interactive=False, elem_id="link_candidates", label="Ranked candidates"
            )
            self.columns_note = gr.Markdown(elem_id="link_columns_note")  # the columns hidden, and why
            with gr.Row():
                self.gallery = gr.Gallery(label="Candidate images", columns=5, height=220, elem_id="link_gallery")
                self.descriptions = gr.Markdown(elem_id="link_descriptions")
            self.choice = gr.Radio(label="Your decision", choices=[], elem_id="link_choice")
            with gr.Row():
                self.save_button = gr.Button("Save annotation", variant="primary", elem_id="link_save")
                self.inspect_button = gr.Button("Inspect the top candidate →", elem_id="link_inspect")
            self.saved = gr.Markdown(elem_id="link_saved")
            if examples:
                gr.Examples(
                    examples=examples,
                    inputs=[self.image, self.sentence, self.mention],
                    label="Examples from the demo KB",
                    examples_per_page=8,
                )
            self.span = gr.State(None)  # (start, end) selected in the sentence, or None

    @property
    def link_outputs(self) -> list:
        s = self.shared
        return [
            s.link_state,
            s.link_image_state,
            self.status,
            self.table,
            self.gallery,
            self.descriptions,
            self.choice,
            s.candidate_picker,
            self.saved,
            self.columns_note,
        ]

    def _wire(self):
        s = self.shared
        self.link_event = gr.on(  # app/ui.py chains Inspect's reset after it
            [self.button.click, self.sentence.submit, self.mention.submit],
            self.do_link,
            [self.image, self.sentence, self.mention, self.span],
            self.link_outputs,
            **s.inference,
            **PRIVATE,
        )
        self.sentence.select(self.select_span, self.sentence, [self.mention, self.span], **PRIVATE)
        self.mention.input(lambda: None, None, self.span, **PRIVATE)  # typing a mention drops a selected span
        self.save_button.click(
            self.save, [s.link_state, s.link_image_state, self.choice], self.saved, **s.db_queue, **PRIVATE
        )

    def do_link(self, image, sentence, mention, span):
        """-> the values of `link_outputs`."""
        t0 = time.perf_counter()
        target = mention
        if span and isinstance(sentence, str) and sentence[span[0] : span[1]] == (mention or ""):
            target = tuple(span)
        try:
            r = link(self.ctx, image, sentence, target)
        except UserError as exc:
            return (
                None,
                None,
                message(str(exc), "error"),
                candidates_table(None),
                [],
                "",
                gr.update(choices=[], value=None),
                gr.update(choices=[], value=None),
                "",
                "",
            )
        d = link_state(r)
        cands = d["candidates"]
        ms = (time.perf_counter() - t0) * 1000
        status = (
            f"{len(cands)} candidates for **{html.escape(r.mention)}** from a shortlist of "
            f"{r.shortlist_size} ({ms:.0f} ms)"
            + (" · scoring: zero-shot similarities" if r.scoring == "zero-shot" else "")
            + (" · **NIL suggested** (top score below the threshold)" if r.nil else "")
        )
        pre = NIL if r.nil else (cands[0]["entity_id"] if cands else None)
        insp = [(f"{c['rank']}. {c['name']} ({c['entity_id']})", c["entity_id"]) for c in cands]
        table, columns_note = candidates_view(d)
        return (
            d,
            image,
            message(status, "ok"),
            table,
            candidate_gallery(self.ctx, cands),
            describe_candidates(cands[:5]),
            gr.update(choices=decision_choices(cands), value=pre),
            gr.update(choices=insp, value=cands[0]["entity_id"] if cands else None),
            "",
            columns_note,
        )

    @staticmethod
    def select_span(sentence, evt: gr.SelectData):
        """A selection inside the sentence marks the mention. Selecting the whole text is how
        people replace it (select all, type), so that never marks anything."""
        idx = evt.index
        if (
            isinstance(idx, (list, tuple))
            and len(idx) == 2
            and idx[1] > idx[0]
            and (idx[1] - idx[0]) < len(sentence or "")
            and (evt.value or "").strip()
        ):
            return evt.value, [int(idx[0]), int(idx[1])]
        return gr.update(), gr.update()

    def save(self, result, image, choice, request: gr.Request):
        try:
            rec = save_link(self.ctx, username_of(request), result, choice, image=image)
        except UserError as exc:
            return message(str(exc), "error")
        what = {"entity": f"entity {rec.entity_id}", "nil": "NIL", "ambiguous": "ambiguous"}[rec.decision]
        return message(
            f"Saved annotation #{rec.id} ({what}) by {rec.annotator}" + (" (already saved)" if rec.duplicate else ""),
            "ok",
        )


def build(ctx: AppContext, shared: Shared) -> LinkTab:
    return LinkTab(ctx, shared)
