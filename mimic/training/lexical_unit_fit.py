"""Training the lexical unit S_L on the shortlist the linker serves (BLINK-style hard negatives).

    shortlists = collect_shortlists(linker, train_mentions)      # the linker's own retrieval + features
    unit, report = fit_lexical_unit(shortlists, collect_shortlists(linker, dev_mentions))

Each mention's shortlist (the K candidates the serving linker retrieves: model, text and lexical
retrievers fused by reciprocal rank) is one softmax: cross-entropy of the gold against the other
K - 1 candidates, which are the retrievers' hardest negatives. Mentions whose shortlist misses the
gold (about 0.2 % on MELBench) are left out of training: placing them is not the re-ranker's job.
AdamW with a cosine schedule; after every epoch S_L alone is ranked on dev and the best epoch kept.
Then the weight β of MIMIC's own score in S = β·S_MIMIC + S_L is chosen on dev from a grid: MIMIC's
scores on its own training mentions are over-confident, so β is fitted where they are honest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mimic.analysis.ranking import metrics_from_ranks
from mimic.data.schema import Dataset, Mention
from mimic.models.lexical_unit import FEATURES, LexicalUnit, LexicalUnitConfig
from mimic.serving.linker import Linker, LinkInputError


@dataclass
class ShortlistSet:
    """Shortlists of M mentions, padded to K: features X [M, K, F], mask [M, K] (a real candidate),
    S_mimic [M, K] MIMIC's S, S [M, K] the linker's ranking score (S_mimic fused with S_L when the
    model has a lexical unit), gold [M] the gold's position in its shortlist (-1: not retrieved),
    entity [M, K] the candidates' KB ids ("" for padding)."""

    X: np.ndarray
    mask: np.ndarray
    S_mimic: np.ndarray
    S: np.ndarray
    gold: np.ndarray
    entity: np.ndarray
    refused: list[str] = field(default_factory=list)  # ids of mentions the linker refused

    def save(self, path: str | Path) -> None:
        np.savez(path, X=self.X, mask=self.mask, S_mimic=self.S_mimic, S=self.S, gold=self.gold, entity=self.entity)

    @classmethod
    def load(cls, path: str | Path) -> ShortlistSet:
        d = np.load(path)
        return cls(d["X"], d["mask"], d["S_mimic"], d["S"], d["gold"], d["entity"])

    def __len__(self) -> int:
        return len(self.gold)


def mention_queries(mentions: Sequence[Mention]) -> list[dict]:
    """Linker queries for dataset mentions: the span when known, else the mention text (located
    tolerantly), the image, and the sentence's other mentions as context."""
    by_sentence: dict[str, list[str]] = {}
    for m in mentions:
        by_sentence.setdefault(m.sentence, []).append(m.id)
    text = {m.id: m.mention for m in mentions}
    out = []
    for m in mentions:
        span = (m.start, m.end) if m.start is not None and m.end is not None else None
        others = [text[i] for i in by_sentence[m.sentence] if i != m.id]
        out.append({"sentence": m.sentence, "mention": span or m.mention, "image": m.image, "other_mentions": others})
    return out


@torch.no_grad()
def collect_shortlists(
    linker: Linker, mentions: Sequence[Mention], batch_size: int = 64, progress: bool = True
) -> ShortlistSet:
    """Run the linker's retrieval and scoring (`Linker.shortlists`) over `mentions`."""
    M, K, F = len(mentions), linker.shortlist, len(FEATURES)
    X = np.zeros((M, K, F), np.float32)
    mask = np.zeros((M, K), bool)
    S_mimic = np.zeros((M, K), np.float32)
    S = np.zeros((M, K), np.float32)
    gold = np.full(M, -1, np.int64)
    entity = np.full((M, K), "", dtype=object)
    refused = []
    queries = mention_queries(mentions)
    starts = range(0, M, batch_size)
    for s in tqdm(starts, desc="shortlists", unit="batch", disable=not progress):
        good, qs = [], []
        for i in range(s, min(s + batch_size, M)):
            q = queries[i]
            try:
                qs.append(linker._query(q["sentence"], q["mention"], q["image"], q["other_mentions"]))
                good.append(i)
            except LinkInputError:
                refused.append(mentions[i].id)
        if not qs:
            continue
        scored, _, _ = linker.shortlists(qs, features=True)
        for i, sl in zip(good, scored):
            k = len(sl.rows)
            assert sl.features is not None
            X[i, :k] = sl.features
            mask[i, :k] = True
            S_mimic[i, :k] = sl.S_mimic.float().cpu().numpy()
            S[i, :k] = sl.S.float().cpu().numpy()
            ids = [linker.index.ids[int(r)] for r in sl.rows]
            entity[i, :k] = ids
            if mentions[i].answer in ids:
                gold[i] = ids.index(mentions[i].answer)
    return ShortlistSet(X, mask, S_mimic, S, gold, entity.astype(str), refused)


