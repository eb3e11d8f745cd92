"""Training inputs prepared once: tokenised texts and decoded, resized images as uint8.

When the backbone is trained its features cannot be cached (they change every step), but its
*inputs* can. Decoding a JPEG and resizing it costs milliseconds of CPU per image; on a GPU step of
a few tens of milliseconds for 2 x 128 images that would be the bottleneck. So the training loop
decodes every image it will need once, into one uint8 tensor [N, 3, H, W] (a quarter of float32;
on the GPU when it fits, else pinned host memory), tokenises every text once, and each step only
gathers rows and normalises the pixels on the device (`Backbone.normalize_pixels`), which is
exactly what `Backbone.pixels_from_images` computes, in the same order of operations.

Images are deduplicated by path; an absent or unreadable image has row -1 (no image), as
`mimic.models.linking_model.load_images` treats it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mimic.data import images as imaging
from mimic.data.schema import Entity, Mention
from mimic.models.linking_model import ImageLoadStats, LinkingModel, entity_text, load_one_image, mention_text

log = logging.getLogger("mimic")


@dataclass
class TextRows:
    input_ids: torch.Tensor  # [N, L] long
    attention_mask: torch.Tensor  # [N, L] long


class PixelCache:
    """uint8 [N, 3, H, W] rows for N distinct image paths, decoded and resized once on the image pool."""

    def __init__(self, backbone, paths: Sequence[str], resize: str, mode: str, device: torch.device, max_bytes: int):
        size = backbone.image_size
        self.paths = list(paths)
        self.nbytes = len(self.paths) * 3 * size * size
        if self.nbytes > max_bytes:
            raise MemoryError(
                f"{len(self.paths)} images need {self.nbytes / 2**30:.1f} GiB as uint8, over the "
                f"{max_bytes / 2**30:.1f} GiB allowed (TrainConfig.input_cache_gib)"
            )
        rows = torch.zeros(len(self.paths), 3, size, size, dtype=torch.uint8)
        ok = torch.zeros(len(self.paths), dtype=torch.bool)

        def one(i: int) -> str:
            img, outcome = load_one_image(self.paths[i], mode)
            if img is not None:
                rows[i] = backbone.resize_image(img, resize)
                ok[i] = True
            return outcome

        self.stats = ImageLoadStats(imaging.thread_pool().map(one, range(len(self.paths))))
        self.ok = ok
        self.on_device = False
        if device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(device)
            if self.nbytes < free // 4:  # leave the rest to the model, activations and optimizer
                rows, self.on_device = rows.to(device), True
            else:
                rows = rows.pin_memory()
        self.rows = rows
        self.device = device


class InputCache:
    """Everything a training step with a trainable backbone reads, prepared once.

    mention i  -> text row i of `mention_text`, image row `m_image[i]` (-1: none)
    entity j   -> text row j of `entity_text` (j indexes `entities`), image rows `e_images[j]`
    """

    def __init__(
        self,
        model: LinkingModel,
        mentions: Sequence[Mention],
        entities: Sequence[Entity],
        device: torch.device,
        max_bytes: int,
        token_batch: int = 4096,
    ):
        backbone, mode = model.backbone, model.config.mode
        L = model.config.text_max_length

        def tokenize(texts: list[str]) -> TextRows:
            parts = [backbone.tokenize(texts[s : s + token_batch], L) for s in range(0, len(texts), token_batch)]
            return TextRows(torch.cat([p["input_ids"] for p in parts]), torch.cat([p["attention_mask"] for p in parts]))

        # Token rows are small (N x L longs): on the device with the pixels, so a step copies only indices.
        self.m_text = tokenize([mention_text(m) for m in mentions])
        self.e_text = tokenize([entity_text(e) for e in entities])
        index: dict[str, int] = {}

        def row(path: str | None) -> int:
            if not path:
                return -1
            return index.setdefault(str(path), len(index))

        self.m_image = torch.tensor([row(m.image) for m in mentions], dtype=torch.long)
        self.e_images = [[row(p) for p in e.images] for e in entities]
        self.pixels = PixelCache(
            backbone, list(index), "squash" if mode == "compat" else "default", mode, device, max_bytes
        )
        ok = torch.cat([self.pixels.ok, torch.zeros(1, dtype=torch.bool)])  # row -1 -> the appended False
        self._ok = ok
        self.device = device
        if self.pixels.on_device:
            self.m_text = TextRows(self.m_text.input_ids.to(device), self.m_text.attention_mask.to(device))
            self.e_text = TextRows(self.e_text.input_ids.to(device), self.e_text.attention_mask.to(device))
        self.compat = mode == "compat"
        self.image_stats = {
            **dict(self.pixels.stats),
            "absent": int((self.m_image < 0).sum()) + sum(1 for r in self.e_images if not r),
        }

    def _side(self, text: TextRows, text_idx: torch.Tensor, image_rows: torch.Tensor, backbone):
        """-> (input_ids, attention_mask, pixels, has_image, all_present): the arguments of
        `LinkingModel.features_from_inputs`. Nothing here waits for the device."""
        dev = self.device
        has_cpu = self._ok[image_rows]  # -1 indexes the appended False
        rows = image_rows.clamp(min=0)
        src = self.pixels.rows
        u8 = src[rows.to(src.device, non_blocking=True)].to(dev, non_blocking=True)
        t_idx = text_idx.to(text.input_ids.device, non_blocking=True)
        ids = text.input_ids[t_idx].to(dev, non_blocking=True)
        mask = text.attention_mask[t_idx].to(dev, non_blocking=True)
        has = has_cpu.to(dev, non_blocking=True)
        return ids, mask, backbone.normalize_pixels(u8, has), has, bool(has_cpu.all())

    def mention_inputs(self, idx: torch.Tensor, backbone):
        """idx [B] rows of the mentions -> (input_ids, attention_mask, pixels float, has_image, all_present)."""
        return self._side(self.m_text, idx, self.m_image[idx], backbone)

    def entity_inputs(self, idx: torch.Tensor, image_choice: list[int], backbone):
        """idx [B] rows of the entities, image_choice[b] which of entity idx[b]'s images (ignored
        when it has none)."""
        rows = torch.tensor(
            [self.e_images[j][c] if self.e_images[j] else -1 for j, c in zip(idx.tolist(), image_choice)],
            dtype=torch.long,
        )
        return self._side(self.e_text, idx, rows, backbone)
