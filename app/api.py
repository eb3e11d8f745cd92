"""The documented API: `/link`, `/annotate`, `/export`, `/review`, `/resolve`, `/import_mentions` and
`/projects`, on hidden
components (gradio_client and the API page call them by name). Their signatures and docstrings are
the API's documentation."""

from __future__ import annotations

import gradio as gr

from .common import Shared, UserError, upload_path, username_of
from .context import AppContext
from .tabs import annotate as annotate_tab
from .tabs import link as link_tab
from .tabs import models as models_tab
from .tabs import projects as projects_tab
from .tabs import review as review_tab


def build(ctx: AppContext, shared: Shared) -> None:
    with gr.Column(visible=False):
        image = link_tab.MentionImage(type="filepath")
        sentence, mention = gr.Textbox(), gr.Textbox()
        link_out = gr.JSON()
        link_button = gr.Button()
        mention_id, decision, entity, annotator = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox()
        request_id = gr.Textbox(value="")
        annotate_out = gr.Number()
        annotate_button = gr.Button()
        fmt = gr.Textbox()
        export_file = gr.File()
        export_button = gr.Button()

    def api_link(image: str | None, sentence: str, mention: str) -> dict:
        """Link a mention. image: optional image file; sentence: the text; mention: the mention string
        (it must occur in the sentence). Returns the ranked candidates with S, S_T, S_V, S_C, S_L
        (the lexical unit's score; null when the served model has none) and margin."""
        try:
            r = link_tab.link(ctx, image, sentence, mention)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        return link_tab.result_json(ctx, r)

    def api_annotate(
        mention_id: str,
        decision: str,
        entity_id: str,
        annotator: str,
        request_id: str | None = None,
        request: gr.Request = None,  # type: ignore[assignment]  # gradio fills it in
    ) -> float:
        """Store a decision (entity | nil | ambiguous | skip) for a stored mention (id or uid).
        annotator must be the signed-in user (or empty). request_id (optional, up to 100 characters):
        a client-chosen id that makes the call safe to retry: the same id again returns the annotation
        stored the first time and stores nothing. Returns the stored annotation id."""
        try:
            return annotate_tab.annotate_api(
                ctx,
                username_of(request),
                mention_id,
                decision,
                entity_id or None,
                annotator or None,
                request_id or None,
            )
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def api_export(fmt: str, request: gr.Request) -> str:
        """Export the current decisions: jsonl | csv | training (zip of the training layout) | jsonl.zip |
        csv.zip (the JSONL / CSV with the mention images it names) | label-studio (zip: Label Studio
        tasks, one per mention with every annotator's decision, the labeling config, the images).
        Images are named by relative paths; CSV cells that a spreadsheet would run as formulas start
        with "'"."""
        try:
            return models_tab.export(ctx, fmt, username_of(request))
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    link_button.click(api_link, [image, sentence, mention], link_out, api_name="link", **shared.inference)
    annotate_button.click(
        api_annotate,
        [mention_id, decision, entity, annotator, request_id],
        annotate_out,
        api_name="annotate",
        **shared.db_queue,
    )
    export_button.click(api_export, fmt, export_file, api_name="export", **shared.db_queue)
    _review_endpoints(ctx, shared)


