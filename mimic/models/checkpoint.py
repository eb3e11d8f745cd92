"""This project's checkpoint folder, and import of the official PyTorch Lightning checkpoints.

Layout of a checkpoint folder (written atomically, see `mimic.atomic`):
  config.json         format, model type and config, backbone description, code version, fingerprint
  heads.safetensors   the MIMIC heads (image projections + matcher)
  backbone/           a fine-tuned CLIP saved with save_pretrained (model + tokenizer), or
  backbone.safetensors  a fine-tuned offline backbone's state dict; neither when the backbone was
                      frozen (it is then rebuilt from its description)
  lexical_unit.safetensors  optional: the fixed-mode lexical unit S_L (its config is config.json's
                      "lexical_unit"); outside the fingerprint, which names what a KB index
                      depends on (S_L re-ranks the shortlist and encodes no entity)
  metrics.json        training / evaluation metrics
  training_state.pt   optional: optimizer, epoch and RNG state for --resume
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file

from mimic import __version__
from mimic.atomic import recover_dir, write_dir_atomic
from mimic.backbones import load_backbone
from mimic.backbones.clip import ClipBackbone
from mimic.models.families import family, model_type_of
from mimic.models.lexical_unit import LexicalUnit, LexicalUnitConfig
from mimic.models.linking_model import LinkingModel
from mimic.models.modeling_m3el import M3ELConfig, M3ELHeads, heads_state_dict_from_official
from mimic.models.modeling_mimic import MimicConfig, MimicHeads

FORMAT = "mimic-studio-checkpoint"
FORMAT_VERSION = 1
LEXICAL_FILE = "lexical_unit.safetensors"


class CheckpointError(ValueError):
    pass


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _weight_files(root: Path) -> list[Path]:
    files = [root / "heads.safetensors"]
    if (root / "backbone.safetensors").exists():
        files.append(root / "backbone.safetensors")
    if (root / "backbone").is_dir():
        files += sorted((root / "backbone").glob("*.safetensors"))
    return files


def save_checkpoint(
    model: LinkingModel,
    path: str | Path,
    *,
    backbone_trained: bool,
    metrics: dict | None = None,
    training_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write `model` to the folder `path` atomically. Returns the path."""
    model_type = model_type_of(model.heads)

    def fill(tmp: Path):
        heads = {k: v.detach().cpu().contiguous() for k, v in model.heads.state_dict().items()}
        save_file(heads, str(tmp / "heads.safetensors"))
        backbone = model.backbone.describe()
        if backbone_trained:
            if backbone.get("type") == "clip":
                # describe() says "clip" only for a ClipBackbone
                cast(ClipBackbone, model.backbone).save_pretrained(str(tmp / "backbone"))
                backbone = {"type": "clip", "name_or_path": "backbone", "source": backbone["name_or_path"]}
            else:
                sd = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
                save_file(sd, str(tmp / "backbone.safetensors"))
        if training_state is not None:
            torch.save(training_state, tmp / "training_state.pt")
        unit = model.lexical_unit
        if unit is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in unit.state_dict().items()}, str(tmp / LEXICAL_FILE))
        cfg = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": model_type,
            "model_config": model.config.to_dict(),
            "backbone": backbone,
            "backbone_trained": bool(backbone_trained),
            "code_version": code_version(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        if unit is not None:
            cfg["lexical_unit"] = unit.config.to_dict()
            cfg["lexical_unit_sha256"] = _sha256_files([tmp / LEXICAL_FILE])[:16]
        cfg["fingerprint"] = (
            _sha256_files(_weight_files(tmp))[:16]
            + "-"
            + hashlib.sha256(json.dumps(cfg["model_config"], sort_keys=True).encode()).hexdigest()[:8]
        )
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2) + "\n")

    return write_dir_atomic(path, fill)


