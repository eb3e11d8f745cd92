"""Zero-shot linking: rank by the backbone's own similarities, with no trained MIMIC unit involved.

The app serves this until a checkpoint trained by this project's pipeline is loaded, because the
scores of untrained interaction units (random TGLU/VDLU/CMFU weights) mean nothing, while the
backbone's similarities do. Per (query, entity) pair:

    S_T  cosine(text vector of "mention [SEP] sentence", text vector of "name [SEP] description")
    S_V  cosine(query image vector, entity image vector)       when both have an image, else None
    S_C  cosine(query text vector, entity image vector)         CLIP only (a joint space), else None
    S    mean of the units that apply to the pair

Explanations are similarities, not attention (`Explanation.kind == "similarity"`): the cosine of
the backbone's token states (entity tokens × mention tokens), and for each image region the cosine
to the other image's mean region state.

    model = zero_shot_model(load_backbone("offline"))
    index = KBIndex.build(model, kb, "index/")            # the usual index format
    linker = ZeroShotLinker(model, KBIndex("index/", keep_global=True))

`zero_shot_scores` / `zero_shot_ranks` apply the same rule to many queries against a whole KB at
once (B x N), for evaluation (the retraining job judges a zero-shot serving model with them).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mimic.analysis.ranking import ranks_from_scores
from mimic.models.linking_model import LinkingModel, entity_text, load_images, mention_text
from mimic.serving.index import KBIndex
from mimic.serving.linking import Candidate, Explanation, Linker, entity_from_record, token_strings

ZERO_SHOT_SEED = 0


def zero_shot_model(backbone, model_type: str = "mimic") -> LinkingModel:
    """Backbone + heads built from a fixed seed. The heads are never used to score: the index format
    stores head projections next to the backbone vectors, and a fixed seed keeps the model's
    fingerprint (hence the index folder) stable across restarts."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(ZERO_SHOT_SEED)
        return LinkingModel.build(backbone, model_type, mode="fixed").eval()
    finally:
        torch.random.set_rng_state(state)


def is_joint_space(backbone) -> bool:
    """As `Linker.cross_modal`: text->image similarity only in a joint space (CLIP, equal widths)."""
    return backbone.describe().get("type") == "clip" and backbone.dims.text_global == backbone.dims.image_global


@dataclass
class BackboneVectors:
    """Unit-norm backbone global vectors of many items, on the CPU: what zero-shot scoring compares."""

    text: torch.Tensor  # [N, Dt]
    image: torch.Tensor  # [N, Di]
    has: torch.Tensor  # [N] bool: the item has an image

    @classmethod
    def of(cls, text, image) -> BackboneVectors:
        """From `LinkingModel.backbone_features` outputs."""
        return cls(
            F.normalize(text.global_.float(), dim=-1).cpu(),
            F.normalize(image.global_.float(), dim=-1).cpu(),
            image.has_image.bool().cpu(),
        )

    @classmethod
    def cat(cls, parts: list[BackboneVectors]) -> BackboneVectors:
        return cls(*(torch.cat([getattr(p, k) for p in parts]) for k in ("text", "image", "has")))


def zero_shot_scores(q: BackboneVectors, e: BackboneVectors, cross_modal: bool) -> torch.Tensor:
    """S [B, N]: `ZeroShotLinker`'s score of every (query, entity) pair, the mean of the cosines
    that apply (text-text always; image-image when both have an image; text-image in a joint space
    when the entity has an image)."""
    nan = torch.tensor(float("nan"))
    units = [q.text @ e.text.T]
    units.append(torch.where(q.has[:, None] & e.has[None, :], q.image @ e.image.T, nan))
    if cross_modal:
        units.append(torch.where(e.has[None, :].expand(len(q.has), -1), q.text @ e.image.T, nan))
    return torch.nanmean(torch.stack(units), dim=0)


@torch.no_grad()
def zero_shot_ranks(model: LinkingModel, kb_vectors: BackboneVectors, kb, mentions, batch_size: int = 64) -> list[int]:
    """Full-KB ranks of `mentions` (gold = `answer`) under zero-shot scoring; ties by KB order, as
    `mimic.analysis.ranking.evaluate`. `kb_vectors`: the KB's `BackboneVectors`, in KB order."""
    cross = is_joint_space(model.backbone)
    out: list[int] = []
    for s in range(0, len(mentions), batch_size):
        batch = mentions[s : s + batch_size]
        text, image = model.backbone_features(
            [mention_text(m) for m in batch], load_images([m.image for m in batch], model.config.mode)
        )
        S = zero_shot_scores(BackboneVectors.of(text, image), kb_vectors, cross)
        gold = torch.tensor([kb.position(m.answer) for m in batch])
        out += ranks_from_scores(S, gold).tolist()
    return out