def shortlist_ranks(scores: np.ndarray, mask: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of the gold in each re-ranked shortlist (stable: ties keep retrieval order, as
    serving does); K + 1 when the shortlist misses the gold (a miss for H@1..H@K)."""
    K = scores.shape[1]
    s = np.where(mask, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    pos = np.argmax(order == gold[:, None], axis=1) + 1
    return np.where(gold >= 0, pos, K + 1)


def _metrics(ranks: np.ndarray) -> dict:
    m = metrics_from_ranks(ranks)
    return {k: round(m[k], 4) for k in ("H@1", "H@5", "MRR")}


@dataclass
class FitConfig:
    hidden: int = 64  # 0: linear
    features: tuple[str, ...] = FEATURES
    epochs: int = 15
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    seed: int = 0
    # candidate weights of MIMIC's S in S = β·S_MIMIC + S_L, chosen on dev (0: S_L alone)
    betas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def fit_lexical_unit(train: ShortlistSet, dev: ShortlistSet, cfg: FitConfig | None = None, log=print):
    """-> (LexicalUnit with the best dev epoch and β, report dict)."""
    cfg = cfg or FitConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    unit = LexicalUnit(LexicalUnitConfig(features=cfg.features, hidden=cfg.hidden))
    cols = torch.tensor(unit.config.columns)
    Xtr = torch.from_numpy(train.X)
    real = Xtr[torch.from_numpy(train.mask)][:, cols]
    unit.mean.copy_(real.mean(0))
    unit.std.copy_(real.std(0) + 1e-6)
    keep = torch.from_numpy(train.gold >= 0)
    Xk, Mk, Gk = Xtr[keep], torch.from_numpy(train.mask)[keep], torch.from_numpy(train.gold)[keep]
    Xdev = torch.from_numpy(dev.X)

    def dev_scores() -> np.ndarray:
        unit.eval()
        with torch.no_grad():
            return unit(Xdev).numpy()

    opt = torch.optim.AdamW(unit.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.epochs))
    best, best_state, best_epoch, curve = -1.0, None, -1, []
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        unit.train()
        perm = torch.randperm(len(Xk), generator=gen)
        total = 0.0
        for b in range(0, len(perm), cfg.batch_size):
            idx = perm[b : b + cfg.batch_size]
            logits = unit(Xk[idx]).masked_fill(~Mk[idx], float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, Gk[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        m = _metrics(shortlist_ranks(dev_scores(), dev.mask, dev.gold))
        curve.append({"epoch": epoch, "loss": round(total / max(1, len(perm)), 4), "dev": m})
        log(f"lexical unit epoch {epoch}: loss {curve[-1]['loss']}, dev (S_L alone) {m}")
        if m["H@1"] + m["MRR"] > best:
            best, best_epoch = m["H@1"] + m["MRR"], epoch
            best_state = {k: v.clone() for k, v in unit.state_dict().items()}
    if best_state is not None:
        unit.load_state_dict(best_state)
    s_l = dev_scores()
    grid: list[dict] = []
    for beta in cfg.betas:
        m = _metrics(shortlist_ranks(beta * dev.S_mimic + s_l, dev.mask, dev.gold))
        grid.append({"mimic_weight": beta, "dev": m})
    chosen = max(grid, key=lambda g: (g["dev"]["H@1"] + g["dev"]["MRR"], -g["mimic_weight"]))
    unit.config.mimic_weight = float(chosen["mimic_weight"])
    unit.eval()
    report = {
        "best_epoch": best_epoch,
        "epochs": curve,
        "mimic_weight_grid": grid,
        "mimic_weight": unit.config.mimic_weight,
        "dev": chosen["dev"],
        "train_mentions": int(keep.sum()),
        "train_shortlist_recall": round(float((train.gold >= 0).mean()), 4) if len(train) else None,
        "dev_shortlist_recall": round(float((dev.gold >= 0).mean()), 4) if len(dev) else None,
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }
    return unit, report


def train_lexical_unit(
    checkpoint: str | Path,
    data: str | Path | Dataset,
    output: str | Path,
    *,
    index: str | Path | None = None,
    work: str | Path | None = None,
    fit: FitConfig | None = None,
    shortlist: int = 64,
    batch_size: int = 64,
    progress: bool = True,
    log=print,
) -> dict:
    """The whole recipe after MIMIC's heads are trained: index the dataset's KB with the checkpoint
    (`index`, reused when it exists), collect train and dev shortlists (cached in `work`), fit the
    unit, and write checkpoint + unit to `output`. Returns the report."""
    # lazy: the recipe's inputs and the serving stack, not needed to import the fitting functions
    from mimic.models.checkpoint import load_checkpoint
    from mimic.training.text_memo import shared_memo

    t0 = time.perf_counter()
    output = Path(output)
    index = Path(index) if index else output.parent / f"{output.name}-index"
    work = Path(work) if work else output.parent / f"{output.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    if model.config.mode != "fixed":
        raise ValueError("the lexical unit is a fixed-mode extension; this checkpoint is in compat mode")
    model.attach_lexical_unit(None)  # a unit already in the checkpoint is replaced, not stacked
    with shared_memo(model.backbone):  # the trainer's memo when called by it: no text is encoded twice
        return _train_lexical_unit(
            model, checkpoint, data, output, index, work, fit, shortlist, batch_size, progress, log, t0
        )


def _train_lexical_unit(model, checkpoint, data, output, index, work, fit, shortlist, batch_size, progress, log, t0):
    """`train_lexical_unit` once the checkpoint is loaded (the arguments are its own)."""
    from mimic.data.formats import load_dataset
    from mimic.models.checkpoint import read_config, save_checkpoint
    from mimic.serving.index import KBIndex

    ds = data if isinstance(data, Dataset) else load_dataset(data)
    if (index / "index.json").exists():
        kb_index = KBIndex(index)
    else:
        kb_index = KBIndex.build(model, ds.kb, index, progress=progress)
    t_index = time.perf_counter() - t0
    linker = Linker(model, kb_index, shortlist=shortlist, absent_mention="warn", explain_top=0)
    sets = {}
    for split in ("train", "dev"):
        f = work / f"shortlists_{split}.npz"
        if f.exists():
            sets[split] = ShortlistSet.load(f)
        else:
            sets[split] = collect_shortlists(linker, ds.split(split), batch_size=batch_size, progress=progress)
            sets[split].save(f)
    t_collect = time.perf_counter() - t0 - t_index
    unit, report = fit_lexical_unit(sets["train"], sets["dev"], fit, log=log)
    name = data.name if isinstance(data, Dataset) else Path(data).name
    unit.config.trained_on = {"data": name, "split": "train", "chosen_on": "dev", "shortlist": shortlist}
    model.attach_lexical_unit(unit)
    base = read_config(checkpoint)
    report.update(
        {
            "index_seconds": round(t_index, 1),
            "collect_seconds": round(t_collect, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
        }
    )
    save_checkpoint(
        model,
        output,
        backbone_trained=bool(base.get("backbone_trained")),
        metrics={"dev": report["dev"], "lexical_unit": report},
        extra={"base_checkpoint": str(checkpoint)},
    )
    return report
