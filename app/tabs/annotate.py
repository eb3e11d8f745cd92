"""The Annotate tab: work through your queue of mentions as a card list (one card per candidate:
name, description, aliases, image, unit scores, key). Keys act in the browser (1–9 and 0 decide at
once, N NIL, A ambiguous, Enter the highlighted card, S skip, Z undo, ←/→ history, M a missed
mention, ? help): the next item is prefetched, the server write does not block it. A comment and a
flag go with the decision; a KB search finds entities outside the shortlist. A project picker at the
top restricts the queue to one project (or "all": every active project) and shows that project's
guidelines one click away; the choice stays for the browser session.

Rendering: `annotate_cards.py`; the browser side: `app/static/keyboard.html`."""

from __future__ import annotations

import logging
import uuid
from html import escape

import gradio as gr

from db.projects import DEFAULT_PROJECT

from ..common import (
    DECISIONS,
    PRIVATE,
    Shared,
    UserError,
    browser_state,
    choice_value,
    message,
    parse_choice,
    progress_bar_html,
    rounded,
    user_errors,
    username_of,
)
from ..context import AppContext, WriteDenied, candidates_for_store
from .annotate_cards import help_html, item_view, parse_action, payload_html
from .knowledge_base import search_kb
from .projects import guidelines_markdown

log = logging.getLogger("mimic.app")
PREFETCH = 3  # items sent ahead of the one on screen: a key never waits for the server
LOOKAHEAD = PREFETCH + 5  # how far into the queue a decided queue item is looked for (check_still_pending)
ALL_PROJECTS = "all"  # the picker's value for every active project's queue (the store's project=None)


def project_scope(project: str | None) -> str | None:
    """The store's `project=` for the picker's value: None ("all", empty) serves every active project."""
    return None if project in (None, "", ALL_PROJECTS) else project


@user_errors
def project_choices(ctx: AppContext, username: str | None) -> list[str]:
    """The picker's choices: "all", the active projects, then the built-in default project."""
    ctx.require("project_view", username)
    names = [p.name for p in ctx.store.list_projects(include_archived=False)]
    return [ALL_PROJECTS, *names, DEFAULT_PROJECT]


def project_guidelines(ctx: AppContext, username: str | None, project: str | None) -> str:
    """What the Guidelines accordion shows for the picker's value (nothing for visitors)."""
    try:
        ctx.require("project_view", username)
    except (UserError, WriteDenied):
        return ""
    if project_scope(project) is None:
        return '_Pick a project above to see its guidelines ("all" serves every active project\'s queue)._'
    return guidelines_markdown(ctx, project)


# -- handlers -------------------------------------------------------------------------------------
@user_errors
def next_item(ctx: AppContext, username: str | None, project: str | None = None):
    """The annotator's current item (leased; asking again returns the same one) or None; `project`
    (a name, "default", or "all"/None) restricts the queue to that project."""
    return ctx.store.next_item(ctx.require("annotate", username), project=project_scope(project))


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
    comment: str | None = None,
    flag: str | None = None,
):
    """Store a decision for a queued mention, with an optional comment and flag (one of
    db.annotations.FLAGS, for the reviewers). Returns the AnnotationRecord."""
    decision, entity_id = parse_choice(choice)
    return ctx.store.submit(
        ctx.require("annotate", username),
        mention_id,
        decision,
        entity_id,
        seconds_spent=seconds_spent,
        request_id=request_id or uuid.uuid4().hex,
        comment=comment or None,
        flag=flag or None,
    )


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
def add_missed_mention(ctx: AppContext, username: str | None, mention_id: int, start: int, end: int):
    """A span of the mention's sentence that the corpus missed, stored as a new mention (same
    sentence, image and source) with the serving model's candidates, so it joins the queue.
    Returns (MentionRecord, linked): linked is False when the model could not rank it (it is queued
    without candidates then)."""
    ctx.require("annotate", username)
    m = ctx.store.get_mention(mention_id)
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(m.sentence)):
        raise UserError(f"span {start}..{end} is outside the sentence (length {len(m.sentence)}) or empty")
    if not m.sentence[start:end].strip():
        raise UserError("the selected span is only spaces")
    same = [o for o in [m, *ctx.store.peek_sentence_mentions(m.id)] if (o.start, o.end) == (start, end)]
    if same:
        raise UserError(f"{m.sentence[start:end]!r} is already mention #{same[0].id}")
    new = ctx.store.add_mention(m.sentence, None, start, end, image=m.image_path, source=m.source)
    try:
        r = ctx.service.link(m.sentence, (start, end), m.image_path, top_k=ctx.config.top_k, explain=False)
    except Exception:  # the mention is stored: it waits in the queue without candidates
        log.warning("missed span %s of mention %s stored, but the model could not rank it", new.id, m.id, exc_info=True)
        return new, False
    if r.candidates:
        ctx.store.add_prediction(new.id, ctx.service.served.version, candidates_for_store(r.candidates))
    return new, bool(r.candidates)


