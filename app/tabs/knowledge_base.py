"""The Knowledge base tab: browse and search the entities, add or edit one, import a KB file. Every
change is indexed in place (a new index segment), so the next link already sees it."""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import islice
from pathlib import Path

import gradio as gr

from db import StoreError
from db.import_manifest import CANCELLED, DONE, FAILED, ImportManifest
from mimic.data.kb_files import open_kb
from mimic.data.schema import Entity

from ..common import (
    PRIVATE,
    Shared,
    UserError,
    header_markdown,
    message,
    scrub_paths,
    upload_path,
    user_errors,
    username_of,
)
from ..context import AppContext, ModelLoading, WriteDenied, resolve_images
from ..jobs import Job, JobError, JobFailure

log = logging.getLogger("mimic.app.kb")
# -- handlers -------------------------------------------------------------------------------------
PAGE = 50  # entities per page of the search/browse table
TABLE_TEXT_CHARS = 200  # description characters shown in the table (the full text loads on selection)
REPORT_ROWS = 500  # rejected rows listed in an import report (all are counted)
BIG_IMPORT_ROWS = 10_000  # a file with more rows is indexed in segments of INDEX_BATCH_FRACTION of the index
INDEX_BATCH_FRACTION = 0.25
_MAX_ID, _MAX_NAME = 200, 20_000  # the store's limits on an entity id and name (db/_base.py)


@user_errors
def search_kb(ctx: AppContext, query: str, limit: int = 30, offset: int = 0, text_chars: int | None = None) -> list:
    """One page of entities: those matching `query` (empty: all, by name), `limit` from `offset`,
    descriptions cut to `text_chars` characters when given."""
    query = (query or "").strip()
    if not query:
        return ctx.store.list_entities(offset, limit, text_chars=text_chars)
    return ctx.store.search_entities(query, limit=limit, offset=offset, text_chars=text_chars)


def search_page(ctx: AppContext, query: str, offset: int = 0, page: int = PAGE) -> tuple[list, int | None]:
    """(a page of at most `page` entities with short descriptions, the next page's offset or None)."""
    offset = max(0, int(offset or 0))
    recs = search_kb(ctx, query, limit=page + 1, offset=offset, text_chars=TABLE_TEXT_CHARS)
    return recs[:page], (offset + page if len(recs) > page else None)


def entity_images(ctx: AppContext, rec) -> list[str]:
    """The entity's images that may be shown (inside DATA_DIR/images or assets/); others dropped."""
    return resolve_images(rec.images, ctx.config.data_dir)


@user_errors
def save_entity(
    ctx: AppContext,
    username: str | None,
    entity_id: str,
    name: str,
    description: str,
    aliases: str,
    images: list[str] | None,
    keep_images: bool = True,
):
    """Create or edit an entity; the index is updated in place (a new segment), not rebuilt."""
    author = ctx.require("kb_edit", username)
    entity_id, name = (entity_id or "").strip(), (name or "").strip()
    if not entity_id:
        raise UserError("the entity needs an id")
    if not name:
        raise UserError("the entity needs a name")
    alias_list = [a.strip() for a in (aliases or "").replace("\n", "|").split("|") if a.strip()]
    paths = []
    if keep_images:
        try:
            paths += ctx.store.get_entity(entity_id).images
        except StoreError:
            pass
    for p in images or []:
        stored = ctx.store.images.put(p, "images")  # validated, content-addressed copy in DATA_DIR
        paths.append(ctx.store.store_relative(stored.path))
    ent = Entity(entity_id, name, description or "", alias_list, list(dict.fromkeys(paths)))
    return ctx.save_entity(ent, author)


