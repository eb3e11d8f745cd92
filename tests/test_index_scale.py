"""The million-entity index: token projections read from disk per row, a resumable chunked build,
faiss kinds measured against exact search, the scalable lexical retriever, format versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import mimic.serving.index as mi
import mimic.serving.vector_index as vi
from mimic.models.linking_model import LinkingModel
from mimic.serving.index import IndexFileError, KBIndex
from mimic.serving.lexical_index import LexicalIndex
from mimic.serving.linker import Linker
from mimic.serving.token_store import TokenStore


@pytest.fixture(scope="module")
def model(tiny_clip):
    torch.manual_seed(0)
    return LinkingModel.build(tiny_clip, mode="fixed").eval()


@pytest.fixture(scope="module")
def built(model, synthetic_dataset, tmp_path_factory) -> KBIndex:
    root = tmp_path_factory.mktemp("scale") / "idx"
    return KBIndex.build(model, synthetic_dataset.kb, root, batch_size=4, progress=False)


def _fp16_fp32(c):
    return c.apply(lambda t: t.half().float() if t.is_floating_point() else t)


def test_token_store_reads_rows_and_ranks_like_the_in_memory_cache(model, built, synthetic_dataset):
    assert isinstance(built.cache, TokenStore)  # no EntityCache tensor held: rows come from entities.npy
    # what a RAM index held (fp16), encoded in the build's chunks of 4 (batching moves the last bit)
    ref = _fp16_fp32(model.entity_cache(synthetic_dataset.kb.entities, batch_size=4))
    rows = [5, 1, 5, len(built) - 1, 0]  # unsorted, with a repeat
    got = built.cache[torch.tensor(rows)].apply(lambda t: t.float() if t.is_floating_point() else t)
    for name, t in ref[torch.tensor(rows)].tensors().items():
        torch.testing.assert_close(getattr(got, name), t, rtol=0, atol=0)
    with pytest.raises(IndexError, match="out of range"):
        built.cache[[len(built)]]
    linker = Linker(model, built, shortlist=len(built))
    for m in synthetic_dataset.split("test")[:8]:
        _check_one(linker, model, built, ref, m)
    # records are read per row from records.jsonl, equal to the KB's
    e = synthetic_dataset.kb.entities[3]
    assert built.records[3] == mi.entity_record(e) and built.entity(e.id)["name"] == e.name


@torch.no_grad()
def _check_one(linker, model, built, ref, m):
    """The linker's full ranking (shortlist = whole KB, rows read from disk) equals scoring `ref`."""
    r = linker.link(m.sentence, m.mention, m.image, top_k=len(built), explain=False)
    mc, *_ = linker._encode([linker._query(m.sentence, m.mention, m.image)])
    S = model.heads.score(mc, ref).S[0]
    want = [built.ids[i] for i in torch.argsort(-S, stable=True).tolist()]
    assert [c.entity_id for c in r.candidates] == want
    for c in r.candidates:
        assert c.S == pytest.approx(float(S[built.position[c.entity_id]]), rel=1e-5, abs=1e-5)


