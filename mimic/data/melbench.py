"""The raw MELBench annotation files (one JSON dict keyed by sample id): `load_melbench`.

Every file of the benchmark's release has the same shape: a JSON object whose values carry `id`,
`sentence`, `mentions`, `entities` and `answer`. In Wikidata-MEL the last three are parallel lists
(several mentions per sentence); the other files give single strings (one mention per sample).
Both are accepted. A value without `id` takes its dict key as id.

Split rule (`melbench_split`), the same for every file and every run:

* an id made only of ASCII digits (a JSON integer or a string such as "46351") goes by
  `int(id) % 10`;
* any other id (e.g. "WD_123", "abc", "-3") goes by `int(sha256(id.encode("utf-8")).hexdigest()[:8], 16) % 10`;

and the bucket then gives 0..6 → train, 7 → dev, 8..9 → test. Python's built-in `hash()` is never
used: it is randomised per process (PYTHONHASHSEED), so it would change the split between runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mimic.data.json_files import read_json
from mimic.data.json_record import JsonRecord, count_per_split, is_nil, split_order
from mimic.data.mentions import locate_mention
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

_DIGITS = re.compile(r"[0-9]+")


def split_bucket(sample_id: int | str) -> int:
    """The bucket 0..9 of a sample id: `int(id) % 10` for digit-only ids, else a SHA-256 prefix % 10."""
    if isinstance(sample_id, int) and not isinstance(sample_id, bool) and sample_id >= 0:
        return sample_id % 10
    sid = str(sample_id)
    if _DIGITS.fullmatch(sid):
        return int(sid) % 10
    return int(hashlib.sha256(sid.encode("utf-8")).hexdigest()[:8], 16) % 10


def melbench_split(sample_id: int | str) -> str:
    """The project's split rule: bucket (see `split_bucket`) 0..6 → train, 7 → dev, 8..9 → test."""
    r = split_bucket(sample_id)
    return "train" if r <= 6 else "dev" if r == 7 else "test"


def _parallel(rec: JsonRecord, keys: tuple[str, ...]) -> list[tuple[str, ...]]:
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


def load_melbench(path: str | Path, *, split_rule: str | Callable[[str], str] = "mod10") -> Dataset:
    """Load a raw MELBench annotation file (a JSON dict keyed by sample id).

    Splits follow `split_rule`: "mod10" (see `melbench_split`; integer ids by `id % 10`, other ids
    by a stable SHA-256 bucket) or a callable from the sample id (as a string) to a split name.
    The KB is every distinct gold QID, sorted by numeric QID, named after its first-seen name
    (other names become aliases), with empty text. NIL answers are dropped and counted.
    """
    path = Path(path)
    split_of: Callable[[str], str]
    if split_rule == "mod10":
        split_of = melbench_split
    elif callable(split_rule):
        split_of = split_rule
    else:
        raise ValueError(f"split_rule must be 'mod10' or a callable, got {split_rule!r}")
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataFormatError(path, f"expected a JSON object keyed by sample id, got {type(raw).__name__}")
    stats: dict = {"nil_dropped": {}, "mentions": {}, "spans_not_found": 0, "sentences": len(raw)}
    names: dict[str, list[str]] = {}
    splits: dict[str, list[Mention]] = {}
    for key, obj in raw.items():
        rec = JsonRecord(obj, path, key)
        sid = rec.ident("id", required=False)
        if sid is None:
            sid = str(key)
        if not sid.strip():
            raise rec.error("must be a non-empty id", "id")
        split = split_of(sid)
        if not isinstance(split, str) or not split:
            raise rec.error(f"split_rule returned {split!r} for id {sid!r}, not a split name", "id")
        sentence = rec.string("sentence", non_empty=True)
        for k, (text, name, answer) in enumerate(_parallel(rec, ("mentions", "entities", "answer"))):
            if is_nil(answer):
                count_per_split(stats, "nil_dropped", split)
                continue
            if not name.strip():
                raise rec.error(f"item {k}: empty entity name", "entities")
            known = names.setdefault(answer, [name])
            if name not in known:
                known.append(name)  # later spellings become aliases
            start, end = locate_mention(text, sentence)
            stats["spans_not_found"] += start is None
            splits.setdefault(split, []).append(
                Mention(id=f"{sid}-{k}", sentence=sentence, mention=text, answer=answer, start=start, end=end)
            )
    entities = [Entity(id=q, name=n[0], text="", aliases=n[1:]) for q, n in sorted(names.items(), key=_qid_key)]
    splits = {s: splits[s] for s in split_order(splits)}
    stats["mentions"] = {s: len(m) for s, m in splits.items()}
    stats["entities"] = len(entities)
    return Dataset(KnowledgeBase(entities), splits, name=path.stem, stats=stats)


def _qid_key(item: tuple[str, Any]) -> tuple[int, int, str]:
    """Sort QIDs numerically (Q2 < Q10); anything not shaped like Q<digits> goes last, by string."""
    qid = item[0]
    if len(qid) > 1 and qid[0] in "Qq" and qid[1:].isdigit():
        return 0, int(qid[1:]), qid
    return 1, 0, qid
