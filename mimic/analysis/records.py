"""The error-analysis record of one mention (`MentionAnalysis`), its label, and its JSONL file.

Record (`MentionAnalysis`, one JSON object per line in a saved file):

  mention_id, dataset, sentence, mention, has_image   the mention (has_image: it came with an image)
  gold            gold entity id; null for a NIL gold (no entity, or an entity outside this KB)
  retrieved       the gold is among the scored candidates. Full-KB scoring has no retrieval stage,
                  so there it is true for every in-KB gold; false whenever the gold is NIL
  shortlist_size  how many candidates were scored (the KB size for a full-KB dump)
  gold_rank       1-based rank of the gold in the final ranking by S; null if it was not scored
  predicted       the system's answer: the top entity id, or null when it answered NIL
  nil_predicted   the system answered NIL (the linker's `nil` flag, or top S < a threshold)
  candidates      the top k, best first: {entity_id, name, S, S_T, S_V, S_C, rank, margin,
                  retrievers}; a unit score is null where the unit does not apply (no image,
                  zero-shot scoring); margin = S minus the next candidate's S
  gold_scores     {S, S_T, S_V, S_C} of the gold when it was scored, else null
  label           see below
  outranked_by    units ("S_T", "S_V", "S_C") in which the top candidate scored strictly higher
                  than the gold; filled whenever the gold was scored but not ranked first
  unit_ranks      {"S_T", "S_V", "S_C"}: the gold's rank if that unit alone ordered the scored
                  candidates (ties as in the final ranking); null if the unit does not apply to
                  the gold or the gold was not scored
  model_version   which model produced the run (checkpoint fingerprint, file name, any tag)

Labels name the first stage of the pipeline that went wrong (candidate generation, then ranking,
then the NIL decision), so the six labels partition the mentions and each error has one cause:

  correct         gold in the KB, ranked first, linked
  retrieval_miss  gold in the KB but not among the candidates (whatever the NIL decision)
  outranked       gold among the candidates, another candidate ranked first (whatever the NIL
                  decision: linking the top would have been wrong anyway)
  false_nil       gold in the KB and ranked first, but the system answered NIL: exactly the links
                  the NIL threshold cost
  missed_nil      gold is NIL, the system linked an entity
  correct_nil     gold is NIL, the system answered NIL

Ties in a ranking are broken like `mimic.analysis.ranking.ranks_from_scores`: a stable sort by
descending score, so among equal scores the earlier KB position (or earlier candidate) wins.

Saved files hold one record per line (`save_records` / `load_records`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mimic.atomic import write_text_atomic
from mimic.data.json_files import read_jsonl
from mimic.data.schema import DataFormatError

LABELS = ("correct", "retrieval_miss", "outranked", "false_nil", "missed_nil", "correct_nil")
CORRECT_LABELS = frozenset({"correct", "correct_nil"})
UNITS = ("S_T", "S_V", "S_C")
SCORES = ("S",) + UNITS
HITS = (1, 3, 5, 10, 20)
RECALL_KS = (1, 5, 10, 20, 50)
COMPARE_STATUSES = ("fixed", "new_error", "unchanged_correct", "unchanged_error")


@dataclass
class MentionAnalysis:
    """Everything the Analysis view shows about one mention (fields: see the module docstring)."""

    mention_id: str
    dataset: str
    sentence: str
    mention: str
    has_image: bool
    gold: str | None
    retrieved: bool
    shortlist_size: int
    gold_rank: int | None
    predicted: str | None
    nil_predicted: bool
    candidates: list[dict]
    gold_scores: dict | None
    label: str
    outranked_by: list[str] = field(default_factory=list)
    unit_ranks: dict = field(default_factory=lambda: {u: None for u in UNITS})
    model_version: str = ""

    @property
    def top(self) -> dict | None:
        """The top-ranked candidate (even when the system answered NIL), or None."""
        return self.candidates[0] if self.candidates else None

    @property
    def is_correct(self) -> bool:
        return self.label in CORRECT_LABELS

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the mention across runs (used by `compare`)."""
        return (self.dataset, self.mention_id)

    def to_dict(self) -> dict:
        return asdict(self)


def classify(gold: str | None, retrieved: bool, gold_rank: int | None, nil_predicted: bool) -> str:
    """The label of one mention: the first pipeline stage that failed (see the module docstring)."""
    if gold is None:
        return "correct_nil" if nil_predicted else "missed_nil"
    if not retrieved:
        return "retrieval_miss"
    if gold_rank != 1:
        return "outranked"
    return "false_nil" if nil_predicted else "correct"