@user_errors
def prefetch(
    ctx: AppContext, username: str | None, current: int | None, n: int = PREFETCH, project: str | None = None
) -> list:
    """The next `n` items of the annotator's queue after `current`, as (mention, prediction, others)
    without leasing them (`peek_queue`): the browser shows them at once after a decision, and the
    server's answer to that decision leases the item (the lease decides if another annotator took
    it meanwhile)."""
    name = ctx.require("annotate", username)
    out: list[tuple] = []
    for m in ctx.store.peek_queue(name, n + 1, project=project_scope(project)):
        if m.id == current or len(out) >= n:
            continue
        preds = ctx.store.predictions(m.id)
        out.append((m, preds[0] if preds else None, ctx.store.peek_sentence_mentions(m.id)))
    return out


@user_errors
def check_still_pending(ctx: AppContext, username: str | None, mention_id: int, project: str | None = None) -> None:
    """UserError unless `mention_id` is still pending for the annotator: a prefetched item is shown
    without a lease, so by the time a key decides it another annotator may hold its lease or have
    decided it. Only the next LOOKAHEAD items are looked at: the browser shows the leased item or one
    of the next PREFETCH, so a pending one is among them unless many items jumped ahead meanwhile."""
    name = ctx.require("annotate", username)
    if mention_id not in {m.id for m in ctx.store.peek_queue(name, LOOKAHEAD, project=project_scope(project))}:
        raise UserError(
            f"mention {mention_id} is no longer pending for you (another annotator holds or decided it, "
            "or you did already): here is your next item"
        )


