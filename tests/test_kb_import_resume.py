"""Resumable KB imports (db/import_manifest.py, app/tabs/knowledge_base.py): an import cancelled or
cut by a restart continues from its last committed chunk when the same file is uploaded again or the
app starts; the same file is not imported twice at once; uploads over the limit get a clear message;
search comes in pages. Over a real store with a stand-in linking service (fast)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from _fake_service import FakeService  # tests/ is on sys.path (pytest rootdir conftest)

from app.common import UserError
from app.config import AppConfig
from app.context import AppContext
from app.jobs import CANCELLED, DONE
from app.tabs import knowledge_base as kb_tab
from db import open_store
from db.import_manifest import FAILED, RUNNING, ImportManifests, file_sha256
from mimic.data.schema import Entity

N, CHUNK = 50, 10


def _ctx(data: Path, chunk: int = CHUNK) -> AppContext:
    cfg = AppConfig.from_env(
        {"DATA_DIR": str(data), "MIMIC_EXAMPLES": "", "MIMIC_USERS": "rev:rev-pw:reviewer,ana:ana-pw"}
    )
    cfg.kb_import_chunk = chunk
    ctx = AppContext(cfg, open_store(data), FakeService())
    for u in cfg.users:
        ctx.store.add_annotator(u.name, u.role)
    ctx._ready.set()
    return ctx


def _write_kb(path: Path, n: int = N, prefix: str = "R") -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i:03d}", "name": f"{prefix} entity {i}", "text": f"row {i}"}) + "\n")
    return path


class _Gate:
    """Wraps upsert_entities: call `at` blocks until released (the job is held after a commit)."""

    def __init__(self, upsert, at: int = 3):
        self.upsert, self.calls, self.at = upsert, 0, at
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, entities, *a, **kw):
        self.calls += 1
        if self.calls == self.at:
            self.reached.set()
            assert self.release.wait(60)
        return self.upsert(entities, *a, **kw)


def test_a_cancelled_import_continues_where_it_stopped_when_the_file_is_uploaded_again(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path / "data")
    fake = ctx.service
    path = _write_kb(tmp_path / "kb.jsonl")
    gate = _Gate(fake.upsert_entities, at=3)
    monkeypatch.setattr(fake, "upsert_entities", gate)
    job = kb_tab.start_kb_import(ctx, "rev", str(path))
    assert gate.reached.wait(60)  # chunks 1-2 indexed, chunk 3 committed and being indexed
    with pytest.raises(UserError, match="being imported already"):
        kb_tab.start_kb_import(ctx, "rev", str(path))  # the same bytes, while the first import runs
    kb_tab.cancel_kb_import(ctx, "rev", job.id)
    gate.release.set()
    assert job.wait(60) and job.state == CANCELLED and job.result["imported"] == 3 * CHUNK
    m = ctx.kb_imports.get(file_sha256(path))
    assert m is not None and m.state == CANCELLED and m.rows_done == 3 * CHUNK and m.imported == 3 * CHUNK
    assert ctx.kb_imports.file(m).read_bytes() == path.read_bytes()  # kept for the resume

    # uploaded again, under another name (Gradio's upload folder): only the rest is stored and indexed
    again = tmp_path / "upload" / "kb-again.jsonl"
    again.parent.mkdir()
    again.write_bytes(path.read_bytes())
    monkeypatch.setattr(fake, "upsert_entities", gate.upsert)
    before = list(fake.indexed)
    job2 = kb_tab.start_kb_import(ctx, "rev", str(again))
    assert job2.wait(60) and job2.state == DONE, job2.error
    r = job2.result
    assert (r["resumed_from_row"], r["skipped"], r["created"], r["imported"]) == (30, 30, 20, 20)
    assert r["runs"] == 2
    assert fake.indexed[len(before) :] == [f"R{i:03d}" for i in range(30, N)]  # no entity indexed twice
    assert ctx.store.count_entities() == N
    done = ctx.kb_imports.get(m.sha256)
    assert done is not None and done.state == DONE and done.rows_done == N and done.imported == N
    assert not (ctx.kb_imports.folder / m.sha256).exists()  # the copy goes once the import is done
    # a finished file uploaded once more is a plain re-import (every row read, nothing new)
    job3 = kb_tab.start_kb_import(ctx, "rev", str(path))
    assert job3.wait(60) and job3.result["resumed_from_row"] == 0 and job3.result["unchanged"] == N


def test_an_import_cut_by_a_restart_resumes_at_start_from_the_kept_copy(tmp_path):
    data = tmp_path / "data"
    ctx = _ctx(data)
    path = _write_kb(tmp_path / "kb.jsonl")
    # the state a crash leaves: two chunks committed and recorded, the manifest still "running"
    m = ctx.kb_imports.begin(path, "rev")
    ctx.store.import_kb([Entity(f"R{i:03d}", f"R entity {i}", f"row {i}") for i in range(2 * CHUNK)], author="rev")
    ctx.kb_imports.advance(m, 2 * CHUNK, 2 * CHUNK)
    ctx.store.close()
    path.unlink()  # the upload folder did not survive the restart

    ctx2 = _ctx(data)
    assert [x.sha256 for x in ctx2.kb_imports.unfinished()] == [m.sha256]
    jobs = kb_tab.resume_kb_imports(ctx2)
    assert len(jobs) == 1 and jobs[0].owner == "rev"
    assert jobs[0].wait(60) and jobs[0].state == DONE, jobs[0].error
    r = jobs[0].result
    assert (r["resumed_from_row"], r["skipped"], r["created"], r["unchanged"]) == (20, 20, 30, 0)
    assert ctx2.store.count_entities() == N and ctx2.service.indexed == [f"R{i:03d}" for i in range(20, N)]
    assert ctx2.kb_imports.unfinished() == [] and kb_tab.resume_kb_imports(ctx2) == []


def test_a_resumed_import_waits_for_a_model_still_loading(tmp_path):
    ctx = _ctx(tmp_path / "data")
    ctx._ready.clear()
    svc, ctx._service = ctx._service, None
    job = kb_tab.start_kb_import(ctx, "rev", str(_write_kb(tmp_path / "kb.jsonl", 15)))
    assert not job.wait(0.5) and job.snapshot()["message"] == "waiting for the model to load"
    ctx._service = svc
    ctx._ready.set()
    assert job.wait(60) and job.state == DONE and job.result["imported"] == 15


def test_manifests_are_atomic_and_an_unreadable_one_starts_over(tmp_path):
    mf = ImportManifests(tmp_path / "imports")
    path = _write_kb(tmp_path / "kb.jsonl", 5)
    m = mf.begin(path, "rev")
    assert m.state == RUNNING and m.rows_done == 0 and m.name == "kb.jsonl"
    mf.advance(m, 3, 3)
    assert mf.get(m.sha256).rows_done == 3  # type: ignore[union-attr]
    assert not list(mf.folder.glob(".manifest-*"))  # no temporary file left
    again = mf.begin(path, "rev")
    assert (again.rows_done, again.runs) == (3, 2)
    mf.finish(again, FAILED)
    assert mf.unfinished() == []  # a failed import waits for its file, it is not retried at start
    (mf.folder / f"{m.sha256}.json").write_text("{not json", encoding="utf-8")
    fresh = mf.begin(path, "rev")
    assert (fresh.rows_done, fresh.runs) == (0, 1)


def test_an_upload_over_the_limit_is_refused_with_the_limit_named(tmp_path):
    ctx = _ctx(tmp_path / "data")
    ctx.config.max_upload_mb = 0.001
    path = _write_kb(tmp_path / "big.jsonl", 40)
    with pytest.raises(UserError, match=r"big.jsonl: it is 0.00 MB, the limit is 0.001 MB \(MIMIC_MAX_UPLOAD_MB\)"):
        kb_tab.start_kb_import(ctx, "rev", str(path))
    assert ctx.jobs.running() == [] and ctx.kb_imports.unfinished() == []  # nothing kept for a refused file


def test_search_results_come_in_pages(tmp_path):
    ctx = _ctx(tmp_path / "data")
    ctx.store.import_kb([Entity(f"P{i:03d}", f"Paged entity {i:03d}", "x" * 500) for i in range(120)])
    seen, offset, pages = [], 0, 0
    while offset is not None:
        recs, nxt = kb_tab.search_page(ctx, "paged", offset)
        assert len(recs) <= kb_tab.PAGE and all(len(r.text) <= kb_tab.TABLE_TEXT_CHARS + 1 for r in recs)
        seen += [r.id for r in recs]
        offset, pages = nxt, pages + 1
    assert pages == 3 and seen == [f"P{i:03d}" for i in range(120)]  # every match once, in order


def test_a_big_file_is_indexed_in_growing_segments_as_stored(tmp_path, monkeypatch):
    ctx = _ctx(tmp_path / "data")
    fake = ctx.service
    fake.n = 100  # the index holds 100 entities: segments of at least 25
    monkeypatch.setattr(kb_tab, "BIG_IMPORT_ROWS", 10)
    store_chunk, chunks = ctx.store.import_kb, []

    def store_then_edit(entities, **kw):
        counts = store_chunk(entities, **kw)
        chunks.append(len(entities))
        if len(chunks) == 4:  # R030-R039 stored, waiting for their segment: a reviewer edits one
            ctx.store.upsert_entity("R035", "R entity 35 (edited)", "row 35", author="rev")
        return counts

    monkeypatch.setattr(ctx.store, "import_kb", store_then_edit)
    path = _write_kb(tmp_path / "kb.jsonl", 60)
    job = kb_tab.start_kb_import(ctx, "rev", str(path))
    assert job.wait(60) and job.state == DONE, job.error
    assert job.result["imported"] == 60 and sorted(fake.indexed) == [f"R{i:03d}" for i in range(60)]
    assert fake.calls == 2  # 30 entities (>= 25), then the last 30 (< 32) at the end; not 6 segments
    assert fake.entities["R035"].name == "R entity 35 (edited)"  # indexed as stored now, not as read
