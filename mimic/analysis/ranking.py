"""Full-KB evaluation (the paper's protocol): every mention ranked against every KB entity.

Ranking: rank = 1 + #{entities scoring strictly higher than the gold}
                  + #{entities scoring exactly the same and placed before the gold in KB order}.
This equals a stable sort by descending score, so ties are broken deterministically by KB position
(the official argsort left tie order arbitrary).

Two strategies:
  precomputed (default)  entity-side projections (`EntityCache`) computed once per evaluation;
                         each mention batch only runs the pairwise part, chunk by chunk.
  official               the reference loop: raw entity features are cached, and every mention
                         batch recomputes every entity projection (per 6000-entity chunk).
Peak memory is bounded by batch × KB for one score row buffer and batch × chunk for the pairwise
intermediates; `--scores-out` streams [mentions, entities] arrays to disk through memory maps.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimic.atomic import atomic_file
from mimic.data.schema import KnowledgeBase, Mention
from mimic.models.linking_model import ImageLoadStats, LinkingModel, entity_text, load_images, mention_text
from mimic.models.modeling_mimic import EntityCache, SideFeatures

HITS = (1, 3, 5, 10, 20)


def ranks_from_scores(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """scores [B, N], gold [B] (positions) -> rank [B] (1-based, ties by KB order)."""
    g = scores.gather(1, gold[:, None])
    higher = (scores > g).sum(1)
    pos = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = ((scores == g) & (pos < gold[:, None])).sum(1)
    return higher + tied_before + 1


def metrics_from_ranks(ranks: Sequence[int] | np.ndarray) -> dict:
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {"count": 0}
    out = {f"H@{k}": float((r <= k).mean()) for k in HITS}
    out.update({"MRR": float((1.0 / r).mean()), "MR": float(r.mean()), "count": int(r.size)})
    return out


class _ScoreWriter:
    """Streams S, S_T, S_V, S_C [M, N] float32 + gold, rank [M] into an .npz without holding them in RAM."""

    NAMES = ("S", "S_T", "S_V", "S_C")

    def __init__(self, path: str | Path, m: int, n: int):
        self.path = Path(path)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=".scores-", dir=self.path.parent if self.path.parent.exists() else None)
        )
        self.arrays = {
            k: np.lib.format.open_memmap(self.tmp / f"{k}.npy", mode="w+", dtype=np.float32, shape=(m, n))
            for k in self.NAMES
        }
        self.gold = np.zeros(m, dtype=np.int64)
        self.rank = np.zeros(m, dtype=np.int64)

    def write(self, rows, out: dict[str, torch.Tensor], gold, rank):
        for k in self.NAMES:
            self.arrays[k][rows] = out[k].float().cpu().numpy()
        self.gold[rows], self.rank[rows] = gold, rank

    def close(self):
        np.save(self.tmp / "gold.npy", self.gold)
        np.save(self.tmp / "rank.npy", self.rank)
        for a in self.arrays.values():
            a.flush()
        with atomic_file(self.path) as part, zipfile.ZipFile(part, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for k in (*self.NAMES, "gold", "rank"):
                z.write(self.tmp / f"{k}.npy", arcname=f"{k}.npy")
        self.abort()

    def abort(self):
        self.arrays = {}
        shutil.rmtree(self.tmp, ignore_errors=True)


@torch.no_grad()
def encode_kb_sides(
    model: LinkingModel,
    kb: KnowledgeBase,
    batch_size: int = 64,
    progress: bool = False,
    image_stats: ImageLoadStats | None = None,
) -> SideFeatures:
    """Raw (LayerNorm'd) entity features for the `official` strategy (what its KB cache holds)."""
    parts = []
    ents = kb.entities
    for s in range(0, len(ents), batch_size):
        chunk = ents[s : s + batch_size]
        imgs = load_images([e.images[0] if e.images else None for e in chunk], model.config.mode, image_stats)
        parts.append(model.encode([entity_text(e) for e in chunk], imgs))
    return SideFeatures(**{k: torch.cat([getattr(p, k) for p in parts]) for k in SideFeatures.__dataclass_fields__})


@torch.no_grad()
def evaluate(
    model: LinkingModel,
    kb: KnowledgeBase,
    mentions: Sequence[Mention],
    *,
    batch_size: int = 32,
    chunk_size: int = 1024,
    strategy: str = "precomputed",
    entity_cache: EntityCache | None = None,
    scores_out: str | Path | None = None,
    progress: bool = False,
    kb_batch_size: int = 64,
) -> dict:
    """Rank every mention against the whole KB. Returns metrics plus counts and timings.

    A model with a lexical unit ranks the serving shortlist, not the whole KB: it is evaluated
    through the linker (`mimic.analysis.served_ranking`, strategy "served")."""
    if getattr(model, "lexical_unit", None) is not None:
        if scores_out is not None:
            raise ValueError("--scores-out needs full-KB scores; a model with a lexical unit ranks its shortlist")
        from mimic.analysis.served_ranking import evaluate_served  # serving imports this module's helpers

        return evaluate_served(
            model, kb, mentions, batch_size=max(batch_size, 64), kb_batch_size=kb_batch_size, progress=progress
        )
    model.eval()
    device = model.device
    missing = [m.id for m in mentions if m.answer not in kb]
    if missing:
        raise ValueError(f"{len(missing)} mentions have a gold entity that is not in the KB (first: {missing[:3]})")
    stats = ImageLoadStats()
    t0 = time.perf_counter()
    if strategy == "precomputed":
        ecache = (
            entity_cache
            if entity_cache is not None
            else model.entity_cache(kb.entities, batch_size=kb_batch_size, progress=progress, image_stats=stats)
        )
        ecache = ecache.apply(lambda t: t.to(device))
        raw = None
    elif strategy == "official":
        raw = encode_kb_sides(model, kb, kb_batch_size, progress, stats)
        ecache = None
    else:
        raise ValueError(f"strategy must be 'precomputed' or 'official', got {strategy!r}")
    t_kb = time.perf_counter() - t0

    N, M = len(kb), len(mentions)
    writer = _ScoreWriter(scores_out, M, N) if scores_out else None
    ranks = np.zeros(M, dtype=np.int64)
    # Fixed mode masks padding and trims each tile to its longest text, so grouping entities of
    # similar length into the same chunk is exact and saves most of the padded work. Scores are
    # written back in KB order. (Compat attends to padding: its tiles keep all positions.)
    kb_order = None
    if ecache is not None and model.config.fixed and N > chunk_size:
        kb_order = torch.argsort(ecache.t_mask.sum(1).cpu(), stable=True).to(device)
        ecache = ecache[kb_order]
    # Mentions of similar length share a batch for the same reason (ranks are per mention).
    m_order = sorted(range(M), key=lambda i: len(mention_text(mentions[i]))) if model.config.fixed else list(range(M))
    it = range(0, M, batch_size)
    if progress:
        it = tqdm(it, desc="evaluate", unit="batch")
    t1 = time.perf_counter()
    try:
        for s in it:
            idx = np.asarray(m_order[s : s + batch_size])
            batch = [mentions[i] for i in idx]
            mc = model.mention_cache(batch, image_stats=stats)
            gold = torch.tensor([kb.position(m.answer) for m in batch], device=device)
            rows = {k: torch.empty(len(batch), N, device=device) for k in ("S", "S_T", "S_V", "S_C")}
            for c in range(0, N, chunk_size):
                sl = slice(c, min(c + chunk_size, N))
                if raw is not None:
                    side = SideFeatures(**{k: getattr(raw, k)[sl] for k in SideFeatures.__dataclass_fields__})
                    ec = model.heads.entity_cache(side)  # recomputed for every batch (official)
                else:
                    assert ecache is not None  # the "precomputed" strategy: raw is None, ecache is set
                    ec = ecache[sl]
                out = model.heads.score(mc, ec)
                cols = sl if kb_order is None else kb_order[sl]
                for k in rows:
                    rows[k][:, cols] = getattr(out, k).float()
            r = ranks_from_scores(rows["S"], gold).cpu().numpy()
            ranks[idx] = r
            if writer:
                writer.write(idx, rows, gold.cpu().numpy(), r)
        if writer:
            writer.close()
    except BaseException:
        if writer:
            writer.abort()
        raise
    t_rank = time.perf_counter() - t1
    res = metrics_from_ranks(ranks)
    res.update(
        {
            "entities": N,
            "strategy": strategy,
            "kb_encode_seconds": round(t_kb, 3),
            "rank_seconds": round(t_rank, 3),
            "mentions_per_second": round(M / t_rank, 2) if t_rank > 0 else None,
            "images": dict(stats),
        }
    )
    res["ranks"] = ranks.tolist()
    return res
