"""Shared fixtures: a tiny randomly initialised CLIP (no download) and synthetic data.

The tiny CLIP uses a BPE tokenizer trained here on the synthetic vocabulary, so nothing is fetched.
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MELBENCH = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"

torch.set_num_threads(min(2, torch.get_num_threads()))

from mimic.backbones.tiny import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from mimic.backbones.clip import ClipBackbone
    return ClipBackbone(str(tiny_clip_dir)).eval()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    from mimic.data.synthetic import make_synthetic
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n_names=6, per_name=3, mentions_per_entity=8)


@pytest.fixture(scope="session")
def synthetic_official(tmp_path_factory, synthetic_dataset) -> Path:
    """The synthetic dataset written in the official MIMIC layout."""
    from mimic.data.formats import write_official
    root = tmp_path_factory.mktemp("official") / "WikiMEL"
    write_official(synthetic_dataset, root, prefix="WIKIMEL")
    return root
