"""Readers and writers for the three on-disk dataset formats.

* The official MIMIC "cleaned" release (`kb_entity.json`, `qid2id.json`, `{PREFIX}_{split}.json`,
  `kb_image/`, `mention_image/`): `load_official` / `write_official`.
* The raw MELBench annotation file (one JSON dict keyed by sample id): `load_melbench`.
* The project's own JSONL layout (`kb.jsonl` + one `<split>.jsonl` per split):
  `load_jsonl_dataset` / `write_jsonl_dataset`.

`load_dataset` picks the right loader from what is on disk.

Every loader validates what it reads and raises `DataFormatError` naming the file, the record and
the field, never a bare KeyError/TypeError. What a loader drops or cannot find (nil answers, missing
images, mentions not located in their sentence) is counted in `Dataset.stats`, not hidden.
Every writer is atomic: it fills a temporary sibling directory and renames it into place, so a
failure never leaves a half-written dataset behind.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, unquote

from mimic.atomic import atomic_dir as _atomic_dir
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

__all__ = [
    "OFFICIAL_PREFIXES", "load_official", "write_official", "load_melbench", "melbench_split",
    "load_jsonl_dataset", "write_jsonl_dataset", "load_dataset", "locate_mention",
]

log = logging.getLogger(__name__)

#: Split-file prefixes used by the published releases and configs (MIMIC, M3EL, MMoE).
OFFICIAL_PREFIXES = ("WIKIMEL_", "RichpediaMEL_", "wiki_diverse_", "WikiDiverse_")
_STANDARD_SPLITS = ("train", "dev", "test")
_MENTION_IMAGE_DIRS = ("mention_image", "mention_images")  # RichpediaMEL ships the plural (MIMIC#2)
_TEXT_SYNONYMS = ("text", "description", "desc", "attr")   # accepted in kb.jsonl, first wins


# ------------------------------------------------------------------------------------------------
# Small shared helpers
# ------------------------------------------------------------------------------------------------

def _is_nil(answer: Any) -> bool:
    """True for the NIL marker ('nil' in any case) and, where allowed, JSON null."""
    return answer is None or (isinstance(answer, str) and answer.strip().lower() == "nil")


def locate_mention(mention: str, sentence: str) -> tuple[int | None, int | None]:
    """Character span of the first occurrence of `mention` in `sentence` (end exclusive).

    Case-sensitive first, then case-insensitive; (None, None) when absent. The case-insensitive
    search uses a regex rather than `lower().find` because lower-casing can change string lengths
    (e.g. 'İ'), which would shift the offsets.
    """
    if not mention:
        return None, None
    i = sentence.find(mention)
    if i >= 0:
        return i, i + len(mention)
    m = re.search(re.escape(mention), sentence, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else (None, None)


def _read_json(path: Path) -> Any:
    """Parse a whole JSON file, turning every failure into a DataFormatError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text: {e}") from e


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; each line must be a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue  # tolerate blank lines (e.g. a trailing newline added by an editor)
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(path, f"invalid JSON: {e.msg} at column {e.colno}",
                                          record=f"line {lineno}") from e
                if not isinstance(obj, dict):
                    raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}",
                                          record=f"line {lineno}")
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text: {e}") from e


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


class _Record:
    """Typed access to one JSON object, raising DataFormatError with file/record/field context."""

    def __init__(self, obj: Any, path: Path, record: Any):
        self.path, self.record = path, record
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", record=record)
        self.obj = obj

    def error(self, message: str, field_name: str | None = None) -> DataFormatError:
        return DataFormatError(self.path, message, record=self.record, field_name=field_name)

    def has(self, key: str) -> bool:
        return key in self.obj

    def get(self, key: str, types: tuple[type, ...], *, required: bool = True, default: Any = None,
            allow_null: bool = False) -> Any:
        """The value of `key`, checked against `types` (bool is never accepted as int)."""
        if key not in self.obj:
            if required:
                raise self.error("missing required field", key)
            return default
        value = self.obj[key]
        if value is None and allow_null:
            return None
        if isinstance(value, bool) or not isinstance(value, types):
            raise self.error(f"expected {_describe(types)}, got {type(value).__name__} {value!r:.60}", key)
        return value

    def string(self, key: str, *, required: bool = True, default: str | None = None,
               non_empty: bool = False, allow_null: bool = False) -> str | None:
        value = self.get(key, (str,), required=required, default=default, allow_null=allow_null)
        if non_empty and (value is None or not value.strip()):
            raise self.error("must be a non-empty string", key)
        return value

    def ident(self, key: str, *, required: bool = True) -> str | None:
        """An identifier given as a string or an integer, returned as a string."""
        value = self.get(key, (str, int), required=required)
        return None if value is None else str(value)

    def str_list(self, key: str, *, required: bool = False) -> list[str]:
        value = self.get(key, (list,), required=required, default=[], allow_null=True) or []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"item {i} must be a string, got {type(item).__name__}", key)
        return list(value)


