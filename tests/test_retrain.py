"""Retraining from accepted corrections (package `retraining`), on the CPU with the tiny random CLIP.

The store holds the synthetic KB and, as "accepted corrections", the synthetic test split annotated
by one annotator; the base dataset is the synthetic train + dev splits (JSONL layout).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from db import open_store
from db.export import split_of
from mimic.analysis.ranking import evaluate
from mimic.data.jsonl import write_jsonl_dataset
from mimic.data.schema import Dataset
from mimic.models.checkpoint import load_checkpoint, save_checkpoint
from mimic.models.linking_model import LinkingModel
from mimic.serving.zeroshot import zero_shot_ranks
from mimic.testing.synthetic import make_synthetic
from retraining import (
    JobLock,
    RetrainBusy,
    RetrainConfig,
    RetrainFailed,
    accepted_annotation_ids,
    decide_promotion,
    read_log,
    read_progress,
    recover_stale_runs,
    should_retrain,
    start_retrain_process,
)
from retraining.run import run_retrain

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain_corpus")
    ds = make_synthetic(root / "synth", n_names=6, per_name=3, mentions_per_entity=12, seed=1)
    base = Dataset(ds.kb, {"train": ds.splits["train"], "dev": ds.splits["dev"]}, name="base")
    return SimpleNamespace(ds=ds, base_dir=write_jsonl_dataset(base, root / "base"), corrections=ds.splits["test"])


def _fill_store(store, corpus, mentions=None):
    store.import_kb(corpus.ds.kb)
    if "ana" not in {a.name for a in store.list_annotators()}:
        store.add_annotator("ana")
    for m in corpus.corrections if mentions is None else mentions:
        store.add_mention(m.sentence, m.mention, m.start, m.end, image=m.image, uid=m.id)
        store.submit("ana", m.id, entity_id=m.answer)
    return store


@pytest.fixture
def store(tmp_path, corpus):
    s = _fill_store(open_store(tmp_path / "data"), corpus)
    yield s
    s.close()


@pytest.fixture
def untrained_ckpt(tmp_path, tiny_clip):
    """A served checkpoint whose units were never trained."""
    torch.manual_seed(0)
    return save_checkpoint(
        LinkingModel.build(tiny_clip, mode="fixed"), tmp_path / "serving_ckpt", backbone_trained=False
    )


@pytest.fixture(scope="module")
def wrong_ckpt(tmp_path_factory, tiny_clip_dir, corpus):
    """A served checkpoint trained on systematically wrong labels (every mention of name group g
    labelled with an entity of group g + 1), so a candidate trained on the corrections must beat it.
    (Untrained units already rank this easy synthetic task well, so they make no clear baseline.)"""
    import dataclasses

    from mimic.training.trainer import TrainConfig, train

    kb = corpus.ds.kb
    shifted = [
        dataclasses.replace(m, answer=kb[(kb.position(m.answer) + 3) % len(kb)].id) for m in corpus.ds.splits["train"]
    ]
    out = tmp_path_factory.mktemp("wrong") / "run"
    train(
        TrainConfig(
            output=str(out),
            backbone=str(tiny_clip_dir),
            freeze_backbone=True,
            lr=3e-3,
            epochs=4,
            batch_size=16,
            progress=False,
            seed=0,
            adam_eps=1e-8,
            no_decay="standard",
            test_after=False,
        ),
        Dataset(kb, {"train": shifted}),
    )
    return out / "best"


def _cfg(tmp_path, tiny_clip_dir, corpus, **kw):
    base = dict(
        data_dir=str(tmp_path / "data"),
        base_data=str(corpus.base_dir),
        backbone=str(tiny_clip_dir),
        epochs=6,
        batch_size=16,
        lr=3e-3,
        device="cpu",
        seed=0,
    )
    return RetrainConfig(**{**base, **kw})


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def _annotation_rows(store):
    return [(a.id, a.mention_uid, a.decision, a.entity_id, a.status) for a in store.current_annotations()]


def _heldout_uids(corpus, holdout=0.2):
    return sorted(m.id for m in corpus.corrections if split_of(m.id, (1 - holdout, 0.0, holdout)) == "test")


# ------------------------------------------------------------------------------------------------
# (a) a run registers a version with metrics and the exact annotations
# ------------------------------------------------------------------------------------------------
def test_run_registers_version_with_metrics_and_annotations(store, tmp_path, tiny_clip_dir, corpus):
    events = []
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus)  # nothing promoted, no checkpoint: zero-shot
    summary = run_retrain(cfg, progress=events.append, store=store)

    held = _heldout_uids(corpus)
    assert 0 < len(held) < len(corpus.corrections)
    run = store.get_training_run(summary["run_id"])
    assert run.status == "succeeded" and run.output_model_version == summary["version"]
    assert run.base_model_version is None  # zero-shot serving is no registered version
    # exactly the accepted annotations, trained on or held out
    assert store.training_run_annotations(run.id) == sorted(accepted_annotation_ids(store))
    assert run.annotations == len(corpus.corrections)
    split = json.loads((Path(summary["paths"]["run_dir"]) / "split.json").read_text())
    assert sorted(split["heldout_uids"]) == held
    assert sorted(split["train_uids"]) == sorted(set(m.id for m in corpus.corrections) - set(held))

    mv = store.get_model_version(summary["version"])
    m = mv.metrics
    assert mv.checkpoint == summary["paths"]["checkpoint"] == str(cfg.models_path / summary["version"])
    assert m["data"]["heldout_corrections"] == len(held)
    assert m["data"]["train_corrections"] == len(corpus.corrections) - len(held)
    assert m["data"]["base_train"] == len(corpus.ds.splits["train"]) and m["data"]["base_dev"] == len(
        corpus.ds.splits["dev"]
    )
    assert m["serving"]["scoring"] == "zero-shot" and m["serving"]["checkpoint"] is None
    for who in ("serving", "candidate"):
        assert m[who]["heldout"]["count"] == len(held)
        assert m[who]["base_dev"]["count"] == len(corpus.ds.splits["dev"])
        assert 0 < m[who]["heldout"]["MRR"] <= 1
    assert m["delta"]["heldout_MRR"] == pytest.approx(m["candidate"]["heldout"]["MRR"] - m["serving"]["heldout"]["MRR"])
    assert m["decision"]["promote"] == summary["promoted"] == mv.promoted
    assert m["decision"]["reason"] == summary["reason"] and "held-out MRR" in summary["reason"]
    assert m["train"]["epochs"] == 6 and m["train"]["freeze_backbone"] is True

    # the recorded candidate numbers are what evaluating the registered folder gives
    kb = store.knowledge_base()
    heldout = [x for x in corpus.corrections if x.id in set(held)]
    model = load_checkpoint(mv.checkpoint)
    again = evaluate(model, kb, heldout)
    assert again["MRR"] == pytest.approx(m["candidate"]["heldout"]["MRR"], abs=1e-6)
    dev = evaluate(model, kb, corpus.ds.splits["dev"])
    assert dev["H@1"] == pytest.approx(m["candidate"]["base_dev"]["H@1"], abs=1e-6)
    # trained well above chance (1/18) on the synthetic task
    assert m["candidate"]["base_dev"]["H@1"] > 0.3
    # the version folder is a copy of the run's train/best weights, not the serving model
    best = Path(summary["paths"]["train"]) / "best"
    assert not (Path(summary["paths"]["train"]) / "last").exists()  # optimizer state: dropped after success
    assert (best / "heads.safetensors").read_bytes() == (Path(mv.checkpoint) / "heads.safetensors").read_bytes()
    assert json.loads((Path(mv.checkpoint) / "metrics.json").read_text())["retrain"]["version"] == summary["version"]

    # progress: every step reported, ends at 1.0 succeeded; the log holds every step
    steps = [e["step"] for e in events]
    for s in ("export", "base", "train", "evaluate", "version", "promote", "done"):
        assert s in steps
    assert any(e["step"] == "train" and e["message"].startswith("epoch 6/6") for e in events)
    prog = read_progress(cfg.data_dir, run.id)
    assert (prog["status"], prog["fraction"], prog["alive"]) == ("succeeded", 1.0, False)
    text, off = read_log(cfg.data_dir, run.id)
    assert off == Path(run.log_path).stat().st_size and run.log_path == summary["paths"]["log"]
    for s in ("[export", "[train", "[evaluate", "[version", "[promote"):
        assert s in text
    tail, off2 = read_log(cfg.data_dir, run.id, off)
    assert (tail, off2) == ("", off)
    assert JobLock(cfg.lock_path).holder() is None


def test_kb_pass_decodes_each_image_once_for_all_models(corpus, tiny_clip, tiny_clip_dir, monkeypatch):
    """Serving (zero-shot) and candidate (its own backbone) share one decode per KB chunk, and the
    candidate's entity cache is exactly what LinkingModel.entity_cache computes."""
    import mimic.models.linking_model as mm
    from mimic.backbones.clip import ClipBackbone
    from mimic.serving.zeroshot import zero_shot_model
    from retraining.evaluation import kb_pass as _kb_pass

    serving = zero_shot_model(tiny_clip)
    torch.manual_seed(0)
    candidate = LinkingModel.build(ClipBackbone(str(tiny_clip_dir)), mode="fixed").eval()
    kb = corpus.ds.kb
    want = candidate.entity_cache(kb.entities, batch_size=7)
    calls = []
    real = mm.load_images
    monkeypatch.setattr(
        mm, "load_images", lambda paths, mode, *a, **kw: calls.append(len(paths)) or real(paths, mode, *a, **kw)
    )
    (c_caches, c_glob), (s_caches, s_glob) = _kb_pass(
        [(candidate, [candidate.heads], False), (serving, [], True)], kb, 7
    )
    assert sum(calls) == len(kb) and len(calls) == -(-len(kb) // 7)  # one decode per chunk, both models
    assert c_glob is None and s_caches == [] and s_glob.text.shape[0] == len(kb)
    for name in ("t_cls", "q", "t_mask", "z"):
        got, ref = getattr(c_caches[0], name), getattr(want, name)
        assert torch.equal(got, ref), name


def test_zero_shot_ranks_match_pairwise_definition(corpus, tiny_clip):
    """The vectorised full-KB zero-shot scorer against a per-pair transcription of mimic.serving.zeroshot's rule."""
    import torch.nn.functional as F

    from mimic.models.linking_model import entity_text, load_images, mention_text
    from mimic.serving.zeroshot import zero_shot_model
    from retraining.evaluation import kb_pass as _kb_pass

    model = zero_shot_model(tiny_clip)
    kb, mentions = corpus.ds.kb, corpus.corrections[:12]
    [(_, glob)] = _kb_pass([(model, [], True)], kb, 7)
    ranks = zero_shot_ranks(model, glob, kb, mentions, batch_size=5)
    with torch.no_grad():
        et, ei = model.backbone_features([entity_text(e) for e in kb], load_images([e.images[0] for e in kb], "fixed"))
        for m, r in zip(mentions, ranks):
            mt, mi = model.backbone_features([mention_text(m)], load_images([m.image], "fixed"))
            scores = []
            for j in range(len(kb)):
                units = [float(F.cosine_similarity(mt.global_[0], et.global_[j], dim=0))]
                if bool(mi.has_image[0]) and bool(ei.has_image[j]):
                    units.append(float(F.cosine_similarity(mi.global_[0], ei.global_[j], dim=0)))
                if bool(ei.has_image[j]):  # tiny CLIP: a joint space of equal widths
                    units.append(float(F.cosine_similarity(mt.global_[0], ei.global_[j], dim=0)))
                scores.append(sum(units) / len(units))
            g = kb.position(m.answer)
            expect = 1 + sum(s > scores[g] + 1e-6 for s in scores)
            assert r == expect, (m.id, r, expect)


# ------------------------------------------------------------------------------------------------
# (b) the promotion rule promotes and refuses
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_promotion_rule_promotes_then_refuses(store, tmp_path, tiny_clip_dir, corpus, wrong_ckpt):
    store.register_model_version("v0", checkpoint=str(wrong_ckpt), backbone="tiny")
    store.promote("v0")
    serving_bytes = _tree_digest(wrong_ckpt)

    first = run_retrain(_cfg(tmp_path, tiny_clip_dir, corpus), store=store)
    m = first["metrics"]
    assert m["serving"]["version"] == "v0" and m["serving"]["scoring"] == "model"
    assert store.get_training_run(first["run_id"]).base_model_version == "v0"
    # the candidate, fine-tuned from v0 on correct labels, beats it on both judges, so it is promoted
    assert m["serving"]["heldout"]["MRR"] < 0.5 and m["serving"]["base_dev"]["H@1"] < 0.3
    assert m["candidate"]["heldout"]["MRR"] > m["serving"]["heldout"]["MRR"] + 0.2
    assert m["candidate"]["base_dev"]["H@1"] > m["serving"]["base_dev"]["H@1"] + 0.2
    assert first["promoted"] is True and first["reason"].startswith("promoted: ")
    assert store.promoted_model_version().name == first["version"]
    assert store.get_model_version("v0").promoted is False

    # the next run starts from the promoted version; a rule it cannot meet refuses it
    second = run_retrain(
        _cfg(tmp_path, tiny_clip_dir, corpus, epochs=2, min_mrr_delta=1.0, heldout_slack_mentions=0.0), store=store
    )
    assert second["metrics"]["serving"]["version"] == first["version"]
    assert store.get_training_run(second["run_id"]).base_model_version == first["version"]
    assert second["promoted"] is False
    assert second["reason"].startswith("not promoted: ") and "required >= +1.0000" in second["reason"]
    refused = store.get_model_version(second["version"])
    assert refused.promoted is False and refused.metrics["decision"]["promote"] is False
    assert Path(refused.checkpoint, "config.json").exists()  # registered and on disk, just not served
    assert store.promoted_model_version().name == first["version"]
    assert store.get_training_run(second["run_id"]).status == "succeeded"
    assert _tree_digest(wrong_ckpt) == serving_bytes  # never written


def test_decide_promotion_thresholds():
    cfg = RetrainConfig()
    s = {"heldout": {"MRR": 0.5, "count": 10}, "base_dev": {"H@1": 0.800, "count": 50}}

    def cand(mrr, h1):
        return {"heldout": {"MRR": mrr, "count": 10}, "base_dev": {"H@1": h1, "count": 50}}

    assert decide_promotion(s, cand(0.5, 0.800), cfg)[0] is True  # equal MRR is "not lower"
    assert decide_promotion(s, cand(0.5, 0.795), cfg)[0] is True  # exactly 0.5 points lower
    ok, why = decide_promotion(s, cand(0.6, 0.794), cfg)
    assert not ok and "drop +0.0060" in why
    # held-out noise: 10 held-out corrections allow 0.5 / 10 = 0.05 less MRR (one mention 1 -> 2)
    ok, why = decide_promotion(s, cand(0.46, 0.9), cfg)
    assert ok and "-0.0400, required >= -0.0500" in why
    ok, why = decide_promotion(s, cand(0.44, 0.9), cfg)
    assert not ok and "-0.0600" in why
    strict = RetrainConfig(heldout_slack_mentions=0.0)
    ok, why = decide_promotion(s, cand(0.49, 0.9), strict)
    assert not ok and "-0.0100, required >= +0.0000" in why
    # the MELBench learning curve's N = 250 candidate (49 held out): within the slack, promoted
    serving_250 = {"heldout": {"MRR": 0.8895, "count": 49}, "base_dev": {"H@1": 0.771, "count": 1000}}
    candidate_250 = {"heldout": {"MRR": 0.8854, "count": 49}, "base_dev": {"H@1": 0.827, "count": 1000}}
    assert decide_promotion(serving_250, candidate_250, cfg)[0] is True
    assert decide_promotion(serving_250, candidate_250, strict)[0] is False
    with pytest.raises(ValueError, match="heldout_slack_mentions"):
        RetrainConfig(heldout_slack_mentions=-1)
    assert decide_promotion(s, cand(0.9, 0.9), RetrainConfig(min_mrr_delta=0.5))[0] is False
    ok, why = decide_promotion({"heldout": {"count": 0}}, {"heldout": {"count": 0}}, cfg)
    assert not ok and "0 held-out correction" in why
    # no trusted judge (no base dev split): the worst case, refused unless the threshold waives it
    no_dev = decide_promotion({"heldout": s["heldout"]}, {"heldout": {"MRR": 0.6, "count": 10}}, cfg)
    assert no_dev[0] is False and "no base dev split" in no_dev[1]
    waived = decide_promotion(
        {"heldout": s["heldout"]}, {"heldout": {"MRR": 0.6, "count": 10}}, RetrainConfig(max_dev_h1_drop=1.0)
    )
    assert waived[0] is True


def test_implausible_labels_are_refused():
    """The label check: too many held-out labels that the serving model ranks beyond implausible_rank
    refuse a candidate that both quality judges would pass (the MELBench poison run's numbers)."""
    cfg = RetrainConfig()
    clean = [1] * 700 + [5] * 90 + [400] * 14  # 804 clean labels, none beyond rank 1,000
    poisoned = clean + [2, 3] + [17000] * 93  # 93 of 899 random labels far down a 17,391-entity KB

    def run(ranks):
        s = {"heldout": {"MRR": 0.7585, "count": len(ranks), "ranks": ranks}, "base_dev": {"H@1": 0.776, "count": 1000}}
        c = {"heldout": {"MRR": 0.7623, "count": len(ranks)}, "base_dev": {"H@1": 0.778, "count": 1000}}
        return decide_promotion(s, c, cfg)

    ok, why = run(clean)
    assert ok and "0 of 804 held-out labels ranked beyond 1000 by the serving model (0.0%, allowed <= 2.0%)" in why
    ok, why = run(poisoned)
    assert not ok and "93 of 899 held-out labels ranked beyond 1000" in why and "10.3%" in why
    assert run(clean[:784] + [2000] * 16)[0] is True  # 16 of 800 = 2.0 %: at the limit
    assert run(clean[:783] + [2000] * 17)[0] is False
    assert decide_promotion(  # 1.0 turns the check off
        {"heldout": {"MRR": 0.5, "count": 2, "ranks": [5000, 9000]}, "base_dev": {"H@1": 0.8, "count": 5}},
        {"heldout": {"MRR": 0.6, "count": 2}, "base_dev": {"H@1": 0.8, "count": 5}},
        RetrainConfig(max_implausible=1.0),
    )[0]
    with pytest.raises(ValueError):
        RetrainConfig(max_implausible=1.5)


# ------------------------------------------------------------------------------------------------
# (b') a batch of deliberately wrong corrections is refused
# ------------------------------------------------------------------------------------------------
POISON = 500


@pytest.mark.slow
@pytest.mark.parametrize(
    "with_base,systematic",
    [(True, False), (False, False), (False, True)],
    ids=["random-base-dev", "random-no-base-data", "systematic-no-base-data"],
)
def test_poisoned_corrections_are_not_promoted(
    store, tmp_path, tiny_clip_dir, corpus, untrained_ckpt, with_base, systematic
):
    """500 corrections with wrong entities (on top of the fixture's correct ones): random ones, or a
    systematic shift (every entity's mentions labelled with the entity 3 positions on, which a model
    can learn). The held-out slice is poisoned like the training set, so only the trusted judge
    (base dev) can refuse the candidate; without a base dataset there is no trusted judge and the
    rule refuses as well. The systematic batch shows why: it fools the held-out judge."""
    import random

    store.register_model_version("v0", checkpoint=str(untrained_ckpt), backbone="tiny")
    store.promote("v0")
    serving_bytes = _tree_digest(untrained_ckpt)
    extra = make_synthetic(tmp_path / "poison", n_names=6, per_name=3, mentions_per_entity=28, seed=7)
    pool = [m for sp in extra.splits.values() for m in sp][:POISON]
    assert len(pool) == POISON
    ids = [e.id for e in corpus.ds.kb]
    rng = random.Random(0)
    store.add_annotator("mallory")
    for m in pool:
        store.add_mention(m.sentence, m.mention, m.start, m.end, image=m.image, uid=f"p-{m.id}")
        others = [q for q in ids if q != m.answer]
        wrong = ids[(ids.index(m.answer) + 3) % len(ids)] if systematic else rng.choice(others)
        store.submit("mallory", f"p-{m.id}", entity_id=wrong)

    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=3, **({} if with_base else {"base_data": None}))
    out = run_retrain(cfg, store=store)
    m = out["metrics"]
    assert m["serving"]["version"] == "v0" and m["data"]["annotations"] == POISON + len(corpus.corrections)
    assert m["data"]["heldout_corrections"] > 50  # the held-out slice is mostly poison too
    assert out["promoted"] is False and out["reason"].startswith("not promoted: ")
    if with_base:
        # the trusted judge sees the damage
        assert m["candidate"]["base_dev"]["H@1"] < m["serving"]["base_dev"]["H@1"] - cfg.max_dev_h1_drop
    else:
        assert "no base dev split" in out["reason"]
    if systematic:  # the poisoned held-out slice alone would have promoted it
        assert m["delta"]["heldout_MRR"] > 0
    assert store.promoted_model_version().name == "v0"
    assert store.get_model_version(out["version"]).promoted is False
    assert _tree_digest(untrained_ckpt) == serving_bytes