@user_errors
def annotator_counts(ctx: AppContext, username: str | None, project: str | None = None) -> dict:
    """The annotator's counts; pending, mentions and complete are the project's when one is picked."""
    name = ctx.annotator(username)
    prog = {p.annotator: p for p in ctx.store.progress(name)}.get(name)
    scope = project_scope(project)
    ov = ctx.store.overview() if scope is None else ctx.store.project_progress(scope)
    out = {
        "annotator": name,
        "decided": 0,
        "entity": 0,
        "nil": 0,
        "ambiguous": 0,
        "skipped": 0,
        "items_per_hour": None,
        "pending_for_you": ctx.store.queue_size(name, project=scope),
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
    rate = f" · {c['items_per_hour']} items/h" if c.get("items_per_hour") else ""
    return progress_bar_html(
        c["complete"] / max(1, c["mentions"]),
        f"{c['complete']}/{c['mentions']} mentions complete · you: {c['decided']} decided "
        f"({c['entity']} entity, {c['nil']} NIL, {c['ambiguous']} ambiguous), {c['skipped']} skipped · "
        f"{c['pending_for_you']} pending for you{rate}",
    )


# -- the tab --------------------------------------------------------------------------------------
VIEW_HTML = (
    "<div id='annot_view' class='annot-view'><p class='annot-waiting'>Loading your queue…</p></div>"
    "<div id='annot_local' class='annot-local'></div>" + help_html()
)


class AnnotateTab:
    """The Annotate tab's components and events. The item on screen is drawn in the browser
    (`view`, never updated by the server) from the payload that every handler writes into `data`
    (hidden); the browser sends decisions as JSON through `action` + `send_button` (hidden). `cur`
    (a gr.State) is what the server last showed: {"mention_id", "hist"}, hist -1 for the queue, k >= 0
    for the k-th newest decision; `position` keeps it in the browser so a reload comes back to it.
    `project` (the picker, a per-session value) goes into every queue event: the queue, the prefetched
    items and the counts are that project's."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Annotate", id="annotate", elem_id="tab_annotate"):
            with gr.Row(elem_id="annot_project_row"):
                self.project = gr.Dropdown(
                    label="Project (its queue only; all: every active project)",
                    choices=self._choices(None),
                    value=ALL_PROJECTS,
                    scale=3,
                    elem_id="annot_project",
                )
                self.project_refresh = gr.Button(
                    "Refresh projects", size="sm", scale=1, elem_id="annot_project_refresh"
                )
            with gr.Accordion("Guidelines of this project", open=False, elem_id="annot_guidelines_box"):
                self.guidelines = gr.Markdown(elem_id="annot_guidelines")
            with gr.Column(elem_id="annot_panel"):
                self.progress = gr.HTML(elem_id="annot_progress")
                self.msg = gr.Markdown(elem_id="annot_msg")
                self.view = gr.HTML(VIEW_HTML, elem_id="annot_view_host")
                with gr.Row():
                    self.prev_button = gr.Button("← Previous", elem_id="annot_prev", size="sm")
                    self.submit_button = gr.Button(
                        "Accept highlighted (Enter)", variant="primary", elem_id="annot_submit"
                    )
                    self.skip_button = gr.Button("Skip (S)", elem_id="annot_skip")
                    self.undo_button = gr.Button("Undo (Z)", elem_id="annot_undo")
                    self.next_button = gr.Button("Next →", elem_id="annot_next", size="sm")
                    self.help_button = gr.Button("Keys (?)", elem_id="annot_help_btn", size="sm")
                with gr.Row():
                    self.search = gr.Textbox(
                        label="Search the KB for an entity not in the shortlist", scale=3, elem_id="annot_search"
                    )
                    self.search_button = gr.Button("Search", scale=1, elem_id="annot_search_btn")
                self.found = gr.Radio(
                    label="Search results (pick one, then Enter decides it)", choices=[], elem_id="annot_found"
                )
                with gr.Row(elem_id="annot_bridge"):  # hidden by studio.css; driven by keyboard.html
                    self.data = gr.HTML(elem_id="annot_data")
                    self.action = gr.Textbox(elem_id="annot_action", show_label=False)
                    self.send_button = gr.Button("send", elem_id="annot_send")
            self.cur = gr.State(None)
            self.position = browser_state(self.shared, "mimic_annotate_position")
            # the project this browser last picked, restored at the next page load while it exists
            self.remembered = browser_state(self.shared, "mimic_annotate_project")

    @property
    def item_outputs(self) -> list:
        """What `render_item`/`show_item` return values for."""
        return [self.progress, self.msg, self.data, self.cur, self.position]

    def _choices(self, username: str | None) -> list[str]:
        try:
            return project_choices(self.ctx, username)
        except UserError:
            return [ALL_PROJECTS]

    def _wire(self):
        db_queue, out = self.shared.db_queue, self.item_outputs
        # the picker: its choices at each page load and on Refresh; a change shows that queue's item
        picker = [self.project, self.guidelines]
        self.project_refresh.click(self.on_project_list, self.project, picker, **PRIVATE)
        if getattr(self.shared, "demo", None) is not None:
            self.shared.demo.load(self.on_project_restore, [self.project, self.remembered], picker, **PRIVATE)
        # `.input`: a user's pick only (a handler setting the picker does not fire it)
        picked = out + [self.guidelines, self.remembered]
        self.project.input(self.on_project, self.project, picked, **db_queue, **PRIVATE)
        take = "(a, p) => [window.mimicAnnotate ? window.mimicAnnotate.take() : a, p]"
        # "multiple": every decision is sent, even while the previous one is still being written
        self.send_button.click(
            self.on_action,
            [self.action, self.project],
            out,
            js=take,
            trigger_mode="multiple",
            show_progress="hidden",
            **db_queue,
            **PRIVATE,
        )
        self.submit_button.click(None, js="() => { window.mimicAnnotate && window.mimicAnnotate.accept(); }")
        self.skip_button.click(None, js="() => { window.mimicAnnotate && window.mimicAnnotate.skip(); }")
        self.help_button.click(
            None, js="() => { const h = document.getElementById('annot_help'); if (h) h.hidden = !h.hidden; }"
        )
        self.undo_button.click(self.on_undo, [self.cur, self.project], out, **db_queue, **PRIVATE)
        self.prev_button.click(self.go_prev, [self.cur, self.project], out, **PRIVATE)
        self.next_button.click(self.go_next, [self.cur, self.project], out, **PRIVATE)
        gr.on([self.search_button.click, self.search.submit], self.on_search, self.search, self.found, **PRIVATE)
        self.found.select(
            None,
            self.found,
            None,
            js="(v) => { const l = [...document.querySelectorAll('#annot_found label')].find(x => "
            "x.querySelector('input')?.value === v); window.mimicAnnotate && "
            "window.mimicAnnotate.useFound(v, l ? l.innerText.trim() : v); return v; }",
        )

    def on_project_list(self, project, request: gr.Request):
        """The picker's choices (projects created since the page loaded) and the guidelines shown."""
        choices = self._choices(username_of(request))
        value = project if project in choices else ALL_PROJECTS
        return gr.update(choices=choices, value=value), project_guidelines(self.ctx, username_of(request), value)

    def restored_project(self, username: str | None, remembered) -> str:
        """The project this browser picked last (its BrowserState) while it is still a choice, else "all"."""
        return remembered if remembered in self._choices(username) else ALL_PROJECTS

    def on_project_restore(self, project, remembered, request: gr.Request):
        """The page load: the picker's choices, set to the remembered project (the page load's item,
        app/ui.py, is of the same project: both ask `restored_project`)."""
        choices = self._choices(username_of(request))
        value = self.restored_project(username_of(request), remembered)
        return gr.update(choices=choices, value=value), project_guidelines(self.ctx, username_of(request), value)

    def on_project(self, project, request: gr.Request):
        """Another project picked: its queue's item (the lease on an item of another project is kept
        for that project's queue), its guidelines, and the pick remembered for this browser."""
        out = self.show_item({"hist": -1}, request, project=project)
        return out + (project_guidelines(self.ctx, username_of(request), project), project)

    def render_item(self, m, pred, note: str, cur: dict, request, *, seq=None, refresh=False, project=None) -> tuple:
        """The outputs for item `m` (None: the queue is empty) with the prefetched items after it."""
        ctx, name = self.ctx, username_of(request)
        try:
            counts = annotator_counts(ctx, name, project)
        except UserError:
            counts = None
        payload: dict = {"seq": seq, "nonce": uuid.uuid4().hex, "current": None, "upcoming": [], "refresh": refresh}
        hist = cur.get("hist", -1)
        if m is None:
            where = "" if project_scope(project) is None else f" of project {project}"
            payload["empty"] = f"<p class='annot-empty'>Queue empty: every mention{escape(where)} is decided.</p>"
            note = note or message(f"Nothing pending in your queue{where}: every mention is decided.", "ok")
            return progress_html(counts), note, payload_html(payload), cur, cur
        hist_dec = {
            a.mention_id: a
            for a in (history(ctx, name, 200) if ctx.can_write(name) else [])
            if a.status == "current" and a.decision != "skip"
        }
        prior, selected, prior_line = hist_dec.get(m.id), None, None
        if prior:
            selected = choice_value(prior.decision, prior.entity_id)
            what = prior.decision + (f" {prior.entity_id}" if prior.entity_id else "")
            extra = "".join(f" · {k} {v!r}" for k, v in (("flag", prior.flag), ("comment", prior.comment)) if v)
            prior_line = f"Already decided ({what}{extra}); deciding again replaces that decision."
        others = ctx.store.peek_sentence_mentions(m.id)
        payload["current"] = item_view(ctx, m, pred, others=others, selected=selected, prior=prior_line, hist=hist)
        if hist < 0:
            try:
                ahead = prefetch(ctx, name, m.id, project=project)
            except UserError:
                ahead = []
            payload["upcoming"] = [item_view(ctx, a, p, others=o) for a, p, o in ahead]
        cur = {**cur, "mention_id": m.id}
        return progress_html(counts), note, payload_html(payload), cur, {"mention_id": m.id, "hist": hist}

    def show_item(self, pos, request: gr.Request, note: str = "", *, seq=None, project=None):
        """The item at `pos` (a history position), else the next one of the queue (of `project`)."""
        name = username_of(request)
        if not self.ctx.can_write(name):
            return self.render_item(
                None, None, message("Sign in to annotate.", "error"), {"hist": -1}, request, seq=seq, project=project
            )
        pos = pos or {}
        try:
            mid = pos.get("mention_id")
            if mid is not None and pos.get("hist", -1) >= 0:
                m, pred = get_item(self.ctx, mid)
                return self.render_item(m, pred, note, {"hist": pos["hist"]}, request, seq=seq, project=project)
            item = next_item(self.ctx, name, project)
        except UserError as exc:
            return self.render_item(
                None, None, message(str(exc), "error"), {"hist": -1}, request, seq=seq, project=project
            )
        if item is None:
            return self.render_item(None, None, note, {"hist": -1}, request, seq=seq, project=project)
        return self.render_item(item.mention, item.prediction, note, {"hist": -1}, request, seq=seq, project=project)

    def on_action(self, raw, request: gr.Request, project=None):
        """A decision, skip or missed span sent by the browser (annotate_cards.parse_action). The
        answer echoes its `seq`, so the browser can tell the answer to its latest action. `project`: the
        picker's value (Gradio passes the inputs around the request: action, then project)."""
        try:
            a = parse_action(raw)
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"), project=project)
        seq, mid, hist, name = a["seq"], a["mention_id"], a["hist"], username_of(request)
        here = {"mention_id": mid, "hist": hist}
        try:
            if a["action"] in ("decide", "skip") and hist < 0:
                check_still_pending(self.ctx, name, mid, project)
            if a["action"] == "decide":
                rec = annotate(
                    self.ctx,
                    name,
                    mid,
                    a["choice"],
                    seconds_spent=a["seconds"],
                    request_id=a.get("request_id") or None,
                    comment=a["comment"],
                    flag=a["flag"],
                )
                what = rec.entity_id if rec.decision == "entity" else rec.decision
                extra = f" (flag {rec.flag})" if rec.flag else ""
                note = message(f"Saved #{rec.id}: mention {rec.mention_id} → {what}{extra}", "ok")
                if hist >= 0:  # re-decided an earlier item: go one step newer
                    return self.step(here, -1, request, note, seq=seq, project=project)
                return self.show_item({"hist": -1}, request, note, seq=seq, project=project)
            if a["action"] == "skip":
                skip(self.ctx, name, mid)
                note = message(f"Skipped mention {mid}: it comes back at the end of your queue", "info")
                return self.show_item({"hist": -1}, request, note, seq=seq, project=project)
            new, linked = add_missed_mention(self.ctx, name, mid, a["start"], a["end"])
            note = message(
                f"Added mention #{new.id} “{new.mention}” to the queue"
                + ("" if linked else " (the model could not rank it: no candidates yet)"),
                "ok",
            )
            m, pred = get_item(self.ctx, mid)
            return self.render_item(m, pred, note, {"hist": hist}, request, seq=seq, refresh=True, project=project)
        except UserError as exc:
            return self.show_item(
                here if hist >= 0 else None, request, message(str(exc), "error"), seq=seq, project=project
            )

    def on_undo(self, cur, request: gr.Request, project=None):
        try:
            rec = undo(self.ctx, username_of(request))
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"), project=project)
        if rec is None:
            return self.show_item({"hist": -1}, request, message("nothing to undo", "info"), project=project)
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
            project=project,
        )

    def step(self, cur, delta: int, request: gr.Request, note: str = "", *, seq=None, project=None):
        """delta +1: one item back in your history (←); -1: one item forward (→)."""
        cur = cur or {"hist": -1}
        name = username_of(request)
        try:
            hist = [a for a in history(self.ctx, name, 200) if a.decision != "skip"]
        except UserError as exc:
            return self.show_item(None, request, message(str(exc), "error"), seq=seq, project=project)
        seen, mids = set(), []
        for a in hist:  # newest first, one entry per mention
            if a.mention_id not in seen:
                seen.add(a.mention_id)
                mids.append(a.mention_id)
        k = cur.get("hist", -1) + delta
        if k < 0 or not mids:
            return self.show_item({"hist": -1}, request, note, seq=seq, project=project)
        k = min(k, len(mids) - 1)
        m, pred = get_item(self.ctx, mids[k])
        return self.render_item(
            m,
            pred,
            note or message(f"History item {k + 1} of {len(mids)}", "info"),
            {"hist": k},
            request,
            seq=seq,
            project=project,
        )

    def go_prev(self, cur, request: gr.Request, project=None):
        return self.step(cur, +1, request, project=project)

    def go_next(self, cur, request: gr.Request, project=None):
        return self.step(cur, -1, request, project=project)

    def on_search(self, query):
        try:
            recs = search_kb(self.ctx, query, limit=20)
        except UserError as exc:
            return gr.update(choices=[], value=None, label=str(exc))
        return gr.update(
            choices=[(f"{r.name} ({r.id}) — {r.text[:80]}", r.id) for r in recs],
            value=None,
            label=f"{len(recs)} result(s): pick one, then Enter decides it",
        )


def build(ctx: AppContext, shared: Shared) -> AnnotateTab:
    return AnnotateTab(ctx, shared)
