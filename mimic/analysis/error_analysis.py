"""Error analysis of a linking run: where the model fails, and what a new version fixed (ELEVANT-style).

One record per mention (`MentionAnalysis`) holds everything the Analysis view shows about it; every
summary, filter, table, figure and comparison below is computed from a list of such records, so
they work the same for any source:

  analyze_link_results   `mimic.serving.linker.LinkResult`s (retrieve-then-rerank, the serving path)
  analyze_linker         runs a `Linker` over dataset mentions, then the above
  analyze_score_arrays   a full-KB evaluation dump (`python -m mimic evaluate --scores-out`)
  load_records           records saved earlier with `save_records` (JSONL, one record a line)

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
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mimic.atomic import write_json_atomic, write_text_atomic
from mimic.data.schema import DataFormatError, Mention

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


def _outranked_by(top: dict | None, gold_scores: dict | None, gold_rank: int | None) -> list[str]:
    """Units that prefer the top candidate over the gold (strictly), when the gold is not first."""
    if top is None or gold_scores is None or gold_rank is None or gold_rank == 1:
        return []
    return [u for u in UNITS if top[u] is not None and gold_scores[u] is not None and top[u] > gold_scores[u]]


def _finite_or_none(x) -> float | None:
    """A unit score as a JSON-safe float; NaN (and None) mean "the unit does not apply"."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------

def _is_nil_gold(g) -> bool:
    return g is None or (isinstance(g, str) and g.strip().lower() in ("", "nil"))


def analyze_link_results(results: Sequence, gold_ids: Sequence[str | None], *, dataset: str = "",
                         mention_ids: Sequence[str] | None = None, model_version: str = "",
                         top_k: int = 10) -> list[MentionAnalysis]:
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
            raise ValueError(f"mention {mid!r}: the result holds {len(res.candidates)} of its "
                             f"{res.shortlist_size} shortlisted candidates; link with top_k >= the "
                             "shortlist so that a retrieval miss can be told apart")
        # Sorted by the final rank; the linker already returns them so, but records from
        # elsewhere may not, and the tie order below relies on it.
        cands = sorted((_candidate_dict(c) for c in res.candidates), key=lambda c: c["rank"])
        gi = next((i for i, c in enumerate(cands) if c["entity_id"] == gold), None) if gold else None
        gold_scores = {k: cands[gi][k] for k in SCORES} if gi is not None else None
        gold_rank = cands[gi]["rank"] if gi is not None else None
        unit_ranks = {u: _rank_among(cands, gi, u) for u in UNITS}
        top = cands[0] if cands else None
        nil = bool(res.nil) or top is None
        records.append(MentionAnalysis(
            mention_id=str(mid), dataset=dataset, sentence=res.sentence, mention=res.mention,
            has_image=bool(res.has_image), gold=gold, retrieved=gi is not None,
            shortlist_size=int(res.shortlist_size), gold_rank=gold_rank,
            predicted=None if nil else top["entity_id"], nil_predicted=nil, candidates=cands[:top_k],
            gold_scores=gold_scores, label=classify(gold, gi is not None, gold_rank, nil),
            outranked_by=_outranked_by(top, gold_scores, gold_rank), unit_ranks=unit_ranks,
            model_version=model_version))
    return records


def _candidate_dict(c) -> dict:
    get = c.get if isinstance(c, dict) else (lambda k, d=None: getattr(c, k, d))
    return {"entity_id": get("entity_id"), "name": get("name", ""), "S": float(get("S")),
            **{u: _finite_or_none(get(u)) for u in UNITS}, "rank": int(get("rank")),
            "margin": _finite_or_none(get("margin")), "retrievers": list(get("retrievers", None) or [])}


def _rank_among(cands: list[dict], gi: int | None, unit: str) -> int | None:
    """Rank of candidate gi if `unit` alone ordered `cands` (ties: earlier candidate first)."""
    if gi is None or cands[gi][unit] is None:
        return None
    g = cands[gi][unit]
    higher = sum(1 for c in cands if c[unit] is not None and c[unit] > g)
    tied_before = sum(1 for c in cands[:gi] if c[unit] is not None and c[unit] == g)
    return 1 + higher + tied_before


