"""Error analysis of a linking run: one `MentionAnalysis` record per mention (ELEVANT-style).

Every summary, filter, table, figure and comparison (`summary`, `tables`, `figures`) is computed
from a list of such records, so they work the same for any source. The builders:

  analyze_link_results   `mimic.serving.linker.LinkResult`s (retrieve-then-rerank, the serving path)
  analyze_linker         runs a `Linker` over dataset mentions, then the above
  analyze_score_arrays   a full-KB evaluation dump (`python -m mimic evaluate --scores-out`),
                         in `mimic.analysis.score_dump`

Records saved earlier are read back with `mimic.analysis.records.load_records`, where the record's
fields and its labels are described.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mimic.analysis.records import SCORES, UNITS, MentionAnalysis, classify, finite_or_none, outranked_by_units
from mimic.data.schema import Mention
from mimic.serving.linker import LinkInputError


def _is_nil_gold(g) -> bool:
    return g is None or (isinstance(g, str) and g.strip().lower() in ("", "nil"))


def analyze_link_results(
    results: Sequence,
    gold_ids: Sequence[str | None],
    *,
    dataset: str = "",
    mention_ids: Sequence[str] | None = None,
    model_version: str = "",
    top_k: int = 10,
) -> list[MentionAnalysis]:
    """Records from `mimic.serving.linker.LinkResult`s (one per mention) and their golds.

    gold_ids[i]: the gold entity id of results[i], or None / "nil" for a NIL gold (pass None too for
    a gold that is not in the linker's KB: for this linker it is out of KB). The gold counts as
    retrieved iff it is among `result.candidates`, so every shortlisted candidate must be there:
    link with `top_k >= shortlist` (a result holding fewer candidates than `shortlist_size` is
    refused, since a miss could not be told from a truncation). `top_k` here only limits how many
    candidates each record keeps for display; ranks and unit ranks use all of them.
    """
    if len(gold_ids) != len(results):
        raise ValueError(f"{len(results)} results but {len(gold_ids)} gold ids")
    if mention_ids is None:
        mention_ids = [str(i) for i in range(len(results))]
    if len(mention_ids) != len(results):
        raise ValueError(f"{len(results)} results but {len(mention_ids)} mention ids")
    records = []
    for mid, res, gold in zip(mention_ids, results, gold_ids):
        gold = None if _is_nil_gold(gold) else gold
        if len(res.candidates) < res.shortlist_size:
            raise ValueError(
                f"mention {mid!r}: the result holds {len(res.candidates)} of its "
                f"{res.shortlist_size} shortlisted candidates; link with top_k >= the "
                "shortlist so that a retrieval miss can be told apart"
            )
        # Sorted by the final rank; the linker already returns them so, but records from
        # elsewhere may not, and the tie order below relies on it.
        cands = sorted((_candidate_dict(c) for c in res.candidates), key=lambda c: c["rank"])
        gi = next((i for i, c in enumerate(cands) if c["entity_id"] == gold), None) if gold else None
        gold_scores = {k: cands[gi][k] for k in SCORES} if gi is not None else None
        gold_rank = cands[gi]["rank"] if gi is not None else None
        unit_ranks = {u: _rank_among(cands, gi, u) for u in UNITS}
        top = cands[0] if cands else None
        nil = bool(res.nil) or top is None
        records.append(
            MentionAnalysis(
                mention_id=str(mid),
                dataset=dataset,
                sentence=res.sentence,
                mention=res.mention,
                has_image=bool(res.has_image),
                gold=gold,
                retrieved=gi is not None,
                shortlist_size=int(res.shortlist_size),
                gold_rank=gold_rank,
                predicted=None if nil or top is None else top["entity_id"],
                nil_predicted=nil,
                candidates=cands[:top_k],
                gold_scores=gold_scores,
                label=classify(gold, gi is not None, gold_rank, nil),
                outranked_by=outranked_by_units(top, gold_scores, gold_rank),
                unit_ranks=unit_ranks,
                model_version=model_version,
            )
        )
    return records


def _candidate_dict(c) -> dict:
    get: Callable[..., Any] = c.get if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
    return {
        "entity_id": get("entity_id"),
        "name": get("name", ""),
        "S": float(get("S")),
        **{u: finite_or_none(get(u)) for u in UNITS},
        "rank": int(get("rank")),
        "margin": finite_or_none(get("margin")),
        "retrievers": list(get("retrievers", None) or []),
    }


def _rank_among(cands: list[dict], gi: int | None, unit: str) -> int | None:
    """Rank of candidate gi if `unit` alone ordered `cands` (ties: earlier candidate first)."""
    if gi is None or cands[gi][unit] is None:
        return None
    g = cands[gi][unit]
    higher = sum(1 for c in cands if c[unit] is not None and c[unit] > g)
    tied_before = sum(1 for c in cands[:gi] if c[unit] is not None and c[unit] == g)
    return 1 + higher + tied_before


def analyze_linker(
    linker,
    mentions: Sequence[Mention],
    *,
    dataset: str = "",
    model_version: str = "",
    top_k: int = 10,
    batch_size: int = 32,
) -> list[MentionAnalysis]:
    """Link dataset mentions with `linker` (shortlist fully kept, no explanations) and analyse them.

    A gold id that is not in the linker's index is treated as NIL: for this KB it is out of KB.
    `model_version` defaults to the index's model fingerprint.
    """

    position = linker.index.position
    golds = [m.answer if (m.answer is not None and m.answer in position) else None for m in mentions]
    results = []
    for s in range(0, len(mentions), batch_size):
        chunk = mentions[s : s + batch_size]
        queries = [
            {
                "sentence": m.sentence,
                "image": m.image,
                "mention": (m.start, m.end) if m.start is not None and m.end is not None else m.mention,
            }
            for m in chunk
        ]
        try:
            results += linker.link_batch(queries, top_k=linker.shortlist, explain=False)
        except LinkInputError:
            # One bad query fails the whole batch: redo it one by one to name the culprit.
            for m, q in zip(chunk, queries):
                try:
                    results += linker.link_batch([q], top_k=linker.shortlist, explain=False)
                except LinkInputError as exc:
                    raise ValueError(f"mention {m.id!r}: {exc}") from None
    version = model_version or str(getattr(linker.index, "fingerprint", "") or "")
    return analyze_link_results(
        results, golds, dataset=dataset, mention_ids=[m.id for m in mentions], model_version=version, top_k=top_k
    )
