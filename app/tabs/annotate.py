"""The Annotate tab: work through your queue of mentions (keys 1–9, 0/N, A, Enter, S, Z; ←/→ walk
your history), with the model's candidates pre-ranked and a KB search for entities outside them."""

from __future__ import annotations

import html
import time
import uuid

import gradio as gr

from ..common import (
    AMBIGUOUS,
    CANDIDATE_COLUMNS,
    DECISIONS,
    NIL,
    PRIVATE,
    Shared,
    UserError,
    candidate_gallery,
    candidates_table,
    candidates_view,
    choice_value,
    decision_choices,
    message,
    parse_choice,
    rounded,
    user_errors,
    username_of,
)
from ..context import AppContext
from .knowledge_base import search_kb


# -- handlers -------------------------------------------------------------------------------------
@user_errors
def next_item(ctx: AppContext, username: str | None):
    """The annotator's current item (leased; asking again returns the same one) or None."""
    return ctx.store.next_item(ctx.require("annotate", username))


@user_errors
def get_item(ctx: AppContext, mention_id: int):
    """A mention with its latest prediction (for ←/→ navigation and restoring after a reload)."""
    m = ctx.store.get_mention(mention_id)
    preds = ctx.store.predictions(mention_id)
    return m, (preds[0] if preds else None)


@user_errors
def annotate(
    ctx: AppContext,
    username: str | None,
    mention_id: int,
    choice: str | None,
    *,
    seconds_spent: float | None = None,
    request_id: str | None = None,
):
    """Store a decision for a queued mention. Returns the AnnotationRecord."""
    decision, entity_id = parse_choice(choice)
    return ctx.store.submit(
        ctx.require("annotate", username),
        mention_id,
        decision,
        entity_id,
        seconds_spent=seconds_spent,
        request_id=request_id or uuid.uuid4().hex,
    )


@user_errors
@user_errors
def annotate_api(
    ctx: AppContext,
    username: str | None,
    mention_id,
    decision: str,
    entity_id: str | None,
    annotator: str | None = None,
    request_id: str | None = None,
) -> int:
    """/annotate: decision is entity | nil | ambiguous | skip. Returns the stored annotation id.

    request_id: optional client-chosen id that makes the call idempotent: sending the same id again
    (a retry after a cut connection) returns the annotation stored the first time and stores nothing;
    the same id with a different submission is refused. Without one, every call is a new request."""
    name = ctx.require("annotate", username)
    if annotator and annotator != name:
        raise UserError(f"signed in as {name!r}: cannot store annotations for {annotator!r}")
    if decision not in DECISIONS + ("skip",):
        raise UserError(f"decision must be one of entity, nil, ambiguous, skip (got {decision!r})")
    mid: int | str
    try:
        mid = int(mention_id)
    except (TypeError, ValueError):
        mid = str(mention_id)
    rec = ctx.store.submit(name, mid, decision, entity_id or None, request_id=request_id or uuid.uuid4().hex)
    return rec.id


@user_errors
def skip(ctx: AppContext, username: str | None, mention_id: int):
    return ctx.store.skip(ctx.require("annotate", username), mention_id, request_id=uuid.uuid4().hex)


@user_errors
def undo(ctx: AppContext, username: str | None):
    """Undo the annotator's last decision; returns the undone AnnotationRecord or None."""
    return ctx.store.undo(ctx.require("annotate", username), request_id=uuid.uuid4().hex)


@user_errors
def annotator_counts(ctx: AppContext, username: str | None) -> dict:
    name = ctx.annotator(username)
    prog = {p.annotator: p for p in ctx.store.progress(name)}.get(name)
    ov = ctx.store.overview()
    out = {
        "annotator": name,
        "decided": 0,
        "entity": 0,
        "nil": 0,
        "ambiguous": 0,
        "skipped": 0,
        "items_per_hour": None,
        "pending_for_you": ctx.store.queue_size(name),
        "mentions": ov["mentions"],
        "complete": ov["complete"],
    }
    if prog:
        out.update(
            decided=prog.decided,
            entity=prog.entity,
            nil=prog.nil,
            ambiguous=prog.ambiguous,
            skipped=prog.skipped,
            items_per_hour=rounded(prog.items_per_hour, 1),
        )
    return out