def _open_kb_upload(ctx: AppContext, path: str | None):
    """The checks before an import starts (size, format, whole-file problems): (entity stream,
    report). Nothing is stored yet; a problem raises UserError."""
    if not path:
        raise UserError("choose a KB file to import")
    name = Path(path).name
    try:
        size = Path(path).stat().st_size
    except OSError:
        raise UserError(f"cannot import {name}: the file is not there (upload it again)") from None
    limit = ctx.config.max_upload_bytes
    if size > limit:
        raise UserError(
            f"cannot import {name}: it is {size / 2**20:.2f} MB, the limit is {ctx.config.max_upload_mb:g} MB "
            "(MIMIC_MAX_UPLOAD_MB); split the file or ask the operator to raise the limit"
        )
    try:
        return open_kb(path)
    except (ValueError, OSError) as exc:  # unreadable file, unknown format: nothing was imported
        raise UserError(f"cannot import {name}: {exc}") from None


def _run_import(
    ctx: AppContext,
    author: str,
    entities,
    report,
    job: Job | None = None,
    progress=None,
    manifest: ImportManifest | None = None,
) -> dict:
    """Store and index the entities chunk by chunk (MIMIC_KB_IMPORT_CHUNK per transaction). Each
    chunk takes the KB lock only while it is written and indexed, so annotations, KB edits and
    links go between chunks; a cancelled job stops before the next chunk (stored chunks stay).
    With a `manifest` (db/import_manifest.py) the rows an earlier run of the same file committed
    (`rows_done`) are read again but not stored, and each committed chunk advances it."""
    size = max(1, Path(report.path).stat().st_size) if Path(report.path).is_file() else 1
    lines = _count_lines(report.path)
    image_errors: list = []
    totals = {"created": 0, "updated": 0, "unchanged": 0}
    too_long: list[dict] = []
    indexed = 0
    skip = manifest.rows_done if manifest is not None else 0
    before = manifest.imported if manifest is not None else 0
    skipped = 0

    def valid(stream):
        nonlocal skipped
        for e in stream:
            if report.rows_read <= skip:  # committed by an earlier run of this file
                skipped += 1
                continue
            if len(e.id) > _MAX_ID or len(e.name) > _MAX_NAME:
                too_long.append({"row": None, "id": e.id[:80], "reason": "id over 200 or name over 20,000 characters"})
                continue
            yield e

    stream = valid(entities)
    chunk_size = ctx.config.kb_import_chunk
    cancelled = False
    # A big file is indexed in segments of at least INDEX_BATCH_FRACTION of the index: a segment is
    # appended in place (well under a second at 100k), but each keeps its own files and lexical part,
    # searched per query, so one per chunk would leave hundreds; its chunks are stored (and recorded
    # in the manifest) one by one all the same. An entity stored but not yet
    # indexed is indexed at the next segment, at the end, on a cancel or failure, or at the next start.
    big = lines > BIG_IMPORT_ROWS
    pending: list[str] = []  # ids stored, not yet indexed

    def index_pending() -> None:
        nonlocal indexed
        if pending:
            entities = ctx.store.entities_by_id(pending)  # as stored now (a KB edit since included)
            ctx.service.upsert_entities(
                [replace(e, images=resolve_images(e.images, ctx.config.data_dir)) for e in entities]
            )
            indexed += len(pending)
            pending.clear()

    stored_total = 0
    try:
        while True:
            if job is not None and job.cancel_requested:
                cancelled = True
                break
            batch = list(islice(stream, chunk_size))
            if not batch:
                break
            stored: list[Entity] = []
            with ctx.kb_lock:  # held for one chunk: its transaction (and its index segment)
                counts = ctx.store.import_kb(
                    batch,
                    author=author,
                    chunk_size=len(batch),
                    image_errors=image_errors,
                    on_chunk=lambda c, _totals: stored.extend(c),  # noqa: B023 (called before the loop moves on)
                )
                pending.extend(e.id for e in stored)
                if not big or len(pending) >= max(chunk_size, int(INDEX_BATCH_FRACTION * len(ctx.service))):
                    index_pending()
            for k, v in counts.items():
                totals[k] += v
            stored_total += len(stored)
            if manifest is not None:  # stored rows count: a start indexes what is stored and not indexed
                ctx.kb_imports.advance(manifest, report.rows_read, before + stored_total)
            frac = min(0.99, report.rows_read / lines) if lines else 0.5
            msg = f"stored and indexed {indexed:,} entities ({report.rows_read:,} rows read of about {lines:,})"
            if pending:
                msg += f"; {len(pending):,} more stored, indexed with the next segment"
            if job is not None:
                job.progress(frac, msg)
            if progress:
                progress(frac, desc=msg)
    except BaseException:
        try:  # what was stored is indexed (else the next start does it)
            with ctx.kb_lock:
                index_pending()
        except Exception:
            log.exception("indexing an interrupted import's stored entities (the next start indexes them)")
        raise
    with ctx.kb_lock:
        index_pending()
    out = report.to_dict()
    out["rejected"] = out["rejected"] + too_long
    for key in ("rejected", "duplicates", "empty_names", "missing_images"):  # a report, not a copy of the file
        out[f"{key}_count"] = len(out[key])
        out[key] = out[key][:REPORT_ROWS]
    out["loaded"] = report.loaded - len(too_long)
    out["imported"] = indexed
    out.update(totals)
    out["rows_read"] = report.rows_read
    out["file_bytes"] = size
    out["cancelled"] = cancelled
    out["resumed_from_row"] = skip  # 0: the file was read from its start
    out["skipped"] = skipped  # entities an earlier run of this file stored (read, not stored again)
    if manifest is not None:
        out["runs"] = manifest.runs
        ctx.kb_imports.finish(manifest, CANCELLED if cancelled else DONE)
    if cancelled:
        out["summary"] = (
            f"cancelled after {indexed:,} entities ({report.rows_read:,} rows read): "
            "the entities stored before the cancel stay in the KB and the index"
        )
    out["rejected_images"] = [{**e, "image": Path(e["image"]).name} for e in image_errors]  # no server paths
    out["path"] = Path(report.path).name  # the upload folder is a server path
    if progress:
        progress(1.0, desc=f"indexed {indexed}/{indexed}")
    return out


