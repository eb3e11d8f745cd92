"""MELBench Wikidata-MEL, full-KB protocol: TF-IDF, zero-shot, trained MIMIC and MIMIC + lexical unit
side by side, with the lexical unit's ablations.

    python benchmarks/bench_melbench.py --model runs/melbench_fused [--ablations] [--json OUT]

`--model` is a checkpoint written by `python -m mimic train-lexical` (its config names the base
MIMIC checkpoint; its index and train/dev shortlist cache sit beside it as MODEL-index and
MODEL-work unless given). Rows, each on dev and test (17,391 entities):

  tfidf              character n-gram TF-IDF of the mention against names (no training)
  zero-shot          the offline backbone's text cosine, "mention [SEP] sentence" vs entity text
                     (what `MIMIC_CHECKPOINT=zero-shot` serves), over the whole KB
  mimic              (--mimic-full-kb) the base checkpoint's S = (S_T + S_V + S_C)/3 over the whole KB
  mimic-shortlist    the same S re-ranking the served shortlist (what serving did before S_L)
  mimic+lexical      the model: S = β·S_MIMIC + S_L on the served shortlist (`evaluate` = serving)
  ablation:*         (--ablations) the unit refitted on the cached train shortlists without some
                     features / as a linear unit / without MIMIC's score, β and epoch chosen on dev

Also printed: shortlist recall@K and `serving_agreement`, the fraction of sampled test mentions for
which `Linker.link` (one query at a time, the API path) returns the evaluated top-1.
Every row is one JSON line; the machine's load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from melbench_tfidf import DEFAULT, tfidf_ranks  # noqa: E402

from mimic.analysis.ranking import evaluate, metrics_from_ranks, ranks_from_scores  # noqa: E402
from mimic.data.melbench import load_melbench  # noqa: E402
from mimic.models.checkpoint import load_checkpoint, read_config  # noqa: E402
from mimic.models.lexical_unit import FEATURES  # noqa: E402
from mimic.models.linking_model import mention_text  # noqa: E402
from mimic.serving.index import KBIndex  # noqa: E402
from mimic.serving.linker import Linker  # noqa: E402
from mimic.training.lexical_unit_fit import (  # noqa: E402
    FitConfig,
    ShortlistSet,
    collect_shortlists,
    fit_lexical_unit,
    shortlist_ranks,
)
from mimic.training.text_memo import TextFeatureMemo  # noqa: E402

ABLATIONS = {
    "no-mimic (S_L alone)": dict(betas=(0.0,)),
    "linear unit": dict(hidden=0),
    "tfidf + dense only (learned weights of the n-gram unit)": dict(features=("tfidf", "dense_ctx")),
    "no sentence/other-mention context": dict(drop=("ctx_overlap", "other_overlap", "name_in_sent_tfidf", "paren_ctx")),
    "no retriever ranks": dict(drop=("lex_rr", "text_rr", "model_rr")),
    "no backbone cosine": dict(drop=("dense_ctx",)),
}


def fmt(ranks) -> dict:
    m = metrics_from_ranks(ranks)
    return {k: round(m[k], 4) for k in ("H@1", "H@5", "MRR")} | {"count": m["count"]}


def emit(rows: list, row: dict) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)


@torch.no_grad()
def zero_shot(model, index: KBIndex, mentions, batch: int = 64) -> list[int]:
    """Full-KB ranks under the backbone text cosine (the index's entity text vectors)."""
    E = index.text_global  # [N, D] unit-norm, KB order = index order
    pos = index.position
    out: list[int] = []
    for s in range(0, len(mentions), batch):
        b = mentions[s : s + batch]
        text, _ = model.backbone_features([mention_text(m) for m in b], [None] * len(b))
        q = torch.nn.functional.normalize(text.global_.float(), dim=-1)
        out += ranks_from_scores(q @ E.T, torch.tensor([pos[m.answer] for m in b])).tolist()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--model", required=True, help="checkpoint with a lexical unit (python -m mimic train-lexical)")
    ap.add_argument("--base", help="the MIMIC checkpoint without the unit (default: the model's base_checkpoint)")
    ap.add_argument("--index", help="default MODEL-index")
    ap.add_argument("--work", help="train/dev/test shortlist cache (default MODEL-work)")
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument(
        "--only-ablations",
        action="store_true",
        help="only the ablation rows, on the cached shortlists in --work (train, dev; test when cached)",
    )
    ap.add_argument("--ablation-epochs", type=int, default=FitConfig.epochs)
    ap.add_argument(
        "--mimic-full-kb",
        action="store_true",
        help="also rank every entity with the base MIMIC (exhaustive; the slowest row: minutes on a quiet CPU)",
    )
    ap.add_argument("--agreement-sample", type=int, default=500, help="test mentions linked one by one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not Path(a.data).exists():
        sys.exit(f"MELBench file not found at {a.data}")
    torch.set_num_threads(a.threads)
    model_dir = Path(a.model)
    index_dir = Path(a.index) if a.index else model_dir.parent / f"{model_dir.name}-index"
    work = Path(a.work) if a.work else model_dir.parent / f"{model_dir.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    base_dir = a.base or read_config(model_dir).get("base_checkpoint")
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    ds = load_melbench(a.data)
    fused = load_checkpoint(model_dir)
    base = load_checkpoint(base_dir, backbone=fused.backbone)
    index = KBIndex(index_dir, keep_global=True)
    linker = Linker(fused, index, absent_mention="warn", explain_top=0)
    rows: list[dict] = []
    splits = [] if a.only_ablations else a.splits.split(",")
    sets: dict[str, ShortlistSet] = {}
    # each mention is encoded once for the zero-shot row and the shortlists; the agreement check
    # below links without the memo, as serving does
    memo = TextFeatureMemo()
    with memo.installed(type(fused.backbone)):
        for split in splits:
            ms = ds.split(split)
            t = time.perf_counter()
            emit(
                rows,
                {"row": "tfidf", "split": split, **fmt(tfidf_ranks(ds, ms)), "s": round(time.perf_counter() - t, 1)},
            )
            t = time.perf_counter()
            emit(
                rows,
                {
                    "row": "zero-shot",
                    "split": split,
                    **fmt(zero_shot(base, index, ms)),
                    "s": round(time.perf_counter() - t, 1),
                },
            )
            if a.mimic_full_kb:
                t = time.perf_counter()
                ec = index.cache.apply(lambda x: x.float() if x.is_floating_point() else x)
                # index rows are in KB order for a freshly built index (checked), so positions agree
                assert index.ids == [e.id for e in ds.kb.entities], "index rows are not in KB order"
                res = evaluate(base, ds.kb, ms, entity_cache=ec, batch_size=64)
                emit(
                    rows, {"row": "mimic", "split": split, **fmt(res["ranks"]), "s": round(time.perf_counter() - t, 1)}
                )
            t = time.perf_counter()
            ss = collect_shortlists(linker, ms, progress=False)  # the served ranking, as `evaluate` measures it
            if split == "test":
                ss.save(work / "shortlists_test.npz")  # for --only-ablations
            sets[split] = ss
            emit(rows, {"row": "mimic-shortlist", "split": split, **fmt(shortlist_ranks(ss.S_mimic, ss.mask, ss.gold))})
            emit(
                rows,
                {
                    "row": "mimic+lexical",
                    "split": split,
                    **fmt(shortlist_ranks(ss.S, ss.mask, ss.gold)),
                    "shortlist_recall": round(float((ss.gold >= 0).mean()), 4),
                    "mimic_weight": fused.lexical_unit.config.mimic_weight,
                    "s": round(time.perf_counter() - t, 1),
                },
            )
    if "test" in sets and a.agreement_sample:
        ms = ds.split("test")
        ss = sets["test"]
        rng = np.random.default_rng(0)
        pick = rng.choice(len(ms), size=min(a.agreement_sample, len(ms)), replace=False)
        same = 0
        t = time.perf_counter()
        for i in pick:
            m = ms[i]
            top = linker.link(m.sentence, m.mention, top_k=1, explain=False).top
            evaluated = ss.entity[i, int(np.argmax(np.where(ss.mask[i], ss.S[i], -np.inf)))]
            same += top is not None and top.entity_id == evaluated
        emit(
            rows,
            {
                "row": "serving_agreement",
                "split": "test",
                "sample": len(pick),
                "same_top1": round(same / len(pick), 4),
                "s": round(time.perf_counter() - t, 1),
            },
        )
    if a.ablations or a.only_ablations:
        train = ShortlistSet.load(work / "shortlists_train.npz")
        if "dev" not in sets:
            sets["dev"] = ShortlistSet.load(work / "shortlists_dev.npz")
        if "test" not in sets and (work / "shortlists_test.npz").exists():
            sets["test"] = ShortlistSet.load(work / "shortlists_test.npz")
        dev = sets["dev"]
        for name, spec in ABLATIONS.items():
            t = time.perf_counter()
            spec = dict(spec)
            drop = spec.pop("drop", ())
            feats = spec.pop("features", tuple(f for f in FEATURES if f not in drop))
            fit = FitConfig(features=feats, epochs=a.ablation_epochs, **spec)
            unit, rep = fit_lexical_unit(train, dev, fit, log=lambda *_: None)
            row = {
                "row": f"ablation: {name}",
                "mimic_weight": unit.config.mimic_weight,
                "best_epoch": rep["best_epoch"],
            }
            for split, ss in sets.items():
                with torch.no_grad():
                    S = unit.fuse(torch.from_numpy(ss.S_mimic), unit(torch.from_numpy(ss.X))).numpy()
                row[split] = fmt(shortlist_ranks(S, ss.mask, ss.gold))
            row["s"] = round(time.perf_counter() - t, 1)
            emit(rows, row)
    summary = {
        "model": str(model_dir),
        "base": str(base_dir),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "text_memo": memo.stats(),
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
