"""KB imports as background jobs (app/jobs.py): annotations are written while an import runs, an
import can be cancelled by its owner or an admin, uploads are size-limited, KB files are streamed,
and KB search returns pages with short descriptions."""

from __future__ import annotations

import json
import re
import threading
import tracemalloc

import pytest

from app.common import UserError
from app.jobs import CANCELLED, DONE, FAILED, RUNNING, JobError, JobFailure, JobRegistry
from app.tabs import annotate as annotate_tab
from app.tabs import knowledge_base as kb_tab
from db import StoreError
from mimic.data.kb_files import load_kb, open_kb


def _write_kb(path, n: int, prefix: str, text: str = "a synthetic entity") -> str:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i}", "name": f"{prefix} name {i}", "text": text}) + "\n")
    return str(path)


class _Gate:
    """Wraps service.upsert_entities: the call after the first blocks until released, so an import
    job is held mid-way (its first chunk committed) without any timing assumption."""

    def __init__(self, upsert):
        self.upsert, self.calls = upsert, 0
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, entities, *a, **kw):
        self.calls += 1
        if self.calls == 2:
            self.reached.set()
            assert self.release.wait(60), "the test never released the import"
        return self.upsert(entities, *a, **kw)


def test_an_annotation_completes_while_an_import_job_runs(studio, tmp_path, monkeypatch):
    ctx = studio.ctx
    monkeypatch.setattr(ctx.config, "kb_import_chunk", 40)
    gate = _Gate(ctx.service.upsert_entities)
    monkeypatch.setattr(ctx.service, "upsert_entities", gate)
    path = _write_kb(tmp_path / "big.jsonl", 200, "JOBA")
    job = kb_tab.start_kb_import(ctx, "rev", path)  # returns at once: the work runs in a thread
    try:
        assert gate.reached.wait(60)
        assert job.state == RUNNING and ctx.store.get_entity("JOBA0").name == "JOBA name 0"  # chunk 1 committed
        mid = ctx.store.get_mention("example:X09").id
        done: dict = {}

        def annotate():
            done["id"] = annotate_tab.annotate_api(ctx, "ana", mid, "nil", "")

        t = threading.Thread(target=annotate)
        t.start()
        t.join(30)
        assert "id" in done, "the annotation waited for the import"
        assert job.state == RUNNING  # the import was still running when the annotation was stored
        assert ctx.store.get_annotation(done["id"]).decision == "nil"
    finally:
        gate.release.set()
    assert job.wait(120)
    v = kb_tab.job_view(ctx, job.id)
    assert v["state"] == DONE and v["fraction"] == 1.0
    assert v["result"]["imported"] == 200 and v["result"]["created"] == 200 and not v["result"]["cancelled"]
    assert ctx.service.entity("JOBA199") is not None


def test_header_entity_count_follows_kb_edits_and_imports(studio, tmp_path, monkeypatch):
    """The header's count is live: the KB save returns the new header, an import's progress poll
    carries it after every chunk, and the page's timer (every HEADER_SECONDS) sends a new header
    only when something changed."""
    from types import SimpleNamespace

    from app.common import HEADER_SECONDS, header_markdown, header_update

    ctx = studio.ctx
    assert HEADER_SECONDS <= 2

    def count(md: str) -> int:
        return int(re.search(r"(\d+) entities", md).group(1))

    shown = header_markdown(ctx)
    assert header_update(ctx, shown) == {"__type__": "update"}  # nothing new: nothing sent
    kb_tab.save_entity(ctx, "rev", "HDR1", "Header test entity", "", "", None)
    new = header_update(ctx, shown)
    assert isinstance(new, str) and count(new) == count(shown) + 1 == len(ctx.service)
    monkeypatch.setattr(ctx.config, "kb_import_chunk", 20)
    gate = _Gate(ctx.service.upsert_entities)
    monkeypatch.setattr(ctx.service, "upsert_entities", gate)
    job = kb_tab.start_kb_import(ctx, "rev", _write_kb(tmp_path / "h.jsonl", 60, "HDRJ"))
    tab = SimpleNamespace(ctx=ctx)
    try:
        assert gate.reached.wait(60)  # the first chunk is stored and indexed, the job still runs
        polled = kb_tab.KnowledgeBaseTab.import_poll(tab, job.id)
        assert polled[0].startswith("Import running") and count(polled[-1]) == count(new) + 20
    finally:
        gate.release.set()
    assert job.wait(120)
    assert count(kb_tab.KnowledgeBaseTab.import_poll(tab, job.id)[-1]) == count(new) + 60 == len(ctx.service)


def test_cancel_by_owner_keeps_the_committed_chunks(studio, tmp_path, monkeypatch):
    ctx = studio.ctx
    monkeypatch.setattr(ctx.config, "kb_import_chunk", 25)
    gate = _Gate(ctx.service.upsert_entities)
    monkeypatch.setattr(ctx.service, "upsert_entities", gate)
    job = kb_tab.start_kb_import(ctx, "rev", _write_kb(tmp_path / "c.jsonl", 200, "JOBC"))
    try:
        assert gate.reached.wait(60)
        with pytest.raises(UserError, match="only rev"):
            kb_tab.cancel_kb_import(ctx, "ana", job.id)  # not the owner, not an admin
        kb_tab.cancel_kb_import(ctx, "rev", job.id)
    finally:
        gate.release.set()
    assert job.wait(60)
    rep = kb_tab.job_view(ctx, job.id)
    assert rep["state"] == CANCELLED
    r = rep["result"]
    assert r["cancelled"] and r["imported"] == 50 and "cancelled after 50" in r["summary"]  # two chunks stored
    assert ctx.store.get_entity("JOBC49") and ctx.service.entity("JOBC49") is not None
    with pytest.raises(StoreError):
        ctx.store.get_entity("JOBC50")
    with pytest.raises(UserError, match="no such job"):
        kb_tab.cancel_kb_import(ctx, "rev", "nope")


