"""Knowledge-base files for the linker: official `kb_entity.json`, JSONL and CSV, read leniently.

Dataset loaders (`mimic.data.formats`) stop at the first malformed record, which is right for
training data. Importing a KB is different: a user wants every good entity in and a report of what
was rejected and why. `load_kb` returns both.

  official  a folder with kb_entity.json (+ qid2id.json mapping QIDs to positions, + kb_image/),
            or the kb_entity.json file itself (ids then come from qid2id.json beside it, or the
            integer `id` field when there is none)
  jsonl     one entity per line: id, name, aliases [list], text|description|desc|attr, images [list]
  csv       header with id, name and optionally aliases, text|description|desc|attr, images;
            list fields separated by "|"
Image paths are resolved relative to the file's folder (official: kb_image/); missing images are
dropped from the entity and reported. An image that does not stay inside the file's folder (an
absolute path elsewhere, a `..` escape, a symlink leading out, a URL, /proc, ...) rejects its row
with the reason: a KB file names images beside it, never other files of the machine.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from mimic.data.schema import DataFormatError, Entity, KnowledgeBase

TEXT_KEYS = ("text", "description", "desc", "attr")


@dataclass
class KBReport:
    """What `load_kb` kept and rejected. `rejected` rows: {"row", "id", "reason"}."""

    path: str
    format: str
    loaded: int = 0
    rejected: list[dict] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    empty_names: list[str] = field(default_factory=list)
    missing_images: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.path}: {self.loaded} entities loaded, {len(self.rejected)} rejected "
            f"({len(self.duplicates)} duplicate ids, {len(self.empty_names)} empty names), "
            f"{len(self.missing_images)} missing images"
        )

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "loaded": self.loaded,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "empty_names": self.empty_names,
            "missing_images": self.missing_images,
            "summary": self.summary(),
        }


def _as_list(v, sep="|") -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(sep) if s.strip()]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s.strip()]
    raise TypeError(f"expected a list of strings, got {type(v).__name__}")


def _text(rec: dict) -> str:
    for k in TEXT_KEYS:
        v = rec.get(k)
        if v is not None:
            if not isinstance(v, str):
                raise TypeError(f"'{k}' must be a string")
            return v
    return ""


class UnsafeImagePath(ValueError):
    """An image reference that does not resolve to a file inside the allowed folder."""


def confined_path(name: str, base: str | Path) -> Path:
    """`name` (relative to `base`, or absolute) resolved, symlinks followed, and required to lie
    inside `base`; else `UnsafeImagePath`. The returned path may not exist."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafeImagePath("empty image name")
    if "\x00" in name:
        raise UnsafeImagePath(f"image {name!r} contains a NUL byte")
    if "://" in name or name.lower().startswith(("data:", "file:", "http:", "https:", "ftp:")):
        raise UnsafeImagePath(f"image {name!r} is a URL: images must be files beside the KB file")
    root = Path(base).resolve()
    p = Path(name)
    target = (p if p.is_absolute() else root / p).resolve()
    if target != root and root not in target.parents:
        raise UnsafeImagePath(
            f"image {name!r} is outside the KB folder (absolute path, '..' or a symlink leading out): refused"
        )
    return target


def _raw_records(path: Path, fmt: str) -> tuple[Sequence[tuple[object, Any]], Path, dict | None]:
    """-> ([(row label, record dict)], image base folder, qid2id or None)."""
    if fmt == "official":
        folder = path if path.is_dir() else path.parent
        kb_file = folder / "kb_entity.json" if path.is_dir() else path
        try:
            data = json.loads(kb_file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataFormatError(kb_file, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise DataFormatError(kb_file, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise DataFormatError(kb_file, "expected a JSON list of entities")
        qid2id = None
        if (folder / "qid2id.json").exists():
            line = (folder / "qid2id.json").read_text(encoding="utf-8").splitlines()[0]
            qid2id = json.loads(line)
        return list(enumerate(data)), folder / "kb_image", qid2id
    if fmt == "jsonl":
        rows: list[tuple[str, Any]] = []
        with open(path, encoding="utf-8", errors="strict") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    rows.append((f"line {n}", exc))
        return rows, path.parent, None
    if fmt == "csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "id" not in reader.fieldnames or "name" not in reader.fieldnames:
                raise DataFormatError(path, f"CSV header must contain 'id' and 'name' (found {reader.fieldnames})")
            return [(f"line {i + 2}", dict(r)) for i, r in enumerate(reader)], path.parent, None
    raise ValueError(f"unknown KB format {fmt!r}")


def detect_format(path: Path) -> str:
    if path.is_dir() or path.name == "kb_entity.json":
        return "official"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise DataFormatError(
        path, "cannot tell the KB format: expected a folder or kb_entity.json (official), .jsonl or .csv"
    )


def load_kb(
    path: str | Path, format: str = "auto", check_images: bool = True, confine_images: bool = True
) -> tuple[KnowledgeBase, KBReport]:
    """Read a KB file leniently. Raises `DataFormatError` only when the file as a whole is unreadable.
    confine_images (default): a row naming an image outside the KB file's folder is rejected."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"KB file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    try:
        rows, img_base, qid2id = _raw_records(path, fmt)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    inv = {v: k for k, v in qid2id.items()} if qid2id else None
    report = KBReport(path=str(path), format=fmt)
    entities: list[Entity] = []
    seen: set[str] = set()
    for row, rec in rows:
        try:
            if isinstance(rec, Exception):
                raise ValueError(f"invalid JSON: {rec}")
            if not isinstance(rec, dict):
                raise ValueError("record is not an object")
            if fmt == "official":
                if rec.get("type", "entity") != "entity":
                    raise ValueError(f"type is {rec.get('type')!r}, expected 'entity'")
                raw_id = rec.get("id")
                eid = inv.get(raw_id) if inv is not None else raw_id
                if eid is None:
                    raise ValueError(f"id {raw_id!r} has no QID in qid2id.json")
                name = unquote(str(rec.get("entity_name") or ""))
                images = _as_list(rec.get("image_list"))
                aliases = _as_list(rec.get("aliases"))
            else:
                eid, raw_name = rec.get("id"), rec.get("name")
                name = raw_name if isinstance(raw_name, str) else "" if raw_name is None else str(raw_name)
                images, aliases = _as_list(rec.get("images")), _as_list(rec.get("aliases"))
            eid = "" if eid is None else str(eid).strip()
            if not eid:
                raise ValueError("missing id")
            if not name.strip():
                report.empty_names.append(eid)
                raise ValueError("empty name")
            if eid in seen:
                report.duplicates.append(eid)
                raise ValueError(f"duplicate id {eid!r} (first occurrence kept)")
            resolved = []
            for im in images:
                if confine_images:
                    p = confined_path(im, img_base if fmt != "official" or not os.path.isabs(im) else img_base.parent)
                else:
                    p = Path(im) if os.path.isabs(im) else img_base / im
                if check_images and not p.is_file():
                    report.missing_images.append({"id": eid, "image": str(p)})
                    continue
                resolved.append(str(p))
            entities.append(Entity(id=eid, name=name.strip(), text=_text(rec), aliases=aliases, images=resolved))
            seen.add(eid)
        except (ValueError, TypeError) as exc:
            report.rejected.append(
                {"row": row, "id": (rec.get("id") if isinstance(rec, dict) else None), "reason": str(exc)}
            )
    report.loaded = len(entities)
    return KnowledgeBase(entities), report
