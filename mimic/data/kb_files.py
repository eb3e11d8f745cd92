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

Malformed files never raise a raw error: `load_kb` raises `DataFormatError` (a ValueError) with a
reason when the file as a whole cannot be read, else rejects the bad rows one by one, naming them
("line N" for JSONL/CSV, the record index for kb_entity.json) in `KBReport.rejected`:
  whole file  empty; binary (NUL bytes, an image/archive signature, mostly undecodable bytes); a CSV
              header without 'id' and 'name'; a kb_entity.json that is not a JSON list
  per row     invalid JSON; JSON nested deeper than the parser allows; bytes that are not UTF-8 or
              lone surrogates (\\ud800 escapes), which the database could not store; NUL characters;
              a field longer than FIELD_MAX characters (CSV fields are parsed up to CSV_FIELD_LIMIT,
              a row with a longer one is rejected)
Encodings: UTF-8, with or without a byte-order mark; UTF-16 and UTF-32 with a byte-order mark are
decoded. `read_text_file` does the same for other importers (db.mentions).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from mimic.data.schema import DataFormatError, Entity, KnowledgeBase

TEXT_KEYS = ("text", "description", "desc", "attr")
FIELD_MAX = 1_048_576  # characters in any one field of a KB row (name, text, an alias, an image path)
CSV_FIELD_LIMIT = 16 * FIELD_MAX  # the csv module's field_size_limit while a KB CSV is read

