"""The KB index: every entity encoded once, stored for serving, scalable to a million entities.

Folder layout (`python -m mimic index --checkpoint CKPT --kb KB --output DIR`), format version 2:
  index.json          format, version, model fingerprint, backbone, retrieval options, segments, tombstones
  seg-0000/           one segment per build or incremental update
    entities.npy      every `EntityCache` field (TGLU queries W_q E_tok, W_cls e_cls, both DUAL
                      projections, CMFU z_e and its patch attention, masks), one structured fp16/bool
                      record per entity, memory-mapped: serving reads only the shortlisted rows
                      (`mimic.serving.token_store`)
    globals.npy       backbone text / image vectors, the model's retrieval vector (fp16; what faiss
                      holds) and has_image
    records.jsonl     entity records (name, aliases, text, images), one a line, with records_offsets.npy
                      and entity_ids.json (`mimic.serving.record_store`)
  faiss_<name>.index  approximate (HNSW / IVF / IVF-PQ) indexes, built with the index; flat ones are
                      rebuilt on load (`mimic.serving.vector_index`)
  lexical/            the fitted character n-gram TF-IDF, memory-mapped (`mimic.serving.lexical_index`)

Version-1 indexes (one `<field>.npy` per field, `ids.json`) still load and serve; newer versions are
refused with a rebuild message. Building writes into `.DIR.building/`: encoding records its chunks in
`seg-0000/progress.json` after each one is on disk, and faiss indexes are saved as they finish, so an
interrupted build resumes where it stopped (same checkpoint, KB and chunk size); the folder is renamed
into place only when complete. Updates (add / update / delete) write a new segment and tombstones,
never re-encoding the rest; `index.json` is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimic.atomic import write_json_atomic
from mimic.data.schema import Entity, KnowledgeBase
from mimic.models.families import family, model_type_of
from mimic.models.linking_model import ImageLoadStats, LinkingModel, entity_text, load_images
from mimic.serving.lexical_index import LexicalIndex
from mimic.serving.record_store import RecordStore, segment_ids, write_records
from mimic.serving.token_store import BOOL_FIELDS, GLOBAL_FIELDS, GLOBALS_FILE, RECORD_FILE, TokenStore, record_dtype
from mimic.serving.vector_index import KINDS, build_index, index_bytes

__all__ = ["FORMAT", "FORMAT_VERSION", "IndexFileError", "IndexMismatchError", "KBIndex", "LexicalIndex"]

FORMAT = "mimic-studio-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
log = logging.getLogger(__name__)


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
    model: LinkingModel,
    entities: Sequence[Entity],
    seg: Path,
    batch_size: int,
    progress: bool,
    stats: ImageLoadStats,
    stop: int | None = None,
) -> None:
    """Encode `entities` into the segment folder `seg` (format version 2), resuming from seg/progress.json.

    progress.json is the chunk manifest (chunk size, chunks and rows done, the KB's hash); it is
    rewritten only after a chunk's rows are flushed to disk, so a killed build loses at most the
    chunk it was encoding. `stop`: encode only up to that row and return, unfinished (the scale
    benchmark fills the rest with synthetic rows, then lets `KBIndex.build` finish)."""
    if not len(entities):
        raise ValueError("cannot index an empty knowledge base")
    seg.mkdir(parents=True, exist_ok=True)
    n = len(entities)
    prog_file = seg / "progress.json"
    kb_hash = _kb_hash(entities)
    done = 0
    if prog_file.exists():
        prog = json.loads(prog_file.read_text())
        if prog.get("kb_hash") == kb_hash and prog.get("n") == n and prog.get("chunk_size") == batch_size:
            done = int(prog["done"])
            if done:
                log.info("resuming the index build in %s at row %d of %d", seg, done, n)
    files: dict[str, np.memmap] = {}
    model.eval()
    end_at = n if stop is None else min(n, stop)
    it = range(done, end_at, batch_size)
    if progress:
        it = tqdm(it, desc="index KB", unit="chunk", initial=done // batch_size, total=-(-end_at // batch_size))
    with torch.no_grad():
        for s in it:
            chunk = entities[s : s + batch_size]
            imgs = load_images([e.images[0] if e.images else None for e in chunk], model.config.mode, stats)
            text, image = model.backbone_features([entity_text(e) for e in chunk], imgs)
            cache = model.heads.entity_cache(model.heads.side_features(text, image))
            parts = {
                RECORD_FILE: cache.tensors(),
                GLOBALS_FILE: {
                    "text_global": text.global_,
                    "image_global": image.global_,
                    "retrieval": model.heads.retrieval_vector(cache, "entity"),
                    "has_image": cache.has_image,
                },
            }
            for file, tensors in parts.items():
                if file not in files:
                    path = seg / file
                    if done and path.exists():
                        files[file] = np.load(path, mmap_mode="r+")
                    else:
                        dt = record_dtype({k: tuple(t.shape[1:]) for k, t in tensors.items()})
                        files[file] = np.lib.format.open_memmap(path, mode="w+", dtype=dt, shape=(n,))
                block = np.zeros(len(chunk), dtype=files[file].dtype)
                for k, t in tensors.items():
                    block[k] = t.detach().cpu().numpy() if k in BOOL_FIELDS else t.detach().float().cpu().numpy()
                files[file][s : s + len(chunk)] = block
            for a in files.values():
                a.flush()
            end = s + len(chunk)  # progress is recorded only after the chunk's rows are on disk
            write_json_atomic(
                prog_file,
                {"n": n, "done": end, "chunk_size": batch_size, "chunks_done": -(-end // batch_size)}
                | {"kb_hash": kb_hash},
            )
    files.clear()
    if stop is None or stop >= n:
        write_records(seg, (entity_record(e) for e in entities))


# ------------------------------------------------------------------------------------------------
# The index
# ------------------------------------------------------------------------------------------------
class KBIndex:
    """A loaded index: entity records and the `EntityCache` on disk (`records`, `cache`: read per
    row), retrieval structures in RAM (faiss) or mapped (lexical)."""

    def __init__(
        self, root: str | Path, *, load_vectors: bool = True, keep_global: bool = False, progress: bool = False
    ):
        """progress: log the building of faiss / lexical structures that are not saved yet (at INFO)."""
        self.root = Path(root)
        self._progress = progress
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
        version = self.manifest.get("version", 1)
        if version not in READABLE_VERSIONS:
            raise IndexFileError(
                f"{self.root}: index format version {version} is not readable by this MIMIC Studio "
                f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))}); rebuild the index with "
                "`python -m mimic index --overwrite ...`"
            )
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
        if faiss_kind not in KINDS:
            raise ValueError(f"unknown faiss index kind {faiss_kind!r} (one of {', '.join(KINDS)})")
        output = Path(output)
        if output.exists() and not overwrite:
            raise FileExistsError(f"{output} exists (pass overwrite=True / --overwrite to rebuild it)")
        building = output.parent / f".{output.name}.building"
        fp = model_fingerprint(model)
        mf_path = building / "build.json"
        if building.exists():
            prev = json.loads(mf_path.read_text()) if mf_path.exists() else {}
            if prev.get("fingerprint") != fp or prev.get("faiss") != faiss_kind:  # start over
                shutil.rmtree(building)
        building.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mf_path, {"fingerprint": fp, "faiss": faiss_kind})
        stats = ImageLoadStats()
        t0 = time.perf_counter()
        _encode_segment(model, kb.entities, building / "seg-0000", batch_size, progress, stats)
        t_encode = time.perf_counter() - t0
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": fp,
            "backbone": model.backbone.describe(),
            "model_type": model_type_of(model.heads),
            "backbone_name": model.backbone.name,
            "model_config": model.config.to_dict(),
            "faiss": faiss_kind,
            "segments": ["seg-0000"],
            "tombstones": [],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "encode_seconds": round(t_encode, 3),
            "image_stats": dict(stats),
            "nil_threshold": None,
        }
        write_json_atomic(building / "index.json", manifest)
        # Load once inside the build folder: trains and saves the approximate faiss indexes and the
        # lexical index (each kept if the build is interrupted after it), so serving loads them.
        cls(building, progress=progress)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 3)
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
        keep, ids = [], []
        for seg in segs:
            seg_ids = segment_ids(self.root / seg)
            live = np.asarray([i for i in range(len(seg_ids)) if f"{seg}:{i}" not in dead], dtype=np.int64)
            keep.append((self.root / seg, live))
            ids += [seg_ids[i] for i in live]
        self._segment_names = list(segs)
        self.ids = ids
        self.position = {eid: i for i, eid in enumerate(ids)}
        self.records = RecordStore(keep)
        self.globals = TokenStore(None, keep, GLOBALS_FILE, names=GLOBAL_FIELDS)
        self.cache = TokenStore(cache_cls, keep, has_image=self.globals.has_image)
        if self.keep_global:
            self.text_global = torch.from_numpy(_unit(self.globals.column("text_global")))
            self.image_global = torch.from_numpy(_unit(self.globals.column("image_global")))
        self._build_retrievers()

    def _row_key(self, row: int) -> str:
        return f"{self._segment_names[int(self.cache.seg_of[row])]}:{int(self.cache.local[row])}"

    def _build_retrievers(self):
        kind = self.manifest.get("faiss", "flat")
        n, g = len(self), self.globals
        say = log.info if self._progress else log.debug

        def vectors(name: str, unit: bool, rows: np.ndarray | None = None):
            def read(s: int, e: int) -> np.ndarray:
                a = g.read_range(s, e, [name])[name] if rows is None else g.read(rows[s:e], [name])[name]
                return _unit(a) if unit else np.ascontiguousarray(a, dtype=np.float32)

            return read

        def dim(name: str) -> int:
            return int(g._empty(name).shape[1])

        # "model": the bi-encoder part of the model's own score (see `retrieval_vector` of the heads),
        # so this retriever agrees with the re-ranker by construction.
        self.retrievers = {
            "model": build_index(
                n, dim("retrieval"), vectors("retrieval", False), kind, self.root / "faiss_model.index", log=say
            ),
            "text": build_index(
                n, dim("text_global"), vectors("text_global", True), kind, self.root / "faiss_text.index", log=say
            ),
        }
        self.image_rows = np.nonzero(self.cache.has_image.numpy())[0]
        self.retrievers["image"] = (
            build_index(
                len(self.image_rows),
                dim("image_global"),
                vectors("image_global", True, self.image_rows),
                kind,
                self.root / "faiss_image.index",
                log=say,
            )
            if len(self.image_rows)
            else None
        )
        live = [self.manifest["segments"], sorted(self.manifest.get("tombstones", []))]
        key = hashlib.sha256(json.dumps(live).encode()).hexdigest()[:16]
        lex_dir = self.root / "lexical"
        lex = LexicalIndex.load(lex_dir, key)
        if lex is None:
            say("fitting the lexical index over %d entities", n)
            lex = LexicalIndex(iter(self.records))
            try:
                shutil.rmtree(lex_dir, ignore_errors=True)
                lex.save(lex_dir, key)
                lex = LexicalIndex.load(lex_dir, key) or lex  # mapped, not held
            except OSError as exc:  # a read-only index folder still serves; it refits next time
                log.warning("could not save the lexical index in %s: %s", lex_dir, exc)
        self.lexical = lex

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
        """Unit-norm backbone text vectors [len(rows), D] of index rows (from RAM when kept, else from disk)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.keep_global:
            return self.text_global[torch.from_numpy(rows)].numpy()
        return _unit(self.globals.read(rows, ["text_global"])["text_global"])

    def feature_bytes(self) -> int:
        """Bytes of the fp16 entity features (the EntityCache; on disk, read per shortlisted row)."""
        return self.cache.nbytes()

    def faiss_bytes(self) -> int:
        return sum(index_bytes(idx) for idx in self.retrievers.values() if idx is not None)

    def ram_bytes(self) -> int:
        """faiss indexes (held in RAM) + the lexical arrays (mapped: resident only as far as read).
        The token projections are not counted: they stay on disk (see `feature_bytes`)."""
        return int(self.faiss_bytes() + self.lexical.nbytes())

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
        dead = [self._row_key(self.position[i]) for i in ids if i in self.position]
        self._commit(segments=self.manifest["segments"] + [seg], tombstones=self.manifest["tombstones"] + dead)

    def delete(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"unknown entity ids: {missing[:5]}")
        dead = [self._row_key(self.position[i]) for i in ids]
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
        shutil.rmtree(self.root / "lexical", ignore_errors=True)  # refitted for the new rows
        write_json_atomic(self.root / "index.json", self.manifest)
        self.records.close()
        self._load()

    def set_nil_threshold(self, value: float | None, details: dict | None = None) -> None:
        self.manifest = {**self.manifest, "nil_threshold": value, "nil_calibration": details}
        write_json_atomic(self.root / "index.json", self.manifest)


def _unit(t) -> np.ndarray:
    a = t.float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.ascontiguousarray(a / np.maximum(n, 1e-12), dtype=np.float32)
