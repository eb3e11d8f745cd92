"""Checkpoint folders (round trip, atomicity, fingerprint) and import of official Lightning checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from test_modeling import reference_official

from mimic.models.checkpoint import CheckpointError, import_official, load_checkpoint, read_config, save_checkpoint
from mimic.models.linking_model import LinkingModel


def _inputs():
    texts_m = ["alder [SEP] the alder painter near", "birch [SEP] birch river"]
    texts_e = ["alder [SEP] painter alder", "birch [SEP] river birch", "cedar [SEP] city cedar"]
    imgs_m = [Image.new("RGB", (30, 20), (200, 30, 30)), None]
    imgs_e = [Image.new("RGB", (20, 20), (190, 40, 40)), Image.new("RGB", (25, 25), (20, 30, 200)), None]
    return texts_m, imgs_m, texts_e, imgs_e


@torch.no_grad()
def _scores(model):
    tm, im, te, ie = _inputs()
    return model.heads(model.encode(tm, im), model.encode(te, ie))


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_round_trip_frozen_and_trained_backbone(tiny_clip_dir, tmp_path):
    from mimic.backbones.clip import ClipBackbone

    torch.manual_seed(1)
    model = LinkingModel.build(ClipBackbone(str(tiny_clip_dir)), mode="fixed").eval()
    _perturb(model.heads, 1)
    want = _scores(model)
    # frozen: only heads saved, backbone rebuilt from its description
    save_checkpoint(model, tmp_path / "frozen", backbone_trained=False, metrics={"dev": {"MRR": 0.5}})
    got = _scores(load_checkpoint(tmp_path / "frozen"))
    torch.testing.assert_close(got.S, want.S)
    assert not (tmp_path / "frozen" / "backbone").exists()
    # trained backbone: saved inside the checkpoint, independent of the original folder
    _perturb(model.backbone, 2)
    want = _scores(model)
    save_checkpoint(model, tmp_path / "trained", backbone_trained=True)
    cfg = read_config(tmp_path / "trained")
    assert cfg["backbone"]["name_or_path"] == "backbone" and cfg["backbone_trained"]
    torch.testing.assert_close(_scores(load_checkpoint(tmp_path / "trained")).S, want.S)
    assert cfg["fingerprint"] != read_config(tmp_path / "frozen")["fingerprint"]
    assert json.loads((tmp_path / "frozen" / "metrics.json").read_text())["dev"]["MRR"] == 0.5


def test_failed_write_leaves_previous_checkpoint_intact(tiny_clip, tmp_path, monkeypatch):
    model = LinkingModel.build(tiny_clip, mode="fixed").eval()
    target = tmp_path / "best"
    save_checkpoint(model, target, backbone_trained=False, metrics={"v": 1})
    before = read_config(target)["fingerprint"]
    _perturb(model.heads, 3)

    import mimic.models.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, target, backbone_trained=False, metrics={"v": 2})
    assert read_config(target)["fingerprint"] == before
    assert json.loads((target / "metrics.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["best"], "no temporary folder may remain"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(tmp_path)


def _official_lightning_checkpoint(model: LinkingModel, path):
    """What the official code saves: a Lightning dict whose state_dict has encoder.* / matcher.* keys."""
    sd = {f"encoder.clip.{k}": v for k, v in model.backbone.clip.state_dict().items()}
    for k, v in model.heads.state_dict().items():
        sd[k if k.startswith("matcher.") else f"encoder.{k}"] = v
    torch.save(
        {
            "epoch": 13,
            "global_step": 1846,
            "pytorch-lightning_version": "1.7.7",
            "state_dict": sd,
            "hyper_parameters": {"lr": 1e-5},
        },
        path,
    )


@pytest.mark.slow
def test_import_official_scores_identically(tiny_clip_dir, tmp_path):
    from mimic.backbones.clip import ClipBackbone

    torch.manual_seed(2)
    src = LinkingModel.build(ClipBackbone(str(tiny_clip_dir)), mode="compat").eval()
    _perturb(src.heads, 4)
    _perturb(src.backbone, 5)  # fine-tuned CLIP weights must come from the checkpoint, not the folder
    ckpt = tmp_path / "epoch=13.ckpt"
    _official_lightning_checkpoint(src, ckpt)
    assert set(k.split(".")[1] for k in torch.load(ckpt)["state_dict"] if k.startswith("matcher.")) == {
        "tglu",
        "vdlu",
        "cmfu",
        "text_cls_layernorm",
        "text_tokens_layernorm",
        "image_cls_layernorm",
        "image_tokens_layernorm",
    }
    # through the CLI, as a user would
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "import-official",
            str(ckpt),
            "--backbone",
            str(tiny_clip_dir),
            "--output",
            str(tmp_path / "imported"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    imported = load_checkpoint(tmp_path / "imported")
    assert imported.config.mode == "compat"
    want, got = _scores(src), _scores(imported)
    for k in ("S", "S_T", "S_V", "S_C"):
        torch.testing.assert_close(getattr(got, k), getattr(want, k), rtol=1e-5, atol=1e-5)
    # and against the per-pair transcription of the official equations
    tm, im, te, ie = _inputs()
    with torch.no_grad():
        mt, mi = imported.backbone_features(tm, im)
        et, ei = imported.backbone_features(te, ie)
    h = imported.heads.double()
    from test_modeling import as_double

    ref = reference_official(h, *as_double(mt, mi), *as_double(et, ei))
    torch.testing.assert_close(got.S.double(), torch.from_numpy(ref[0]), rtol=1e-4, atol=1e-4)


def test_import_rejects_files_that_are_not_official(tmp_path, tiny_clip_dir):
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="not an official MIMIC checkpoint"):
        import_official(bad, tiny_clip_dir, tmp_path / "out")
    (tmp_path / "junk.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        import_official(tmp_path / "junk.ckpt", tiny_clip_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
