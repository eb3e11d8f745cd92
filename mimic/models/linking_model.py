"""`LinkingModel`: a backbone plus MIMIC heads, and the input conventions of the official code.

Inputs follow the paper's code in both modes:
  mention text  = "<mention> [SEP] <sentence>"        entity text = "<name> [SEP] <attributes>"
  text_max_length tokens (40), padded to that length.
Images: compat mode opens the file without RGB conversion; anything that is not RGB or cannot be
read becomes the all-zero pixel tensor and is still encoded (the official behaviour). Fixed mode
converts to RGB and marks unreadable or absent images as missing (masked in the visual units).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from mimic.backbones.base import Backbone, ImageFeatures, TextFeatures
from mimic.data import images as imaging
from mimic.data.schema import Entity, Mention
from mimic.models.families import build_heads
from mimic.models.lexical_unit import LexicalUnit
from mimic.models.modeling_mimic import EntityCache, MentionCache, MimicConfig, MimicHeads, SideFeatures

log = logging.getLogger("mimic")

SEP = " [SEP] "


def mention_text(m: Mention) -> str:
    return f"{m.mention}{SEP}{m.sentence}"


def entity_text(e: Entity) -> str:
    return f"{e.name}{SEP}{e.text or ''}"


class ImageLoadStats(Counter):
    """Counts of what happened to images (loaded, absent, unreadable, non_rgb_zeroed)."""


def load_one_image(path: str | None, mode: str, allowed_dirs=None) -> tuple[object | None, str]:
    """-> (PIL image or None, what happened: "loaded", "absent", "unreadable" or "non_rgb_zeroed").
    Never raises for a bad file: it is logged and treated as no image (as both modes do)."""
    if not path:
        return None, "absent"
    try:
        img = imaging.load_image(path, allowed_dirs=allowed_dirs, convert_rgb=(mode == "fixed"))
    except imaging.ImageError as exc:
        log.warning("image treated as missing: %s", exc)
        return None, "unreadable"
    if mode == "compat" and img.mode != "RGB":
        # transformers 4.18's feature extractor failed on non-RGB arrays and the official
        # bare `except` turned them into zeros.
        return None, "non_rgb_zeroed"
    return img, "loaded"


def load_images(paths: Sequence[str | None], mode: str, stats: ImageLoadStats | None = None, allowed_dirs=None) -> list:
    """paths -> list of PIL RGB images or None (`load_one_image` for each, decoded on the shared
    image thread pool); what happened is counted in `stats`."""
    if len(paths) <= 1:
        done = [load_one_image(p, mode, allowed_dirs) for p in paths]
    else:
        done = list(imaging.thread_pool().map(lambda p: load_one_image(p, mode, allowed_dirs), paths))
    if stats is not None:
        stats.update(outcome for _img, outcome in done)
    return [img for img, _outcome in done]


class LinkingModel(nn.Module):
    """Backbone + heads of any family (MIMIC or M3EL). `encode(texts, images)` -> `SideFeatures`."""

    #: the checkpoint's config, set by `mimic.models.checkpoint.load_checkpoint` (absent otherwise)
    checkpoint_info: dict

    def __init__(self, backbone: Backbone, heads: MimicHeads):
        super().__init__()
        self.backbone = backbone
        self.heads = heads
        # the optional fixed-mode lexical unit S_L (`mimic.models.lexical_unit`); serving fuses it into S
        self.lexical_unit: LexicalUnit | None = None

    def attach_lexical_unit(self, unit: LexicalUnit | None) -> None:
        """Add (or with None remove) the lexical unit. Compat mode reproduces the published model: no unit."""
        if unit is not None and self.config.mode != "fixed":
            raise ValueError("the lexical unit is a fixed-mode extension; this model is in compat mode")
        self.lexical_unit = unit.to(self.device) if unit is not None else None

    @classmethod
    def build(cls, backbone: Backbone, model_type: str = "mimic", **config) -> LinkingModel:
        """A fresh model of family `model_type` ("mimic" or "m3el") on `backbone`."""
        return cls(backbone, build_heads(model_type, backbone.dims, **config))

    @property
    def config(self) -> MimicConfig:
        return self.heads.config

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    # -- backbone --------------------------------------------------------------------------
    def backbone_features(self, texts: Sequence[str], images: Sequence) -> tuple[TextFeatures, ImageFeatures]:
        """texts: B strings; images: B PIL RGB images or None."""
        dev = self.device
        tok = self.backbone.tokenize(list(texts), self.config.text_max_length)
        # uint8 to the device, normalised there: a quarter of the bytes of float pixels to copy.
        u8, has = self.backbone.resize_images(
            list(images), resize="squash" if self.config.mode == "compat" else "default"
        )
        has_dev = has.to(dev)
        return self.features_from_inputs(
            tok["input_ids"].to(dev),
            tok["attention_mask"].to(dev),
            self.backbone.normalize_pixels(u8.to(dev), has_dev),
            has_dev,
            all_present=bool(has.all()),
        )

    def features_from_inputs(
        self, input_ids, attention_mask, pixels, has_image, all_present: bool | None = None
    ) -> tuple[TextFeatures, ImageFeatures]:
        """Backbone features from prepared inputs: ids/mask [B, L], normalised pixels [B, 3, H, W],
        has_image [B] bool, all on the model's device (see `mimic.training.input_cache`); `all_present` as
        `Backbone.encode_images`."""
        text = self.backbone.encode_text(input_ids, attention_mask)
        image = self.backbone.encode_images(
            pixels, has_image, encode_missing=(self.config.mode == "compat"), all_present=all_present
        )
        return text, image

    def encode(self, texts: Sequence[str], images: Sequence) -> SideFeatures:
        text, image = self.backbone_features(texts, images)
        return self.heads.side_features(text, image)

    # -- caches over many items ---------------------------------------------------------------
    @torch.no_grad()
    def entity_cache(
        self,
        entities: Sequence[Entity],
        batch_size: int = 64,
        progress: bool = False,
        image_stats: ImageLoadStats | None = None,
        dtype=None,
    ) -> EntityCache:
        """Encode entities (first image each, as the official evaluation) into an `EntityCache`."""
        parts = []
        for chunk in _batches(entities, batch_size, progress, "encode KB"):
            imgs = load_images([e.images[0] if e.images else None for e in chunk], self.config.mode, image_stats)
            c = self.heads.entity_cache(self.encode([entity_text(e) for e in chunk], imgs))
            parts.append(c.apply(lambda t: t.to(dtype) if (dtype is not None and t.is_floating_point()) else t))
        return type(parts[0]).cat(parts)

    @torch.no_grad()
    def mention_cache(self, mentions: Sequence[Mention], image_stats: ImageLoadStats | None = None) -> MentionCache:
        imgs = load_images([m.image for m in mentions], self.config.mode, image_stats)
        return self.heads.mention_cache(self.encode([mention_text(m) for m in mentions], imgs))


def _batches(items: Sequence, size: int, progress: bool, desc: str) -> Iterable[Sequence]:
    starts = range(0, len(items), size)
    if progress:
        starts = tqdm(starts, desc=desc, unit="batch")
    for s in starts:
        yield items[s : s + size]
