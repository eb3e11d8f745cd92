"""Reading a corpus for `import_mentions`, row by row, in any of the four layouts annotators bring,
and unpacking the images zip that comes with it.

Formats (`read_corpus`; "auto" picks by the file):
  jsonl     one mention object per line (uid/id, source, sentence, mention, start, end, image,
            candidates, model_version), the store's own pre-annotation format
  csv       the same fields as columns (a header row naming them; `candidates` a JSON list)
  official  the MIMIC "cleaned" release: a split file (a JSON list of {id, sentence, mentions,
            imgPath, ...}) or the release folder (every <PREFIX>_<split>.json in it, images in
            mention_image/)
  melbench  the raw MELBench file: a JSON object keyed by sample id whose values give `mentions`
            as a string or a list (one mention per entry: uid "<id>-<k>")

Each row comes back as (number, where, record or the error that makes it unreadable): `where`
("line 7", "WIKIMEL_test.json record 3", "sample 46351 mention 2") is what the rejection report
names. Gold answers in the files are not imported: a project's corpus is what annotators decide.

Images: `ImageFolder` finds a row's image by its relative name inside one folder (the corpus
file's folder, or the unpacked zip), by its bare file name when that is unique, and for official
rows by the release's alternative names; a name leading out of the folder is refused, never
followed. `unpack_images_zip` extracts only image files, each under the size limit, refusing
absolute names, `..`, symlinks and zip bombs (the bytes written are counted, not the header's claim).
"""

from __future__ import annotations

import csv
import io
import json
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from mimic.data.kb_files import UnsafeImagePath, confined_path, read_text_file, text_problem
from mimic.data.schema import DataFormatError

from .errors import InvalidInput

FORMATS = ("auto", "jsonl", "csv", "official", "melbench")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
_SURROGATES = re.compile("[\ud800-\udfff]")  # bytes read_text_file could not decode as UTF-8
_SPLIT_FILE = re.compile(r".+_(train|dev|valid|val|test)\.json$", re.IGNORECASE)

Row = tuple[int, str, Any]  # (number for ordering, where, record dict or InvalidInput)


def _text(path: Path) -> str:
    if not path.is_file():
        raise InvalidInput(f"file not found: {path.name}", "path")
    try:
        return read_text_file(path)
    except DataFormatError as e:
        raise InvalidInput(str(e).replace(str(path), path.name), "path") from None
    except OSError as e:
        raise InvalidInput(f"{path.name}: cannot read ({e.strerror or e})", "path") from None


def detect_format(path: Path) -> str:
    """The layout of `path`: a folder is the official release; .jsonl/.csv by suffix; a .json file
    holding a list is an official split file, one holding an object the MELBench raw file."""
    if path.is_dir():
        return "official"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json":
        head = _text(path)[:4096].lstrip()
        if head.startswith("["):
            return "official"
        if head.startswith("{"):
            return "melbench"
    raise InvalidInput(
        f"cannot tell the format of {path.name}: expected .jsonl, .csv, an official split file (.json list), "
        "a MELBench file (.json object) or an official release folder",
        "format",
    )


def read_corpus(path: str | Path, fmt: str = "auto") -> tuple[str, list[Row], Path]:
    """(format, rows, the folder images are named relative to). A whole-file problem (missing,
    empty, binary, not JSON at all) raises InvalidInput; a bad row is returned as its error."""
    if fmt not in FORMATS:
        raise InvalidInput(f"must be one of {', '.join(FORMATS)}; got {fmt!r:.40}", "format")
    path = Path(path)
    if not path.exists():
        raise InvalidInput(f"file not found: {path.name}", "path")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "jsonl":
        return fmt, read_jsonl_rows(path), path.parent
    if fmt == "csv":
        return fmt, _csv_rows(path), path.parent
    if fmt == "official":
        return fmt, *_official_rows(path)
    return fmt, _melbench_rows(path), path.parent


def read_jsonl_rows(path: Path) -> list[Row]:
    """(line number, "line N", parsed object) for each non-blank line; an unparsable line (invalid
    JSON, nested too deeply, bytes that are not UTF-8) gives an InvalidInput naming it in place of
    the object. UTF-8 with or without a byte-order mark and UTF-16/32 with one are read."""
    text = _text(path)
    out: list[Row] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        bad = _SURROGATES.search(line)
        if bad:
            out.append(
                (
                    lineno,
                    where,
                    InvalidInput(f"{path.name}: {text_problem(bad.group())}, column {bad.start() + 1}", where),
                )
            )
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            out.append((lineno, where, InvalidInput(f"{path.name}: not valid JSON ({e})", where)))
            continue
        except RecursionError:
            out.append((lineno, where, InvalidInput(f"{path.name}: JSON nested too deeply", where)))
            continue
        why = text_problem(rec)
        out.append((lineno, where, InvalidInput(f"{path.name}: {why}", where) if why else rec))
    return out


