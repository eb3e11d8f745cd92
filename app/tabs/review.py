"""The Review tab: the mentions whose annotators disagree or raised a flag, each annotator's decision
beside the candidates, one-click resolution (stored by `AnnotationStore.resolve` as the reviewer's
decision, which the one gold rule makes the gold), and the agreement figures (Cohen's kappa per pair
as a table and a heatmap, Fleiss' kappa per project, throughput, agreement with the reviewers).

Reviewers and admins act here; the role is checked inside every handler (`ctx.require("review")`),
so the UI, the documented `/review` and `/resolve` endpoints and raw queue calls all hit it. The
store checks the role again when resolving.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from db import ReviewPage

from ..common import (
    AMBIGUOUS,
    NIL,
    PRIVATE,
    Shared,
    UserError,
    message,
    parse_choice,
    rounded,
    user_errors,
    username_of,
)
from ..context import AppContext

PAGE_SIZE = 20
LIST_COLUMNS = ["mention_id", "mention", "why", "decisions", "sentence"]
DECISION_COLUMNS = ["annotator", "role", "decision", "entity", "comment", "flag", "when"]
CANDIDATE_COLUMNS = ["rank", "name", "id", "S"]
PAIR_COLUMNS = ["annotator A", "annotator B", "mentions", "Cohen's κ", "observed agreement"]
PROJECT_COLUMNS = ["project", "mentions (≥ 2 raters)", "raters per mention", "Fleiss' κ"]
PEOPLE_COLUMNS = ["annotator", "decisions", "per hour", "rate from", "resolved mentions", "agrees with reviewer"]


# -- handlers (called by the UI and by app/api.py) ---------------------------------------------------
def _project(project) -> int | None:
    """The project filter from a UI or API value: empty = every project."""
    if project is None or (isinstance(project, str) and not project.strip()):
        return None
    if isinstance(project, float) and math.isnan(project):
        return None
    try:
        return int(str(project).strip()) if not isinstance(project, (int, float)) else int(project)
    except ValueError:
        raise UserError(f"project must be a project id (a whole number), got {project!r}") from None


def _page_number(page) -> int:
    try:
        p = int(page)
    except (TypeError, ValueError):
        raise UserError(f"page must be a whole number from 1, got {page!r}") from None
    if p < 1:
        raise UserError(f"page must be a whole number from 1, got {page!r}")
    return p


def _decision_text(decision: str, entity_id: str | None, entity_name: str | None) -> str:
    if decision == "entity":
        return f"{entity_name} ({entity_id})" if entity_name else str(entity_id)
    return {"nil": "NIL", "ambiguous": "ambiguous", "skip": "skipped"}.get(decision, decision)


@user_errors
def review_page(ctx: AppContext, username: str | None, page=1, project=None, page_size: int = PAGE_SIZE) -> ReviewPage:
    """One page of the review list (reviewers and admins)."""
    ctx.require("review", username)
    p = _page_number(page)
    return ctx.store.review_list(project=_project(project), limit=page_size, offset=(p - 1) * page_size)


def review_table(page: ReviewPage) -> pd.DataFrame:
    rows = []
    for it in page.items:
        summary = "; ".join(
            f"{d.annotator}: {_decision_text(d.decision, d.entity_id, d.entity_name)}"
            + (f" ⚑{d.flag}" if d.flag else "")
            for d in it.decisions
        )
        rows.append([it.mention.id, it.mention.mention, ", ".join(it.reasons), summary, it.mention.sentence])
    return pd.DataFrame(rows, columns=LIST_COLUMNS)


def page_label(page: ReviewPage) -> str:
    if page.total == 0:
        return "Nothing to review: no disagreement and no flag on the current decisions."
    last = min(page.offset + len(page.items), page.total)
    pages = math.ceil(page.total / page.limit)
    here = page.offset // page.limit + 1
    return f"Mentions {page.offset + 1}–{last} of {page.total} to review (page {here} of {pages})"


@user_errors
def review_item(ctx: AppContext, username: str | None, mention_id, project=None) -> dict:
    """One mention of the review list: the sentence (HTML, mention marked), the candidates, every
    annotator's decision / comment / flag, and the choices for the resolution."""
    ctx.require("review", username)
    try:
        mid = int(mention_id)
    except (TypeError, ValueError):
        raise UserError(f"mention_id must be a mention's number, got {mention_id!r}") from None
    item = _find(ctx, mid, _project(project))
    cands = [{"rank": c.rank + 1, "name": c.entity_name, "id": c.entity_id, "S": rounded(c.s)} for c in item.candidates]
    decided = [d.entity_id for d in item.decisions if d.decision == "entity" and d.entity_id]
    ids = [c["id"] for c in cands] + [e for e in dict.fromkeys(decided) if e not in {c["id"] for c in cands}]
    names = {c["id"]: c["name"] for c in cands} | {d.entity_id: d.entity_name for d in item.decisions if d.entity_id}
    choices = [(f"{names.get(e) or e} ({e})", e) for e in ids]
    choices += [("NIL: not in the list", NIL), ("ambiguous", AMBIGUOUS)]
    decisions = [
        [
            d.annotator,
            d.role,
            d.decision,
            _decision_text(d.decision, d.entity_id, d.entity_name) if d.decision == "entity" else "",
            d.comment or "",
            d.flag or "",
            d.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for d in item.decisions
    ]
    return {
        "mention_id": item.mention.id,
        "html": f"<p>{item.mention.html()}</p><p><small>why: {', '.join(item.reasons)}</small></p>",
        "candidates": pd.DataFrame(cands, columns=CANDIDATE_COLUMNS),
        "decisions": pd.DataFrame(decisions, columns=DECISION_COLUMNS),
        "choices": choices,
        "reasons": item.reasons,
    }


def _find(ctx: AppContext, mid: int, project: int | None):
    offset = 0
    while True:  # the list is short (it only holds what needs a reviewer); pages of 500
        page = ctx.store.review_list(project=project, limit=500, offset=offset)
        for it in page.items:
            if it.mention.id == mid:
                return it
        offset += page.limit
        if offset >= page.total:
            raise UserError(f"mention {mid} is not on the review list (resolved already, or nothing to review)")


@user_errors
def resolve(ctx: AppContext, username: str | None, mention_id, choice: str | None, comment: str | None = None) -> int:
    """Resolve a mention with one decision (a candidate's entity id, or NIL / ambiguous): stored as
    the reviewer's annotation, the gold from then on. -> the annotation id."""
    name = ctx.require("review", username)
    decision, entity_id = parse_choice(choice)
    try:
        mid: int | str = int(mention_id)
    except (TypeError, ValueError):
        mid = str(mention_id or "").strip()
        if not mid:
            raise UserError("pick a mention of the review list first") from None
    note = (comment or "").strip() or None
    rec = ctx.store.resolve(name, mid, decision, entity_id, note, request_id=uuid.uuid4().hex)
    return rec.id


# -- agreement ---------------------------------------------------------------------------------------
@dataclass
class AgreementView:
    pairs: pd.DataFrame
    heatmap: go.Figure
    projects: pd.DataFrame
    people: pd.DataFrame
    summary: dict


def kappa_heatmap(annotators: list[str], pairs: list[dict]) -> go.Figure:
    """Pairwise Cohen's kappa as a symmetric heatmap (diagonal 1; a blank cell: no shared mentions
    or kappa undefined), the number of shared mentions on hover. Fixed scale -1..1, so colours
    mean the same in every view."""
    idx = {a: i for i, a in enumerate(annotators)}
    n = len(annotators)
    z: list[list[float | None]] = [[1.0 if i == j else None for j in range(n)] for i in range(n)]
    items: list[list[int | None]] = [[None] * n for _ in range(n)]
    for p in pairs:
        i, j = idx[p["a"]], idx[p["b"]]
        z[i][j] = z[j][i] = p["kappa"]
        items[i][j] = items[j][i] = p["items"]
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=annotators,
            y=annotators,
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            text=text,
            texttemplate="%{text}",
            customdata=items,
            hovertemplate="%{y} × %{x}<br>κ = %{z:.3f}<br>shared mentions: %{customdata}<extra></extra>",
            colorbar={"title": "Cohen's κ"},
        )
    )
    fig.update_layout(
        title="Cohen's κ per annotator pair", height=max(300, 60 * n + 140), margin={"l": 80, "r": 20, "t": 50, "b": 60}
    )
    fig.update_yaxes(autorange="reversed")
    return fig


