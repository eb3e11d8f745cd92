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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .index import KBIndex
from .linker import Candidate, Explanation, Linker, _entity_like, _token_strings
from .model import MimicModel, entity_text, load_images

ZERO_SHOT_SEED = 0


def zero_shot_model(backbone, model_type: str = "mimic") -> MimicModel:
    """Backbone + heads built from a fixed seed. The heads are never used to score: the index format
    stores head projections next to the backbone vectors, and a fixed seed keeps the model's
    fingerprint (hence the index folder) stable across restarts."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(ZERO_SHOT_SEED)
        return MimicModel.build(backbone, model_type, mode="fixed").eval()
    finally:
        torch.random.set_rng_state(state)


class ZeroShotLinker(Linker):
    """`Linker` whose ranking and explanations come from the backbone alone (see module docstring)."""

    scoring = "zero-shot"
    retriever_names = ("text", "image", "text→image", "lexical")   # no untrained "model" retriever

    def __init__(self, model: MimicModel, index: KBIndex, **kw):
        if not getattr(index, "keep_global", False):
            raise ValueError("ZeroShotLinker needs KBIndex(..., keep_global=True)")
        kw.setdefault("nil_threshold", None)
        super().__init__(model, index, **kw)
        # a NIL threshold calibrated for a trained model does not apply to these scores
        self.nil_threshold = kw["nil_threshold"]

    def _score_rows(self, mq, text, image, qi: int, rows: torch.Tensor):
        tq = F.normalize(text.global_[qi].float(), dim=-1).cpu()   # the index vectors live in CPU RAM
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
    def _explain(self, mq, mtext: str, cands: list[Candidate], rows: torch.Tensor,
                 query=None, text=None, image=None, qi: int = 0):
        recs = [self.index.records[int(r)] for r in rows]
        imgs = load_images([r["images"][0] if r.get("images") else None for r in recs], self.model.config.mode)
        e_text, e_img = self.model.backbone_features([entity_text(_entity_like(r)) for r in recs], imgs)
        L = self.model.config.text_max_length
        tok = self.model.backbone.tokenize
        m_ids = tok([mtext], L)["input_ids"][0]
        m_mask = text.mask[qi]
        m_tok = F.normalize(text.tokens[qi][m_mask].float(), dim=-1).cpu()    # [Lm, D]
        m_tokens = _token_strings(self.model.backbone, m_ids[m_mask.cpu()])
        q_has = bool(image.has_image[qi])
        q_regions = self._regions(image.tokens[qi]).cpu() if q_has else None
        for j, c in enumerate(cands):
            e_mask = e_text.mask[j]
            e_tok = F.normalize(e_text.tokens[j][e_mask].float(), dim=-1).cpu()  # [Le, D]
            e_ids = tok([entity_text(_entity_like(recs[j]))], L)["input_ids"][0]
            sim = e_tok @ m_tok.T                                               # [Le, Lm]
            m_grid = e_grid = None
            if q_has and bool(e_img.has_image[j]):
                e_regions = self._regions(e_img.tokens[j]).cpu()
                m_grid = self._region_grid(q_regions, e_regions.mean(0))
                e_grid = self._region_grid(e_regions, q_regions.mean(0))
            c.explanation = Explanation(m_tokens, _token_strings(self.model.backbone, e_ids[e_mask.cpu()]),
                                        sim.tolist(), m_grid, e_grid, kind="similarity")

    def _regions(self, tokens: torch.Tensor) -> torch.Tensor:
        """[P, D] image tokens -> the patch-grid tokens (CLIP's CLS token dropped)."""
        t = tokens.float()
        if t.shape[0] == self.patch_grid ** 2 + 1:
            t = t[1:]
        return t

    def _region_grid(self, regions: torch.Tensor, other: torch.Tensor) -> list[list[float]]:
        sim = F.normalize(regions, dim=-1) @ F.normalize(other, dim=-1)
        return sim.reshape(self.patch_grid, self.patch_grid).tolist()


__all__ = ["ZeroShotLinker", "zero_shot_model", "Explanation"]
