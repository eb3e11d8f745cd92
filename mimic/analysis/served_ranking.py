"""Evaluation through the serving path, for models whose ranking is the served shortlist's.

A model with a lexical unit (`mimic.models.lexical_unit`) scores only the candidates the linker
retrieves, so its evaluation is the linker's own: the KB is indexed (`KBIndex.build`), every mention
goes through `Linker.shortlists` (encode, retrieve, score, fuse; batches as `link_batch`), and the
rank is the gold's position in the ranked shortlist, K + 1 when the shortlist misses it (a miss for
H@1..H@K; MRR counts it as 1/(K + 1)). The top-1 that `evaluate` measures is therefore the top-1
that `link` returns for the same index (tests/test_lexical_unit.py checks it).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mimic.analysis.ranking import metrics_from_ranks
from mimic.data.schema import KnowledgeBase, Mention
from mimic.models.linking_model import LinkingModel
from mimic.serving.index import KBIndex
from mimic.serving.linker import Linker
from mimic.training.lexical_unit_fit import collect_shortlists, shortlist_ranks


def evaluate_served(
    model: LinkingModel,
    kb: KnowledgeBase,
    mentions: Sequence[Mention],
    *,
    index: KBIndex | str | Path | None = None,
    shortlist: int = 64,
    batch_size: int = 64,
    kb_batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Metrics (as `evaluate`) of the linker's ranking; `index`: an index of `kb` built with `model`
    (built in a temporary folder when None)."""
    missing = [m.id for m in mentions if m.answer not in kb]
    if missing:
        raise ValueError(f"{len(missing)} mentions have a gold entity that is not in the KB (first: {missing[:3]})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mimic-eval-index-") as tmp:
        if index is None:
            index = KBIndex.build(model, kb, Path(tmp) / "index", batch_size=kb_batch_size, progress=progress)
        elif not isinstance(index, KBIndex):
            index = KBIndex(index)
        t_kb = time.perf_counter() - t0
        linker = Linker(model, index, shortlist=shortlist, absent_mention="warn", explain_top=0)
        t1 = time.perf_counter()
        ss = collect_shortlists(linker, mentions, batch_size=batch_size, progress=progress)
        t_rank = time.perf_counter() - t1
    ranks = shortlist_ranks(ss.S, ss.mask, ss.gold)
    res = metrics_from_ranks(ranks)
    res.update(
        {
            "entities": len(kb),
            "strategy": "served",
            "shortlist": shortlist,
            "shortlist_recall": round(float((ss.gold >= 0).mean()), 4) if len(ss) else None,
            "refused": len(ss.refused),
            "kb_encode_seconds": round(t_kb, 3),
            "rank_seconds": round(t_rank, 3),
            "mentions_per_second": round(len(mentions) / t_rank, 2) if t_rank > 0 else None,
            "images": {},
        }
    )
    res["ranks"] = ranks.tolist()
    return res


def evaluate_served_sets(
    model: LinkingModel,
    kb: KnowledgeBase,
    sets: Mapping[str, Sequence[Mention]],
    *,
    index: KBIndex | str | Path | None = None,
    shortlist: int = 64,
    batch_size: int = 64,
    kb_batch_size: int = 64,
) -> dict[str, dict]:
    """`evaluate_served` on several mention sets with one index of `kb` (built once, in a temporary
    folder, when None: indexing the KB is the costly part). -> {set: metrics} for non-empty sets."""
    todo = {name: ms for name, ms in sets.items() if ms}
    if not todo:
        return {}
    with tempfile.TemporaryDirectory(prefix="mimic-eval-index-") as tmp:
        t0 = time.perf_counter()
        if index is None:
            index = KBIndex.build(model, kb, Path(tmp) / "index", batch_size=kb_batch_size, progress=False)
        elif not isinstance(index, KBIndex):
            index = KBIndex(index)
        t_kb = time.perf_counter() - t0
        out = {
            name: evaluate_served(model, kb, ms, index=index, shortlist=shortlist, batch_size=batch_size)
            for name, ms in todo.items()
        }
    for res in out.values():
        res["kb_encode_seconds"] = round(t_kb, 3)
    return out
