"""The lexical unit S_L: pair features, fitting on the served shortlist, checkpoint round trip, compat
mode without it, and evaluation == serving (the top-1 `evaluate` measures is the one `link` returns)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mimic.analysis.ranking import evaluate
from mimic.analysis.served_ranking import evaluate_served
from mimic.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from mimic.models.lexical_unit import FEATURES, LexicalUnit, LexicalUnitConfig
from mimic.serving.index import KBIndex, model_fingerprint
from mimic.serving.linker import Linker
from mimic.serving.pair_features import pair_features
from mimic.training.lexical_unit_fit import FitConfig, collect_shortlists, fit_lexical_unit, shortlist_ranks
from mimic.training.trainer import TrainConfig, train

COL = {f: i for i, f in enumerate(FEATURES)}


def _features(mention, sentence, names, others=()):
    k = len(names)
    return pair_features(
        mention=mention,
        sentence=sentence,
        span=None,
        other_mentions=list(others),
        names=names,
        tfidf=np.zeros(k),
        name_in_sentence=np.zeros(k),
        dense=np.zeros(k),
        ranks=[{"lexical": j} for j in range(k)],
    )


def test_pair_features_describe_how_the_name_covers_the_mention():
    names = ["Robertson", "Oscar Robertson", "Robertson (Scottish footballer)", "Paris"]
    X = _features("Robertson", "Robertson scored for the Milwaukee Bucks in the Scottish cup", names, ["Bucks"])
    assert X.shape == (4, len(FEATURES))
    assert X[:, COL["exact"]].tolist() == [1, 0, 1, 0]  # the qualifier is not part of the name proper
    assert X[:, COL["m_in_n"]].tolist() == [1, 1, 1, 0]
    assert X[1, COL["n_in_m"]] == 0.5 and X[1, COL["is_last"]] == 1 and X[1, COL["is_first"]] == 0
    # "scottish" of the qualifier occurs in the rest of the sentence; "oscar" does not
    assert X[2, COL["ctx_overlap"]] > 0 and X[2, COL["paren_ctx"]] == 1 and X[2, COL["has_paren"]] == 1
    assert X[1, COL["ctx_overlap"]] == 0
    assert X[0, COL["ambig"]] == pytest.approx(np.log1p(3))  # three names hold every mention token
    assert X[0, COL["m_ntok"]] == 1
    assert X[:, COL["lex_rr"]].tolist() == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4])
    assert X[:, COL["model_rr"]].tolist() == [0, 0, 0, 0]  # not retrieved by that retriever
    # the other mentions of the sentence count as context too
    Y = _features("Robertson", "Robertson was there", ["Oscar Robertson"], ["Oscar"])
    assert Y[0, COL["other_overlap"]] == 1.0 and Y[0, COL["ctx_overlap"]] == 0.0


def test_config_refuses_unknown_features_and_selects_columns():
    with pytest.raises(ValueError, match="unknown lexical features"):
        LexicalUnitConfig(features=("tfidf", "popularity"))
    unit = LexicalUnit(LexicalUnitConfig(features=("exact", "tfidf"), hidden=0))
    x = torch.zeros(3, len(FEATURES))
    x[:, COL["exact"]] = 1.0
    assert unit(x).shape == (3,)
    # only the selected columns matter
    x2 = x.clone()
    x2[:, COL["dense_ctx"]] = 5.0
    assert torch.equal(unit(x), unit(x2))


def test_shortlist_ranks_keep_retrieval_order_on_ties_and_count_misses():
    s = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.0], [1.0, 0.0, 0.0]])
    mask = np.array([[True, True, True], [True, True, True], [True, True, False]])
    gold = np.array([1, 1, -1])
    assert shortlist_ranks(s, mask, gold).tolist() == [2, 1, 4]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, synthetic_dataset, tiny_clip_dir):
    """The one-command recipe: heads, then the lexical unit (`lexical_unit: true`) -> (run folder, summary)."""
    out = tmp_path_factory.mktemp("lexical_base")
    cfg = dict(backbone=str(tiny_clip_dir), freeze_backbone=True, lr=3e-3, epochs=3, batch_size=16)
    cfg.update(progress=False, test_after=True, seed=0, adam_eps=1e-8, no_decay="standard", output=str(out))
    summary = train(TrainConfig(**cfg, lexical_unit=True), synthetic_dataset)
    return out, summary


@pytest.fixture(scope="module")
def base(recipe):
    return recipe[0] / "best"


def test_training_recipe_writes_a_fused_checkpoint_and_its_served_test_metrics(recipe, synthetic_dataset):
    out, summary = recipe
    lex = summary["lexical_unit"]
    assert lex["checkpoint"] == str(out / "fused")
    assert lex["test"]["strategy"] == "served" and lex["test"]["count"] == len(synthetic_dataset.split("test"))
    model = load_checkpoint(out / "fused")
    assert model.lexical_unit is not None
    assert read_config(out / "fused")["base_checkpoint"] == str(out / "best")
    assert (out / "fused-index" / "index.json").exists() and (out / "fused-work" / "shortlists_train.npz").exists()
    assert json.loads((out / "summary.json").read_text())["lexical_unit"]["mimic_weight"] == lex["mimic_weight"]


@pytest.fixture(scope="module")
def fused(base, synthetic_dataset, tmp_path_factory):
    """base + a lexical unit fitted on the synthetic train/dev shortlists -> (checkpoint, index, report)."""
    model = load_checkpoint(base)
    index = KBIndex.build(model, synthetic_dataset.kb, tmp_path_factory.mktemp("lex_idx") / "index", progress=False)
    linker = Linker(model, index, shortlist=16, absent_mention="warn")
    train_set = collect_shortlists(linker, synthetic_dataset.split("train"), progress=False)
    dev_set = collect_shortlists(linker, synthetic_dataset.split("dev"), progress=False)
    unit, report = fit_lexical_unit(train_set, dev_set, FitConfig(epochs=3, hidden=16), log=lambda *_: None)
    model.attach_lexical_unit(unit)
    out = tmp_path_factory.mktemp("lex_ckpt") / "fused"
    save_checkpoint(model, out, backbone_trained=False)
    return out, index, report


def test_fit_reports_a_dev_choice_of_mimic_weight(fused):
    _, _, report = fused
    assert 0 <= report["best_epoch"] < 3
    assert report["mimic_weight"] in [g["mimic_weight"] for g in report["mimic_weight_grid"]]
    chosen = max(report["mimic_weight_grid"], key=lambda g: g["dev"]["H@1"] + g["dev"]["MRR"])
    assert chosen["dev"]["H@1"] + chosen["dev"]["MRR"] == report["dev"]["H@1"] + report["dev"]["MRR"]


def test_checkpoint_round_trip_keeps_the_unit_outside_the_fingerprint(fused, base):
    path, index, _ = fused
    model = load_checkpoint(path)
    assert isinstance(model.lexical_unit, LexicalUnit)
    cfg = read_config(path)
    assert cfg["lexical_unit"]["features"] == list(FEATURES) and cfg["lexical_unit_sha256"]
    # the unit encodes no entity: the index built with the base checkpoint serves the fused one
    assert model_fingerprint(model) == model_fingerprint(load_checkpoint(base))
    index.check_model(model)


def test_link_reports_S_L_and_fuses_it_into_S(fused, synthetic_dataset):
    path, index, _ = fused
    model = load_checkpoint(path)
    linker = Linker(model, index, shortlist=16, absent_mention="warn")
    m = synthetic_dataset.split("test")[0]
    r = linker.link(m.sentence, m.mention, m.image, top_k=5)
    beta = model.lexical_unit.config.mimic_weight
    for c in r.candidates:
        assert c.S_L is not None
        parts = [u for u in (c.S_T, c.S_V, c.S_C)]
        s_mimic = sum(p for p in parts if p is not None) / 3
        assert c.S == pytest.approx(beta * s_mimic + c.S_L, abs=1e-4)
    assert [c.S for c in r.candidates] == sorted((c.S for c in r.candidates), reverse=True)
    json.dumps(r.to_dict())  # the API returns it as JSON


def test_unit_shortlists_are_cut_by_fusion_alone(fused, base, synthetic_dataset):
    # the unit learned its features on fused cuts of K: serving it adds no model-retriever rows,
    # while the same model without the unit (and collecting features to train one) would
    path, index, _ = fused
    with_unit = Linker(load_checkpoint(path), index, shortlist=4, keep_model=4, absent_mention="warn")
    without = Linker(load_checkpoint(base), index, shortlist=4, keep_model=4, absent_mention="warn")
    ms = synthetic_dataset.split("test")
    assert all(with_unit.link(m.sentence, m.mention, m.image, explain=False).shortlist_size <= 4 for m in ms)
    qs = [without._query(m.sentence, m.mention, m.image) for m in ms]
    assert all(len(sl.rows) <= 4 for sl in without.shortlists(qs, features=True)[0])
    assert any(len(sl.rows) > 4 for sl in without.shortlists(qs)[0])


def test_evaluate_ranks_what_serving_returns(fused, synthetic_dataset):
    path, index, _ = fused
    model = load_checkpoint(path)
    mentions = synthetic_dataset.split("test")[:20]
    res = evaluate(model, synthetic_dataset.kb, mentions)
    assert res["strategy"] == "served" and res["count"] == len(mentions)
    linker = Linker(model, index, shortlist=64, absent_mention="warn")
    same = 0
    for m, rank in zip(mentions, res["ranks"]):
        top = linker.link(m.sentence, m.mention, m.image, top_k=1, explain=False).top
        same += (top is not None and top.entity_id == m.answer) == (rank == 1)
    assert same == len(mentions)
    # the served index is the same whether evaluate builds it or is given one
    again = evaluate_served(model, synthetic_dataset.kb, mentions, index=index)
    assert again["ranks"] == res["ranks"]


def test_compat_mode_has_no_lexical_unit(fused):
    path, _, _ = fused
    model = load_checkpoint(path, overrides={"mode": "compat"})
    assert model.lexical_unit is None
    assert model.checkpoint_info["lexical_unit_off"] == "compat mode"
    with pytest.raises(ValueError, match="fixed-mode extension"):
        model.attach_lexical_unit(LexicalUnit())
