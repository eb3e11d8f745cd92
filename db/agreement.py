"""Inter-annotator agreement: Cohen's kappa (two annotators) and Fleiss' kappa (any number).

Pure functions over labels, checkable by hand. For entity linking the label of a decision is the
chosen entity id, or "NIL", or "AMBIGUOUS" (skips are not decisions and are left out).

Both kappas compare the observed agreement P_o with the agreement P_e expected by chance from the
label frequencies: kappa = (P_o - P_e) / (1 - P_e). When P_e = 1 (everyone used one single label)
kappa is undefined and the functions return None rather than inventing a number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from datetime import datetime
from itertools import combinations
from typing import Any


def cohen_kappa(pairs: Iterable[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters from the (label by rater A, label by rater B) of each item.

    P_o = share of items with equal labels; P_e = sum over labels of p_A(label) * p_B(label).
    Example (Wikipedia "Cohen's kappa"): 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15
    gives P_o = 0.7, P_e = 0.5, kappa = 0.4.
    """
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    count_a = Counter(a for a, _ in pairs)
    count_b = Counter(b for _, b in pairs)
    expected = sum(count_a[k] * count_b.get(k, 0) for k in count_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa_from_counts(rows: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from a subjects × categories table of rating counts.

    Rows may have different totals n_i (>= 2 ratings each; rows with fewer are ignored): then
    P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), P_o = mean P_i, p_j = sum_i n_ij / sum_i n_i,
    P_e = sum_j p_j^2, which reduces to Fleiss (1971) when every n_i is equal.
    Example (Wikipedia "Fleiss' kappa"): 10 subjects, 14 raters, 5 categories -> 0.210.
    """
    table = [list(r) for r in rows if sum(r) >= 2]
    if not table:
        return None
    width = max(len(r) for r in table)
    table = [r + [0] * (width - len(r)) for r in table]
    per_item = []
    for r in table:
        n_i = sum(r)
        per_item.append(sum(c * (c - 1) for c in r) / (n_i * (n_i - 1)))
    observed = sum(per_item) / len(per_item)
    total = sum(sum(r) for r in table)
    p = [sum(r[j] for r in table) / total for j in range(width)]
    expected = sum(x * x for x in p)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(items: Iterable[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa from the list of labels given to each item (items with < 2 labels ignored)."""
    items = [list(labels) for labels in items if len(labels) >= 2]
    categories = sorted({lab for labels in items for lab in labels}, key=repr)
    index = {c: j for j, c in enumerate(categories)}
    rows = []
    for labels in items:
        row = [0] * len(categories)
        for lab in labels:
            row[index[lab]] += 1
        rows.append(row)
    return fleiss_kappa_from_counts(rows)


def agreement_report(labels: Mapping[Any, Mapping[str, Hashable]]) -> dict:
    """Cohen's kappa for every annotator pair and Fleiss' kappa over all multiply labelled items.

    `labels` maps item -> {annotator: label}. Only items with at least two labels count.
    Returns {"items": k, "fleiss_kappa": float|None, "observed_agreement": float|None,
    "pairs": [{"a", "b", "items", "kappa", "observed_agreement"}, ...]}.
    """
    multi = {item: dict(by) for item, by in labels.items() if len(by) >= 2}
    annotators = sorted({a for by in multi.values() for a in by})
    pairs = []
    for a, b in combinations(annotators, 2):
        both = [(by[a], by[b]) for by in multi.values() if a in by and b in by]
        if both:
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "items": len(both),
                    "kappa": cohen_kappa(both),
                    "observed_agreement": sum(x == y for x, y in both) / len(both),
                }
            )
    observed = None
    if multi:
        shares = []
        for by in multi.values():
            counts = Counter(by.values())
            n = len(by)
            shares.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
        observed = sum(shares) / len(shares)
    return {
        "items": len(multi),
        "fleiss_kappa": fleiss_kappa(list(by.values()) for by in multi.values()),
        "observed_agreement": observed,
        "pairs": pairs,
    }


def throughput(decisions: Iterable[tuple[str, float | None, datetime]]) -> dict[str, dict]:
    """Decisions per hour of each annotator from (annotator, seconds_spent or None, created_at) of
    their current decisions.

    Seconds spent (what the Annotate tab measures per item) are the better clock: when at least one
    decision has them, rate = decisions with seconds / (their total seconds / 3600), source
    "seconds_spent". Otherwise the timestamps: n decisions span n - 1 gaps, so rate = (n - 1) /
    (hours from the first to the last), source "timestamps"; None for a single decision or an
    empty span (a rate would be invented).
    -> {annotator: {"decisions", "seconds", "per_hour", "source"}}
    """
    per: dict[str, list[tuple[float | None, datetime]]] = {}
    for who, seconds, at in decisions:
        per.setdefault(who, []).append((seconds, at))
    out = {}
    for who, rows in per.items():
        timed = [sec for sec, _ in rows if sec is not None]
        total = float(sum(timed))
        if timed:
            rate = len(timed) / (total / 3600.0) if total > 0 else None
            source = "seconds_spent"
        else:
            times = sorted(at for _, at in rows)
            span = (times[-1] - times[0]).total_seconds() if times else 0.0
            rate = (len(times) - 1) / (span / 3600.0) if span > 0 else None
            source = "timestamps"
        out[who] = {"decisions": len(rows), "seconds": total, "per_hour": rate, "source": source}
    return out


def reviewer_agreement(
    labels: Mapping[Any, Mapping[str, Hashable]], resolutions: Mapping[Any, Hashable]
) -> dict[str, dict]:
    """How often each annotator's decision is the one the reviewers settled on.

    `labels`: item -> {annotator: label} (the annotators' own decisions, reviewers left out);
    `resolutions`: item -> the reviewer's label. Only items with a resolution count.
    -> {annotator: {"reviewed": n, "agreed": k, "fraction": k / n}}
    """
    out: dict[str, dict] = {}
    for item, gold in resolutions.items():
        for who, lab in (labels.get(item) or {}).items():
            r = out.setdefault(who, {"reviewed": 0, "agreed": 0, "fraction": None})
            r["reviewed"] += 1
            r["agreed"] += lab == gold
    for r in out.values():
        r["fraction"] = r["agreed"] / r["reviewed"]
    return out
