"""Exports: accepted links as JSONL / CSV, and a training set that `python -m mimic train` reads.

The training set is built as a `mimic.data.schema.Dataset` and written by the core library's own
writers (`write_official` for the official MIMIC layout — kb_entity.json, qid2id.json,
<PREFIX>_train/dev/test.json, kb_image/, mention_image/ — or `write_jsonl_dataset`), so whatever
the loaders accept is by construction what we produce. Every write is atomic (temporary file or
folder renamed into place).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from mimic.data import write_jsonl_dataset, write_official
from mimic.data.schema import Dataset, Mention as CoreMention

from .errors import InvalidInput
from .models import Image, Mention
from .records import TrainingExport

if TYPE_CHECKING:
    from .store import AnnotationStore

LINK_COLUMNS = ["annotation_id", "request_id", "mention_uid", "source", "sentence", "mention", "start", "end", "image",
                "decision", "entity_id", "entity_name", "entity_version", "annotator", "role", "seconds_spent",
                "comment", "created_at", "model_version", "predicted_entity_id", "predicted_score", "corrected"]


def _atomic_file(path: Path):
    """A temporary sibling of `path` and a function that moves it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"

    def commit() -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return tmp, commit


def export_links_jsonl(store: "AnnotationStore", path: str | Path) -> int:
    """Write every current decision as one JSON object per line (text verbatim, UTF-8). Returns the count."""
    path = Path(path)
    rows = store.accepted_links()
    tmp, commit = _atomic_file(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps({k: r[k] for k in LINK_COLUMNS}, ensure_ascii=False) + "\n")
        commit()
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def export_links_csv(store: "AnnotationStore", path: str | Path) -> int:
    """The same rows as `export_links_jsonl` as CSV (pandas quoting: commas, quotes and newlines safe).

    Cells are written verbatim: a cell starting with "=" stays a formula to a spreadsheet program,
    so open untrusted exports as text.
    """
    import pandas as pd
    path = Path(path)
    rows = store.accepted_links()
    tmp, commit = _atomic_file(path)
    try:
        pd.DataFrame(rows, columns=LINK_COLUMNS).to_csv(tmp, index=False, encoding="utf-8")
        commit()
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def split_of(uid: str, fractions: tuple[float, float, float], seed: str = "") -> str:
    """Deterministic split of a mention: the SHA-256 of seed + uid, as a number in [0, 1), against
    the cumulative train/dev/test fractions. Adding mentions never moves existing ones."""
    u = int(hashlib.sha256((seed + uid).encode("utf-8")).hexdigest()[:15], 16) / float(16 ** 15)
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def build_training_dataset(store: "AnnotationStore", *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                           seed: str = "", name: str = "annotations") -> tuple[Dataset, list[int], int, int]:
    """The annotated mentions as a core `Dataset` (KB = the entities table), plus the ids of the
    annotations used, the number of conflicting mentions and of NIL / ambiguous ones (left out)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InvalidInput(f"expected three non-negative numbers summing to 1, got {fractions}", "fractions")
    resolutions, conflicts = store.resolved()
    linked = {mid: r for mid, r in resolutions.items() if r.decision == "entity"}
    kb = store.knowledge_base()

    def fetch(s):
        rows = []
        ids = sorted(linked)
        for i in range(0, len(ids), 500):
            rows += s.execute(select(Mention, Image.ext).outerjoin(Image, Image.sha256 == Mention.image_sha256)
                              .where(Mention.id.in_(ids[i:i + 500]))).all()
        return rows
    splits: dict[str, list[CoreMention]] = {"train": [], "dev": [], "test": []}
    used: list[int] = []
    for m, ext in sorted(store.read_transaction(fetch), key=lambda t: t[0].id):
        r = linked[m.id]
        image = store.image_path(m.image_sha256, ext=ext) if m.image_sha256 else None
        splits[split_of(m.uid, fractions, seed)].append(CoreMention(
            id=m.uid, sentence=m.sentence, mention=m.mention, answer=r.entity_id, image=image,
            start=m.start, end=m.end))
        used.extend(r.annotation_ids)
    dataset = Dataset(kb, splits, name=name, stats={"conflicts": conflicts})
    return dataset, sorted(used), conflicts, len(resolutions) - len(linked)


def export_training_set(store: "AnnotationStore", out_dir: str | Path, *, layout: str = "official",
                        prefix: str = "WIKIMEL", fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                        seed: str = "", copy_images: bool = True, overwrite: bool = False) -> TrainingExport:
    """Write the accepted entity links as a training set that `python -m mimic train --data out_dir`
    reads directly. layout="official" (default) or "jsonl" (the project's kb.jsonl + <split>.jsonl).

    Labels follow `AnnotationStore.resolved` (reviewer wins, else majority; ties left out); NIL and
    ambiguous decisions are not trainable links and are left out (counted in the result). The
    returned `annotation_ids` are what `create_training_run(annotation_ids=...)` should record.
    """
    if layout not in ("official", "jsonl"):
        raise InvalidInput(f"must be 'official' or 'jsonl', got {layout!r}", "layout")
    dataset, used, conflicts, not_entity = build_training_dataset(store, fractions=fractions, seed=seed,
                                                                  name=prefix)
    if layout == "official":
        path = write_official(dataset, out_dir, prefix=prefix, copy_images=copy_images, overwrite=overwrite)
    else:
        path = write_jsonl_dataset(dataset, out_dir, overwrite=overwrite)
    return TrainingExport(path=str(path), splits={k: len(v) for k, v in dataset.splits.items()},
                          entities=len(dataset.kb), annotation_ids=used, conflicts=conflicts, not_entity=not_entity)
