"""The cache-tiled inference kernels (mimic/models/exact_scoring.py) against the straightforward
computation of `modeling_mimic` (`tiled=False`) and a float64 run of it, on random inputs in compat
and fixed modes: scores allclose at fp32 tolerance, identical ranks wherever the reference's scores
are not tied within that tolerance; tiles forced small so every edge (partial tiles, trimming,
several mention tiles, worker threads) is exercised."""

from __future__ import annotations

import copy

import pytest
import torch

from mimic.analysis.ranking import ranks_from_scores
from mimic.backbones.base import ImageFeatures, TextFeatures
from mimic.models import exact_scoring as xs
from mimic.models.modeling_mimic import MimicConfig, MimicHeads

# Paper widths, fewer tokens (fast): d = 96 as in the paper, 512-d text features.
DIMS = dict(
    text_global_dim=64,
    text_token_dim=48,
    image_global_dim=32,
    image_token_dim=24,
    num_image_tokens=7,
    dv=96,
    tglu_dim=96,
    vdlu_dim=96,
    cmfu_dim=96,
    text_max_length=12,
)
SMALL_TILES = xs.TileConfig(logits_elements=2000, mention_tile=3)


def make_heads(mode: str, dtype=torch.float32) -> MimicHeads:
    torch.manual_seed(0)
    h = MimicHeads(MimicConfig(mode=mode, **DIMS)).eval().to(dtype)
    with torch.no_grad():  # non-trivial LayerNorm affines and a sharper attention than the init
        for m in h.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        h.matcher.tglu.fc_query.weight.mul_(4)
    return h


def caches(h: MimicHeads, B: int, N: int, seed: int, padded: bool):
    """Mention and entity caches of random features; with `padded`, random text lengths (1..L)
    and a few masks with holes inside the text (the kernel must not assume trailing padding)."""
    g = torch.Generator().manual_seed(seed)
    L = DIMS["text_max_length"]
    dt = next(h.parameters()).dtype

    def side(n):
        mask = torch.ones(n, L, dtype=torch.bool)
        if padded:
            mask = torch.arange(L)[None, :] < torch.randint(1, L + 1, (n,), generator=g)[:, None]
            holes = torch.rand(n, L, generator=g) < 0.15
            holes[:, 0] = False  # every item keeps at least its first token
            mask &= ~holes
        text = TextFeatures(
            torch.randn(n, DIMS["text_global_dim"], generator=g).to(dt),
            torch.randn(n, L, DIMS["text_token_dim"], generator=g).to(dt),
            mask,
        )
        image = ImageFeatures(
            torch.randn(n, DIMS["image_global_dim"], generator=g).to(dt),
            torch.randn(n, DIMS["num_image_tokens"], DIMS["image_token_dim"], generator=g).to(dt),
            torch.ones(n, dtype=torch.bool),
        )
        return h.side_features(text, image)

    with torch.no_grad():
        return h.mention_cache(side(B)), h.entity_cache(side(N))


def tiled_score(h: MimicHeads, m, e, tiles: xs.TileConfig) -> torch.Tensor:
    """S [B, N] with the tiled kernels at the given tile sizes (what `score(tiled=True)` runs)."""
    mt, fixed = h.matcher, h.config.fixed
    w = mt.tglu._pool_weights(e.t_mask, fixed, e.q.dtype)
    g2l = xs.g2l_scores(e.q, m.k, m.v, e.g2l_cls, w, m.t_mask if fixed else None, mt.tglu.layer_norm, tiles)
    S_T = (m.t_cls @ e.t_cls.T + g2l) / 2
    e2m = xs.dual_scores(mt.vdlu.dual_ent2men, e.e2m_q, e.e2m_qn, m.e2m_k, m.e2m_v)
    m2e = xs.dual_scores(mt.vdlu.dual_men2ent, m.m2e_q, m.m2e_qn, e.m2e_k, e.m2e_v)
    S_V = (e2m.T + m2e) / 2
    return (S_T + S_V + m.z @ e.z.T) / 3


def assert_same_ranking(got: torch.Tensor, ref: torch.Tensor, tol: float):
    """Scores allclose; for every gold position whose reference score is not within `tol` of
    another entity's, the rank is identical."""
    torch.testing.assert_close(got, ref, rtol=0, atol=tol)
    B, N = ref.shape
    checked = 0
    for gold in range(N):
        g = torch.full((B,), gold)
        gap = (ref - ref[:, gold : gold + 1]).abs()
        gap[:, gold] = float("inf")
        clear = gap.min(1).values > 2 * tol  # not tied within the tolerance
        if clear.any():
            assert torch.equal(ranks_from_scores(got, g)[clear], ranks_from_scores(ref, g)[clear])
            checked += int(clear.sum())
    assert checked > B * N // 2, "most (mention, gold) pairs must be rank-checked"


@pytest.mark.parametrize("mode", ["compat", "fixed"])
@pytest.mark.parametrize("B,N", [(7, 23), (1, 1), (1, 40), (5, 1)])
def test_tiled_kernel_matches_straightforward_path(mode, B, N):
    h = make_heads(mode)
    m, e = caches(h, B, N, seed=B * 100 + N, padded=mode == "fixed")
    with torch.no_grad():
        ref = h.score(m, e, tiled=False)
        auto = h.score(m, e)  # inference default: the tiled kernels, default tiles
        small = tiled_score(h, m, e, SMALL_TILES)
    assert auto.S.shape == small.shape == (B, N)
    for k in ("S", "S_T", "S_V", "S_C"):
        torch.testing.assert_close(getattr(auto, k), getattr(ref, k), rtol=1e-5, atol=1e-5)
    assert_same_ranking(small, ref.S, tol=1e-4)


