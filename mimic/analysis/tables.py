"""Error-analysis records and run comparisons as typed pandas tables, and their CSV files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mimic.analysis.records import SCORES, UNITS, MentionAnalysis
from mimic.atomic import write_text_atomic

RECORD_COLUMNS = [
    "mention_id",
    "dataset",
    "mention",
    "sentence",
    "has_image",
    "gold",
    "predicted",
    "gold_rank",
    "label",
    "outranked_by",
    "retrieved",
    "nil_predicted",
    "shortlist_size",
    "top_entity",
    "top_S",
    "top_S_T",
    "top_S_V",
    "top_S_C",
    "gold_S",
    "gold_S_T",
    "gold_S_V",
    "gold_S_C",
    "margin",
    "unit_rank_S_T",
    "unit_rank_S_V",
    "unit_rank_S_C",
    "model_version",
]


def records_table(records: Sequence[MentionAnalysis]):
    """One row per mention, typed for sorting: ranks are nullable integers, scores floats (NaN where
    not applicable), outranked_by a comma-separated string. margin is the top candidate's margin."""

    rows = []
    for r in records:
        top, gs = r.top or {}, r.gold_scores or {}
        rows.append(
            {
                "mention_id": r.mention_id,
                "dataset": r.dataset,
                "mention": r.mention,
                "sentence": r.sentence,
                "has_image": r.has_image,
                "gold": r.gold,
                "predicted": r.predicted,
                "gold_rank": r.gold_rank,
                "label": r.label,
                "outranked_by": ", ".join(r.outranked_by),
                "retrieved": r.retrieved,
                "nil_predicted": r.nil_predicted,
                "shortlist_size": r.shortlist_size,
                "top_entity": top.get("entity_id"),
                **{f"top_{k}": top.get(k) for k in SCORES},
                **{f"gold_{k}": gs.get(k) for k in SCORES},
                "margin": top.get("margin"),
                **{f"unit_rank_{u}": r.unit_ranks.get(u) for u in UNITS},
                "model_version": r.model_version,
            }
        )
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    return _typed(
        df,
        ints=["gold_rank", "shortlist_size"] + [f"unit_rank_{u}" for u in UNITS],
        floats=[f"{p}_{k}" for p in ("top", "gold") for k in SCORES] + ["margin"],
    )


def comparison_table(comparison: dict):
    """The side-by-side rows of `compare` plus the one-sided mentions (status only_in_a / only_in_b)."""

    cols = ["dataset", "mention_id", "mention", "sentence", "has_image", "gold", "status"] + [
        f"{c}_{s}"
        for s in ("a", "b")
        for c in ("label", "predicted", "gold_rank", "top", "top_S", "gold_S", "outranked_by")
    ]
    one_sided = [
        {"dataset": o["dataset"], "mention_id": o["mention_id"], "status": f"only_in_{s}", f"label_{s}": o["label"]}
        for s in ("a", "b")
        for o in comparison[f"only_in_{s}"]
    ]
    df = pd.DataFrame(list(comparison["rows"]) + one_sided, columns=cols)
    return _typed(df, ints=["gold_rank_a", "gold_rank_b"], floats=["top_S_a", "top_S_b", "gold_S_a", "gold_S_b"])


def _typed(df, ints: list[str], floats: list[str]):
    for c in ints:
        df[c] = df[c].astype("Int64")  # nullable: an unscored gold sorts last, not as 0
    for c in floats:
        df[c] = df[c].astype("float64")
    return df


def to_csv(df, path: str | Path) -> Path:
    """Write a table as CSV (UTF-8, no index) atomically: readers never see half a file."""
    write_text_atomic(path, df.to_csv(index=False))
    return Path(path)
