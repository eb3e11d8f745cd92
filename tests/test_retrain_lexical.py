"""Retraining with the lexical unit S_L (retraining/lexical.py), on the CPU with the tiny random CLIP.

The store holds the synthetic KB (18 entities) and, as accepted corrections, the synthetic train split
(129 mentions, 20 % held out); the base dataset is the dev split only (the trusted judge). The KB is
below `lexical_min_entities`, so the tests switch the unit on explicitly.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from db import open_store
from mimic.analysis.served_ranking import evaluate_served
from mimic.data.jsonl import write_jsonl_dataset
from mimic.data.schema import Dataset
from mimic.models.checkpoint import LEXICAL_FILE, load_checkpoint, save_checkpoint
from mimic.models.linking_model import LinkingModel
from mimic.serving.index import KBIndex
from mimic.serving.linker import Linker
from mimic.testing.synthetic import make_synthetic
from mimic.training.lexical_unit_fit import FitConfig, collect_shortlists, fit_lexical_unit
from mimic.training.trainer import TrainConfig, train
from retraining import RetrainConfig, pipeline
from retraining import lexical as lexical_mod
from retraining.lexical import lexical_plan, selection_split
from retraining.run import run_retrain


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("lex_corpus")
    ds = make_synthetic(root / "synth", n_names=6, per_name=3, mentions_per_entity=12, seed=1)
    judge = Dataset(ds.kb, {"dev": ds.splits["dev"]}, name="judge")
    return SimpleNamespace(ds=ds, base_dir=write_jsonl_dataset(judge, root / "judge"), corrections=ds.splits["train"])


@pytest.fixture(scope="module")
def fused_ckpt(tmp_path_factory, tiny_clip_dir, corpus):
    """A serving checkpoint with heads and a lexical unit, trained on the test split (mentions the
    store never holds), so it ranks correct labels near the top."""
    out = tmp_path_factory.mktemp("lex_serving")
    tc = dict(output=str(out / "run"), backbone=str(tiny_clip_dir), freeze_backbone=True, lr=3e-3, epochs=6)
    tc.update(batch_size=16, progress=False, seed=0, test_after=False, adam_eps=1e-8, no_decay="standard")
    train(TrainConfig(**tc), Dataset(corpus.ds.kb, {"train": corpus.ds.splits["test"]}))
    model = load_checkpoint(out / "run" / "best")
    index = KBIndex.build(model, corpus.ds.kb, out / "index", progress=False)
    linker = Linker(model, index, shortlist=8, absent_mention="warn")
    sl = collect_shortlists(linker, corpus.ds.splits["test"], progress=False)
    unit, _ = fit_lexical_unit(sl, sl, FitConfig(epochs=3, hidden=16), log=lambda *_: None)
    model.attach_lexical_unit(unit)
    return save_checkpoint(model, out / "fused", backbone_trained=False)


def _store(tmp_path, corpus, poison: int = 0):
    s = open_store(tmp_path / "data")
    s.import_kb(corpus.ds.kb)
    s.add_annotator("ana")
    for m in corpus.corrections:
        s.add_mention(m.sentence, m.mention, m.start, m.end, image=m.image, uid=m.id)
        s.submit("ana", m.id, entity_id=m.answer)
    if poison:
        extra = make_synthetic(tmp_path / "poison", n_names=6, per_name=3, mentions_per_entity=12, seed=7)
        ids, rng = [e.id for e in corpus.ds.kb], random.Random(0)
        s.add_annotator("mallory")
        for m in [x for sp in extra.splits.values() for x in sp][:poison]:
            s.add_mention(m.sentence, m.mention, m.start, m.end, image=m.image, uid=f"p-{m.id}")
            s.submit("mallory", f"p-{m.id}", entity_id=rng.choice(ids))
    return s


def _cfg(tmp_path, tiny_clip_dir, corpus, **kw):
    base = dict(
        data_dir=str(tmp_path / "data"),
        base_data=str(corpus.base_dir),
        backbone=str(tiny_clip_dir),
        epochs=3,
        batch_size=16,
        lr=3e-3,
        device="cpu",
        seed=0,
        lexical_unit=True,
        lexical_min_corrections=10,
        lexical_epochs=3,
        lexical_shortlist=8,
    )
    return RetrainConfig(**{**base, **kw})


def _digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_plan_and_selection_split():
    cfg = RetrainConfig()
    assert lexical_plan(cfg, "fixed", 17391, 3200)[0] is True
    assert lexical_plan(cfg, "fixed", 18, 3200) == (False, lexical_plan(cfg, "fixed", 18, 3200)[1])
    assert "lexical_min_entities" in lexical_plan(cfg, "fixed", 18, 3200)[1]
    assert lexical_plan(RetrainConfig(lexical_unit=True), "fixed", 18, 3200)[0] is True
    assert "compat" in lexical_plan(RetrainConfig(lexical_unit=True), "compat", 17391, 3200)[1]
    assert "off" in lexical_plan(RetrainConfig(lexical_unit=False), "fixed", 17391, 3200)[1]
    assert "lexical_min_corrections" in lexical_plan(cfg, "fixed", 17391, 99)[1]
    with pytest.raises(ValueError, match="lexical_select"):
        RetrainConfig(lexical_select=1.0)
    ms = [SimpleNamespace(id=f"m{i}") for i in range(1000)]
    fit, sel = selection_split(ms, 0.15)
    assert len(fit) + len(sel) == 1000 and not {m.id for m in fit} & {m.id for m in sel}
    assert 100 < len(sel) < 200
    # stable as corrections arrive: a correction keeps its side
    fit2, sel2 = selection_split(ms + [SimpleNamespace(id=f"n{i}") for i in range(200)], 0.15)
    assert {m.id for m in sel} <= {m.id for m in sel2} and {m.id for m in fit} <= {m.id for m in fit2}
    assert all(len(p) == 1 for p in selection_split(ms[:2], 0.15))


def test_run_fits_the_unit_on_training_corrections_and_judges_served(tmp_path, tiny_clip_dir, corpus, monkeypatch):
    seen: dict[str, list] = {"shortlists": [], "heads": []}
    real_collect, real_train = lexical_mod.collect_shortlists, pipeline.train

    def spy_collect(linker, mentions, **kw):
        seen["shortlists"].append({m.id for m in mentions})
        return real_collect(linker, mentions, **kw)

    def spy_train(tc, dataset):
        seen["heads"].append({m.id for m in dataset.split("train")})
        return real_train(tc, dataset)

    monkeypatch.setattr(lexical_mod, "collect_shortlists", spy_collect)
    monkeypatch.setattr(pipeline, "train", spy_train)
    store = _store(tmp_path, corpus)
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus)
    out = run_retrain(cfg, store=store)
    m = out["metrics"]
    split = json.loads((Path(out["paths"]["run_dir"]) / "split.json").read_text())
    fit_ids, sel_ids, held = set(split["train_uids"]), set(split["lexical_select_uids"]), set(split["heldout_uids"])

    # the unit's epoch and β were chosen on training corrections kept from the heads, never on the judges
    assert seen["shortlists"] == [fit_ids, sel_ids] and sel_ids and not fit_ids & sel_ids
    assert not sel_ids & held and not sel_ids & {x.id for x in corpus.ds.splits["dev"]}
    assert seen["heads"] == [fit_ids]
    assert fit_ids | sel_ids | held == {x.id for x in corpus.corrections}
    lex = m["lexical_unit"]
    assert lex["status"] == "fitted" and lex["report"]["select_corrections"] == len(sel_ids)
    assert lex["report"]["fit_corrections"] == len(fit_ids) == m["data"]["train_corrections"]
    assert m["data"]["lexical_select_corrections"] == len(sel_ids)

    # the version's checkpoint carries the unit, with the β the fit chose
    ckpt = Path(out["paths"]["checkpoint"])
    assert (ckpt / LEXICAL_FILE).is_file()
    model = load_checkpoint(ckpt)
    assert model.lexical_unit is not None
    assert model.lexical_unit.config.mimic_weight == lex["report"]["mimic_weight"]
    assert "kept out of the heads" in model.lexical_unit.config.trained_on["chosen_on"]
    assert json.loads((ckpt / "metrics.json").read_text())["retrain"]["lexical_unit"]["status"] == "fitted"

    # the judge ranked the candidate as served (zero-shot serving as before), and its recorded
    # figures are what evaluating the registered version through the linker gives
    assert m["candidate"]["scoring"] == "served" and m["serving"]["scoring"] == "zero-shot"
    assert m["candidate"]["base_dev"]["scoring"] == "served" and m["candidate"]["base_dev"]["shortlist"] == 8
    dev = evaluate_served(model, store.knowledge_base(), corpus.ds.splits["dev"], shortlist=8)
    assert dev["H@1"] == pytest.approx(m["candidate"]["base_dev"]["H@1"], abs=1e-6)
    ev = json.loads((Path(out["paths"]["run_dir"]) / "evaluation.json").read_text())
    assert ev["candidate"]["heldout"]["scoring"] == "served" and ev["serving"]["heldout"]["scoring"] == "zero-shot"
    assert max(ev["candidate"]["heldout"]["ranks"]) <= 9  # positions in a shortlist of 8 (9: missed)
    assert not (Path(out["paths"]["run_dir"]) / "candidate-index").exists()
    store.close()


def test_compat_mode_skips_the_unit(tmp_path, tiny_clip_dir, tiny_clip, corpus):
    torch.manual_seed(0)
    compat = save_checkpoint(LinkingModel.build(tiny_clip, mode="compat"), tmp_path / "compat", backbone_trained=False)
    store = _store(tmp_path, corpus)
    out = run_retrain(_cfg(tmp_path, tiny_clip_dir, corpus, checkpoint=str(compat)), store=store)
    m = out["metrics"]
    assert m["lexical_unit"]["status"] == "none" and "compat mode" in m["lexical_unit"]["reason"]
    assert m["candidate"]["scoring"] == m["serving"]["scoring"] == "model"
    assert not (Path(out["paths"]["checkpoint"]) / LEXICAL_FILE).exists()
    assert "lexical_select_uids" not in json.loads((Path(out["paths"]["run_dir"]) / "split.json").read_text())
    store.close()


def test_too_few_corrections_keep_the_serving_unit(tmp_path, tiny_clip_dir, corpus, fused_ckpt):
    store = _store(tmp_path, corpus)
    store.register_model_version("v0", checkpoint=str(fused_ckpt), backbone="tiny")
    store.promote("v0")
    out = run_retrain(_cfg(tmp_path, tiny_clip_dir, corpus, lexical_min_corrections=10_000), store=store)
    m = out["metrics"]
    assert m["lexical_unit"]["status"] == "kept from the serving model"
    assert "lexical_min_corrections" in m["lexical_unit"]["reason"]
    assert m["serving"]["scoring"] == m["candidate"]["scoring"] == "served"
    kept, serving = load_checkpoint(out["paths"]["checkpoint"]).lexical_unit, load_checkpoint(fused_ckpt).lexical_unit
    assert kept is not None and serving is not None
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), serving.state_dict().values()))
    assert kept.config.mimic_weight == serving.config.mimic_weight
    store.close()


def test_poisoned_batch_is_refused_with_served_models(tmp_path, tiny_clip_dir, corpus, fused_ckpt):
    """Random labels on top of the corrections, serving and candidate both with a unit: the label check
    takes the serving heads' full-KB ranks (served ranks stop at K + 1 and could not trip it)."""
    store = _store(tmp_path, corpus, poison=120)
    store.register_model_version("v0", checkpoint=str(fused_ckpt), backbone="tiny")
    store.promote("v0")
    before = _digest(fused_ckpt)
    # implausible beyond rank 6 of 18, above the served shortlist's 4 + 1
    cfg = _cfg(tmp_path, tiny_clip_dir, corpus, lexical_shortlist=4, implausible_rank=6)
    out = run_retrain(cfg, store=store)
    m = out["metrics"]
    assert m["lexical_unit"]["status"] == "fitted" and m["serving"]["scoring"] == "served"
    ev = json.loads((Path(out["paths"]["run_dir"]) / "evaluation.json").read_text())
    served, label = ev["serving"]["heldout"]["ranks"], ev["serving"]["heldout"]["label_ranks"]
    assert len(served) == len(label) == m["data"]["heldout_corrections"] and max(served) <= 5
    n_bad = sum(r > 6 for r in label)
    assert m["implausible_heldout"] == {"count": n_bad, "of": len(label), "beyond_rank": 6}
    assert n_bad / len(label) > cfg.max_implausible
    assert out["promoted"] is False and f"{n_bad} of {len(label)} held-out labels ranked beyond 6" in out["reason"]
    assert store.promoted_model_version().name == "v0" and _digest(fused_ckpt) == before
    store.close()


def test_command_line_and_environment_set_the_unit(monkeypatch):
    import argparse

    from retraining.cli import _add_arguments, config_from_args
    from retraining.config import RetrainConfig as Cfg

    ap = argparse.ArgumentParser()
    _add_arguments(ap)
    monkeypatch.delenv("MIMIC_RETRAIN_LEXICAL_UNIT", raising=False)
    assert config_from_args(ap.parse_args([])).lexical_unit is None
    off = config_from_args(ap.parse_args(["--no-lexical-unit", "--lexical-min-corrections", "50"]))
    assert off.lexical_unit is False and off.lexical_min_corrections == 50
    assert config_from_args(ap.parse_args(["--lexical-unit"])).lexical_unit is True
    assert Cfg.from_env({"MIMIC_RETRAIN_LEXICAL_UNIT": "off"}).lexical_unit is False
    assert Cfg.from_env({"MIMIC_RETRAIN_LEXICAL_UNIT": "none"}).lexical_unit is None
