"""The KB index: every entity encoded once, stored for serving.

Folder layout (`python -m mimic index --checkpoint CKPT --kb KB --output DIR`):
  index.json          format, model fingerprint, backbone, retrieval options, segments, tombstones
  seg-0000/           one segment per build or incremental update
    ids.json          entity ids in row order, and the entity records (name, aliases, text, images)
    <field>.npy       every `EntityCache` field (TGLU queries W_q E_tok, W_cls e_cls, both DUAL
                      projections, CMFU z_e and its patch attention, masks) — fp16 / bool
    text_global.npy   backbone text vector, image_global.npy backbone image vector (fp16)
  faiss_<name>.index  persisted approximate (HNSW/IVF) indexes; exact flat ones are rebuilt on load

Building writes into `.DIR.building/` and records progress after every batch, so an interrupted
build resumes where it stopped (same checkpoint and KB required); the folder is renamed into place
only when complete. Updates (add / update / delete) write a new segment and tombstones, never
re-encoding the rest; `index.json` is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from mimic.atomic import atomic_file, write_json_atomic
from mimic.data.schema import Entity, KnowledgeBase
from mimic.models.families import family, model_type_of
from mimic.models.linking_model import ImageLoadStats, LinkingModel, entity_text, load_images

FORMAT = "mimic-studio-index"
BOOL_FIELDS = {"t_mask", "has_image"}


class IndexFileError(RuntimeError):
    """The index cannot serve this request (wrong model, missing files, ...)."""


class IndexMismatchError(IndexFileError):
    pass


def model_fingerprint(model: LinkingModel) -> str:
    """The checkpoint's fingerprint, or a hash of the weights for an unsaved model."""
    info = getattr(model, "checkpoint_info", None)
    if info and info.get("fingerprint"):
        return info["fingerprint"]
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes()[:4096])
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    return "unsaved-" + h.hexdigest()[:16]


def entity_record(e: Entity) -> dict:
    return {"id": e.id, "name": e.name, "text": e.text, "aliases": list(e.aliases), "images": list(e.images)}


