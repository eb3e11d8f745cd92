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
  faiss_<name>.index  approximate (HNSW / IVF / IVF-PQ) indexes with faiss_<name>.json (the segments
                      they hold); flat ones are rebuilt on load (`mimic.serving.retrievers`)
  lexical/<segment>/  each segment's character n-gram term frequencies, memory-mapped
                      (`mimic.serving.lexical_segment`)

Version-1 indexes (one `<field>.npy` per field, `ids.json`) still load and serve; newer versions are
refused with a rebuild message. Building writes into `.DIR.building/`: encoding records its chunks in
`seg-0000/progress.json` after each one is on disk, and faiss indexes are saved as they finish, so an
interrupted build resumes where it stopped (same checkpoint, KB and chunk size); the folder is renamed
into place only when complete. Updates (add / update / delete) write a new segment and tombstones,
never re-encoding the rest; `index.json` is replaced atomically. A committed segment is appended in
place: faiss holds every physical row (deleted ones are filtered at search time), the lexical index
fits only the new names, the stores open only the new files; nothing else is reloaded or refitted.
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
from mimic.serving.lexical_segment import LexSegment
from mimic.serving.record_store import RecordStore, _SegmentRecords, segment_ids, write_records
from mimic.serving.retrievers import Retriever
from mimic.serving.segments import _NAME_LOCK, PreparedSegment, _drop_legacy_lexical, _Grow
from mimic.serving.token_store import (
    BOOL_FIELDS,
    GLOBAL_FIELDS,
    GLOBALS_FILE,
    RECORD_FILE,
    TokenStore,
    _Segment,
    record_dtype,
)
from mimic.serving.vector_index import KINDS, index_bytes

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

    records: RecordStore
    globals: TokenStore
    cache: TokenStore
    retrievers: dict[str, Retriever]  # "model", "text", and "image" once an entity has an image
    ids: list  # entity ids of the live rows, in row order
    text_global: torch.Tensor  # keep_global only
    image_global: torch.Tensor

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
    def _load(self) -> None:
        """Open every segment of the manifest (faiss and lexical parts saved for them are read, the
        rest built) and apply the tombstones."""
        self._segment_names: list[str] = []
        self._sizes: list[int] = []
        self._seg_ids: list[list[str]] = []
        self._gsegs: list[_Segment] = []
        self._has_image_phys = np.zeros(0, bool)
        self._unit_globals = {n: _Grow() for n in ("text_global", "image_global")} if self.keep_global else {}
        self.lexical = LexicalIndex()
        self.retrievers = {}
        _drop_legacy_lexical(self.root / "lexical")
        self._add_segments(self.manifest["segments"])
        self._bind()

    @property
    def _offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self._sizes, dtype=np.int64)]).astype(np.int64)

    def _read_phys(self, name: str, unit: bool):
        """reader(start, stop) -> float32 [stop - start, D] of field `name` over physical rows."""

        def read(s: int, e: int) -> np.ndarray:
            offs, parts = self._offsets, []
            si = int(np.searchsorted(offs, s, side="right")) - 1
            while s < e:
                t = min(e, int(offs[si + 1]))
                parts.append(self._gsegs[si].read_range(s - int(offs[si]), t - int(offs[si]), [name])[name])
                s, si = t, si + 1
            a = np.concatenate(parts) if parts else np.zeros((0, self._dim(name)), np.float32)
            return _unit(a) if unit else np.ascontiguousarray(a, dtype=np.float32)

        return read

    def _dim(self, name: str) -> int:
        seg = self._gsegs[0]
        a = seg.records[name] if seg.records is not None else seg.columns[name]
        return int(a.shape[1])

    def _add_segments(self, names: Sequence[str]) -> None:
        """Append segments (physical rows): their ids, image flags, faiss rows and lexical part."""
        if not names:
            return
        say = log.info if self._progress else log.debug
        for seg in names:
            path = self.root / seg
            ids = segment_ids(path)
            g = _Segment(path, GLOBAL_FIELDS, GLOBALS_FILE)
            if len(g) != len(ids):
                raise IndexFileError(f"{path}: {len(ids)} records but {len(g)} vector rows (an unfinished segment?)")
            self._segment_names.append(seg)
            self._sizes.append(len(ids))
            self._seg_ids.append(ids)
            self._gsegs.append(g)
            has = np.concatenate(
                [np.asarray(g.read_range(s, s + 65536, ["has_image"])["has_image"]) for s in range(0, len(ids), 65536)]
                or [np.zeros(0, bool)]
            )
            self._has_image_phys = np.concatenate([self._has_image_phys, has.astype(bool)])
            for field, buf in self._unit_globals.items():
                buf.append(_unit(g.read_range(0, len(ids), [field])[field]))
        kind = self.manifest.get("faiss", "flat")
        legacy_ok = not self.manifest.get("tombstones")
        specs: dict[str, tuple[str, bool, np.ndarray | None]] = {
            "model": ("retrieval", False, None),
            "text": ("text_global", True, None),
            "image": ("image_global", True, self._has_image_phys),
        }
        for rname, (field, unit, select) in specs.items():
            r = self.retrievers.get(rname)
            if r is None:
                if rname == "image" and not self._has_image_phys.any():
                    continue
                r = Retriever(rname, kind, self._dim(field), self.root, log=say)
                self.retrievers[rname] = r
            r.sync(self._segment_names, self._sizes, self._read_phys(field, unit), select, legacy_ok)
        self._add_lexical(say)

    def _add_lexical(self, say) -> None:
        lex = self.lexical
        for i in range(len(lex.segments), len(self._segment_names)):
            seg = self._segment_names[i]
            prev = _lexical_prev(self._segment_names[:i])
            folder = self.root / "lexical" / seg
            part = LexSegment.load(folder, self._sizes[i], len(lex.vocab), prev)
            if part is None:
                say("fitting the lexical index over the %d entities of %s", self._sizes[i], seg)
                recs = _SegmentRecords(self.root / seg)
                part = LexSegment.fit((recs.get(j) for j in range(len(recs))), lex.vocab)
                try:
                    shutil.rmtree(folder, ignore_errors=True)
                    part.save(folder, prev)
                    part = LexSegment.load(folder, self._sizes[i], len(lex.vocab), prev) or part  # mapped, not held
                except OSError as exc:  # a read-only index folder still serves; it refits next time
                    log.warning("could not save the lexical index in %s: %s", folder, exc)
            lex.add(part)

    def _bind(self) -> None:
        """Apply the tombstones: live rows, ids, stores and retrievers over them."""
        offs = self._offsets
        alive = np.ones(int(offs[-1]), bool)
        where = {s: i for i, s in enumerate(self._segment_names)}
        for key in self.manifest.get("tombstones", []):
            seg, _, row = key.rpartition(":")
            if seg in where and 0 <= int(row) < self._sizes[where[seg]]:
                alive[offs[where[seg]] + int(row)] = False
        live = np.flatnonzero(alive)
        p2l = np.full(len(alive), -1, np.int64)
        p2l[live] = np.arange(len(live))
        self._live_phys, self._phys_to_live = live, p2l
        if len(live) == len(alive):
            self.ids = [i for ids in self._seg_ids for i in ids]
        else:
            flat = [i for ids in self._seg_ids for i in ids]
            self.ids = [flat[p] for p in live]
        self.position = {eid: i for i, eid in enumerate(self.ids)}
        keep = [
            (self.root / s, live[(live >= offs[i]) & (live < offs[i + 1])] - offs[i])
            for i, s in enumerate(self._segment_names)
        ]
        has = torch.from_numpy(np.ascontiguousarray(self._has_image_phys[live]))
        cache_cls = family(self.manifest.get("model_type", "mimic"))[2]
        old = self.__dict__  # stores of the index before this update share their open segments
        self.records = RecordStore(keep, reuse=old.get("records"))
        self.globals = TokenStore(
            None, keep, GLOBALS_FILE, names=GLOBAL_FIELDS, has_image=has, reuse=old.get("globals")
        )
        self.cache = TokenStore(cache_cls, keep, has_image=has, reuse=old.get("cache"))
        for r in self.retrievers.values():
            r.bind(p2l)
        self.image_rows = np.flatnonzero(has.numpy())
        self.lexical.bind(offs, p2l)
        if self.keep_global:
            for name, buf in self._unit_globals.items():
                a = buf.view() if len(live) == len(alive) else buf.view()[live]
                setattr(self, name, torch.from_numpy(a))

    def _row_key(self, row: int) -> str:
        p = int(self._live_phys[row])
        si = int(np.searchsorted(self._offsets, p, side="right")) - 1
        return f"{self._segment_names[si]}:{p - int(self._offsets[si])}"

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
        return sum(index_bytes(r.idx) for r in self.retrievers.values() if r.idx is not None)

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
        prepared = self.prepare_segment(model, entities, progress)
        if prepared is not None:
            self.commit_segment(prepared)

    def prepare_segment(self, model: LinkingModel, entities: Sequence[Entity], progress: bool = False):
        """Encode `entities` into a new segment folder, not yet part of the index (the slow part of an
        update: it reads only the model, so a server encodes outside its write lock). -> a
        `PreparedSegment` for `commit_segment`, or None for no entities."""
        self.check_model(model)
        if not entities:
            return None
        ids = [e.id for e in entities]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one update")
        with _NAME_LOCK:  # two updates prepared at once get two names
            n = len(self.manifest["segments"])
            while True:
                seg = f"seg-{n:04d}"
                tmp = self.root / f".{seg}.tmp"
                if not (self.root / seg).exists() and not tmp.exists():
                    tmp.mkdir()
                    break
                n += 1
        try:
            _encode_segment(model, list(entities), tmp, 64, progress, ImageLoadStats())
            (tmp / "progress.json").unlink()
            self._prefit_lexical(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return PreparedSegment(seg, tmp, ids)

    def _prefit_lexical(self, folder: Path) -> None:
        """Fit a prepared segment's lexical part now, outside the server's write lock: the commit
        holds that lock, and fitting an 18,000-name import segment there made links wait seconds.
        It fits against the n-gram vocabulary as it is now; the commit keeps it only if no other
        segment was committed in between (same vocabulary size, same segments before it), else
        refits (`_add_lexical`)."""
        recs = _SegmentRecords(folder)
        part = LexSegment.fit((recs.get(j) for j in range(len(recs))), self.lexical.vocab)
        part.save(folder / "lexical", _lexical_prev(list(self._segment_names)))

    def commit_segment(self, prepared: PreparedSegment) -> None:
        """Make a prepared segment part of the index: the rows it replaces are tombstoned, its rows
        appended to the retrievers and the lexical index (no reload of the rest)."""
        os.rename(prepared.folder, self.root / prepared.name)
        staged = self.root / prepared.name / "lexical"
        if staged.is_dir():  # the part fitted by prepare_segment, where `_add_lexical` looks for it
            target = self.root / "lexical" / prepared.name
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(exist_ok=True)
            os.rename(staged, target)
        dead = [self._row_key(self.position[i]) for i in prepared.ids if i in self.position]
        self._commit(
            segments=self.manifest["segments"] + [prepared.name],
            tombstones=self.manifest["tombstones"] + dead,
            new=[prepared.name],
        )

    def delete(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.position]
        if missing:
            raise KeyError(f"unknown entity ids: {missing[:5]}")
        dead = [self._row_key(self.position[i]) for i in ids]
        self._commit(segments=self.manifest["segments"], tombstones=self.manifest["tombstones"] + dead)

    def _commit(self, segments, tombstones, new: Sequence[str] = ()):
        """The manifest is replaced first (atomically): a crash after it loads the new segment, whose
        faiss rows and lexical part are then built at load."""
        self.manifest = {
            **self.manifest,
            "segments": segments,
            "tombstones": sorted(set(tombstones)),
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(self.root / "index.json", self.manifest)
        try:
            self._add_segments(new)
            self._bind()
        except Exception:  # the in-memory state may be half updated: load what the manifest says
            log.exception("appending %s to the index in place failed; reloading the index", list(new))
            self._load()

    def set_nil_threshold(self, value: float | None, details: dict | None = None) -> None:
        self.manifest = {**self.manifest, "nil_threshold": value, "nil_calibration": details}
        write_json_atomic(self.root / "index.json", self.manifest)


def _lexical_prev(segments: Sequence[str]) -> str:
    """What a segment's lexical part was fitted after (the segments before it), as saved with it."""
    return hashlib.sha256(json.dumps(list(segments)).encode()).hexdigest()[:16]


def _unit(t) -> np.ndarray:
    a = t.float().numpy() if isinstance(t, torch.Tensor) else np.array(t, dtype=np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", a, a))[:, None]  # no [N, D] temporary, unlike linalg.norm
    return np.ascontiguousarray(a / np.maximum(n, 1e-12), dtype=np.float32)