def _count(stats: dict, key: str, split: str, n: int = 1) -> None:
    stats.setdefault(key, {}).setdefault(split, 0)
    stats[key][split] += n


def _split_order(names) -> list[str]:
    """train/dev/test first (in that order), then any other split alphabetically."""
    names = set(names)
    return [s for s in _STANDARD_SPLITS if s in names] + sorted(names - set(_STANDARD_SPLITS))


# ------------------------------------------------------------------------------------------------
# Atomic directory writes
# ------------------------------------------------------------------------------------------------

def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _write_json(path: Path, obj: Any, *, one_line: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None if one_line else 1)
        f.write("\n")


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------------
# Official MIMIC release
# ------------------------------------------------------------------------------------------------

def _detect_prefix(root: Path, dataset: str | None) -> str:
    """The split-file prefix (with its trailing '_'), given or detected from the file names."""
    if dataset is not None:
        prefix = dataset if dataset.endswith("_") else dataset + "_"
        if not any(root.glob(f"{_glob_escape(prefix)}*.json")):
            raise DataFormatError(root, f"no split files named {prefix}<split>.json")
        return prefix
    found = [p for p in OFFICIAL_PREFIXES
             if any((root / f"{p}{s}.json").is_file() for s in _STANDARD_SPLITS)]
    if not found:  # a prefix of our own (write_official(prefix=...)): look for *_train.json etc.
        found = sorted({f.name[: -len(f"{s}.json")] for s in _STANDARD_SPLITS
                        for f in root.glob(f"*_{s}.json") if f.is_file()})
    if not found:
        raise DataFormatError(root, "no split files found (expected e.g. WIKIMEL_train.json; "
                                    f"known prefixes: {', '.join(OFFICIAL_PREFIXES)})")
    if len(found) > 1:
        raise DataFormatError(root, f"several split-file prefixes found ({', '.join(found)}): "
                                    "pass dataset=<prefix> to choose one")
    return found[0]


def _glob_escape(s: str) -> str:
    """Escape glob metacharacters so a prefix is matched literally."""
    return re.sub(r"([*?\[])", r"[\1]", s)


def _read_qid2id(path: Path) -> dict[str, int]:
    """qid2id.json is one line of JSON (the official code reads it with readline)."""
    if not path.is_file():
        raise DataFormatError(path, "file not found (required next to kb_entity.json)")
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    try:
        qid2id = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON on the first line: {e.msg} at column {e.colno}") from e
    if not isinstance(qid2id, dict):
        raise DataFormatError(path, f"expected a JSON object mapping QID to index, got {type(qid2id).__name__}")
    for qid, idx in qid2id.items():
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise DataFormatError(path, f"index must be an integer, got {idx!r:.40}", record=qid)
    return qid2id


