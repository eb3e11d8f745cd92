"""The raw MELBench annotation file (one JSON dict keyed by sample id): `load_melbench`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mimic.data.json_files import read_json
from mimic.data.json_record import JsonRecord, count_per_split, is_nil, split_order
from mimic.data.mentions import locate_mention
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention


def melbench_split(sample_id: int) -> str:
    """The project's split rule: id % 10 in 0..6 → train, 7 → dev, 8..9 → test."""
    r = sample_id % 10
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


def load_melbench(path: str | Path, *, split_rule: str | Callable[[int], str] = "mod10") -> Dataset:
    """Load a raw MELBench annotation file (a JSON dict keyed by sample id).

    Splits follow `split_rule`: "mod10" (see `melbench_split`) or a callable from the integer
    sample id to a split name. The KB is every distinct gold QID, sorted by numeric QID, named
    after its first-seen name (other names become aliases), with empty text. NIL answers are
    dropped and counted.
    """
    path = Path(path)
    split_of: Callable[[int], str]
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
        sid = rec.ident("id")
        try:
            split = split_of(int(sid))
        except ValueError as e:
            raise rec.error(f"expected an integer id, got {sid!r}", "id") from e
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