def _count_lines(path: str, block: int = 1 << 20) -> int:
    """Newlines in the file (the row count of a JSONL/CSV file, for progress), read in blocks."""
    p = Path(path)
    if not p.is_file():
        return 0
    n, last = 0, b""
    with p.open("rb") as f:
        while data := f.read(block):
            n += data.count(b"\n")
            last = data[-1:]
    return n + (1 if last and last != b"\n" else 0)


@user_errors
def import_kb_file(ctx: AppContext, username: str | None, path: str, progress=None) -> dict:
    """Import a KB file (official kb_entity.json, JSONL, CSV) in the caller's thread: valid rows
    are stored and indexed chunk by chunk, the rest reported. Returns the loader's report plus
    counts. The app's tab runs the same work as a background job (`start_kb_import`)."""
    author = ctx.require("kb_import", username)
    entities, report = _open_kb_upload(ctx, path)
    return _run_import(ctx, author, entities, report, progress=progress)


@user_errors
def start_kb_import(ctx: AppContext, username: str | None, path: str) -> Job:
    """Check the upload, then import it as a background job (app/jobs.py) and return at once: the
    import never runs in the "db" queue, so annotations are written between its chunks. The same
    file (by its bytes) uploaded again after a cancel, a failure or a restart continues where the
    earlier import stopped (`resume_kb_imports` resumes those a restart cut, at start)."""
    author = ctx.require("kb_import", username)
    _open_kb_upload(ctx, path)  # size, format, whole-file checks before anything is kept
    manifest = ctx.kb_imports.begin(path, author)
    return _start_job(ctx, author, path, manifest)