def test_interrupted_build_resumes_from_the_chunk_manifest(model, synthetic_dataset, tmp_path, monkeypatch):
    kb = synthetic_dataset.kb
    real_load, calls = mi.load_images, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill during chunk 3")
        return real_load(*a, **k)

    monkeypatch.setattr(mi, "load_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        KBIndex.build(model, kb, tmp_path / "idx", batch_size=4, progress=False, faiss_kind="ivf")
    building = tmp_path / ".idx.building"
    prog = json.loads((building / "seg-0000" / "progress.json").read_text())
    assert (prog["chunks_done"], prog["done"], prog["chunk_size"]) == (2, 8, 4)
    assert not (tmp_path / "idx").exists()

    # second kill: after encoding and faiss, while fitting the lexical index
    monkeypatch.setattr(mi, "load_images", real_load)

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated kill while fitting the lexical index")

    monkeypatch.setattr(mi.LexSegment, "fit", classmethod(boom))
    with pytest.raises(KeyboardInterrupt):
        KBIndex.build(model, kb, tmp_path / "idx", batch_size=4, progress=False, faiss_kind="ivf")
    saved = sorted(p.name for p in building.glob("faiss_*.index"))
    assert saved == ["faiss_image.index", "faiss_model.index", "faiss_text.index"]

    monkeypatch.undo()
    encoded, made = [], []
    monkeypatch.setattr(mi, "load_images", lambda *a, **k: encoded.append(1) or real_load(*a, **k))
    real_make = vi.make_index
    monkeypatch.setattr(vi, "make_index", lambda *a, **k: made.append(a) or real_make(*a, **k))
    resumed = KBIndex.build(model, kb, tmp_path / "idx", batch_size=4, progress=False, faiss_kind="ivf")
    assert encoded == [] and made == []  # nothing encoded or trained again
    assert not building.exists() and (tmp_path / "idx" / "lexical" / "seg-0000" / "meta.json").exists()

    monkeypatch.setattr(mi, "load_images", real_load)
    fresh = KBIndex.build(model, kb, tmp_path / "fresh", batch_size=4, progress=False, faiss_kind="ivf")
    for name in ("entities.npy", "globals.npy", "records.jsonl"):
        seg = Path("seg-0000") / name
        assert (tmp_path / "idx" / seg).read_bytes() == (tmp_path / "fresh" / seg).read_bytes()
    assert resumed.ids == fresh.ids


def test_resume_restarts_when_the_chunk_size_changes(model, synthetic_dataset, tmp_path, monkeypatch):
    real_load, calls = mi.load_images, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_load(*a, **k)

    monkeypatch.setattr(mi, "load_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        KBIndex.build(model, synthetic_dataset.kb, tmp_path / "idx", batch_size=4, progress=False)
    counted = []
    monkeypatch.setattr(mi, "load_images", lambda *a, **k: counted.append(1) or real_load(*a, **k))
    KBIndex.build(model, synthetic_dataset.kb, tmp_path / "idx", batch_size=6, progress=False)
    assert len(counted) == -(-len(synthetic_dataset.kb) // 6)  # rows of another chunking are not trusted


def _clustered(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_faiss_kinds_recall_against_flat_on_clustered_vectors(tmp_path):
    x = _clustered(6000, 32, 120, seed=0)
    q = _clustered(60, 32, 120, seed=0)[:60] + 0.05  # near the data, not in it
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
    k = 10
    found, ram = {}, {}
    for kind in vi.KINDS:
        idx = vi.build_index(len(x), x.shape[1], lambda s, e: x[s:e], kind, tmp_path / f"{kind}.index", chunk=1000)
        assert idx.ntotal == len(x)
        found[kind] = idx.search(q, k)[1]
        ram[kind] = vi.index_bytes(idx)
    recall = {kind: vi.recall_at_k(found["flat"], found[kind]) for kind in vi.KINDS}
    assert recall["flat"] == 1.0 and recall["fp16"] > 0.97
    assert recall["hnsw"] > 0.95 and recall["ivf"] > 0.8
    assert recall["ivfpq"] > 0.3  # quantised: only a shortlist, re-scored exactly by the re-ranker
    assert ram["ivfpq"] < ram["ivf"] / 2 and ram["hnsw"] > ram["flat"]  # codes vs vectors vs vectors + graph
    # a saved approximate index is read back, not rebuilt
    again = vi.build_index(len(x), x.shape[1], lambda s, e: pytest.fail("rebuilt"), "hnsw", tmp_path / "hnsw.index")
    assert np.array_equal(again.search(q, k)[1], found["hnsw"])
    with pytest.raises(ValueError, match="unknown faiss index kind"):
        vi.make_index(8, 100, "annoy")


def _sklearn(names: list[str]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=True)
    return vec, vec.fit_transform(names)


def test_lexical_search_is_exact_within_budget(synthetic_dataset):
    """Scores equal scikit-learn's TF-IDF cosine (the vectoriser the lexical index re-implements)."""
    recs = [mi.entity_record(e) for e in synthetic_dataset.kb.entities]
    full = LexicalIndex(recs, budget=10**9)
    names = [s for r in recs for s in [r["name"], *r["aliases"]] if s]
    starts = np.cumsum([0] + [len([s for s in [r["name"], *r["aliases"]] if s]) for r in recs])[:-1]
    queries = [names[0], recs[7]["name"].split()[0], "zzz qqq", recs[11]["name"] + " extra", "  Tabs\tand  SPACES "]
    vec, N = _sklearn(names)
    sims = (vec.transform(queries) @ N.T).toarray()
    best = np.maximum.reduceat(sims, starts, axis=1)
    sc, rows = full.search(queries, 5)
    for qi in range(len(queries)):
        live = rows[qi] >= 0
        np.testing.assert_allclose(sc[qi][live], np.sort(best[qi])[::-1][: live.sum()], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(best[qi][rows[qi][live]], sc[qi][live], rtol=1e-5, atol=1e-6)
        assert live.sum() == min(5, int((best[qi] > 0).sum()))
    # a small budget reads only the rarest n-grams' postings; scores stay exact, the top-1 of a full name holds
    small = LexicalIndex(recs, budget=3)
    s2, r2 = small.search(queries[:1], 5)
    assert r2[0][0] == rows[0][0]
    np.testing.assert_allclose(best[0][r2[0][r2[0] >= 0]], s2[0][r2[0] >= 0], rtol=1e-5, atol=1e-6)
    sim = full.similarity(["alder painter"], [np.array([3, 0, 3])])[0]
    want = np.maximum.reduceat((vec.transform(["alder painter"]) @ N.T).toarray(), starts, axis=1)
    np.testing.assert_allclose(sim, want[0][[3, 0, 3]], rtol=1e-5, atol=1e-6)


def test_lexical_segments_with_deletions_score_as_one_refit(synthetic_dataset, tmp_path):
    """K segments fitted one after the other (each only over its own names), some rows deleted,
    saved and mapped back: the same scores and rows as one index fitted over the live rows."""
    from mimic.serving.lexical_segment import LexSegment

    recs = [mi.entity_record(e) for e in synthetic_dataset.kb.entities]
    cuts = [0, 5, 6, 13, len(recs)]
    parts = LexicalIndex()
    for i in range(len(cuts) - 1):
        seg = LexSegment.fit(recs[cuts[i] : cuts[i + 1]], parts.vocab)
        seg.save(tmp_path / str(i), prev=str(i))
        loaded = LexSegment.load(tmp_path / str(i), cuts[i + 1] - cuts[i], len(parts.vocab), prev=str(i))
        assert loaded is not None and isinstance(loaded.tf, np.memmap)
        assert LexSegment.load(tmp_path / str(i), cuts[i + 1] - cuts[i], len(parts.vocab), prev="other") is None
        parts.add(loaded)
    dead = {2, 7, 14}
    p2l = np.full(len(recs), -1, np.int64)
    live = [i for i in range(len(recs)) if i not in dead]
    p2l[live] = np.arange(len(live))
    parts.bind(np.asarray(cuts), p2l)
    one = LexicalIndex([recs[i] for i in live], budget=10**9)
    parts.budget = 10**9
    queries = [recs[2]["name"], recs[3]["name"], recs[14]["name"][:5], "zzz", recs[-1]["name"] + " x"]
    s1, r1 = one.search(queries, 6)
    s2, r2 = parts.search(queries, 6)
    np.testing.assert_array_equal(r2, r1)
    np.testing.assert_allclose(s2, s1, rtol=1e-5, atol=1e-6)
    rows = [np.array([0, len(live) - 1, 4]), np.array([], np.int64)]
    for a, b in zip(parts.similarity(queries[:2], rows), one.similarity(queries[:2], rows)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _to_version_1(src: Path, dst: Path) -> None:
    """Rewrite a v2 index in the version-1 layout (one .npy per field, ids.json, no lexical/)."""
    shutil.copytree(src, dst)
    seg = dst / "seg-0000"
    for file in ("entities.npy", "globals.npy"):
        rec = np.load(seg / file)
        for name in rec.dtype.names:
            np.save(seg / f"{name}.npy", rec[name])
        (seg / file).unlink()
    lines = (seg / "records.jsonl").read_text().splitlines()
    (seg / "ids.json").write_text(json.dumps([json.loads(x) for x in lines]))
    for f in ("records.jsonl", "records_offsets.npy", "entity_ids.json"):
        (seg / f).unlink()
    shutil.rmtree(dst / "lexical")
    mf = json.loads((dst / "index.json").read_text())
    (dst / "index.json").write_text(json.dumps({**mf, "version": 1}))


def test_format_versions_old_loads_newer_is_refused(model, built, synthetic_dataset, tmp_path):
    _to_version_1(built.root, tmp_path / "v1")
    old = KBIndex(tmp_path / "v1")
    assert old.ids == built.ids and old.records[4] == built.records[4]
    m = synthetic_dataset.split("test")[0]
    a = Linker(model, built, shortlist=len(built)).link(m.sentence, m.mention, m.image, top_k=5, explain=False)
    b = Linker(model, old, shortlist=len(old)).link(m.sentence, m.mention, m.image, top_k=5, explain=False)
    assert [(c.entity_id, c.S) for c in a.candidates] == [(c.entity_id, c.S) for c in b.candidates]
    future = tmp_path / "future"
    shutil.copytree(built.root, future)
    mf = json.loads((future / "index.json").read_text())
    (future / "index.json").write_text(json.dumps({**mf, "version": 99}))
    with pytest.raises(IndexFileError, match=r"version 99 .*rebuild the index"):
        KBIndex(future)


def test_ivf_nprobe_visits_a_sixteenth_of_the_lists_and_at_least_scan_min_rows():
    from mimic.serving.vector_index import SCAN_MIN, ivf_nprobe

    assert ivf_nprobe(4000, 1_000_000) == 250  # 1/16 of the lists: 62,500 rows
    assert ivf_nprobe(1264, 100_000) == 208  # 1/16 would scan ~6,300 rows: the floor decides
    assert ivf_nprobe(400, 10_000) == 400  # a small KB: every list (exact)
    for nlist, n in ((4000, 1_000_000), (1264, 100_000), (12_600, 10_000_000), (8, 64)):
        p = ivf_nprobe(nlist, n)
        assert 1 <= p <= nlist and p * n / nlist >= min(n, SCAN_MIN) - n / nlist
