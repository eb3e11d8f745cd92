"""`RetrainConfig`: what one retraining run (and the policy that starts runs) is told."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mimic.config_file import ConfigFile

LOCK_NAME = "retrain.lock"  # in DATA_DIR/runs/


@dataclass
class RetrainConfig(ConfigFile):
    _what = "retrain config"

    data_dir: str = "data"  # the app's DATA_DIR; the store is db.open_store(data_dir)
    base_data: str | None = None  # optional base dataset (official / MELBench / JSONL)
    checkpoint: str | None = None  # serving checkpoint when no version is promoted
    prefer_promoted: bool = True  # the store's promoted version (if it has a checkpoint) serves
    backbone: str = "offline"  # backbone of the zero-shot serving model (app: MIMIC_BACKBONE)
    model: str = "mimic"  # family of a fresh candidate (zero-shot serving only)
    holdout: float = 0.2  # fraction of corrections held out (by mention uid hash)
    epochs: int = 4
    batch_size: int = 64
    lr: float | None = None  # None: 1e-3 fresh heads, 2e-4 heads from a checkpoint, 1e-5 full
    freeze_backbone: bool | None = None  # None: fine-tune the backbone on CUDA, freeze it on the CPU
    device: str = "auto"
    bf16: bool = True  # bf16 autocast for training on CUDA (ignored on the CPU)
    seed: int = 43
    min_mrr_delta: float = 0.0  # candidate held-out MRR - serving held-out MRR must be >= this ...
    # ... less this many held-out mentions' worth of noise (0.5: one mention slipping from rank 1 to
    # 2 costs 0.5 / n of MRR); 0 makes the held-out judge strict
    heldout_slack_mentions: float = 0.5
    max_dev_h1_drop: float = 0.005  # serving base-dev H@1 - candidate base-dev H@1 must be <= this
    min_heldout: int = 1  # fewer held-out corrections: no judgement, no promotion
    implausible_rank: int = 1000  # a held-out label the serving model ranks beyond this is implausible
    max_implausible: float = 0.02  # share of implausible held-out labels allowed (1: no label check)
    min_new_annotations: int | None = None  # policy N
    every_hours: float | None = None  # policy T
    retry_hours: float = 1.0  # after a failed or cancelled run, the policy waits this long
    models_dir: str | None = None  # default DATA_DIR/models
    eval_batch_size: int = 32
    eval_chunk_size: int = 1024
    # the lexical unit S_L (retraining/lexical.py): None fits it when the KB has at least
    # lexical_min_entities entities; never in compat mode; needs lexical_min_corrections corrections
    lexical_unit: bool | None = None
    lexical_min_entities: int = 1000
    lexical_min_corrections: int = 100
    lexical_select: float = 0.15  # share of the training corrections that chooses its epoch and β
    lexical_epochs: int = 15
    lexical_shortlist: int = 64  # K, as the app's linker serves

    def __post_init__(self):
        if not 0 < float(self.holdout) < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (in-batch negatives)")
        if self.min_new_annotations is not None and int(self.min_new_annotations) < 1:
            raise ValueError("min_new_annotations must be >= 1 (or None)")
        if float(self.heldout_slack_mentions) < 0:
            raise ValueError(f"heldout_slack_mentions must be >= 0, got {self.heldout_slack_mentions}")
        if int(self.implausible_rank) < 1 or not 0 <= float(self.max_implausible) <= 1:
            raise ValueError("implausible_rank must be >= 1 and max_implausible in [0, 1]")
        if self.every_hours is not None and float(self.every_hours) <= 0:
            raise ValueError("every_hours must be > 0 (or None)")
        if not 0 < float(self.lexical_select) < 1:
            raise ValueError(f"lexical_select must be in (0, 1), got {self.lexical_select}")
        if int(self.lexical_min_corrections) < 2 or int(self.lexical_epochs) < 1 or int(self.lexical_shortlist) < 2:
            raise ValueError("lexical_min_corrections must be >= 2, lexical_epochs >= 1 and lexical_shortlist >= 2")

    # -- places ----------------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).absolute()

    @property
    def runs_path(self) -> Path:
        return self.data_path / "runs"

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).absolute() if self.models_dir else self.data_path / "models"

    @property
    def lock_path(self) -> Path:
        return self.runs_path / LOCK_NAME

    # -- construction ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> RetrainConfig:
        """DATA_DIR, MIMIC_CHECKPOINT (`zero-shot`: none) and MIMIC_BACKBONE as the app reads them, then
        MIMIC_RETRAIN_<FIELD> for any field (e.g. MIMIC_RETRAIN_EVERY_HOURS=24); `overrides` win."""
        if env is None:
            env = os.environ
        raw: dict[str, Any] = {}
        if env.get("DATA_DIR"):
            raw["data_dir"] = env["DATA_DIR"]
        if env.get("MIMIC_CHECKPOINT") and env["MIMIC_CHECKPOINT"].strip().lower() != "zero-shot":
            raw["checkpoint"] = env["MIMIC_CHECKPOINT"]
        if env.get("MIMIC_BACKBONE"):
            raw["backbone"] = env["MIMIC_BACKBONE"]
        for f in fields(cls):
            v = env.get(f"MIMIC_RETRAIN_{f.name.upper()}")
            if v is not None and v != "":
                raw[f.name] = _parse_env(v, f.name)
        return cls.from_dict(raw, **overrides)


def _parse_env(value: str, name: str):
    """An environment string as the type of field `name` ("none" for an optional one)."""
    kind = {f.name: str(f.type) for f in fields(RetrainConfig)}[name]
    v = value.strip()
    if "None" in kind and v.lower() in ("none", "null", ""):
        return None
    if kind.startswith("bool"):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"MIMIC_RETRAIN_{name.upper()}: expected true/false, got {value!r}")
    try:
        if kind.startswith("int"):
            return int(v)
        if kind.startswith("float"):
            return float(v)
    except ValueError:
        raise ValueError(f"MIMIC_RETRAIN_{name.upper()}: expected a number, got {value!r}") from None
    return value
