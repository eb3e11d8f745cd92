"""Import of official M3EL Lightning checkpoints through the CLI: family detection from the keys,
`--model` override, the trained vs the scoring cross-modal head (official evaluation uses `cmm`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mimic.models.checkpoint import CheckpointError, import_official, load_checkpoint, read_config
from mimic.models.linking_model import LinkingModel
from mimic.models.modeling_m3el import M3ELConfig, M3ELHeads


def official_m3el_checkpoint(clip_dir, path, *, seed=0, hyper_parameters=None):
    """An official-layout M3EL Lightning file: encoder.clip.*, encoder.image_*_fc.*, matcher.* with BOTH
    cmm and cmmb plus dead modules, random weights. -> (path, t2v heads, bidirectional heads, backbone)."""
    from mimic.backbones.clip import ClipBackbone

    torch.manual_seed(seed)
    backbone = ClipBackbone(str(clip_dir)).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # "fine-tuned": the file's CLIP differs from the folder's
    t2v = M3ELHeads(M3ELConfig.for_backbone(backbone.dims, mode="compat")).eval()
    bi = M3ELHeads(M3ELConfig.for_backbone(backbone.dims, mode="compat", cross_modal="bidirectional")).eval()
    bi.load_state_dict({k: v for k, v in t2v.state_dict().items() if not k.startswith("matcher.cmm.")}, strict=False)
    sd = {f"encoder.clip.{k}": v for k, v in backbone.clip.state_dict().items()}
    for h in (t2v, bi):
        for k, v in h.state_dict().items():
            sd[k if k.startswith("matcher.") else f"encoder.{k}"] = v
    sd["matcher.weight_cl_loss.logit_scale"] = torch.ones(())
    sd["matcher.text_fc.weight"] = torch.zeros(4, 4)
    obj = {"epoch": 15, "pytorch-lightning_version": "1.7.7", "state_dict": sd}
    if hyper_parameters is not None:
        obj["hyper_parameters"] = hyper_parameters
    torch.save(obj, path)
    return path, t2v, bi, backbone


def _inputs():
    tm = ["alder [SEP] the alder painter near", "birch [SEP] birch river"]
    te = ["alder [SEP] painter alder", "birch [SEP] river birch", "cedar [SEP] city cedar"]
    im = [Image.new("RGB", (30, 20), (200, 30, 30)), None]
    ie = [Image.new("RGB", (20, 20), (190, 40, 40)), Image.new("RGB", (25, 25), (20, 30, 200)), None]
    return tm, im, te, ie


@torch.no_grad()
def _S(model):
    tm, im, te, ie = _inputs()
    return model.heads(model.encode(tm, im), model.encode(te, ie)).S


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mimic", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("wikidiverse", [False, True])
def test_cli_imports_official_m3el_and_scores_as_the_heads_loaded_directly(tiny_clip_dir, tmp_path, wikidiverse):
    hp = {"data": {"kb_img_folder": "../data/WikiDiverse/kb_image" if wikidiverse else "../data/WikiMEL/kb_image"}}
    ckpt, t2v, bi, backbone = official_m3el_checkpoint(tiny_clip_dir, tmp_path / "epoch=15.ckpt", hyper_parameters=hp)
    r = _cli("import-official", ckpt, "--backbone", tiny_clip_dir, "--output", tmp_path / "imp")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model_type"] == "m3el" and out["official"]["family_detected_from_keys"] == "m3el"
    assert out["cross_modal"] == ("bidirectional" if wikidiverse else "t2v")
    assert out["cross_modal_eval"] == "t2v"  # compat: the official test_step's head
    cfg = read_config(tmp_path / "imp")
    assert cfg["model_type"] == "m3el" and cfg["model_config"]["cross_modal_eval"] == "t2v"
    model = load_checkpoint(tmp_path / "imp")
    # official evaluation = t2v heads (cmm) on the fine-tuned CLIP from the file
    want = _S(LinkingModel(backbone, t2v))
    torch.testing.assert_close(_S(model), want, rtol=1e-5, atol=1e-5)
    if wikidiverse:  # the trained bidirectional head, selected at load time
        both = load_checkpoint(tmp_path / "imp", overrides={"cross_modal_eval": "bidirectional"})
        torch.testing.assert_close(_S(both), _S(LinkingModel(backbone, bi)), rtol=1e-5, atol=1e-5)
        # fixed mode import defaults to the trained head
        r = _cli("import-official", ckpt, "--backbone", tiny_clip_dir, "--output", tmp_path / "fx", "--mode", "fixed")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["cross_modal_eval"] == "bidirectional"
    else:  # a t2v-trained model holds no bidirectional weights: a clear error
        with pytest.raises(CheckpointError, match="no weights for"):
            load_checkpoint(tmp_path / "imp", overrides={"cross_modal_eval": "bidirectional"})


@pytest.mark.slow
def test_family_from_keys_and_model_override(tiny_clip_dir, tmp_path):
    ckpt, *_ = official_m3el_checkpoint(tiny_clip_dir, tmp_path / "m3el.ckpt")
    # --model mimic on M3EL keys: refused, naming the detected family
    r = _cli("import-official", ckpt, "--backbone", tiny_clip_dir, "--output", tmp_path / "x", "--model", "mimic")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "do not match MIMIC" in r.stderr and "look like M3EL" in r.stderr
    assert not (tmp_path / "x").exists()
    # --model m3el with an explicit trained head
    r = _cli(
        "import-official", ckpt, "--backbone", tiny_clip_dir, "--output", tmp_path / "y",
        "--model", "m3el", "--cross-modal", "bidirectional",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cross_modal"] == "bidirectional"
    assert read_config(tmp_path / "y")["official"]["cross_modal_decided_by"] == "given (--cross-modal)"
    # MIMIC keys are detected as MIMIC; --model m3el on them is refused
    mimic = LinkingModel.build(load_checkpoint(tmp_path / "y").backbone, mode="compat")
    sd = {f"encoder.clip.{k}": v for k, v in mimic.backbone.clip.state_dict().items()}
    sd.update({k if k.startswith("matcher.") else f"encoder.{k}": v for k, v in mimic.heads.state_dict().items()})
    torch.save({"state_dict": sd}, tmp_path / "mimic.ckpt")
    import_official(tmp_path / "mimic.ckpt", tiny_clip_dir, tmp_path / "z")
    assert read_config(tmp_path / "z")["model_type"] == "mimic"
    with pytest.raises(CheckpointError, match="do not match M3EL"):
        import_official(tmp_path / "mimic.ckpt", tiny_clip_dir, tmp_path / "w", model="m3el")