def read_config(path: str | Path) -> dict:
    path = Path(path)
    recover_dir(path)
    f = path / "config.json"
    if not f.exists():
        raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)")
    try:
        cfg = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{f}: invalid JSON ({exc})") from None
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not a {FORMAT} (format={cfg.get('format')!r})")
    return cfg


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", backbone=None, *, overrides: dict | None = None
) -> LinkingModel:
    """Rebuild the model saved in `path`. `backbone` may be passed to reuse an already-loaded one
    (only valid when the checkpoint's backbone was frozen). `overrides` replace fields of the saved
    head config (e.g. {"cross_modal_eval": "bidirectional"} for M3EL); weights the new config does
    not use are then ignored, weights it needs but the checkpoint lacks are an error."""
    path = Path(path)
    cfg = read_config(path)
    try:
        cfg_cls, heads_cls, _ = family(cfg.get("model_type", "mimic"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model_config = dict(cfg["model_config"])
    if overrides:
        unknown = [k for k in overrides if k not in cfg_cls.__dataclass_fields__]
        if unknown:
            raise CheckpointError(f"{path}: a {cfg.get('model_type', 'mimic')} model has no setting {unknown}")
        model_config.update(overrides)
    try:
        heads = heads_cls(cfg_cls.from_dict(model_config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if backbone is None or cfg.get("backbone_trained"):
        backbone = load_backbone(cfg["backbone"], base_dir=path)
    if (path / "backbone.safetensors").exists():
        backbone.load_state_dict(load_file(str(path / "backbone.safetensors")))
    missing, unexpected = heads.load_state_dict(load_file(str(path / "heads.safetensors")), strict=False)
    if overrides:
        unexpected = []
        if missing:
            raise CheckpointError(
                f"{path}/heads.safetensors has no weights for {overrides} (missing {missing[:5]}); "
                "re-import or retrain with that setting"
            )
        cfg = {**cfg, "model_config": heads.config.to_dict(), "overrides": dict(overrides)}
    if missing or unexpected:
        raise CheckpointError(
            f"{path}/heads.safetensors does not match the config: missing {missing}, unexpected {unexpected}"
        )
    model = LinkingModel(backbone, heads).to(device)
    if cfg.get("lexical_unit") is not None:
        if heads.config.mode == "fixed":
            model.attach_lexical_unit(_load_lexical_unit(path, cfg["lexical_unit"]))
        else:  # compat reproduces the published model: the extension is off
            cfg = {**cfg, "lexical_unit": None, "lexical_unit_off": "compat mode"}
    model.eval()
    model.checkpoint_info = cfg
    return model


def _load_lexical_unit(path: Path, unit_cfg: dict) -> LexicalUnit:
    f = path / LEXICAL_FILE
    if not f.exists():
        raise CheckpointError(f"{path}: config.json names a lexical unit but {LEXICAL_FILE} is missing")
    try:
        unit = LexicalUnit(LexicalUnitConfig.from_dict(unit_cfg))
        unit.load_state_dict(load_file(str(f)))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}/{LEXICAL_FILE}: {exc}") from None
    return unit


def read_metrics(path: str | Path) -> dict:
    f = Path(path) / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else {}


# ------------------------------------------------------------------------------------------------
# Official checkpoints (pengfei-luo/MIMIC and zhiweihu1103/MEL-M3EL, PyTorch Lightning)
# ------------------------------------------------------------------------------------------------
#: First component after `matcher.` that identifies each family's official matcher.
OFFICIAL_MATCHER_UNITS = {"mimic": ("tglu", "vdlu", "cmfu"), "m3el": ("timm", "iimm", "cmm", "cmmb")}


def _load_lightning(ckpt_path: str | Path, trust_pickle: bool) -> tuple[dict, dict]:
    """-> (state_dict, the whole checkpoint object)."""
    try:
        obj = torch.load(str(ckpt_path), map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt_path}: no such file") from None
    except Exception as exc:  # pickle refused by weights_only, or not a torch file at all
        hint = (
            ""
            if trust_pickle
            else (
                " If you trust this file (it may hold pickled objects such as "
                "OmegaConf hyper-parameters), pass --trust-pickle."
            )
        )
        raise CheckpointError(f"{ckpt_path}: cannot read as a PyTorch checkpoint ({exc}).{hint}") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(str(k).startswith("matcher.") for k in sd):
        raise CheckpointError(
            f"{ckpt_path}: no 'state_dict' with 'matcher.*' keys: not an official MIMIC checkpoint (nor an M3EL one)"
        )
    return sd, obj


def detect_official_family(sd: dict) -> str | None:
    """ "mimic" or "m3el" from the official matcher's unit names (`matcher.tglu/vdlu/cmfu.*` vs
    `matcher.timm/iimm/cmm/cmmb.*`); None when neither or both appear."""
    units = {str(k).split(".")[1] for k in sd if str(k).startswith("matcher.") and str(k).count(".") >= 2}
    found = [name for name, names in OFFICIAL_MATCHER_UNITS.items() if units & set(names)]
    return found[0] if len(found) == 1 else None


def detect_official_cross_modal(obj: dict) -> tuple[str, str]:
    """The cross-modal head an official M3EL checkpoint was TRAINED with -> (head, how it was decided).

    The official code trains `cmmb` iff the `kb_img_folder` path holds "WikiDiverse"; the checkpoint
    always holds both modules, so only the saved hyper-parameters can tell."""
    hp = obj.get("hyper_parameters") if isinstance(obj, dict) else None
    if hp is not None and "WikiDiverse" in str(hp):
        return "bidirectional", "hyper-parameters name WikiDiverse (the official code trains cmmb for it)"
    if hp is not None:
        return "t2v", "hyper-parameters do not name WikiDiverse (the official code trains cmm)"
    return "t2v", "no hyper-parameters in the file: assumed cmm (pass --cross-modal bidirectional for WikiDiverse)"


def _m3el_dims(sd: dict) -> dict:
    """Head widths read from the official weights (the paper's are all 96)."""
    dims = {}
    for field, key in (
        ("dv", "encoder.image_cls_fc.weight"),
        ("timm_dim", "matcher.timm.fc_query.weight"),
        ("iimm_dim", "matcher.iimm.fc_query.weight"),
        ("cmm_dim", "matcher.cmm.text_fc.weight"),
    ):
        if key in sd:
            dims[field] = int(sd[key].shape[0])
    return dims


def import_official(
    ckpt_path: str | Path,
    clip_dir: str | Path,
    output: str | Path,
    *,
    mode: str = "compat",
    trust_pickle: bool = False,
    model: str | None = None,
    cross_modal: str | None = None,
    cross_modal_eval: str | None = None,
) -> Path:
    """Convert an official Lightning checkpoint (MIMIC or M3EL) into this project's format.

    model: "mimic" | "m3el" | None (detected from the `matcher.*` keys). M3EL only: `cross_modal` is
    the head the model was trained with (default: from the saved hyper-parameters, see
    `detect_official_cross_modal`); `cross_modal_eval` the head that scores, by default "t2v" in
    compat mode (the official `test_step` always uses `cmm`) and the trained head in fixed mode.
    Compat scores equal the official code's. The decisions are written to config.json ("official").
    """
    sd, obj = _load_lightning(ckpt_path, trust_pickle)
    detected = detect_official_family(sd)
    if model is None:
        if detected is None:
            raise CheckpointError(
                f"{ckpt_path}: cannot tell MIMIC from M3EL by its matcher keys (expected matcher.tglu/vdlu/cmfu "
                "or matcher.timm/iimm/cmm/cmmb): pass --model mimic|m3el"
            )
        model = detected
    if model not in OFFICIAL_MATCHER_UNITS:
        raise CheckpointError(f"unknown model family {model!r} (known: {sorted(OFFICIAL_MATCHER_UNITS)})")
    backbone = ClipBackbone(str(clip_dir))
    clip_sd = {k[len("encoder.clip.") :]: v for k, v in sd.items() if k.startswith("encoder.clip.")}
    if not clip_sd:
        raise CheckpointError(f"{ckpt_path}: no 'encoder.clip.*' weights")
    target = backbone.clip.state_dict()
    # Old transformers stored position_ids buffers that newer versions do not keep.
    clip_sd = {k: v for k, v in clip_sd.items() if k in target or not k.endswith("position_ids")}
    missing, unexpected = backbone.clip.load_state_dict(clip_sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"CLIP weights in {ckpt_path} do not fit {clip_dir}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    info: dict = {"family": model, "family_detected_from_keys": detected, "mode": mode}
    if model == "m3el":
        if cross_modal is None:
            cross_modal, why = detect_official_cross_modal(obj)
        else:
            why = "given (--cross-modal)"
        if cross_modal_eval is None:
            cross_modal_eval = "t2v" if mode == "compat" else cross_modal
        try:
            m_cfg = M3ELConfig.for_backbone(
                backbone.dims, mode=mode, cross_modal=cross_modal, cross_modal_eval=cross_modal_eval, **_m3el_dims(sd)
            )
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        heads: Any = M3ELHeads(m_cfg)
        heads_sd = heads_state_dict_from_official(sd, m_cfg)
        info.update(cross_modal=cross_modal, cross_modal_decided_by=why, cross_modal_eval=cross_modal_eval)
        if cross_modal == "bidirectional" and cross_modal_eval == "t2v":
            info["note"] = (
                "scores with the official evaluation head cmm, which the official code never trains for this "
                "model (reproduces the published numbers); --cross-modal-eval bidirectional scores with the "
                "trained cmmb"
            )
    else:
        heads = MimicHeads(MimicConfig.for_backbone(backbone.dims, mode=mode))
        heads_sd = {}
        for k, v in sd.items():
            if k.startswith("encoder.image_cls_fc.") or k.startswith("encoder.image_tokens_fc."):
                heads_sd[k[len("encoder.") :]] = v
            elif k.startswith("matcher."):
                heads_sd[k] = v
    missing, unexpected = heads.load_state_dict(heads_sd, strict=False)
    missing = [m for m in missing if m != "no_image_score"]  # fixed mode's own parameter starts at 0
    if missing or unexpected:
        hint = f" (the keys look like {detected.upper()}'s: drop --model)" if detected and detected != model else ""
        raise CheckpointError(
            f"{ckpt_path}: head weights do not match {model.upper()}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}{hint}"
        )
    linking = LinkingModel(backbone, heads)
    return save_checkpoint(
        linking,
        output,
        backbone_trained=True,
        extra={"imported_from": str(ckpt_path), "official": info},
        metrics={},
    )
