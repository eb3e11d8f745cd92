"""The frozen backbone's text memo: same scores as encoding every time, each text encoded once, shared
by instances with the same weights, never stale after a weight changes, out of the way of training."""

from __future__ import annotations

import torch

from mimic.backbones.clip import ClipBackbone
from mimic.models.linking_model import LinkingModel
from mimic.training.text_memo import TextFeatureMemo, installed_memo, shared_memo

TEXTS = [
    "Robertson [SEP] Robertson scored twice for the Scots in the final at Hampden Park",
    "Paris [SEP] He moved to Paris, Texas",
    "Oscar Robertson [SEP] ",
    "a [SEP] b",
]


def _model(tiny_clip_dir) -> LinkingModel:
    torch.manual_seed(0)
    return LinkingModel.build(ClipBackbone(str(tiny_clip_dir)), mode="fixed", text_max_length=32).eval()


def _scores(model, texts):
    with torch.no_grad():
        text, image = model.backbone_features(texts, [None] * len(texts))
        side = model.heads.side_features(text, image)
        return text, model.heads.score(model.heads.mention_cache(side), model.heads.entity_cache(side)).S


def test_memo_gives_the_scores_of_encoding_every_time_and_encodes_each_text_once(tiny_clip_dir):
    model = _model(tiny_clip_dir)
    plain_text, plain = _scores(model, TEXTS)
    memo = TextFeatureMemo(batch_size=2)
    with memo.installed(type(model.backbone)):
        text, first = _scores(model, TEXTS)
        assert memo.misses == len(TEXTS) and memo.hits == 0
        _, again = _scores(model, TEXTS[::-1])
        assert memo.misses == len(TEXTS) and memo.hits == len(TEXTS)  # nothing encoded twice
    assert installed_memo(type(model.backbone)) is None  # restored on exit
    valid = plain_text.mask.unsqueeze(-1)
    # valid positions as the padded encoding computes them; padding comes back as zeros
    assert torch.allclose(text.tokens * valid, plain_text.tokens * valid, atol=1e-5)
    assert torch.count_nonzero(text.tokens * ~valid) == 0
    assert torch.allclose(text.global_, plain_text.global_, atol=1e-5)
    assert torch.allclose(first, plain, rtol=1e-4, atol=1e-3)  # float rounding of the shorter batch
    assert torch.allclose(again, first.flip(0).flip(1), atol=1e-5)


def test_instances_with_the_same_weights_share_rows_and_a_changed_weight_misses(tiny_clip_dir):
    a, b = _model(tiny_clip_dir), _model(tiny_clip_dir)
    with shared_memo(a.backbone) as memo:
        with shared_memo(b.backbone) as inner:
            assert inner is memo  # nested steps share the outermost memo
        _scores(a, TEXTS)
        _scores(b, TEXTS)
        assert memo.misses == len(TEXTS) and memo.hits == len(TEXTS)
        with torch.no_grad():
            next(b.backbone.parameters()).add_(0.01)  # an in-place update: new fingerprint
        changed_text, _ = _scores(b, TEXTS)
        assert memo.misses == 2 * len(TEXTS)
    plain_text, _ = _scores(b, TEXTS)
    assert torch.allclose(changed_text.global_, plain_text.global_, atol=1e-5)


def test_memo_steps_aside_while_the_backbone_trains_and_round_trips_through_a_file(tiny_clip_dir, tmp_path):
    model = _model(tiny_clip_dir)
    memo = TextFeatureMemo()
    tok = model.backbone.tokenize(TEXTS, 32)
    with memo.installed(type(model.backbone)):
        out = model.backbone.encode_text(tok["input_ids"], tok["attention_mask"])  # grad on, params trainable
        assert out.tokens.requires_grad and memo.misses == 0
        with torch.no_grad():
            model.backbone.encode_text(tok["input_ids"], tok["attention_mask"])
    memo.save(tmp_path / "memo.pt")
    other = TextFeatureMemo()
    assert other.load(tmp_path / "memo.pt") == len(TEXTS)
    with other.installed(type(model.backbone)), torch.no_grad():
        model.backbone.encode_text(tok["input_ids"], tok["attention_mask"])
    assert other.hits == len(TEXTS) and other.misses == 0


def test_feature_store_of_text_only_items_matches_the_backbone_path(tiny_clip_dir):
    from mimic.training.feature_store import FeatureStore

    model = _model(tiny_clip_dir)
    store = FeatureStore(model, TEXTS, [None, "", None, None], batch_size=3, progress=False, desc="t")
    with torch.no_grad():
        text, image = model.backbone_features(TEXTS, [None] * len(TEXTS))
    assert torch.allclose(store.text_global.float(), text.global_, atol=1e-3)  # the store keeps fp16
    assert torch.allclose(store.text_tokens.float(), text.tokens, atol=1e-2)
    assert torch.equal(store.text_mask, text.mask) and not store.has_image.any() and not image.has_image.any()
    assert store.image_stats == {"absent": len(TEXTS)} and len(store.img_global) == 0