def test_job_registry_admin_cancel_and_failures():
    reg = JobRegistry(keep=2)
    go = threading.Event()

    def work(job):
        for i in range(1000):
            if job.cancel_requested:
                return {"stopped_at": i}
            job.progress(i / 1000, f"step {i}")
            go.wait(0.01)
        return {"stopped_at": None}

    job = reg.start("test", "owner", work)
    with pytest.raises(JobError):
        reg.cancel(job.id, "someone")
    reg.cancel(job.id, "boss", is_admin=True)
    assert job.wait(30) and job.state == CANCELLED and job.result["stopped_at"] is not None

    def fail(job):
        raise JobFailure("a message for the user")

    def crash(job):
        raise RuntimeError("/secret/server/path")

    f1, f2 = reg.start("test", "o", fail), reg.start("test", "o", crash)
    assert f1.wait(30) and f2.wait(30)
    assert (f1.state, f1.error) == (FAILED, "a message for the user")
    assert f2.state == FAILED and "/secret" not in (f2.error or "")
    assert len(reg._jobs) <= 3 and reg.running() == []  # finished jobs beyond `keep` are dropped


def test_import_refuses_a_file_over_the_upload_limit(studio, tmp_path, monkeypatch):
    ctx = studio.ctx
    assert studio.demo.max_file_size == 50 * 2**20  # Gradio refuses larger uploads (MIMIC_MAX_UPLOAD_MB)
    path = _write_kb(tmp_path / "big.jsonl", 200, "JOBL", text="x" * 100)
    monkeypatch.setattr(ctx.config, "max_upload_mb", 0.01)
    with pytest.raises(UserError, match=r"the limit is 0.01 MB \(MIMIC_MAX_UPLOAD_MB\)"):
        kb_tab.start_kb_import(ctx, "rev", path)
    with pytest.raises(UserError, match="the limit is"):
        kb_tab.import_kb_file(ctx, "rev", path)
    with pytest.raises(UserError, match="needs the role"):
        kb_tab.start_kb_import(ctx, "ana", path)  # the permission comes first
    assert ctx.jobs.running("kb_import") == []


def test_kb_files_are_streamed_with_bounded_memory(tmp_path):
    path = _write_kb(tmp_path / "s.jsonl", 5_000, "S", text="y" * 2000)  # about 10 MB
    tracemalloc.start()
    try:
        entities, report = open_kb(path)
        assert report.rows_read == 0  # nothing read yet
        n = sum(1 for _ in entities)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == report.loaded == report.rows_read == 5_000
    assert peak < 3_000_000  # the file is about 10 MB; the stream holds a line (plus the id set)
    csv = tmp_path / "k.csv"
    csv.write_text('id,name,text\nC1,One,"two\nlines"\nC2,,none\nC3,Three,x\n', encoding="utf-8")
    kb, rep = load_kb(csv)
    assert [e.id for e in kb] == ["C1", "C3"] and kb[0].text == "two\nlines"
    assert rep.rejected[0]["row"] == "line 4" and rep.empty_names == ["C2"]


def test_search_returns_pages_with_short_descriptions(studio):
    ctx = studio.ctx
    long_text = "A very long description. " * 2000  # 50,000 characters
    for i in range(60):
        ctx.store.upsert_entity(f"PG{i:03d}", f"Pagewidget {i:03d}", long_text)
    page, nxt = kb_tab.search_page(ctx, "pagewidget")
    assert len(page) == kb_tab.PAGE and nxt == kb_tab.PAGE
    assert all(len(r.text) <= kb_tab.TABLE_TEXT_CHARS + 1 and r.text.endswith("…") for r in page)
    rest, nxt2 = kb_tab.search_page(ctx, "pagewidget", nxt)
    assert len(rest) == 10 and nxt2 is None
    assert {r.id for r in page}.isdisjoint(r.id for r in rest)
    assert ctx.store.get_entity("PG000").text == long_text  # the full text on selection
    browse, nxt3 = kb_tab.search_page(ctx, "")
    assert len(browse) == kb_tab.PAGE and nxt3 == kb_tab.PAGE


def test_kb_tab_search_is_full_text_over_descriptions(studio):
    """Words of a description find the entity in the Knowledge base tab (the demo KB has no cheetah:
    its falcon is "a fast bird of prey", its mercury "liquid at room temperature"), ranked and paged
    as any search; an edited description is found at once, and its old words no longer."""
    ctx = studio.ctx
    page, nxt = kb_tab.search_page(ctx, "bird of prey")
    assert [r.id for r in page][:1] == ["D021"] and nxt is None
    assert [r.id for r in kb_tab.search_page(ctx, "liquid at room temperature")[0]] == ["D014"]
    assert [r.id for r in kb_tab.search_page(ctx, "Roman gods")[0]][:2] in (["D010", "D015"], ["D015", "D010"])
    kb_tab.save_entity(ctx, "rev", "FTS1", "Acinonyx", "A spotted cat of the savanna.", "", None)
    assert kb_tab.search_page(ctx, "fastest land animal")[0] == []
    kb_tab.save_entity(ctx, "rev", "FTS1", "Acinonyx", "A spotted cat, the fastest land animal.", "", None)
    assert [r.id for r in kb_tab.search_page(ctx, "fastest land animal")[0]] == ["FTS1"]
    kb_tab.save_entity(ctx, "rev", "FTS1", "Acinonyx", "A spotted cat of the savanna.", "", None)
    assert kb_tab.search_page(ctx, "fastest land animal")[0] == []