def outranked_by_units(top: dict | None, gold_scores: dict | None, gold_rank: int | None) -> list[str]:
    """Units that prefer the top candidate over the gold (strictly), when the gold is not first."""
    if top is None or gold_scores is None or gold_rank is None or gold_rank == 1:
        return []
    return [u for u in UNITS if top[u] is not None and gold_scores[u] is not None and top[u] > gold_scores[u]]


def finite_or_none(x) -> float | None:
    """A unit score as a JSON-safe float; NaN (and None) mean "the unit does not apply"."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def save_records(records: Sequence[MentionAnalysis], path: str | Path) -> Path:
    """One JSON object per line (fields of `MentionAnalysis`), written atomically."""
    write_text_atomic(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    return Path(path)


_STR, _INT, _BOOL, _NUM = (str,), (int,), (bool,), (int, float)
_FieldSpec = tuple[tuple[type, ...], bool]
_FIELD_TYPES: dict[str, _FieldSpec] = {  # name -> (accepted types, null allowed)
    "mention_id": (_STR, False),
    "dataset": (_STR, False),
    "sentence": (_STR, False),
    "mention": (_STR, False),
    "has_image": (_BOOL, False),
    "gold": (_STR, True),
    "retrieved": (_BOOL, False),
    "shortlist_size": (_INT, False),
    "gold_rank": (_INT, True),
    "predicted": (_STR, True),
    "nil_predicted": (_BOOL, False),
    "candidates": ((list,), False),
    "gold_scores": ((dict,), True),
    "label": (_STR, False),
    "outranked_by": ((list,), False),
    "unit_ranks": ((dict,), False),
    "model_version": (_STR, False),
}
_CANDIDATE_TYPES: dict[str, _FieldSpec] = {
    "entity_id": (_STR, False),
    "name": (_STR, False),
    "S": (_NUM, False),
    "S_T": (_NUM, True),
    "S_V": (_NUM, True),
    "S_C": (_NUM, True),
    "rank": (_INT, False),
    "margin": (_NUM, True),
}


def _check(value: Any, types: tuple[type, ...], nullable: bool) -> bool:
    if value is None:
        return nullable
    if bool in types:
        return isinstance(value, bool)
    return isinstance(value, types) and not isinstance(value, bool)  # JSON true is not a number


def load_records(path: str | Path) -> list[MentionAnalysis]:
    """Read `save_records` output. A malformed line raises `DataFormatError` (a ValueError) naming
    the file, the line and the field. Unknown fields are ignored (files from newer versions load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file not found: {path}")
    return [_parse_record(obj, path, lineno) for lineno, obj in read_jsonl(path)]


def _parse_record(obj: dict, path: Path, lineno: int) -> MentionAnalysis:
    def err(msg, fld=None):
        return DataFormatError(path, msg, record=f"line {lineno}", field_name=fld)

    for name, (types, nullable) in _FIELD_TYPES.items():
        if name not in obj:
            raise err("missing field", name)
        if not _check(obj[name], types, nullable):
            raise err(
                f"expected {' or '.join(t.__name__ for t in types)}{' or null' if nullable else ''}, "
                f"got {json.dumps(obj[name])[:40]}",
                name,
            )
    if obj["label"] not in LABELS:
        raise err(f"unknown label {obj['label']!r} (known: {', '.join(LABELS)})", "label")
    for i, c in enumerate(obj["candidates"]):
        if not isinstance(c, dict):
            raise err("expected an object", f"candidates[{i}]")
        for name, (types, nullable) in _CANDIDATE_TYPES.items():
            if name not in c or not _check(c[name], types, nullable):
                raise err("missing or of the wrong type", f"candidates[{i}].{name}")
    if obj["gold_scores"] is not None:
        for k in SCORES:
            if not _check(obj["gold_scores"].get(k), _NUM, k != "S"):
                raise err("missing or not a number", f"gold_scores.{k}")
    for u in obj["outranked_by"]:
        if u not in UNITS:
            raise err(f"unknown unit {u!r} (known: {', '.join(UNITS)})", "outranked_by")
    for u in UNITS:
        if not _check(obj["unit_ranks"].get(u), _INT, True):
            raise err("expected an integer or null", f"unit_ranks.{u}")
    # The label is derived, so it must agree with the facts it is derived from.
    expected = classify(obj["gold"], obj["retrieved"], obj["gold_rank"], obj["nil_predicted"])
    if obj["label"] != expected:
        raise err(
            f"label {obj['label']!r} contradicts gold/retrieved/gold_rank/nil_predicted (they give {expected!r})",
            "label",
        )
    kw = {f.name: obj[f.name] for f in fields(MentionAnalysis)}
    kw["candidates"] = [{**c, "retrievers": list(c.get("retrievers") or [])} for c in obj["candidates"]]
    kw["unit_ranks"] = {u: obj["unit_ranks"].get(u) for u in UNITS}
    return MentionAnalysis(**kw)
