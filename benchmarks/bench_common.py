"""Small pieces the benchmark scripts share: JSON output and sample photos to build image data from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_json(obj, path: str | None) -> str:
    """obj as indented JSON text, also written to `path` when given (the scripts' --json)."""
    text = json.dumps(obj, indent=2)
    if path:
        Path(path).write_text(text + "\n")
    return text


def sample_photos() -> list:
    """Five real photos shipped in scikit-image's wheel (no download), as RGB PIL images."""
    from PIL import Image
    from skimage import data as skdata

    return [
        Image.fromarray(f()).convert("RGB")
        for f in (skdata.astronaut, skdata.chelsea, skdata.coffee, skdata.rocket, skdata.horse)
    ]


def random_square_crop(photo, rng: np.random.Generator, px: int):
    """A random square crop (half to all of the shorter side) of `photo`, resized to px x px."""
    from PIL import Image

    w, h = photo.size
    s = int(rng.integers(min(w, h) // 2, min(w, h)))
    x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
    return photo.crop((x, y, x + s, y + s)).resize((px, px), Image.BICUBIC)