@user_errors
def agreement_view(ctx: AppContext, username: str | None, project=None) -> AgreementView:
    """The agreement section's tables and heatmap (reviewers and admins)."""
    ctx.require("review", username)
    r = ctx.store.agreement_summary(_project(project))
    pairs = pd.DataFrame(
        [[p["a"], p["b"], p["items"], rounded(p["kappa"], 3), rounded(p["observed_agreement"], 3)] for p in r["pairs"]],
        columns=PAIR_COLUMNS,
    )
    projects = pd.DataFrame(
        [
            [
                f"{p['name']}" + (f" (#{p['project']})" if p["project"] is not None else ""),
                p["items"],
                f"{p['min_raters']}" if p["min_raters"] == p["max_raters"] else f"{p['min_raters']}–{p['max_raters']}",
                rounded(p["kappa"], 3),
            ]
            for p in r["projects"]
        ],
        columns=PROJECT_COLUMNS,
    )
    people = []
    for who in sorted(set(r["throughput"]) | set(r["reviewer_agreement"])):
        t = r["throughput"].get(who, {})
        a = r["reviewer_agreement"].get(who)
        people.append(
            [
                who,
                t.get("decisions", 0),
                rounded(t.get("per_hour"), 1),
                t.get("source", ""),
                a["reviewed"] if a else 0,
                rounded(a["fraction"], 3) if a else None,
            ]
        )
    return AgreementView(
        pairs=pairs,
        heatmap=kappa_heatmap(r["annotators"], r["pairs"]),
        projects=projects,
        people=pd.DataFrame(people, columns=PEOPLE_COLUMNS),
        summary=r,
    )


