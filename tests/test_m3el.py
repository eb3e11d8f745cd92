"""M3EL heads: shapes (batch and chunk size 1), compat numerics against a per-pair reference written
from the spec equations (docs: /work/shared/spec/models.md §2), fixed-mode repairs, the retrieval
identity, the losses, and learning on the synthetic dataset through the shared training/eval code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimic.backbones.base import ImageFeatures, TextFeatures
from mimic.models.modeling_m3el import (
    FIXED_MODE_DEVIATIONS_M3EL,
    M3ELConfig,
    M3ELEntityCache,
    M3ELHeads,
    M3ELMentionCache,
    heads_state_dict_from_official,
    weighted_contrastive_loss,
)
from mimic.models.modeling_mimic import TGLU

DIMS = {
    "text_global_dim": 12,
    "text_token_dim": 10,
    "image_global_dim": 8,
    "image_token_dim": 6,
    "num_image_tokens": 5,
    "dv": 7,
    "timm_dim": 4,
    "iimm_dim": 4,
    "cmm_dim": 4,
    "text_max_length": 6,
}
CROSS = ("t2v", "bidirectional")


def features(n, seed, lengths=None, has_image=None, dims=DIMS):
    g = torch.Generator().manual_seed(seed)
    L, P = dims["text_max_length"], dims["num_image_tokens"]
    mask = torch.ones(n, L, dtype=torch.bool)
    if lengths is not None:
        for i, length in enumerate(lengths):
            mask[i, length:] = False
    text = TextFeatures(
        torch.randn(n, dims["text_global_dim"], generator=g, dtype=torch.double),
        torch.randn(n, L, dims["text_token_dim"], generator=g, dtype=torch.double),
        mask,
    )
    hi = torch.ones(n, dtype=torch.bool) if has_image is None else torch.tensor(has_image)
    image = ImageFeatures(
        torch.randn(n, dims["image_global_dim"], generator=g, dtype=torch.double),
        torch.randn(n, P, dims["image_token_dim"], generator=g, dtype=torch.double),
        hi,
    )
    return text, image


def heads(mode, cross_modal="t2v", seed=0, dims=DIMS):
    torch.manual_seed(seed)
    h = M3ELHeads(M3ELConfig(mode=mode, cross_modal=cross_modal, **dims)).double().eval()
    # Non-trivial LayerNorm affine parameters, so a wrong LN shows up.
    with torch.no_grad():
        for m in h.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        if mode == "fixed":
            h.no_image_score.fill_(-0.7)
    return h


# ------------------------------------------------------------------------------------------------
# A per-pair / per-item reference written from the spec equations with explicit loops (numpy, f64)
# ------------------------------------------------------------------------------------------------
from test_modeling import lin, ln, softmax, to_np  # noqa: E402  (the same numpy reference helpers)


def relu(x):
    return np.maximum(x, 0)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(h: M3ELHeads, m_text, m_img, e_text, e_img):
    """Loops over the published M3EL equations. compat: no masks. fixed: the documented deviations
    (masked text pads, residual token branches, image masking). Returns S, S_T, S_V, S_C, s_tv, s_vt."""
    cfg, mt = h.config, h.matcher
    fixed, bi = cfg.fixed, cfg.bidirectional

    def side(text, img):
        return {
            "c": ln(mt.text_cls_layernorm, to_np(text.global_)),
            "tok": ln(mt.text_tokens_layernorm, to_np(text.tokens)),
            "mask": text.mask.numpy(),
            "v": ln(mt.image_cls_layernorm, lin(h.image_cls_fc, to_np(img.global_))),
            "vt": ln(mt.image_tokens_layernorm, lin(h.image_tokens_fc, to_np(img.tokens))),
            "has": img.has_image.numpy(),
        }

    M, E = side(m_text, m_img), side(e_text, e_img)
    B, N = M["c"].shape[0], E["c"].shape[0]

    def g2l(U, q_tok, k_tok, cls, q_mask, k_mask):
        """Entity tokens query mention tokens; mean over (real) query tokens; LN; dot with W_cls cls."""
        d = U.fc_query.out_features
        Q, K, V = lin(U.fc_query, q_tok), lin(U.fc_key, k_tok), lin(U.fc_value, k_tok)
        rows = []
        for i in range(Q.shape[0]):
            if not q_mask[i]:
                continue
            a = Q[i] @ K.T / math.sqrt(d)
            a = np.where(k_mask, a, -np.inf)
            rows.append(softmax(a) @ V)
        return float(ln(U.layer_norm, np.mean(rows, 0)) @ lin(U.fc_cls, cls))

    # cross-modal building blocks (spec 2.2)
    def match(W, p, q, key_mask=None):
        out = []
        for i in range(p.shape[0]):
            a = p[i] @ lin(W, q).T
            if key_mask is not None:
                if not key_mask.any():
                    out.append(relu(lin(W, np.zeros(q.shape[1]))))
                    continue
                a = np.where(key_mask, a, -np.inf)
            out.append(relu(lin(W, softmax(a) @ q)))
        return np.stack(out)

    def multihead(X, mask=None):
        X = X if mask is None else X[mask]
        out = 0
        for T in cfg.temperatures:
            base = X.mean(0)
            if math.isinf(T):
                att = X.max(0)
            else:
                att = np.array([(X[:, c] * softmax(T * X[:, c])).sum() for c in range(X.shape[1])])
            out = out + base + cfg.weight * att
        return out / len(cfg.temperatures)

    def cross_side(S, i):
        U = mt.cross
        W = U.match_module.trans_linear
        has = bool(S["has"][i]) or not fixed
        t = lin(U.text_fc, S["c"][i])
        V = lin(U.image_fc, S["vt"][i]) * (1.0 if has else 0.0)
        img_keys = None if not fixed else np.full(V.shape[0], has)
        t_p = match(W, t[None], V, img_keys)[0]
        V_p = match(W, V, t[None]) + (V if fixed else 0)
        gate = lambda x: math.tanh(float(lin(U.gate_fc, x)[0]))
        if not bi:
            f = lin(U.fusion_module.linear, t_p) + lin(U.fusion_module.linear, multihead(V_p))
            g = sigmoid(f)
            fused = t_p * g + multihead(V_p) * (1 - g)
            return [ln(U.gate_layer_norm, t * gate(t) + fused)]
        ctx_tv = ln(U.gate_layer_norm, t * gate(t) + multihead(np.vstack([t_p[None], V_p])))
        tfc = U.text_token_fc if hasattr(U, "text_token_fc") else U.text_fc
        T = lin(tfc, S["tok"][i])
        v = lin(U.image_fc, S["v"][i]) * (1.0 if has else 0.0)
        txt_keys = S["mask"][i] if fixed else None
        v_p = match(W, v[None], T, txt_keys)[0]
        T_p = match(W, T, v[None]) + (T if fixed else 0)
        tok_mask = np.concatenate([[True], S["mask"][i]]) if fixed else None
        ctx_vt = ln(U.gate_layer_norm, v * gate(v) + multihead(np.vstack([v_p[None], T_p]), tok_mask))
        return [ctx_tv, ctx_vt]

    zm = [cross_side(M, b) for b in range(B)]
    ze = [cross_side(E, n) for n in range(N)]
    S_T, S_V, s_tv, s_vt = (np.zeros((B, N)) for _ in range(4))
    P = M["vt"].shape[1]
    for b in range(B):
        for n in range(N):
            q_mask = E["mask"][n] if fixed else np.ones_like(E["mask"][n])
            k_mask = M["mask"][b] if fixed else np.ones_like(M["mask"][b])
            S_T[b, n] = (
                float(M["c"][b] @ E["c"][n]) + g2l(mt.timm, E["tok"][n], M["tok"][b], E["c"][n], q_mask, k_mask)
            ) / 2
            if fixed and not (M["has"][b] and E["has"][n]):
                S_V[b, n] = float(h.no_image_score.detach())
            else:
                ones = np.ones(P, dtype=bool)
                S_V[b, n] = (
                    float(M["v"][b] @ E["v"][n]) + g2l(mt.iimm, E["vt"][n], M["vt"][b], E["v"][n], ones, ones)
                ) / 2
            s_tv[b, n] = float(zm[b][0] @ ze[n][0])
            if bi:
                s_vt[b, n] = float(zm[b][1] @ ze[n][1])
    if bi:
        return (S_T + S_V + s_tv + s_vt) / 4, S_T, S_V, (s_tv + s_vt) / 2, s_tv, s_vt
    return (S_T + S_V + s_tv) / 3, S_T, S_V, s_tv, s_tv, None


# ------------------------------------------------------------------------------------------------
# Shapes and numerics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["compat", "fixed"])
@pytest.mark.parametrize("cross", CROSS)
@pytest.mark.parametrize("B,N", [(3, 4), (1, 1), (1, 5), (4, 1)])
def test_shapes_and_reference_numerics(B, N, cross, mode):
    h = heads(mode, cross)
    m_has = [True, False, True, True][:B] if mode == "fixed" else None
    e_has = [True, True, False, True, True][:N] if mode == "fixed" else None
    mt, mi = features(B, 1, lengths=[3, 6, 2, 4][:B], has_image=m_has)  # padding present
    et, ei = features(N, 2, lengths=[4, 1, 6, 5, 2][:N], has_image=e_has)
    with torch.no_grad():
        ms, es = h.side_features(mt, mi), h.side_features(et, ei)
        mc, ec = h.mention_cache(ms), h.entity_cache(es)
        out = h.score(mc, ec, return_attention=True)
        fast = h.score(mc, ec)  # the in-place inference path (fixed: trimmed)
    assert isinstance(mc, M3ELMentionCache) and isinstance(ec, M3ELEntityCache)
    L, P = DIMS["text_max_length"], DIMS["num_image_tokens"]
    for s in (out.S, out.S_T, out.S_V, out.S_C, fast.S, out.extras["s_tv"]):
        assert s.shape == (B, N)
    assert ("s_vt" in out.extras) == (cross == "bidirectional")
    assert out.tglu_attention.shape == (N, B, L, L)
    assert out.extras["image_g2l_attention"].shape == (N, B, P, P)
    assert out.cmfu_mention_attention.shape == (B, P) and out.cmfu_entity_attention.shape == (N, P)
    assert ec.cmfu_attn.shape == (N, P) and mc.cmfu_attn.shape == (B, P)
    assert ec.t_mask.shape == (N, L) and ec.has_image.shape == (N,) and mc.t_cls.shape[0] == B
    dz = DIMS["cmm_dim"] * (2 if cross == "bidirectional" else 1)
    assert ec.z.shape == (N, dz) and mc.z.shape == (B, dz)

    ref = reference(h, mt, mi, et, ei)
    for got, want in zip((out.S, out.S_T, out.S_V, out.S_C, out.extras["s_tv"]), ref):
        np.testing.assert_allclose(to_np(got), want, rtol=1e-9, atol=1e-9)
    if cross == "bidirectional":
        np.testing.assert_allclose(to_np(out.extras["s_vt"]), ref[5], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(to_np(fast.S), ref[0], rtol=1e-9, atol=1e-9)
    # attention rows are distributions (fixed: over real mention tokens; pairs lacking an image: zeros)
    torch.testing.assert_close(out.tglu_attention.sum(-1), torch.ones(N, B, L, dtype=torch.double))
    both = (
        (mi.has_image[None, :] & ei.has_image[:, None]).double()
        if mode == "fixed"
        else torch.ones(N, B, dtype=torch.double)
    )
    torch.testing.assert_close(out.extras["image_g2l_attention"].sum(-1), both[..., None].expand(N, B, P))


def test_image_tiles_are_exact():
    """The inference path cuts the IIMM work into entity tiles; the result must not change."""
    h = heads("compat")
    mt, mi = features(3, 3)
    et, ei = features(7, 4)
    with torch.no_grad():
        mc, ec = h.mention_cache(h.side_features(mt, mi)), h.entity_cache(h.side_features(et, ei))
        full = h.score(mc, ec).S
        h.matcher.iimm.max_tile_elements = 2 * 3 * 5 * 5  # 2 entities per tile
        tiled = h.score(mc, ec).S
    torch.testing.assert_close(full, tiled, rtol=1e-12, atol=1e-12)


def test_timm_is_mimics_tglu_and_names_follow_the_official_code():
    h = heads("compat", "bidirectional", dims=dict(DIMS, text_token_dim=DIMS["text_global_dim"]))
    assert type(h.matcher.timm) is TGLU
    keys = set(h.state_dict())
    for k in (
        "image_cls_fc.weight",
        "image_tokens_fc.weight",
        "matcher.timm.fc_query.weight",
        "matcher.iimm.fc_cls.weight",
        "matcher.cmmb.text_fc.weight",
        "matcher.cmmb.image_fc.weight",
        "matcher.cmmb.match_module.trans_linear.weight",
        "matcher.cmmb.multi_head_module.weight",
        "matcher.cmmb.gate_layer_norm.weight",
        "matcher.text_cls_layernorm.weight",
        "matcher.image_tokens_layernorm.bias",
    ):
        assert k in keys, k
    # the official module applies text_fc to the text tokens too (same width): no extra Linear
    assert not any("text_token_fc" in k for k in keys)
    assert not h.matcher.cmmb.multi_head_module.weight.requires_grad
    t2v = set(heads("fixed").state_dict())
    assert "matcher.cmm.fusion_module.linear.weight" in t2v and "no_image_score" in t2v
    assert not any(k.startswith("matcher.cmmb.") for k in t2v)


@pytest.mark.parametrize("cross", CROSS)
def test_official_state_dict_loads_by_renaming(cross):
    """An official M3ELMatcher checkpoint holds cmm AND cmmb, dead loss modules and `encoder.*` keys."""
    same = dict(DIMS, text_token_dim=DIMS["text_global_dim"])  # CLIP: text_fc serves cls and tokens
    src = {"t2v": heads("compat", "t2v", seed=1, dims=same), "bi": heads("compat", "bidirectional", seed=2, dims=same)}
    official = {
        "encoder.clip.logit_scale": torch.zeros(()),
        "matcher.weight_cl_loss.logit_scale": torch.ones(()),
        "matcher.mclet_text_loss.cl_fc.0.weight": torch.zeros(2, 2),
        "matcher.text_fc.weight": torch.zeros(4, 12),
        "matcher.scale_text_cls_layernorm.weight": torch.ones(4),
        "matcher.cmm.mclet_text_loss.cl_fc.0.weight": torch.zeros(2, 2),
    }
    # one shared part (encoder fcs, LNs, timm, iimm) and both cross-modal modules
    shared = {k: v for k, v in src["t2v"].state_dict().items() if not k.startswith("matcher.cmm.")}
    src["bi"].load_state_dict(shared, strict=False)
    for h in src.values():
        for k, v in h.state_dict().items():
            official[("encoder." + k) if k.startswith("image_") else k] = v
    cfg = M3ELConfig(mode="compat", cross_modal=cross, **same)
    target = M3ELHeads(cfg).double()
    target.load_state_dict(heads_state_dict_from_official(official, cfg), strict=True)
    want = src["bi" if cross == "bidirectional" else "t2v"]
    mt, mi = features(2, 20, dims=same)
    et, ei = features(3, 21, dims=same)
    with torch.no_grad():
        torch.testing.assert_close(
            target(target.side_features(mt, mi), target.side_features(et, ei)).S,
            want(want.side_features(mt, mi), want.side_features(et, ei)).S,
        )


def test_config_round_trip_and_validation():
    cfg = M3ELConfig(mode="compat", cross_modal="bidirectional", **DIMS)
    d = cfg.to_dict()
    import json

    d2 = json.loads(json.dumps(d))  # strict JSON (the max head is written as "max")
    assert d2["model_type"] == "m3el" and d2["temperatures"][-1] == "max"
    assert M3ELConfig.from_dict(d2) == cfg and math.isinf(M3ELConfig.from_dict(d2).temperatures[-1])
    assert cfg.fixed is False and M3ELConfig().fixed and M3ELConfig.model_type == M3ELHeads.model_type == "m3el"
    assert M3ELConfig().temperatures == (2, 2.5, 3.5, 4.5, math.inf) and M3ELConfig().dv == 96
    with pytest.raises(ValueError):
        M3ELConfig.from_dict({"model_type": "mimic"})
    with pytest.raises(ValueError):
        M3ELConfig(cross_modal="v2t")
    with pytest.raises(ValueError):
        M3ELConfig(head_num=4)
    assert set(FIXED_MODE_DEVIATIONS_M3EL) >= {
        "token_branch_residual",
        "text_padding_mask",
        "image_masking",
        "no_squeeze",
        "dedup_negatives",
    }


# ------------------------------------------------------------------------------------------------
# Fixed mode
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cross", CROSS)
def test_fixed_padding_invariance(cross):
    h = heads("fixed", cross)
    mt, mi = features(2, 3, lengths=[2, 5])
    et, ei = features(3, 4, lengths=[3, 6, 1])

    def repad(t):
        noise = torch.randn_like(t.tokens) * 9
        return TextFeatures(t.global_, torch.where(t.mask[..., None], t.tokens, noise), t.mask)

    with torch.no_grad():
        a = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
        b = h(h.side_features(repad(mt), mi), h.side_features(repad(et), ei))
    for k in ("S", "S_T", "S_V", "S_C"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k))
    pad = ~mt.mask
    assert float(a.tglu_attention.transpose(2, 3)[:, pad].abs().max()) == 0.0
    hc = heads("compat", cross)  # the quirk is real: compat depends on what sits in the pads
    with torch.no_grad():
        sa = hc(hc.side_features(mt, mi), hc.side_features(et, ei)).S
        sb = hc(hc.side_features(repad(mt), mi), hc.side_features(repad(et), ei)).S
    assert not torch.allclose(sa, sb)


@pytest.mark.parametrize("cross", CROSS)
def test_fixed_masks_missing_images(cross):
    h = heads("fixed", cross)
    mt, mi = features(2, 7, has_image=[True, False])
    et, ei = features(3, 8, has_image=[True, False, True])
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
    sv = out.S_V
    assert float(sv[1].add(0.7).abs().max()) < 1e-12  # mention without image: constant row
    assert float(sv[:, 1].add(0.7).abs().max()) < 1e-12  # entity without image: constant column
    assert abs(float(sv[0, 0]) + 0.7) > 1e-6 and abs(float(sv[0, 2]) + 0.7) > 1e-6
    assert float(out.cmfu_mention_attention[1].abs().sum()) == 0.0
    assert float(out.cmfu_entity_attention[1].abs().sum()) == 0.0
    # The image features of an image-less item do not matter at all (IIMM nor cross-modal).
    mi2 = ImageFeatures(mi.global_.clone(), mi.tokens.clone(), mi.has_image)
    ei2 = ImageFeatures(ei.global_.clone(), ei.tokens.clone(), ei.has_image)
    mi2.global_[1] += 5
    mi2.tokens[1] += 5
    ei2.global_[1] -= 3
    ei2.tokens[1] *= -2
    with torch.no_grad():
        out2 = h(h.side_features(mt, mi2), h.side_features(et, ei2))
    for k in ("S", "S_V", "S_C"):
        torch.testing.assert_close(getattr(out, k), getattr(out2, k))
    for k in out.extras:
        if k.startswith("s_"):
            torch.testing.assert_close(out.extras[k], out2.extras[k])
    # ... while in compat they are scored like any picture
    hc = heads("compat", cross)
    with torch.no_grad():
        a = hc(hc.side_features(mt, mi), hc.side_features(et, ei)).S_C
        b = hc(hc.side_features(mt, mi2), hc.side_features(et, ei2)).S_C
    assert not torch.allclose(a, b)


def test_text_only_pairs_skip_the_image_unit():
    h = heads("fixed")
    mt, mi = features(2, 9, has_image=[False, False])
    et, ei = features(3, 10)
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
    assert float(out.S_V.add(0.7).abs().max()) < 1e-12
    assert float(out.extras["image_g2l_attention"].abs().max()) == 0.0


def _branches(h, text, image):
    s = h.side_features(text, image)
    U = h.matcher.cross
    if h.config.bidirectional:
        return U.branches(s, h.config.fixed)
    return U.branches(s.t_cls, s.v_tok, s.has_image, h.config.fixed)


@pytest.mark.parametrize("cross", CROSS)
def test_repaired_token_branch_carries_the_other_modality(cross):
    """compat: V' = Match(V, t) is a softmax over ONE key, so V' = ReLU(W t) row by row and ignores the
    image (and in V2T, T' = ReLU(W v) ignores the text tokens). fixed: V' = V + Match(V, t) does not."""
    mt, mi = features(2, 11)
    mi2 = ImageFeatures(
        mi.global_ + torch.randn_like(mi.global_), mi.tokens + torch.randn_like(mi.tokens), mi.has_image
    )
    mt2 = TextFeatures(mt.global_, mt.tokens + torch.randn_like(mt.tokens), mt.mask)
    for mode in ("compat", "fixed"):
        h = heads(mode, cross)
        U = h.matcher.cross
        with torch.no_grad():
            b0, b_img, b_txt = (_branches(h, t, i) for t, i in ((mt, mi), (mt, mi2), (mt2, mi)))
            W = U.match_module.trans_linear
            if mode == "compat":
                want = torch.relu(W(b0["t"]))[:, None, :].expand_as(b0["V_prime"])
                torch.testing.assert_close(b0["V_prime"], want)
                torch.testing.assert_close(b0["V_prime"], b_img["V_prime"])  # no image information
                torch.testing.assert_close(U.multi_head_module(b0["V_prime"]), 2 * torch.relu(W(b0["t"])))
            else:
                assert not torch.allclose(b0["V_prime"], b_img["V_prime"])  # image information
            if cross == "bidirectional":
                if mode == "compat":
                    torch.testing.assert_close(b0["T_prime"], b_txt["T_prime"])  # no text-token information
                else:
                    assert not torch.allclose(b0["T_prime"], b_txt["T_prime"])
            # the text→patch branch t' sees the image in both modes
            assert not torch.allclose(b0["t_prime"], b_img["t_prime"])


# ------------------------------------------------------------------------------------------------
# Retrieval vectors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["compat", "fixed"])
@pytest.mark.parametrize("cross", CROSS)
def test_retrieval_vector_is_the_bi_encoder_part_of_S(mode, cross):
    h = heads(mode, cross)
    mt, mi = features(3, 12, lengths=[2, 6, 4], has_image=[True, False, True])
    et, ei = features(5, 13, lengths=[6, 3, 1, 2, 5], has_image=[False, True, True, False, True])
    with torch.no_grad():
        mc, ec = h.mention_cache(h.side_features(mt, mi)), h.entity_cache(h.side_features(et, ei))
        out = h.score(mc, ec)
        rm, re_ = h.retrieval_vector(mc, "mention"), h.retrieval_vector(ec, "entity")
    assert rm.dtype == torch.double and rm.shape[1] == re_.shape[1]
    w = 0.25 if cross == "bidirectional" else 1 / 3
    g2l_t = 2 * out.S_T - mc.t_cls @ ec.t_cls.T
    both = (mc.has_image[:, None] & ec.has_image[None, :]).double() if mode == "fixed" else 1.0
    g2l_v = (2 * out.S_V - mc.v_cls @ ec.v_cls.T) * both
    pairwise = w / 2 * g2l_t + w / 2 * g2l_v
    torch.testing.assert_close(rm @ re_.T + pairwise, out.S, rtol=1e-10, atol=1e-10)
    # fp16 caches (the index) give float32 vectors
    assert (
        h.retrieval_vector(ec.apply(lambda t: t.half() if t.is_floating_point() else t), "entity").dtype
        == torch.float32
    )
    with pytest.raises(ValueError):
        h.retrieval_vector(ec, "kb")


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def test_contrastive_loss_hand_computed():
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.double)
    M = torch.tensor([[2.0, 0.0], [0.6, 0.8]], dtype=torch.double)  # row 0 gets L2-normalised
    kw = {"temperature": 0.5, "inter_weight": 1.0, "intra_weight": 0.8}
    e = math.exp
    # entity rows: inter E·M^T/τ = [[2, 1.2], [0, 1.6]]; intra E·E^T/τ with the diagonal times 0 = 0
    le = [-math.log(e(2) / (e(2) + e(1.2) + 1 + 1)), -math.log(e(1.6) / (1 + e(1.6) + 1 + 1))]
    # mention rows: inter M·E^T/τ = [[2, 0], [1.2, 1.6]]; intra off-diagonal 0.8 · 0.6/0.5 = 0.96
    lm = [-math.log(e(2) / (e(2) + 1 + 1 + e(0.96))), -math.log(e(1.6) / (e(1.2) + e(1.6) + e(0.96) + 1))]
    want = (sum(le) / 2 + sum(lm) / 2) / 2
    got = weighted_contrastive_loss(E, M, **kw)
    assert abs(float(got) - want) < 1e-12
    # fixed: the intra diagonal leaves the denominator instead of adding e^0
    le_f = [-math.log(e(2) / (e(2) + e(1.2) + 1)), -math.log(e(1.6) / (1 + e(1.6) + 1))]
    lm_f = [-math.log(e(2) / (e(2) + 1 + e(0.96))), -math.log(e(1.6) / (e(1.2) + e(1.6) + e(0.96)))]
    got_f = weighted_contrastive_loss(E, M, fixed=True, **kw)
    assert abs(float(got_f) - (sum(le_f) / 2 + sum(lm_f) / 2) / 2) < 1e-12


def _loop_contrastive(E, M, tau, wi, wa, fixed, gold=None, ev=None, mv=None):
    """Straightforward per-row loops of the spec's description (2.1) with the fixed-mode masks."""
    E = (E / E.norm(dim=1, keepdim=True)).numpy()
    M = (M / M.norm(dim=1, keepdim=True)).numpy()
    B = len(E)
    ev = np.ones(B, bool) if ev is None else np.asarray(ev)
    mv = np.ones(B, bool) if mv is None else np.asarray(mv)
    losses = {0: [], 1: []}
    for side, (X, Y, xv, yv) in enumerate(((E, M, ev, mv), (M, E, mv, ev))):
        for i in range(B):
            if fixed and not (ev[i] and mv[i]):
                continue
            terms, pos = [], wi * X[i] @ Y[i] / tau
            for j in range(B):
                same = gold is not None and gold[i] == gold[j]
                if j == i:
                    terms.append(pos)
                elif not fixed or (not same and yv[j]):
                    terms.append(wi * X[i] @ Y[j] / tau)
            for j in range(B):
                if not fixed:
                    terms.append(wa * (0.0 if j == i else X[i] @ X[j] / tau))
                elif j != i and not (gold is not None and gold[i] == gold[j]) and xv[j]:
                    terms.append(wa * X[i] @ X[j] / tau)
            terms = np.array(terms)
            losses[side].append(-(pos - terms.max() - np.log(np.exp(terms - terms.max()).sum())))
    return (np.mean(losses[0]) + np.mean(losses[1])) / 2


def test_contrastive_loss_default_weights_and_fixed_masks_against_loops():
    g = torch.Generator().manual_seed(0)
    E, M = torch.randn(5, 6, generator=g, dtype=torch.double), torch.randn(5, 6, generator=g, dtype=torch.double)
    E[3] = E[1]  # mentions 1 and 3 share their gold entity
    gold = torch.tensor([4, 9, 2, 9, 0])
    ev, mv = torch.tensor([True, True, False, True, True]), torch.tensor([True, True, True, True, False])
    for fixed in (False, True):
        got = weighted_contrastive_loss(E, M, fixed=fixed, gold=gold)
        want = _loop_contrastive(E, M, 0.03, 1.0, 0.8, fixed, gold.tolist() if fixed else None)
        assert abs(float(got) - want) < 1e-9 * max(1, abs(want))
    got = weighted_contrastive_loss(E, M, fixed=True, gold=gold, entity_valid=ev, mention_valid=mv)
    want = _loop_contrastive(E, M, 0.03, 1.0, 0.8, True, gold.tolist(), ev.numpy(), mv.numpy())
    assert abs(float(got) - want) < 1e-9 * max(1, abs(want))
    # compat ignores gold (duplicates stay false negatives)
    assert float(weighted_contrastive_loss(E, M, gold=gold)) == float(weighted_contrastive_loss(E, M))


@pytest.mark.parametrize("cross", CROSS)
def test_training_loss_terms_and_duplicate_gold_masking(cross):
    h = heads("fixed", cross)
    mt, mi = features(4, 14, lengths=[3, 6, 2, 4], has_image=[True, True, False, True])
    et, ei = features(4, 15, has_image=[True, True, True, False])
    gold = torch.tensor([7, 7, 3, 5])
    et = TextFeatures(et.global_.clone(), et.tokens.clone(), et.mask.clone())
    et.global_[1], et.tokens[1], et.mask[1] = et.global_[0], et.tokens[0], et.mask[0]  # same entity twice
    ei.global_[1], ei.tokens[1] = ei.global_[0], ei.tokens[0]
    loss, parts = h.training_loss(mt, mi, et, ei, gold)
    names = {"L_O", "L_T", "L_V", "L_CL", "L_CL_text", "L_CL_image"} | (
        {"L_TV", "L_VT"} if cross == "bidirectional" else {"L_C"}
    )
    assert set(parts) == names
    ce_terms = [v for k, v in parts.items() if not k.startswith("L_CL")]
    assert abs(float(loss.detach()) - sum(ce_terms) - parts["L_CL"]) < 1e-9
    assert abs(parts["L_CL"] - (parts["L_CL_text"] + parts["L_CL_image"]) / 2) < 1e-12

    # by hand: column 1 is no negative for row 0 (and vice versa); row 2 (no image) leaves L_V
    ce = torch.nn.functional.cross_entropy
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei))
    lab = torch.arange(4)

    def masked(s):
        s = s.clone()
        s[0, 1] = s[1, 0] = float("-inf")
        return s

    assert abs(parts["L_O"] - float(ce(masked(out.S), lab))) < 1e-9
    rows = torch.tensor([0, 1, 3])
    assert abs(parts["L_V"] - float(ce(masked(out.S_V)[rows], lab[rows]))) < 1e-9
    if cross == "bidirectional":
        assert abs(parts["L_VT"] - float(ce(masked(out.extras["s_vt"]), lab))) < 1e-9
        assert abs(parts["L_TV"] - float(ce(masked(out.extras["s_tv"]), lab))) < 1e-9
    v_raw = lambda i: h.image_cls_fc(i.global_)
    want_img = weighted_contrastive_loss(
        v_raw(ei), v_raw(mi), fixed=True, gold=gold, entity_valid=ei.has_image, mention_valid=mi.has_image
    )
    assert abs(parts["L_CL_image"] - float(want_img.detach())) < 1e-9
    assert (
        abs(parts["L_CL_text"] - float(weighted_contrastive_loss(et.global_, mt.global_, fixed=True, gold=gold))) < 1e-9
    )
    # compat: no de-duplication, the placeholder images take part
    hc = heads("compat", cross)
    _, pc = hc.training_loss(mt, mi, et, ei, gold)
    with torch.no_grad():
        oc = hc(hc.side_features(mt, mi), hc.side_features(et, ei))
    assert abs(pc["L_O"] - float(ce(oc.S, lab))) < 1e-9
    assert abs(pc["L_CL_text"] - float(weighted_contrastive_loss(et.global_, mt.global_))) < 1e-9