def _check_qid2id(path: Path, qid2id: dict[str, int], n_entities: int) -> list[str]:
    """Return position → QID, asserting qid2id is a bijection onto 0..N−1 (quirk 1.7.5)."""
    problems = []
    if len(qid2id) != n_entities:
        problems.append(f"{len(qid2id)} entries but kb_entity.json has {n_entities} entities")
    by_pos: dict[int, str] = {}
    for qid, idx in qid2id.items():
        if not 0 <= idx < n_entities:
            problems.append(f"{qid} -> {idx} is outside 0..{n_entities - 1}")
        elif idx in by_pos:
            problems.append(f"{by_pos[idx]} and {qid} both map to {idx}")
        else:
            by_pos[idx] = qid
    missing = [i for i in range(n_entities) if i not in by_pos]
    if missing:
        problems.append(f"no QID for positions {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise DataFormatError(path, "does not match the kb_entity.json order (the index must be the "
                                    f"entity's position when sorted by 'id', 0..N-1): {shown}")
    return [by_pos[i] for i in range(n_entities)]


def _listdir(folder: Path) -> set[str]:
    """File names in `folder` (empty when absent): one listing beats 100k `exists` calls."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _resolve_dir(root: Path, given: str | Path | None, candidates: tuple[str, ...]) -> Path:
    """An explicit folder (relative to root or absolute) wins; else the first candidate present."""
    if given is not None:
        return (root / given).absolute()
    for name in candidates:
        if (root / name).is_dir():
            return (root / name).absolute()
    return (root / candidates[0]).absolute()


def _entity_text(rec: _Record, text_field: str) -> str:
    """`attr` (MIMIC release) or `desc` (M3EL/MMoE release); "auto" prefers attr."""
    if text_field == "auto":
        for key in ("attr", "desc"):
            if rec.has(key):
                return rec.string(key, allow_null=True) or ""
        raise rec.error("missing required field (neither 'attr' nor 'desc' present)", "attr")
    return rec.string(text_field, allow_null=True) or ""


def _load_official_kb(root: Path, text_field: str, kb_dir: Path, stats: dict) -> list[Entity]:
    """Entities in the 0..N−1 position order fixed by qid2id.json."""
    path = root / "kb_entity.json"
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of entities, got {type(raw).__name__}")
    available = _listdir(kb_dir)
    rows, seen = [], {}
    for i, obj in enumerate(raw):
        rec = _Record(obj, path, i)
        kid = rec.get("id", (int,))
        if kid in seen:
            raise rec.error(f"duplicate entity id {kid} (also record {seen[kid]})", "id")
        seen[kid] = i
        etype = rec.string("type")
        if etype != "entity":  # the official loader silently reuses the previous record here (1.7.6)
            raise rec.error(f"expected 'entity', got {etype!r}", "type")
        name = unquote(rec.string("entity_name"))
        if not name.strip():
            raise rec.error("empty entity name", "entity_name")
        images = []
        for fname in rec.str_list("image_list"):
            if fname in available:  # names are used literally (no extension games for KB images)
                images.append(str(kb_dir / fname))
            else:
                stats["missing_entity_images"] += 1
        rows.append((kid, Entity(id="", name=name, text=_entity_text(rec, text_field),
                                 aliases=rec.str_list("aliases"), images=images)))
    rows.sort(key=lambda r: r[0])
    qid2id_path = root / "qid2id.json"
    qids = _check_qid2id(qid2id_path, _read_qid2id(qid2id_path), len(rows))
    entities = [e for _, e in rows]
    for qid, ent in zip(qids, entities):
        ent.id = qid
    return entities


def _mention_image_candidates(img_path: str) -> list[str]:
    """File names to try for a mention image, best first.

    The official code forces `basename.split('.')[0] + '.jpg'` (the authors converted mention
    images to jpg), which breaks dotted names (quirk 1.7.4). Try the literal name, then the stem
    (last extension removed) + '.jpg', then the official first-dot cut.
    """
    base = img_path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    out = []
    for cand in (base, stem + ".jpg", base.split(".")[0] + ".jpg"):
        if cand and cand not in out:
            out.append(cand)
    return out


def _load_official_split(path: Path, split: str, qid2id: dict[str, int], img_dir: Path,
                         available: set[str], stats: dict) -> list[Mention]:
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of mentions, got {type(raw).__name__}")
    mentions = []
    for i, obj in enumerate(raw):
        rec = _Record(obj, path, i)
        answer = rec.string("answer")
        if _is_nil(answer):  # filter BEFORE the lookup (the official code looks up first, 1.6)
            _count(stats, "nil_dropped", split)
            continue
        if answer not in qid2id:
            raise rec.error(f"unknown entity {answer!r} (not in qid2id.json)", "answer")
        sentence = rec.string("sentence", non_empty=True)
        text = unquote(rec.string("mentions"))
        rec.string("entities", required=False, allow_null=True)  # type check only; unused
        mid = rec.ident("id", required=False)
        img_path = rec.string("imgPath", required=False, default="", allow_null=True) or ""
        image = _resolve_mention_image(img_path, img_dir, available, stats) if img_path.strip() else None
        start, end = locate_mention(text, sentence)
        if start is None:
            stats["spans_not_found"] += 1
        mentions.append(Mention(id=mid if mid is not None else f"{split}-{i}", sentence=sentence,
                                mention=text, answer=answer, image=image,
                                start=start, end=end))
    _count(stats, "mentions", split, len(mentions))
    return mentions


def _resolve_mention_image(img_path: str, img_dir: Path, available: set[str], stats: dict) -> str | None:
    for k, cand in enumerate(_mention_image_candidates(img_path)):
        if cand in available:
            if k:
                stats["mention_image_renamed"] += 1
            return str(img_dir / cand)
    stats["missing_mention_images"] += 1
    if len(stats["missing_mention_image_examples"]) < 20:
        stats["missing_mention_image_examples"].append(img_path)
    return None


def load_official(root: str | Path, *, dataset: str | None = None, text_field: str = "auto",
                  mention_image_dir: str | Path | None = None, kb_image_dir: str | Path = "kb_image") -> Dataset:
    """Load the official MIMIC "cleaned" release from its directory.

    `dataset` is the split-file prefix (e.g. "WIKIMEL" or "RichpediaMEL_"); by default it is
    detected. `text_field` is "auto" (attr if present, else desc), "attr" or "desc".
    `mention_image_dir` defaults to whichever of mention_image/ and mention_images/ exists.
    The KB keeps the qid2id position order; NIL mentions are dropped and counted; missing images
    are counted in `stats` and left out (image=None, or dropped from an entity's list).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"official dataset directory not found: {root}")
    if text_field not in ("auto", "attr", "desc"):
        raise ValueError(f"text_field must be 'auto', 'attr' or 'desc', got {text_field!r}")
    stats: dict = {"missing_entity_images": 0, "missing_mention_images": 0, "mention_image_renamed": 0,
                   "missing_mention_image_examples": [], "spans_not_found": 0, "nil_dropped": {},
                   "mentions": {}}
    prefix = _detect_prefix(root, dataset)  # cheap, so a wrong directory fails before the big read
    kb_dir = _resolve_dir(root, kb_image_dir, ("kb_image",))
    entities = _load_official_kb(root, text_field, kb_dir, stats)
    qid2id = {e.id: i for i, e in enumerate(entities)}
    img_dir = _resolve_dir(root, mention_image_dir, _MENTION_IMAGE_DIRS)
    available = _listdir(img_dir)
    split_files = {f.name[len(prefix):-len(".json")]: f for f in root.glob(f"{_glob_escape(prefix)}*.json")
                   if f.is_file() and len(f.name) > len(prefix) + len(".json")}
    splits = {s: _load_official_split(split_files[s], s, qid2id, img_dir, available, stats)
              for s in _split_order(split_files)}
    stats.update(entities=len(entities), prefix=prefix, kb_image_dir=str(kb_dir),
                 mention_image_dir=str(img_dir))
    return Dataset(KnowledgeBase(entities), splits, name=prefix.rstrip("_"), stats=stats)


def _safe_name(s: str) -> str:
    """A file-name-safe version of an id: no dots (the official code cuts at the first '.')."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_")[:80] or "m"


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".jpg"


def _place_image(src: str, dst: Path, copy_images: bool, replaced_root: Path) -> None:
    """Copy (or symlink) one image; a missing source is logged and left for the loader to count."""
    if not os.path.isfile(src):
        log.warning("image %s not found; writing its name without a file", src)
        return
    # A symlink into the directory being replaced would dangle once the old copy is deleted.
    if copy_images or _inside(Path(src).absolute(), replaced_root):
        shutil.copyfile(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def write_official(dataset: Dataset, root: str | Path, *, prefix: str = "WIKIMEL", text_field: str = "attr",
                   copy_images: bool = True, overwrite: bool = False) -> Path:
    """Write `dataset` in the official MIMIC layout under `root` (atomically); return `root`.

    Entities get ids 0..N−1 in KB order, so qid2id.json maps each id to its KB position.
    Images are copied under unique names: kb_image/{position}_{k}{ext} and
    mention_image/{mention_id}{ext} (dots removed from the id, the real extension kept; mentions
    that share a source image share the copy). With `copy_images=False` the files are symbolic
    links to the originals instead of copies. Mentions with answer None are written as 'nil'.
    """
    if text_field not in ("attr", "desc"):
        raise ValueError(f"text_field must be 'attr' or 'desc', got {text_field!r}")
    prefix = prefix.rstrip("_")
    if not prefix or "/" in prefix:
        raise ValueError(f"invalid prefix {prefix!r}")
    root = Path(root).absolute()
    with _atomic_dir(root, overwrite) as tmp:
        (tmp / "kb_image").mkdir()
        (tmp / "mention_image").mkdir()
        kb = []
        for pos, ent in enumerate(dataset.kb):
            names = [f"{pos}_{k}{_extension(src)}" for k, src in enumerate(ent.images)]
            for src, name in zip(ent.images, names):
                _place_image(src, tmp / "kb_image" / name, copy_images, root)
            row = {"id": pos, "type": "entity", "entity_name": quote(ent.name), text_field: ent.text,
                   "image_list": names}
            if ent.aliases:
                row["aliases"] = list(ent.aliases)
            kb.append(row)
        _write_json(tmp / "kb_entity.json", kb)
        _write_json(tmp / "qid2id.json", {e.id: i for i, e in enumerate(dataset.kb)}, one_line=True)
        used: dict[str, str] = {}  # source image -> written name, so shared images are copied once
        taken: set[str] = set()
        for split, mentions in dataset.splits.items():
            rows = [_official_mention(m, dataset.kb, tmp / "mention_image", used, taken, copy_images, root)
                    for m in mentions]
            _write_json(tmp / f"{prefix}_{split}.json", rows)
    return root


def _official_mention(m: Mention, kb: KnowledgeBase, img_dir: Path, used: dict, taken: set,
                      copy_images: bool, replaced_root: Path) -> dict:
    if m.answer is not None and m.answer not in kb:
        raise ValueError(f"mention {m.id!r}: answer {m.answer!r} is not in the knowledge base")
    name = ""
    if m.image:
        name = used.get(m.image, "")
        if not name:
            base, ext, n = _safe_name(m.id), _extension(m.image), 1
            name = base + ext
            while name in taken:  # ids that sanitise to the same name
                n += 1
                name = f"{base}_{n}{ext}"
            taken.add(name)
            used[m.image] = name
            _place_image(m.image, img_dir / name, copy_images, replaced_root)
    return {"id": m.id, "mentions": quote(m.mention), "sentence": m.sentence, "imgPath": name,
            "answer": m.answer if m.answer is not None else "nil",
            "entities": kb[kb.position(m.answer)].name if m.answer is not None else "nil"}


# ------------------------------------------------------------------------------------------------
# Raw MELBench
# ------------------------------------------------------------------------------------------------

def melbench_split(sample_id: int) -> str:
    """The project's split rule: id % 10 in 0..6 → train, 7 → dev, 8..9 → test."""
    r = sample_id % 10
    return "train" if r <= 6 else "dev" if r == 7 else "test"


def _parallel(rec: _Record, keys: tuple[str, ...]) -> list[tuple[str, ...]]:
    """`mentions`/`entities`/`answer` as parallel lists (a single string counts as a 1-list)."""
    columns = []
    for key in keys:
        value = rec.get(key, (str, list))
        value = [value] if isinstance(value, str) else value
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise rec.error(f"item {i} must be a string, got {type(item).__name__}", key)
        columns.append(value)
    lengths = {k: len(c) for k, c in zip(keys, columns)}
    if len(set(lengths.values())) > 1:
        raise rec.error(f"parallel lists have different lengths: {lengths}", keys[0])
    return list(zip(*columns))


def load_melbench(path: str | Path, *, split_rule: str | Callable[[int], str] = "mod10") -> Dataset:
    """Load a raw MELBench annotation file (a JSON dict keyed by sample id).

    Splits follow `split_rule`: "mod10" (see `melbench_split`) or a callable from the integer
    sample id to a split name. The KB is every distinct gold QID, sorted by numeric QID, named
    after its first-seen name (other names become aliases), with empty text. NIL answers are
    dropped and counted.
    """
    path = Path(path)
    if split_rule == "mod10":
        split_of = melbench_split
    elif callable(split_rule):
        split_of = split_rule
    else:
        raise ValueError(f"split_rule must be 'mod10' or a callable, got {split_rule!r}")
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataFormatError(path, f"expected a JSON object keyed by sample id, got {type(raw).__name__}")
    stats: dict = {"nil_dropped": {}, "mentions": {}, "spans_not_found": 0, "sentences": len(raw)}
    names: dict[str, list[str]] = {}
    splits: dict[str, list[Mention]] = {}
    for key, obj in raw.items():
        rec = _Record(obj, path, key)
        sid = rec.ident("id")
        try:
            split = split_of(int(sid))
        except ValueError as e:
            raise rec.error(f"expected an integer id, got {sid!r}", "id") from e
        sentence = rec.string("sentence", non_empty=True)
        for k, (text, name, answer) in enumerate(_parallel(rec, ("mentions", "entities", "answer"))):
            if _is_nil(answer):
                _count(stats, "nil_dropped", split)
                continue
            if not name.strip():
                raise rec.error(f"item {k}: empty entity name", "entities")
            known = names.setdefault(answer, [name])
            if name not in known:
                known.append(name)  # later spellings become aliases
            start, end = locate_mention(text, sentence)
            stats["spans_not_found"] += start is None
            splits.setdefault(split, []).append(Mention(id=f"{sid}-{k}", sentence=sentence, mention=text,
                                                        answer=answer, start=start, end=end))
    entities = [Entity(id=q, name=n[0], text="", aliases=n[1:]) for q, n in sorted(names.items(), key=_qid_key)]
    splits = {s: splits[s] for s in _split_order(splits)}
    stats["mentions"] = {s: len(m) for s, m in splits.items()}
    stats["entities"] = len(entities)
    return Dataset(KnowledgeBase(entities), splits, name=path.stem, stats=stats)


def _qid_key(item: tuple[str, Any]) -> tuple[int, int, str]:
    """Sort QIDs numerically (Q2 < Q10); anything not shaped like Q<digits> goes last, by string."""
    qid = item[0]
    if len(qid) > 1 and qid[0] in "Qq" and qid[1:].isdigit():
        return 0, int(qid[1:]), qid
    return 1, 0, qid


# ------------------------------------------------------------------------------------------------
# Project JSONL
# ------------------------------------------------------------------------------------------------

def _resolve_file(root: Path, p: str) -> Path:
    return Path(p) if os.path.isabs(p) else (root / p).absolute()


def _load_jsonl_kb(root: Path, stats: dict) -> list[Entity]:
    path = root / "kb.jsonl"
    entities, seen = [], {}
    for lineno, obj in _iter_jsonl(path):
        rec = _Record(obj, path, f"line {lineno}")
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
        entities.append(Entity(id=eid, name=name, text=rec.string(key, required=False, default="",
                                                                  allow_null=True) or "",
                               aliases=rec.str_list("aliases"), images=images))
    return entities


def _span(rec: _Record, sentence: str, text: str, stats: dict) -> tuple[int | None, int | None]:
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
    for lineno, obj in _iter_jsonl(path):
        rec = _Record(obj, path, f"line {lineno}")
        if not rec.has("answer"):
            raise rec.error("missing required field (use null or 'nil' for no entity)", "answer")
        answer = rec.ident("answer", required=False) if rec.obj["answer"] is not None else None
        if _is_nil(answer):
            _count(stats, "nil_dropped", split)
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
        mentions.append(Mention(id=mid, sentence=sentence, mention=text, answer=answer,
                                image=image or None, start=start, end=end))
    _count(stats, "mentions", split, len(mentions))
    return mentions


def load_jsonl_dataset(root: str | Path) -> Dataset:
    """Load the project's JSONL layout: `kb.jsonl` plus one `<split>.jsonl` per split.

    Relative image paths are resolved against `root`; missing images are counted and left out.
    Mentions whose answer is null or 'nil' are dropped and counted.
    """
    root = Path(root)
    if not (root / "kb.jsonl").is_file():
        raise FileNotFoundError(f"no kb.jsonl in {root}")
    stats: dict = {"missing_entity_images": 0, "missing_mention_images": 0, "spans_not_found": 0,
                   "nil_dropped": {}, "mentions": {}}
    kb = KnowledgeBase(_load_jsonl_kb(root, stats))
    files = {f.stem: f for f in root.glob("*.jsonl") if f.is_file() and f.name != "kb.jsonl"}
    splits = {s: _load_jsonl_split(files[s], root, kb, stats) for s in _split_order(files)}
    stats["entities"] = len(kb)
    return Dataset(kb, splits, name=root.absolute().name, stats=stats)


def _relative_or_absolute(p: str, root: Path) -> str:
    full = Path(p).absolute()
    return full.relative_to(root).as_posix() if _inside(full, root) else str(full)


def _carry_over(paths: list[str], root: Path, tmp: Path) -> None:
    """Images inside a directory being overwritten would vanish with it: bring them along."""
    for p in paths:
        src = Path(p).absolute()
        if _inside(src, root) and src.is_file():
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
    with _atomic_dir(root, overwrite) as tmp:
        if root.exists():
            _carry_over([p for e in dataset.kb for p in e.images]
                        + [m.image for ms in dataset.splits.values() for m in ms if m.image], root, tmp)
        _write_jsonl(tmp / "kb.jsonl", (
            {"id": e.id, "name": e.name, "aliases": list(e.aliases), "text": e.text,
             "images": [_relative_or_absolute(p, root) for p in e.images]} for e in dataset.kb))
        for split, mentions in dataset.splits.items():
            _write_jsonl(tmp / f"{split}.jsonl", (
                {"id": m.id, "sentence": m.sentence, "mention": m.mention, "start": m.start, "end": m.end,
                 "image": _relative_or_absolute(m.image, root) if m.image else None,
                 "answer": m.answer} for m in mentions))
    return root


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------

def _top_level_char(path: Path) -> str:
    """First non-whitespace character of a file: enough to tell a dict from a list without parsing."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def load_dataset(path: str | Path, *, format: str = "auto", **kw) -> Dataset:
    """Load a dataset in any supported format.

    `format` is "official", "jsonl", "melbench" or "auto": a directory with kb_entity.json is the
    official release, a directory with kb.jsonl the project's JSONL, a .json file holding a JSON
    object the raw MELBench file. Extra keyword arguments go to the chosen loader.
    """
    loaders = {"official": load_official, "jsonl": load_jsonl_dataset, "melbench": load_melbench}
    path = Path(path)
    if format != "auto":
        if format not in loaders:
            raise ValueError(f"format must be 'auto' or one of {sorted(loaders)}, got {format!r}")
        return loaders[format](path, **kw)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    if path.is_dir():
        if (path / "kb_entity.json").is_file():
            return load_official(path, **kw)
        if (path / "kb.jsonl").is_file():
            return load_jsonl_dataset(path, **kw)
        raise DataFormatError(path, "unrecognised dataset directory: expected kb_entity.json "
                                    "(official MIMIC release) or kb.jsonl (project JSONL)")
    if path.suffix.lower() == ".json":
        first = _top_level_char(path)
        if first == "{":
            return load_melbench(path, **kw)
        if first == "[":
            raise DataFormatError(path, "a JSON list looks like one official split file: pass the "
                                        "dataset directory (with kb_entity.json) instead")
    raise DataFormatError(path, "unrecognised dataset: expected a directory with kb_entity.json or "
                                "kb.jsonl, or a MELBench .json file holding a JSON object")