def _int_cell(value: str, name: str, where: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"expected an integer, got {value!r:.40}", f"{where}.{name}") from None


def _csv_rows(path: Path) -> list[Row]:
    text = _text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise InvalidInput(f"{path.name}: the file is empty", "path") from None
    except csv.Error as e:
        raise InvalidInput(f"{path.name}: not a readable CSV header ({e})", "path") from None
    if "sentence" not in header:
        raise InvalidInput(f"{path.name}: the header row must name a 'sentence' column (got {header[:8]})", "path")
    out: list[Row] = []
    while True:
        lineno = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            out.append((lineno, f"line {lineno}", InvalidInput(f"{path.name}: not a readable CSV row ({e})")))
            continue
        where = f"line {lineno}"
        if not any(c.strip() for c in cells):
            continue
        try:
            if len(cells) != len(header):
                raise InvalidInput(f"has {len(cells)} cells, the header names {len(header)} columns", where)
            raw = dict(zip(header, cells))
            why = text_problem(raw)
            if why:
                raise InvalidInput(f"{path.name}: {why}", where)
            rec: dict[str, Any] = {
                k: v
                for k, v in raw.items()
                if (v != "" or k in ("sentence", "mention")) and k not in ("start", "end", "candidates")
            }
            if rec.get("mention") == "" and raw.get("start", "").strip():
                del rec["mention"]  # the span gives it
            rec["start"], rec["end"] = (
                _int_cell(raw.get("start", ""), "start", where),
                _int_cell(raw.get("end", ""), "end", where),
            )
            if raw.get("candidates", "").strip():
                try:
                    rec["candidates"] = json.loads(raw["candidates"])
                except json.JSONDecodeError as e:
                    raise InvalidInput(f"not a JSON list ({e})", f"{where}.candidates") from None
            out.append((lineno, where, rec))
        except InvalidInput as e:
            out.append((lineno, where, e))
    return out


def _load_json(path: Path) -> Any:
    text = _text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{path.name}: not valid JSON ({e})", "path") from None
    except RecursionError:
        raise InvalidInput(f"{path.name}: JSON nested too deeply", "path") from None


def official_image_names(img_path: str) -> list[str]:
    """File names to try for an official mention image: the literal name, then the stem + '.jpg',
    then the release's own first-dot cut (see mimic/data/official.py)."""
    base = img_path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    return list(dict.fromkeys(c for c in (base, stem + ".jpg", base.split(".")[0] + ".jpg") if c))


def _official_rows(path: Path) -> tuple[list[Row], Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if _SPLIT_FILE.fullmatch(p.name))
        if not files:
            raise InvalidInput(f"{path.name}: no split files (<PREFIX>_train/dev/test.json) in the folder", "path")
        images = next((path / d for d in ("mention_image", "mention_images") if (path / d).is_dir()), path)
    else:
        files, images = [path], path.parent
    out: list[Row] = []
    n = 0
    for f in files:
        raw = _load_json(f)
        if not isinstance(raw, list):
            raise InvalidInput(f"{f.name}: expected a JSON list of mentions, got {type(raw).__name__}", "path")
        for i, obj in enumerate(raw):
            n += 1
            where = f"{f.name} record {i}"
            if not isinstance(obj, dict):
                out.append((n, where, InvalidInput(f"expected a JSON object, got {type(obj).__name__}", where)))
                continue
            sid = obj.get("id")
            where = f"{f.name} record {i}" + (f" (id {sid})" if isinstance(sid, (str, int)) else "")
            why = text_problem(obj)
            if why:
                out.append((n, where, InvalidInput(why, where)))
                continue
            mention = obj.get("mentions", obj.get("mention"))
            rec: dict[str, Any] = {
                "uid": str(sid) if isinstance(sid, (str, int)) and str(sid).strip() else f"{f.stem}-{i}",
                "source": f.name,
                "sentence": obj.get("sentence"),
                "mention": unquote(mention) if isinstance(mention, str) else mention,
            }
            img = obj.get("imgPath")
            if isinstance(img, str) and img.strip():
                rec["image"] = img
                rec["image_names"] = official_image_names(img)
            out.append((n, where, rec))
    return out, images


