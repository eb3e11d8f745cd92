"""The project's own JSONL layout: `kb.jsonl` plus one `<split>.jsonl` per split.

`load_jsonl_dataset` validates each line and counts what it drops in `Dataset.stats`;
`write_jsonl_dataset` is atomic (a temporary sibling directory renamed into place).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

from mimic.atomic import atomic_dir, write_dir_atomic
from mimic.data.json_files import read_jsonl, write_jsonl
from mimic.data.json_record import JsonRecord, count_per_split, is_nil, split_order
from mimic.data.mentions import locate_mention
from mimic.data.schema import Dataset, Entity, KnowledgeBase, Mention

_TEXT_SYNONYMS = ("text", "description", "desc", "attr")  # accepted in kb.jsonl, first wins


def _resolve_file(root: Path, p: str) -> Path:
    return Path(p) if os.path.isabs(p) else (root / p).absolute()


def _load_jsonl_kb(root: Path, stats: dict) -> list[Entity]:
    path = root / "kb.jsonl"
    entities: list[Entity] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        rec = JsonRecord(obj, path, f"line {lineno}")
        eid = rec.ident("id")
        if eid in seen:
            raise rec.error(f"duplicate entity id {eid!r} (also line {seen[eid]})", "id")
        seen[eid] = lineno
        name = rec.string("name")
        if not name.strip():
            raise rec.error("empty entity name", "name")
        key = next((k for k in _TEXT_SYNONYMS if rec.has(k)), "text")
        images = []
        for p in rec.str_list("images"):
            full = _resolve_file(root, p)
            if full.is_file():
                images.append(str(full))
            else:
                stats["missing_entity_images"] += 1
        entities.append(
            Entity(
                id=eid,
                name=name,
                text=rec.string(key, required=False, default="", allow_null=True) or "",
                aliases=rec.str_list("aliases"),
                images=images,
            )
        )
    return entities


def _span(rec: JsonRecord, sentence: str, text: str, stats: dict) -> tuple[int | None, int | None]:
    """The given start/end (checked to lie inside the sentence), else located in the sentence."""
    start = rec.get("start", (int,), required=False, allow_null=True)
    end = rec.get("end", (int,), required=False, allow_null=True)
    if start is None or end is None:
        start, end = locate_mention(text, sentence)
        stats["spans_not_found"] += start is None
    elif not 0 <= start <= end <= len(sentence):
        raise rec.error(f"span {start}..{end} is outside the sentence (length {len(sentence)})", "start")
    return start, end


def _load_jsonl_split(path: Path, root: Path, kb: KnowledgeBase, stats: dict) -> list[Mention]:
    split, mentions = path.stem, []
    for lineno, obj in read_jsonl(path):
        rec = JsonRecord(obj, path, f"line {lineno}")
        if not rec.has("answer"):
            raise rec.error("missing required field (use null or 'nil' for no entity)", "answer")
        answer = rec.ident("answer", required=False) if rec.obj["answer"] is not None else None
        if answer is None or is_nil(answer):
            count_per_split(stats, "nil_dropped", split)
            continue
        if answer not in kb:
            raise rec.error(f"unknown entity {answer!r} (not in kb.jsonl)", "answer")
        mid = rec.ident("id")
        sentence = rec.string("sentence", non_empty=True)
        text = rec.string("mention")
        start, end = _span(rec, sentence, text, stats)
        image = rec.string("image", required=False, allow_null=True)
        if image:
            full = _resolve_file(root, image)
            image = str(full) if full.is_file() else None
            stats["missing_mention_images"] += image is None
        mentions.append(
            Mention(id=mid, sentence=sentence, mention=text, answer=answer, image=image or None, start=start, end=end)
        )
    count_per_split(stats, "mentions", split, len(mentions))
    return mentions


def load_jsonl_dataset(root: str | Path) -> Dataset:
    """Load the project's JSONL layout: `kb.jsonl` plus one `<split>.jsonl` per split.

    Relative image paths are resolved against `root`; missing images are counted and left out.
    Mentions whose answer is null or 'nil' are dropped and counted.
    """
    root = Path(root)
    if not (root / "kb.jsonl").is_file():
        raise FileNotFoundError(f"no kb.jsonl in {root}")
    stats: dict = {
        "missing_entity_images": 0,
        "missing_mention_images": 0,
        "spans_not_found": 0,
        "nil_dropped": {},
        "mentions": {},
    }
    kb = KnowledgeBase(_load_jsonl_kb(root, stats))
    files = {f.stem: f for f in root.glob("*.jsonl") if f.is_file() and f.name != "kb.jsonl"}
    splits = {s: _load_jsonl_split(files[s], root, kb, stats) for s in split_order(files)}
    stats["entities"] = len(kb)
    return Dataset(kb, splits, name=root.absolute().name, stats=stats)


def _relative_or_absolute(p: str, root: Path) -> str:
    full = Path(p).absolute()
    return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)


def _carry_over(paths: list[str], root: Path, tmp: Path) -> None:
    """Images inside a directory being overwritten would vanish with it: bring them along."""
    for p in paths:
        src = Path(p).absolute()
        if src.is_relative_to(root) and src.is_file():
            dst = tmp / src.relative_to(root)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)  # free when on the same filesystem (it always is: a sibling)
            except OSError:
                shutil.copyfile(src, dst)


def write_jsonl_dataset(dataset: Dataset, root: str | Path, *, overwrite: bool = False) -> Path:
    """Write `dataset` in the project's JSONL layout under `root` (atomically, without copying
    images); return `root`. Image paths are written relative to `root` when inside it, else absolute.
    """
    root = Path(root).absolute()
    for split in dataset.splits:
        if split == "kb" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split):
            raise ValueError(f"split name {split!r} cannot be used as a file name")
    with atomic_dir(root, overwrite) as tmp:
        if root.exists():
            _carry_over(
                [p for e in dataset.kb for p in e.images]
                + [m.image for ms in dataset.splits.values() for m in ms if m.image],
                root,
                tmp,
            )
        write_jsonl(
            tmp / "kb.jsonl",
            (
                {
                    "id": e.id,
                    "name": e.name,
                    "aliases": list(e.aliases),
                    "text": e.text,
                    "images": [_relative_or_absolute(p, root) for p in e.images],
                }
                for e in dataset.kb
            ),
        )
        for split, mentions in dataset.splits.items():
            write_jsonl(
                tmp / f"{split}.jsonl",
                (
                    {
                        "id": m.id,
                        "sentence": m.sentence,
                        "mention": m.mention,
                        "start": m.start,
                        "end": m.end,
                        "image": _relative_or_absolute(m.image, root) if m.image else None,
                        "answer": m.answer,
                    }
                    for m in mentions
                ),
            )
    return root


KB_IMAGE_DIR, MENTION_IMAGE_DIR = "kb_image", "mention_image"  # as the official layout's folders
log = logging.getLogger("mimic.data")


def write_jsonl_dataset_with_images(dataset: Dataset, root: str | Path, *, overwrite: bool = False) -> Path:
    """`write_jsonl_dataset` with the images copied into root/kb_image/ and root/mention_image/ (named
    relatively, a self-contained folder; atomically); return `root`."""
    return write_dir_atomic(Path(root), lambda tmp: _fill_with_images(dataset, tmp), overwrite=overwrite)


def _fill_with_images(dataset: Dataset, root: Path) -> None:
    """`dataset` in the JSONL layout under `root` (an empty folder) with its images copied into
    root/kb_image/ and root/mention_image/ under their store names (content hashes, so a file shared
    by several rows is copied once), so kb.jsonl and the split files name them relatively. A missing
    source keeps its relative name without a file, as `write_official` does (the loader counts it)."""
    placed: dict[str, str] = {}

    def place(src: str, folder: str) -> str:
        if src not in placed:
            rel = f"{folder}/{Path(src).name}"
            if os.path.isfile(src):
                (root / folder).mkdir(exist_ok=True)
                if not (root / rel).exists():
                    shutil.copyfile(src, root / rel)
            else:
                log.warning("image %s not found; writing its name without a file", src)
            placed[src] = str(root / rel)
        return placed[src]

    kb = KnowledgeBase(
        [Entity(e.id, e.name, e.text, list(e.aliases), [place(p, KB_IMAGE_DIR) for p in e.images]) for e in dataset.kb]
    )
    splits = {
        name: [replace(m, image=place(m.image, MENTION_IMAGE_DIR) if m.image else None) for m in ms]
        for name, ms in dataset.splits.items()
    }
    # root exists (the caller's temporary folder): the writer replaces it, carrying the images over
    write_jsonl_dataset(Dataset(kb, splits, name=dataset.name, stats=dataset.stats), root, overwrite=True)
