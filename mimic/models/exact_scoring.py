"""Exact pairwise scoring kernels for inference: TGLU's global-to-local term over cache-sized
tiles, and VDLU in a separable form.

Why: full-KB evaluation spends almost all its time in the two genuinely pairwise units. Computed
over a whole KB chunk at once, their intermediates ([N, Le, B, Lm] logits: 420 MB for 1024
entities × 64 mentions; [B, N, d] DUAL activations: 25 MB) live in main memory, and every
elementwise pass (softmax, pooling, LayerNorm, gating) streams them through DRAM. The results are
the same functions as the straightforward path in `modeling_mimic` (`score(..., tiled=False)`),
up to fp32 rounding; tests/test_exact_scoring.py checks scores and ranks against it.

TGLU G2L, per (entity n, mention b), with entity tokens i as queries and mention tokens j as keys:
    p_ij = softmax_j(q_i · k_j / sqrt(d))          (fixed mode: pads j are -inf, i.e. p_ij = 0)
    ctx  = sum_i w_i sum_j p_ij v_j = sum_j (sum_i w_i p_ij) v_j
w_i = 1/Le (compat: every position) or mask_i / #real tokens (fixed). The second form is the
mean-of-softmax identity: pooling the attention rows *before* the product with V turns the
[Le, Lm] @ [Lm, d] product into a [Lm] @ [Lm, d] one, halving the FLOPs (≈0.6 → ≈0.3 MFLOP per pair
at Le = Lm = 40, d = 96). What remains is one [n·Le, d] @ [d, b·Lm] GEMM per tile plus a softmax
and a pooling pass over that tile while it is still in cache: the GEMM and the 1600 exponentials
per pair are the floor. Fixed mode also trims each tile to the longest text in it (exact: the
trimmed positions are masked).

VDLU: see `dual_scores` — the [a, b, d] activations are never formed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of the inference kernels (elements of one tile's intermediate).

    logits_elements: entity × mention tile of the TGLU logits [n·Le, b·Lm]; 2^19 fp32 = 2 MB, which
        measured best on an AMD EPYC (1 MB L2/core, 32 MB L3): large enough that the per-tile
        Python overhead is negligible, small enough that the softmax and the pooling read it from
        cache. mention_tile: mentions per tile (b); the rest of the budget goes to entities.
    """

    logits_elements: int = 1 << 19
    mention_tile: int = 16


