"""The backbone contract: what every encoder (CLIP, the offline MiniLM + EfficientNet pair) gives MIMIC.

A backbone turns a batch of texts and a batch of (optional) images into five tensors. The MIMIC and
M3EL heads only ever see its `TextFeatures` and `ImageFeatures`, so they work unchanged on any backbone whose
dimensions they are configured with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimic.data import images as imaging


@dataclass
class TextFeatures:
    """Text side of a backbone output.

    global_: [B, D_tg]   one vector per text (CLIP: projected, L2-normalised `text_embeds`)
    tokens:  [B, L, D_tt] token states (CLIP: text last_hidden_state after final_layer_norm)
    mask:    [B, L] bool, True on real tokens, False on padding
    """

    global_: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


@dataclass
class ImageFeatures:
    """Image side of a backbone output.

    global_:   [B, D_vg]   one vector per image (CLIP: projected, L2-normalised `image_embeds`)
    tokens:    [B, P, D_vt] patch or region tokens (CLIP: vision last_hidden_state, all 50 tokens)
    has_image: [B] bool, False where the item had no (readable) image; such rows are zeros unless
               the backbone was asked to encode a placeholder (MIMIC compat mode).
    """

    global_: torch.Tensor
    tokens: torch.Tensor
    has_image: torch.Tensor


@dataclass
class BackboneDims:
    """Widths the heads are built with."""

    text_global: int
    text_token: int
    image_global: int
    image_token: int
    num_image_tokens: int


class Backbone(nn.Module):
    """Base class. Subclasses implement `tokenize`, `encode_text`, `encode_pixels`, `resize_image` and
    `normalize_pixels`, and set `image_size`.

    Images enter as already-decoded RGB PIL images (see `mimic.data.images`), or None for "no image".
    `pixels_from_images` turns them into the backbone's normalised pixel tensor [B, 3, H, W]; an
    item with no image gets an all-zero tensor (which is the official MIMIC behaviour: zeros in
    normalised space) and has_image False.
    """

    name: str = "backbone"
    dims: BackboneDims
    image_size: int = 224

    # -- text -------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """-> {"input_ids": [B, max_length] long, "attention_mask": [B, max_length] long}, padded to max_length."""
        raise NotImplementedError

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        raise NotImplementedError

    # -- images -----------------------------------------------------------------------------
    def resize_image(self, image, resize: str = "default") -> torch.Tensor:
        """One RGB PIL image -> uint8 [3, H, W]: the backbone's resize/crop, no normalisation.

        resize: "default" for the backbone's own preprocessing; "squash" for the official MIMIC
        224x224 LANCZOS resize without crop. Split from `normalize_pixels` so training can keep
        decoded, resized images as uint8 (a quarter of float32) and normalise on the device.
        """
        raise NotImplementedError

    def normalize_pixels(self, pixels: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] (any device) -> the float pixel tensor `encode_pixels` takes; rows
        with has_image False become all zeros (in normalised space, the official behaviour)."""
        raise NotImplementedError

    def resize_images(self, images: list, resize: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
        """images: list of PIL.Image (RGB) or None -> (uint8 [B,3,H,W], has_image [B] bool), resized
        on a few threads (PIL's resize releases the GIL; it is the costly part of preparing a batch)."""
        has = torch.tensor([img is not None for img in images], dtype=torch.bool)
        size = self.image_size
        u8 = torch.zeros(len(images), 3, size, size, dtype=torch.uint8)
        todo = [i for i, img in enumerate(images) if img is not None]

        def one(i: int) -> None:
            u8[i] = self.resize_image(images[i], resize)

        if len(todo) > 1:
            list(imaging.thread_pool().map(one, todo))
        else:
            for i in todo:
                one(i)
        return u8, has

    def pixels_from_images(self, images: list, resize: str = "default") -> tuple[torch.Tensor, torch.Tensor]:
        """images: list of PIL.Image (RGB) or None -> (pixel_values [B,3,H,W] float, has_image [B] bool)."""
        u8, has = self.resize_images(images, resize)
        return self.normalize_pixels(u8, has), has

    def encode_pixels(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B,3,H,W] -> (global [B, D_vg], tokens [B, P, D_vt])."""
        raise NotImplementedError

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        has_image: torch.Tensor,
        encode_missing: bool = False,
        all_present: bool | None = None,
    ) -> ImageFeatures:
        """Encode a pixel batch. Rows without an image are skipped (left as zeros) unless
        `encode_missing` (compat mode: the zero pixel tensor still gets a real embedding).
        `all_present`: whether every row has an image, when the caller already knows it (reading
        it off a GPU tensor would make the host wait for the device)."""
        B = pixel_values.shape[0]
        d = self.dims
        device = pixel_values.device
        if all_present is None:
            all_present = bool(has_image.all())
        if encode_missing or all_present:
            g, t = self.encode_pixels(pixel_values)
            return ImageFeatures(g, t, has_image)
        g = torch.zeros(B, d.image_global, device=device)
        t = torch.zeros(B, d.num_image_tokens, d.image_token, device=device)
        idx = has_image.nonzero(as_tuple=True)[0]
        if len(idx):
            gi, ti = self.encode_pixels(pixel_values[idx])
            g = g.to(gi.dtype).index_copy(0, idx, gi)
            t = t.to(ti.dtype).index_copy(0, idx, ti)
        return ImageFeatures(g, t, has_image)

    def describe(self) -> dict:
        """A JSON-able description that `mimic.backbones.load_backbone` can rebuild the backbone from."""
        raise NotImplementedError