def analyze_linker(linker, mentions: Sequence[Mention], *, dataset: str = "", model_version: str = "",
                   top_k: int = 10, batch_size: int = 32) -> list[MentionAnalysis]:
    """Link dataset mentions with `linker` (shortlist fully kept, no explanations) and analyse them.

    A gold id that is not in the linker's index is treated as NIL: for this KB it is out of KB.
    `model_version` defaults to the index's model fingerprint.
    """
    from mimic.serving.linker import LinkInputError

    position = linker.index.position
    golds = [m.answer if (m.answer is not None and m.answer in position) else None for m in mentions]
    results = []
    for s in range(0, len(mentions), batch_size):
        chunk = mentions[s:s + batch_size]
        queries = [{"sentence": m.sentence, "image": m.image,
                    "mention": (m.start, m.end) if m.start is not None and m.end is not None else m.mention}
                    for m in chunk]
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
    return analyze_link_results(results, golds, dataset=dataset, mention_ids=[m.id for m in mentions],
                                model_version=version, top_k=top_k)


def analyze_score_arrays(S, S_T, S_V, S_C, gold_positions, kb_ids: Sequence[str], *,
                         mentions: Sequence[Mention] | None = None, mention_ids: Sequence[str] | None = None,
                         kb_names: Sequence[str] | None = None, dataset: str = "", model_version: str = "",
                         nil_threshold: float | None = None, top_k: int = 10,
                         rows_per_chunk: int | None = None) -> list[MentionAnalysis]:
    """Records from a full-KB score dump (every mention scored against every entity).

    S, S_T, S_V, S_C: [M, N] arrays (numpy or memory maps, see `load_score_dump`); a unit may be
    None (absent) and NaN entries mean the unit does not apply. gold_positions: [M] KB positions of
    the golds, -1 for a NIL gold. kb_ids / kb_names: [N]. `mentions` (same order) supplies ids,
    text and has_image; without it ids are "0".."M-1" and has_image is False.
    NIL: the system answers NIL when the top S < nil_threshold (never when it is None), as the
    linker does. There is no retrieval stage: `retrieved` is true for every in-KB gold.

    Vectorised over blocks of `rows_per_chunk` mentions (default: about 16M scores per block), so a
    5,000 × 100,000 dump is read block by block and never held in memory whole.
    """
    if S is None or getattr(S, "ndim", 0) != 2:
        raise ValueError("S must be a [mentions, entities] array")
    M, N = S.shape
    units = {"S_T": S_T, "S_V": S_V, "S_C": S_C}
    for name, arr in units.items():
        if arr is not None and tuple(arr.shape) != (M, N):
            raise ValueError(f"{name} has shape {tuple(arr.shape)}, S has {(M, N)}")
    gold = np.asarray(gold_positions, dtype=np.int64).reshape(-1)
    if gold.shape != (M,):
        raise ValueError(f"gold has {gold.size} entries for {M} mentions")
    if ((gold < -1) | (gold >= N)).any():
        bad = int(np.flatnonzero((gold < -1) | (gold >= N))[0])
        raise ValueError(f"gold position {int(gold[bad])} of mention {bad} is outside the KB (0..{N - 1}, -1 = NIL)")
    if len(kb_ids) != N:
        raise ValueError(f"{len(kb_ids)} KB ids for {N} score columns")
    if mentions is not None and len(mentions) != M:
        raise ValueError(f"{len(mentions)} mentions for {M} score rows")
    if mention_ids is None:
        mention_ids = [m.id for m in mentions] if mentions is not None else [str(i) for i in range(M)]
    if len(mention_ids) != M:
        raise ValueError(f"{len(mention_ids)} mention ids for {M} score rows")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    names = list(kb_names) if kb_names is not None else [""] * N
    chunk = rows_per_chunk or max(1, (1 << 24) // max(N, 1))
    kk = min(top_k + 1, N)          # one more than shown, so the last shown candidate has a margin
    pos = np.arange(N)[None, :]
    records = []
    for start in range(0, M, chunk):
        stop = min(start + chunk, M)
        s = np.asarray(S[start:stop])
        if np.isnan(s).any():
            r, _ = np.argwhere(np.isnan(s))[0]
            raise ValueError(f"S is NaN for mention {start + int(r)}: not a valid score dump")
        b = stop - start
        rows = np.arange(b)
        g_pos = gold[start:stop]
        in_kb = g_pos >= 0
        gp = np.where(in_kb, g_pos, 0)
        before = pos < gp[:, None]       # entities placed before the gold in KB order (tie-break)

        def rank_of(a):
            """Stable rank of the gold in each row of `a` (as mimic.analysis.ranking.ranks_from_scores)."""
            g = a[rows, gp][:, None]
            return (a > g).sum(1) + ((a == g) & before).sum(1) + 1

        gold_rank = rank_of(s)
        unit_vals, unit_rank = {}, {}
        for u, arr in units.items():
            if arr is None:
                continue
            ua = np.asarray(arr[start:stop])
            unit_vals[u] = ua
            unit_rank[u] = rank_of(ua)      # NaN compares false, so inapplicable entities never outrank

        # Top kk per row: the kk-th largest value bounds them; sorting the (few) entities at or above
        # it by (-score, position) gives the exact stable order even through ties at the boundary.
        kth = np.partition(s, N - kk, axis=1)[:, N - kk]
        for i in range(b):
            idx = np.flatnonzero(s[i] >= kth[i])
            order = idx[np.lexsort((idx, -s[i, idx]))][:kk]
            cands = []
            for r, j in enumerate(order[:top_k]):
                nxt = float(s[i, order[r + 1]]) if r + 1 < len(order) else None
                cands.append({"entity_id": kb_ids[j], "name": names[j], "S": float(s[i, j]),
                              **{u: (_finite_or_none(unit_vals[u][i, j]) if u in unit_vals else None) for u in UNITS},
                              "rank": r + 1, "margin": float(s[i, j]) - nxt if nxt is not None else None,
                              "retrievers": []})
            g = int(gp[i])
            if in_kb[i]:
                gold_id = kb_ids[g]
                gold_scores = {"S": float(s[i, g]),
                               **{u: (_finite_or_none(unit_vals[u][i, g]) if u in unit_vals else None) for u in UNITS}}
                rank = int(gold_rank[i])
                u_ranks = {u: (int(unit_rank[u][i]) if u in unit_vals and gold_scores[u] is not None else None)
                           for u in UNITS}
            else:
                gold_id, gold_scores, rank, u_ranks = None, None, None, {u: None for u in UNITS}
            top = cands[0]
            nil = nil_threshold is not None and top["S"] < nil_threshold
            m = mentions[start + i] if mentions is not None else None
            records.append(MentionAnalysis(
                mention_id=str(mention_ids[start + i]), dataset=dataset,
                sentence=m.sentence if m else "", mention=m.mention if m else "",
                has_image=bool(m and m.image), gold=gold_id, retrieved=bool(in_kb[i]), shortlist_size=N,
                gold_rank=rank, predicted=None if nil else top["entity_id"], nil_predicted=nil,
                candidates=cands, gold_scores=gold_scores, label=classify(gold_id, bool(in_kb[i]), rank, nil),
                outranked_by=_outranked_by(top, gold_scores, rank), unit_ranks=u_ranks,
                model_version=model_version))
    return records


def load_score_dump(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an `evaluate --scores-out` .npz: S, S_T, S_V, S_C [M, N], gold, rank [M].

    The evaluator stores the .npz uncompressed, so each member is memory-mapped in place (a
    5,000 × 100,000 dump is 8 GB); a compressed member is read into memory instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"score dump not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            members = {Path(i.filename).stem: i for i in z.infolist() if i.filename.endswith(".npy")}
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not an .npz score dump") from None
    missing = [k for k in ("S", "gold") if k not in members]
    if missing:
        raise ValueError(f"{path}: no array {', '.join(missing)} (has: {', '.join(sorted(members)) or 'none'})")
    out = {}
    with open(path, "rb") as f:
        for name, info in members.items():
            arr = None
            if info.compress_type == zipfile.ZIP_STORED and info.file_size > 0:
                f.seek(info.header_offset)
                head = f.read(30)
                if head[:4] != b"PK\x03\x04":
                    raise ValueError(f"{path}: corrupt zip entry {info.filename}")
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                if not dtype.hasobject and int(np.prod(shape)) > 0:
                    arr = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                    order="F" if fortran else "C")
            if arr is None:
                with np.load(path, allow_pickle=False) as z:
                    arr = z[name]
            out[name] = arr
    return out


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------

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
    ranking.update({"MRR": float((1.0 / ranks).mean()) if len(ranks) else None,
                    "MR": float(ranked.mean()) if len(ranked) else None,
                    "count": len(in_kb), "ranked": int(len(ranked)), "unranked": int(len(ranks) - len(ranked))})
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
    table = {"n_bins": n_bins, "binning": "equal-width over min-max normalised top S", "count": len(top),
             "score_min": None, "score_max": None, "ece": None, "bins": []}
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
        if k:
            ece += k / len(s) * abs(acc - mc)
        table["bins"].append({"bin": b, "lo": b / n_bins, "hi": (b + 1) / n_bins,
                              "score_lo": lo + (hi - lo) * b / n_bins, "score_hi": lo + (hi - lo) * (b + 1) / n_bins,
                              "count": k, "accuracy": acc, "mean_confidence": mc,
                              "mean_score": float(s[m].mean()) if k else None})
    table.update(score_min=lo, score_max=hi, ece=ece)
    return table


# ------------------------------------------------------------------------------------------------
# Filters and comparison
# ------------------------------------------------------------------------------------------------

def _as_set(value, allowed: Sequence[str] | None, what: str) -> set | None:
    if value is None:
        return None
    values = {value} if isinstance(value, str) else set(value)
    if allowed is not None and values - set(allowed):
        raise ValueError(f"unknown {what} {sorted(values - set(allowed))} (known: {', '.join(allowed)})")
    return values


def filter_records(records: Sequence[MentionAnalysis], label: str | Iterable[str] | None = None,
                   dataset: str | Iterable[str] | None = None,
                   has_image: bool | None = None) -> list[MentionAnalysis]:
    """Records matching every given criterion (None = any); label and dataset take one or several."""
    labels = _as_set(label, LABELS, "label")
    datasets = _as_set(dataset, None, "dataset")
    return [r for r in records
            if (labels is None or r.label in labels) and (datasets is None or r.dataset in datasets)
            and (has_image is None or r.has_image == bool(has_image))]


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
            raise ValueError(f"mention {key[1]!r} of dataset {key[0]!r} has gold {ra.gold!r} in A but "
                             f"{rb.gold!r} in B: compare runs on the same annotations")
        status = {(False, True): "fixed", (True, False): "new_error", (True, True): "unchanged_correct",
                  (False, False): "unchanged_error"}[(ra.is_correct, rb.is_correct)]
        counts[status] += 1
        rows.append({"dataset": key[0], "mention_id": key[1], "mention": ra.mention, "sentence": ra.sentence,
                     "has_image": ra.has_image, "gold": ra.gold, "status": status,
                     **_side(ra, "a"), **_side(rb, "b")})
    only_a = [{"dataset": k[0], "mention_id": k[1], "label": r.label} for k, r in a.items() if k not in b]
    only_b = [{"dataset": k[0], "mention_id": k[1], "label": r.label} for k, r in b.items() if k not in a]
    counts.update(only_in_a=len(only_a), only_in_b=len(only_b))
    return {"version_a": _versions(records_a), "version_b": _versions(records_b), "counts": counts,
            "rows": rows, "only_in_a": only_a, "only_in_b": only_b}


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
    return {f"label_{s}": r.label, f"predicted_{s}": r.predicted, f"gold_rank_{s}": r.gold_rank,
            f"top_{s}": top.get("entity_id"), f"top_S_{s}": top.get("S"),
            f"gold_S_{s}": r.gold_scores["S"] if r.gold_scores else None,
            f"outranked_by_{s}": ", ".join(r.outranked_by)}


# ------------------------------------------------------------------------------------------------
# Tables (pandas) and CSV
# ------------------------------------------------------------------------------------------------

RECORD_COLUMNS = ["mention_id", "dataset", "mention", "sentence", "has_image", "gold", "predicted", "gold_rank",
                  "label", "outranked_by", "retrieved", "nil_predicted", "shortlist_size", "top_entity",
                  "top_S", "top_S_T", "top_S_V", "top_S_C", "gold_S", "gold_S_T", "gold_S_V", "gold_S_C",
                  "margin", "unit_rank_S_T", "unit_rank_S_V", "unit_rank_S_C", "model_version"]


def records_table(records: Sequence[MentionAnalysis]):
    """One row per mention, typed for sorting: ranks are nullable integers, scores floats (NaN where
    not applicable), outranked_by a comma-separated string. margin is the top candidate's margin."""
    import pandas as pd

    rows = []
    for r in records:
        top, gs = r.top or {}, r.gold_scores or {}
        rows.append({"mention_id": r.mention_id, "dataset": r.dataset, "mention": r.mention, "sentence": r.sentence,
                     "has_image": r.has_image, "gold": r.gold, "predicted": r.predicted, "gold_rank": r.gold_rank,
                     "label": r.label, "outranked_by": ", ".join(r.outranked_by), "retrieved": r.retrieved,
                     "nil_predicted": r.nil_predicted, "shortlist_size": r.shortlist_size,
                     "top_entity": top.get("entity_id"),
                     **{f"top_{k}": top.get(k) for k in SCORES}, **{f"gold_{k}": gs.get(k) for k in SCORES},
                     "margin": top.get("margin"), **{f"unit_rank_{u}": r.unit_ranks.get(u) for u in UNITS},
                     "model_version": r.model_version})
    df = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    return _typed(df, ints=["gold_rank", "shortlist_size"] + [f"unit_rank_{u}" for u in UNITS],
                  floats=[f"{p}_{k}" for p in ("top", "gold") for k in SCORES] + ["margin"])


def comparison_table(comparison: dict):
    """The side-by-side rows of `compare` plus the one-sided mentions (status only_in_a / only_in_b)."""
    import pandas as pd

    cols = ["dataset", "mention_id", "mention", "sentence", "has_image", "gold", "status"] + [
        f"{c}_{s}" for s in ("a", "b")
        for c in ("label", "predicted", "gold_rank", "top", "top_S", "gold_S", "outranked_by")]
    one_sided = [{"dataset": o["dataset"], "mention_id": o["mention_id"], "status": f"only_in_{s}",
                  f"label_{s}": o["label"]}
                 for s in ("a", "b") for o in comparison[f"only_in_{s}"]]
    df = pd.DataFrame(list(comparison["rows"]) + one_sided, columns=cols)
    return _typed(df, ints=["gold_rank_a", "gold_rank_b"], floats=["top_S_a", "top_S_b", "gold_S_a", "gold_S_b"])


def _typed(df, ints: list[str], floats: list[str]):
    for c in ints:
        df[c] = df[c].astype("Int64")          # nullable: an unscored gold sorts last, not as 0
    for c in floats:
        df[c] = df[c].astype("float64")
    return df


def to_csv(df, path: str | Path) -> Path:
    """Write a table as CSV (UTF-8, no index) atomically: readers never see half a file."""
    write_text_atomic(path, df.to_csv(index=False))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Figures (plotly)
# ------------------------------------------------------------------------------------------------

def _summary_of(x) -> dict:
    return x if isinstance(x, dict) else summarize(x)


def label_counts_figure(summary_or_records):
    """Bars: how many mentions carry each label (all six, in pipeline order)."""
    import plotly.graph_objects as go

    labels = _summary_of(summary_or_records)["labels"]
    colours = {"correct": "#54A24B", "correct_nil": "#88D27A", "retrieval_miss": "#E45756",
               "outranked": "#F58518", "false_nil": "#B279A2", "missed_nil": "#9D755D"}
    fig = go.Figure(go.Bar(x=list(LABELS), y=[labels[k] for k in LABELS], marker_color=[colours[k] for k in LABELS],
                           text=[labels[k] for k in LABELS], textposition="outside",
                           hovertemplate="%{x}: %{y}<extra></extra>"))
    fig.update_layout(title="Mentions per label", yaxis_title="mentions", height=340,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def recall_at_k_figure(summary_or_records):
    """Bars: recall@K of the candidates (K = 1, 5, 10, 20, 50, the shortlist)."""
    import plotly.graph_objects as go

    recall = _summary_of(summary_or_records)["recall_at_k"]
    keys = [str(k) for k in RECALL_KS] + ["shortlist"]
    ys = [recall[k] for k in keys]
    fig = go.Figure(go.Bar(x=[f"@{k}" for k in keys], y=ys, marker_color="#4C78A8",
                           text=[f"{y:.3f}" if y is not None else "n/a" for y in ys], textposition="outside",
                           hovertemplate="recall%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Recall@K of the candidates (in-KB golds)", yaxis_title="recall", height=340,
                      yaxis_range=[0, 1.1], margin=dict(l=40, r=20, t=50, b=40))
    return fig


def reliability_figure(summary_or_records):
    """Reliability diagram: accuracy of the top candidate per confidence bin, with the diagonal."""
    import plotly.graph_objects as go

    rel = _summary_of(summary_or_records)["reliability"]
    bins = rel["bins"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[(b["lo"] + b["hi"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
                         width=[b["hi"] - b["lo"] for b in bins], name="accuracy", marker_color="#4C78A8",
                         customdata=[[b["count"], b["score_lo"], b["score_hi"]] for b in bins],
                         hovertemplate="accuracy %{y:.3f}<br>%{customdata[0]} mentions<br>"
                                       "S in [%{customdata[1]:.4f}, %{customdata[2]:.4f})<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="#888888")))
    ece = rel["ece"]
    fig.update_layout(title="Reliability of the top score" + (f" (ECE {ece:.3f})" if ece is not None else ""),
                      xaxis_title="top S, min-max normalised over the run", yaxis_title="top-1 accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.05], height=380, bargap=0.05,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def unit_accuracy_figure(summary_or_records):
    """Bars: share of in-KB golds that each unit alone (and S, combined) ranks first."""
    import plotly.graph_objects as go

    acc = _summary_of(summary_or_records)["per_unit_accuracy"]
    keys = list(SCORES)
    names = {"S": "S (combined)", "S_T": "S_T text", "S_V": "S_V image", "S_C": "S_C cross-modal"}
    ys = [acc[k] for k in keys]
    fig = go.Figure(go.Bar(x=[names[k] for k in keys], y=ys, marker_color=["#333333", "#4C78A8", "#F58518", "#54A24B"],
                           text=[f"{y:.3f}" if y is not None else "n/a" for y in ys], textposition="outside",
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title="Gold ranked first by each unit alone", yaxis_title="accuracy", yaxis_range=[0, 1.1],
                      height=340, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def comparison_figure(comparison: dict):
    """Bars: fixed / new errors / unchanged, plus the mentions found in one run only."""
    import plotly.graph_objects as go

    keys = list(COMPARE_STATUSES) + ["only_in_a", "only_in_b"]
    counts = comparison["counts"]
    fig = go.Figure(go.Bar(x=keys, y=[counts[k] for k in keys], text=[counts[k] for k in keys], textposition="outside",
                           marker_color=["#54A24B", "#E45756", "#88D27A", "#F58518", "#BBBBBB", "#BBBBBB"]))
    fig.update_layout(title=f"{comparison['version_a'] or 'A'} → {comparison['version_b'] or 'B'}",
                      yaxis_title="mentions", height=340, margin=dict(l=40, r=20, t=50, b=40))
    return fig


# ------------------------------------------------------------------------------------------------
# Save / load (JSONL)
# ------------------------------------------------------------------------------------------------

def save_records(records: Sequence[MentionAnalysis], path: str | Path) -> Path:
    """One JSON object per line (fields of `MentionAnalysis`), written atomically."""
    write_text_atomic(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    return Path(path)


_STR, _INT, _BOOL, _NUM = (str,), (int,), (bool,), (int, float)
_FIELD_TYPES = {  # name -> (accepted types, null allowed)
    "mention_id": (_STR, False), "dataset": (_STR, False), "sentence": (_STR, False), "mention": (_STR, False),
    "has_image": (_BOOL, False), "gold": (_STR, True), "retrieved": (_BOOL, False),
    "shortlist_size": (_INT, False), "gold_rank": (_INT, True), "predicted": (_STR, True),
    "nil_predicted": (_BOOL, False), "candidates": ((list,), False), "gold_scores": ((dict,), True),
    "label": (_STR, False), "outranked_by": ((list,), False), "unit_ranks": ((dict,), False),
    "model_version": (_STR, False),
}
_CANDIDATE_TYPES = {"entity_id": (_STR, False), "name": (_STR, False), "S": (_NUM, False), "S_T": (_NUM, True),
                    "S_V": (_NUM, True), "S_C": (_NUM, True), "rank": (_INT, False), "margin": (_NUM, True)}


def _check(value, types, nullable: bool) -> bool:
    if value is None:
        return nullable
    if bool in types:
        return isinstance(value, bool)
    return isinstance(value, types) and not isinstance(value, bool)   # JSON true is not a number


def load_records(path: str | Path) -> list[MentionAnalysis]:
    """Read `save_records` output. A malformed line raises `DataFormatError` (a ValueError) naming
    the file, the line and the field. Unknown fields are ignored (files from newer versions load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"records file not found: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                records.append(_parse_record(line, path, lineno))
    return records


def _parse_record(line: str, path: Path, lineno: int) -> MentionAnalysis:
    def err(msg, fld=None):
        return DataFormatError(path, msg, record=f"line {lineno}", field_name=fld)

    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise err(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise err(f"expected a JSON object, got {type(obj).__name__}")
    for name, (types, nullable) in _FIELD_TYPES.items():
        if name not in obj:
            raise err("missing field", name)
        if not _check(obj[name], types, nullable):
            raise err(f"expected {' or '.join(t.__name__ for t in types)}{' or null' if nullable else ''}, "
                      f"got {json.dumps(obj[name])[:40]}", name)
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
        raise err(f"label {obj['label']!r} contradicts gold/retrieved/gold_rank/nil_predicted "
                  f"(they give {expected!r})", "label")
    kw = {f.name: obj[f.name] for f in fields(MentionAnalysis)}
    kw["candidates"] = [{**c, "retrievers": list(c.get("retrievers") or [])} for c in obj["candidates"]]
    kw["unit_ranks"] = {u: obj["unit_ranks"].get(u) for u in UNITS}
    return MentionAnalysis(**kw)


# ------------------------------------------------------------------------------------------------
# Command line: python -m mimic analyze ...
# ------------------------------------------------------------------------------------------------

def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `analyze` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze", help="error analysis of a run (labels, H@k, recall@K, per-unit accuracy, calibration)",
        description="Error analysis of one run. Input: --records FILE.jsonl (analysed before), or "
                    "--scores FILE.npz --data DATA --split SPLIT (an `evaluate --scores-out` dump), or "
                    "--checkpoint CKPT --index INDEX --data DATA --split SPLIT (runs the linker). "
                    "Prints the summary as JSON.")
    p.add_argument("--records", help="records JSONL written by --out-records")
    p.add_argument("--scores", help="full-KB score dump (.npz) from `evaluate --scores-out`")
    p.add_argument("--checkpoint", help="checkpoint folder (with --index: analyse the linker)")
    p.add_argument("--index", help="KB index folder built for the checkpoint")
    p.add_argument("--data", help="dataset the scores/linker ran on (any supported format)")
    p.add_argument("--split", default="test")
    p.add_argument("--dataset-name", help="dataset label of the records (default: the dataset's name)")
    p.add_argument("--model-version", help="tag of this run (default: dump file name / index fingerprint)")
    p.add_argument("--nil-threshold", type=float,
                   help="answer NIL when the top S is below this (--scores; --checkpoint: overrides the index's)")
    p.add_argument("--shortlist", type=int, default=64, help="linker shortlist size (--checkpoint)")
    p.add_argument("--top-k", type=int, default=10, help="candidates kept per record")
    p.add_argument("--bins", type=int, default=10, help="reliability diagram bins")
    p.add_argument("--compare", metavar="BASELINE.jsonl",
                   help="records of an earlier version: fixed = wrong there, right in this run")
    p.add_argument("--compare-csv", help="write the side-by-side comparison table here")
    p.add_argument("--out-records", help="write this run's records (JSONL) here")
    p.add_argument("--csv", help="write the per-mention table (CSV) here")
    p.add_argument("--json", help="also write the summary JSON here")
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args) -> dict:
    """Run the analysis the arguments ask for, print the summary JSON and return it."""
    records = _records_from_args(args)
    if args.model_version and args.records:
        for r in records:
            r.model_version = args.model_version
    out = summarize(records, n_bins=args.bins)
    if args.compare:
        cmp = compare(load_records(args.compare), records)
        out["comparison"] = {"version_a": cmp["version_a"], "version_b": cmp["version_b"], **cmp["counts"]}
        if args.compare_csv:
            to_csv(comparison_table(cmp), args.compare_csv)
    elif args.compare_csv:
        raise ValueError("--compare-csv needs --compare BASELINE.jsonl")
    if args.out_records:
        save_records(records, args.out_records)
    if args.csv:
        to_csv(records_table(records), args.csv)
    if args.json:
        write_json_atomic(args.json, out)
    print(json.dumps(out, indent=2))
    return out


def _records_from_args(a) -> list[MentionAnalysis]:
    sources = [name for name, given in (("--records", a.records), ("--scores", a.scores),
                                        ("--checkpoint", a.checkpoint)) if given]
    if len(sources) != 1:
        raise ValueError("give exactly one input: --records FILE.jsonl, --scores FILE.npz --data DATA, or "
                         f"--checkpoint CKPT --index INDEX --data DATA (got {', '.join(sources) or 'none'})")
    if a.records:
        return load_records(a.records)
    if not a.data:
        raise ValueError(f"{sources[0]} needs --data DATA (and --split) for the mentions")
    from mimic.data.formats import load_dataset
    ds = load_dataset(a.data)
    mentions = ds.split(a.split)
    name = a.dataset_name or ds.name
    if a.scores:
        return _records_from_dump(a, ds, mentions, name)
    if not a.index:
        raise ValueError("--checkpoint needs --index INDEX (build one with `python -m mimic index`)")
    from mimic.serving.linker import Linker
    kw = {"shortlist": a.shortlist}
    if a.nil_threshold is not None:
        kw["nil_threshold"] = a.nil_threshold
    linker = Linker.from_paths(a.checkpoint, a.index, **kw)
    return analyze_linker(linker, mentions, dataset=name, model_version=a.model_version or "", top_k=a.top_k)


def _records_from_dump(a, ds, mentions: list[Mention], name: str) -> list[MentionAnalysis]:
    arrays = load_score_dump(a.scores)
    S, gold = arrays["S"], np.asarray(arrays["gold"], dtype=np.int64)
    M, N = S.shape
    if N != len(ds.kb):
        raise ValueError(f"{a.scores}: {N} entity columns but the KB of {a.data} has {len(ds.kb)} entities")
    # `evaluate --limit N` dumps the first N mentions of the split
    if M > len(mentions):
        raise ValueError(f"{a.scores}: {M} mention rows but split {a.split!r} of {a.data} has {len(mentions)} mentions")
    mentions = mentions[:M]
    expected = np.array([ds.kb.position(m.answer) for m in mentions], dtype=np.int64)
    if not np.array_equal(expected, gold):
        i = int(np.flatnonzero(expected != gold)[0])
        raise ValueError(f"{a.scores} does not match split {a.split!r} of {a.data}: mention {mentions[i].id!r} "
                         f"(row {i}) has gold position {int(gold[i])} in the dump, {int(expected[i])} in the data")
    return analyze_score_arrays(S, arrays.get("S_T"), arrays.get("S_V"), arrays.get("S_C"), gold,
                                [e.id for e in ds.kb], kb_names=[e.name for e in ds.kb], mentions=mentions,
                                dataset=name, model_version=a.model_version or Path(a.scores).stem,
                                nil_threshold=a.nil_threshold, top_k=a.top_k)


if __name__ == "__main__":  # pragma: no cover - convenience: python -m mimic.analysis.error_analysis ...
    _ap = argparse.ArgumentParser(prog="python -m mimic.analysis.error_analysis")
    add_analyze_parser(_ap.add_subparsers(dest="command", required=True))
    _args = _ap.parse_args()
    try:
        _args.func(_args)
    except (ValueError, FileNotFoundError) as _exc:
        print(f"error: {_exc}", file=sys.stderr)
        sys.exit(2)