def _review_endpoints(ctx: AppContext, shared: Shared) -> None:
    """`/review` (the review list, paged) and `/resolve`: reviewers and admins, checked inside the
    handlers (app/tabs/review.py) exactly as in the Review tab."""
    with gr.Column(visible=False):
        page, page_size, project = gr.Number(precision=0), gr.Number(precision=0), gr.Textbox(value="")
        review_out = gr.JSON()
        review_button = gr.Button()
        mention_id, choice, comment = gr.Textbox(), gr.Textbox(), gr.Textbox(value="")
        resolve_out = gr.Number()
        resolve_button = gr.Button()

    def api_review(
        page: float = 1,
        page_size: float = review_tab.PAGE_SIZE,
        project: str = "",
        request: gr.Request = None,  # type: ignore[assignment]  # gradio fills it in
    ) -> dict:
        """The mentions that need a reviewer (their annotators disagree, or one raised a flag), one
        page: page (from 1), page_size (1 to 500), project (a project id; empty: all). Returns
        {"total", "offset", "limit", "items": [{"mention": {...}, "candidates": [...], "decisions":
        [{"annotator", "role", "decision", "entity_id", "comment", "flag", ...}], "reasons"}]}.
        Reviewers and admins only."""
        try:
            size = review_tab.PAGE_SIZE if page_size is None else int(page_size)
            if not 1 <= size <= 500:
                raise UserError(f"page_size must be between 1 and 500, got {page_size!r}")
            first = 1 if page is None else page
            return review_tab.review_page(ctx, username_of(request), first, project, page_size=size).to_dict()
        except (UserError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None

    def api_resolve(
        mention_id: str,
        choice: str,
        comment: str = "",
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> float:
        """Resolve a mention of the review list (id or uid) with one decision: an entity id, or
        "__NIL__" / "__AMBIGUOUS__". Stored as the reviewer's decision, which is the mention's gold
        from then on (the mention leaves the list). Reviewers and admins only. Returns the stored
        annotation id."""
        try:
            return review_tab.resolve(ctx, username_of(request), mention_id, choice, comment or None)
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    review_button.click(api_review, [page, page_size, project], review_out, api_name="review", **shared.db_queue)
    resolve_button.click(api_resolve, [mention_id, choice, comment], resolve_out, api_name="resolve", **shared.db_queue)
    _build_projects(ctx)


def _build_projects(ctx: AppContext) -> None:
    """`/import_mentions` and `/projects`: the Projects tab's handlers, with the same role checks."""
    with gr.Column(visible=False):
        project, fmt, guidelines = gr.Textbox(), gr.Textbox(value="auto"), gr.Textbox(value="")
        corpus, images = gr.File(), gr.File()
        overlap = gr.Number(value=1, precision=0)
        import_out, projects_out = gr.JSON(), gr.JSON()
        import_button, projects_button = gr.Button(), gr.Button()

    def api_import_mentions(
        project: str,
        corpus: str,
        images: str | None = None,
        fmt: str = "auto",
        guidelines: str = "",
        annotators_per_mention: float = 1,
        request: gr.Request = None,  # type: ignore[assignment]  # gradio fills it in
    ) -> dict:
        """Import a corpus into a project (reviewer or admin). project: its name, created when new
        (with `guidelines`, Markdown, and `annotators_per_mention`); corpus: a JSONL, CSV, official
        split .json or MELBench .json file; images: optional zip of the mention images the rows name;
        fmt: auto | jsonl | csv | official | melbench. Runs as a background job (never in the
        annotation write queue) and returns its report: created, existing, predictions, rejected
        ([{row, problem}], at most 500; rejected_count counts all), zip_skipped, format, project."""
        try:
            return projects_tab.import_corpus_api(
                ctx,
                username_of(request),
                project,
                upload_path(corpus),
                upload_path(images),
                fmt or "auto",
                guidelines or "",
                int(annotators_per_mention or 1),
            )
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def api_projects(request: gr.Request) -> list:
        """Every project (signed-in users): name, guidelines, annotators_per_mention, kb, archived,
        created_by, and progress {mentions, complete, started, pending, predicted, annotators: [{annotator,
        decided, entity, nil, ambiguous, skipped}]}; the built-in "default" project comes last."""
        try:
            return projects_tab.list_projects(ctx, username_of(request))
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    import_button.click(
        api_import_mentions,
        [project, corpus, images, fmt, guidelines, overlap],
        import_out,
        api_name="import_mentions",
        concurrency_id="project_jobs",
        concurrency_limit=2,
    )
    projects_button.click(api_projects, None, projects_out, api_name="projects")
