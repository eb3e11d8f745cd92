"""The trainable-backbone input cache (mimic.training.input_cache): same pixels, same training, bad images."""

from __future__ import annotations

import pytest
import torch

from mimic.backbones.clip import ClipBackbone
from mimic.data.formats import load_dataset
from mimic.data.schema import Dataset, Entity, KnowledgeBase, Mention
from mimic.models.linking_model import LinkingModel, load_images, mention_text
from mimic.training.input_cache import InputCache
from mimic.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def official_ds(synthetic_official):
    return load_dataset(synthetic_official)


@pytest.mark.parametrize("mode", ["fixed", "compat"])
def test_cached_inputs_equal_the_per_batch_path(official_ds, tiny_clip_dir, mode):
    model = LinkingModel.build(ClipBackbone(str(tiny_clip_dir)), mode=mode)
    ms = list(official_ds.split("train"))[:12]
    ents = [official_ds.kb[official_ds.kb.position(m.answer)] for m in ms]
    cache = InputCache(model, ms, ents, torch.device("cpu"), max_bytes=1 << 30)
    ids, mask, pixels, has, all_present = cache.mention_inputs(torch.arange(len(ms)), model.backbone)
    tok = model.backbone.tokenize([mention_text(m) for m in ms], model.config.text_max_length)
    ref_px, ref_has = model.backbone.pixels_from_images(
        load_images([m.image for m in ms], mode), resize="squash" if mode == "compat" else "default"
    )
    assert torch.equal(ids, tok["input_ids"]) and torch.equal(mask, tok["attention_mask"])
    assert torch.equal(has, ref_has) and torch.equal(pixels, ref_px)  # bit for bit
    assert bool(has.any()) and all_present == bool(has.all())


@pytest.mark.slow
def test_training_with_the_cache_matches_training_without(official_ds, tiny_clip_dir, tmp_path):
    base = dict(
        backbone=str(tiny_clip_dir),
        freeze_backbone=False,
        lr=1e-3,
        epochs=2,
        batch_size=8,
        val_every=9,
        patience=9,
        progress=False,
        seed=0,
        test_after=False,
        device="cpu",
    )
    ds = Dataset(official_ds.kb, {"train": list(official_ds.split("train"))[:40]}, name="small")
    a = train(TrainConfig(output=str(tmp_path / "cached"), **base), ds)
    b = train(TrainConfig(output=str(tmp_path / "plain"), input_cache_gib=0, **base), ds)
    assert a["input_cache"]["images"] > 0 and not a["input_cache"]["on_device"]
    assert b["input_cache"] is None
    la = [h["train_loss"] for h in a["history"]]
    lb = [h["train_loss"] for h in b["history"]]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)


def test_too_big_cache_falls_back_and_bad_images_count_as_missing(tiny_clip_dir, tmp_path, caplog):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    kb = KnowledgeBase(
        [
            Entity(id=f"Q{i}", name=f"entity {i}", text=f"thing number {i}", images=[str(good)] if i % 2 else [])
            for i in range(6)
        ]
    )
    ms = [
        Mention(
            id=f"m{i}",
            sentence=f"about entity {i}",
            mention=f"entity {i}",
            answer=f"Q{i}",
            image=[str(good), str(bad), None][i % 3],
        )
        for i in range(6)
    ]
    model = LinkingModel.build(ClipBackbone(str(tiny_clip_dir)))
    cache = InputCache(model, ms, list(kb.entities), torch.device("cpu"), max_bytes=1 << 30)
    assert cache.image_stats["unreadable"] == 1 and cache.image_stats["loaded"] == 1
    _, _, px, has, all_present = cache.mention_inputs(torch.arange(6), model.backbone)
    assert has.tolist() == [True, False, False, True, False, False] and all_present is False
    assert float(px[1].abs().sum()) == 0.0
    with pytest.raises(MemoryError, match="input_cache_gib"):
        InputCache(model, ms, list(kb.entities), torch.device("cpu"), max_bytes=10)
    s = train(
        TrainConfig(
            output=str(tmp_path / "run"),
            backbone=str(tiny_clip_dir),
            epochs=1,
            batch_size=3,
            progress=False,
            test_after=False,
            device="cpu",
            input_cache_gib=1e-9,
        ),
        Dataset(kb, {"train": ms}, name="tiny"),
    )
    assert s["input_cache"] is None and s["history"][0]["train_loss"] > 0
    assert "decoded per batch instead" in caplog.text


def _digest(folder):
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("check_every", [1, 3])
def test_a_non_finite_loss_stops_training_before_any_save(
    official_ds, tiny_clip_dir, tmp_path, monkeypatch, check_every
):
    """check_every 3 exercises the deferred check used on CUDA: the poisoned steps are never saved."""
    from mimic.models.modeling_mimic import MimicHeads

    ds = Dataset(official_ds.kb, {"train": list(official_ds.split("train"))[:40]}, name="small")
    cfg = dict(
        output=str(tmp_path / "run"),
        backbone=str(tiny_clip_dir),
        lr=1e-3,
        batch_size=8,
        progress=False,
        test_after=False,
        device="cpu",
        check_every=check_every,
        seed=0,
    )
    train(TrainConfig(epochs=1, **cfg), ds)  # epoch 1 saved in last/
    saved = _digest(tmp_path / "run" / "last")
    real, calls = MimicHeads.training_loss, {"n": 0}

    def poisoned(self, *a, **kw):
        loss, parts = real(self, *a, **kw)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] == 2 else (loss, parts)

    monkeypatch.setattr(MimicHeads, "training_loss", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite training loss in epoch 2.*untouched"):
        train(TrainConfig(epochs=2, **cfg), ds)  # resumes from last/, poisoned at step 2
    assert calls["n"] == (2 if check_every == 1 else 3)
    assert _digest(tmp_path / "run" / "last") == saved and "heads.safetensors" in saved
