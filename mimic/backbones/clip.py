"""CLIP backbone through transformers `CLIPModel` (the paper's `openai/clip-vit-base-patch32`).

The four outputs are the ones the official MIMICEncoder uses:
  text global  = text_projection(EOS state), L2-normalised      [B, projection_dim]
  text tokens  = text last_hidden_state (after final_layer_norm)  [B, L, text_hidden]
  image global = visual_projection(post_layernorm(CLS)), L2-normalised [B, projection_dim]
  image tokens = vision last_hidden_state (before post_layernorm), all 1+49 tokens [B, 50, vision_hidden]
Unlike the official code we call the two towers separately, so CLIP's unused contrastive logits are
never computed; the numbers are the same.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, cast

import torch

from mimic.backbones.base import Backbone, BackboneDims, TextFeatures
from mimic.data import images as imaging

if TYPE_CHECKING:
    from transformers import CLIPTextConfig, CLIPVisionConfig


@functools.cache
def _clip_mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's mean and std as [1, 3, 1, 1] on `device`, made once per device (normalising runs per batch)."""
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return as_t(imaging.CLIP_MEAN), as_t(imaging.CLIP_STD)


class ClipBackbone(Backbone):
    def __init__(self, name_or_path: str, *, model=None, tokenizer=None, local_files_only: bool | None = None):
        super().__init__()
        # lazy: transformers' model classes cost seconds to import (5.1 s after torch, measured
        # here); the package imports this module, and the offline and tiny paths never need CLIP
        from transformers import AutoTokenizer, CLIPModel

        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        self.name_or_path = str(name_or_path)
        self.clip = (
            model
            if model is not None
            else CLIPModel.from_pretrained(self.name_or_path, local_files_only=local_files_only)
        )
        self.tokenizer = (
            tokenizer
            if tokenizer is not None
            else AutoTokenizer.from_pretrained(self.name_or_path, local_files_only=local_files_only)
        )
        cfg = self.clip.config
        # transformers types the sub-configs as `dict | <Config> | None` and sizes as `int | list | None`
        # (shared annotations across models); CLIPConfig.__init__ always builds the config objects,
        # and CLIP's sizes are plain ints, hence the casts and the arg-type ignores below.
        vc = cast("CLIPVisionConfig", cfg.vision_config)
        tc = cast("CLIPTextConfig", cfg.text_config)
        self.image_size = int(vc.image_size)  # type: ignore[arg-type]
        n_tokens = (self.image_size // int(vc.patch_size)) ** 2 + 1  # type: ignore[arg-type]
        self.dims = BackboneDims(
            text_global=int(cfg.projection_dim),  # type: ignore[arg-type]
            text_token=int(tc.hidden_size),
            image_global=int(cfg.projection_dim),  # type: ignore[arg-type]
            image_token=int(vc.hidden_size),
            num_image_tokens=n_tokens,
        )
        self.name = f"clip:{self.name_or_path}"
        self.max_positions = int(tc.max_position_embeddings)

    def tokenize(self, texts, max_length):
        if max_length > self.max_positions:
            raise ValueError(f"text_max_length {max_length} exceeds CLIP's {self.max_positions} positions")
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_text(self, input_ids, attention_mask):
        out = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        g = out.pooler_output
        g = g / g.norm(dim=-1, keepdim=True)
        return TextFeatures(g, out.last_hidden_state, attention_mask.bool())

    def encode_pixels(self, pixel_values):
        out = self.clip.get_image_features(pixel_values=pixel_values)
        g = out.pooler_output
        return g / g.norm(dim=-1, keepdim=True), out.last_hidden_state

    def resize_image(self, image, resize="default"):
        # The official preprocessing squashes to 224x224 with LANCZOS (no crop) before CLIP's
        # mean/std; a checkpoint trained that way should be served that way, so it is the default.
        size = self.image_size
        if resize == "crop":
            image = imaging.resize_center_crop(image, shorter=size, crop=size)
        else:
            image = imaging.squash_resize(image, size)
        return imaging.to_uint8_tensor(image)

    def normalize_pixels(self, pixels, has_image):
        mean, std = _clip_mean_std(pixels.device)
        x = (pixels.float() / 255.0 - mean) / std
        return x * has_image.to(x.device).view(-1, 1, 1, 1)

    def describe(self):
        return {"type": "clip", "name_or_path": self.name_or_path}

    def save_pretrained(self, path: str):
        """Write model, config and tokenizer to `path` (used when a checkpoint carries a fine-tuned CLIP)."""
        self.clip.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