# ------------------------------------------------------------------------------------------------
# (c) a failed or killed run leaves everything as before
# ------------------------------------------------------------------------------------------------
def _snapshot(store, ckpt):
    return {
        "ckpt": _tree_digest(ckpt),
        "promoted": store.promoted_model_version(),
        "versions": [v.name for v in store.list_model_versions()],
        "annotations": _annotation_rows(store),
    }


@pytest.mark.slow
def test_injected_failure_marks_run_failed_and_changes_nothing(
    store, tmp_path, tiny_clip_dir, corpus, untrained_ckpt, monkeypatch
):
    store.register_model_version("v0", checkpoint=str(untrained_ckpt))
    store.promote("v0")
    before = _snapshot(store, untrained_ckpt)

    def boom(name):
        raise OSError("disk vanished during promote")

    monkeypatch.setattr(store, "promote", boom)
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=2, min_mrr_delta=-1.0, max_dev_h1_drop=1.0)  # always promote
    with pytest.raises(RetrainFailed, match="disk vanished") as info:
        run_retrain(cfg, store=store)
    run = store.get_training_run(info.value.run_id)
    assert run.status == "failed" and "OSError: disk vanished during promote" in run.error
    assert run.finished_at is not None and run.log_path == info.value.log_path
    text = Path(run.log_path).read_text()
    assert "Traceback" in text and "disk vanished" in text and "[version" in text
    assert read_progress(cfg.data_dir, run.id)["status"] == "failed"
    after = _snapshot(store, untrained_ckpt)
    assert after["ckpt"] == before["ckpt"] and after["annotations"] == before["annotations"]
    assert after["promoted"] == before["promoted"]  # v0 still serves
    # the candidate was registered before the failure: it exists, unpromoted
    assert set(after["versions"]) - set(before["versions"]) == {run.output_model_version}
    assert store.get_model_version(run.output_model_version).promoted is False
    assert JobLock(cfg.lock_path).holder() is None  # lock released


