"""Augmented views of the demo KB's images, written with PIL only (no torchvision).

A view is a random crop (15-100 % of the area, aspect 3:4 to 4:3), a mirror half the time, a
rotation some of the time (small angles, sometimes a quarter turn), and a colour jitter
(brightness, contrast, saturation each 0.75-1.25), resized to at most 256 px on the long side.
The operations are drawn from a `random.Random`, so a seed gives the same views every time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

VIEW_MAX_SIDE = 256


@dataclass(frozen=True)
class ViewOps:
    """The drawn operations of one view (kept so a view can be described and reproduced)."""

    crop: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image
    flip: bool
    rotate: float  # degrees, counter-clockwise; 0: none
    brightness: float
    contrast: float
    colour: float


def draw_ops(rng: random.Random) -> ViewOps:
    """Random operations for one view."""
    area = rng.uniform(0.15, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(1.0, math.sqrt(area * aspect))
    h = min(1.0, math.sqrt(area / aspect))
    left, top = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    flip = rng.random() < 0.5
    r = rng.random()
    rotate = rng.choice((90.0, -90.0)) if r < 0.1 else (rng.uniform(-30.0, 30.0) if r < 0.5 else 0.0)
    return ViewOps(
        crop=(left, top, left + w, top + h),
        flip=flip,
        rotate=round(rotate, 2),
        brightness=rng.uniform(0.75, 1.25),
        contrast=rng.uniform(0.75, 1.25),
        colour=rng.uniform(0.75, 1.25),
    )


def apply_ops(img: Image.Image, ops: ViewOps, max_side: int = VIEW_MAX_SIDE) -> Image.Image:
    """The view of `img` (converted to RGB) that `ops` describe."""
    img = img.convert("RGB")
    W, H = img.size
    left, top, right, bottom = ops.crop
    box = (
        round(left * W),
        round(top * H),
        max(round(right * W), round(left * W) + 1),
        max(round(bottom * H), round(top * H) + 1),
    )
    img = img.crop(box)
    if ops.flip:
        img = ImageOps.mirror(img)
    if ops.rotate:
        fill = tuple(int(v) for v in np.asarray(img).reshape(-1, 3).mean(axis=0).round())
        img = img.rotate(ops.rotate, resample=Image.Resampling.BICUBIC, expand=ops.rotate % 90 == 0, fillcolor=fill)
    img = ImageEnhance.Brightness(img).enhance(ops.brightness)
    img = ImageEnhance.Contrast(img).enhance(ops.contrast)
    img = ImageEnhance.Color(img).enhance(ops.colour)
    w, h = img.size
    scale = max_side / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return img


def augmented_view(img: Image.Image, rng: random.Random) -> Image.Image:
    """One random view of `img` (operations drawn from `rng`)."""
    return apply_ops(img, draw_ops(rng))
