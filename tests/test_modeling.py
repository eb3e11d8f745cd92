"""MIMIC units: shapes (batch and chunk size 1), compat numerics against a per-pair reference written
straight from the paper's equations / the official code's order of operations, and fixed-mode fixes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimic.backbones.base import ImageFeatures, TextFeatures
from mimic.models.modeling_mimic import MimicConfig, MimicHeads, in_batch_loss

DIMS = dict(
    text_global_dim=12,
    text_token_dim=10,
    image_global_dim=8,
    image_token_dim=6,
    num_image_tokens=5,
    dv=7,
    tglu_dim=4,
    vdlu_dim=4,
    cmfu_dim=4,
    text_max_length=6,
)


def features(n, seed, lengths=None, has_image=None):
    g = torch.Generator().manual_seed(seed)
    L, P = DIMS["text_max_length"], DIMS["num_image_tokens"]
    mask = torch.ones(n, L, dtype=torch.bool)
    if lengths is not None:
        for i, length in enumerate(lengths):
            mask[i, length:] = False
    text = TextFeatures(
        torch.randn(n, DIMS["text_global_dim"], generator=g),
        torch.randn(n, L, DIMS["text_token_dim"], generator=g),
        mask,
    )
    hi = torch.ones(n, dtype=torch.bool) if has_image is None else torch.tensor(has_image)
    image = ImageFeatures(
        torch.randn(n, DIMS["image_global_dim"], generator=g),
        torch.randn(n, P, DIMS["image_token_dim"], generator=g),
        hi,
    )
    return text, image


def heads(mode, seed=0):
    torch.manual_seed(seed)
    h = MimicHeads(MimicConfig(mode=mode, **DIMS)).double().eval()
    # Non-trivial LayerNorm affine parameters, so a wrong LN shows up.
    with torch.no_grad():
        for m in h.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return h


def to_np(t):
    return t.detach().double().numpy()


def lin(layer, x):
    return x @ to_np(layer.weight).T + to_np(layer.bias)


def ln(layer, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * to_np(layer.weight) + to_np(layer.bias)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def reference_official(h: MimicHeads, m_text, m_img, e_text, e_img):
    """Per-pair loops over the official MIMICMatcher equations (compat: no masks). Returns S, S_T, S_V, S_C."""
    mt = h.matcher

    # encoder projections + four input LayerNorms
    def side(text, img):
        return (
            ln(mt.text_cls_layernorm, to_np(text.global_)),
            ln(mt.text_tokens_layernorm, to_np(text.tokens)),
            ln(mt.image_cls_layernorm, lin(h.image_cls_fc, to_np(img.global_))),
            ln(mt.image_tokens_layernorm, lin(h.image_tokens_fc, to_np(img.tokens))),
        )

    mc, mtok, mv, mvt = side(m_text, m_img)
    ec, etok, ev, evt = side(e_text, e_img)
    B, N = mc.shape[0], ec.shape[0]
    tg, vd, cm = mt.tglu, mt.vdlu, mt.cmfu
    d = tg.fc_query.out_features
    S_T, S_V, S_C = np.zeros((B, N)), np.zeros((B, N)), np.zeros((B, N))

    def dual(D, q, k, T):
        q1, k1 = lin(D.cls_fc, q), lin(D.cls_fc, k)
        v = lin(D.tokens_fc, T).mean(0)
        c = lin(D.fc, ln(D.add_layer_norm, v + q1))
        gate = math.tanh(float(lin(D.gate_fc, c)[0]))
        hh = ln(D.layer_norm, c * gate + k1)
        return float((hh * ln(D.layer_norm, q1)).sum())

    def cmfu_side(t_cls, toks):
        t = lin(cm.text_fc, t_cls)
        V = lin(cm.image_fc, toks)
        a = softmax(V @ t)  # no 1/sqrt(d)
        return ln(cm.gate_layer_norm, t * math.tanh(float(lin(cm.gate_fc, t)[0])) + a @ V)

    for b in range(B):
        zm = cmfu_side(mc[b], mvt[b])
        for n in range(N):
            g2g = float(mc[b] @ ec[n])
            Q, K, V = lin(tg.fc_query, etok[n]), lin(tg.fc_key, mtok[b]), lin(tg.fc_value, mtok[b])
            ctx = np.stack([softmax(Q[i] @ K.T / math.sqrt(d)) @ V for i in range(Q.shape[0])]).mean(0)
            g2l = float(ln(tg.layer_norm, ctx) @ lin(tg.fc_cls, ec[n]))
            S_T[b, n] = (g2g + g2l) / 2
            S_V[b, n] = (dual(vd.dual_ent2men, ev[n], mv[b], mvt[b]) + dual(vd.dual_men2ent, mv[b], ev[n], evt[n])) / 2
            S_C[b, n] = float(zm @ cmfu_side(ec[n], evt[n]))
    return (S_T + S_V + S_C) / 3, S_T, S_V, S_C


def as_double(text, img):
    return (
        TextFeatures(text.global_.double(), text.tokens.double(), text.mask),
        ImageFeatures(img.global_.double(), img.tokens.double(), img.has_image),
    )


@pytest.mark.parametrize("B,N", [(3, 4), (1, 1), (1, 5), (4, 1)])
def test_compat_matches_reference(B, N):
    h = heads("compat")
    mt, mi = as_double(*features(B, 1, lengths=[3] * B))  # padding present: compat must ignore the mask
    et, ei = as_double(*features(N, 2, lengths=[4] * N))
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
    ref = reference_official(h, mt, mi, et, ei)
    with torch.no_grad():  # the in-place inference path
        fast = h(h.side_features(mt, mi), h.side_features(et, ei))
    np.testing.assert_allclose(to_np(fast.S), ref[0], rtol=1e-9, atol=1e-9)
    for got, want in zip((out.S, out.S_T, out.S_V, out.S_C), ref):
        assert got.shape == (B, N)
        np.testing.assert_allclose(to_np(got), want, rtol=1e-9, atol=1e-9)
    L, P = DIMS["text_max_length"], DIMS["num_image_tokens"]
    assert out.tglu_attention.shape == (N, B, L, L)
    assert out.cmfu_mention_attention.shape == (B, P) and out.cmfu_entity_attention.shape == (N, P)
    torch.testing.assert_close(out.tglu_attention.sum(-1), torch.ones(N, B, L, dtype=torch.double))


@pytest.mark.parametrize("B,N", [(2, 3), (1, 1)])
def test_fixed_mode_shapes_and_padding_invariance(B, N):
    h = heads("fixed")
    mt, mi = as_double(*features(B, 3, lengths=[2, 5][:B]))
    et, ei = as_double(*features(N, 4, lengths=[3, 6, 1][:N]))
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
        # Changing what sits at padded positions must not change any fixed-mode score.
        mt2 = TextFeatures(
            mt.global_, torch.where(mt.mask[..., None], mt.tokens, torch.randn_like(mt.tokens) * 9), mt.mask
        )
        et2 = TextFeatures(
            et.global_, torch.where(et.mask[..., None], et.tokens, torch.randn_like(et.tokens) * 9), et.mask
        )
        out2 = h(h.side_features(mt2, mi), h.side_features(et2, ei))
    assert out.S.shape == (B, N)
    torch.testing.assert_close(out.S, out2.S)
    # padded mention tokens receive no attention
    pad = ~mt.mask
    assert float(out.tglu_attention.transpose(2, 3)[:, pad].abs().max()) == 0.0  # [N,B,Lm,Le] indexed by [B,Lm]
    # and compat DOES depend on padding (the quirk is real)
    hc = heads("compat")
    with torch.no_grad():
        a = hc(hc.side_features(mt, mi), hc.side_features(et, ei)).S
        b = hc(hc.side_features(mt2, mi), hc.side_features(et2, ei)).S
    assert not torch.allclose(a, b)


def test_fixed_mode_trimming_is_exact():
    """Fixed mode trims all-pad tails for speed; the result must equal the untrimmed computation."""
    h = heads("fixed")
    mt, mi = as_double(*features(3, 5, lengths=[2, 3, 2]))
    et, ei = as_double(*features(4, 6, lengths=[1, 2, 3, 2]))
    with torch.no_grad():
        fast = h(h.side_features(mt, mi), h.side_features(et, ei)).S_T
        full = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True).S_T  # no trimming
    torch.testing.assert_close(fast, full)


def test_fixed_mode_masks_missing_images():
    h = heads("fixed")
    with torch.no_grad():
        h.no_image_score.fill_(-3.0)
    mt, mi = as_double(*features(2, 7, has_image=[True, False]))
    et, ei = as_double(*features(3, 8, has_image=[True, False, True]))
    with torch.no_grad():
        out = h(h.side_features(mt, mi), h.side_features(et, ei), return_attention=True)
    sv = out.S_V
    assert float(sv[1].sub(-3.0).abs().max()) == 0.0  # mention without image: constant row
    assert float(sv[:, 1].sub(-3.0).abs().max()) == 0.0  # entity without image: constant column
    assert abs(float(sv[0, 0]) + 3.0) > 1e-6 and abs(float(sv[0, 2]) + 3.0) > 1e-6
    assert float(out.cmfu_mention_attention[1].abs().sum()) == 0.0
    assert float(out.cmfu_entity_attention[1].abs().sum()) == 0.0
    # The image features of an image-less item do not matter at all.
    mi2 = ImageFeatures(mi.global_.clone(), mi.tokens.clone(), mi.has_image)
    mi2.global_[1] += 5
    mi2.tokens[1] += 5
    with torch.no_grad():
        out2 = h(h.side_features(mt, mi2), h.side_features(et, ei))
    torch.testing.assert_close(out.S, out2.S)


def test_loss_terms_and_duplicate_masking():
    torch.manual_seed(0)
    S = [torch.randn(4, 4) for _ in range(4)]

    class Out:
        pass

    out = Out()
    out.S, out.S_T, out.S_V, out.S_C = S
    gold = torch.tensor([7, 7, 3, 5])  # mentions 0 and 1 share their gold entity
    has = torch.tensor([True, True, False, True])
    compat, parts_c = in_batch_loss(out, gold, has, fixed=False)
    fixed, parts_f = in_batch_loss(out, gold, has, fixed=True)
    ce = torch.nn.functional.cross_entropy
    lab = torch.arange(4)
    want_c = sum(ce(s, lab) for s in S)
    torch.testing.assert_close(compat, want_c)

    # fixed: column 1 is no negative for row 0 and column 0 none for row 1; row 2 leaves L_V
    def masked(s):
        s = s.clone()
        s[0, 1] = s[1, 0] = float("-inf")
        return s

    rows = torch.tensor([0, 1, 3])
    want_f = ce(masked(S[0]), lab) + ce(masked(S[1]), lab) + ce(masked(S[2])[rows], lab[rows]) + ce(masked(S[3]), lab)
    torch.testing.assert_close(fixed, want_f)
    assert set(parts_f) == {"L_O", "L_T", "L_V", "L_C"}


def test_hand_computed_cmfu_attention_has_no_scaling():
    """Tiny example computed by hand: identity weights, so the logits are plain dot products."""
    cfg = MimicConfig(
        mode="compat",
        text_global_dim=2,
        text_token_dim=2,
        image_global_dim=2,
        image_token_dim=2,
        num_image_tokens=2,
        dv=2,
        tglu_dim=2,
        vdlu_dim=2,
        cmfu_dim=2,
        text_max_length=2,
    )
    h = MimicHeads(cfg).double()
    with torch.no_grad():
        for m in h.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.zeros_(m.bias)
                if m.weight.shape[0] == m.weight.shape[1]:
                    m.weight.copy_(torch.eye(2))
                else:
                    m.weight.zero_()
    # CMFU attention: t = [2, 0], patches [1, 0] and [0, 1]: logits 2 and 0 (no /sqrt(2)).
    with torch.no_grad():
        z, attn = h.matcher.cmfu.side(
            torch.tensor([[2.0, 0.0]], dtype=torch.double),
            torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.double),
            torch.tensor([True]),
            fixed=False,
        )
    e2 = math.exp(2)
    np.testing.assert_allclose(attn.numpy(), [[e2 / (e2 + 1), 1 / (e2 + 1)]], rtol=1e-12)
    assert z.shape == (1, 2)


def test_loss_is_finite_for_a_text_only_batch_with_duplicate_golds():
    """Regression: with no mention image L_V must be 0, not NaN (−inf masked logits times 0)."""

    class Out:
        pass

    out = Out()
    out.S, out.S_T, out.S_V, out.S_C = (torch.randn(3, 3, requires_grad=True) for _ in range(4))
    loss, parts = in_batch_loss(out, torch.tensor([1, 1, 2]), torch.tensor([False, False, False]), fixed=True)
    assert torch.isfinite(loss) and parts["L_V"] == 0.0
    loss.backward()
    assert torch.isfinite(out.S.grad).all()