def _wait_for_training(cfg, proc) -> dict:
    """Poll the job's progress file until it reports a finished epoch."""
    deadline = time.monotonic() + 180
    while True:
        p = read_progress(cfg.data_dir, proc.run_id) or {}
        if p.get("step") == "train" and str(p.get("message", "")).startswith("epoch "):
            return p
        assert proc.poll() is None, read_log(cfg.data_dir, proc.run_id)[0]
        assert time.monotonic() < deadline, "the job never reached training"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkilled_run_leaves_everything_and_is_recovered(store, tmp_path, tiny_clip_dir, corpus, untrained_ckpt):
    store.register_model_version("v0", checkpoint=str(untrained_ckpt))
    store.promote("v0")
    before = _snapshot(store, untrained_ckpt)
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=5000)  # far longer than we let it live
    proc = start_retrain_process(cfg, store=store)
    try:
        p = _wait_for_training(cfg, proc)
        assert p["alive"] is True and p["pid"] == proc.pid
        holder = JobLock(cfg.lock_path).holder()
        assert holder["pid"] == proc.pid and holder["run_id"] == proc.run_id
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    run = store.get_training_run(proc.run_id)
    assert run.status == "running"  # a killed process cannot say otherwise
    assert read_progress(cfg.data_dir, run.id)["alive"] is False  # ... but the app can see it is gone
    after = _snapshot(store, untrained_ckpt)
    assert after == before  # checkpoint bytes, promoted, versions, annotations
    assert not cfg.models_path.exists() or not any(cfg.models_path.iterdir())  # no version, no partial folder
    assert JobLock(cfg.lock_path).holder() is None  # the kernel dropped the dead holder's lock

    assert recover_stale_runs(store) == [run.id]
    run = store.get_training_run(run.id)
    assert run.status == "failed" and f"pid {proc.pid}" in run.error and "killed or crashed" in run.error
    assert Path(run.log_path).exists() and "[train" in Path(run.log_path).read_text()
    assert read_progress(cfg.data_dir, run.id)["status"] == "failed"
    assert recover_stale_runs(store) == []  # idempotent

    # and the next run simply works
    nxt = run_retrain(_cfg(tmp_path, tiny_clip_dir, corpus, epochs=1), store=store)
    assert store.get_training_run(nxt["run_id"]).status == "succeeded"


