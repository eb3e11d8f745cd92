"""Full-KB evaluation: ranks and metrics against hand-computed values, strategies agree, chunking and
batch size do not change results, --scores-out arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimic.analysis.ranking import evaluate, metrics_from_ranks, ranks_from_scores
from mimic.models.linking_model import LinkingModel


def test_ranks_hand_computed_with_deterministic_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 2.0, 3.0]])
    gold = torch.tensor([2, 2, 0])
    # row 0: one higher (0.9), one tie at position 3 (after gold) -> rank 2
    # row 1: all tied, gold at position 2 -> two ties before it -> rank 3
    # row 2: two higher -> rank 3
    assert ranks_from_scores(scores, gold).tolist() == [2, 3, 3]


def test_metrics_hand_computed():
    m = metrics_from_ranks([1, 2, 4, 30])
    assert m["H@1"] == 0.25 and m["H@3"] == 0.5 and m["H@5"] == 0.75 and m["H@10"] == 0.75 and m["H@20"] == 0.75
    assert m["MRR"] == pytest.approx((1 + 0.5 + 0.25 + 1 / 30) / 4)
    assert m["MR"] == pytest.approx(37 / 4)
    assert m["count"] == 4


@pytest.fixture(scope="module")
def model(tiny_clip):
    torch.manual_seed(0)
    return LinkingModel.build(tiny_clip, mode="fixed").eval()


def test_strategies_chunks_and_batches_agree(model, synthetic_dataset, tmp_path):
    kb, mentions = synthetic_dataset.kb, synthetic_dataset.split("dev")[:10]
    base = evaluate(model, kb, mentions, batch_size=32, chunk_size=4096)
    small = evaluate(model, kb, mentions, batch_size=1, chunk_size=1)
    official = evaluate(
        model, kb, mentions, batch_size=3, chunk_size=5, strategy="official", scores_out=tmp_path / "scores.npz"
    )
    assert base["ranks"] == small["ranks"] == official["ranks"]
    assert base["count"] == 10 and base["entities"] == len(kb)
    z = np.load(tmp_path / "scores.npz")
    assert z["S"].shape == (10, len(kb)) and z["S_T"].shape == z["S_V"].shape == z["S_C"].shape == (10, len(kb))
    np.testing.assert_allclose(z["S"], (z["S_T"] + z["S_V"] + z["S_C"]) / 3, rtol=1e-5, atol=1e-5)
    assert z["rank"].tolist() == base["ranks"]
    assert z["gold"].tolist() == [kb.position(m.answer) for m in mentions]
    # ranks recomputed from the written scores
    assert ranks_from_scores(torch.from_numpy(z["S"]), torch.from_numpy(z["gold"])).tolist() == base["ranks"]
    assert not list(tmp_path.glob(".scores-*")), "temporary memmaps must be cleaned up"


def test_unknown_gold_is_a_clear_error(model, synthetic_dataset):
    from mimic.data.schema import Mention

    bad = [Mention(id="x", sentence="alder river", mention="alder", answer="Q_NOT_THERE")]
    with pytest.raises(ValueError, match="not in the KB"):
        evaluate(model, synthetic_dataset.kb, bad)
