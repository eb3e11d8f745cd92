"""The Projects tab: annotation projects (a corpus, its Markdown guidelines, annotators per mention,
a KB), their progress, corpus import and pre-annotation as background jobs, and per-project export.

Reviewers and admins create and edit projects, import corpora and pre-annotate (permissions
`project_edit`, `project_import`); every signed-in user sees the list, the progress and the
guidelines (`project_view`). The handlers below are what the tab, the documented API
(`/import_mentions`, `/projects` in app/api.py) and tests call, so the role checks are the same on
every path. Imports and pre-annotation run as jobs (app/jobs.py), never in the "db" write queue:
each writes in short transactions, so an annotation submitted meanwhile waits for one batch at most.

`guidelines_markdown(ctx, project)` is the helper other tabs (Annotate) call to show a project's
guidelines.
"""

from __future__ import annotations

import atexit
import html
import shutil
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import gradio as gr

from db import StoreError
from db.corpus import FORMATS, detect_format
from db.projects import DEFAULT_PROJECT, STORE_KBS
from mimic.serving.linker import LinkInputError

from ..common import (
    EXPORT_QUEUE,
    PRIVATE,
    Shared,
    UserError,
    browser_state,
    message,
    progress_bar_html,
    scrub_paths,
    upload_path,
    user_errors,
    username_of,
)
from ..context import AppContext, candidates_for_store
from ..jobs import Job, JobError, JobFailure

REPORT_ROWS = 500  # rejected rows listed in a report (all are counted)
PREANNOTATE_CHUNK = 32  # mentions per encoder batch and per write transaction
PROJECT_COLUMNS = [
    "project",
    "annotators per mention",
    "mentions",
    "complete",
    "pending",
    "predicted",
    "kb",
    "archived",
]
ANNOTATOR_COLUMNS = ["annotator", "decided", "entity", "nil", "ambiguous", "skipped"]

# -- handlers -------------------------------------------------------------------------------------


@user_errors
def list_projects(ctx: AppContext, username: str | None, *, include_archived: bool = True) -> list[dict]:
    """Every project (and the built-in default one, last) with its settings and progress."""
    ctx.require("project_view", username)
    out = []
    for p in ctx.store.list_projects(include_archived=include_archived):
        out.append(p.to_dict() | {"progress": ctx.store.project_progress(p.name)})
    out.append({"name": DEFAULT_PROJECT, "guidelines": "", "progress": ctx.store.project_progress()})
    return out


@user_errors
def save_project(
    ctx: AppContext,
    username: str | None,
    name: str,
    guidelines: str = "",
    annotators_per_mention: int | float = 1,
    kb: str = "default",
    archived: bool = False,
):
    """Create the project, or update it when the name exists (guidelines, overlap, KB, archived)."""
    author = ctx.require("project_edit", username)
    name = (name or "").strip()
    if not name:
        raise UserError("give the project a name")
    n = int(annotators_per_mention or 1)
    if n != annotators_per_mention:
        raise UserError("annotators per mention must be a whole number")
    kb = (kb or "default").strip()
    if name in {p.name for p in ctx.store.list_projects()}:
        return ctx.store.update_project(
            name, guidelines=guidelines or "", annotators_per_mention=n, kb=kb, archived=bool(archived)
        )
    rec = ctx.store.create_project(
        name, guidelines=guidelines or "", annotators_per_mention=n, kb=kb, created_by=author
    )
    return ctx.store.update_project(name, archived=True) if archived else rec


def guidelines_markdown(ctx: AppContext, project: str | None) -> str:
    """A project's guidelines as Markdown, for any tab (the Annotate tab shows them one click away).
    The default project has none; an unknown project says so instead of raising."""
    if not project or project == DEFAULT_PROJECT:
        return "_The default project has no guidelines._"
    try:
        p = ctx.store.get_project(project)
    except StoreError:
        return f"_No project named {html.escape(str(project))}._"
    return p.guidelines.strip() or f"_Project {p.name} has no guidelines yet._"


def _check_upload(ctx: AppContext, path: str | None, what: str) -> Path | None:
    if not path:
        return None
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError:
        raise UserError(f"the {what} {p.name} is not there (upload it again)") from None
    if size > ctx.config.max_upload_bytes:
        raise UserError(
            f"the {what} {p.name} is {size / 2**20:.2f} MB, the limit is {ctx.config.max_upload_mb:g} MB "
            "(MIMIC_MAX_UPLOAD_MB)"
        )
    return p


