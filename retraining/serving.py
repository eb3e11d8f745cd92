"""What serves now, i.e. what a retraining run's candidate must beat."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import RetrainConfig


@dataclass
class Serving:
    version: str  # promoted version name, checkpoint folder name, or "zero-shot (...)"
    registered: bool  # a model version row exists (and is promoted)
    checkpoint: str | None  # None: zero-shot


def resolve_serving(store, cfg: RetrainConfig) -> Serving:
    """What serves now: the promoted version with a checkpoint (prefer_promoted), else
    cfg.checkpoint, else the zero-shot model on cfg.backbone."""
    if cfg.prefer_promoted:
        mv = store.promoted_model_version()
        if mv is not None and mv.checkpoint:
            return Serving(mv.name, True, mv.checkpoint)
    if cfg.checkpoint:
        return Serving(Path(cfg.checkpoint).name, False, str(Path(cfg.checkpoint).absolute()))
    # Imported here: mimic.serving.service loads torch, 1.5-3.4 s on top of `import retraining`
    # (time.perf_counter, this shared machine), which `python -m retraining --if-due` never needs.
    from mimic.serving.service import zero_shot_version

    return Serving(zero_shot_version(cfg.backbone), False, None)
