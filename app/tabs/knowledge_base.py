"""The Knowledge base tab: browse and search the entities, add or edit one, import a KB file. Every
change is indexed in place (a new index segment), so the next link already sees it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gradio as gr

from db import StoreError
from mimic.data.kb_files import load_kb
from mimic.data.schema import Entity

from ..common import PRIVATE, Shared, UserError, header_markdown, message, upload_path, user_errors, username_of
from ..context import AppContext, resolve_images


# -- handlers -------------------------------------------------------------------------------------
@user_errors
def search_kb(ctx: AppContext, query: str, limit: int = 30) -> list:
    query = (query or "").strip()
    if not query:
        return ctx.store.list_entities(0, limit)
    return ctx.store.search_entities(query, limit=limit)


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


@user_errors
def import_kb_file(ctx: AppContext, username: str | None, path: str, progress=None) -> dict:
    """Import a KB file (official kb_entity.json, JSONL, CSV): valid rows are stored and indexed, the
    rest reported. Returns the loader's report plus counts."""
    author = ctx.require("kb_import", username)
    if not path:
        raise UserError("choose a KB file to import")
    try:
        kb, report = load_kb(path)
    except (ValueError, OSError) as exc:  # unreadable file, unknown format: nothing was imported
        raise UserError(f"cannot import {Path(path).name}: {exc}") from None
    ents = kb.entities
    if progress:
        progress(0.1, desc=f"storing {len(ents)} entities")
    image_errors: list = []
    with ctx.kb_lock:
        ctx.store.import_kb(kb, author=author, image_errors=image_errors)  # images copied in by content
        stored = {e.id: e for e in ctx.store.knowledge_base()} if ents else {}
        ents = [
            replace(stored[e.id], images=resolve_images(stored[e.id].images, ctx.config.data_dir))
            for e in ents
            if e.id in stored
        ]
        done = 0
        for s in range(0, len(ents), 64):
            chunk = ents[s : s + 64]
            ctx.service.upsert_entities(chunk)
            done += len(chunk)
            if progress:
                progress(0.1 + 0.9 * done / max(1, len(ents)), desc=f"indexed {done}/{len(ents)}")
    out = report.to_dict()
    out["imported"] = len(ents)
    out["rejected_images"] = [{**e, "image": Path(e["image"]).name} for e in image_errors]  # no server paths
    return out


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
                    label="Search names, aliases and ids (empty: browse)", scale=3, elem_id="kb_query"
                )
                self.search_button = gr.Button("Search", scale=1, elem_id="kb_search")
            self.table = gr.Dataframe(
                headers=["id", "name", "aliases", "description", "images", "version"],
                interactive=False,
                elem_id="kb_table",
                max_height=360,
            )
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
            with gr.Accordion("Import a KB file (official kb_entity.json, JSONL, CSV)", open=False):
                self.file = gr.File(label="KB file", file_types=[".json", ".jsonl", ".csv"], elem_id="kb_file")
                self.import_button = gr.Button("Import", elem_id="kb_import")
                self.report = gr.JSON(label="Import report", elem_id="kb_report")

    def _wire(self):
        s = self.shared
        rows_out = [self.table, self.gallery, self.msg]
        gr.on([self.search_button.click, self.query.submit], self.rows, self.query, rows_out, **PRIVATE)
        self.table.select(self.pick, self.table, [self.entity_id, self.name, self.aliases, self.text], **PRIVATE)
        form = [self.entity_id, self.name, self.aliases, self.text, self.images, self.keep]
        self.save_button.click(self.kb_save, form, [self.msg, s.header], **s.db_queue, **PRIVATE)
        self.import_button.click(
            self.import_file, self.file, [self.report, self.msg, s.header], **s.db_queue, **PRIVATE
        )
        s.demo.load(self.browse, None, rows_out, **PRIVATE)

    def rows(self, query):
        try:
            recs = search_kb(self.ctx, query, limit=200)
        except UserError as exc:
            return [], [], message(str(exc), "error")
        rows = [[r.id, r.name, " | ".join(r.aliases), r.text, len(r.images), r.version] for r in recs]
        gal = [(imgs[0], f"{r.name} ({r.id})") for r in recs for imgs in [entity_images(self.ctx, r)] if imgs][:48]
        return rows, gal, message(f"{len(recs)} entities" + (" (first 200)" if len(recs) == 200 else ""), "info")

    def browse(self):
        return self.rows("")

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

    def import_file(self, file, request: gr.Request, progress=gr.Progress()):
        try:
            rep = import_kb_file(self.ctx, username_of(request), upload_path(file), progress=progress)
        except UserError as exc:
            return {"error": str(exc)}, message(str(exc), "error"), gr.update()
        return rep, message(f"Imported {rep['imported']} entities", "ok"), header_markdown(self.ctx)


def build(ctx: AppContext, shared: Shared) -> KnowledgeBaseTab:
    return KnowledgeBaseTab(ctx, shared)
