"""Incremental index appends: a segment commit extends faiss, the lexical index and the stores in
place (no reload), ranks as an index built at once, keeps tombstones, and survives a crash."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import mimic.serving.index as mi
import mimic.serving.retrievers as rt
import mimic.serving.vector_index as vi
from mimic.data.schema import KnowledgeBase
from mimic.models.linking_model import LinkingModel
from mimic.serving.index import KBIndex
from mimic.serving.linker import Linker
from mimic.serving.zeroshot import ZeroShotLinker


@pytest.fixture(scope="module")
def model(tiny_clip):
    torch.manual_seed(0)
    return LinkingModel.build(tiny_clip, mode="fixed").eval()


def _ranking(linker, ms, k=5):
    out = []
    for m in ms:
        r = linker.link(m.sentence, m.mention, m.image, top_k=k, explain=False)
        out.append([(c.entity_id, round(c.S, 4)) for c in r.candidates])
    return out


def _lexical(index, ms):
    _, rows = index.lexical.search([m.mention for m in ms], 5)
    return [[index.ids[r] for r in rr if r >= 0] for rr in rows]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_k_segments_rank_as_one_build(model, synthetic_dataset, tmp_path, monkeypatch, kind):
    ents = synthetic_dataset.kb.entities
    cuts = [0, 6, 7, 12, len(ents)]
    idx = KBIndex.build(model, KnowledgeBase(ents[: cuts[1]]), tmp_path / "inc", progress=False, faiss_kind=kind)
    reloads = []
    real_load = KBIndex._load
    monkeypatch.setattr(KBIndex, "_load", lambda self: reloads.append(1) or real_load(self))
    for a, b in zip(cuts[1:-1], cuts[2:]):
        idx.upsert(model, ents[a:b])
    assert reloads == []  # every segment appended in place
    changed = replace(ents[2], text=ents[2].text + " lighthouse", name=ents[2].name + " Rock")
    idx.upsert(model, [changed])  # an update: the old row is tombstoned
    idx.delete([ents[9].id])
    assert reloads == [] and len(idx.manifest["segments"]) == 5 and len(idx.manifest["tombstones"]) == 2
    final = [changed if e.id == changed.id else e for e in ents if e.id != ents[9].id]
    fresh = KBIndex.build(model, KnowledgeBase(final), tmp_path / "fresh", progress=False, faiss_kind=kind)
    monkeypatch.undo()
    reloaded = KBIndex(tmp_path / "inc")
    ms = synthetic_dataset.split("test")[:10]
    want = _ranking(Linker(model, fresh, shortlist=len(fresh)), ms)
    for got in (idx, reloaded):
        assert sorted(got.ids) == sorted(fresh.ids) and ents[9].id not in got.position
        assert got.records[got.position[changed.id]]["name"] == changed.name
        top1 = [r[0][0] for r in _ranking(Linker(model, got, shortlist=len(got)), ms)]
        assert top1 == [r[0][0] for r in want]
        if kind == "flat":  # exact retrievers: the whole top 5 and the scores
            assert _ranking(Linker(model, got), ms) == _ranking(Linker(model, fresh), ms)
        assert _lexical(got, ms) == _lexical(fresh, ms)
        for name in ("model", "text"):  # deleted rows never come back from faiss
            rows = got.retrievers[name].search(np.ones((1, got.retrievers[name].dim), np.float32), len(got))[1]
            assert len(set(rows[0][rows[0] >= 0].tolist())) == len(got)


def test_zero_shot_index_keeps_global_vectors_in_step(model, synthetic_dataset, tmp_path):
    ents = synthetic_dataset.kb.entities
    idx = KBIndex.build(model, KnowledgeBase(ents[:8]), tmp_path / "z", progress=False)
    idx = KBIndex(tmp_path / "z", keep_global=True)
    idx.upsert(model, ents[8:])
    idx.delete([ents[1].id])
    fresh = KBIndex.build(model, KnowledgeBase([e for e in ents if e.id != ents[1].id]), tmp_path / "f", progress=False)
    fresh = KBIndex(tmp_path / "f", keep_global=True)
    pa = [idx.position[i] for i in fresh.ids]
    np.testing.assert_allclose(idx.text_global.numpy()[pa], fresh.text_global.numpy(), atol=1e-6)
    np.testing.assert_allclose(idx.image_global.numpy()[pa], fresh.image_global.numpy(), atol=1e-6)
    ms = synthetic_dataset.split("test")[:6]
    assert _ranking(ZeroShotLinker(model, idx), ms) == _ranking(ZeroShotLinker(model, fresh), ms)


def test_crash_between_segments_leaves_a_loadable_index(model, synthetic_dataset, tmp_path, monkeypatch):
    ents = synthetic_dataset.kb.entities
    idx = KBIndex.build(model, KnowledgeBase(ents[:9]), tmp_path / "c", progress=False)
    # killed after the manifest names the new segment, before its lexical part is saved (no part
    # prepared with the segment: one prepared before a concurrent commit is refitted at commit)
    monkeypatch.setattr(KBIndex, "_prefit_lexical", lambda self, folder: None)
    monkeypatch.setattr(mi.LexSegment, "fit", classmethod(lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())))
    with pytest.raises(KeyboardInterrupt):
        idx.upsert(model, ents[9:14])
    # an encoded segment that was never committed (killed before the manifest): ignored, its name skipped
    monkeypatch.undo()
    orphan = idx.prepare_segment(model, ents[14:])
    assert orphan is not None and orphan.folder.exists()
    loaded = KBIndex(tmp_path / "c")
    assert loaded.ids == [e.id for e in ents[:14]]
    assert (tmp_path / "c" / "lexical" / "seg-0001" / "meta.json").exists()  # fitted at load
    loaded.upsert(model, ents[14:])
    assert loaded.manifest["segments"] == ["seg-0000", "seg-0001", "seg-0003"]
    fresh = KBIndex.build(model, synthetic_dataset.kb, tmp_path / "f", progress=False)
    ms = synthetic_dataset.split("test")[:8]
    assert _ranking(Linker(model, loaded), ms) == _ranking(Linker(model, fresh), ms)
    # a failure while appending in place falls back to a reload from the manifest
    calls, real_sync = [], mi.Retriever.sync

    def once(self, *a):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_sync(self, *a)

    monkeypatch.setattr(mi.Retriever, "sync", once)
    loaded.upsert(model, [replace(ents[0], text="changed")])
    assert len(calls) > 3 and loaded.records[loaded.position[ents[0].id]]["text"] == "changed"
    assert len(loaded) == len(ents) and loaded.retrievers["model"].live == len(ents)


def test_saved_approximate_index_is_extended_not_retrained(model, synthetic_dataset, tmp_path, monkeypatch):
    ents = synthetic_dataset.kb.entities
    idx = KBIndex.build(model, KnowledgeBase(ents[:12]), tmp_path / "h", progress=False, faiss_kind="hnsw")
    idx.upsert(model, ents[12:])
    meta = json.loads((tmp_path / "h" / "faiss_model.json").read_text())
    assert meta["segments"] == ["seg-0000", "seg-0001"] and meta["ntotal"] == len(ents)  # saved: tail > 10 %
    made = []
    real = vi.make_index
    monkeypatch.setattr(vi, "make_index", lambda *a, **k: made.append(a) or real(*a, **k))
    again = KBIndex(tmp_path / "h")
    assert made == [] and again.retrievers["model"].ntotal == len(ents)
    # an index whose saved faiss covers only the first segment: read, and the second segment added
    shutil.copytree(tmp_path / "h", tmp_path / "h2")
    first = KBIndex.build(model, KnowledgeBase(ents[:12]), tmp_path / "h1", progress=False, faiss_kind="hnsw")
    for name in ("model", "text", "image"):
        for ext in ("index", "json"):
            shutil.copy(first.root / f"faiss_{name}.{ext}", tmp_path / "h2" / f"faiss_{name}.{ext}")
    monkeypatch.setattr(rt, "CHUNK", 4)  # the tail added in several chunks
    made.clear()
    tail = KBIndex(tmp_path / "h2")
    assert made == [] and tail.retrievers["model"].ntotal == len(ents)
    ms = synthetic_dataset.split("test")[:6]
    assert _ranking(Linker(model, tail), ms) == _ranking(Linker(model, again), ms)


def test_lexical_part_is_fitted_with_the_segment_not_under_the_commit(model, synthetic_dataset, tmp_path, monkeypatch):
    ents = synthetic_dataset.kb.entities
    idx = KBIndex.build(model, KnowledgeBase(ents[:6]), tmp_path / "p", progress=False)
    first = idx.prepare_segment(model, ents[6:10])
    second = idx.prepare_segment(model, ents[10:])  # prepared before `first` commits: its vocabulary moves
    assert (first.folder / "lexical" / "meta.json").exists()
    fits = []
    real_fit = mi.LexSegment.fit.__func__
    monkeypatch.setattr(mi.LexSegment, "fit", classmethod(lambda cls, *a: fits.append(1) or real_fit(cls, *a)))
    idx.commit_segment(first)
    assert fits == []  # the commit (under the server's write lock) fitted nothing
    idx.commit_segment(second)
    assert fits == [1]  # fitted before `first` was committed: refitted at its commit
    monkeypatch.undo()
    fresh = KBIndex.build(model, synthetic_dataset.kb, tmp_path / "f", progress=False)
    ms = synthetic_dataset.split("test")[:8]
    assert _lexical(idx, ms) == _lexical(fresh, ms)
    assert _lexical(KBIndex(tmp_path / "p"), ms) == _lexical(fresh, ms)
    assert _ranking(Linker(model, idx), ms) == _ranking(Linker(model, fresh), ms)


def test_service_keeps_its_shortlist_depth_across_a_swap(model, synthetic_dataset, tmp_path):
    from mimic.models.checkpoint import save_checkpoint
    from mimic.serving.service import LinkingService

    save_checkpoint(model, tmp_path / "ckpt", backbone_trained=False)
    svc = LinkingService.start(tmp_path / "data", synthetic_dataset.kb, model=model, progress=False, keep_model=5)
    assert svc._linker.keep_model == 5
    svc.swap(synthetic_dataset.kb, checkpoint=tmp_path / "ckpt", version="v2")
    assert svc._linker.keep_model == 5 and svc.served.version == "v2"
    m = synthetic_dataset.split("test")[0]
    assert svc.link(m.sentence, m.mention, m.image, explain=False).shortlist_size <= len(synthetic_dataset.kb)