@pytest.mark.parametrize("mode", ["compat", "fixed"])
def test_tiled_fp32_matches_float64_reference(mode):
    """Against the straightforward path in float64: the tiled fp32 kernel is within fp32 error."""
    h64 = make_heads(mode, torch.float64)
    h32 = copy.deepcopy(h64).float()
    m64, e64 = caches(h64, 9, 31, seed=5, padded=mode == "fixed")
    m32 = m64.apply(lambda t: t.float() if t.is_floating_point() else t)
    e32 = e64.apply(lambda t: t.float() if t.is_floating_point() else t)
    with torch.no_grad():
        ref = h64.score(m64, e64, tiled=False).S
        got = tiled_score(h32, m32, e32, SMALL_TILES)
    assert ref.abs().max() > 1  # a meaningful scale for the tolerance below
    assert_same_ranking(got.double(), ref, tol=2e-4)


def test_fixed_mode_padding_content_is_ignored_and_compat_is_not():
    """Trimming and masking are exact in fixed mode: what sits at padded positions cannot matter."""
    h = make_heads("fixed")
    m, e = caches(h, 6, 17, seed=11, padded=True)
    junk_m = m.apply(lambda t: t)
    junk_m.k = torch.where(m.t_mask[..., None], m.k, torch.randn_like(m.k) * 50)
    junk_e = e.apply(lambda t: t)
    junk_e.q = torch.where(e.t_mask[..., None], e.q, torch.randn_like(e.q) * 50)
    with torch.no_grad():
        a = tiled_score(h, m, e, SMALL_TILES)
        b = tiled_score(h, junk_m, junk_e, SMALL_TILES)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    hc = make_heads("compat")
    mc, ec = caches(hc, 6, 17, seed=11, padded=True)
    mc2 = mc.apply(lambda t: t)
    mc2.k = torch.where(mc.t_mask[..., None], mc.k, torch.randn_like(mc.k) * 50)
    with torch.no_grad():
        assert not torch.allclose(tiled_score(hc, mc, ec, SMALL_TILES), tiled_score(hc, mc2, ec, SMALL_TILES))


def test_worker_threads_give_bitwise_the_same_scores():
    """Blocks are the same however many workers run them, and each block is single-threaded."""
    h = make_heads("compat")
    m, e = caches(h, 8, 50, seed=3, padded=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = tiled_score(h, m, e, SMALL_TILES)
        torch.set_num_threads(2)
        with torch.no_grad():
            two = tiled_score(h, m, e, SMALL_TILES)
        assert torch.get_num_threads() == 2  # the pool did not change the caller's thread count
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_empty_sides_give_empty_scores():
    h = make_heads("fixed")
    m, e = caches(h, 3, 4, seed=1, padded=True)
    with torch.no_grad():
        assert h.score(m, e[:0]).S.shape == (3, 0)
        assert h.score(m[:0], e).S.shape == (0, 4)


def test_gradients_and_attention_use_the_straightforward_path():
    """Training needs autograd through the scores, explanations need the attention maps: both run
    the straightforward computation, and its scores equal the tiled ones."""
    h = make_heads("fixed")
    m, e = caches(h, 2, 5, seed=2, padded=True)
    with torch.no_grad():
        fast = h.score(m, e)
        shown = h.score(m, e, return_attention=True)
    assert fast.tglu_attention is None and shown.tglu_attention is not None
    torch.testing.assert_close(fast.S, shown.S, rtol=1e-5, atol=1e-5)
    out = h.score(m, e)  # grad enabled
    out.S.sum().backward()
    assert h.matcher.tglu.layer_norm.weight.grad is not None


@pytest.mark.parametrize("scale", [0.01, 1.0, 20.0])
def test_separable_dual_matches_the_pairwise_dual(scale):
    """The separable DUAL (no [a, b, d] tensor) against DUAL.pair in float64, at small and large
    feature scales (where the expanded LayerNorm variances could cancel): fp32 error or better."""
    h = make_heads("compat")
    g = torch.Generator().manual_seed(7)
    q, qn = torch.randn(13, 96, generator=g) * scale, torch.randn(13, 96, generator=g)
    k, v = torch.randn(9, 96, generator=g) * scale, torch.randn(9, 96, generator=g) * scale
    for dual in (h.matcher.vdlu.dual_ent2men, h.matcher.vdlu.dual_men2ent):
        with torch.no_grad():
            got = xs.dual_scores(dual, q, qn, k, v)
            ref = copy.deepcopy(dual).double().pair(q.double(), qn.double(), k.double(), v.double())
            fp32 = dual.pair(q, qn, k, v)
        assert got.dtype == torch.float32 and got.shape == (13, 9)
        err, err_fp32 = (got.double() - ref).abs().max(), (fp32.double() - ref).abs().max()
        assert err <= max(2 * err_fp32, 1e-5 * ref.abs().max())


def test_tiled_kernels_are_inference_only_in_every_thread():
    """Grad mode is per thread: blocks on the workers must not build a graph either (an explicit
    tiled=True with autograd on returns plain tensors instead of failing in a worker)."""
    h = make_heads("compat")
    m, e = caches(h, 6, 300, seed=4, padded=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = h.score(m, e, tiled=True)  # autograd on in the caller
    finally:
        torch.set_num_threads(before)
    assert not out.S_V.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(out.S_V, h.score(m, e, tiled=False).S_V, rtol=1e-5, atol=1e-5)