DEFAULT_TILES = TileConfig()


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, in place (the row kernel reads a row before writing it)."""
    return torch.ops.aten._softmax.out(x, -1, False, out=x)


def g2l_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g2l_cls: torch.Tensor,
    w: torch.Tensor,
    m_mask: torch.Tensor | None,
    layer_norm: nn.LayerNorm,
    tiles: TileConfig = DEFAULT_TILES,
) -> torch.Tensor:
    """TGLU's G2L score [B, N] = LN(sum_j pooled[n, b, j] v[b, j]) · g2l_cls[n].

    q [N, Le, d] entity queries (W_q E_tok); k, v [B, Lm, d] mention keys/values; g2l_cls [N, d]
    (W_cls e_cls); w [N, Le] pooling weights over entity tokens (rows sum to 1, 0 on pads);
    m_mask [B, Lm] bool, or None for compat mode (no masking, no trimming).
    pooled[n, b, j] = sum_i w[n, i] softmax_j(q[n, i] · k[b, j] / sqrt(d)).
    """
    N, Le, d = q.shape
    B, Lm = k.shape[:2]
    out = q.new_empty(B, N)
    if N == 0 or B == 0:
        return out
    kt = (k / math.sqrt(d)).transpose(1, 2)  # [B, d, Lm]
    if m_mask is not None:
        bias = torch.zeros(B, Lm, dtype=q.dtype, device=q.device).masked_fill_(~m_mask, float("-inf"))
        # lengths up to the last real (mention) / weighted (entity) position: one host read each
        m_len = (Lm - m_mask.flip(1).to(torch.int8).argmax(1)).tolist()
        e_len = (Le - (w > 0).flip(1).to(torch.int8).argmax(1)).tolist()
    else:
        bias, m_len, e_len = None, [Lm] * B, [Le] * N
    bt = max(1, min(B, tiles.mention_tile))
    mention_tiles = []  # (mentions, trimmed length, keys [d, nb·lm], pad bias [1, nb·lm] or None)
    for b0 in range(0, B, bt):
        sl, lm = slice(b0, b0 + bt), max(m_len[b0 : b0 + bt])
        nb = len(m_len[sl])
        kb = kt[sl, :, :lm].permute(1, 0, 2).reshape(d, nb * lm)
        mention_tiles.append((sl, lm, kb, None if bias is None else bias[sl, :lm].reshape(1, nb * lm)))

    def block(es: slice) -> None:
        """Entities `es` against every mention tile: one [n·le, d] @ [d, nb·lm] tile each."""
        n = es.stop - es.start
        le = max(e_len[es])
        qa = q[es, :le].reshape(n * le, d)
        wa = w[es, None, :le]  # [n, 1, le]
        pooled = q.new_zeros(n, B, Lm)
        ws = _workspace(n * le * bt * Lm, q)
        for sl, lm, kb, bb in mention_tiles:
            nb = kb.shape[1] // lm
            logits = ws[: n * le * nb * lm].view(n * le, nb * lm)
            if bb is None:
                torch.matmul(qa, kb, out=logits)
            else:
                torch.addmm(bb, qa, kb, out=logits)
            probs = _softmax_(logits.view(n * le * nb, lm))
            # sum_i w[n, i] probs[n, i, b, j]: a batched [1, le] @ [le, nb·lm]
            pooled[:, sl, :lm] = torch.bmm(wa, probs.view(n, le, nb * lm)).view(n, nb, lm)
        ctx = layer_norm(torch.bmm(pooled.transpose(0, 1), v))  # [B, n, d]
        out[:, es] = (ctx * g2l_cls[None, es, :]).sum(-1)

    parallel_blocks(block, N, max(1, tiles.logits_elements // (Le * bt * Lm)))
    return out


def dual_scores(dual, q: torch.Tensor, qn: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`DUAL.pair` (q, qn [a, d]; k, v [b, d] -> [a, b]) without any [a, b, d] intermediate; row
    blocks of q on the worker threads (rows are independent, so splitting them is exact)."""
    a, b = q.shape[0], k.shape[0]
    out = q.new_empty(a, b)

    def block(sl: slice) -> None:
        out[sl] = _separable_dual(dual, q[sl], qn[sl], k, v)

    parallel_blocks(block, a, max(256, -(-a // torch.get_num_threads())))
    return out


def _separable_dual(dual, q: torch.Tensor, qn: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """DUAL.pair(q, qn, k, v) [a, b] from dot products between items.

    DUAL.pair runs two LayerNorms, a d×d Linear and a gate over the [a, b, d] tensor v_b + q_a:
    about as much time per pair as TGLU's softmax. Every step is affine in the per-item vectors
    except the LayerNorm statistics and the gate, and those only need dot products between items.
    With x̃ = x - mean(x) and W = fc.weight:
        σ1² = (|ṽ_b|² + |q̃_a|² + 2 q̃_a·ṽ_b)/d + eps            (LN_add of v_b + q_a)
        c   = (A_b + C_a)/σ1 + c0,   A_b = W(γ1 ṽ_b), C_a = W(γ1 q̃_a), c0 = W β1 + b_f
        g   = tanh((w_g·A_b + w_g·C_a)/σ1 + w_g·c0 + b_g),   α = g/σ1
        z̃   = α(Ã_b + C̃_a) + g c̃0 + k̃_b                       (c·g + k_b, centred)
        σ2² = |z̃|²/d + eps,   score = z̃·(γ2 qn_a)/σ2 + β2·qn_a
    |z̃|² and z̃·(γ2 qn_a) expand into per-item norms and five [a, d] @ [d, b] products (in the
    input dtype). The [a, b] combination is evaluated in float64, so the expanded variances lose
    nothing to cancellation beyond the fp32 rounding of the dot products themselves: the same
    function as DUAL.pair, as accurate as it (tests/test_exact_scoring.py).
    """
    dt, f64 = q.dtype, torch.float64
    a, b, d = q.shape[0], k.shape[0], q.shape[1]
    if a == 0 or b == 0:
        return q.new_zeros(a, b)
    W, bf = dual.fc.weight, dual.fc.bias
    g1, b1 = dual.add_layer_norm.weight, dual.add_layer_norm.bias
    g2, b2 = dual.layer_norm.weight, dual.layer_norm.bias
    wg, bg = dual.gate_fc.weight[0], dual.gate_fc.bias[0]

    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)

    def sq(x: torch.Tensor) -> torch.Tensor:  # squared norms as float64
        return (x * x).sum(-1).to(f64)

    def dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [a, d] x [b, d] -> float64 [a, b]
        return (x @ y.T).to(f64)

    qc, vc, kc = centred(q), centred(v), centred(k)
    inv1 = ((sq(qc)[:, None] + sq(vc)[None, :] + 2 * dots(qc, vc)) / d + dual.add_layer_norm.eps).rsqrt()
    A, C = (vc * g1) @ W.T, (qc * g1) @ W.T  # [b, d], [a, d]
    c0 = W @ b1 + bf  # [d]
    gate = torch.tanh(((C @ wg).to(f64)[:, None] + (A @ wg).to(f64)[None, :]) * inv1 + float(c0 @ wg + bg))
    alpha = gate * inv1  # [a, b]
    Ac, Cc, c0c = centred(A), centred(C), centred(c0)
    r = qn * g2  # [a, d]
    var2 = (
        alpha * alpha * (sq(Cc)[:, None] + sq(Ac)[None, :] + 2 * dots(Cc, Ac))
        + gate * gate * float(c0c @ c0c)
        + sq(kc)[None, :]
        + 2 * alpha * gate * ((Cc @ c0c).to(f64)[:, None] + (Ac @ c0c).to(f64)[None, :])
        + 2 * alpha * (dots(Cc, kc) + (Ac * kc).sum(-1).to(f64)[None, :])
        + 2 * gate * (kc @ c0c).to(f64)[None, :]
    ) / d
    num = alpha * ((Cc * r).sum(-1).to(f64)[:, None] + dots(r, Ac)) + gate * (r @ c0c).to(f64)[:, None] + dots(r, kc)
    return (num * (var2 + dual.layer_norm.eps).rsqrt() + (qn @ b2).to(f64)[:, None]).to(dt)


def scores_in_blocks(score_block: Callable[[slice], Any], B: int, N: int, like: torch.Tensor) -> dict:
    """{S, S_T, S_V, S_C: [B, N]} from score_block(entity slice) (an object with [B, n] fields),
    entity blocks on the workers: everything pairwise, not only the kernels above, then runs in
    single-threaded operations (see Threads below)."""
    out = {k: like.new_empty(B, N) for k in ("S", "S_T", "S_V", "S_C")}

    def block(sl: slice) -> None:
        o = score_block(sl)
        for k, t in out.items():
            t[:, sl] = getattr(o, k)

    parallel_blocks(block, N, max(64, -(-N // (4 * torch.get_num_threads()))))
    return out


# ------------------------------------------------------------------------------------------------
# Threads. Every tile is a few small operations; letting each of them split itself over the
# intra-op (OpenMP) threads puts a barrier after every one, and on a shared, oversubscribed CPU a
# barrier waits for the slowest, descheduled thread (measured: 30x slower at load 7 on 2 cores).
# Instead, blocks of tiles go to worker threads that each run single-threaded operations (torch
# releases the GIL inside an op), taking the next block when done, so nobody waits on a barrier.
# ------------------------------------------------------------------------------------------------
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


_LOCAL = threading.local()


def _workspace(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch buffer of this thread, reused across tiles and calls. A fresh MB-sized
    tensor per tile would be fresh pages from the OS every time (page faults, system time)."""
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = _LOCAL.buf = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def _single_threaded() -> None:
    torch.set_num_threads(1)  # OpenMP/MKL thread counts are per calling thread


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != n:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            caller = torch.get_num_threads()
            _POOL = ThreadPoolExecutor(n, thread_name_prefix="exact-scoring", initializer=_single_threaded)
            list(_POOL.map(lambda _: None, range(n)))  # start the workers now
            # A worker's set_num_threads also became the default of threads created later: restore it.
            torch.set_num_threads(caller)
            _POOL_SIZE = n
        return _POOL


def parallel_blocks(fn: Callable[[slice], None], n: int, block: int) -> None:
    """Call fn(slice) over [0, n) in blocks of `block` rows, on torch.get_num_threads() workers,
    without autograd (the kernels are inference only).

    fn must write disjoint outputs. One thread (or one block) runs inline in the caller."""
    threads = torch.get_num_threads()
    slices = [slice(s, min(s + block, n)) for s in range(0, n, block)]
    if threads <= 1 or len(slices) <= 1 or threading.current_thread().name.startswith("exact-scoring"):
        for sl in slices:
            _no_grad_call(fn, sl)
        return
    # Enough blocks per worker that a worker slowed by another process does not hold up the end.
    # Grad mode is per thread: the workers run the (inference-only) blocks without autograd.
    for f in [_pool(threads).submit(_no_grad_call, fn, sl) for sl in slices]:
        f.result()


def _no_grad_call(fn: Callable[[slice], None], sl: slice) -> None:
    with torch.no_grad():
        fn(sl)