def import_report(rep) -> dict:
    """An ImportReport for the UI and the API: counts, at most REPORT_ROWS rejected rows, no server paths."""
    out = rep.to_dict()
    out["rejected_count"] = len(out["rejected"])
    out["rejected"] = [{"row": r["row"], "problem": scrub_paths(r["problem"])} for r in out["rejected"][:REPORT_ROWS]]
    out["errors"] = [scrub_paths(e) for e in out["errors"][:REPORT_ROWS]]
    out["imported"] = out["created"] + out["existing"]
    return out


@user_errors
def start_import(
    ctx: AppContext, username: str | None, project: str, corpus: str | None, images_zip: str | None, fmt: str = "auto"
) -> Job:
    """Check the uploads, then import the corpus into the project as a background job (rows checked
    and stored in batches of 500; bad rows reported with their row and problem)."""
    who = ctx.require("project_import", username)
    if not project or project == DEFAULT_PROJECT:
        raise UserError("choose (or create) a project to import into")
    ctx.store.get_project(project)  # NotFound before anything starts
    path = _check_upload(ctx, corpus, "corpus file")
    if path is None:
        raise UserError("choose a corpus file (JSONL, CSV, an official split .json or a MELBench .json)")
    zip_path = _check_upload(ctx, images_zip, "images zip")
    if zip_path is not None and not zipfile.is_zipfile(zip_path):
        raise UserError(f"{zip_path.name} is not a zip file: upload the mention images as one .zip")
    fmt = fmt or "auto"
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "auto":
        fmt = detect_format(path)

    def work(job: Job) -> dict:
        try:
            rep = ctx.store.import_mentions(
                path,
                project=project,
                images_zip=zip_path,
                format=fmt,
                on_error="skip",
                progress=job.progress,
                cancel=lambda: job.cancel_requested,
            )
        except StoreError as exc:
            raise JobFailure(f"import of {path.name} stopped: {scrub_paths(str(exc))}") from None
        return import_report(rep)

    return ctx.jobs.start("project_import", who, work)


def _link_chunk(ctx: AppContext, mentions) -> list:
    """The served model's ranking for each mention, or the error that refused it (others still ranked)."""
    queries = [{"sentence": m.sentence, "mention": (m.start, m.end), "image": m.image_path} for m in mentions]
    try:
        results = ctx.service.link_batch(queries, top_k=ctx.config.top_k, explain=False)
        return [candidates_for_store(r.candidates) for r in results]
    except LinkInputError:
        out: list = []
        for q in queries:
            try:
                r = ctx.service.link_batch([q], top_k=ctx.config.top_k, explain=False)[0]
                out.append(candidates_for_store(r.candidates))
            except LinkInputError as exc:
                out.append(exc)
        return out


@user_errors
def start_preannotate(ctx: AppContext, username: str | None, project: str) -> Job:
    """Rank every mention of the project that has no prediction yet with the served model, as a
    background job: PREANNOTATE_CHUNK mentions per batch, each batch's predictions one short write."""
    who = ctx.require("project_import", username)
    if project != DEFAULT_PROJECT:
        ctx.store.get_project(project)
    version = ctx.service.served.version

    def work(job: Job) -> dict:
        try:
            rep = ctx.store.preannotate(
                project,
                lambda ms: _link_chunk(ctx, ms),
                version,
                chunk=PREANNOTATE_CHUNK,
                progress=job.progress,
                cancel=lambda: job.cancel_requested,
            )
        except StoreError as exc:
            raise JobFailure(f"pre-annotation stopped: {scrub_paths(str(exc))}") from None
        rep["failed_count"] = len(rep["failed"])
        rep["failed"] = [{**f, "problem": scrub_paths(f["problem"])} for f in rep["failed"][:REPORT_ROWS]]
        return rep

    return ctx.jobs.start("project_preannotate", who, work)


@user_errors
def cancel_job(ctx: AppContext, username: str | None, job_id: str | None) -> Job:
    """Stop an import or pre-annotation before its next batch: whoever started it, or an admin."""
    name = ctx.annotator(username)
    try:
        return ctx.jobs.cancel(job_id, name, is_admin=ctx.store.get_annotator(name).role == "admin")
    except JobError as exc:
        raise UserError(str(exc)) from None


