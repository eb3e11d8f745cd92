"""What a list of error-analysis records adds up to: counts and metrics of a run (`summarize`), the
reliability of its top score, filters, and the comparison of two runs on the mentions they share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mimic.analysis.records import COMPARE_STATUSES, HITS, LABELS, RECALL_KS, UNITS, MentionAnalysis


def summarize(records: Sequence[MentionAnalysis], n_bins: int = 10) -> dict:
    """Counts and metrics of a run (JSON-ready; a metric is None where it has no mention to count).

    labels          count per label (all six, zeros included); accuracy = (correct + correct_nil) / all
    ranking         over mentions whose gold is in the KB; the NIL decision is ignored here (it is
                    what the labels measure). H@k and MRR count an unscored gold (retrieval miss) as
                    rank infinity (a miss, reciprocal rank 0). MR is the mean over scored golds only;
                    `unranked` counts the others.
    recall_at_k     share of in-KB golds with rank <= K among the scored candidates. A LinkResult
                    keeps only the final order (by S), not the retrievers' fused order, so K below
                    the shortlist uses the final rank within the shortlist: the recall of the top K
                    candidates shown. "shortlist" is candidate-generation recall proper (the
                    retrieved flag). For a full-KB dump every gold is "retrieved" (recall 1).
    per_unit_accuracy  share of in-KB golds that each unit alone ranks first among the scored
                    candidates ("S", the combined score, equals H@1); per_unit_applicable counts
                    the golds for which the unit applied.
    reliability     see `reliability_table`.
    """
    n = len(records)
    labels = {lab: 0 for lab in LABELS}
    for r in records:
        labels[r.label] += 1
    in_kb = [r for r in records if r.gold is not None]
    ranks = np.array([r.gold_rank if r.gold_rank is not None else np.inf for r in in_kb], dtype=np.float64)
    ranked = ranks[np.isfinite(ranks)]
    ranking = {f"H@{k}": float((ranks <= k).mean()) if len(ranks) else None for k in HITS}
    ranking.update(
        {
            "MRR": float((1.0 / ranks).mean()) if len(ranks) else None,
            "MR": float(ranked.mean()) if len(ranked) else None,
            "count": len(in_kb),
            "ranked": int(len(ranked)),
            "unranked": int(len(ranks) - len(ranked)),
        }
    )
    recall = {str(k): float((ranks <= k).mean()) if len(ranks) else None for k in RECALL_KS}
    recall["shortlist"] = float(np.mean([r.retrieved for r in in_kb])) if in_kb else None
    unit_first = {"S": [r.gold_rank == 1 for r in in_kb]}
    unit_first.update({u: [r.unit_ranks.get(u) == 1 for r in in_kb] for u in UNITS})
    shortlist_sizes = sorted({r.shortlist_size for r in records})
    return {
        "mentions": n,
        "model_versions": sorted({r.model_version for r in records}),
        "datasets": _counts(r.dataset for r in records),
        "with_image": sum(r.has_image for r in records),
        "labels": labels,
        "accuracy": (labels["correct"] + labels["correct_nil"]) / n if n else None,
        "in_kb": len(in_kb),
        "nil_gold": n - len(in_kb),
        "nil_answers": sum(r.nil_predicted for r in records),
        "ranking": ranking,
        "recall_at_k": recall,
        "shortlist_size": {"min": shortlist_sizes[0], "max": shortlist_sizes[-1]} if shortlist_sizes else None,
        "per_unit_accuracy": {k: float(np.mean(v)) if v else None for k, v in unit_first.items()},
        "per_unit_applicable": {u: sum(r.unit_ranks.get(u) is not None for r in in_kb) for u in UNITS},
        "reliability": reliability_table(records, n_bins),
    }


def _counts(values: Iterable) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def reliability_table(records: Sequence[MentionAnalysis], n_bins: int = 10) -> dict:
    """Reliability of the top score: is the top candidate right, as a function of its S?

    Every mention with at least one candidate counts; its top candidate is right iff it is the gold
    (never for a NIL gold), whatever the NIL decision, since this is what a threshold on S acts on.
    Raw S is not a probability, so it is min-max normalised over the run to a confidence in [0, 1]
    (all equal -> 1). Bins are of equal width over that confidence (bin b holds [b/n, (b+1)/n), the
    last one includes 1); empty bins have count 0 and accuracy None. ECE = sum over bins of
    count/total × |accuracy − mean confidence| (so it depends on the normalisation: compare runs
    with it loosely).
    """
    top = [(r.candidates[0]["S"], r.candidates[0]["entity_id"] == r.gold) for r in records if r.candidates]
    table: dict[str, Any] = {
        "n_bins": n_bins,
        "binning": "equal-width over min-max normalised top S",
        "count": len(top),
        "score_min": None,
        "score_max": None,
        "ece": None,
        "bins": [],
    }
    if not top:
        return table
    s = np.array([t[0] for t in top], dtype=np.float64)
    ok = np.array([t[1] for t in top], dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    conf = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    which = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        k = int(m.sum())
        acc = float(ok[m].mean()) if k else None
        mc = float(conf[m].mean()) if k else None
        if acc is not None and mc is not None:  # i.e. the bin is not empty (k > 0)
            ece += k / len(s) * abs(acc - mc)
        table["bins"].append(
            {
                "bin": b,
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "score_lo": lo + (hi - lo) * b / n_bins,
                "score_hi": lo + (hi - lo) * (b + 1) / n_bins,
                "count": k,
                "accuracy": acc,
                "mean_confidence": mc,
                "mean_score": float(s[m].mean()) if k else None,
            }
        )
    table.update(score_min=lo, score_max=hi, ece=ece)
    return table


def _as_set(value, allowed: Sequence[str] | None, what: str) -> set | None:
    if value is None:
        return None
    values = {value} if isinstance(value, str) else set(value)
    if allowed is not None and values - set(allowed):
        raise ValueError(f"unknown {what} {sorted(values - set(allowed))} (known: {', '.join(allowed)})")
    return values


def filter_records(
    records: Sequence[MentionAnalysis],
    label: str | Iterable[str] | None = None,
    dataset: str | Iterable[str] | None = None,
    has_image: bool | None = None,
) -> list[MentionAnalysis]:
    """Records matching every given criterion (None = any); label and dataset take one or several."""
    labels = _as_set(label, LABELS, "label")
    datasets = _as_set(dataset, None, "dataset")
    return [
        r
        for r in records
        if (labels is None or r.label in labels)
        and (datasets is None or r.dataset in datasets)
        and (has_image is None or r.has_image == bool(has_image))
    ]


def compare(records_a: Sequence[MentionAnalysis], records_b: Sequence[MentionAnalysis]) -> dict:
    """Compare two runs (A = before, e.g. the old model; B = after) on the mentions they share.

    Mentions are matched by (dataset, mention_id). Status per shared mention: "fixed" (wrong in A,
    right in B), "new_error" (right in A, wrong in B), "unchanged_correct", "unchanged_error";
    "right" means label correct or correct_nil. Mentions found in one run only are listed in
    only_in_a / only_in_b (and counted), never dropped. A shared mention whose gold differs between
    the runs is an error: the two runs were not evaluated on the same annotations.
    """
    a, b = _by_key(records_a, "A"), _by_key(records_b, "B")
    rows, counts = [], {s: 0 for s in COMPARE_STATUSES}
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        if ra.gold != rb.gold:
            raise ValueError(
                f"mention {key[1]!r} of dataset {key[0]!r} has gold {ra.gold!r} in A but "
                f"{rb.gold!r} in B: compare runs on the same annotations"
            )
        status = {
            (False, True): "fixed",
            (True, False): "new_error",
            (True, True): "unchanged_correct",
            (False, False): "unchanged_error",
        }[(ra.is_correct, rb.is_correct)]
        counts[status] += 1
        rows.append(
            {
                "dataset": key[0],
                "mention_id": key[1],
                "mention": ra.mention,
                "sentence": ra.sentence,
                "has_image": ra.has_image,
                "gold": ra.gold,
                "status": status,
                **_side(ra, "a"),
                **_side(rb, "b"),
            }
        )
    only_a = [{"dataset": k[0], "mention_id": k[1], "label": r.label} for k, r in a.items() if k not in b]
    only_b = [{"dataset": k[0], "mention_id": k[1], "label": r.label} for k, r in b.items() if k not in a]
    counts.update(only_in_a=len(only_a), only_in_b=len(only_b))
    return {
        "version_a": _versions(records_a),
        "version_b": _versions(records_b),
        "counts": counts,
        "rows": rows,
        "only_in_a": only_a,
        "only_in_b": only_b,
    }


def _by_key(records: Sequence[MentionAnalysis], side: str) -> dict:
    out = {}
    for r in records:
        if r.key in out:
            raise ValueError(f"run {side} holds mention {r.mention_id!r} of dataset {r.dataset!r} twice")
        out[r.key] = r
    return out


def _versions(records: Sequence[MentionAnalysis]) -> str:
    return ", ".join(sorted({r.model_version for r in records}))


def _side(r: MentionAnalysis, s: str) -> dict:
    top = r.top or {}
    return {
        f"label_{s}": r.label,
        f"predicted_{s}": r.predicted,
        f"gold_rank_{s}": r.gold_rank,
        f"top_{s}": top.get("entity_id"),
        f"top_S_{s}": top.get("S"),
        f"gold_S_{s}": r.gold_scores["S"] if r.gold_scores else None,
        f"outranked_by_{s}": ", ".join(r.outranked_by),
    }