def _start_job(ctx: AppContext, author: str, path: str | Path, manifest: ImportManifest) -> Job:
    with ctx.kb_import_lock:  # one import of a file at a time
        if manifest.sha256 in ctx.kb_imports_running:
            raise UserError(f"{manifest.name} is being imported already: wait for that import (or cancel it)")
        ctx.kb_imports_running.add(manifest.sha256)
    try:
        entities, report = _open_kb_upload(ctx, str(path))
    except BaseException:
        ctx.kb_imports_running.discard(manifest.sha256)
        ctx.kb_imports.finish(manifest, FAILED)
        raise

    def work(job: Job) -> dict:
        try:
            while not ctx.ready and not job.cancel_requested:  # a job resumed at start, or an early upload
                job.progress(0.0, "waiting for the model to load")
                try:
                    ctx.wait_ready(timeout=5)
                except ModelLoading:
                    continue
            if manifest.rows_done:
                job.progress(0.0, f"resuming after row {manifest.rows_done:,} (earlier runs stored those)")
            return _run_import(ctx, author, entities, report, job=job, manifest=manifest)
        except (StoreError, ValueError, OSError) as exc:  # a user's message, less server paths
            ctx.kb_imports.finish(manifest, FAILED)
            raise JobFailure(f"import stopped at row {report.rows_read:,}: {scrub_paths(str(exc))}") from None
        except BaseException:
            ctx.kb_imports.finish(manifest, FAILED)
            raise
        finally:
            ctx.kb_imports_running.discard(manifest.sha256)

    return ctx.jobs.start("kb_import", author, work)


def resume_kb_imports(ctx: AppContext) -> list[Job]:
    """At start: the imports a stop cut while they ran (a crash, a restart) continue as jobs of
    their author from their last committed chunk, reading the file's kept copy (or the original,
    when it is still where it was uploaded from). An author who may no longer import is skipped
    (logged); the manifest then waits for an upload of the same file."""
    jobs = []
    for m in ctx.kb_imports.unfinished():
        try:
            author = ctx.require("kb_import", m.author)
            path = ctx.kb_imports.source(m)
            m = ctx.kb_imports.begin(path, author, name=m.name)
            jobs.append(_start_job(ctx, author, path, m))
            log.info("resuming the import of %s after row %d (run %d)", m.name, m.rows_done, m.runs)
        except (UserError, WriteDenied, StoreError, OSError) as exc:
            log.warning("not resuming the import of %s: %s", m.name, exc)
    return jobs


@user_errors
def cancel_kb_import(ctx: AppContext, username: str | None, job_id: str | None) -> Job:
    """Stop an import before its next chunk: only whoever started it, or an admin."""
    name = ctx.annotator(username)
    is_admin = ctx.store.get_annotator(name).role == "admin"
    try:
        return ctx.jobs.cancel(job_id, name, is_admin=is_admin)
    except JobError as exc:
        raise UserError(str(exc)) from None


def job_view(ctx: AppContext, job_id: str | None) -> dict | None:
    """The job's snapshot, or None when there is none."""
    try:
        return ctx.jobs.get(job_id).snapshot()
    except JobError:
        return None