@user_errors
def import_corpus_api(
    ctx: AppContext,
    username: str | None,
    project: str,
    corpus: str | None,
    images_zip: str | None = None,
    fmt: str = "auto",
    guidelines: str = "",
    annotators_per_mention: int = 1,
    timeout: float | None = None,
) -> dict:
    """/import_mentions: use the project, or create it (guidelines, annotators per mention) when
    new, then run the import job and wait for its report."""
    project = (project or "").strip()
    if not project or project == DEFAULT_PROJECT:
        raise UserError("name the project to import into (it is created when new)")
    created = False
    if project not in {p.name for p in ctx.store.list_projects()}:
        save_project(ctx, username, project, guidelines, annotators_per_mention)
        created = True
    job = start_import(ctx, username, project, corpus, images_zip, fmt)
    job.wait(timeout)
    v = job.snapshot()
    if v["state"] == "failed":
        raise UserError(v["error"])
    return (v["result"] or {}) | {"project_created": created, "job": v["id"], "state": v["state"]}


_export_dirs: list[tuple[float, Path]] = []
_export_lock = threading.Lock()
EXPORT_KEEP_SECONDS = 120.0  # as app/tabs/models.py: long enough for Gradio to copy the file


def _clean_exports(everything: bool = False) -> None:
    now = time.monotonic()
    with _export_lock:
        old = [d for t, d in _export_dirs if everything or now - t > EXPORT_KEEP_SECONDS]
        _export_dirs[:] = [(t, d) for t, d in _export_dirs if d not in old]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_clean_exports, True)


@user_errors
def export_project(ctx: AppContext, username: str | None, project: str, fmt: str = "jsonl") -> str:
    """A zip of the project's decisions (every annotator's), guidelines and images; its path."""
    ctx.require("export", username)
    if fmt not in ("jsonl", "csv"):
        raise UserError("export format must be jsonl or csv")
    _clean_exports()
    out = Path(tempfile.mkdtemp(prefix="mimic-export-"))
    with _export_lock:
        _export_dirs.append((time.monotonic(), out))
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in (project or DEFAULT_PROJECT))[:60]
    p = out / f"project-{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{fmt}.zip"
    ctx.store.export_project(project or DEFAULT_PROJECT, p, fmt=fmt)
    return str(p)


def progress_html(v: dict | None) -> str:
    """A job's snapshot as a progress bar with its message."""
    if not v:
        return ""
    what = {"project_import": "Import", "project_preannotate": "Pre-annotation"}.get(v["kind"], v["kind"])
    text = f"{what} {v['state']} · {v['seconds']:.0f} s · {v['message']}"
    if v.get("error"):
        text += f" · {v['error']}"
    return progress_bar_html(v.get("fraction"), text)