# -- the tab -------------------------------------------------------------------------------------------
class ReviewTab:
    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Review", id="review", elem_id="tab_review") as self.tab:
            self.msg = gr.Markdown(elem_id="review_msg")
            with gr.Row():
                self.project = gr.Textbox(label="Project id (empty: all)", scale=1, elem_id="review_project")
                self.page = gr.Number(value=1, precision=0, minimum=1, label="Page", scale=1, elem_id="review_page")
                self.prev_button = gr.Button("◀ Previous", size="sm", scale=1, elem_id="review_prev")
                self.next_button = gr.Button("Next ▶", size="sm", scale=1, elem_id="review_next")
                self.refresh_button = gr.Button("Refresh", size="sm", scale=1, elem_id="review_refresh")
            self.page_note = gr.Markdown(elem_id="review_page_note")
            self.table = gr.Dataframe(
                headers=LIST_COLUMNS, interactive=False, label="To review (click a row)", elem_id="review_list"
            )
            self.mention_id = gr.State(None)
            self.sentence = gr.HTML(elem_id="review_sentence")
            with gr.Row():
                self.candidates = gr.Dataframe(
                    headers=CANDIDATE_COLUMNS,
                    interactive=False,
                    label="Candidates (the latest prediction)",
                    scale=2,
                    elem_id="review_candidates",
                )
                self.decisions = gr.Dataframe(
                    headers=DECISION_COLUMNS,
                    interactive=False,
                    label="Each annotator's decision",
                    scale=3,
                    wrap=True,
                    elem_id="review_decisions",
                )
            self.choice = gr.Radio(choices=[], label="Resolution", elem_id="review_choice")
            with gr.Row():
                self.comment = gr.Textbox(label="Comment (optional)", scale=4, elem_id="review_comment")
                self.resolve_button = gr.Button("Resolve", variant="primary", scale=1, elem_id="review_resolve")
            with gr.Accordion("Agreement", open=False):
                self.agree_button = gr.Button("Compute agreement", size="sm", elem_id="review_agree")
                self.agree_msg = gr.Markdown(elem_id="review_agree_msg")
                with gr.Row():
                    self.pairs = gr.Dataframe(interactive=False, label="Cohen's κ per pair", elem_id="review_pairs")
                    self.heatmap = gr.Plot(label="Pairwise κ", elem_id="review_heatmap")
                self.projects = gr.Dataframe(interactive=False, label="Fleiss' κ per project", elem_id="review_fleiss")
                self.people = gr.Dataframe(
                    interactive=False, label="Throughput and agreement with reviewers", elem_id="review_people"
                )

    def _wire(self):
        s = self.shared
        list_out = [self.table, self.page_note, self.msg, self.page]
        item_out = [self.mention_id, self.sentence, self.candidates, self.decisions, self.choice]
        gr.on(
            [self.refresh_button.click, self.tab.select, self.project.submit, self.page.submit],
            self.show_list,
            [self.page, self.project],
            list_out,
            **PRIVATE,
        )
        self.prev_button.click(lambda p: max(1, int(p or 1) - 1), self.page, self.page, **PRIVATE).then(
            self.show_list, [self.page, self.project], list_out, **PRIVATE
        )
        self.next_button.click(lambda p: int(p or 1) + 1, self.page, self.page, **PRIVATE).then(
            self.show_list, [self.page, self.project], list_out, **PRIVATE
        )
        self.table.select(self.show_item, [self.table, self.project], item_out + [self.msg], **PRIVATE)
        self.resolve_button.click(
            self.on_resolve,
            [self.mention_id, self.choice, self.comment, self.page, self.project],
            [self.msg, self.comment] + list_out[:2] + item_out,
            **s.db_queue,
            **PRIVATE,
        )
        self.agree_button.click(
            self.show_agreement,
            self.project,
            [self.pairs, self.heatmap, self.projects, self.people, self.agree_msg],
            **PRIVATE,
        )

    def show_list(self, page, project, request: gr.Request):
        try:
            p = review_page(self.ctx, username_of(request), page or 1, project)
            if not p.items and p.total and p.offset >= p.total:  # past the end: the last page
                p = review_page(self.ctx, username_of(request), math.ceil(p.total / p.limit), project)
        except UserError as exc:
            return pd.DataFrame(columns=LIST_COLUMNS), "", message(str(exc), "error"), gr.update()
        return review_table(p), page_label(p), "", p.offset // p.limit + 1

    def show_item(self, table, project, evt: gr.SelectData, request: gr.Request):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            mid = table.iloc[row]["mention_id"]
            it = review_item(self.ctx, username_of(request), mid, project)
        except UserError as exc:
            return (gr.update(),) * 5 + (message(str(exc), "error"),)
        except (IndexError, KeyError):
            return (gr.update(),) * 6
        return (
            it["mention_id"],
            it["html"],
            it["candidates"],
            it["decisions"],
            gr.update(choices=it["choices"], value=None),
            "",
        )

    def on_resolve(self, mention_id, choice, comment, page, project, request: gr.Request):
        try:
            resolve(self.ctx, username_of(request), mention_id, choice, comment)
        except UserError as exc:
            return (message(str(exc), "error"),) + (gr.update(),) * 8
        table, note, _, _ = self.show_list(page, project, request)
        empty = pd.DataFrame(columns=DECISION_COLUMNS)
        done = message(f"Resolved mention {mention_id}: the reviewer's decision is its gold now.", "ok")
        return (
            done,
            "",
            table,
            note,
            None,
            "",
            pd.DataFrame(columns=CANDIDATE_COLUMNS),
            empty,
            gr.update(choices=[], value=None),
        )

    def show_agreement(self, project, request: gr.Request):
        try:
            v = agreement_view(self.ctx, username_of(request), project)
        except UserError as exc:
            return (gr.update(),) * 4 + (message(str(exc), "error"),)
        note = (
            f"{v.summary['items']} mention(s) decided by two or more annotators. κ is blank where it is "
            "undefined (everyone used one single label). Reviewers' resolutions are not counted as ratings."
        )
        return v.pairs, v.heatmap, v.projects, v.people, note


def build(ctx: AppContext, shared: Shared) -> ReviewTab:
    return ReviewTab(ctx, shared)