class ZeroShotLinker(Linker):
    """`Linker` whose ranking and explanations come from the backbone alone (see module docstring)."""

    scoring = "zero-shot"
    ENTITY_CACHE_SIZE = 256  # entities whose explanation features are kept (~140 KB each, fp16)
    retriever_names = ("text", "image", "text→image", "lexical")  # no untrained "model" retriever

    def __init__(self, model: LinkingModel, index: KBIndex, **kw):
        if not getattr(index, "keep_global", False):
            raise ValueError("ZeroShotLinker needs KBIndex(..., keep_global=True)")
        kw.setdefault("nil_threshold", None)
        super().__init__(model, index, **kw)
        # a NIL threshold calibrated for a trained model does not apply to these scores
        self.nil_threshold = kw["nil_threshold"]
        self._entity_cache: OrderedDict = OrderedDict()
        self._entity_cache_lock = threading.Lock()  # links may run in several threads

    def _score_rows(self, mq, text, image, qi: int, rows: torch.Tensor):
        tq = F.normalize(text.global_[qi].float(), dim=-1).cpu()  # the index vectors live in CPU RAM
        S_T = self.index.text_global[rows] @ tq
        has_e = self.index.cache.has_image[rows].bool()
        has_q = bool(image.has_image[qi])
        nan = torch.tensor(float("nan"))
        S_V = S_C = None
        if has_q:
            iq = F.normalize(image.global_[qi].float(), dim=-1).cpu()
            S_V = torch.where(has_e, self.index.image_global[rows] @ iq, nan)
        if self.cross_modal:
            S_C = torch.where(has_e, self.index.image_global[rows] @ tq, nan)
        units = torch.stack([u for u in (S_T, S_V, S_C) if u is not None])
        S = torch.nanmean(units, dim=0)
        return S, S_T, S_V, S_C

    @torch.no_grad()
    def _explain(
        self, mq, mtext: str, cands: list[Candidate], rows: torch.Tensor, query=None, text=None, image=None, qi: int = 0
    ):
        recs = [self.index.records[int(r)] for r in rows]
        feats = self._entity_features(recs)
        L = self.model.config.text_max_length
        m_ids = self.model.backbone.tokenize([mtext], L)["input_ids"][0]
        m_mask = text.mask[qi]
        m_tok = F.normalize(text.tokens[qi][m_mask].float(), dim=-1).cpu()  # [Lm, D]
        m_tokens = token_strings(self.model.backbone, m_ids[m_mask.cpu()])
        q_has = bool(image.has_image[qi])
        q_regions = self._regions(image.tokens[qi]).cpu() if q_has else None
        for c, (e_tokens, e_tok, e_regions) in zip(cands, feats):
            sim = e_tok.float() @ m_tok.T  # [Le, Lm]
            m_grid = e_grid = None
            if q_regions is not None and e_regions is not None:  # q_regions is set iff q_has
                e_regions = e_regions.float()
                m_grid = self._region_grid(q_regions, e_regions.mean(0))
                e_grid = self._region_grid(e_regions, q_regions.mean(0))
            c.explanation = Explanation(m_tokens, e_tokens, sim.tolist(), m_grid, e_grid, kind="similarity")

    def _entity_features(self, recs: list[dict]) -> list[tuple]:
        """Per entity record: (token strings, unit-norm token states [Le, D] fp16, image regions
        [P, D] fp16 or None). These do not depend on the query, so they are kept in a small LRU
        cache keyed by the record's content (an edited entity gets a new key); the entities that
        are not cached are encoded in one backbone batch."""
        keys = [(r["id"], r.get("name", ""), r.get("text", ""), (r.get("images") or [None])[0]) for r in recs]
        with self._entity_cache_lock:
            cached = {k: self._entity_cache[k] for k in keys if k in self._entity_cache}
        missing = [i for i, k in enumerate(keys) if k not in cached]
        if missing:
            todo = [recs[i] for i in missing]
            imgs = load_images([r["images"][0] if r.get("images") else None for r in todo], self.model.config.mode)
            e_text, e_img = self.model.backbone_features([entity_text(entity_from_record(r)) for r in todo], imgs)
            ids = self.model.backbone.tokenize(
                [entity_text(entity_from_record(r)) for r in todo], self.model.config.text_max_length
            )["input_ids"]
            for j, i in enumerate(missing):
                mask = e_text.mask[j]
                tokens = token_strings(self.model.backbone, ids[j][mask.cpu()])
                tok = F.normalize(e_text.tokens[j][mask].float(), dim=-1).cpu().half()
                regions = self._regions(e_img.tokens[j]).cpu().half() if bool(e_img.has_image[j]) else None
                cached[keys[i]] = (tokens, tok, regions)
        with self._entity_cache_lock:
            for k in keys:
                self._entity_cache[k] = cached[k]
                self._entity_cache.move_to_end(k)
            while len(self._entity_cache) > self.ENTITY_CACHE_SIZE:
                self._entity_cache.popitem(last=False)
        return [cached[k] for k in keys]

    def _regions(self, tokens: torch.Tensor) -> torch.Tensor:
        """[P, D] image tokens -> the patch-grid tokens (CLIP's CLS token dropped)."""
        t = tokens.float()
        if t.shape[0] == self.patch_grid**2 + 1:
            t = t[1:]
        return t

    def _region_grid(self, regions: torch.Tensor, other: torch.Tensor) -> list[list[float]]:
        sim = F.normalize(regions, dim=-1) @ F.normalize(other, dim=-1)
        return sim.reshape(self.patch_grid, self.patch_grid).tolist()


__all__ = [
    "ZeroShotLinker",
    "zero_shot_model",
    "Explanation",
    "BackboneVectors",
    "zero_shot_scores",
    "zero_shot_ranks",
    "is_joint_space",
]
