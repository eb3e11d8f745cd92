"""The M3EL units (Hu et al., KDD 2025): image intra-modal matching and the cross-modal matching
blocks (Match, CSRA multi-head pooling, gated fusion), T2V and bidirectional.

Shapes: B items (one side: mentions or entities), L text tokens, P image tokens, d unit width.
Module and parameter names follow the official `M3ELMatcher`, so official checkpoints load by
renaming keys; `mimic.models.modeling_m3el` assembles these into the heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mimic.models.modeling_mimic import GlobalLocalUnit, SideFeatures


def is_max_head(T) -> bool:
    return T is None or (isinstance(T, str) and T in ("max", "inf")) or math.isinf(float(T)) or float(T) == 99


@dataclass
class _PatchQueries:
    """The entity side of the global–local computation, on image patches."""

    t_cls: torch.Tensor
    q: torch.Tensor
    g2l_cls: torch.Tensor
    t_mask: torch.Tensor


@dataclass
class _PatchKeys:
    """The mention side of the global–local computation, on image patches."""

    t_cls: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    t_mask: torch.Tensor


class ImageIntraModalMatch(GlobalLocalUnit):
    """IIMM: the TGLU pattern applied to vision (same parameter names as the official module).

    G2G = m_img_cls · e_img_cls (LN'd, dv-d). G2L: entity patches are queries (W_q), mention patches
    keys/values (W_k, W_v); softmax(QK^T/sqrt(d)) over mention patches [N,B,P,P]; mean over entity
    patches → LN → dot with W_cls(e_img_cls). S_V = (G2G + G2L)/2. Patches have no padding, so the
    computation is TGLU's unmasked one in both modes (attention rows pooled before the product with V).
    """

    #: inference: entity tiles are cut so one tile's [n,P,B,P] logits stay below this many elements.
    max_tile_elements: int = 1 << 26

    def __init__(self, dv: int, d: int):
        super().__init__(dv, dv, d)

    def forward(self, m_cls, m_k, m_v, e_cls, e_q, e_g2l, return_attention: bool = False):
        """m_cls [B,dv], m_k/m_v [B,P,d], e_cls [N,dv], e_q [N,P,d], e_g2l [N,d]
        -> (S_V [B,N], attention [N,B,Pe,Pm] or None)."""
        B, P = m_k.shape[:2]
        N = e_q.shape[0]
        if N == 0 or B == 0:
            return m_k.new_zeros(B, N), (m_k.new_zeros(N, B, e_q.shape[1], P) if return_attention else None)
        hot = not (return_attention or torch.is_grad_enabled())
        step = max(1, self.max_tile_elements // max(1, P * B * P)) if hot else N
        outs, attns = [], []
        # `GlobalLocalUnit.pairwise` reads t_cls/q/t_mask/g2l_cls (entities) and t_cls/k/v/t_mask (mentions).
        for s in range(0, N, step):
            sl = slice(s, s + step)
            ev = _PatchQueries(
                t_cls=e_cls[sl],
                q=e_q[sl],
                g2l_cls=e_g2l[sl],
                t_mask=torch.ones(e_q[sl].shape[:2], dtype=torch.bool, device=e_q.device),
            )
            mv = _PatchKeys(t_cls=m_cls, k=m_k, v=m_v, t_mask=torch.ones(B, P, dtype=torch.bool, device=m_k.device))
            sv, att = self.pairwise(mv, ev, False, return_attention)
            outs.append(sv)
            attns.append(att)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
        return out, (attns[0] if return_attention else None)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Softmax over `dim` restricted to `mask` (broadcastable bool); an all-masked slice gives zeros
    (and finite gradients) instead of NaN."""
    if mask is None:
        return logits.softmax(dim)
    mask = mask.expand_as(logits)
    some = mask.any(dim, keepdim=True)
    p = logits.masked_fill(~(mask | ~some), float("-inf")).softmax(dim)
    return p * some.to(p.dtype)


class MatchModule(nn.Module):
    """Official `MatchModule`: p [n,a,d] attends over q [n,b,d] with logits p·(W q)^T (no scaling),
    out = ReLU(W(att·q)) with the SAME Linear W twice. Applied per item (bmm), never across pairs.

    key_mask [n,b] (fixed mode): keys to attend to; an item with no valid key gets a zero context.
    """

    def __init__(self, d: int):
        super().__init__()
        self.trans_linear = nn.Linear(d, d)

    def forward(self, p, q, key_mask=None):
        """-> (out [n,a,d], attention [n,a,b])."""
        logits = torch.bmm(p, self.trans_linear(q).transpose(1, 2))
        att = _masked_softmax(logits, None if key_mask is None else key_mask[:, None, :], -1)
        return F.relu(self.trans_linear(torch.bmm(att, q))), att


class MultiHeadModule(nn.Module):
    """Official CSRA-style `MultiHeadModule`: x [n,k,d] -> [n,d].

    head(T) = mean_k x + λ·Σ_k x·softmax_k(T·x) (per channel), the T=∞ head uses max_k x;
    out = Σ_h w_h head_h / H with w frozen at 1 (`weight` [H,1], requires_grad False, as official).
    mask [n,k] (fixed mode): tokens to pool; mean, softmax and max run over real tokens only.
    """

    def __init__(self, temperatures, lam: float):
        super().__init__()
        self.temperatures = tuple(temperatures)
        self.lam = lam
        self.weight = nn.Parameter(torch.ones(len(self.temperatures), 1), requires_grad=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            base = x.mean(1)
        else:
            w = mask.to(x.dtype)
            base = (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        m3 = None if mask is None else mask[..., None]
        out = 0.0
        for T, wt in zip(self.temperatures, self.weight):
            if is_max_head(T):
                att = (x if m3 is None else x.masked_fill(~m3, float("-inf"))).amax(1)
            else:
                att = (x * _masked_softmax(x * T, m3, 1)).sum(1)
            out = out + (base + self.lam * att) * wt
        return cast(torch.Tensor, out / len(self.temperatures))  # a tensor: there is at least one head


class FusionModule(nn.Module):
    """Official `FusionModule`: gate = σ(W p + W q) (one shared Linear), out = gate·p + (1−gate)·q."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, d)

    def forward(self, p, q):
        gate = torch.sigmoid(self.linear(q) + self.linear(p))
        return p * gate + q * (1 - gate)


class CrossModalMatch(nn.Module):
    """T2V cross-modal matching (official `CrossModalMatch`), computed per side (a bi-encoder).

    t = W_text t_cls [n,d], V = W_img V_tok [n,P,d];
    t' = Match(t, V) (text attends over patches); V' = Match(V, t) (compat: degenerate, = ReLU(W t)
    per row; fixed: V + Match(V, t)); v'' = MultiHead(V'); f = Fusion(t', v'');
    ctx = LN(t·tanh(w_g t) + f). S_C = ctx_m · ctx_e^T.
    """

    def __init__(self, text_global_dim: int, dv: int, d: int, temperatures, lam: float):
        super().__init__()
        self.text_fc = nn.Linear(text_global_dim, d)
        self.image_fc = nn.Linear(dv, d)
        self.gate_fc = nn.Linear(d, 1)
        self.gate_layer_norm = nn.LayerNorm(d)
        self.match_module = MatchModule(d)
        self.multi_head_module = MultiHeadModule(temperatures, lam)
        self.fusion_module = FusionModule(d)

    def branches(self, t_cls, v_tok, has_image, fixed: bool) -> dict:
        """-> {t [n,d], t_prime [n,d], attn [n,P], V_prime [n,P,d]} (exposed for tests/explanations)."""
        t = self.text_fc(t_cls)
        V = self.image_fc(v_tok)
        key_mask = None
        if fixed:  # no image: zero image context, nothing to attend to
            V = V * has_image[:, None, None].to(V.dtype)
            key_mask = has_image[:, None].expand(-1, V.shape[1])
        t_p, attn = self.match_module(t[:, None, :], V, key_mask)  # [n,1,d], [n,1,P]
        V_p, _ = self.match_module(V, t[:, None, :])  # softmax over one key
        if fixed:
            V_p = V + V_p
        return {"t": t, "t_prime": t_p[:, 0], "attn": attn[:, 0], "V_prime": V_p}

    def side(self, s: SideFeatures, fixed: bool):
        """-> (ctx [n,d], text→patch attention [n,P])."""
        b = self.branches(s.t_cls, s.v_tok, s.has_image, fixed)
        t = b["t"]
        f = self.fusion_module(b["t_prime"], self.multi_head_module(b["V_prime"]))
        return self.gate_layer_norm(t * torch.tanh(self.gate_fc(t)) + f), b["attn"]


class CrossModalMatchBidirection(nn.Module):
    """Bidirectional cross-modal matching (official `CrossModalMatchBidirection`), per side.

    T2V: t = W_text t_cls, V = W_img V_tok; t' = Match(t, V); V' = Match(V, t) (fixed: + V);
         ctx_tv = LN(t·tanh(w_g t) + MultiHead([t'; V'])) over 1+P tokens.
    V2T: v = W_img v_cls, T = W_text T_tok; v' = Match(v, T) (fixed: pads masked); T' = Match(T, v)
         (compat: degenerate, = ReLU(W v) per row; fixed: + T);
         ctx_vt = LN(v·tanh(w_g v) + MultiHead([v'; T'])) over 1+L tokens (fixed: pads masked).
    Linears, gate, MatchModule and MultiHead are shared by both directions. The official code applies
    `text_fc` to both the text global and the text tokens (both 512-d for CLIP); for a backbone whose
    widths differ a separate `text_token_fc` is created.
    """

    def __init__(self, text_global_dim: int, text_token_dim: int, dv: int, d: int, temperatures, lam: float):
        super().__init__()
        self.text_fc = nn.Linear(text_global_dim, d)
        if text_token_dim != text_global_dim:
            self.text_token_fc = nn.Linear(text_token_dim, d)
        self.image_fc = nn.Linear(dv, d)
        self.gate_fc = nn.Linear(d, 1)
        self.gate_layer_norm = nn.LayerNorm(d)
        self.match_module = MatchModule(d)
        self.multi_head_module = MultiHeadModule(temperatures, lam)

    def _text_tokens_fc(self, t_tok):
        fc = self.text_token_fc if hasattr(self, "text_token_fc") else self.text_fc
        return fc(t_tok)

    def branches(self, s: SideFeatures, fixed: bool) -> dict:
        """-> t, t_prime, attn [n,P], V_prime [n,P,d], v, v_prime, vt_attn [n,L], T_prime [n,L,d]."""
        t, T = self.text_fc(s.t_cls), self._text_tokens_fc(s.t_tok)
        v, V = self.image_fc(s.v_cls), self.image_fc(s.v_tok)
        img_mask = txt_mask = None
        if fixed:
            hi = s.has_image.to(V.dtype)
            v, V = v * hi[:, None], V * hi[:, None, None]
            img_mask = s.has_image[:, None].expand(-1, V.shape[1])
            txt_mask = s.t_mask
        t_p, attn = self.match_module(t[:, None, :], V, img_mask)
        V_p, _ = self.match_module(V, t[:, None, :])
        v_p, vt_attn = self.match_module(v[:, None, :], T, txt_mask)
        T_p, _ = self.match_module(T, v[:, None, :])
        if fixed:
            V_p, T_p = V + V_p, T + T_p
        return {
            "t": t,
            "t_prime": t_p[:, 0],
            "attn": attn[:, 0],
            "V_prime": V_p,
            "v": v,
            "v_prime": v_p[:, 0],
            "vt_attn": vt_attn[:, 0],
            "T_prime": T_p,
            "txt_mask": txt_mask,
        }

    def side(self, s: SideFeatures, fixed: bool):
        """-> ([ctx_tv ; ctx_vt] [n,2d], text→patch attention [n,P])."""
        b = self.branches(s, fixed)
        t, v, mh, gate = b["t"], b["v"], self.multi_head_module, self.gate_fc
        ctx_tv = mh(torch.cat([b["t_prime"][:, None, :], b["V_prime"]], 1))
        tok_mask = None
        if b["txt_mask"] is not None:
            tok_mask = torch.cat([torch.ones_like(b["txt_mask"][:, :1]), b["txt_mask"]], 1)
        ctx_vt = mh(torch.cat([b["v_prime"][:, None, :], b["T_prime"]], 1), tok_mask)
        ctx_tv = self.gate_layer_norm(t * torch.tanh(gate(t)) + ctx_tv)
        ctx_vt = self.gate_layer_norm(v * torch.tanh(gate(v)) + ctx_vt)
        return torch.cat([ctx_tv, ctx_vt], 1), b["attn"]
