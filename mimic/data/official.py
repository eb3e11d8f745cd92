"""The official MIMIC "cleaned" release: `load_official` / `write_official`.

Layout: `kb_entity.json` (entities sorted by integer id), `qid2id.json` (QID -> position, one
line), `{PREFIX}_{split}.json` (mentions), `kb_image/` and `mention_image/`. The loader validates
what it reads and counts what it drops (nil answers, missing images, mentions not located in
their sentence) in `Dataset.stats`; the writer fills a temporary sibling directory and renames it
into place, so a failure never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from urllib.parse import quote, unquote

from mimic.atomic import atomic_dir
from mimic.data.json_files import read_json, write_json
from mimic.data.json_record import STANDARD_SPLITS, JsonRecord, count_per_split, is_nil, split_order
from mimic.data.mentions import locate_mention
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

log = logging.getLogger(__name__)


#: Split-file prefixes used by the published releases and configs (MIMIC, M3EL, MMoE).
OFFICIAL_PREFIXES = ("WIKIMEL_", "RichpediaMEL_", "wiki_diverse_", "WikiDiverse_")


_MENTION_IMAGE_DIRS = ("mention_image", "mention_images")  # RichpediaMEL ships the plural (MIMIC#2)


def _detect_prefix(root: Path, dataset: str | None) -> str:
    """The split-file prefix (with its trailing '_'), given or detected from the file names."""
    if dataset is not None:
        prefix = dataset if dataset.endswith("_") else dataset + "_"
        if not any(root.glob(f"{_glob_escape(prefix)}*.json")):
            raise DataFormatError(root, f"no split files named {prefix}<split>.json")
        return prefix
    found = [p for p in OFFICIAL_PREFIXES if any((root / f"{p}{s}.json").is_file() for s in STANDARD_SPLITS)]
    if not found:  # a prefix of our own (write_official(prefix=...)): look for *_train.json etc.
        found = sorted(
            {f.name[: -len(f"{s}.json")] for s in STANDARD_SPLITS for f in root.glob(f"*_{s}.json") if f.is_file()}
        )
    if not found:
        raise DataFormatError(
            root,
            f"no split files found (expected e.g. WIKIMEL_train.json; known prefixes: {', '.join(OFFICIAL_PREFIXES)})",
        )
    if len(found) > 1:
        raise DataFormatError(
            root, f"several split-file prefixes found ({', '.join(found)}): pass dataset=<prefix> to choose one"
        )
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
        raise DataFormatError(
            path,
            "does not match the kb_entity.json order (the index must be the "
            f"entity's position when sorted by 'id', 0..N-1): {shown}",
        )
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


def _entity_text(rec: JsonRecord, text_field: str) -> str:
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
    raw = read_json(path)
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of entities, got {type(raw).__name__}")
    available = _listdir(kb_dir)
    rows: list[tuple[int, Entity]] = []
    seen: dict[int, int] = {}
    for i, obj in enumerate(raw):
        rec = JsonRecord(obj, path, i)
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
        rows.append(
            (
                kid,
                Entity(
                    id="", name=name, text=_entity_text(rec, text_field), aliases=rec.str_list("aliases"), images=images
                ),
            )
        )
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


def _load_official_split(
    path: Path, split: str, qid2id: dict[str, int], img_dir: Path, available: set[str], stats: dict
) -> list[Mention]:
    raw = read_json(path)
    if not isinstance(raw, list):
        raise DataFormatError(path, f"expected a JSON list of mentions, got {type(raw).__name__}")
    mentions = []
    for i, obj in enumerate(raw):
        rec = JsonRecord(obj, path, i)
        answer = rec.string("answer")
        if is_nil(answer):  # filter BEFORE the lookup (the official code looks up first, 1.6)
            count_per_split(stats, "nil_dropped", split)
            continue
        if answer not in qid2id:
            raise rec.error(f"unknown entity {answer!r} (not in qid2id.json)", "answer")
        sentence = rec.string("sentence", non_empty=True)
        text = unquote(rec.string("mentions"))
        rec.string("entities", required=False, allow_null=True)  # type check only; unused
        mid = rec.ident("id", required=False)
        img_path = rec.string("imgPath", required=False, default="", allow_null=True) or ""
        image = _resolve_mention_image(img_path, img_dir, available, stats) if img_path.strip() else None
        if img_path.strip() and image is None:
            count_per_split(stats, "missing_mention_images_by_split", split)
        start, end = locate_mention(text, sentence)
        if start is None:
            stats["spans_not_found"] += 1
        mentions.append(
            Mention(
                id=mid if mid is not None else f"{split}-{i}",
                sentence=sentence,
                mention=text,
                answer=answer,
                image=image,
                start=start,
                end=end,
            )
        )
    count_per_split(stats, "mentions", split, len(mentions))
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


def load_official(
    root: str | Path,
    *,
    dataset: str | None = None,
    text_field: str = "auto",
    mention_image_dir: str | Path | None = None,
    kb_image_dir: str | Path = "kb_image",
) -> Dataset:
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
    stats: dict = {
        "missing_entity_images": 0,
        "missing_mention_images": 0,
        "mention_image_renamed": 0,
        "missing_mention_image_examples": [],
        "spans_not_found": 0,
        "nil_dropped": {},
        "mentions": {},
        "missing_mention_images_by_split": {},
    }
    prefix = _detect_prefix(root, dataset)  # cheap, so a wrong directory fails before the big read
    kb_dir = _resolve_dir(root, kb_image_dir, ("kb_image",))
    entities = _load_official_kb(root, text_field, kb_dir, stats)
    qid2id = {e.id: i for i, e in enumerate(entities)}
    img_dir = _resolve_dir(root, mention_image_dir, _MENTION_IMAGE_DIRS)
    available = _listdir(img_dir)
    split_files = {
        f.name[len(prefix) : -len(".json")]: f
        for f in root.glob(f"{_glob_escape(prefix)}*.json")
        if f.is_file() and len(f.name) > len(prefix) + len(".json")
    }
    splits = {
        s: _load_official_split(split_files[s], s, qid2id, img_dir, available, stats) for s in split_order(split_files)
    }
    stats.update(entities=len(entities), prefix=prefix, kb_image_dir=str(kb_dir), mention_image_dir=str(img_dir))
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
    if copy_images or Path(src).absolute().is_relative_to(replaced_root):
        shutil.copyfile(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


def write_official(
    dataset: Dataset,
    root: str | Path,
    *,
    prefix: str = "WIKIMEL",
    text_field: str = "attr",
    copy_images: bool = True,
    overwrite: bool = False,
) -> Path:
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
    with atomic_dir(root, overwrite) as tmp:
        (tmp / "kb_image").mkdir()
        (tmp / "mention_image").mkdir()
        kb = []
        for pos, ent in enumerate(dataset.kb):
            names = [f"{pos}_{k}{_extension(src)}" for k, src in enumerate(ent.images)]
            for src, name in zip(ent.images, names):
                _place_image(src, tmp / "kb_image" / name, copy_images, root)
            row = {
                "id": pos,
                "type": "entity",
                "entity_name": quote(ent.name),
                text_field: ent.text,
                "image_list": names,
            }
            if ent.aliases:
                row["aliases"] = list(ent.aliases)
            kb.append(row)
        write_json(tmp / "kb_entity.json", kb)
        write_json(tmp / "qid2id.json", {e.id: i for i, e in enumerate(dataset.kb)}, one_line=True)
        used: dict[str, str] = {}  # source image -> written name, so shared images are copied once
        taken: set[str] = set()
        for split, mentions in dataset.splits.items():
            rows = [
                _official_mention(m, dataset.kb, tmp / "mention_image", used, taken, copy_images, root)
                for m in mentions
            ]
            write_json(tmp / f"{prefix}_{split}.json", rows)
    return root


def _official_mention(
    m: Mention, kb: KnowledgeBase, img_dir: Path, used: dict, taken: set, copy_images: bool, replaced_root: Path
) -> dict:
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
    return {
        "id": m.id,
        "mentions": quote(m.mention),
        "sentence": m.sentence,
        "imgPath": name,
        "answer": m.answer if m.answer is not None else "nil",
        "entities": kb[kb.position(m.answer)].name if m.answer is not None else "nil",
    }