# -- the tab --------------------------------------------------------------------------------------
class KnowledgeBaseTab:
    """The Knowledge base tab's components and events."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Knowledge base", id="kb", elem_id="tab_kb"):
            with gr.Row():
                self.query = gr.Textbox(
                    label="Search names, aliases, ids and descriptions (empty: browse)", scale=3, elem_id="kb_query"
                )
                self.search_button = gr.Button("Search", scale=1, elem_id="kb_search")
            self.table = gr.Dataframe(
                headers=["id", "name", "aliases", "description", "images", "version"],
                interactive=False,
                elem_id="kb_table",
                max_height=360,
            )
            with gr.Row():
                self.prev_button = gr.Button("◀ Previous page", size="sm", interactive=False, elem_id="kb_prev")
                self.next_button = gr.Button("Next page ▶", size="sm", interactive=False, elem_id="kb_next")
            self.offset = gr.State(0)  # first row of the page shown
            self.gallery = gr.Gallery(label="Images", columns=8, height=180, elem_id="kb_gallery")
            with gr.Accordion("Add or edit an entity (select a row to load it)", open=True):
                with gr.Row():
                    self.entity_id = gr.Textbox(label="Id", elem_id="kb_id")
                    self.name = gr.Textbox(label="Name", elem_id="kb_name")
                    self.aliases = gr.Textbox(label="Aliases (separated by |)", elem_id="kb_aliases")
                self.text = gr.Textbox(label="Description / attributes", lines=3, elem_id="kb_text")
                self.images = gr.File(
                    label="Add images", file_count="multiple", file_types=["image"], elem_id="kb_images"
                )
                self.keep = gr.Checkbox(value=True, label="Keep the entity's current images")
                self.save_button = gr.Button(
                    "Save entity (updates the index in place)", variant="primary", elem_id="kb_save"
                )
            self.msg = gr.Markdown(elem_id="kb_msg")
            limit = self.ctx.config.max_upload_mb
            with gr.Accordion(
                f"Import a KB file (official kb_entity.json, JSONL, CSV; at most {limit:g} MB)", open=False
            ):
                self.file = gr.File(label="KB file", file_types=[".json", ".jsonl", ".csv"], elem_id="kb_file")
                with gr.Row():
                    self.import_button = gr.Button("Import", elem_id="kb_import")
                    self.cancel_button = gr.Button("Cancel the import", interactive=False, elem_id="kb_cancel")
                self.job_md = gr.Markdown(elem_id="kb_job")
                self.report = gr.JSON(label="Import report", elem_id="kb_report")
                self.job_id = gr.State(None)
                self.poll = gr.Timer(1.0, active=False)

    def _wire(self):
        s = self.shared
        rows_out = [self.table, self.gallery, self.msg, self.offset, self.prev_button, self.next_button]
        gr.on([self.search_button.click, self.query.submit], self.rows, self.query, rows_out, **PRIVATE)
        self.prev_button.click(self.prev_page, [self.query, self.offset], rows_out, **PRIVATE)
        self.next_button.click(self.next_page, [self.query, self.offset], rows_out, **PRIVATE)
        self.table.select(self.pick, self.table, [self.entity_id, self.name, self.aliases, self.text], **PRIVATE)
        form = [self.entity_id, self.name, self.aliases, self.text, self.images, self.keep]
        self.save_button.click(self.kb_save, form, [self.msg, s.header], **s.db_queue, **PRIVATE)
        job_out = [self.job_id, self.job_md, self.report, self.msg, self.poll, self.cancel_button, self.import_button]
        # not in the "db" queue: the handler checks the file and starts a background job (app/jobs.py)
        self.import_button.click(self.import_file, self.file, job_out, **PRIVATE)
        self.poll.tick(self.import_poll, self.job_id, job_out[1:] + [s.header], **PRIVATE)
        self.cancel_button.click(self.import_cancel, self.job_id, [self.job_md, self.msg], **PRIVATE)
        s.demo.load(self.browse, None, rows_out, **PRIVATE)

    def rows(self, query, offset=0):
        """A page of the search (or browse) as the table shows it: PAGE entities, descriptions cut."""
        try:
            recs, nxt = search_page(self.ctx, query, offset)
        except UserError as exc:
            return [], [], message(str(exc), "error"), 0, gr.update(interactive=False), gr.update(interactive=False)
        offset = max(0, int(offset or 0))
        rows = [[r.id, r.name, " | ".join(r.aliases), r.text, len(r.images), r.version] for r in recs]
        gal = [(imgs[0], f"{r.name} ({r.id})") for r in recs for imgs in [entity_images(self.ctx, r)] if imgs][:48]
        if recs:
            note = f"{len(recs)} entities (rows {offset + 1}–{offset + len(recs)})" + (
                ", more on the next page" if nxt else ""
            )
        else:
            note = "no entities" + (" on this page" if offset else "")
        return (
            rows,
            gal,
            message(note, "info"),
            offset,
            gr.update(interactive=offset > 0),
            gr.update(interactive=nxt is not None),
        )

    def browse(self):
        return self.rows("")

    def prev_page(self, query, offset):
        return self.rows(query, max(0, int(offset or 0) - PAGE))

    def next_page(self, query, offset):
        return self.rows(query, int(offset or 0) + PAGE)

    def pick(self, table, evt: gr.SelectData):
        """A selected row loads the entity into the edit form."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            eid = table.iloc[row, 0] if hasattr(table, "iloc") else table[row][0]
            r = self.ctx.store.get_entity(str(eid))
        except Exception:
            return gr.update(), gr.update(), gr.update(), gr.update()
        return r.id, r.name, " | ".join(r.aliases), r.text

    def kb_save(self, eid, name, aliases, text, files, keep, request: gr.Request):
        """Save the form (named kb_save: tests/test_security.py finds its raw queue event by that name)."""
        paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
        try:
            rec = save_entity(self.ctx, username_of(request), eid, name, text, aliases, paths, keep_images=keep)
        except UserError as exc:
            return message(str(exc), "error"), gr.update()
        return (
            message(
                f"Saved {rec.id} (version {rec.version}); the index now serves it ({len(self.ctx.service)} entities)",
                "ok",
            ),
            header_markdown(self.ctx),
        )

    def import_file(self, file, request: gr.Request):
        """Check the upload and start the import job; the timer then polls it."""
        try:
            job = start_kb_import(self.ctx, username_of(request), upload_path(file))
        except UserError as exc:
            err = {"error": str(exc)}
            return None, "", err, message(str(exc), "error"), gr.Timer(active=False), gr.update(), gr.update()
        return (
            job.id,
            f"Import running: {job.message}",
            None,
            message("Import started: it runs in the background (you can keep working)", "info"),
            gr.Timer(active=True),
            gr.update(interactive=True),
            gr.update(interactive=False),
        )

    def import_poll(self, job_id):
        """The job's progress; its report (and the timer off) once it has finished."""
        v = job_view(self.ctx, job_id)
        if v is None:
            return (
                "",
                gr.update(),
                gr.update(),
                gr.Timer(active=False),
                gr.update(interactive=False),
                gr.update(interactive=True),
                gr.update(),
            )
        if v["state"] == "running":
            bar = f"{v['fraction'] * 100:.0f}%"
            return (
                f"Import running ({bar}, {v['seconds']:.0f} s): {v['message']}",
                gr.update(),
                gr.update(),
                gr.update(),
                gr.update(),
                gr.update(),
                header_markdown(self.ctx),  # the entity count grows with every chunk
            )
        off = (gr.Timer(active=False), gr.update(interactive=False), gr.update(interactive=True))
        if v["state"] == "failed":
            return (
                (f"Import failed: {v['error']}", {"error": v["error"]}, message(v["error"], "error"))
                + off
                + (header_markdown(self.ctx),)
            )
        rep = v["result"] or {}
        if v["state"] == "cancelled":
            note = message(f"Import cancelled: {rep.get('summary', '')}", "info")
        else:
            note = message(f"Imported {rep.get('imported', 0)} entities", "ok")
        return (f"Import {v['state']} after {v['seconds']:.0f} s", rep, note) + off + (header_markdown(self.ctx),)

    def import_cancel(self, job_id, request: gr.Request):
        try:
            job = cancel_kb_import(self.ctx, username_of(request), job_id)
        except UserError as exc:
            return gr.update(), message(str(exc), "error")
        return f"Cancelling: the import stops after its current chunk ({job.message})", gr.update()


def build(ctx: AppContext, shared: Shared) -> KnowledgeBaseTab:
    return KnowledgeBaseTab(ctx, shared)