@user_errors
def history(ctx: AppContext, username: str | None, limit: int = 50) -> list:
    return ctx.store.annotator_history(ctx.annotator(username), limit=limit)


def progress_html(c: dict | None) -> str:
    if not c:
        return ""
    total = max(1, c["mentions"])
    pct = 100.0 * c["complete"] / total
    rate = f" · {c['items_per_hour']} items/h" if c.get("items_per_hour") else ""
    return (
        f"<div class='annot-progress'><div class='bar'><div class='fill' style='width:{pct:.1f}%'></div></div>"
        f"<div class='counts'>{c['complete']}/{c['mentions']} mentions complete · you: {c['decided']} decided "
        f"({c['entity']} entity, {c['nil']} NIL, {c['ambiguous']} ambiguous), {c['skipped']} skipped · "
        f"{c['pending_for_you']} pending for you{rate}</div></div>"
    )


# -- the tab --------------------------------------------------------------------------------------
class AnnotateTab:
    """The Annotate tab's components and events. `cur` (a gr.State) is the item on screen:
    {"mention_id", "shown_at", "hist"}, hist -1 for the queue, k >= 0 for the k-th newest decision;
    `position` keeps the mention id and hist in the browser so a reload comes back to it."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Annotate", id="annotate", elem_id="tab_annotate"):
            with gr.Column(elem_id="annot_panel"):
                self.progress = gr.HTML(elem_id="annot_progress")
                self.msg = gr.Markdown(elem_id="annot_msg")
                with gr.Row():
                    with gr.Column(scale=2):
                        self.item = gr.HTML(elem_id="annot_item")
                        self.table = gr.Dataframe(
                            headers=CANDIDATE_COLUMNS,
                            interactive=False,
                            label="Model candidates",
                            elem_id="annot_candidates",
                        )
                        self.columns_note = gr.Markdown(elem_id="annot_columns_note")  # hidden columns, and why
                    with gr.Column(scale=1):
                        self.image = gr.Image(
                            label="Mention image", interactive=False, height=220, elem_id="annot_image"
                        )
                        self.gallery = gr.Gallery(
                            label="Candidate images", columns=3, height=240, elem_id="annot_gallery"
                        )
                self.choice = gr.Radio(
                    label="Decision (keys 1–9, 0/N NIL, A ambiguous)", choices=[], elem_id="annot_choice"
                )
                with gr.Row():
                    self.prev_button = gr.Button("← Previous", elem_id="annot_prev", size="sm")
                    self.submit_button = gr.Button("Submit (Enter)", variant="primary", elem_id="annot_submit")
                    self.skip_button = gr.Button("Skip (S)", elem_id="annot_skip")
                    self.undo_button = gr.Button("Undo (Z)", elem_id="annot_undo")
                    self.next_button = gr.Button("Next →", elem_id="annot_next", size="sm")
                with gr.Row():
                    self.search = gr.Textbox(
                        label="Search the KB for an entity not in the shortlist", scale=3, elem_id="annot_search"
                    )
                    self.search_button = gr.Button("Search", scale=1, elem_id="annot_search_btn")
                self.found = gr.Radio(
                    label="Search results (pick one to use it as the decision)", choices=[], elem_id="annot_found"
                )
            self.cur = gr.State(None)
            self.position = gr.BrowserState({"mention_id": None, "hist": -1}, storage_key="mimic_annotate_position")

    @property
    def item_outputs(self) -> list:
        """What `render_item`/`show_item` return values for."""
        return [
            self.progress,
            self.msg,
            self.item,
            self.table,
            self.image,
            self.gallery,
            self.choice,
            self.cur,
            self.position,
            self.columns_note,
        ]

    def _wire(self):
        db_queue, out = self.shared.db_queue, self.item_outputs
        self.submit_button.click(self.on_submit, [self.cur, self.choice], out, **db_queue, **PRIVATE)
        self.skip_button.click(self.on_skip, [self.cur], out, **db_queue, **PRIVATE)
        self.undo_button.click(self.on_undo, [self.cur], out, **db_queue, **PRIVATE)
        self.prev_button.click(self.go_prev, [self.cur], out, **PRIVATE)
        self.next_button.click(self.go_next, [self.cur], out, **PRIVATE)
        gr.on([self.search_button.click, self.search.submit], self.on_search, self.search, self.found, **PRIVATE)
        self.found.select(self.use_found, self.found, self.choice, **PRIVATE)

    def render_item(self, m, pred, note: str, cur: dict, request) -> tuple:
        ctx, name = self.ctx, username_of(request)
        try:
            counts = annotator_counts(ctx, name)
        except UserError:
            counts = None
        prog = progress_html(counts)
        if m is None:
            return (
                prog,
                note or message("Nothing pending in your queue: every mention is decided.", "ok"),
                "<p>Queue empty.</p>",
                candidates_table(None),
                None,
                [],
                gr.update(choices=[], value=None),
                cur,
                cur,
                "",
            )
        cands = [
            {
                "rank": c.rank + 1,
                "entity_id": c.entity_id,
                "name": c.entity_name,
                "S": c.s,
                "S_T": c.s_t,
                "S_V": c.s_v,
                "S_C": c.s_c,
                "margin": None,
                "retrievers": [],
            }
            for c in (pred.candidates if pred else [])
        ]
        for i in range(len(cands) - 1):
            cands[i]["margin"] = cands[i]["S"] - cands[i + 1]["S"]
        table, columns_note = candidates_view({"candidates": cands})
        current = None
        hist_dec = {
            a.mention_id: a
            for a in (history(ctx, name, 200) if ctx.can_write(name) else [])
            if a.status == "current" and a.decision != "skip"
        }
        prior = hist_dec.get(m.id)
        if prior:
            current = choice_value(prior.decision, prior.entity_id)
            what = prior.decision + (f" {prior.entity_id}" if prior.entity_id else "")
            note = note or message(f"Already decided ({what}); submitting again replaces that decision.", "info")
        elif cands:
            current = cands[0]["entity_id"]  # the model's suggestion, pre-selected
        item_html = (
            f"<div class='mention-item' data-mention-id='{m.id}'><p style='font-size:1.2em'>{m.html()}</p>"
            f"<p><small>mention #{m.id} · {html.escape(m.source or '')}"
            + (f" · margin {m.margin:.4f}" if m.margin is not None else "")
            + "</small></p></div>"
        )
        cur = {**cur, "mention_id": m.id, "shown_at": time.time()}
        for c in cands:
            rec = ctx.service.entity(c["entity_id"])
            c["images"] = rec.get("images", []) if rec else []
        return (
            prog,
            note,
            item_html,
            table,
            m.image_path,
            candidate_gallery(ctx, cands),
            gr.update(choices=decision_choices(cands), value=current),
            cur,
            {"mention_id": m.id, "hist": cur.get("hist", -1)},
            columns_note,
        )

    def show_item(self, pos, request: gr.Request, note: str = ""):
        """The item at `pos` (a history position), else the next one of the queue."""
        name = username_of(request)
        if not self.ctx.can_write(name):
            return self.render_item(None, None, message("Sign in to annotate.", "error"), {"hist": -1}, request)
        pos = pos or {}
        try:
            mid = pos.get("mention_id")
            if mid is not None and pos.get("hist", -1) >= 0:
                m, pred = get_item(self.ctx, mid)
                return self.render_item(m, pred, note, {"hist": pos["hist"]}, request)
            item = next_item(self.ctx, name)
        except UserError as exc:
            return self.render_item(None, None, message(str(exc), "error"), {"hist": -1}, request)
        if item is None:
            return self.render_item(None, None, note, {"hist": -1}, request)
        return self.render_item(item.mention, item.prediction, note, {"hist": -1}, request)

    def on_submit(self, cur, choice, request: gr.Request):
        cur = cur or {}
        if cur.get("mention_id") is None:
            return self.show_item(None, request, message("nothing to submit", "error"))
        try:
            rec = annotate(
                self.ctx,
                username_of(request),
                cur["mention_id"],
                choice,
                seconds_spent=max(0.0, time.time() - cur.get("shown_at", time.time())),
            )
        except UserError as exc:
            return self.show_item(
                {"mention_id": cur["mention_id"], "hist": cur.get("hist", -1)}, request, message(str(exc), "error")
            )
        what = rec.entity_id if rec.decision == "entity" else rec.decision
        note = message(f"Saved #{rec.id}: mention {rec.mention_id} → {what}", "ok")
        if cur.get("hist", -1) >= 0:  # re-decided an earlier item: go one step newer
            return self.step(cur, -1, request, note)
        return self.show_item({"hist": -1}, request, note)

    def on_skip(self, cur, request: gr.Request):
        cur = cur or {}
        if cur.get("mention_id") is None:
            return self.show_item(None, request)
        try:
            skip(self.ctx, username_of(request), cur["mention_id"])
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"))
        return self.show_item(
            {"hist": -1},
            request,
            message(f"Skipped mention {cur['mention_id']}: it comes back at the end of your queue", "info"),
        )

    def on_undo(self, cur, request: gr.Request):
        try:
            rec = undo(self.ctx, username_of(request))
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"))
        if rec is None:
            return self.show_item({"hist": -1}, request, message("nothing to undo", "info"))
        # show the mention whose decision was undone, so it can be decided again
        try:
            self.ctx.store.release(self.ctx.require("annotate", username_of(request)))
        except Exception:
            pass
        m, pred = get_item(self.ctx, rec.mention_id)
        return self.render_item(
            m,
            pred,
            message(f"Undid #{rec.id} ({rec.decision}) on mention {rec.mention_id}", "ok"),
            {"hist": -1},
            request,
        )

    def step(self, cur, delta: int, request: gr.Request, note: str = ""):
        """delta +1: one item back in your history (←); -1: one item forward (→)."""
        cur = cur or {"hist": -1}
        name = username_of(request)
        try:
            hist = [a for a in history(self.ctx, name, 200) if a.decision != "skip"]
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"))
        seen, mids = set(), []
        for a in hist:  # newest first, one entry per mention
            if a.mention_id not in seen:
                seen.add(a.mention_id)
                mids.append(a.mention_id)
        k = cur.get("hist", -1) + delta
        if k < 0 or not mids:
            return self.show_item({"hist": -1}, request, note)
        k = min(k, len(mids) - 1)
        m, pred = get_item(self.ctx, mids[k])
        return self.render_item(
            m, pred, note or message(f"History item {k + 1} of {len(mids)}", "info"), {"hist": k}, request
        )

    def go_prev(self, cur, request: gr.Request):
        return self.step(cur, +1, request)

    def go_next(self, cur, request: gr.Request):
        return self.step(cur, -1, request)

    def on_search(self, query):
        try:
            recs = search_kb(self.ctx, query, limit=20)
        except UserError as exc:
            return gr.update(choices=[], value=None, label=str(exc))
        return gr.update(
            choices=[(f"{r.name} ({r.id}) — {r.text[:80]}", r.id) for r in recs],
            value=None,
            label=f"{len(recs)} result(s): pick one to use it as the decision",
        )

    @staticmethod
    def use_found(found):
        return gr.update(
            choices=[(f"search · {found}", found), ("0 / N · NIL: not in the list", NIL), ("A · ambiguous", AMBIGUOUS)],
            value=found,
        )


def build(ctx: AppContext, shared: Shared) -> AnnotateTab:
    return AnnotateTab(ctx, shared)
