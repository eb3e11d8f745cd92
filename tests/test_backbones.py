"""Backbone selection ("auto" and explicit), the CLIP backbone's outputs, and per-mode image handling."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import mimic.backbones as backbones
from mimic.models.linking_model import ImageLoadStats, LinkingModel, load_images


def test_auto_falls_back_to_offline_loudly(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "_clip_is_cached", lambda repo: False)
    assert backbones.resolve_auto_backbone() == "offline"
    built = []
    monkeypatch.setattr("mimic.backbones.OfflineBackbone", lambda: built.append("offline") or "OFFLINE")
    assert backbones.load_backbone("auto") == "OFFLINE"
    assert "offline MiniLM-L6 + EfficientNet-Lite0" in capsys.readouterr().err


def test_auto_prefers_cached_clip_and_explicit_path_wins(monkeypatch, tiny_clip_dir, capsys):
    monkeypatch.setattr(backbones, "_clip_is_cached", lambda repo: True)
    assert backbones.resolve_auto_backbone() == "clip"
    # an explicit local folder is used as given, whatever "auto" would pick
    bb = backbones.load_backbone(str(tiny_clip_dir))
    assert bb.describe() == {"type": "clip", "name_or_path": str(tiny_clip_dir)}
    assert capsys.readouterr().err == ""


def test_clip_outputs_follow_the_paper(tiny_clip):
    tok = tiny_clip.tokenize(["alder [SEP] alder painter", "birch"], 40)
    assert tok["input_ids"].shape == (2, 40)
    with torch.no_grad():
        text = tiny_clip.encode_text(tok["input_ids"], tok["attention_mask"])
        pixels, has = tiny_clip.pixels_from_images([Image.new("RGB", (50, 20), (9, 9, 9)), None])
        g, t = tiny_clip.encode_pixels(pixels)
        ref = tiny_clip.clip(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], pixel_values=pixels)
    d = tiny_clip.dims
    assert text.global_.shape == (2, d.text_global) and text.tokens.shape == (2, 40, d.text_token)
    assert t.shape == (2, d.num_image_tokens, d.image_token) and has.tolist() == [True, False]
    # identical to the four CLIPModel outputs the official encoder uses
    torch.testing.assert_close(text.global_, ref.text_embeds)
    torch.testing.assert_close(text.tokens, ref.text_model_output.last_hidden_state)
    torch.testing.assert_close(g, ref.image_embeds)
    torch.testing.assert_close(t, ref.vision_model_output.last_hidden_state)
    assert float(pixels[1].abs().sum()) == 0.0  # missing image -> all-zero pixels


def test_image_handling_per_mode(tmp_path):
    pal = tmp_path / "palette.png"
    Image.new("P", (8, 8), 3).save(pal)
    rgb = tmp_path / "rgb.jpg"
    Image.new("RGB", (8, 8), (200, 0, 0)).save(rgb)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = [str(pal), str(rgb), str(broken), None, str(tmp_path / "missing.png")]
    fixed_stats, compat_stats = ImageLoadStats(), ImageLoadStats()
    fixed = load_images(paths, "fixed", fixed_stats)
    compat = load_images(paths, "compat", compat_stats)
    assert [x is not None for x in fixed] == [True, True, False, False, False]
    assert all(x.mode == "RGB" for x in fixed if x is not None)
    # compat: the non-RGB palette image becomes "no image" (zeros), like transformers 4.18 did
    assert [x is not None for x in compat] == [False, True, False, False, False]
    assert compat_stats["non_rgb_zeroed"] == 1 and fixed_stats["unreadable"] == 2 and fixed_stats["absent"] == 1


def test_compat_encodes_the_zero_image_fixed_masks_it(tiny_clip):
    with torch.no_grad():
        fixed = LinkingModel.build(tiny_clip, mode="fixed").eval()
        compat = LinkingModel.build(tiny_clip, mode="compat").eval()
        _, img_f = fixed.backbone_features(["alder"], [None])
        _, img_c = compat.backbone_features(["alder"], [None])
    assert not bool(img_f.has_image[0]) and float(img_f.tokens.abs().sum()) == 0.0
    assert float(img_c.tokens.abs().sum()) > 0.0  # the mean-colour image gets a real embedding


def test_unknown_backbone_description_is_an_error():
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.load_backbone({"type": "resnet"})
