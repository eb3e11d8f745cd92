"""`LinkingService`: the model that serves, its KB index, KB edits and model swaps, for one process.

The app holds one service; every handler goes through it:

    service = LinkingService.start("data/", kb)                    # zero-shot on the offline backbone
    service = LinkingService.start("data/", kb, checkpoint="runs/x/best", version="v3")
    result = service.link("Chelsea won 2-1", "Chelsea", image="photo.jpg")
    service.upsert_entities([Entity(...)])                          # index updated without a rebuild
    service.describe()    # {"version", "scoring", "backbone", "index", "entities", ...}

Indexes live in DATA_DIR/indexes/<model fingerprint>/; the first start builds one (progress bar),
later starts load it and bring it in line with the KB they are given (new, changed and removed
entities only). A checkpoint serves with its trained MIMIC/M3EL units; without one the service is
zero-shot (`mimic.serving.zeroshot`): the scores are the backbone's similarities and say so
(`LinkResult.scoring == "zero-shot"`).

Thread safety: links run concurrently; KB edits and swaps take a write lock and replace the linker
in one assignment, so a request sees either the old or the new state, never a half-updated index.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mimic.data.schema import Entity, KnowledgeBase

if TYPE_CHECKING:  # the engine (torch) is imported when a service starts, not with this module:
    # the app's pages import `safe_name` from here and serve before the model loads
    from mimic.models.linking_model import LinkingModel
    from mimic.serving.index import KBIndex
    from mimic.serving.linking import Explanation, Linker, LinkResult

log = logging.getLogger("mimic.serving.service")


@dataclass
class ServedModel:
    """What serves now (shown in the app's header)."""

    version: str
    scoring: str  # "model" (trained units) or "zero-shot" (backbone similarities)
    backbone: str
    model_type: str
    checkpoint: str | None
    index_dir: str
    fingerprint: str
    loaded_at: float


class _RWLock:
    """Many readers or one writer (KB edits and swaps are rare, links are many). Writers have
    priority: once one waits, new readers queue behind it, so a steady stream of links cannot
    starve a swap."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def safe_name(s: str) -> str:
    """`s` as a file-name part: runs of other characters become one underscore, at most 80."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:80]


class LinkingService:
    def __init__(self, linker: Linker, served: ServedModel, data_dir: Path):
        self._linker = linker
        self.served = served
        self.data_dir = Path(data_dir)
        self.device = "cpu"
        self._lock = _RWLock()

    def wrap_inference(self, decorator) -> None:
        """Run link/explain through `decorator` (e.g. Hugging Face ZeroGPU's `spaces.GPU`, which
        attaches a GPU for the call; a no-op elsewhere)."""
        # Deliberately shadows the methods on this instance (what the decorator API expects).
        self.link = decorator(self.link)  # type: ignore[method-assign]
        self.explain = decorator(self.explain)  # type: ignore[method-assign]

    # -- start ---------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        data_dir: str | Path,
        kb: KnowledgeBase,
        *,
        checkpoint: str | Path | None = None,
        backbone="offline",
        version: str | None = None,
        allowed_image_dirs=None,
        progress: bool = True,
        model: LinkingModel | None = None,
        device: str = "cpu",
        keep_model: int | None = None,
    ) -> LinkingService:
        """device: where the model runs ("cpu", "cuda", "auto"); the index stays in CPU RAM.
        keep_model: the linker's (`Linker(keep_model=...)`; None: its default), kept across swaps."""
        data_dir = Path(data_dir)
        linker, served = cls._load(
            data_dir,
            kb,
            checkpoint=checkpoint,
            backbone=backbone,
            version=version,
            allowed_image_dirs=allowed_image_dirs,
            progress=progress,
            model=model,
            device=device,
            keep_model=keep_model,
        )
        svc = cls(linker, served, data_dir)
        svc.device = device
        return svc

    @staticmethod
    def _load(
        data_dir: Path,
        kb: KnowledgeBase,
        *,
        checkpoint,
        backbone,
        version,
        allowed_image_dirs,
        progress,
        model=None,
        device: str = "cpu",
        keep_model: int | None = None,
    ) -> tuple[Linker, ServedModel]:
        import torch

        from mimic.backbones import backbone_label, load_backbone
        from mimic.models.checkpoint import load_checkpoint
        from mimic.models.families import model_type_of
        from mimic.serving.index import model_fingerprint
        from mimic.serving.linking import Linker
        from mimic.serving.zeroshot import ZeroShotLinker, zero_shot_model

        if model is None and checkpoint is not None:
            model = load_checkpoint(checkpoint)
        zero_shot = checkpoint is None and (model is None or getattr(model, "checkpoint_info", None) is None)
        if model is None:
            model = zero_shot_model(load_backbone(backbone))
        model.eval()
        fp = model_fingerprint(model)  # before moving: the fingerprint names the index folder
        index_dir = data_dir / "indexes" / safe_name(("zs-" if zero_shot else "") + fp)
        index = _open_or_build_index(model, kb, index_dir, keep_global=zero_shot, progress=progress)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        lcls = ZeroShotLinker if zero_shot else Linker
        linker = lcls(model, index, allowed_image_dirs=allowed_image_dirs, keep_model=keep_model)
        label = backbone_label(model.backbone)
        if version is None:
            # the same name `python -m mimic retrain` gives the zero-shot serving model
            version = zero_shot_version(backbone) if zero_shot else Path(str(checkpoint)).name
        served = ServedModel(
            version=version,
            scoring=linker.scoring,
            backbone=label,
            model_type=model_type_of(model.heads),
            checkpoint=str(checkpoint) if checkpoint else None,
            index_dir=str(index_dir),
            fingerprint=fp,
            loaded_at=time.time(),
        )
        return linker, served

    # -- serving ---------------------------------------------------------------------------------
    @property
    def linker(self) -> Linker:
        return self._linker

    def link(self, sentence, mention, image=None, top_k: int = 10, explain: bool = True) -> LinkResult:
        with self._lock.read():
            return self._linker.link(sentence, mention, image, top_k=top_k, explain=explain)

    def link_batch(self, queries, top_k: int = 10, explain: bool = False) -> list[LinkResult]:
        """Many queries (dicts of sentence, mention, image) in encoder batches of 32."""
        out = []
        with self._lock.read():
            for s in range(0, len(queries), 32):
                out += self._linker.link_batch(queries[s : s + 32], top_k=top_k, explain=explain)
        return out

    def explain(self, sentence, mention, entity_id: str, image=None) -> Explanation:
        with self._lock.read():
            return self._linker.explain(sentence, mention, entity_id, image)

    def analyze(self, mentions, *, dataset: str = "", model_version: str | None = None) -> list:
        """Error analysis (`mimic.analysis.error_analysis`) of the served model on mentions with gold answers."""
        with self._lock.read():
            from mimic.analysis.error_analysis import analyze_linker

            return analyze_linker(
                self._linker, mentions, dataset=dataset, model_version=model_version or self.served.version
            )

    def entity(self, entity_id: str) -> dict | None:
        idx = self._linker.index
        return idx.records[idx.position[entity_id]] if entity_id in idx.position else None

    def __len__(self) -> int:
        return len(self._linker.index)

    def describe(self) -> dict:
        s = self.served
        return {
            "version": s.version,
            "scoring": s.scoring,
            "backbone": s.backbone,
            "model_type": s.model_type,
            "checkpoint": s.checkpoint,
            "index": s.index_dir,
            "fingerprint": s.fingerprint,
            "entities": len(self),
            "nil_threshold": self._linker.nil_threshold,
        }

    # -- KB edits ----------------------------------------------------------------------------------
    def upsert_entities(self, entities: Sequence[Entity], progress: bool = False) -> int:
        """Add or replace entities in the served index (a new segment; no rebuild).

        The entities are encoded outside the write lock (links keep being served meanwhile); only the
        commit, which appends the segment in place, holds it."""
        if not entities:
            return 0
        linker = self._linker
        prepared = linker.index.prepare_segment(linker.model, list(entities), progress=progress)
        with self._lock.write():
            if self._linker is linker:
                linker.index.commit_segment(prepared)
                return len(entities)
        shutil.rmtree(prepared.folder, ignore_errors=True)  # a swap came in between: encode for the new model
        with self._lock.write():
            self._linker.index.upsert(self._linker.model, list(entities), progress=progress)
        return len(entities)

    # -- swaps -------------------------------------------------------------------------------------
    def swap(
        self,
        kb: KnowledgeBase,
        *,
        checkpoint: str | Path | None,
        version: str | None = None,
        backbone="offline",
        progress: bool = False,
        on_ready: Callable[[ServedModel], None] | None = None,
    ) -> ServedModel:
        """Load another model (checkpoint=None: zero-shot on `backbone`) and build or sync its index
        while the current one keeps serving, then switch in one step."""
        linker, served = self._load(
            self.data_dir,
            kb,
            checkpoint=checkpoint,
            backbone=backbone,
            version=version,
            allowed_image_dirs=self._linker.allowed_image_dirs,
            progress=progress,
            device=self.device,
            keep_model=self._linker.keep_model,
        )
        with self._lock.write():
            self._linker, self.served = linker, served
        if on_ready:
            on_ready(served)
        return served

    def sync_kb(self, kb: KnowledgeBase) -> dict:
        """Bring the served index in line with `kb` (after a swap raced with KB edits)."""
        with self._lock.write():
            return sync_index(self._linker.index, self._linker.model, kb)


