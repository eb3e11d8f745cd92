"""Learning curve of the correction loop: N accepted corrections -> `retrain` -> H@1 / MRR on dev and test.

    python benchmarks/bench_learning_curve.py --n 0,250,1000,4000 --poison 500 --eval-max-mentions 1000

Everything goes through the real store and the real retraining job, as the app drives them:

1. A fresh store (temporary DATA_DIR, SQLite). The KB of `--data` (MELBench Wikidata-MEL by default:
   17,391 entities, names only) is imported by `AnnotationStore.import_kb` with an admin as author,
   and the train split's mentions are imported into the annotation queue by `import_mentions`
   (mentions the store refuses, e.g. a mention that does not occur verbatim in its sentence, are
   counted and left out).
2. Simulated annotators (three annotators and a reviewer) work the queue: `next_item` (leased, in the
   queue's order), then `submit` of the gold entity with the time spent. Now and then, as in real
   use, an annotator misclicks, presses undo (`undo`) and answers again; an annotator's wrong answer
   is overruled by the reviewer (the store's gold rule: a reviewer's decision wins); the reviewer
   confirms an item. Every gold label is checked to resolve to the dataset's answer under the
   store's gold rule (`gold_mentions`) before a run.
3. When the store holds N accepted corrections (N from `--n`, cumulative: the same annotators keep
   working), one retraining run (`retraining.run.run_retrain`, what `python -m retraining` and the
   app's button run): the store's export of the gold links, 20 % held out by uid hash, training,
   both judges, version registered, promoted if the rule passes. Its base dataset holds only the
   dev split (the first `--eval-max-mentions` dev mentions, written as a JSONL dataset): dev is the
   promotion rule's trusted judge and adds no training mention, so the candidate learns from the
   N corrections alone.
4. The start model, "a model that never saw them": retraining serves what the store has promoted,
   else `--checkpoint`, else the zero-shot ranking of the backbone; a fresh store has nothing
   promoted, so N = 0 is the zero-shot ranking (`mimic.serving.zeroshot`, what the app serves
   without a checkpoint), and each candidate is a fresh MIMIC model on that frozen backbone trained
   on the N corrections (`prefer_promoted=False` for the curve runs: every point starts from the same
   zero-shot model, so the points differ only by N).
5. Each candidate (and the zero-shot model for N = 0) is ranked on the dev and test subsets by
   `retraining.evaluation.evaluate_models`, the job's own evaluation (dev: the job's own
   trusted-judge figure; test: evaluated here the same way): against the FULL KB, or, for a
   candidate with the lexical unit S_L (which the job fits on the corrections when the KB has
   >= 1,000 entities; `--lexical`), over the served shortlist as the linker ranks it.
6. `--poison K`: after the curve, an annotator labels K further queue items with random wrong
   entities, and one more run starts from what serves (`prefer_promoted=True`, the job's default):
   the rule must refuse it and the promoted version and its checkpoint files stay as they were.

The backbone is frozen (always on the CPU), so its text outputs do not change between runs; they are
computed once per distinct text and reused by every run (`mimic.training.text_memo`, installed here
for the whole benchmark and saved to `--feature-cache`; each job run shares it, as a run shares its
own memo between its training, its lexical unit and its judge). Output: one JSON line per N, one for the
poison run, then a summary line (with the machine's load average). `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mimic.training.text_memo import TextFeatureMemo  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"
ANNOTATORS = ("ana", "ben", "chloe")
REVIEWER = "rita"
POISONER = "mallory"
METRIC_KEYS = ("H@1", "H@5", "MRR", "count")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _short(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    return {k: (round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k]) for k in METRIC_KEYS}


# ------------------------------------------------------------------------------------------------
# Simulated annotators
# ------------------------------------------------------------------------------------------------
@dataclass
class Annotation:
    """The simulated annotators' state: who works next, what they did."""

    gold: dict[str, str]  # mention uid -> entity id
    entity_ids: list[str]
    rng: random.Random
    p_undo: float = 0.04  # misclick, undo, answer again
    p_overruled: float = 0.02  # a wrong answer that the reviewer overrules
    p_confirmed: float = 0.03  # the reviewer confirms the annotator's answer
    done: int = 0
    turn: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def _wrong(self, gold: str) -> str:
        while True:
            e = self.rng.choice(self.entity_ids)
            if e != gold:
                return e

    def _bump(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _secs(self) -> float:
        return round(self.rng.uniform(2.0, 15.0), 1)

    def work_until(self, store, target: int) -> None:
        """Annotators take items from their queues and answer until `target` mentions are decided."""
        t0 = time.perf_counter()
        while self.done < target:
            who = ANNOTATORS[self.turn % len(ANNOTATORS)]
            self.turn += 1
            item = store.next_item(who)
            if item is None:
                raise RuntimeError(f"{who}'s queue is empty after {self.done} corrections (asked for {target})")
            uid = item.mention.uid
            gold = self.gold[uid]
            r = self.rng.random()
            if r < self.p_undo:
                store.submit(who, uid, entity_id=self._wrong(gold), seconds_spent=self._secs())
                store.undo(who)
                again = store.next_item(who)  # the undone mention comes back first
                if again is None or again.mention.uid != uid:
                    raise RuntimeError(f"after undo {who} got {again and again.mention.uid}, not {uid}")
                store.submit(who, uid, entity_id=gold, seconds_spent=self._secs())
                self._bump("undo_then_gold")
            elif r < self.p_undo + self.p_overruled:
                store.submit(who, uid, entity_id=self._wrong(gold), seconds_spent=self._secs())
                store.submit(REVIEWER, uid, entity_id=gold, seconds_spent=self._secs(), comment="fixed in review")
                self._bump("wrong_overruled_by_reviewer")
            else:
                store.submit(who, uid, entity_id=gold, seconds_spent=self._secs())
                if r < self.p_undo + self.p_overruled + self.p_confirmed:
                    store.submit(REVIEWER, uid, entity_id=gold, seconds_spent=self._secs())
                    self._bump("confirmed_by_reviewer")
                else:
                    self._bump("gold")
            self.done += 1
        self.seconds += time.perf_counter() - t0

    def poison(self, store, k: int) -> None:
        """One more annotator labels k queue items with random wrong entities."""
        store.add_annotator(POISONER)
        for _ in range(k):
            item = store.next_item(POISONER)
            if item is None:
                raise RuntimeError(f"the queue ran out after poisoning fewer than {k} items")
            uid = item.mention.uid
            store.submit(POISONER, uid, entity_id=self._wrong(self.gold[uid]), seconds_spent=1.0)


def check_gold(store, gold: dict[str, str], expected: int) -> dict:
    """The store's gold rule must give back exactly the dataset's answers for the decided mentions."""
    got = store.gold_mentions(nil=False)
    wrong = [g.mention.id for g in got if g.mention.answer != gold.get(g.mention.id)]
    if len(got) != expected or wrong:
        raise RuntimeError(f"gold rule gave {len(got)} labels (expected {expected}), {len(wrong)} wrong: {wrong[:5]}")
    return {"gold_labels": len(got), "agree_with_dataset": True}


# ------------------------------------------------------------------------------------------------
# The curve
# ------------------------------------------------------------------------------------------------
def _tree_digest(path: str | None) -> str | None:
    if not path:
        return None
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _heldout(m: dict) -> dict:
    """The held-out judge's figures of a run (none when no correction fell on the held-out side)."""
    s, c = m["serving"].get("heldout") or {}, m["candidate"].get("heldout") or {}
    if not c.get("count"):
        return {"count": 0}
    return {"serving_MRR": round(s["MRR"], 4), "candidate_MRR": round(c["MRR"], 4), "count": c["count"]}


def _lexical(m: dict) -> dict:
    """The job's lexical-unit record, short: fitted (β, epoch, its selection-slice figures), kept, none."""
    lex = m.get("lexical_unit") or {}
    rep = lex.get("report") or {}
    out = {"status": lex.get("status")}
    if rep:
        out.update(
            beta=rep.get("mimic_weight"),
            best_epoch=rep.get("best_epoch"),
            fit=rep.get("fit_corrections"),
            select=rep.get("select_corrections"),
            select_metrics=rep.get("dev"),
            seconds=rep.get("seconds"),
        )
    elif lex.get("reason"):
        out["reason"] = lex["reason"]
    return out


def _epochs_for(n_train: int, a) -> int:
    """--epochs auto: enough epochs for about --min-steps optimiser steps (at least --base-epochs,
    at most --max-epochs): a few hundred corrections are otherwise a dozen steps from random heads."""
    if a.epochs != "auto":
        return int(a.epochs)
    steps_per_epoch = max(1, math.ceil(n_train / a.batch_size))
    return max(a.base_epochs, min(a.max_epochs, math.ceil(a.min_steps / steps_per_epoch)))


def train_base_model(a, kb, mentions: list, out: Path) -> tuple[str, dict]:
    """--start base: a MIMIC model trained on `mentions` (a part of train the annotators never see)
    by the library's trainer, as `python -m mimic train` would (frozen backbone, fresh heads, the
    job's settings for fresh heads: lr 1e-3). -> (checkpoint folder, figures)."""
    from mimic.data.schema import Dataset
    from mimic.training.trainer import TrainConfig, train

    epochs = a.base_train_epochs
    tc = TrainConfig(
        output=str(out),
        backbone=a.backbone,
        model="mimic",
        mode="fixed",
        lr=1e-3,
        adam_eps=1e-8,
        no_decay="standard",
        batch_size=a.batch_size,
        epochs=epochs,
        val_every=epochs + 1,
        patience=epochs + 1,
        seed=a.seed,
        freeze_backbone=True,
        device="cpu",
        eval_batch_size=a.eval_batch_size,
        eval_chunk_size=a.eval_chunk_size,
        progress=False,
        test_after=False,
    )
    t0 = time.perf_counter()
    summary = train(tc, Dataset(kb, {"train": mentions}, name="curve-base"))
    history = summary.get("history", [])
    return str(out / "best"), {
        "train_mentions": len(mentions),
        "epochs": len(history),
        "final_loss": (history or [{}])[-1].get("train_loss"),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run_curve(a, emit) -> dict:
    """The whole benchmark (see the module docstring); `emit(dict)` receives each result line."""
    import torch

    from db import open_store
    from mimic.backbones import load_backbone
    from mimic.data.formats import load_dataset
    from mimic.data.jsonl import write_jsonl_dataset
    from mimic.data.schema import Dataset
    from mimic.models.checkpoint import load_checkpoint
    from mimic.serving.zeroshot import zero_shot_model
    from retraining import RetrainConfig
    from retraining.evaluation import evaluate_models
    from retraining.run import run_retrain

    t_start = time.perf_counter()
    load_start = load_avg()
    ns = sorted({int(x) for x in str(a.n).split(",") if x.strip()})
    if not ns or ns[0] < 0:
        raise ValueError(f"--n must list non-negative numbers, got {a.n!r}")
    ds = load_dataset(a.data)
    limit = a.eval_max_mentions or None
    dev = list(ds.splits.get("dev", []))[:limit]
    test = list(ds.splits.get("test", []))[:limit]
    train = list(ds.splits.get("train", []))
    if not dev or not test or not train:
        raise ValueError(f"{a.data} needs train, dev and test splits")
    base_part: list = []
    if a.start == "base":  # a disjoint part of train trains the start model; the rest is the queue
        from db.export import split_of

        fr = (a.base_fraction, 0.0, 1.0 - a.base_fraction)
        base_part = [m for m in train if split_of(m.id, fr, seed="curve-base") == "train"]
        train = [m for m in train if split_of(m.id, fr, seed="curve-base") != "train"]

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="curve-"))
    data_dir = work / "data"
    if data_dir.exists():
        raise FileExistsError(f"{data_dir} exists: the benchmark starts from a fresh store (give another --work)")
    base_dir = write_jsonl_dataset(Dataset(ds.kb, {"dev": dev}, name="judge"), work / "judge_dev")

    store = open_store(data_dir)
    setup: dict = {"work": str(work), "data": str(a.data)}
    t0 = time.perf_counter()
    store.add_annotator("admin", "admin")
    for who in ANNOTATORS:
        store.add_annotator(who)
    store.add_annotator(REVIEWER, "reviewer")
    setup["kb_import"] = store.import_kb(ds.kb, author="admin")
    records = [
        {"uid": m.id, "sentence": m.sentence, "mention": m.mention, "start": m.start, "end": m.end, "image": m.image}
        for m in train
    ]
    rep = store.import_mentions(records, default_source="train", on_error="skip")
    setup["mentions_imported"], setup["mentions_refused"] = rep.created, len(rep.errors)
    setup["refused_examples"] = rep.errors[:3]
    setup["setup_seconds"] = round(time.perf_counter() - t0, 1)
    queued = rep.created
    need = ns[-1] + (a.poison or 0)
    if queued < need:
        raise ValueError(f"only {queued} train mentions in the queue, the curve and poison need {need}")
    kb = store.knowledge_base()
    gold = {m.id: m.answer for m in train}
    ann = Annotation(gold, [e.id for e in kb], random.Random(a.seed))

    backbone = load_backbone(a.backbone)
    memo = TextFeatureMemo()
    if a.feature_cache and Path(a.feature_cache).is_file():
        setup["feature_cache_rows_loaded"] = memo.load(a.feature_cache)
    evals: dict = {"batch_size": a.eval_batch_size, "chunk_size": a.eval_chunk_size}
    lines: list[dict] = []

    def retrain_cfg(epochs: int, prefer_promoted: bool) -> RetrainConfig:
        return RetrainConfig(
            data_dir=str(data_dir),
            base_data=str(base_dir),
            backbone=a.backbone,
            checkpoint=start_ckpt,
            prefer_promoted=prefer_promoted,
            epochs=epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            device="cpu",
            seed=a.seed,
            eval_batch_size=a.eval_batch_size,
            eval_chunk_size=a.eval_chunk_size,
            lexical_unit={"auto": None, "on": True, "off": False}[a.lexical],
        )

    def progress(p: dict) -> None:
        if a.verbose:
            print(f"  [{p.get('step')}] {p.get('message', '')}", file=sys.stderr, flush=True)

    start_ckpt: str | None = None
    with memo.installed(type(backbone)), torch.no_grad():
        t0 = time.perf_counter()
        if a.start == "base":
            with torch.enable_grad():
                start_ckpt, setup["base_model"] = train_base_model(a, kb, base_part, work / "base")
            start = load_checkpoint(start_ckpt, "cpu", backbone=backbone)
            start_name = f"base model trained on {len(base_part)} other train mentions (the job's serving checkpoint)"
            zres = evaluate_models({"start": start}, set(), kb, {"dev": dev, "test": test}, **evals)["start"]
            del start
        else:
            zs = zero_shot_model(backbone, "mimic")
            start_name = "zero-shot (the retraining job's start model on a fresh store)"
            zres = evaluate_models({"start": zs}, {"start"}, kb, {"dev": dev, "test": test}, **evals)["start"]
        t_zs = time.perf_counter() - t0
        if a.feature_cache:
            memo.save(a.feature_cache)
        for n in ns:
            t_ann = ann.seconds
            ann.work_until(store, n)
            gold_check = check_gold(store, gold, n)
            row: dict = {"n": n, "annotate_seconds": round(ann.seconds - t_ann, 1), **gold_check}
            if n == 0:
                row.update(
                    model=start_name,
                    dev=_short(zres["dev"]),
                    test=_short(zres["test"]),
                    evaluate_seconds=round(t_zs, 1),
                )
            else:
                n_train_est = round(n * 0.8)
                epochs = _epochs_for(n_train_est, a)
                t0 = time.perf_counter()
                with torch.enable_grad():
                    res = run_retrain(retrain_cfg(epochs, prefer_promoted=False), progress, store=store)
                t_job = time.perf_counter() - t0
                m = res["metrics"]
                cand = load_checkpoint(res["paths"]["checkpoint"], "cpu", backbone=backbone)
                t0 = time.perf_counter()
                tres = evaluate_models({"candidate": cand}, set(), kb, {"test": test}, **evals)["candidate"]
                row.update(
                    model=f"candidate {res['version']} ("
                    + ("fine-tuned from the base model" if start_ckpt else "fresh MIMIC heads")
                    + (" + lexical unit, served" if m["candidate"].get("scoring") == "served" else "")
                    + ", frozen backbone)",
                    version=res["version"],
                    dev=_short(m["candidate"].get("base_dev")),
                    test=_short(tres["test"]),
                    start_dev_in_job=_short(m["serving"].get("base_dev")),
                    heldout=_heldout(m),
                    scoring=m["candidate"].get("scoring"),
                    lexical_unit=_lexical(m),
                    train_corrections=m["data"]["train_corrections"],
                    select_corrections=m["data"].get("lexical_select_corrections", 0),
                    heldout_corrections=m["data"]["heldout_corrections"],
                    epochs=m["train"]["epochs"],
                    lr=m["train"]["lr"],
                    final_loss=m["train"]["final_loss"],
                    promoted=res["promoted"],
                    reason=res["reason"],
                    job_seconds=round(t_job, 1),
                    train_seconds=m["train"]["seconds"],
                    evaluate_test_seconds=round(time.perf_counter() - t0, 1),
                )
                del cand
            row["load_avg"] = load_avg()
            lines.append(row)
            emit(row)

        poison_row = None
        if a.poison:
            ann.poison(store, a.poison)
            before = store.promoted_model_version()
            ckpt = before.checkpoint if before else None
            digest = _tree_digest(ckpt)
            t0 = time.perf_counter()
            with torch.enable_grad():
                res = run_retrain(
                    retrain_cfg(_epochs_for(round(ns[-1] * 0.8), a), prefer_promoted=True), progress, store=store
                )
            t_job = time.perf_counter() - t0
            m = res["metrics"]
            after = store.promoted_model_version()
            cand = load_checkpoint(res["paths"]["checkpoint"], "cpu", backbone=backbone)
            tres = evaluate_models({"candidate": cand}, set(), kb, {"test": test}, **evals)["candidate"]
            poison_row = {
                "poison": a.poison,
                "on_top_of": ns[-1],
                "serving_before": m["serving"]["version"],
                "serving_dev": _short(m["serving"].get("base_dev")),
                "serving_scoring": m["serving"].get("scoring"),
                "candidate_scoring": m["candidate"].get("scoring"),
                "lexical_unit": _lexical(m),
                "implausible": m.get("implausible_heldout"),
                "candidate": res["version"],
                "candidate_dev": _short(m["candidate"].get("base_dev")),
                "candidate_test": _short(tres["test"]),
                "heldout": _heldout(m),
                "promoted": res["promoted"],
                "reason": res["reason"],
                "refused": not res["promoted"],
                "promoted_version_unchanged": (before.name if before else None) == (after.name if after else None),
                "serving_checkpoint_unchanged": _tree_digest(ckpt) == digest,
                "job_seconds": round(t_job, 1),
                "load_avg": load_avg(),
            }
            emit(poison_row)

    store.close()
    if a.feature_cache:
        memo.save(a.feature_cache)
    curve = [(r["n"], r["dev"]["H@1"], r["dev"]["MRR"], r["test"]["H@1"], r["test"]["MRR"]) for r in lines]
    h1 = [c[3] for c in curve]
    summary = {
        "summary": {
            "curve": [dict(zip(("n", "dev_H@1", "dev_MRR", "test_H@1", "test_MRR"), c)) for c in curve],
            "rises": len(h1) > 1 and h1[-1] > h1[0],
            "monotone_test_H@1": all(x <= y for x, y in zip(h1, h1[1:])),
            "poison_refused": None if poison_row is None else poison_row["refused"],
            "start_model": start_name,
            "kb_entities": len(kb),
            "dev_mentions": len(dev),
            "test_mentions": len(test),
            "setup": setup,
            "annotator_actions": ann.counts,
            "text_memo": memo.stats(),
            "settings": {
                "backbone": a.backbone,
                "epochs": a.epochs,
                "min_steps": a.min_steps,
                "batch_size": a.batch_size,
                "lr": a.lr,
                "seed": a.seed,
                "lexical": a.lexical,
                "torch_threads": torch.get_num_threads(),
            },
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "load_avg_start": load_start,
            "load_avg_end": load_avg(),
        }
    }
    emit(summary)
    return {"lines": lines, "poison": poison_row, **summary}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="dataset with train/dev/test (any supported format)")
    ap.add_argument("--n", default="0,250,1000,4000", help="numbers of accepted corrections, comma-separated")
    ap.add_argument("--poison", type=int, default=500, help="wrong labels added after the curve (0: skip)")
    ap.add_argument("--eval-max-mentions", type=int, default=1000, help="first K dev and K test mentions (0: all)")
    ap.add_argument("--backbone", default="offline", help="the start model's backbone (frozen)")
    ap.add_argument(
        "--start",
        choices=["zero-shot", "base"],
        default="zero-shot",
        help="the model that never saw the corrections: the zero-shot ranking (what a fresh store "
        "serves), or a base model trained on a disjoint part of train (--base-fraction), given to the "
        "job as its serving checkpoint",
    )
    ap.add_argument("--base-fraction", type=float, default=0.5, help="--start base: share of train for the base")
    ap.add_argument("--base-train-epochs", type=int, default=4, help="--start base: epochs of the base model")
    ap.add_argument(
        "--feature-cache", help="file of the frozen backbone's text outputs: read if present, written after use"
    )
    ap.add_argument("--epochs", default="auto", help="an integer, or auto (see --min-steps)")
    ap.add_argument("--min-steps", type=int, default=200, help="--epochs auto: about this many optimiser steps")
    ap.add_argument("--base-epochs", type=int, default=4, help="--epochs auto: at least this many (the job's default)")
    ap.add_argument("--max-epochs", type=int, default=40, help="--epochs auto: at most this many")
    ap.add_argument(
        "--lexical",
        choices=["auto", "on", "off"],
        default="auto",
        help="the job's lexical unit (RetrainConfig.lexical_unit): auto fits it on a KB of >= 1,000 "
        "entities; off is the heads-only job",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="default: the job's (1e-3 for fresh heads)")
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--eval-chunk-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=43)
    ap.add_argument("--work", help="folder for the store and runs (default: a new temporary folder, kept)")
    ap.add_argument("--json", help="also write the result lines to this JSONL file")
    ap.add_argument("--verbose", action="store_true", help="print the job's progress messages to stderr")
    a = ap.parse_args(argv)
    if a.epochs != "auto" and not str(a.epochs).isdigit():
        ap.error(f"--epochs must be an integer or auto, got {a.epochs!r}")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    out = open(a.json, "w", encoding="utf-8") if a.json else None

    def emit(obj: dict) -> None:
        text = json.dumps(obj, default=str)
        print(text, flush=True)
        if out is not None:
            out.write(text + "\n")
            out.flush()

    try:
        return run_curve(a, emit)
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    main()
