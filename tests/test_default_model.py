"""The app's default checkpoint (`assets/models/default`, built by `python -m assets.default_model`),
what the app serves with and without settings, and the builder's pieces on tiny inputs. Nothing
here retrains the real model: the committed checkpoint is loaded as it is."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from app.config import DEFAULT_CHECKPOINT, AppConfig
from assets.default_model.augment import apply_ops, augmented_view, draw_ops
from assets.default_model.bridge import class_phrase, image_class_probs, imagenet_labels, top_classes
from assets.default_model.build import (
    COMMAND,
    DEFAULT_OUTPUT,
    calibrate_no_image_score,
    demo_example_sentences,
    make_split,
)
from assets.default_model.texts import (
    check_disjoint,
    keywords,
    neutral_mention,
    text_mentions,
)
from assets.demo_builder.build import demo_kb_path, load_demo_kb
from mimic.data.jsonl import load_jsonl_dataset
from mimic.data.schema import Entity, KnowledgeBase
from mimic.models.checkpoint import load_checkpoint, read_config, read_metrics

MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def default_model():
    return load_checkpoint(DEFAULT_CHECKPOINT)


# -- the committed checkpoint --------------------------------------------------------------------------
def test_default_checkpoint_loads_and_is_small(default_model):
    assert DEFAULT_CHECKPOINT.resolve() == DEFAULT_OUTPUT.resolve()  # the app serves what the builder writes
    files = [p for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"config.json", "heads.safetensors", "metrics.json"}  # heads only
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    cfg = read_config(DEFAULT_CHECKPOINT)
    assert cfg["model_type"] == "mimic" and cfg["model_config"]["mode"] == "fixed"
    assert cfg["backbone"] == {"type": "offline"} and cfg["backbone_trained"] is False
    assert cfg["default_model"]["command"] == COMMAND
    metrics = read_metrics(DEFAULT_CHECKPOINT)
    assert metrics["built_by"] == COMMAND and "not the 48 demo examples" in metrics["trained_on"]
    assert {"text", "image", "bridge"} <= set(metrics["training_data"]["train"])
    assert default_model.checkpoint_info["fingerprint"] == cfg["fingerprint"]
    # VDLU's no-image score was calibrated after training (an entity without an image is not sunk)
    assert float(default_model.heads.no_image_score) == pytest.approx(metrics["no_image_score"]["calibrated"])
    assert type(default_model.backbone).__name__ == "OfflineBackbone"
    assert default_model.config.num_image_tokens == 49


# -- what the app serves ---------------------------------------------------------------------------------
def test_config_default_zero_shot_and_pinned_checkpoint():
    from retraining import RetrainConfig

    unset = AppConfig.from_env({})
    assert unset.checkpoint is None and unset.base_checkpoint == str(DEFAULT_CHECKPOINT)
    zero = AppConfig.from_env({"MIMIC_CHECKPOINT": "zero-shot"})
    assert zero.checkpoint is None and zero.base_checkpoint is None
    pinned = AppConfig.from_env({"MIMIC_CHECKPOINT": "/some/ckpt"})
    assert pinned.checkpoint == pinned.base_checkpoint == "/some/ckpt"
    # the default checkpoint is for the offline backbone: another backbone ranks zero-shot
    assert AppConfig.from_env({"MIMIC_BACKBONE": "clip"}).base_checkpoint is None
    assert AppConfig.from_env({"MIMIC_BACKBONE": "offline"}).base_checkpoint == str(DEFAULT_CHECKPOINT)
    assert RetrainConfig.from_env({"MIMIC_CHECKPOINT": "zero-shot"}).checkpoint is None


class _Versions:
    """The two store calls `_unpinned_start` makes."""

    def __init__(self, promoted, names):
        self.promoted, self.names = promoted, names

    def promoted_model_version(self):
        return self.promoted

    def list_model_versions(self):
        return [SimpleNamespace(name=n) for n in self.names]


def test_which_model_a_start_serves(tmp_path):
    from app.context import _unpinned_start

    default = AppConfig.from_env({"DATA_DIR": str(tmp_path)})
    zero = AppConfig.from_env({"DATA_DIR": str(tmp_path), "MIMIC_CHECKPOINT": "zero-shot"})
    dflt = str(DEFAULT_CHECKPOINT)
    zs = SimpleNamespace(name="zero-shot (offline)", checkpoint=None)
    # a fresh data folder: the default checkpoint, or zero-shot when asked for
    assert _unpinned_start(_Versions(None, []), default) == (dflt, None, False)
    assert _unpinned_start(_Versions(None, []), zero) == (None, None, False)
    # a data folder from before the default checkpoint (only the automatic zero-shot version): the
    # default serves and is promoted in its place
    assert _unpinned_start(_Versions(zs, [zs.name]), default) == (dflt, None, True)
    # an admin rolled back to zero-shot (other versions exist): kept
    assert _unpinned_start(_Versions(zs, [zs.name, "r1"]), default) == (None, None, False)
    # a promoted retrained version keeps serving after a restart
    ck = tmp_path / "r1"
    ck.mkdir()
    r1 = SimpleNamespace(name="r1", checkpoint=str(ck))
    assert _unpinned_start(_Versions(r1, ["default", "r1"]), default) == (str(ck), "r1", False)
    # the default folder missing (a checkout without assets/models): zero-shot
    gone = AppConfig.from_env({"DATA_DIR": str(tmp_path)}, default_checkpoint=str(tmp_path / "missing"))
    assert _unpinned_start(_Versions(None, []), gone) == (None, None, False)


@pytest.fixture(scope="module")
def zero_shot_ctx(tmp_path_factory):
    from app.context import AppContext

    data = tmp_path_factory.mktemp("zero_shot_data")
    env = {"DATA_DIR": str(data), "MIMIC_CHECKPOINT": "zero-shot", "MIMIC_EXAMPLES": "", "MIMIC_WATCH_SECONDS": "0"}
    cfg = AppConfig.from_env(env)  # (no examples: the first queue is not predicted, which saves time)
    ctx = AppContext.start(cfg, progress=False)
    yield ctx
    ctx.stop()
    ctx.store.close()


def test_zero_shot_setting_serves_the_zero_shot_ranking(zero_shot_ctx):
    from app.tabs import link as link_tab

    ctx = zero_shot_ctx
    d = ctx.service.describe()
    assert d["scoring"] == "zero-shot" and d["version"] == "zero-shot (offline)" and d["checkpoint"] is None
    r = link_tab.link(
        ctx, str(demo_kb_path() / "query_images" / "X01.jpg"), "Chelsea fell asleep on the windowsill again.", "Chelsea"
    )
    assert r.scoring == "zero-shot" and r.top.entity_id == "D001"
    assert r.top.S_C is None and r.top.explanation.kind == "similarity"  # no joint space offline
    assert link_tab.result_json(ctx, r)["scoring"] == "zero-shot"


@pytest.mark.slow
def test_zero_shot_demo_rankings_are_meaningful(zero_shot_ctx):
    """Zero-shot top-1 on the 48 demo examples far above chance (1/48); the default checkpoint's is
    tested on the session app (tests/test_app_handlers.py)."""
    from app.tabs import link as link_tab

    examples = load_jsonl_dataset(demo_kb_path()).split("examples")
    hits = sum(
        link_tab.link(zero_shot_ctx, m.image, m.sentence, (m.start, m.end)).top.entity_id == m.answer for m in examples
    )
    assert len(examples) == 48 and hits / len(examples) >= 0.85


# -- the builder's pieces ----------------------------------------------------------------------------------
def _gradient(w=64, h=48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def test_augmented_views_are_seeded_pil_views():
    img = _gradient()
    a = np.asarray(augmented_view(img, random.Random(3)))
    b = np.asarray(augmented_view(img, random.Random(3)))
    assert np.array_equal(a, b)  # a seed gives the same view
    ops = [draw_ops(random.Random(i)) for i in range(60)]
    for o in ops:
        left, top, right, bottom = o.crop
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert 0.15 * 0.99 <= (right - left) * (bottom - top) <= 1.0
        assert all(0.75 <= f <= 1.25 for f in (o.brightness, o.contrast, o.colour)) and -90 <= o.rotate <= 90
    assert any(o.flip for o in ops) and any(not o.flip for o in ops) and any(o.rotate for o in ops)
    same = ops[0].__class__(crop=(0, 0, 1, 1), flip=False, rotate=0.0, brightness=1, contrast=1, colour=1)
    assert np.array_equal(np.asarray(apply_ops(img, same)), np.asarray(img))  # identity ops: the image itself
    mirrored = apply_ops(img, same.__class__(**{**same.__dict__, "flip": True}))
    assert np.array_equal(np.asarray(mirrored), np.asarray(img)[:, ::-1])
    big = apply_ops(Image.new("RGB", (800, 400), (9, 9, 9)), same)
    assert big.mode == "RGB" and max(big.size) == 256


def test_imagenet_class_names_bridge(default_model):
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[281] == "tabby cat" and labels[967] == "espresso"
    p = torch.zeros(1000)
    p[[967, 968, 10]] = torch.tensor([0.7, 0.2, 0.01])
    assert top_classes(p, labels, k=3, min_prob=0.05) == ["espresso", "cup"]  # 0.01 is dropped
    assert top_classes(torch.full((1000,), 0.001), labels, k=3, min_prob=0.05) == ["tench"]  # the top one stays
    assert class_phrase(["espresso"]) == "an espresso"
    assert class_phrase(["tabby cat", "tiger cat", "Egyptian Mau"]) == "a tabby cat, a tiger cat or an Egyptian Mau"
    # the offline EfficientNet's own prediction for the demo KB's coffee photo
    coffee = Image.open(demo_kb_path() / "images" / "coffee.jpg").convert("RGB")
    probs = image_class_probs(default_model.backbone, [coffee])
    assert probs.shape == (1, 1000) and float(probs.sum()) == pytest.approx(1.0, abs=1e-4)
    assert top_classes(probs[0], labels, k=1) == ["espresso"]


def test_synthetic_texts_mark_their_mention_and_avoid_the_demo_examples():
    kb, _ = load_demo_kb()
    rng = random.Random(0)
    mentions = []
    for e in kb.entities:
        mentions += text_mentions(e, rng, 9, "t")
        mentions.append(neutral_mention(f"n-{e.id}", e, rng, None))
    for m in mentions:
        assert m.sentence[m.start : m.end] == m.mention and m.answer in kb
    demo = demo_example_sentences()
    assert len(demo) == 48
    check_disjoint(mentions, demo)  # none of them is a demo example
    leaked = mentions[:3] + [mentions[0].__class__(id="x", sentence=demo[0].upper(), mention="x", answer="D001")]
    with pytest.raises(ValueError, match="demo examples"):
        check_disjoint(leaked, demo)
    e = Entity("E1", "Coffee", "A drink made from roasted coffee beans, served hot.")
    words = keywords(e)
    assert "drink" in words and "roasted" in words and "coffee" not in words and "from" not in words


def test_make_split_on_a_tiny_kb(default_model, tmp_path):
    imgs = []
    for i, colour in enumerate(((200, 30, 30), (30, 30, 200))):
        p = tmp_path / f"e{i}.png"
        Image.new("RGB", (40, 30), colour).save(p)
        imgs.append(str(p))
    kb = KnowledgeBase(
        [
            Entity("E1", "Mars", "The red planet, fourth from the sun.", ["Mars (planet)"], [imgs[0]]),
            Entity("E2", "Mars", "A chocolate bar with caramel and nougat.", ["Mars bar"], [imgs[1]]),
        ]
    )
    mentions, counts = make_split(
        kb,
        "train",
        random.Random(1),
        tmp_path / "views",
        default_model.backbone,
        imagenet_labels(),
        n_text=3,
        n_views=2,
        n_bridge=2,
        neutral_share=0.5,
    )
    assert counts == {"text": 6, "image": 4, "image_neutral": counts["image_neutral"], "bridge": 4}
    assert len(mentions) == 14 and {m.answer for m in mentions} == {"E1", "E2"}
    views = [m for m in mentions if m.image]
    assert len(views) == 4 and all(
        Path(m.image).is_file() and Path(m.image).parent == tmp_path / "views" for m in views
    )
    bridge = [m for m in mentions if "-b" in m.id]
    assert len(bridge) == 4 and all(m.image is None and " a" in m.sentence for m in bridge)
    assert all(m.sentence[m.start : m.end] == m.mention for m in mentions)
    before = float(default_model.heads.no_image_score)
    try:
        cal = calibrate_no_image_score(default_model, kb, mentions)
        assert cal["trained"] == before and cal["pairs"] == 4  # 4 views x the 1 other entity
        assert float(default_model.heads.no_image_score) == pytest.approx(cal["calibrated"])
    finally:
        with torch.no_grad():
            default_model.heads.no_image_score.fill_(before)
