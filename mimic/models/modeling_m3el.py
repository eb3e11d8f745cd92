"""M3EL (Hu et al., KDD 2025, "Multi-level Matching Network for Multimodal Entity Linking") heads.

Shapes: B mentions, N entities, L text tokens, P image tokens (patches, CLIP: 49 + CLS), d = 96.

A second head family next to MIMIC (`mimic.models.modeling_mimic`) with exactly the same interface, so the
training loop, evaluation, KB index and linker drive either one:
  * `M3ELHeads.side_features(text, image)` -> `SideFeatures` (image projections + 4 input LNs);
  * `M3ELHeads.entity_cache(side)`          -> `M3ELEntityCache`, everything mention-independent;
  * `M3ELHeads.mention_cache(side)`         -> `M3ELMentionCache`, everything entity-independent;
  * `M3ELHeads.score(m, e)`                 -> `MatchOutput` with S, S_T, S_V, S_C [B, N];
  * `M3ELHeads.retrieval_vector(cache, role)`, `M3ELHeads.training_loss(...)`.

Units (module and parameter names follow the official `M3ELMatcher`, so its checkpoints load by
renaming `matcher.*` keys; its dead modules are listed in `OFFICIAL_DEAD_KEYS`):
  timm  intra-modal text matching = MIMIC's TGLU, byte for byte (G2G + entity-token-query G2L).
  iimm  intra-modal image matching: the TGLU pattern on vision (image-cls G2G + patch-to-patch G2L).
  cmm   cross-modal matching, T2V (`cross_modal="t2v"`): per side t' = Match(t, V), V' = Match(V, t),
        ctx = LN(t·tanh(w_g t) + Fusion(t', MultiHead(V'))); S_C = ctx_m · ctx_e.
  cmmb  bidirectional cross-modal matching (`cross_modal="bidirectional"`): a T2V context
        LN(t·g(t) + MultiHead([t'; V'])) and a V2T context LN(v·g(v) + MultiHead([v'; T'])), with
        S = (S_T + S_V + s_tv + s_vt) / 4.
`cross_modal` is the head trained by `training_loss`; `cross_modal_eval` the head that scores
(caches, `score`, evaluation, serving): by default the same one. The official `test_step` always
scores with the T2V `cmm`, even for a model trained with `cmmb` (WikiDiverse), whose `cmm` was never
trained: an imported official checkpoint in compat mode sets `cross_modal_eval="t2v"` to reproduce
the published figures, and the matcher then holds both modules.
Both cross-modal units are bi-encoders (each side alone), so their contexts live in the caches and
`score` only runs the genuinely pairwise TIMM/IIMM attention plus dot products.

Two modes (`M3ELConfig.mode`):
  compat  the published implementation numerically, including the degenerate V' = Match(V, t) (a
          softmax over ONE key, so every row of V' is ReLU(W t) and carries no image information),
          no padding masks, image-less items scored through their placeholder features, in-batch CE
          and intra-modal contrastive loss without de-duplication.
  fixed   (default) the deviations listed in `FIXED_MODE_DEVIATIONS_M3EL`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mimic.backbones.base import BackboneDims, ImageFeatures, TextFeatures
from mimic.models.m3el_units import CrossModalMatch, CrossModalMatchBidirection, ImageIntraModalMatch, is_max_head
from mimic.models.modeling_mimic import TGLU, MatchOutput, SideFeatures, TensorCache, dims_config, in_batch_loss

FIXED_MODE_DEVIATIONS_M3EL = {
    "token_branch_residual": "The degenerate token branches are repaired with a residual connection: "
    "V' = V + Match(V, t) (T2V) and T' = T + Match(T, v) (V2T). Official: "
    "Match(V, t) is a softmax over a single key, so every row of V' is "
    "ReLU(W t) (no image information; MultiHead(V') = 2·ReLU(W t)), and every "
    "row of T' is ReLU(W v) (no text-token information). With the residual each "
    "token keeps its own content, conditioned on the other modality, and the "
    "CSRA multi-head pooling pools genuinely different tokens. Same parameters "
    "as the official module, so official weights still load.",
    "text_padding_mask": "Padded text tokens are masked everywhere: TIMM (as MIMIC fixed: masked "
    "softmax over mention tokens, context averaged over real entity tokens), the "
    "V2T Match(v, T) keys and the MultiHead pooling over [v'; T'] (mean, softmax "
    "and max over real tokens only). Official: pads attended and pooled.",
    "image_masking": "Items without an image are not scored through a zero 'mean-colour' picture: IIMM "
    "scores of pairs in which either side has no image are one learned constant "
    "(`no_image_score`), those mentions leave L_V, and the cross-modal unit gets a zero "
    "image context (zero patches and image cls after image_fc, zero text→patch "
    "attention), i.e. a text-only context. The retrieval vectors reproduce this exactly.",
    "no_squeeze": "No bare .squeeze(): a batch or KB chunk of size 1 keeps its dimension (official "
    "cross-modal code collapses it). Applies in both modes.",
    "dedup_negatives": "In-batch duplicate gold entities are removed from a mention's negatives in every "
    "CE term (official: false negatives), and from the negatives of the intra-modal "
    "contrastive loss (inter and intra blocks, both sides).",
    "contrastive_masking": "Intra-modal contrastive loss: the intra-block diagonal (self-similarity) is "
    "excluded from the softmax (official: multiplied by 0, so it still adds e^0 "
    "to every denominator); the image term uses only pairs in which both the "
    "mention and its gold entity have an image, with negatives restricted to "
    "items that have one (when no pair has images it is 0; cl = (text + image)/2 "
    "keeps its weights). Official: placeholder images take part.",
    "same_head_train_eval": "With cross_modal='bidirectional' the trained bidirectional head scores in "
    "training AND evaluation (`cross_modal_eval` defaults to `cross_modal`). Official: "
    "`test_step` scores WikiDiverse with the never-trained unidirectional `cmm`. "
    "Models trained here use the trained head in both modes; an official "
    "checkpoint imported in compat mode evaluates with `cmm` as the official code "
    "does (`cross_modal_eval='t2v'`, to reproduce the published numbers), and "
    "`--cross-modal-eval bidirectional` (the default of a fixed-mode import) "
    "scores with the trained `cmmb` instead.",
    "device_agnostic": "Masks are built on the features' device (official: numpy eye + .cuda(), "
    "CUDA-only and float64). Applies in both modes.",
}

# Keys of the official `M3ELMatcher` state dict that no forward pass reads (drop them on import).
OFFICIAL_DEAD_KEYS = (
    "matcher.text_fc.",
    "matcher.image_fc.",
    "matcher.scale_",
    "matcher.infonce_loss.",
    "matcher.mclet_",
    "matcher.weight_cl_loss.",
    "matcher.cmm.mclet_",
    "matcher.cmmb.mclet_",
)

#: CSRA heads per head count, as the official `MultiHeadModule.temp_settings` (99 there = max-pool).
OFFICIAL_TEMPERATURES = {
    1: (3,),
    2: (3, math.inf),
    3: (2, 4, math.inf),
    4: (2, 3, 4, math.inf),
    5: (2, 2.5, 3.5, 4.5, math.inf),
    6: (2, 3, 4, 5, 6, math.inf),
    7: (0.5, 2.5, 3.5, 4.5, 5.5, 6.5, math.inf),
    8: (0.5, 2, 3, 4, 5, 6, 7, math.inf),
}


@dataclass
class M3ELConfig:
    """Head configuration. Backbone widths come from `BackboneDims` (CLIP-B/32: 512/512/512/768/50).

    Shared fields have MimicConfig's meaning. `temperatures` are the CSRA head temperatures
    (math.inf = the max-pool head; written as "max" by `to_dict`), `weight` is CSRA's λ.
    """

    model_type: ClassVar[str] = "m3el"

    mode: str = "fixed"  # "fixed" or "compat"
    text_global_dim: int = 512  # official dt / input_hidden_dim
    text_token_dim: int = 512
    image_global_dim: int = 512  # CLIP projection width (input of image_cls_fc)
    image_token_dim: int = 768  # official input_image_hidden_dim
    num_image_tokens: int = 50
    dv: int = 96
    timm_dim: int = 96  # official TIMM_hidden_dim
    iimm_dim: int = 96  # official IIMM_hidden_dim
    cmm_dim: int = 96  # official CMM_hidden_dim
    text_max_length: int = 40
    head_num: int = 5
    temperatures: tuple = (2.0, 2.5, 3.5, 4.5, math.inf)
    weight: float = 1.0  # CSRA λ (official `model.weight`)
    loss_temperature: float = 0.03
    inter_weight: float = 1.0
    intra_weight: float = 0.8
    cross_modal: str = "t2v"  # trained head: "t2v" (WikiMEL/RichpediaMEL) or "bidirectional" (WikiDiverse)
    # scoring head (evaluation, serving); None = `cross_modal`. "t2v" with cross_modal="bidirectional"
    # is the official evaluation of WikiDiverse (its untrained `cmm`); see `same_head_train_eval`.
    cross_modal_eval: str | None = None

    def __post_init__(self):
        if self.mode not in ("fixed", "compat"):
            raise ValueError(f"mode must be 'fixed' or 'compat', got {self.mode!r}")
        if self.cross_modal not in ("t2v", "bidirectional"):
            raise ValueError(f"cross_modal must be 't2v' or 'bidirectional', got {self.cross_modal!r}")
        if self.cross_modal_eval not in (None, "t2v", "bidirectional"):
            raise ValueError(f"cross_modal_eval must be 't2v' or 'bidirectional', got {self.cross_modal_eval!r}")
        if self.temperatures is None:
            if self.head_num not in OFFICIAL_TEMPERATURES:
                raise ValueError(f"no official temperatures for head_num={self.head_num}")
            self.temperatures = OFFICIAL_TEMPERATURES[self.head_num]
        self.temperatures = tuple(math.inf if is_max_head(t) else float(t) for t in self.temperatures)
        if len(self.temperatures) != self.head_num:
            raise ValueError(f"head_num={self.head_num} but {len(self.temperatures)} temperatures given")

    @property
    def fixed(self) -> bool:
        return self.mode == "fixed"

    @property
    def bidirectional(self) -> bool:
        """The TRAINED head is the bidirectional one."""
        return self.cross_modal == "bidirectional"

    @property
    def eval_head(self) -> str:
        """The cross-modal head that scores: "t2v" or "bidirectional"."""
        return self.cross_modal_eval or self.cross_modal

    @property
    def cross_heads(self) -> tuple[str, ...]:
        """Cross-modal modules the matcher holds (the trained one and the scoring one)."""
        return tuple(h for h in ("t2v", "bidirectional") if h in (self.cross_modal, self.eval_head))

    @classmethod
    def for_backbone(cls, dims: BackboneDims, **kw) -> M3ELConfig:
        return cls(**dims_config(dims), **kw)

    def to_dict(self) -> dict:
        """JSON-safe: includes `model_type` and writes the max-pool head as "max"."""
        d = asdict(self)
        d["temperatures"] = ["max" if math.isinf(t) else t for t in self.temperatures]
        d["model_type"] = self.model_type
        return d

    @classmethod
    def from_dict(cls, d: dict) -> M3ELConfig:
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"not an M3EL config (model_type={d.get('model_type')!r})")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------------
# Caches
# ------------------------------------------------------------------------------------------------
@dataclass
class M3ELEntityCache(TensorCache):
    """Everything mention-independent for N entities (dz = d for t2v, 2d for bidirectional).

    t_cls [N,Dtg]   LN'd text global (TIMM G2G)       q [N,L,d]   W_q E_tok (TIMM queries)
    t_mask [N,L]    real-token mask                   g2l_cls [N,d]  TIMM W_cls e_cls
    v_cls [N,dv]    LN'd image cls (IIMM G2G)         v_q [N,P,d]  IIMM W_q E_patch (queries)
    v_g2l_cls [N,d] IIMM W_cls e_img_cls              z [N,dz]    cross-modal context(s) [ctx_tv ; ctx_vt]
    cmfu_attn [N,P] entity text→patch attention (the T2V Match(t, V))          has_image [N] bool
    """

    t_cls: torch.Tensor
    q: torch.Tensor
    t_mask: torch.Tensor
    g2l_cls: torch.Tensor
    v_cls: torch.Tensor
    v_q: torch.Tensor
    v_g2l_cls: torch.Tensor
    z: torch.Tensor
    cmfu_attn: torch.Tensor
    has_image: torch.Tensor


@dataclass
class M3ELMentionCache(TensorCache):
    """Everything entity-independent for B mentions.

    t_cls [B,Dtg]; k, v [B,L,d] TIMM keys/values; t_mask [B,L]; v_cls [B,dv] LN'd image cls;
    v_k, v_v [B,P,d] IIMM keys/values; z [B,dz] cross-modal context(s); cmfu_attn [B,P]; has_image [B]
    """

    t_cls: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    t_mask: torch.Tensor
    v_cls: torch.Tensor
    v_k: torch.Tensor
    v_v: torch.Tensor
    z: torch.Tensor
    cmfu_attn: torch.Tensor
    has_image: torch.Tensor


class M3ELMatcher(nn.Module):
    """The four input LayerNorms (as MIMIC's) and the units: timm, iimm and cmm (t2v) or cmmb."""

    def __init__(self, cfg: M3ELConfig):
        super().__init__()
        self.timm = TGLU(cfg.text_global_dim, cfg.text_token_dim, cfg.timm_dim)
        self.iimm = ImageIntraModalMatch(cfg.dv, cfg.iimm_dim)
        if "t2v" in cfg.cross_heads:
            self.cmm = CrossModalMatch(cfg.text_global_dim, cfg.dv, cfg.cmm_dim, cfg.temperatures, cfg.weight)
        if "bidirectional" in cfg.cross_heads:
            self.cmmb = CrossModalMatchBidirection(
                cfg.text_global_dim, cfg.text_token_dim, cfg.dv, cfg.cmm_dim, cfg.temperatures, cfg.weight
            )
        self.text_cls_layernorm = nn.LayerNorm(cfg.text_global_dim)
        self.text_tokens_layernorm = nn.LayerNorm(cfg.text_token_dim)
        self.image_cls_layernorm = nn.LayerNorm(cfg.dv)
        self.image_tokens_layernorm = nn.LayerNorm(cfg.dv)
        self.eval_head = cfg.eval_head

    @property
    def cross(self) -> CrossModalMatch | CrossModalMatchBidirection:
        """The module of the scoring head (`M3ELConfig.eval_head`)."""
        return self.cross_module(self.eval_head)

    def cross_module(self, head: str) -> CrossModalMatch | CrossModalMatchBidirection:
        """The cross-modal module of `head` ("t2v" -> cmm, "bidirectional" -> cmmb)."""
        return self.cmmb if head == "bidirectional" else self.cmm


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def weighted_contrastive_loss(
    entity: torch.Tensor,
    mention: torch.Tensor,
    *,
    temperature: float = 0.03,
    inter_weight: float = 1.0,
    intra_weight: float = 0.8,
    fixed: bool = False,
    gold: torch.Tensor | None = None,
    entity_valid: torch.Tensor | None = None,
    mention_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Official `WeightedContrastiveLoss` (M3EL's intra-modal contrastive learning) -> scalar.

    entity, mention [B,D]: pre-LayerNorm global features of B gold entities and their B mentions
    (pair i = mention i and its gold). Both L2-normalised; logits of entity row i are
    [inter_weight · e_i·M^T/τ , intra_weight · e_i·E^T/τ] (2B columns), the positive being column i
    of the inter block; the mention side is symmetric; loss = (mean_e + mean_m)/2.
      compat: the intra diagonals are multiplied by 0 (so each still adds e^0 to the denominator).
      fixed:  intra diagonals excluded; columns j≠i with gold[j] == gold[i] excluded (same entity:
              false negatives); with entity_valid/mention_valid [B] (items having an image) only rows
              of pairs valid on both sides count, and only valid items serve as negatives.
    """
    B = entity.shape[0]
    e = F.normalize(entity, dim=1)
    m = F.normalize(mention, dim=1)
    eye = torch.eye(B, dtype=torch.bool, device=e.device)
    inter_e, inter_m = e @ m.T / temperature, m @ e.T / temperature
    intra_e, intra_m = e @ e.T / temperature, m @ m.T / temperature
    rows = None
    if not fixed:
        intra_e = intra_e * (~eye).to(intra_e.dtype)
        intra_m = intra_m * (~eye).to(intra_m.dtype)
    else:
        excl = eye.clone()
        if gold is not None:
            excl |= (gold[:, None] == gold[None, :]) & ~eye
        ev = torch.ones(B, dtype=torch.bool, device=e.device) if entity_valid is None else entity_valid.bool()
        mv = torch.ones(B, dtype=torch.bool, device=e.device) if mention_valid is None else mention_valid.bool()
        rows = ev & mv
        # inter blocks: the positive (diagonal) always stays (so no row is all -inf), duplicates of
        # the gold and items without a valid feature go.
        dup = excl & ~eye
        block_inter_e = dup | (~mv[None, :] & ~eye)
        block_inter_m = dup | (~ev[None, :] & ~eye)
        block_intra_e = excl | ~ev[None, :]
        block_intra_m = excl | ~mv[None, :]
        inter_e = inter_e.masked_fill(block_inter_e, float("-inf"))
        inter_m = inter_m.masked_fill(block_inter_m, float("-inf"))
        intra_e = intra_e.masked_fill(block_intra_e, float("-inf"))
        intra_m = intra_m.masked_fill(block_intra_m, float("-inf"))
    logits_e = torch.cat([inter_weight * inter_e, intra_weight * intra_e], 1)
    logits_m = torch.cat([inter_weight * inter_m, intra_weight * intra_m], 1)
    idx = torch.arange(B, device=e.device)
    if rows is not None:
        if not bool(rows.any()):
            return (entity.sum() + mention.sum()) * 0.0  # nothing to contrast (e.g. no image pair)
        idx = idx[rows]
        logits_e, logits_m = logits_e[idx], logits_m[idx]
    r = torch.arange(len(idx), device=e.device)
    loss_e = -logits_e.log_softmax(1)[r, idx]
    loss_m = -logits_m.log_softmax(1)[r, idx]
    return (loss_e.mean() + loss_m.mean()) / 2


def _ce(s: torch.Tensor, gold: torch.Tensor, fixed: bool) -> torch.Tensor:
    """In-batch CE with arange labels; fixed: duplicate golds removed from the negatives (as in_batch_loss)."""
    B = s.shape[0]
    if fixed:
        dup = (gold[:, None] == gold[None, :]) & ~torch.eye(B, dtype=torch.bool, device=s.device)
        s = s.masked_fill(dup, float("-inf"))
    return F.cross_entropy(s, torch.arange(B, device=s.device))


def heads_state_dict_from_official(sd: dict, cfg: M3ELConfig) -> dict:
    """Official M3EL Lightning `state_dict` -> an `M3ELHeads(cfg)` state dict (load with strict=True).

    `encoder.image_{cls,tokens}_fc.*` lose their `encoder.` prefix; `matcher.*` keys keep their names.
    Dropped: the CLIP weights (`encoder.clip.*`, the backbone's business), the dead modules
    (`OFFICIAL_DEAD_KEYS`), and a cross-modal module this config neither trains nor scores with (the
    official matcher always holds both `cmm` and `cmmb`; only one of them was trained for a given
    dataset, but its evaluation always scores with `cmm`).
    """
    unused = tuple(
        prefix
        for head, prefix in (("t2v", "matcher.cmm."), ("bidirectional", "matcher.cmmb."))
        if head not in cfg.cross_heads
    )
    out = {}
    for k, v in sd.items():
        if k.startswith(("encoder.image_cls_fc.", "encoder.image_tokens_fc.")):
            out[k[len("encoder.") :]] = v
        elif (
            k.startswith("matcher.") and not k.startswith(OFFICIAL_DEAD_KEYS) and not (unused and k.startswith(unused))
        ):
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------------
# Heads
# ------------------------------------------------------------------------------------------------
class M3ELHeads(nn.Module):
    """Everything of M3EL after the backbone: image projections (official `encoder.image_*_fc`) and
    the matcher. Holds no backbone, so it can be trained on cached backbone features. Same interface
    as `MimicHeads`."""

    model_type: ClassVar[str] = "m3el"
    entity_cache_cls: ClassVar[type] = M3ELEntityCache
    mention_cache_cls: ClassVar[type] = M3ELMentionCache

    def __init__(self, cfg: M3ELConfig):
        super().__init__()
        self.config = cfg
        self.image_cls_fc = nn.Linear(cfg.image_global_dim, cfg.dv)
        self.image_tokens_fc = nn.Linear(cfg.image_token_dim, cfg.dv)
        self.matcher = M3ELMatcher(cfg)
        if cfg.fixed:
            # Score IIMM gives a pair in which either side has no image (learned, see image_masking).
            self.no_image_score = nn.Parameter(torch.zeros(()))

    # -- per-item ---------------------------------------------------------------------------
    def _side(self, text: TextFeatures, image: ImageFeatures) -> tuple[SideFeatures, torch.Tensor]:
        """-> (SideFeatures, pre-LayerNorm image cls [n,dv] for the contrastive loss)."""
        mt = self.matcher
        v_raw = self.image_cls_fc(image.global_)
        return SideFeatures(
            t_cls=mt.text_cls_layernorm(text.global_),
            t_tok=mt.text_tokens_layernorm(text.tokens),
            t_mask=text.mask.bool(),
            v_cls=mt.image_cls_layernorm(v_raw),
            v_tok=mt.image_tokens_layernorm(self.image_tokens_fc(image.tokens)),
            has_image=image.has_image.bool(),
        ), v_raw

    def side_features(self, text: TextFeatures, image: ImageFeatures) -> SideFeatures:
        """text, image of n items -> SideFeatures (t_cls [n,Dtg], t_tok [n,L,Dtt], v_cls [n,dv], v_tok [n,P,dv])."""
        return self._side(text, image)[0]

    def _cross(self, s: SideFeatures, head: str | None):
        return self.matcher.cross_module(head or self.config.eval_head).side(s, self.config.fixed)

    def entity_cache(self, s: SideFeatures, head: str | None = None) -> M3ELEntityCache:
        """head: cross-modal head of the context z (default: the scoring head `eval_head`)."""
        mt = self.matcher
        z, attn = self._cross(s, head)
        return M3ELEntityCache(
            t_cls=s.t_cls,
            q=mt.timm.fc_query(s.t_tok),
            t_mask=s.t_mask,
            g2l_cls=mt.timm.fc_cls(s.t_cls),
            v_cls=s.v_cls,
            v_q=mt.iimm.fc_query(s.v_tok),
            v_g2l_cls=mt.iimm.fc_cls(s.v_cls),
            z=z,
            cmfu_attn=attn,
            has_image=s.has_image,
        )

    def mention_cache(self, s: SideFeatures, head: str | None = None) -> M3ELMentionCache:
        mt = self.matcher
        z, attn = self._cross(s, head)
        return M3ELMentionCache(
            t_cls=s.t_cls,
            k=mt.timm.fc_key(s.t_tok),
            v=mt.timm.fc_value(s.t_tok),
            t_mask=s.t_mask,
            v_cls=s.v_cls,
            v_k=mt.iimm.fc_key(s.v_tok),
            v_v=mt.iimm.fc_value(s.v_tok),
            z=z,
            cmfu_attn=attn,
            has_image=s.has_image,
        )

    # -- pairwise ---------------------------------------------------------------------------
    def _image_scores(self, m: M3ELMentionCache, e: M3ELEntityCache, return_attention: bool):
        """-> (S_V [B,N], IIMM attention [N,B,P,P] or None). Fixed: only pairs with two images run
        the pairwise unit; the others get `no_image_score`."""
        iimm = self.matcher.iimm
        if not self.config.fixed:
            return iimm(m.v_cls, m.v_k, m.v_v, e.v_cls, e.v_q, e.v_g2l_cls, return_attention)
        B, N = m.v_k.shape[0], e.v_q.shape[0]
        P_e, P_m = e.v_q.shape[1], m.v_k.shape[1]
        mi = m.has_image.nonzero(as_tuple=True)[0]
        ei = e.has_image.nonzero(as_tuple=True)[0]
        c = self.no_image_score.to(m.v_k.dtype)
        if len(mi) == B and len(ei) == N:
            return iimm(m.v_cls, m.v_k, m.v_v, e.v_cls, e.v_q, e.v_g2l_cls, return_attention)
        att = m.v_k.new_zeros(N, B, P_e, P_m) if return_attention else None
        if len(mi) == 0 or len(ei) == 0:  # no pair has two images (e.g. a text-only dataset)
            return m.v_k.new_zeros(B, N) + c, att
        sub, sub_att = iimm(
            m.v_cls[mi], m.v_k[mi], m.v_v[mi], e.v_cls[ei], e.v_q[ei], e.v_g2l_cls[ei], return_attention
        )
        S_V = m.v_k.new_zeros(B, N) + c
        S_V[mi[:, None], ei[None, :]] = sub.to(S_V.dtype)
        if att is not None:  # i.e. return_attention
            att[ei[:, None], mi[None, :]] = sub_att
        return S_V, att

    def score(self, m: M3ELMentionCache, e: M3ELEntityCache, return_attention: bool = False) -> MatchOutput:
        """m: B mentions, e: N entities -> MatchOutput with [B, N] scores.

        t2v:           S = (S_T + S_V + S_C)/3,             S_C = z_m·z_e.
        bidirectional: S = (S_T + S_V + s_tv + s_vt)/4,     S_C = (s_tv + s_vt)/2.
        extras: s_tv [B,N] (and s_vt [B,N] when bidirectional); with return_attention also
        image_g2l_attention [N,B,Pe,Pm]. tglu_attention [N,B,Le,Lm] is the text G2L attention and
        cmfu_{mention,entity}_attention [B,P]/[N,P] the T2V text→patch attention.
        """
        S_T, attn = self.matcher.timm(m, e, self.config.fixed, return_attention)
        S_V, iattn = self._image_scores(m, e, return_attention)
        S_V = S_V.to(S_T.dtype)
        # the caches' cross-modal context says which head built them: [ctx_tv ; ctx_vt] is 2·cmm_dim wide
        if m.z.shape[1] == 2 * self.config.cmm_dim:
            d = m.z.shape[1] // 2
            s_tv = m.z[:, :d] @ e.z[:, :d].T
            s_vt = m.z[:, d:] @ e.z[:, d:].T
            S_C = (s_tv + s_vt) / 2
            S = (S_T + S_V + s_tv + s_vt) / 4
            extras = {"s_tv": s_tv, "s_vt": s_vt}
        else:
            S_C = m.z @ e.z.T
            S = (S_T + S_V + S_C) / 3
            extras = {"s_tv": S_C}
        out = MatchOutput(S=S, S_T=S_T, S_V=S_V, S_C=S_C, extras=extras)
        if return_attention:
            out.tglu_attention = attn
            out.cmfu_mention_attention = m.cmfu_attn
            out.cmfu_entity_attention = e.cmfu_attn
            out.extras["image_g2l_attention"] = iattn
        return out

    def forward(self, mention: SideFeatures, entity: SideFeatures, return_attention: bool = False) -> MatchOutput:
        return self.score(self.mention_cache(mention), self.entity_cache(entity), return_attention)

    # -- hooks shared by every head family (MIMIC, M3EL) --------------------------------------
    def retrieval_vector(self, cache, role: str) -> torch.Tensor:
        """Vectors whose dot product is exactly the bi-encoder part of S (for candidate retrieval).

        With w = 1/3 (t2v) or 1/4 (bidirectional) per unit: S = w·G2G_T/2 + w·G2L_T/2 + w·S_V + w·z_m·z_e
        (bidirectional: z_m·z_e = s_tv + s_vt), S_V = G2G_V/2 + G2L_V/2.
          compat: mention [t, v, z], entity [w/2·t, w/2·v, w·z].
          fixed:  S_V = h_m h_e (G2G_V + G2L_V)/2 + (1 − h_m h_e)·c (h: has_image, c: no_image_score), so
                  mention [t, h·v, z, 1, h], entity [w/2·t, w/2·h·v, w·z, w·c, −w·c·h].
        The pairwise remainder is w/2·G2L_T + w/2·h_m h_e·G2L_V. role: "entity" | "mention" -> [n, D].
        Float32 (float64 kept) whatever the cache dtype.
        """
        if role not in ("entity", "mention"):
            raise ValueError(f"role must be 'entity' or 'mention', got {role!r}")
        dt = torch.promote_types(cache.t_cls.dtype, torch.float32)
        w = 0.25 if cache.z.shape[1] == 2 * self.config.cmm_dim else 1.0 / 3
        t, v, z = cache.t_cls.to(dt), cache.v_cls.to(dt), cache.z.to(dt)
        h = cache.has_image.to(dt)[:, None]
        fixed = self.config.fixed
        if fixed:
            v = v * h
        if role == "mention":
            parts = [t, v, z] + ([torch.ones_like(h), h] if fixed else [])
        else:
            parts = [t * (w / 2), v * (w / 2), z * w]
            if fixed:
                c = self.no_image_score.to(dt)
                parts += [(c * w).expand_as(h), -(c * w) * h]
        return torch.cat(parts, 1)

    def training_loss(
        self,
        m_text: TextFeatures,
        m_image: ImageFeatures,
        e_text: TextFeatures,
        e_image: ImageFeatures,
        gold: torch.Tensor,
    ):
        """In-batch loss for B mentions and their B gold entities -> (loss, {term: value}).

        t2v:           L = CE(S) + CE(S_T) + CE(S_V) + CE(S_C) + cl
        bidirectional: L = CE(S) + CE(S_T) + CE(S_V) + CE(s_tv) + CE(s_vt) + cl
        cl = (text_cl + image_cl)/2, `weighted_contrastive_loss` on the pre-LayerNorm globals (backbone
        text global; image cls after image_cls_fc). Fixed mode: duplicate golds leave the negatives,
        mentions without an image leave L_V, the image contrastive term uses image pairs only.
        """
        cfg, fixed = self.config, self.config.fixed
        ms, m_vraw = self._side(m_text, m_image)
        es, e_vraw = self._side(e_text, e_image)
        head = cfg.cross_modal  # the trained head, whatever head scores in evaluation
        out = self.score(self.mention_cache(ms, head), self.entity_cache(es, head))
        ce_out = MatchOutput(S=out.S, S_T=out.S_T, S_V=out.S_V, S_C=out.extras["s_tv"])
        total, parts = in_batch_loss(ce_out, gold, m_image.has_image, fixed)
        if cfg.bidirectional:
            parts["L_TV"] = parts.pop("L_C")
            l_vt = _ce(out.extras["s_vt"], gold, fixed)
            total = total + l_vt
            parts["L_VT"] = l_vt.detach()
        kw: dict[str, Any] = {
            "temperature": cfg.loss_temperature,
            "inter_weight": cfg.inter_weight,
            "intra_weight": cfg.intra_weight,
            "fixed": fixed,
            "gold": gold,
        }
        cl_text = weighted_contrastive_loss(e_text.global_, m_text.global_, **kw)
        img_kw: dict[str, Any] = (
            {"entity_valid": e_image.has_image, "mention_valid": m_image.has_image} if fixed else {}
        )
        cl_image = weighted_contrastive_loss(e_vraw, m_vraw, **kw, **img_kw)
        cl = (cl_text + cl_image) / 2
        total = total + cl
        parts.update({"L_CL": cl.detach(), "L_CL_text": cl_text.detach(), "L_CL_image": cl_image.detach()})
        return total, parts