def zero_shot_version(backbone) -> str:
    """The model-version name of zero-shot serving on `backbone` (shared with retraining.job)."""
    return f"zero-shot ({backbone if isinstance(backbone, str) else 'custom backbone'})"


def _open_or_build_index(
    model: LinkingModel, kb: KnowledgeBase, index_dir: Path, *, keep_global: bool, progress: bool
) -> KBIndex:
    from mimic.serving.index import KBIndex

    if not (index_dir / "index.json").exists():
        log.info("building the KB index for %d entities in %s (first start for this model)", len(kb), index_dir)
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        KBIndex.build(model, kb, index_dir, progress=progress, overwrite=True)
    index = KBIndex(index_dir, keep_global=keep_global)
    sync_index(index, model, kb, progress=progress)
    return index


def sync_index(index: KBIndex, model: LinkingModel, kb: KnowledgeBase, progress: bool = False) -> dict:
    """Bring `index` in line with `kb`: encode new or changed entities, drop removed ones."""
    from mimic.serving.index import entity_record

    wanted = {e.id: e for e in kb.entities}
    changed = [
        e for e in kb.entities if e.id not in index.position or index.records[index.position[e.id]] != entity_record(e)
    ]
    removed = [i for i in index.ids if i not in wanted]
    if changed:
        index.upsert(model, changed, progress=progress)
    if removed:
        index.delete(removed)
    if changed or removed:
        log.info("index synced with the KB: %d entities encoded, %d removed", len(changed), len(removed))
    return {"encoded": len(changed), "removed": len(removed)}