def _kb_hash(entities: Sequence[Entity]) -> str:
    h = hashlib.sha256()
    for e in entities:
        h.update(json.dumps(entity_record(e), sort_keys=True).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# Encoding one segment (resumable)
# ------------------------------------------------------------------------------------------------
def _encode_segment(
    model: LinkingModel, entities: Sequence[Entity], seg: Path, batch_size: int, progress: bool, stats: ImageLoadStats
) -> None:
    """Encode `entities` into the segment folder `seg`, resuming from seg/progress.json."""
    seg.mkdir(parents=True, exist_ok=True)
    n = len(entities)
    prog_file = seg / "progress.json"
    kb_hash = _kb_hash(entities)
    done = 0
    if prog_file.exists():
        prog = json.loads(prog_file.read_text())
        if prog.get("kb_hash") == kb_hash and prog.get("n") == n:
            done = int(prog["done"])
    arrays: dict[str, np.memmap] = {}
    model.eval()
    it = range(done, n, batch_size)
    if progress:
        it = tqdm(it, desc="index KB", unit="batch", initial=done // batch_size, total=-(-n // batch_size))
    with torch.no_grad():
        for s in it:
            chunk = entities[s : s + batch_size]
            imgs = load_images([e.images[0] if e.images else None for e in chunk], model.config.mode, stats)
            text, image = model.backbone_features([entity_text(e) for e in chunk], imgs)
            cache = model.heads.entity_cache(model.heads.side_features(text, image))
            parts = cache.tensors() | {
                "text_global": text.global_,
                "image_global": image.global_,
                "retrieval": model.heads.retrieval_vector(cache, "entity"),
            }
            for name, t in parts.items():
                if name not in arrays:
                    dtype = np.bool_ if name in BOOL_FIELDS else np.float16
                    path = seg / f"{name}.npy"
                    shape = (n, *t.shape[1:])
                    if done and path.exists():
                        arrays[name] = np.load(path, mmap_mode="r+")
                    else:
                        arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                arrays[name][s : s + len(chunk)] = (
                    t.detach().float().cpu().numpy() if name not in BOOL_FIELDS else t.cpu().numpy()
                )
            for a in arrays.values():
                a.flush()
            # Progress is recorded only after the batch's rows are on disk.
            write_json_atomic(prog_file, {"n": n, "done": s + len(chunk), "kb_hash": kb_hash})
    if n == 0:
        raise ValueError("cannot index an empty knowledge base")
    (seg / "ids.json").write_text(json.dumps([entity_record(e) for e in entities], ensure_ascii=False))


# ------------------------------------------------------------------------------------------------
# Retrieval structures
# ------------------------------------------------------------------------------------------------
def _faiss_index(vectors: np.ndarray, kind: str, path: Path | None = None):
    """Inner-product index over L2-normalised rows. kind: flat (exact) | fp16 | hnsw | ivf."""
    d = vectors.shape[1]
    if path is not None and path.exists() and kind in ("hnsw", "ivf"):
        idx = faiss.read_index(str(path))
        if idx.ntotal == len(vectors):
            return idx
    if kind == "flat":
        idx = faiss.IndexFlatIP(d)
    elif kind == "fp16":
        idx = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        idx = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = 128
    elif kind == "ivf":
        nlist = max(1, int(4 * np.sqrt(len(vectors))))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.nprobe = max(1, nlist // 8)
    else:
        raise ValueError(f"unknown faiss index kind {kind!r} (flat, fp16, hnsw, ivf)")
    if not idx.is_trained:
        idx.train(vectors)
    idx.add(vectors)
    if isinstance(idx, faiss.IndexIVFFlat):
        idx.make_direct_map()  # reconstruct() for the lexical unit's dense feature
    if path is not None and kind in ("hnsw", "ivf"):
        with atomic_file(path) as tmp:
            faiss.write_index(idx, str(tmp))
    return idx


class LexicalIndex:
    """Character n-gram TF-IDF (char_wb, 2–4, sublinear tf) over names and aliases."""

    def __init__(self, entities: Sequence[dict]):
        # lazy: sklearn adds 1.0 s to importing this module (python -X importtime), for lexical search only
        from sklearn.feature_extraction.text import TfidfVectorizer

        names, owner = [], []
        for i, e in enumerate(entities):
            for s in [e["name"], *e.get("aliases", [])]:
                if s:
                    names.append(s)
                    owner.append(i)
        self.owner = np.asarray(owner, dtype=np.int64)
        # Names of one entity are contiguous and every entity has one: reduceat gives the best per entity.
        self.starts = np.searchsorted(self.owner, np.arange(len(entities)))
        self.vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=True)
        by_name = self.vec.fit_transform(names).astype(np.float32).tocsr()  # [names, features]
        self.matrix = by_name.T.tocsr()  # [features, names]: search multiplies queries by it
        self.by_name = by_name  # similarity() slices names out of it
        self.n = len(entities)

    def search(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [Q, k], rows [Q, k]); best alias per entity; -1 rows where fewer than k match."""
        q = self.vec.transform(texts).astype(np.float32)
        sims = (q @ self.matrix).toarray()  # [Q, names]
        best = np.maximum.reduceat(sims, self.starts, axis=1) if sims.shape[1] else np.zeros((len(texts), self.n))
        k = min(k, self.n)
        rows = np.argpartition(-best, k - 1, axis=1)[:, :k]
        sc = np.take_along_axis(best, rows, 1)
        order = np.argsort(-sc, axis=1, kind="stable")
        rows, sc = np.take_along_axis(rows, order, 1), np.take_along_axis(sc, order, 1)
        rows[sc <= 0] = -1
        return sc, rows

    def similarity(self, texts: list[str], rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Cosine of texts[i] with each entity of rows[i] (its best name or alias) -> list of [len(rows[i])]."""
        q = self.vec.transform(texts).astype(np.float32).tocsr()
        ends = np.append(self.starts[1:], len(self.owner))
        rows = [np.asarray(rr, dtype=np.int64) for rr in rows]
        per_entity = [ends[rr] - self.starts[rr] for rr in rows]  # names of each candidate
        cols = [np.repeat(self.starts[rr], c) + _ranges(c) for rr, c in zip(rows, per_entity)]
        owner_query = np.repeat(np.arange(len(rows)), [len(c) for c in cols])
        all_cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        # every (query, candidate name) pair at once: row slices of CSR are cheap, a product per pair
        sims = np.asarray(self.by_name[all_cols].multiply(q[owner_query]).sum(1)).ravel()
        out, at = [], 0
        for c in per_entity:
            n = int(c.sum())
            part = sims[at : at + n]
            at += n
            starts = np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64)
            out.append(np.maximum.reduceat(part, starts).astype(np.float32) if len(c) else np.zeros(0, np.float32))
        return out


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[2, 1, 3] -> [0, 1, 0, 0, 1, 2]."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return np.zeros(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - offsets


# ------------------------------------------------------------------------------------------------
# The index
# ------------------------------------------------------------------------------------------------
class KBIndex:
    """A loaded index: entity records, the `EntityCache` (fp16, in RAM), retrieval structures."""

    def __init__(self, root: str | Path, *, load_vectors: bool = True, keep_global: bool = False):
        self.root = Path(root)
        # keep_global: also hold the unit-norm backbone vectors in RAM (`text_global`, `image_global`,
        # float32, zero rows for entities without an image); the zero-shot linker scores with them.
        self.keep_global = keep_global
        mf = self.root / "index.json"
        if not mf.exists():
            raise IndexFileError(
                f"{self.root} is not a KB index (no index.json); build one with `python -m mimic index`"
            )
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") != FORMAT:
            raise IndexFileError(f"{mf}: not a {FORMAT}")
        self._load()

    # -- build ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: LinkingModel,
        kb: KnowledgeBase,
        output: str | Path,
        *,
        batch_size: int = 64,
        progress: bool = True,
        faiss_kind: str = "flat",
        overwrite: bool = False,
    ) -> KBIndex:
        output = Path(output)
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} exists (pass overwrite=True / --overwrite to rebuild it)")
        building = output.parent / f".{output.name}.building"
        fp = model_fingerprint(model)
        mf_path = building / "build.json"
        if building.exists():
            prev = json.loads(mf_path.read_text()) if mf_path.exists() else {}
            if prev.get("fingerprint") != fp:  # a different model: start over
                shutil.rmtree(building)
        building.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mf_path, {"fingerprint": fp})
        stats = ImageLoadStats()
        t0 = time.perf_counter()
        _encode_segment(model, kb.entities, building / "seg-0000", batch_size, progress, stats)
        manifest = {
            "format": FORMAT,
            "version": 1,
            "fingerprint": fp,
            "backbone": model.backbone.describe(),
            "model_type": model_type_of(model.heads),
            "backbone_name": model.backbone.name,
            "model_config": model.config.to_dict(),
            "faiss": faiss_kind,
            "segments": ["seg-0000"],
            "tombstones": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "image_stats": dict(stats),
            "nil_threshold": None,
        }
        write_json_atomic(building / "index.json", manifest)
        (building / "seg-0000" / "progress.json").unlink()
        mf_path.unlink()
        if output.exists():
            old = output.parent / f".{output.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(output, old)
            os.rename(building, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(building, output)
        return cls(output)

    # -- load ----------------------------------------------------------------------------------
    def _load(self):
        segs = self.manifest["segments"]
        dead = set(self.manifest.get("tombstones", []))  # "seg:row" keys
        cache_cls = family(self.manifest.get("model_type", "mimic"))[2]
        cache_fields = [f.name for f in fields(cache_cls)]
        records, arrays, keep = [], {}, []
        for seg in segs:
            recs = json.loads((self.root / seg / "ids.json").read_text())
            live = [i for i in range(len(recs)) if f"{seg}:{i}" not in dead]
            keep.append((seg, live))
            records += [recs[i] for i in live]
        for name in cache_fields + ["text_global", "image_global", "retrieval"]:
            parts = [np.load(self.root / seg / f"{name}.npy", mmap_mode="r")[live] for seg, live in keep]
            arrays[name] = torch.from_numpy(np.concatenate(parts))
        self.records = records
        self.ids = [r["id"] for r in records]
        self.position = {eid: i for i, eid in enumerate(self.ids)}
        self._rows_by_key = [f"{seg}:{i}" for seg, live in keep for i in live]
        self.cache = cache_cls(**{k: arrays[k] for k in cache_fields})
        if self.keep_global:
            self.text_global = torch.from_numpy(_unit(arrays["text_global"]))
            self.image_global = torch.from_numpy(_unit(arrays["image_global"]))
        # The global vectors live only inside faiss afterwards (no second copy in RAM).
        self._build_retrievers(arrays["retrieval"], arrays["text_global"], arrays["image_global"])

    def _build_retrievers(self, retrieval: torch.Tensor, text_global: torch.Tensor, image_global: torch.Tensor):
        kind = self.manifest.get("faiss", "flat")
        # "model": the bi-encoder part of the model's own score (see `retrieval_vector` of the heads),
        # so this retriever agrees with the re-ranker by construction.
        model_vec = np.ascontiguousarray(retrieval.float().numpy())
        self.retrievers = {
            "model": _faiss_index(model_vec, kind, self.root / "faiss_model.index"),
            "text": _faiss_index(_unit(text_global), kind, self.root / "faiss_text.index"),
        }
        self.image_rows = np.nonzero(self.cache.has_image.numpy())[0]
        self.retrievers["image"] = (
            _faiss_index(_unit(image_global[self.image_rows]), kind, self.root / "faiss_image.index")
            if len(self.image_rows)
            else None
        )
        self.lexical = LexicalIndex(self.records)

    # -- facts ---------------------------------------------------------------------------------
    def __len__(self):
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def check_model(self, model: LinkingModel) -> None:
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            raise IndexMismatchError(
                f"index {self.root} was built with model {self.fingerprint}, but the loaded model is {fp}; "
                f"rebuild the index for this checkpoint (python -m mimic index ...)"
            )

    def text_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Unit-norm backbone text vectors [len(rows), D] of index rows (from RAM when kept, else from faiss)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.keep_global:
            return self.text_global[torch.from_numpy(rows)].numpy()
        text = self.retrievers["text"]
        return np.stack([text.reconstruct(int(r)) for r in rows]) if len(rows) else np.zeros((0, text.d), np.float32)

    def feature_bytes(self) -> int:
        """Bytes of the fp16 entity features (the EntityCache) held in RAM."""
        return sum(t.numel() * t.element_size() for t in self.cache.tensors().values())

    def ram_bytes(self) -> int:
        """Feature bytes + global vectors + faiss + lexical matrix (what serving holds in RAM)."""
        total = self.feature_bytes()
        for idx in self.retrievers.values():
            if idx is not None:
                total += faiss.serialize_index(idx).nbytes if hasattr(faiss, "serialize_index") else 0
        m = self.lexical.matrix
        total += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        return int(total)

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def entity(self, eid: str) -> dict:
        return self.records[self.position[eid]]

    # -- incremental updates ---------------------------------------------------------------------
    def upsert(self, model: LinkingModel, entities: Sequence[Entity], progress: bool = False) -> None:
        """Add new entities or replace existing ones (by id) without re-encoding the rest."""
        self.check_model(model)
        if not entities:
            return
        ids = [e.id for e in entities]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one update")
        seg = f"seg-{len(self.manifest['segments']):04d}"
        while (self.root / seg).exists():
            seg = f"seg-{int(seg[4:]) + 1:04d}"
        stats = ImageLoadStats()
        tmp = self.root / f".{seg}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _encode_segment(model, list(entities), tmp, 64, progress, stats)
        (tmp / "progress.json").unlink()
        os.rename(tmp, self.root / seg)
        dead = [self._rows_by_key[self.position[i]] for i in ids if i in self.position]
        self._commit(segments=self.manifest["segments"] + [seg], tombstones=self.manifest["tombstones"] + dead)

    def delete(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"unknown entity ids: {missing[:5]}")
        dead = [self._rows_by_key[self.position[i]] for i in ids]
        self._commit(segments=self.manifest["segments"], tombstones=self.manifest["tombstones"] + dead)

    def _commit(self, segments, tombstones):
        self.manifest = {
            **self.manifest,
            "segments": segments,
            "tombstones": sorted(set(tombstones)),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for p in self.root.glob("faiss_*.index"):  # approximate indexes are rebuilt for the new rows
            p.unlink()
        write_json_atomic(self.root / "index.json", self.manifest)
        self._load()

    def set_nil_threshold(self, value: float | None, details: dict | None = None) -> None:
        self.manifest = {**self.manifest, "nil_threshold": value, "nil_calibration": details}
        write_json_atomic(self.root / "index.json", self.manifest)


def _unit(t: torch.Tensor) -> np.ndarray:
    a = t.float().numpy()
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.ascontiguousarray(a / np.maximum(n, 1e-12), dtype=np.float32)
