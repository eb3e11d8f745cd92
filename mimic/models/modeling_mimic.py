"""MIMIC (Luo et al., KDD 2023): TGLU, VDLU and CMFU over backbone features.

Shapes: B mentions, N entities, L text tokens, P image tokens, d = 96 (unit width).

The model is split the way serving needs it:
  * `MimicHeads.entity_cache(side)`  -> everything that depends on the entity alone (computed once
    per KB: W_q E_tok, W_cls e_cls, both DUAL projections, CMFU's z_e, ...);
  * `MimicHeads.mention_cache(side)` -> the same for mentions;
  * `MimicHeads.score(m, e)`         -> the genuinely pairwise part (TGLU attention, DUAL fusion)
    and the bi-encoder dot products, returning S, S_T, S_V, S_C and, on request, attention maps.
Module names match the official checkpoint's `matcher.*` keys so official weights load by renaming.

Two modes (`MimicConfig.mode`):
  compat  the official implementation numerically: TGLU without padding mask, mean over all entity
          token positions, visual units score whatever image features exist (a missing image is an
          all-zero pixel tensor encoded by the backbone), in-batch CE with duplicate golds as negatives.
  fixed   (default) the deviations listed in `FIXED_MODE_DEVIATIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol, Self

import torch
import torch.nn.functional as F
from torch import nn

from mimic.backbones.base import BackboneDims, ImageFeatures, TextFeatures
from mimic.models.exact_scoring import dual_scores, g2l_scores, scores_in_blocks

FIXED_MODE_DEVIATIONS = {
    "tglu_padding_mask": "TGLU masks padded mention tokens out of the softmax and averages the "
    "context over real entity tokens only (official: pads attended and averaged).",
    "no_squeeze": "No bare .squeeze(): a batch or KB chunk of size 1 keeps its dimension "
    "(official CMFU collapses it and crashes ranking). Applies in both modes.",
    "dedup_negatives": "In-batch duplicate gold entities are removed from a mention's negatives "
    "(official: they are false negatives in the CE).",
    "rgb_images": "Every image is converted to RGB (official, transformers 4.18: non-RGB images hit a "
    "shape error and silently became zero tensors).",
    "image_masking": "Items without an image are not encoded as a zero 'mean-colour' picture: VDLU "
    "scores of pairs lacking an image are replaced by one learned constant and those "
    "mentions leave L_V; CMFU's image context is zero for them (text-only fusion).",
    "lexical_unit": "Optional extra unit S_L (mimic.models.lexical_unit): a learned score of pair "
    "features (character n-gram TF-IDF, token overlaps, sentence context, retriever ranks) over the "
    "served shortlist, fused as S = β·(S_T + S_V + S_C)/3 + S_L; the three units are unchanged. "
    "Off in compat mode (a checkpoint's unit is not loaded there).",
}


def dims_config(dims: BackboneDims) -> dict[str, Any]:
    """The head-config fields a backbone fixes (both families' configs take them by these names)."""
    return {
        "text_global_dim": dims.text_global,
        "text_token_dim": dims.text_token,
        "image_global_dim": dims.image_global,
        "image_token_dim": dims.image_token,
        "num_image_tokens": dims.num_image_tokens,
    }


@dataclass
class MimicConfig:
    """Head configuration. Backbone widths come from `BackboneDims` (CLIP-B/32: 512/512/512/768/50)."""

    mode: str = "fixed"  # "fixed" or "compat"
    text_global_dim: int = 512  # official dt / input_hidden_dim
    text_token_dim: int = 512
    image_global_dim: int = 512  # CLIP projection width (input of image_cls_fc)
    image_token_dim: int = 768  # official input_image_hidden_dim
    num_image_tokens: int = 50
    dv: int = 96
    tglu_dim: int = 96
    vdlu_dim: int = 96
    cmfu_dim: int = 96
    text_max_length: int = 40
    cmfu_scaled_attention: bool = False  # the paper's CMFU softmax has no 1/sqrt(d); kept by default
    model_type = "mimic"  # class attribute (not a field): the family's name

    def __post_init__(self):
        if self.mode not in ("fixed", "compat"):
            raise ValueError(f"mode must be 'fixed' or 'compat', got {self.mode!r}")

    @property
    def fixed(self) -> bool:
        return self.mode == "fixed"

    @classmethod
    def for_backbone(cls, dims: BackboneDims, **kw) -> MimicConfig:
        return cls(**dims_config(dims), **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MimicConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------
# Per-item features after the shared input LayerNorms, and the two caches built from them.
# ------------------------------------------------------------------------------------------------
@dataclass
class SideFeatures:
    """One side (mentions or entities) after image projections and the four input LayerNorms.

    t_cls [n, Dtg]; t_tok [n, L, Dtt]; t_mask [n, L] bool; v_cls [n, dv]; v_tok [n, P, dv]; has_image [n] bool
    """

    t_cls: torch.Tensor
    t_tok: torch.Tensor
    t_mask: torch.Tensor
    v_cls: torch.Tensor
    v_tok: torch.Tensor
    has_image: torch.Tensor


@dataclass
class TensorCache:
    if TYPE_CHECKING:
        # Declared by every concrete cache as a dataclass field (first; [N, Dtg]); read by __len__.
        # Only a declaration here, so it is not a field of this base class.
        t_cls: torch.Tensor

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Self:
        """Return a copy with `fn` applied to every tensor (e.g. `.to(device)`, `.half()`, slicing)."""
        return type(self)(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        return self.t_cls.shape[0]

    def __getitem__(self, idx: Any) -> Self:
        return self.apply(lambda t: t[idx])

    @classmethod
    def cat(cls, parts: Sequence[Self]) -> Self:
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class EntityCache(TensorCache):
    """Everything mention-independent for N entities.

    t_cls [N,Dtg]  LN'd text global (TGLU G2G)      q [N,L,d]  W_q E_tok (TGLU queries)
    t_mask [N,L]   real-token mask                  g2l_cls [N,d]  W_cls e_cls
    e2m_q [N,d]    DUAL ent→men cls_fc(e_v)         e2m_qn [N,d]  its LayerNorm
    m2e_k [N,d]    DUAL men→ent cls_fc(e_v)         m2e_v [N,d]   mean tokens_fc(E_v)
    z [N,d]        CMFU fused entity vector         cmfu_attn [N,P] entity text→patch attention
    has_image [N]  bool
    """

    t_cls: torch.Tensor
    q: torch.Tensor
    t_mask: torch.Tensor
    g2l_cls: torch.Tensor
    e2m_q: torch.Tensor
    e2m_qn: torch.Tensor
    m2e_k: torch.Tensor
    m2e_v: torch.Tensor
    z: torch.Tensor
    cmfu_attn: torch.Tensor
    has_image: torch.Tensor


@dataclass
class MentionCache(TensorCache):
    """Everything entity-independent for B mentions.

    t_cls [B,Dtg]; k, v [B,L,d] TGLU keys/values; t_mask [B,L];
    e2m_k [B,d] DUAL ent→men cls_fc(m_v); e2m_v [B,d] mean tokens_fc(M_v);
    m2e_q [B,d] DUAL men→ent cls_fc(m_v); m2e_qn [B,d] its LayerNorm;
    z [B,d] CMFU fused mention vector; cmfu_attn [B,P]; has_image [B]
    """

    t_cls: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    t_mask: torch.Tensor
    e2m_k: torch.Tensor
    e2m_v: torch.Tensor
    m2e_q: torch.Tensor
    m2e_qn: torch.Tensor
    z: torch.Tensor
    cmfu_attn: torch.Tensor
    has_image: torch.Tensor


@dataclass
class MatchOutput:
    """Scores [B, N] for B mentions × N entities, plus optional explanations.

    tglu_attention [N, B, Le, Lm]: entity-token × mention-token attention (rows: entity tokens).
    cmfu_mention_attention [B, P], cmfu_entity_attention [N, P]: text→patch attention per side.
    """

    S: torch.Tensor
    S_T: torch.Tensor
    S_V: torch.Tensor
    S_C: torch.Tensor
    tglu_attention: torch.Tensor | None = None
    cmfu_mention_attention: torch.Tensor | None = None
    cmfu_entity_attention: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Units. Parameter names follow the official code so its checkpoints load by key renaming.
# ------------------------------------------------------------------------------------------------
class TGLUMentionSide(Protocol):
    """What the global–local computation reads of the mention side (a `MentionCache` has it)."""

    t_cls: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    t_mask: torch.Tensor


class TGLUEntitySide(Protocol):
    """What the global–local computation reads of the entity side (an `EntityCache` has it)."""

    t_cls: torch.Tensor
    q: torch.Tensor
    g2l_cls: torch.Tensor
    t_mask: torch.Tensor


class GlobalLocalUnit(nn.Module):
    """The global–local computation of TGLU (paper eqs. 8–10), shared with M3EL's image unit.

    G2G = m_cls · e_cls (raw dot product of LN'd globals).
    G2L: entity tokens are the queries, mention tokens keys/values; softmax(QK^T/sqrt(d)) over
    mention tokens; context averaged over entity tokens → LN → dot with W_cls e_cls.
    S_T = (G2G + G2L) / 2.
    """

    def __init__(self, text_global_dim: int, text_token_dim: int, d: int):
        super().__init__()
        self.fc_query = nn.Linear(text_token_dim, d)
        self.fc_key = nn.Linear(text_token_dim, d)
        self.fc_value = nn.Linear(text_token_dim, d)
        self.fc_cls = nn.Linear(text_global_dim, d)
        self.layer_norm = nn.LayerNorm(d)
        self.d = d

    def pairwise(
        self,
        m: TGLUMentionSide,
        e: TGLUEntitySide,
        fixed: bool,
        return_attention: bool = False,
        tiled: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (S_T [B,N], attention [N,B,Le,Lm] or None).

        tiled: use the cache-tiled inference kernel (`exact_scoring.g2l_scores`); None = whenever
        no attention map and no gradient is needed. False = the straightforward computation below
        (training, attention maps, and the reference the kernel is tested against).
        """
        g2g = m.t_cls @ e.t_cls.T  # [B, N]
        if tiled is None:
            tiled = not (return_attention or torch.is_grad_enabled())
        if tiled and not return_attention:
            g2l = g2l_scores(
                e.q,
                m.k,
                m.v,
                e.g2l_cls,
                self._pool_weights(e.t_mask, fixed, e.q.dtype),
                m.t_mask if fixed else None,
                self.layer_norm,
            )
            return (g2g + g2l) / 2, None
        q, k, v = e.q, m.k, m.v
        e_mask, m_mask = e.t_mask, m.t_mask
        if fixed and not return_attention:
            # Padded positions are masked in fixed mode, so trimming the tail that is padding in
            # every row is exact and saves (L/len)^2 of the dominant cost.
            le, lm = (max(n, 1) for n in torch.stack([_real_length(e_mask), _real_length(m_mask)]).tolist())
            q, e_mask = q[:, :le], e_mask[:, :le]
            k, v, m_mask = k[:, :lm], v[:, :lm], m_mask[:, :lm]
        N, Le, d = q.shape
        B, Lm = k.shape[:2]
        logits = (q.reshape(N * Le, d) @ (k.reshape(B * Lm, d).T / math.sqrt(self.d))).view(N, Le, B, Lm)
        if fixed:
            logits = logits.masked_fill(~m_mask[None, None, :, :], float("-inf"))
        w = self._pool_weights(e_mask, fixed, logits.dtype)  # [N, Le]
        probs = logits.softmax(-1)  # [N, Le, B, Lm]
        # mean_i (attn_i @ V) == (sum_i w_i attn_i) @ V: pool the attention rows first (cheaper).
        pooled = torch.einsum("nibj,ni->nbj", probs, w)  # [N, B, Lm]
        attn = probs.permute(0, 2, 1, 3) if return_attention else None  # [N, B, Le, Lm]
        ctx = torch.einsum("nbj,bjd->nbd", pooled, v)  # [N, B, d]
        ctx = self.layer_norm(ctx)
        g2l = (ctx * e.g2l_cls[:, None, :]).sum(-1).T  # [B, N]
        return (g2g + g2l) / 2, attn

    @staticmethod
    def _pool_weights(e_mask: torch.Tensor, fixed: bool, dtype: torch.dtype) -> torch.Tensor:
        """Weights [N, Le] of the mean over entity tokens: real tokens only (fixed) or all (compat)."""
        if fixed:
            w = e_mask.to(dtype)
            return w / w.sum(1, keepdim=True).clamp_min(1)
        return torch.full(e_mask.shape, 1.0 / e_mask.shape[1], dtype=dtype, device=e_mask.device)


def _real_length(mask: torch.Tensor) -> torch.Tensor:
    """Position after the last True of any row of mask [n, L] (0-dim; 0 when none is True)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask * pos).amax() if mask.numel() else torch.zeros((), dtype=torch.long)


class TGLU(GlobalLocalUnit):
    """Text-based global–local unit (paper eqs. 8–10); see `GlobalLocalUnit`."""

    def forward(
        self, m: MentionCache, e: EntityCache, fixed: bool, return_attention: bool = False, tiled: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (S_T [B,N], attention [N,B,Le,Lm] or None)."""
        return self.pairwise(m, e, fixed, return_attention, tiled)


class DUAL(nn.Module):
    """One direction of the vision-based dual unit (paper eqs. 11–14).

    DUAL(q [a,d], k [b,d], T [b,P,d]):  q' = W_c q, k' = W_c k, v = mean_p W_t T,
    c = W_f LN_add(v_b + q'_a), g = tanh(w_g c), h = LN(c·g + k'_b), score_ab = <h, LN(q'_a)>.
    The cache methods split it into the query-side and key-side projections.
    """

    def __init__(self, dv: int, d: int):
        super().__init__()
        self.cls_fc = nn.Linear(dv, d)
        self.tokens_fc = nn.Linear(dv, d)
        self.fc = nn.Linear(d, d)
        self.gate_fc = nn.Linear(d, 1)
        self.add_layer_norm = nn.LayerNorm(d)
        self.layer_norm = nn.LayerNorm(d)

    def query_side(self, cls: torch.Tensor):
        """cls [a,dv] -> (q' [a,d], LN(q') [a,d])."""
        q = self.cls_fc(cls)
        return q, self.layer_norm(q)

    def key_side(self, cls: torch.Tensor, tokens: torch.Tensor):
        """cls [b,dv], tokens [b,P,dv] -> (k' [b,d], v [b,d])."""
        return self.cls_fc(cls), self.tokens_fc(tokens).mean(-2)

    def pair(self, q: torch.Tensor, qn: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, qn [a,d]; k, v [b,d] -> score [a,b]."""
        c = self.fc(self.add_layer_norm(v[None, :, :] + q[:, None, :]))  # [a, b, d]
        g = torch.tanh(self.gate_fc(c))  # [a, b, 1]
        h = self.layer_norm(c * g + k[None, :, :])
        return (h * qn[:, None, :]).sum(-1)


class VDLU(nn.Module):
    """Vision-based dual unit: two DUALs without shared weights; S_V = (ent2men^T + men2ent) / 2."""

    def __init__(self, dv: int, d: int):
        super().__init__()
        self.dual_ent2men = DUAL(dv, d)
        self.dual_men2ent = DUAL(dv, d)

    def forward(self, m: MentionCache, e: EntityCache, tiled: bool = False) -> torch.Tensor:
        """-> S_V [B, N]. tiled: the separable form of each DUAL (`exact_scoring.dual_scores`), no [a,b,d] tensor."""
        if tiled:
            e2m = dual_scores(self.dual_ent2men, e.e2m_q, e.e2m_qn, m.e2m_k, m.e2m_v)  # [N, B]
            m2e = dual_scores(self.dual_men2ent, m.m2e_q, m.m2e_qn, e.m2e_k, e.m2e_v)  # [B, N]
        else:
            e2m = self.dual_ent2men.pair(e.e2m_q, e.e2m_qn, m.e2m_k, m.e2m_v)
            m2e = self.dual_men2ent.pair(m.m2e_q, m.m2e_qn, e.m2e_k, e.m2e_v)
        return (e2m.T + m2e) / 2


class CMFU(nn.Module):
    """Cross-modal fusion unit (paper eqs. 15–19), computed per side (a bi-encoder).

    t = W_text t_cls; V = W_img V_tok; a = softmax(t·V^T) over patches (no 1/sqrt(d) in the paper);
    z = LN_gate(t·tanh(w_g t) + a·V). S_C = z_m · z_e^T.
    `context_layer_norm` exists in the official module but is unused; kept so weights load.
    """

    def __init__(self, text_global_dim: int, dv: int, d: int, scaled: bool = False):
        super().__init__()
        self.text_fc = nn.Linear(text_global_dim, d)
        self.image_fc = nn.Linear(dv, d)
        self.gate_fc = nn.Linear(d, 1)
        self.gate_layer_norm = nn.LayerNorm(d)
        self.context_layer_norm = nn.LayerNorm(d)
        self.scale = 1.0 / math.sqrt(d) if scaled else 1.0

    def side(self, t_cls, v_tok, has_image, fixed: bool):
        """t_cls [n,Dtg], v_tok [n,P,dv], has_image [n] -> (z [n,d], attention [n,P])."""
        t = self.text_fc(t_cls)
        V = self.image_fc(v_tok)
        attn = (torch.einsum("nd,npd->np", t, V) * self.scale).softmax(-1)
        if fixed:
            # No image: no patches to attend to, so the context is empty (text-only fusion).
            attn = attn * has_image[:, None].to(attn.dtype)
        ctx = torch.einsum("np,npd->nd", attn, V)
        z = self.gate_layer_norm(t * torch.tanh(self.gate_fc(t)) + ctx)
        return z, attn


class MimicMatcher(nn.Module):
    """The four input LayerNorms and the three units (official `MIMICMatcher`)."""

    def __init__(self, cfg: MimicConfig):
        super().__init__()
        self.tglu = TGLU(cfg.text_global_dim, cfg.text_token_dim, cfg.tglu_dim)
        self.vdlu = VDLU(cfg.dv, cfg.vdlu_dim)
        self.cmfu = CMFU(cfg.text_global_dim, cfg.dv, cfg.cmfu_dim, cfg.cmfu_scaled_attention)
        self.text_cls_layernorm = nn.LayerNorm(cfg.text_global_dim)
        self.text_tokens_layernorm = nn.LayerNorm(cfg.text_token_dim)
        self.image_cls_layernorm = nn.LayerNorm(cfg.dv)
        self.image_tokens_layernorm = nn.LayerNorm(cfg.dv)


class MimicHeads(nn.Module):
    """Everything of MIMIC after the backbone: image projections (official `encoder.image_*_fc`)
    and the matcher. Holds no backbone so it can be trained on cached backbone features."""

    def __init__(self, cfg: MimicConfig):
        super().__init__()
        self.config = cfg
        self.image_cls_fc = nn.Linear(cfg.image_global_dim, cfg.dv)
        self.image_tokens_fc = nn.Linear(cfg.image_token_dim, cfg.dv)
        self.matcher = MimicMatcher(cfg)
        if cfg.fixed:
            # Score VDLU gives a pair in which either side has no image (learned, see image_masking).
            self.no_image_score = nn.Parameter(torch.zeros(()))

    # -- per-item ---------------------------------------------------------------------------
    def side_features(self, text: TextFeatures, image: ImageFeatures) -> SideFeatures:
        mt = self.matcher
        return SideFeatures(
            t_cls=mt.text_cls_layernorm(text.global_),
            t_tok=mt.text_tokens_layernorm(text.tokens),
            t_mask=text.mask.bool(),
            v_cls=mt.image_cls_layernorm(self.image_cls_fc(image.global_)),
            v_tok=mt.image_tokens_layernorm(self.image_tokens_fc(image.tokens)),
            has_image=image.has_image.bool(),
        )

    def entity_cache(self, s: SideFeatures) -> EntityCache:
        mt, fixed = self.matcher, self.config.fixed
        e2m_q, e2m_qn = mt.vdlu.dual_ent2men.query_side(s.v_cls)
        m2e_k, m2e_v = mt.vdlu.dual_men2ent.key_side(s.v_cls, s.v_tok)
        z, attn = mt.cmfu.side(s.t_cls, s.v_tok, s.has_image, fixed)
        return EntityCache(
            t_cls=s.t_cls,
            q=mt.tglu.fc_query(s.t_tok),
            t_mask=s.t_mask,
            g2l_cls=mt.tglu.fc_cls(s.t_cls),
            e2m_q=e2m_q,
            e2m_qn=e2m_qn,
            m2e_k=m2e_k,
            m2e_v=m2e_v,
            z=z,
            cmfu_attn=attn,
            has_image=s.has_image,
        )

    def mention_cache(self, s: SideFeatures) -> MentionCache:
        mt, fixed = self.matcher, self.config.fixed
        e2m_k, e2m_v = mt.vdlu.dual_ent2men.key_side(s.v_cls, s.v_tok)
        m2e_q, m2e_qn = mt.vdlu.dual_men2ent.query_side(s.v_cls)
        z, attn = mt.cmfu.side(s.t_cls, s.v_tok, s.has_image, fixed)
        return MentionCache(
            t_cls=s.t_cls,
            k=mt.tglu.fc_key(s.t_tok),
            v=mt.tglu.fc_value(s.t_tok),
            t_mask=s.t_mask,
            e2m_k=e2m_k,
            e2m_v=e2m_v,
            m2e_q=m2e_q,
            m2e_qn=m2e_qn,
            z=z,
            cmfu_attn=attn,
            has_image=s.has_image,
        )

    # -- pairwise ---------------------------------------------------------------------------
    def score(
        self, m: MentionCache, e: EntityCache, return_attention: bool = False, tiled: bool | None = None
    ) -> MatchOutput:
        """m: B mentions, e: N entities -> MatchOutput with [B, N] scores.

        tiled: the inference kernels of `exact_scoring` (same scores up to fp32 rounding, no autograd),
        entity blocks on single-threaded workers; None = whenever no attention map and no gradient
        is needed.
        """
        if tiled is None:
            tiled = not (return_attention or torch.is_grad_enabled())
        if tiled and not return_attention:
            return MatchOutput(**scores_in_blocks(lambda sl: self._score(m, e[sl], False, True), len(m), len(e), m.k))
        return self._score(m, e, return_attention, tiled)

    def _score(self, m: MentionCache, e: EntityCache, return_attention: bool, tiled: bool) -> MatchOutput:
        fixed = self.config.fixed
        S_T, attn = self.matcher.tglu(m, e, fixed, return_attention, tiled)
        if fixed:
            both = m.has_image[:, None] & e.has_image[None, :]
            if bool(both.any()):
                S_V = torch.where(both, self.matcher.vdlu(m, e, tiled), self.no_image_score.to(S_T.dtype))
            else:  # no pair has two images (e.g. a text-only dataset): skip the pairwise DUAL work
                S_V = self.no_image_score.to(S_T.dtype).expand_as(S_T)
        else:
            S_V = self.matcher.vdlu(m, e, tiled)
        S_C = m.z @ e.z.T
        S = (S_T + S_V + S_C) / 3
        out = MatchOutput(S=S, S_T=S_T, S_V=S_V, S_C=S_C)
        if return_attention:
            out.tglu_attention = attn
            out.cmfu_mention_attention = m.cmfu_attn
            out.cmfu_entity_attention = e.cmfu_attn
        return out

    def forward(self, mention: SideFeatures, entity: SideFeatures, return_attention: bool = False) -> MatchOutput:
        return self.score(self.mention_cache(mention), self.entity_cache(entity), return_attention)

    # -- hooks shared by every head family (MIMIC, M3EL) --------------------------------------
    def retrieval_vector(self, cache, role: str) -> torch.Tensor:
        """Vectors whose dot product is the bi-encoder part of S (for candidate retrieval).

        S = G2G/6 + G2L/6 + S_V/3 + S_C/3 with G2G = m_t·e_t and S_C = z_m·z_e, so
        <[m_t, z_m], [e_t/6, z_e/3]> is exactly the part of S that needs no pairwise work.
        role: "entity" or "mention" -> [n, Dtg + d].
        """
        if role == "entity":
            return torch.cat([cache.t_cls.float() / 6, cache.z.float() / 3], 1)
        return torch.cat([cache.t_cls.float(), cache.z.float()], 1)

    def training_loss(
        self,
        m_text: TextFeatures,
        m_image: ImageFeatures,
        e_text: TextFeatures,
        e_image: ImageFeatures,
        gold: torch.Tensor,
    ):
        """In-batch loss for B mentions and their B gold entities -> (loss, {term: 0-dim detached tensor})."""
        out = self(self.side_features(m_text, m_image), self.side_features(e_text, e_image))
        return in_batch_loss(out, gold, m_image.has_image, self.config.fixed)


def in_batch_loss(
    out: MatchOutput, gold: torch.Tensor, mention_has_image: torch.Tensor | None, fixed: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE(S) + CE(S_T) + CE(S_V) + CE(S_C) over in-batch negatives (paper eqs. 20–22).

    out: scores [B, B] of B mentions against their B gold entities (column i = gold of mention i).
    gold [B]: entity ids/positions of the golds, used in fixed mode to drop duplicate golds from
    the negatives. mention_has_image [B]: in fixed mode, rows without a mention image leave L_V
    (all their S_V entries are the same constant, so the row carries no signal).
    """
    B = out.S.shape[0]
    labels = torch.arange(B, device=out.S.device)
    mask = None
    if fixed:
        same = gold[:, None] == gold[None, :]
        mask = same & ~torch.eye(B, dtype=torch.bool, device=same.device)

    def ce(s, rows=None):
        if mask is not None:
            s = s.masked_fill(mask, float("-inf"))
        if rows is not None:
            # Mean over the rows that have a mention image, 0 when none has one. Weighted rather
            # than selected (s[rows]) so that nothing here waits for the GPU to say how many rows.
            per_row = F.cross_entropy(s, labels, reduction="none")
            w = rows.to(per_row.dtype)
            return (per_row * w).sum() / w.sum().clamp(min=1)
        return F.cross_entropy(s, labels)

    rows_v = mention_has_image.bool() if (fixed and mention_has_image is not None) else None
    parts = {"L_O": ce(out.S), "L_T": ce(out.S_T), "L_V": ce(out.S_V, rows_v), "L_C": ce(out.S_C)}
    total = sum(parts.values())
    # The terms stay 0-dim tensors: turning them into floats here would make the host wait for
    # the device at every training step.
    return total, {k: v.detach() for k, v in parts.items()}