def _melbench_rows(path: Path) -> list[Row]:
    raw = _load_json(path)
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path.name}: expected a JSON object keyed by sample id, got {type(raw).__name__}", "path")
    out: list[Row] = []
    n = 0
    for key, obj in raw.items():
        n += 1
        where = f"sample {key}"
        if not isinstance(obj, dict):
            out.append((n, where, InvalidInput(f"expected a JSON object, got {type(obj).__name__}", where)))
            continue
        sid = obj.get("id", key)
        sid = str(sid) if isinstance(sid, (str, int)) and str(sid).strip() else str(key)
        why = text_problem(obj)
        if why:
            out.append((n, where, InvalidInput(why, where)))
            continue
        mentions = obj.get("mentions")
        mentions = [mentions] if isinstance(mentions, str) else mentions
        if not isinstance(mentions, list) or not mentions:
            out.append((n, where, InvalidInput("expected a string or a non-empty list", f"{where}.mentions")))
            continue
        img = obj.get("imgPath") or obj.get("image")
        for k, text in enumerate(mentions):
            w = f"sample {key} mention {k + 1}" if len(mentions) > 1 else where
            rec: dict[str, Any] = {"uid": f"{sid}-{k}", "source": path.name, "sentence": obj.get("sentence")}
            rec["mention"] = text
            if isinstance(img, str) and img.strip():
                rec["image"], rec["image_names"] = img, official_image_names(img)
            out.append((n * 1000 + k, w, rec))
    return out


# -- images ---------------------------------------------------------------------------------------


class ImageFolder:
    """Finds a row's image inside `root` only (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._by_name: dict[str, list[Path]] | None = None

    def _names(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            if self.root.is_dir():
                for p in self.root.rglob("*"):
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                        self._by_name.setdefault(p.name, []).append(p)
        return self._by_name

    def find(self, name: str, alternatives: list[str] | None = None) -> Path:
        """The image file; InvalidInput naming the problem (outside the folder, not there)."""
        try:
            target = confined_path(name, self.root)
        except UnsafeImagePath as e:
            raise InvalidInput(str(e).replace("KB folder", "corpus folder or images zip")) from None
        if target.is_file():
            return target
        for cand in [PurePosixPath(name.replace("\\", "/")).name, *(alternatives or [])]:
            hits = self._names().get(cand, [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise InvalidInput(f"image {name!r:.120}: {len(hits)} files named {cand!r} in the zip, give its path")
        raise InvalidInput(f"image {name!r:.120} is not in the images zip or beside the corpus file")


@dataclass
class ZipReport:
    extracted: int = 0
    bytes: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"name", "problem"}


def unpack_images_zip(
    zip_path: str | Path, dest: Path, *, max_file_bytes: int, max_total_bytes: int, max_files: int = 200_000
) -> ZipReport:
    """Extract the image files of `zip_path` into `dest` (see the module docstring for what is
    refused). A file that is not a zip, or a zip over the total limit, raises InvalidInput."""
    report = ZipReport()
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidInput(f"{Path(zip_path).name} is not a readable zip file ({e})", "images") from None
    with z:
        infos = z.infolist()
        if len(infos) > max_files:
            raise InvalidInput(f"the zip holds {len(infos):,} entries, the limit is {max_files:,}", "images")
        root = dest.resolve()
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            parts = PurePosixPath(name.replace("\\", "/")).parts
            problem = None
            if stat.S_ISLNK(mode):
                problem = "a symbolic link (refused)"
            elif not parts or name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
                problem = "an absolute path or '..' (refused)"
            elif PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                problem = "not an image file (by its extension)"
            elif parts[0] == "__MACOSX" or parts[-1].startswith("._"):
                continue  # macOS resource forks: not images
            elif info.file_size > max_file_bytes:
                problem = f"{info.file_size:,} bytes, over the image limit of {max_file_bytes:,}"
            if problem:
                report.skipped.append({"name": name[:200], "problem": problem})
                continue
            target = (root / PurePosixPath(*parts)).resolve()
            if root not in target.parents:
                report.skipped.append({"name": name[:200], "problem": "leads outside the zip's folder (refused)"})
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with z.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 16):
                    written += len(chunk)
                    if written > max_file_bytes or report.bytes + written > max_total_bytes:
                        break
                    out.write(chunk)
            if written > max_file_bytes:
                target.unlink(missing_ok=True)
                report.skipped.append({"name": name[:200], "problem": "inflates past the image limit (refused)"})
                continue
            report.bytes += written
            if report.bytes > max_total_bytes:
                target.unlink(missing_ok=True)
                raise InvalidInput(f"the zip inflates past {max_total_bytes:,} bytes, the limit", "images")
            report.extracted += 1
    return report