@pytest.mark.parametrize("mode", ["compat", "fixed"])
@pytest.mark.parametrize("cross", CROSS)
def test_loss_is_finite_for_a_text_only_batch(mode, cross):
    h = heads(mode, cross).float().train()
    mt, mi = features(3, 16, lengths=[2, 3, 6], has_image=[False, False, False])
    et, ei = features(3, 17, lengths=[1, 6, 4], has_image=[False, False, False])
    cast = lambda t, i: (
        TextFeatures(t.global_.float(), t.tokens.float(), t.mask),
        ImageFeatures(i.global_.float() * 0, i.tokens.float() * 0, i.has_image),
    )
    mt, mi = cast(mt, mi)
    et, ei = cast(et, ei)
    loss, parts = h.training_loss(mt, mi, et, ei, torch.tensor([1, 1, 2]))
    assert torch.isfinite(loss)
    if mode == "fixed":
        assert parts["L_V"] == 0.0 and parts["L_CL_image"] == 0.0
    loss.backward()
    for name, p in h.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------------------------------------
# Learning on the synthetic dataset, evaluated by the shared full-KB evaluation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,cross", [("fixed", "bidirectional"), ("compat", "t2v")])
def test_training_on_synthetic_rises_far_above_chance(tiny_clip, synthetic_dataset, mode, cross):
    from mimic.analysis.ranking import evaluate
    from mimic.models.linking_model import LinkingModel, entity_text, load_images, mention_text

    torch.manual_seed(0)
    heads_ = M3ELHeads(M3ELConfig.for_backbone(tiny_clip.dims, mode=mode, cross_modal=cross))
    model = LinkingModel(tiny_clip, heads_)  # the backbone stays frozen: features computed once
    ds, kb = synthetic_dataset, synthetic_dataset.kb
    train_m = ds.split("train")
    with torch.no_grad():
        m_text, m_img = model.backbone_features(
            [mention_text(m) for m in train_m], load_images([m.image for m in train_m], mode)
        )
        e_text, e_img = model.backbone_features(
            [entity_text(e) for e in kb.entities],
            load_images([e.images[0] if e.images else None for e in kb.entities], mode),
        )

    def take(text, image, idx):
        return (
            TextFeatures(text.global_[idx], text.tokens[idx], text.mask[idx]),
            ImageFeatures(image.global_[idx], image.tokens[idx], image.has_image[idx]),
        )

    gold = torch.tensor([kb.position(m.answer) for m in train_m])
    opt = torch.optim.AdamW([p for p in heads_.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    heads_.train()
    for _ in range(3):
        perm = torch.randperm(len(train_m), generator=g)
        tot = 0.0
        for s in range(0, len(perm), 16):
            b = perm[s : s + 16]
            if len(b) < 2:
                continue
            loss, _ = heads_.training_loss(*take(m_text, m_img, b), *take(e_text, e_img, gold[b]), gold[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        losses.append(tot)
    assert losses[-1] < losses[0]
    heads_.eval()
    with torch.no_grad():
        ecache = heads_.entity_cache(heads_.side_features(e_text, e_img))
    chance = 1 / len(kb)
    for split in ("dev", "test"):
        res = evaluate(model, kb, ds.split(split), entity_cache=ecache)
        assert res["H@1"] >= 0.6 > 5 * chance, (split, res["H@1"])
    # the "official" strategy rebuilds entity caches from raw side features inside evaluate()
    official = evaluate(model, kb, ds.split("test"), strategy="official")
    assert official["ranks"] == res["ranks"]


@pytest.mark.slow
def test_m3el_trains_saves_and_serves_through_the_linker(synthetic_dataset, tiny_clip_dir, tmp_path):
    """The whole product path for the second family: train() -> checkpoint -> KB index -> Linker
    (bidirectional head; the t2v head's training is covered above)."""
    cross_modal = "bidirectional"
    from mimic.models.checkpoint import load_checkpoint, read_config
    from mimic.serving.index import KBIndex
    from mimic.serving.linker import Linker
    from mimic.training.trainer import TrainConfig, train

    s = train(
        TrainConfig(
            output=str(tmp_path / "run"),
            model="m3el",
            cross_modal=cross_modal,
            backbone=str(tiny_clip_dir),
            freeze_backbone=True,
            lr=3e-3,
            epochs=4,
            batch_size=16,
            progress=False,
            seed=0,
            adam_eps=1e-8,
            no_decay="standard",
        ),
        synthetic_dataset,
    )
    assert s["test"]["H@1"] >= 0.6
    conf = read_config(tmp_path / "run" / "best")
    assert conf["model_type"] == "m3el" and conf["model_config"]["cross_modal"] == cross_modal
    model = load_checkpoint(tmp_path / "run" / "best")
    assert type(model.heads).__name__ == "M3ELHeads"
    index = KBIndex.build(model, synthetic_dataset.kb, tmp_path / "index", progress=False)
    assert KBIndex(tmp_path / "index").manifest["model_type"] == "m3el"
    linker = Linker(model, index)
    for m in synthetic_dataset.split("test")[:6]:
        r = linker.link(m.sentence, m.mention, m.image, top_k=len(index))
        S = linker.exhaustive_scores(m.sentence, m.mention, m.image)
        assert r.top.entity_id == index.ids[int(torch.argsort(-S, stable=True)[0])]
        e = r.top.explanation
        assert len(e.tglu_attention) == len(e.entity_tokens) and len(e.tglu_attention[0]) == len(e.mention_tokens)
        if r.has_image:
            assert e.cmfu_mention_grid is not None