@pytest.mark.slow
def test_sigterm_cancels_the_run_cleanly(store, tmp_path, tiny_clip_dir, corpus):
    """What the app's stop button sends: the job records the run as cancelled and releases the lock."""
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=5000)
    proc = start_retrain_process(cfg, store=store)
    try:
        _wait_for_training(cfg, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    run = store.get_training_run(proc.run_id)
    assert run.status == "cancelled" and run.error == "RetrainCancelled: stopped by signal 15"
    assert read_progress(cfg.data_dir, run.id)["status"] == "cancelled"
    assert '"status": "cancelled"' in read_log(cfg.data_dir, run.id)[0]
    assert store.list_model_versions() == [] and JobLock(cfg.lock_path).holder() is None


# ------------------------------------------------------------------------------------------------
# (d) two runs at once
# ------------------------------------------------------------------------------------------------
_HOLDER = """
import sys, time
from retraining import JobLock
lock = JobLock(sys.argv[1]).acquire()
lock.update(run_id=99)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_second_run_is_refused_while_one_holds_the_lock(store, tmp_path, tiny_clip_dir, corpus):
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=1, min_new_annotations=1)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(cfg.lock_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        runs_before = len(store.list_training_runs())
        with pytest.raises(RetrainBusy, match=rf"another retraining run \(pid {holder.pid}, run 99, started at "):
            run_retrain(cfg, store=store)
        with pytest.raises(RetrainBusy, match=rf"pid {holder.pid}"):
            start_retrain_process(cfg, store=store)
        assert len(store.list_training_runs()) == runs_before  # a refused run records nothing
        due, why = should_retrain(store, cfg)
        assert not due and f"in progress (pid {holder.pid}" in why
        assert recover_stale_runs(store) == []  # never touches runs while a holder lives
        t = time.monotonic()
        with pytest.raises(RetrainBusy):
            JobLock(cfg.lock_path).acquire(wait=1.0)  # waiting with a limit gives up clearly
        assert time.monotonic() - t >= 0.9
    finally:
        holder.kill()  # a crashed holder ...
        holder.wait(10)
    lock = JobLock(cfg.lock_path).acquire()  # ... never blocks the next one
    assert lock.read_info()["pid"] == os.getpid()
    lock.release()


def test_waiting_run_starts_when_the_holder_finishes(tmp_path):
    first = JobLock(tmp_path / "runs" / "retrain.lock").acquire()
    waited = []
    threading.Timer(1.0, first.release).start()
    second = JobLock(tmp_path / "runs" / "retrain.lock")
    t = time.monotonic()
    second.acquire(wait=20, on_wait=waited.append)
    assert time.monotonic() - t >= 0.9 and second.held
    assert waited and waited[0]["pid"] == os.getpid()
    second.release()


@pytest.mark.slow
def test_two_job_processes_started_at_once(store, tmp_path, tiny_clip_dir, corpus):
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, epochs=1)
    procs = []
    for _ in range(2):
        try:
            procs.append(start_retrain_process(cfg, store=store))
        except RetrainBusy as busy:  # the first child already locked: refused before spawning
            assert "another retraining run" in str(busy)
    for p in procs:
        p.wait(300)
    runs = {p.run_id: store.get_training_run(p.run_id) for p in procs}
    ok = [r for r in runs.values() if r.status == "succeeded"]
    assert len(ok) == 1
    for p in procs:
        r = runs[p.run_id]
        if r.status == "succeeded":
            assert p.returncode == 0
        else:  # lost the race inside the job process: refused clearly, recorded, exit status 3
            winner = next(q for q in procs if q is not p)
            assert p.returncode == 3 and r.status == "cancelled"
            # names the holder's pid (its run id too once the holder has written it into the lock)
            assert r.error.startswith(f"refused: another retraining run (pid {winner.pid},")
            assert "holds the lock" in r.error
            assert read_progress(cfg.data_dir, r.id)["status"] == "cancelled"
            assert "error: another retraining run" in read_log(cfg.data_dir, r.id)[0]


# ------------------------------------------------------------------------------------------------
# (e) the policy
# ------------------------------------------------------------------------------------------------
def _fake_successful_run(store):
    run = store.create_training_run({}, annotation_ids=sorted(accepted_annotation_ids(store)))
    store.start_training_run(run.id)
    return store.finish_training_run(run.id, "succeeded")


def test_should_retrain_policy(tmp_path, corpus):
    first, later = corpus.corrections[:30], corpus.corrections[30:36]
    store = _fill_store(open_store(tmp_path / "data"), corpus, first)
    try:
        data = str(tmp_path / "data")
        assert should_retrain(store, RetrainConfig(data_dir=data)) == (
            False,
            "no retraining policy configured (set min_new_annotations and/or every_hours)",
        )
        due, why = should_retrain(store, RetrainConfig(data_dir=data, min_new_annotations=31))
        assert not due and "30 new accepted annotation(s) (no successful run yet) (< 31)" in why
        due, why = should_retrain(store, RetrainConfig(data_dir=data, min_new_annotations=30))
        assert due and why.startswith("30 new")
        assert should_retrain(store, RetrainConfig(data_dir=data, every_hours=24))[0] is True  # never trained

        last = _fake_successful_run(store)
        n5 = RetrainConfig(data_dir=data, min_new_annotations=5)
        due, why = should_retrain(store, n5)
        assert not due and f"0 new accepted annotation(s) since run {last.id}" in why
        _fill_store(store, corpus, later[:4])
        assert should_retrain(store, n5)[0] is False  # 4 < 5
        _fill_store(store, corpus, later[4:5])
        due, why = should_retrain(store, n5)
        assert due and why == f"5 new accepted annotation(s) since run {last.id} >= 5"
        # a relabel is a new accepted annotation too (the old one is superseded)
        store.submit("ana", first[0].id, entity_id=next(e.id for e in corpus.ds.kb if e.id != first[0].answer))
        assert "6 new" in should_retrain(store, n5)[1]

        t24 = RetrainConfig(data_dir=data, every_hours=24)
        at = last.finished_at
        due, why = should_retrain(store, t24, now=at + timedelta(hours=23))
        assert not due and "23.0 h of 24 h" in why
        due, why = should_retrain(store, t24, now=at + timedelta(hours=25))
        assert due and why.startswith(f"25.0 h since run {last.id} >= 24 h, 6 new")
        both = RetrainConfig(data_dir=data, every_hours=24, min_new_annotations=6)
        assert should_retrain(store, both, now=at + timedelta(hours=1))[0] is True  # either trigger suffices

        last = _fake_successful_run(store)  # nothing new since
        due, why = should_retrain(store, t24, now=last.finished_at + timedelta(hours=48))
        assert not due and why == f"48.0 h since run {last.id} but no new accepted annotation"

        # a failed run backs the policy off for retry_hours, then it is due again
        _fill_store(store, corpus, corpus.corrections[36:42])
        assert should_retrain(store, n5)[0] is True
        bad = store.create_training_run({"test": "failing"})
        store.start_training_run(bad.id)
        bad = store.finish_training_run(bad.id, "failed", error="boom")
        due, why = should_retrain(store, n5, now=bad.finished_at + timedelta(minutes=10))
        assert not due and why.startswith(f"run {bad.id} failed 0.17 h ago: the policy retries after 1 h")
        assert should_retrain(store, n5, now=bad.finished_at + timedelta(hours=2))[0] is True
    finally:
        store.close()


def test_command_line_if_due_and_parser(store, tmp_path, tiny_clip_dir, corpus, capsys):
    import argparse

    from retraining import maybe_start_retrain
    from retraining.cli import add_retrain_parser, main

    data = str(tmp_path / "data")
    assert main(["--data-dir", data, "--if-due", "--min-new-annotations", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ran": False, "reason": "not due: 44 new accepted annotation(s) (no successful run yet) (< 100)"}
    assert store.list_training_runs() == []
    assert maybe_start_retrain(RetrainConfig(data_dir=data, min_new_annotations=100), store=store) == (
        None,
        out["reason"],
    )

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    add_retrain_parser(sub)
    a = sub.choices["retrain"].parse_args(
        [
            "--data-dir",
            data,
            "--backbone",
            str(tiny_clip_dir),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--wait",
            "--holdout",
            "0.25",
            "--no-freeze-backbone",
        ]
    )
    from retraining.cli import cmd_retrain, config_from_args

    cfg = config_from_args(a)
    assert (a.func, a.wait, cfg.epochs, cfg.holdout, cfg.freeze_backbone, cfg.backbone) == (
        cmd_retrain,
        True,
        1,
        0.25,
        False,
        str(tiny_clip_dir),
    )


def test_config_from_env_and_yaml(tmp_path):
    env = {
        "DATA_DIR": str(tmp_path),
        "MIMIC_CHECKPOINT": "/ckpt",
        "MIMIC_BACKBONE": "clip",
        "MIMIC_RETRAIN_EVERY_HOURS": "12",
        "MIMIC_RETRAIN_MIN_NEW_ANNOTATIONS": "50",
        "MIMIC_RETRAIN_FREEZE_BACKBONE": "false",
        "MIMIC_RETRAIN_BASE_DATA": "none",
    }
    cfg = RetrainConfig.from_env(env, epochs=7)
    assert (
        cfg.data_dir,
        cfg.checkpoint,
        cfg.backbone,
        cfg.every_hours,
        cfg.min_new_annotations,
        cfg.freeze_backbone,
        cfg.base_data,
        cfg.epochs,
    ) == (str(tmp_path), "/ckpt", "clip", 12.0, 50, False, None, 7)
    assert cfg.models_path == tmp_path / "models" and cfg.lock_path == tmp_path / "runs" / "retrain.lock"
    (tmp_path / "r.yaml").write_text("holdout: 0.3\nmin_mrr_delta: 0.01\n")
    y = RetrainConfig.from_yaml(tmp_path / "r.yaml", data_dir=str(tmp_path))
    assert (y.holdout, y.min_mrr_delta, y.max_dev_h1_drop) == (0.3, 0.01, 0.005)
    (tmp_path / "bad.yaml").write_text("holdot: 0.3\n")
    with pytest.raises(ValueError, match="unknown retrain config keys \\['holdot'\\]"):
        RetrainConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="holdout"):
        RetrainConfig(holdout=1.0)