# -- the tab --------------------------------------------------------------------------------------
class ProjectsTab:
    """The Projects tab's components and events."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Projects", id="projects", elem_id="tab_projects"):
            with gr.Row():
                self.project = gr.Dropdown(
                    label="Project", choices=[], allow_custom_value=True, scale=3, elem_id="projects_pick"
                )
                self.refresh_button = gr.Button("Refresh", size="sm", scale=1, elem_id="projects_refresh")
            # the project this browser last picked or saved, shown again at the next page load
            self.remembered = browser_state(self.shared, "mimic_projects_project")
            self.table = gr.Dataframe(
                headers=PROJECT_COLUMNS, interactive=False, elem_id="projects_table", max_height=260
            )
            self.msg = gr.Markdown(elem_id="projects_msg")
            with gr.Accordion("Guidelines", open=True):
                self.guidelines_view = gr.Markdown(elem_id="projects_guidelines")
            self.annotators = gr.Dataframe(
                headers=ANNOTATOR_COLUMNS, label="Per annotator", interactive=False, elem_id="projects_annotators"
            )
            with gr.Accordion("Create or edit a project (reviewers and admins)", open=False):
                with gr.Row():
                    self.name = gr.Textbox(label="Name (the project's key: it cannot change)", elem_id="projects_name")
                    self.overlap = gr.Number(
                        label="Annotators per mention", value=1, precision=0, minimum=1, elem_id="projects_overlap"
                    )
                    # one store serves one KB (db.projects.STORE_KBS): the only choice today
                    self.kb = gr.Dropdown(
                        label="Knowledge base (this store serves one)",
                        choices=list(STORE_KBS),
                        value=STORE_KBS[0],
                        elem_id="projects_kb",
                    )
                    self.archived = gr.Checkbox(label="Archived", elem_id="projects_archived")
                self.guidelines = gr.Textbox(label="Guidelines (Markdown)", lines=8, elem_id="projects_guidelines_edit")
                self.save_button = gr.Button("Save project", variant="primary", elem_id="projects_save")
            with gr.Accordion("Import a corpus, pre-annotate (reviewers and admins)", open=False):
                with gr.Row():
                    self.corpus = gr.File(
                        label="Corpus: JSONL, CSV, official split .json or MELBench .json",
                        file_types=[".jsonl", ".csv", ".json"],
                        elem_id="projects_corpus",
                    )
                    self.images = gr.File(label="Mention images (zip)", file_types=[".zip"], elem_id="projects_zip")
                    self.fmt = gr.Dropdown(label="Format", choices=list(FORMATS), value="auto", elem_id="projects_fmt")
                with gr.Row():
                    self.import_button = gr.Button("Import into the project", elem_id="projects_import")
                    self.pre_button = gr.Button("Pre-annotate with the served model", elem_id="projects_pre")
                    self.cancel_button = gr.Button("Cancel the job", interactive=False, elem_id="projects_cancel")
                self.job_html = gr.HTML(elem_id="projects_job")
                self.rejected = gr.Dataframe(
                    headers=["row", "problem"], label="Rejected rows", interactive=False, elem_id="projects_rejected"
                )
                self.report = gr.JSON(label="Report", elem_id="projects_report")
                self.job_id = gr.State(None)
                self.poll = gr.Timer(1.0, active=False)
            with gr.Row():
                self.export_fmt = gr.Dropdown(label="Export as", choices=["jsonl", "csv"], value="jsonl", scale=1)
                self.export_button = gr.Button("Export the project (zip)", scale=1, elem_id="projects_export")
                self.export_cancel = gr.Button("Cancel export", size="sm", scale=0, elem_id="projects_export_cancel")
                self.export_file = gr.File(label="Export", scale=2, elem_id="projects_export_file")

    def _wire(self):
        s = self.shared
        listing = [self.project, self.table, self.msg]
        view = [self.guidelines_view, self.annotators]
        form = [self.name, self.overlap, self.kb, self.archived, self.guidelines]
        # The form is filled only by the page load and by a pick the user makes (`.input`): never by a
        # `.change`, which also fires when a handler sets the picker and would overwrite what the
        # user typed meanwhile (the page load's picker update did, and saving said "give a name").
        s.demo.load(self.project_load, self.remembered, listing + view + form, **PRIVATE)
        self.refresh_button.click(self.project_refresh, self.project, listing + view, **PRIVATE)
        self.project.input(self.project_show, self.project, view + form + [self.remembered], **PRIVATE)
        # a project write is one short transaction: the "db" queue, like every other write
        save_in = [self.name, self.guidelines, self.overlap, self.kb, self.archived]
        save_out = [self.msg, self.project, self.table] + view + [self.remembered]
        self.save_button.click(self.project_save, save_in, save_out, **s.db_queue, **PRIVATE)
        job_out = [self.job_id, self.job_html, self.rejected, self.report, self.msg, self.poll, self.cancel_button]
        # not in the "db" queue: these start background jobs (app/jobs.py)
        self.import_button.click(
            self.project_start_import, [self.project, self.corpus, self.images, self.fmt], job_out, **PRIVATE
        )
        self.pre_button.click(self.project_start_pre, self.project, job_out, **PRIVATE)
        self.poll.tick(self.project_poll, self.job_id, job_out[1:] + [self.table], **PRIVATE)
        self.cancel_button.click(self.project_cancel, self.job_id, self.msg, **PRIVATE)
        exporting = self.export_button.click(
            self.project_export_zip,
            [self.project, self.export_fmt],
            [self.export_file, self.msg],
            **EXPORT_QUEUE,
            **PRIVATE,
        )
        self.export_cancel.click(None, cancels=[exporting], **PRIVATE)

    def _rows(self, projects: list[dict]) -> list[list]:
        return [
            [
                p["name"],
                p["progress"]["annotators_per_mention"],
                p["progress"]["mentions"],
                p["progress"]["complete"],
                p["progress"]["pending"],
                p["progress"]["predicted"],
                p.get("kb", ""),
                p.get("archived", False),
            ]
            for p in projects
        ]

    def project_refresh(self, current, request: gr.Request):
        """The picker's choices, the table, and the picked project's guidelines and per-annotator
        progress (Refresh: the form keeps what the user typed)."""
        try:
            projects = list_projects(self.ctx, username_of(request))
        except UserError as exc:
            return gr.update(choices=[]), [], message(str(exc), "error"), "", []
        names = [p["name"] for p in projects]
        value = current if current in names else names[0]
        return (gr.update(choices=names, value=value), self._rows(projects), "") + self._view(value)

    def project_load(self, remembered, request: gr.Request):
        """The page load: the listing, and the project this browser picked last (while it exists,
        else the first) shown in the form, once."""
        out = self.project_refresh(remembered, request)
        value = out[0].get("value") if isinstance(out[0], dict) else None
        return out + (self._form(value) if value else (gr.update(),) * 5)

    def project_show(self, project, request: gr.Request):
        """A project the user picked: its guidelines, per-annotator progress, and its settings in the form."""
        try:
            self.ctx.require("project_view", username_of(request))
        except UserError:  # visitors: nothing to show
            return ("", []) + (gr.update(),) * 6
        return self._view(project) + self._form(project) + (project,)

    def _view(self, project) -> tuple:
        try:
            prog = self.ctx.store.project_progress(project or DEFAULT_PROJECT)
        except StoreError:  # a project removed meanwhile
            return "", []
        rows = [[a[c] for c in ANNOTATOR_COLUMNS] for a in prog["annotators"]]
        return guidelines_markdown(self.ctx, project), rows

    def _form(self, project) -> tuple:
        """The form's fields (name, overlap, KB, archived, guidelines) for the project."""
        if not project or project == DEFAULT_PROJECT:
            return "", 1, "default", False, ""
        try:
            p = self.ctx.store.get_project(project)
        except StoreError:
            return (gr.update(),) * 5
        return p.name, p.annotators_per_mention, p.kb, p.archived, p.guidelines

    def project_save(self, name, guidelines, overlap, kb, archived, request: gr.Request):
        try:
            rec = save_project(self.ctx, username_of(request), name, guidelines, overlap or 1, kb, archived)
            projects = list_projects(self.ctx, username_of(request))
        except UserError as exc:
            return (message(str(exc), "error"),) + (gr.update(),) * 5
        return (
            (
                message(f"Saved project {rec.name}", "ok"),
                gr.update(choices=[p["name"] for p in projects], value=rec.name),
                self._rows(projects),
            )
            + self._view(rec.name)
            + (rec.name,)
        )

    def _started(self, start):
        try:
            job = start()
        except UserError as exc:
            return None, "", [], {"error": str(exc)}, message(str(exc), "error"), gr.Timer(active=False), gr.update()
        note = message("Started: it runs in the background (you can keep working)", "info")
        return job.id, progress_html(job.snapshot()), [], None, note, gr.Timer(active=True), gr.update(interactive=True)

    def project_start_import(self, project, corpus, images, fmt, request: gr.Request):
        who = username_of(request)
        return self._started(
            lambda: start_import(self.ctx, who, project, upload_path(corpus), upload_path(images), fmt or "auto")
        )

    def project_start_pre(self, project, request: gr.Request):
        who = username_of(request)
        return self._started(lambda: start_preannotate(self.ctx, who, project or DEFAULT_PROJECT))

    def project_poll(self, job_id):
        """The job's progress bar; its report, rejected rows (and the timer off) once it has finished."""
        try:
            v = self.ctx.jobs.get(job_id).snapshot()
        except JobError:
            return (
                "",
                gr.update(),
                gr.update(),
                gr.update(),
                gr.Timer(active=False),
                gr.update(interactive=False),
                gr.update(),
            )
        if v["state"] == "running":
            return progress_html(v), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        rep = v["result"] or {"error": v["error"]}
        rows = [[r["row"], r["problem"]] for r in rep.get("rejected", [])] or [
            [f["mention"], f["problem"]] for f in rep.get("failed", [])
        ]
        note = message(v["error"], "error") if v["error"] else message(f"Job {v['state']}", "ok")
        try:
            table = self._rows(list_projects(self.ctx, v["owner"]))
        except UserError:
            table = gr.update()
        off = gr.Timer(active=False)
        return progress_html(v), rows, rep, note, off, gr.update(interactive=False), table

    def project_cancel(self, job_id, request: gr.Request):
        try:
            job = cancel_job(self.ctx, username_of(request), job_id)
        except UserError as exc:
            return message(str(exc), "error")
        return message(f"Cancelling: the job stops after its current batch ({job.message})", "info")

    def project_export_zip(self, project, fmt, request: gr.Request):
        """(Not named `export`: a private event still takes its function name, and /export is the API's.)"""
        try:
            return export_project(self.ctx, username_of(request), project, fmt or "jsonl"), ""
        except UserError as exc:
            return None, message(str(exc), "error")


def build(ctx: AppContext, shared: Shared) -> ProjectsTab:
    return ProjectsTab(ctx, shared)