_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive (xlsx, docx, zip ...)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
    (b"SQLite format 3", "an SQLite database"),
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_text_file(path: str | Path) -> str:
    """The text of a data file, for lenient importers. UTF-8 with or without a byte-order mark;
    UTF-16/UTF-32 with a byte-order mark. Bytes that are not UTF-8 are kept as lone surrogates
    (surrogateescape) so the row holding them can be rejected by `text_problem`; a whole-file
    problem (empty, binary, undecodable UTF-16) raises `DataFormatError`."""
    path = Path(path)
    data = path.read_bytes()
    if not data.strip():
        raise DataFormatError(path, "the file is empty")
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise DataFormatError(path, f"a binary file ({what}), not a text file")
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            if encoding != "utf-8":
                try:
                    text = data[len(bom) :].decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DataFormatError(
                        path,
                        f"starts with a {encoding.upper()} byte-order mark but is not {encoding.upper()} "
                        f"({exc.reason} at byte {exc.start + len(bom)}): save it as UTF-8",
                    ) from None
                if "\x00" in text:
                    raise DataFormatError(path, "a binary file (NUL characters), not a text file")
                return text
            data = data[len(bom) :]
            break
    if b"\x00" in data:
        raise DataFormatError(path, "a binary file (NUL bytes; UTF-16 without a byte-order mark?), not a text file")
    text = data.decode("utf-8", errors="surrogateescape")
    sample = text[:4096]
    bad = sum(1 for c in sample if "\udc80" <= c <= "\udcff")
    if bad > max(16, len(sample) // 4):
        raise DataFormatError(path, "a binary file (mostly bytes that are not UTF-8), not a text file")
    return text


def stream_encoding(path: str | Path, block: int = 1 << 20) -> str | None:
    """The checks of `read_text_file` without holding the file: the encoding to stream `path` with
    ("utf-8-sig": UTF-8 with or without a byte-order mark, undecodable bytes kept as surrogates), or
    None for a UTF-16/UTF-32 file (read it whole with `read_text_file`). The file is scanned once in
    blocks of `block` bytes (empty, binary, NUL bytes); `DataFormatError` as `read_text_file` raises."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(65536)
        for magic, what in _MAGIC:
            if head.startswith(magic):
                raise DataFormatError(path, f"a binary file ({what}), not a text file")
        for bom, encoding in _BOMS:
            if head.startswith(bom) and encoding != "utf-8":
                return None
        data, blank = head, True
        while data:
            if b"\x00" in data:
                raise DataFormatError(
                    path, "a binary file (NUL bytes; UTF-16 without a byte-order mark?), not a text file"
                )
            blank = blank and not data.strip()
            data = f.read(block)
    if blank:
        raise DataFormatError(path, "the file is empty")
    sample = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")[:4096]
    bad = sum(1 for c in sample if "\udc80" <= c <= "\udcff")
    if bad > max(16, len(sample) // 4):
        raise DataFormatError(path, "a binary file (mostly bytes that are not UTF-8), not a text file")
    return "utf-8-sig"


def text_problem(value: object, depth: int = 0) -> str | None:
    """Why a parsed value (a string, or lists/dicts of them) cannot be stored, or None: bytes that
    were not UTF-8 or lone surrogates, NUL characters, a string over FIELD_MAX characters."""
    if depth > 50:
        return "nested too deeply"
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        if m:
            c = m.group()
            if "\udc80" <= c <= "\udcff":
                return f"contains a byte that is not UTF-8 (0x{ord(c) - 0xDC00:02X} at character {m.start()})"
            return f"contains a lone surrogate (U+{ord(c):04X} at character {m.start()}), not valid Unicode"
        if "\x00" in value:
            return "contains a NUL character"
        if len(value) > FIELD_MAX:
            return f"a field is {len(value):,} characters long, the limit is {FIELD_MAX:,}"
        return None
    if isinstance(value, dict):
        value = [x for kv in value.items() for x in kv]
    if isinstance(value, (list, tuple)):
        for v in value:
            why = text_problem(v, depth + 1)
            if why:
                return why
    return None


def _json_array_elements(text: str) -> Iterator[tuple[int, int, str]]:
    """(index, line, source) of each element of a top-level JSON array, found by a flat scan (no
    recursion), so that one malformed or too deeply nested record can be rejected alone. ValueError
    when the document is not a well-bracketed array."""
    m0 = re.compile(r"\s*").match(text)
    pos = m0.end() if m0 else 0
    if not text.startswith("[", pos):
        raise ValueError("expected a JSON list of entities")
    token = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{},]|"', re.S)
    depth, index, start = 0, 0, pos + 1
    line, counted = 1, 0
    for m in token.finditer(text, pos + 1):
        t = m.group()
        if t == '"':
            raise ValueError(f"unterminated string at line {line + text.count(chr(10), counted, m.start())}")
        if depth == 0 and t in ",]":
            chunk = text[start : m.start()]
            if chunk.strip():
                first = start + len(chunk) - len(chunk.lstrip())
                line += text.count("\n", counted, first)
                counted = first
                yield index, line, chunk
                index += 1
            elif t == "," or index:
                raise ValueError(f"empty element at line {line + text.count(chr(10), counted, m.start())}")
            if t == "]":
                if text[m.end() :].strip():
                    raise ValueError("extra data after the list")
                return
            start = m.end()
        elif t in "[{":
            depth += 1
        elif t in "]}":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
    raise ValueError("unterminated list (the file ends inside it)")


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
    rows_read: int = 0  # rows seen so far by `open_kb`'s stream (kept and rejected)

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


def _parse_json(src: str) -> Any:
    """json.loads, with the errors a hostile record can cause turned into a row rejection."""
    bad = _SURROGATE.search(src)  # raw bytes that are not UTF-8: name them, in a string or not
    if bad:
        return ValueError(f"{text_problem(bad.group())} at column {bad.start() + 1}".replace(" at character 0", ""))
    try:
        return json.loads(src)
    except json.JSONDecodeError as exc:
        return ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return ValueError("JSON nested too deeply (over the parser's recursion limit)")


def _official_records(kb_file: Path, text: str) -> list[tuple[object, Any]]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        # one bad record need not sink the file: split the list flatly and parse record by record
        try:
            return [(f"record {i} (line {ln})", _parse_json(src)) for i, ln, src in _json_array_elements(text)]
        except ValueError as why:
            if isinstance(exc, json.JSONDecodeError):
                raise DataFormatError(kb_file, f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
            raise DataFormatError(kb_file, f"invalid JSON ({why})") from None
    if not isinstance(data, list):
        raise DataFormatError(kb_file, "expected a JSON list of entities")
    return list(enumerate(data))


def _csv_header(path: Path, reader) -> list[str]:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataFormatError(path, f"unreadable CSV header ({exc})") from None
    names = [h.strip() for h in header] if header else []
    if "id" not in names or "name" not in names:
        raise DataFormatError(path, f"CSV header must contain 'id' and 'name' (found {names[:20]})")
    bad_header = text_problem(names)
    if bad_header:
        raise DataFormatError(path, f"CSV header {bad_header}")
    return names


def _csv_rows(path: Path, source: Callable[[], IO[str]]) -> Iterator[tuple[object, Any]]:
    """The CSV's rows, read from `source()` (a text stream opened with newline="") one by one. The
    header is checked before the first row is asked for (a bad header raises at once)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    old = csv.field_size_limit()
    csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with source() as f:
            _csv_header(path, csv.reader(f, delimiter=delimiter))
    finally:
        csv.field_size_limit(old)

    def rows() -> Iterator[tuple[object, Any]]:
        old = csv.field_size_limit()
        csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            with source() as f:
                reader = csv.reader(f, delimiter=delimiter)
                names = _csv_header(path, reader)
                while True:
                    first = reader.line_num + 1
                    try:
                        row = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as exc:
                        yield f"line {first}", ValueError(f"unreadable CSV row ({exc})")
                        if reader.line_num < first:  # no progress: stop rather than loop
                            break
                        continue
                    if not any(c.strip() for c in row):
                        continue
                    yield f"line {first}", dict(zip(names, row))
        finally:
            csv.field_size_limit(old)

    return rows()


def _jsonl_rows(lines: Iterable[str]) -> Iterator[tuple[object, Any]]:
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield f"line {n}", _parse_json(line)


def _text_source(path: Path, *, newline: str) -> Callable[[], IO[str]]:
    """A function opening `path` as text for streaming (bounded memory), after the whole-file checks
    of `read_text_file`; a UTF-16/UTF-32 file is decoded whole first."""
    encoding = stream_encoding(path)
    if encoding is None:
        text = read_text_file(path)
        return lambda: io.StringIO(text, newline=newline)
    return lambda: path.open(encoding=encoding, errors="surrogateescape", newline=newline)


def _read_qid2id(path: Path) -> dict:
    try:
        first = read_text_file(path).lstrip().split("\n", 1)[0]
        data = json.loads(first)
    except (json.JSONDecodeError, RecursionError, OSError) as exc:
        raise DataFormatError(path, f"unreadable ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or text_problem(list(data)):
        raise DataFormatError(path, "expected a JSON object mapping QIDs to ids on its first line")
    return data


def _raw_records(path: Path, fmt: str) -> tuple[Iterable[tuple[object, Any]], Path, dict | None]:
    """-> ([(row label, record dict or the exception rejecting it)], image base folder, qid2id or None).
    JSONL and CSV rows are streamed from the file (bounded memory); kb_entity.json is read whole."""
    if fmt == "official":
        folder = path if path.is_dir() else path.parent
        kb_file = folder / "kb_entity.json" if path.is_dir() else path
        rows = _official_records(kb_file, read_text_file(kb_file))
        qid2id = _read_qid2id(folder / "qid2id.json") if (folder / "qid2id.json").exists() else None
        return rows, folder / "kb_image", qid2id
    if fmt == "jsonl":
        source = _text_source(path, newline="\n")  # lines end at "\n" only, as str.split("\n")

        def lines() -> Iterator[tuple[object, Any]]:
            with source() as f:
                yield from _jsonl_rows(f)

        return lines(), path.parent, None
    if fmt == "csv":
        return _csv_rows(path, _text_source(path, newline="")), path.parent, None
    raise ValueError(f"unknown KB format {fmt!r}")


def _row_id(rec: Any) -> str | int | None:
    """The record's id for the report, only when it is a plain, printable value."""
    v = rec.get("id") if isinstance(rec, dict) else None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        return None
    if isinstance(v, str) and (text_problem(v) or len(v) > 200):
        return None
    return v


def detect_format(path: Path) -> str:
    if path.is_dir() and not (path / "kb_entity.json").exists() and (path / "kb.jsonl").is_file():
        return "jsonl"  # the project's JSONL dataset folder
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


def open_kb(
    path: str | Path, format: str = "auto", check_images: bool = True, confine_images: bool = True
) -> tuple[Iterator[Entity], KBReport]:
    """`load_kb` as a stream: (the entities one by one, the report they fill as they come). The
    whole-file checks run here (`DataFormatError` at once); JSONL and CSV rows are then read from
    the file as the iterator is consumed, so memory stays bounded by a row, not the file.
    `report.rows_read` counts the rows seen so far (kept and rejected)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"KB file not found: {path}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in ("official", "jsonl", "csv"):
        raise ValueError(f"format must be 'auto', 'official', 'jsonl' or 'csv', got {format!r}")
    if fmt != "official" and path.is_dir():
        if fmt == "jsonl" and (path / "kb.jsonl").is_file():
            path = path / "kb.jsonl"
        else:
            raise DataFormatError(path, f"is a folder: a {fmt} KB is one file")
    rows, img_base, qid2id = _raw_records(path, fmt)
    report = KBReport(path=str(path), format=fmt)
    return _entities(rows, report, fmt, img_base, qid2id, check_images, confine_images), report


def load_kb(
    path: str | Path, format: str = "auto", check_images: bool = True, confine_images: bool = True
) -> tuple[KnowledgeBase, KBReport]:
    """Read a KB file leniently. Raises `DataFormatError` only when the file as a whole is unreadable.
    confine_images (default): a row naming an image outside the KB file's folder is rejected."""
    entities, report = open_kb(path, format, check_images, confine_images)
    return KnowledgeBase(list(entities)), report


def _entities(
    rows: Iterable[tuple[object, Any]],
    report: KBReport,
    fmt: str,
    img_base: Path,
    qid2id: dict | None,
    check_images: bool,
    confine_images: bool,
) -> Iterator[Entity]:
    inv = {v: k for k, v in qid2id.items()} if qid2id else None
    seen: set[str] = set()
    for row, rec in rows:
        report.rows_read += 1
        try:
            if isinstance(rec, Exception):
                raise rec
            if not isinstance(rec, dict):
                raise ValueError("record is not an object")
            for key, value in rec.items():
                why = text_problem(value) or text_problem(key)
                if why:
                    raise ValueError(f"field {str(key)[:40]!r} {why}")
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
            entity = Entity(id=eid, name=name.strip(), text=_text(rec), aliases=aliases, images=resolved)
            seen.add(eid)
            report.loaded += 1
        except (ValueError, TypeError, OSError, RecursionError) as exc:
            report.rejected.append({"row": row, "id": _row_id(rec), "reason": str(exc)})
            continue
        yield entity
