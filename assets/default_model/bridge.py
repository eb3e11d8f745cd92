"""The text↔image bridge: the offline EfficientNet-Lite0's own ImageNet predictions, as words.

MiniLM and EfficientNet-Lite0 share no space (unlike CLIP), so nothing offline says which words go
with which picture, except the image model itself: it was trained to name 1,000 ImageNet classes.
An image's top classes ("espresso", "cup") become the text of a training mention whose gold is the
entity the image belongs to, which gives CMFU (S_C) text-to-image pairs to learn from.

The weights file carries no class names (a bare state dict). They come from a file that an
installed package already ships: Gradio's `media_assets/data/imagenet_labels.json` (the 1,000
ImageNet-1k names in class-index order, short forms such as "tabby cat"). It is located without
importing Gradio, and only the builder reads it; the served model never needs it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

IMAGENET_CLASSES = 1000


def imagenet_labels_path() -> Path:
    """Gradio's packaged ImageNet class names (FileNotFoundError when Gradio is not installed)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the ImageNet class names come from the installed gradio package, which is missing")
    path = Path(spec.origin).parent / "media_assets" / "data" / "imagenet_labels.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed gradio package no longer ships the ImageNet class names")
    return path


def imagenet_labels(path: str | Path | None = None) -> list[str]:
    """The 1,000 ImageNet-1k class names in the order of EfficientNet-Lite0's outputs."""
    labels = json.loads(Path(path or imagenet_labels_path()).read_text(encoding="utf-8"))
    if not isinstance(labels, list) or len(labels) != IMAGENET_CLASSES or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path or imagenet_labels_path()}: expected a list of {IMAGENET_CLASSES} class names")
    return labels


def top_classes(probs: torch.Tensor, labels: list[str], k: int = 3, min_prob: float = 0.05) -> list[str]:
    """The names of the `k` most probable classes of one image (probs [C]); classes under `min_prob`
    are dropped, but the most probable one is always kept."""
    p, i = probs.float().topk(min(k, probs.shape[-1]))
    return [labels[int(c)] for n, (v, c) in enumerate(zip(p.tolist(), i.tolist())) if n == 0 or v >= min_prob]


@torch.no_grad()
def image_class_probs(backbone, images: list, batch_size: int = 32) -> torch.Tensor:
    """ImageNet class probabilities [n, 1000] of PIL images from an `OfflineBackbone`'s
    EfficientNet-Lite0 (its own preprocessing: shorter side 256, centre crop 224)."""
    out = []
    for s in range(0, len(images), batch_size):
        u8, has = backbone.resize_images(images[s : s + batch_size], resize="default")
        x = backbone.normalize_pixels(u8, has)
        out.append(backbone.image_model(x).softmax(-1))
    return torch.cat(out) if out else torch.zeros(0, IMAGENET_CLASSES)


def class_phrase(classes: list[str]) -> str:
    """["tabby cat", "tiger cat"] -> "a tabby cat or a tiger cat"."""
    named = [f"{'an' if c[:1].lower() in 'aeiou' else 'a'} {c}" for c in classes]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " or " + named[-1]
