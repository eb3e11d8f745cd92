"""A small synthetic MEL dataset with a learnable signal, for tests, demos and benchmarks.

Entities come in groups that share a name (so the name alone is ambiguous). Within a group each
entity has its own attribute word and its own colour. A mention names its entity and, with some
probability, says the attribute word; its image (when it has one) is the entity's colour with
noise. So text alone resolves some mentions, the image resolves the rest, and chance is 1/N.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

import numpy as np
from PIL import Image

from mimic.data.schema import Dataset, Entity, KnowledgeBase, Mention

NAMES = [
    "alder",
    "birch",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "iris",
    "juniper",
    "kestrel",
    "lumen",
    "maple",
    "nectar",
    "onyx",
    "prairie",
    "quartz",
    "raven",
    "sierra",
    "tundra",
]
ATTRS = [
    "painter",
    "river",
    "city",
    "singer",
    "mountain",
    "ship",
    "novel",
    "bridge",
    "festival",
    "senator",
    "comet",
    "stadium",
]
FILLER = [
    "photo",
    "of",
    "the",
    "near",
    "with",
    "seen",
    "in",
    "during",
    "a",
    "visit",
    "famous",
    "old",
    "new",
    "at",
    "on",
    "morning",
    "evening",
    "view",
    "taken",
    "from",
]


def vocabulary() -> list[str]:
    """Every word the generator can emit (used to train a tiny tokenizer in tests)."""
    return NAMES + ATTRS + FILLER


def hue_colour(i: int, n: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def noisy_colour_image(rgb, size: int, rng: np.random.Generator, noise: float = 25.0):
    arr = np.empty((size, size, 3), dtype=np.float32)
    arr[:] = rgb
    arr += rng.normal(0, noise, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def make_synthetic(
    root: str | Path,
    n_names: int = 6,
    per_name: int = 3,
    mentions_per_entity: int = 8,
    image_size: int = 32,
    p_attr: float = 0.5,
    p_image: float = 0.9,
    seed: int = 0,
) -> Dataset:
    """Write images under `root` and return the Dataset (splits train/dev/test ≈ 60/20/20)."""
    root = Path(root)
    (root / "kb").mkdir(parents=True, exist_ok=True)
    (root / "mentions").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    if n_names > len(NAMES) or per_name > len(ATTRS):
        raise ValueError(f"at most {len(NAMES)} names and {len(ATTRS)} entities per name")
    n = n_names * per_name
    entities: list[Entity] = []
    mentions: list[Mention] = []
    for gi in range(n_names):
        attrs = pyrng.sample(ATTRS, per_name)
        for k in range(per_name):
            idx = len(entities)
            colour = hue_colour(idx, n)
            path = root / "kb" / f"e{idx}.png"
            noisy_colour_image(colour, image_size, rng, noise=10).save(path)
            entities.append(
                Entity(id=f"Q{1000 + idx}", name=NAMES[gi], text=f"{attrs[k]} {NAMES[gi]}", images=[str(path)])
            )
            for j in range(mentions_per_entity):
                words = pyrng.sample(FILLER, 4)
                if pyrng.random() < p_attr:
                    words.insert(pyrng.randrange(len(words) + 1), attrs[k])
                pos = pyrng.randrange(len(words) + 1)
                words.insert(pos, NAMES[gi])
                sentence = " ".join(words)
                start = sentence.index(NAMES[gi]) if pos == 0 else sentence.index(" " + NAMES[gi]) + 1
                img = None
                if pyrng.random() < p_image:
                    p = root / "mentions" / f"m{idx}_{j}.png"
                    noisy_colour_image(colour, image_size, rng).save(p)
                    img = str(p)
                mentions.append(
                    Mention(
                        id=f"m{idx}_{j}",
                        sentence=sentence,
                        mention=NAMES[gi],
                        answer=entities[-1].id,
                        image=img,
                        start=start,
                        end=start + len(NAMES[gi]),
                    )
                )
    pyrng.shuffle(mentions)
    a, b = int(0.6 * len(mentions)), int(0.8 * len(mentions))
    return Dataset(
        KnowledgeBase(entities), {"train": mentions[:a], "dev": mentions[a:b], "test": mentions[b:]}, name="synthetic"
    )
