"""The frozen-backbone feature cache: with the backbone frozen, training encodes every mention and
entity once (fp16, on the CPU) and each step gathers rows instead of running the backbone."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mimic.backbones.base import ImageFeatures, TextFeatures
from mimic.models.linking_model import ImageLoadStats, LinkingModel, load_images


def _text_only(model: LinkingModel, texts: list[str]):
    """`backbone_features` of items without an image in fixed mode: the text side as it computes it;
    for the image side only `has_image` (all False) is read."""
    tok = model.backbone.tokenize(texts, model.config.text_max_length)
    dev = model.device
    text = model.backbone.encode_text(tok["input_ids"].to(dev), tok["attention_mask"].to(dev))
    none = torch.zeros(len(texts), dtype=torch.bool)
    return text, ImageFeatures(torch.zeros(0), torch.zeros(0), none)


class FeatureStore:
    """Backbone outputs for many items, fp16 on the CPU. Images are stored only for items that have
    one (compat mode shares one row for the encoded all-zero placeholder)."""

    def __init__(
        self,
        model: LinkingModel,
        texts: list[str],
        image_paths: list[str | None],
        batch_size: int,
        progress: bool,
        desc: str,
    ):
        mode = model.config.mode
        tg: list[torch.Tensor] = []
        tt: list[torch.Tensor] = []
        tm: list[torch.Tensor] = []
        img_idx: list[int] = []
        ig: list[torch.Tensor] = []
        it: list[torch.Tensor] = []
        placeholder = None
        stats = ImageLoadStats()
        rng = range(0, len(texts), batch_size)
        if progress:
            rng = tqdm(rng, desc=desc, unit="batch")
        with torch.no_grad():
            for s in rng:
                tx = texts[s : s + batch_size]
                paths = image_paths[s : s + batch_size]
                if mode == "fixed" and not any(paths):
                    # text only (MELBench): skip building and normalising B all-zero images
                    stats["absent"] += len(paths)
                    text, image = _text_only(model, tx)
                else:
                    text, image = model.backbone_features(tx, load_images(paths, mode, stats))
                tg.append(text.global_.half().cpu())
                tt.append(text.tokens.half().cpu())
                tm.append(text.mask.cpu())
                for j, has in enumerate(image.has_image.tolist()):
                    if has:
                        img_idx.append(len(ig))
                        ig.append(image.global_[j].half().cpu())
                        it.append(image.tokens[j].half().cpu())
                    elif mode == "compat":
                        if placeholder is None:
                            placeholder = len(ig)
                            ig.append(image.global_[j].half().cpu())
                            it.append(image.tokens[j].half().cpu())
                        img_idx.append(placeholder)
                    else:
                        img_idx.append(-1)
        d = model.backbone.dims
        self.text_global, self.text_tokens, self.text_mask = torch.cat(tg), torch.cat(tt), torch.cat(tm)
        self.img_idx = torch.tensor(img_idx, dtype=torch.long)
        self.img_global = torch.stack(ig) if ig else torch.zeros(0, d.image_global, dtype=torch.half)
        self.img_tokens = torch.stack(it) if it else torch.zeros(0, d.num_image_tokens, d.image_token, dtype=torch.half)
        self.has_image = (
            self.img_idx >= 0
            if mode == "fixed"
            else torch.zeros_like(self.img_idx, dtype=torch.bool) | (self.img_idx >= 0)
        )
        self.image_stats = dict(stats)
        self.dims = d

    def gather(self, idx: torch.Tensor, device) -> tuple[TextFeatures, ImageFeatures]:
        text = TextFeatures(
            self.text_global[idx].float().to(device),
            self.text_tokens[idx].float().to(device),
            self.text_mask[idx].to(device),
        )
        ii = self.img_idx[idx]
        g = torch.zeros(len(idx), self.dims.image_global)
        t = torch.zeros(len(idx), self.dims.num_image_tokens, self.dims.image_token)
        ok = ii >= 0
        if ok.any():
            g[ok] = self.img_global[ii[ok]].float()
            t[ok] = self.img_tokens[ii[ok]].float()
        # In compat mode every item "has" an image (the placeholder), as the official code scores it.
        return text, ImageFeatures(g.to(device), t.to(device), self.has_image[idx].to(device))


@torch.no_grad()
def entity_cache_from_store(model: LinkingModel, store: FeatureStore, device, batch: int = 1024):
    """Entity caches from cached backbone features (no backbone pass needed when it is frozen)."""
    parts = []
    model.eval()
    n = store.text_global.shape[0]
    for s in range(0, n, batch):
        idx = torch.arange(s, min(s + batch, n))
        t, i = store.gather(idx, device)
        parts.append(model.heads.entity_cache(model.heads.side_features(t, i)))
    return type(parts[0]).cat(parts)
