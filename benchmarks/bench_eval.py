"""Exact full-KB evaluation speed (mentions per second) of the MIMIC matcher, three paths side by side.

At the paper's dimensions (CLIP-B/32: 40 text tokens × 512, 50 image tokens × 96 after the encoder's
image_tokens_fc, d = 96), random features, fp32, backbone excluded (the same one-off cost for all):
  official  a re-creation of the published loop (codes/model/lightning_mimic.py test_step +
            modeling_mimic.py MIMICMatcher): the KB cache holds the raw encoder outputs; every batch
            of 20 mentions walks the KB in 6000-entity chunks, copies each chunk (the official
            `.to(device)`), applies the four input LayerNorms and every entity projection again, runs
            TGLU with the full [N, B, L, L] attention, its [N, B, L, d] context and the mean, both
            DUALs and CMFU, then ranks by double argsort over the whole KB. No padding mask (compat).
  current   this project's precomputed path as of commit 1f23574 (frozen copy below): entity-side
            projections cached once, the pairwise part over 1024-entity chunks with whole-chunk
            intermediates.
  new       `MimicHeads.score` today, i.e. the cache-tiled kernels of `mimic/models/exact_scoring.py`
            (the evaluation loop of `mimic.analysis.ranking.evaluate`).
All three rank every mention against every entity; their scores agree (checked and printed).

Also printed: the sustained GFLOP/s of a plain 2048² fp32 matmul measured in the same run (at the
start, before each KB size, at the end), the FLOP floor per mention (the GEMM-shaped work no exact method avoids:
TGLU's QKᵀ after the mean-of-softmax identity, the pooled·V product, both DUAL fc layers and the two
bi-encoder dot products) and the fraction of the matmul rate each path reaches, and the load average.

The KB repeats a block of 2,000 distinct random entities (RAM: 100k × 40 × 512 raw tokens would be
8 GB); throughput does not depend on values. Every text position is real, so fixed mode's trimming
gives no help. The machine is shared: read `loadavg` (os.getloadavg) before comparing runs.

  nice -n 5 python benchmarks/bench_eval.py --entities 10000 100000 --json bench_eval.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.bench_common import write_json
from mimic.analysis.ranking import ranks_from_scores
from mimic.models.modeling_mimic import EntityCache, MentionCache, MimicConfig, MimicHeads

BLOCK = 2000  # distinct random entities; the KB repeats them


# ------------------------------------------------------------------------------------------------
# Inputs: raw encoder outputs (what the official KB cache holds).
# ------------------------------------------------------------------------------------------------
def raw_features(cfg: MimicConfig, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Encoder outputs for n items: text cls [n,512], text tokens [n,L,512], image cls [n,dv] and
    image tokens [n,P,dv] (the official encoder applies image_cls_fc/image_tokens_fc before caching)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "t_cls": torch.randn(n, cfg.text_global_dim, generator=g),
        "t_tok": torch.randn(n, cfg.text_max_length, cfg.text_token_dim, generator=g),
        "v_cls": torch.randn(n, cfg.dv, generator=g),
        "v_tok": torch.randn(n, cfg.num_image_tokens, cfg.dv, generator=g),
    }


def rows(raw: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Rows start..stop of the repeated KB, copied (as the official loop copies each chunk)."""
    idx = torch.arange(start, stop) % next(iter(raw.values())).shape[0]
    return {k: v[idx] for k, v in raw.items()}


def side_features(heads: MimicHeads, raw: dict[str, torch.Tensor]):
    """Raw encoder outputs -> this project's SideFeatures (all tokens real, every item has an image)."""
    from mimic.models.modeling_mimic import SideFeatures

    mt = heads.matcher
    n, L = raw["t_tok"].shape[:2]
    return SideFeatures(
        t_cls=mt.text_cls_layernorm(raw["t_cls"]),
        t_tok=mt.text_tokens_layernorm(raw["t_tok"]),
        t_mask=torch.ones(n, L, dtype=torch.bool),
        v_cls=mt.image_cls_layernorm(raw["v_cls"]),
        v_tok=mt.image_tokens_layernorm(raw["v_tok"]),
        has_image=torch.ones(n, dtype=torch.bool),
    )


# ------------------------------------------------------------------------------------------------
# The official matcher, re-created from the published code's order of operations (our parameter
# names are the official ones).
# ------------------------------------------------------------------------------------------------
def official_matcher(heads: MimicHeads, ent: dict, men: dict) -> torch.Tensor:
    """Official MIMICMatcher.forward on raw features -> S [B, N]."""
    mt = heads.matcher
    e_tc, m_tc = mt.text_cls_layernorm(ent["t_cls"]), mt.text_cls_layernorm(men["t_cls"])
    e_tt, m_tt = mt.text_tokens_layernorm(ent["t_tok"]), mt.text_tokens_layernorm(men["t_tok"])
    e_vc, m_vc = mt.image_cls_layernorm(ent["v_cls"]), mt.image_cls_layernorm(men["v_cls"])
    e_vt, m_vt = mt.image_tokens_layernorm(ent["v_tok"]), mt.image_tokens_layernorm(men["v_tok"])

    tg = mt.tglu  # TGLU: entity tokens query mention tokens, full attention, context, then mean
    cls_fc = tg.fc_cls(e_tc)[:, None, :]
    q = tg.fc_query(e_tt)[:, None]  # [N, 1, L, d]
    k, v = tg.fc_key(m_tt)[None], tg.fc_value(m_tt)[None]  # [1, B, L, d]
    att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(tg.d), dim=-1)  # [N, B, L, L]
    ctx = tg.layer_norm(torch.matmul(att, v).mean(-2))  # [N, B, L, d] -> [N, B, d]
    s_text = ((cls_fc * ctx).sum(-1).T + m_tc @ e_tc.T) / 2

    def dual(D, query_cls, key_cls, tokens):  # [a, dv], [b, dv], [b, P, dv] -> [a, b]
        qc, kc = D.cls_fc(query_cls)[:, None, :], D.cls_fc(key_cls)
        c = D.fc(D.add_layer_norm(D.tokens_fc(tokens).mean(-2)[None] + qc))
        h = D.layer_norm(c * torch.tanh(D.gate_fc(c)) + kc[None])
        return (h * D.layer_norm(qc)).sum(-1)

    vd = mt.vdlu
    s_image = (dual(vd.dual_ent2men, e_vc, m_vc, m_vt).T + dual(vd.dual_men2ent, m_vc, e_vc, e_vt)) / 2

    cm = mt.cmfu

    def fused(t_cls, tokens):  # CMFU per side (the official .squeeze() is a no-op at these sizes)
        t, V = cm.text_fc(t_cls), cm.image_fc(tokens)
        a = torch.softmax(torch.matmul(t[:, None, :], V.transpose(-1, -2)), dim=-1)
        return cm.gate_layer_norm(t * torch.tanh(cm.gate_fc(t)) + torch.matmul(a, V)[:, 0])

    s_cross = fused(m_tc, m_vt) @ fused(e_tc, e_vt).T
    return (s_text + s_image + s_cross) / 3


# ------------------------------------------------------------------------------------------------
# The precomputed path as of commit 1f23574, frozen here so it stays measurable.
# ------------------------------------------------------------------------------------------------
def current_score(heads: MimicHeads, m: MentionCache, e: EntityCache) -> torch.Tensor:
    """S [B, N] as `MimicHeads.score` computed it before the tiled kernels (inference hot path)."""
    tg, fixed = heads.matcher.tglu, heads.config.fixed
    g2g = m.t_cls @ e.t_cls.T
    q, k, v, e_mask, m_mask = e.q, m.k, m.v, e.t_mask, m.t_mask
    if fixed:
        le, lm = (max(n, 1) for n in torch.stack([e_mask.sum(1).max(), m_mask.sum(1).max()]).tolist())
        q, e_mask, k, v, m_mask = q[:, :le], e_mask[:, :le], k[:, :lm], v[:, :lm], m_mask[:, :lm]
    N, Le, d = q.shape
    B, Lm = k.shape[:2]
    ws = current_score.__dict__.setdefault("ws", {})
    if ws.get("buf") is None or ws["buf"].numel() < N * Le * B * Lm:
        ws["buf"] = torch.empty(N * Le * B * Lm)
    buf = ws["buf"][: N * Le * B * Lm].view(N * Le, B * Lm)
    logits = torch.matmul(q.reshape(N * Le, d), k.reshape(B * Lm, d).T / math.sqrt(tg.d), out=buf).view(N, Le, B, Lm)
    if fixed:
        logits.masked_fill_(~m_mask[None, None], float("-inf"))
        w = e_mask.float()
        w = w / w.sum(1, keepdim=True).clamp_min(1)
    else:
        w = torch.full(e_mask.shape, 1.0 / Le)
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    pooled = logits.mul_(w[:, :, None, None] / logits.sum(-1, keepdim=True)).sum(1)
    ctx = tg.layer_norm(torch.einsum("nbj,bjd->nbd", pooled, v))
    s_text = (g2g + (ctx * e.g2l_cls[:, None, :]).sum(-1).T) / 2
    s_image = heads.matcher.vdlu(m, e, tiled=False)  # all items have images here
    return (s_text + s_image + m.z @ e.z.T) / 3


# ------------------------------------------------------------------------------------------------
# The three loops.
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_official(heads, kb_raw, men_raw, n_entities, n_mentions, batch=20, chunk=6000):
    gold = torch.randint(0, n_entities, (n_mentions,), generator=torch.Generator().manual_seed(1))
    ranks, first = [], None
    t0 = time.perf_counter()
    for s in range(0, n_mentions, batch):
        men = {k: v[s : min(s + batch, n_mentions)] for k, v in men_raw.items()}
        scores = torch.cat(
            [
                official_matcher(heads, rows(kb_raw, c, min(c + chunk, n_entities)), men)
                for c in range(0, n_entities, chunk)
            ],
            dim=-1,
        )
        rank = torch.argsort(torch.argsort(scores, dim=-1, descending=True), dim=-1) + 1
        ranks.append(rank[torch.arange(len(scores)), gold[s : s + batch]])
        first = scores if first is None else first
    return time.perf_counter() - t0, torch.cat(ranks), first


@torch.no_grad()
def run_precomputed(heads, ecache, men_raw, n_mentions, path, batch=32, chunk=1024):
    """The loop of `ranking.evaluate`: per batch, the [B, N] score rows chunk by chunk, then ranks.
    path: "current" (the frozen copy above) or "new" (`MimicHeads.score`)."""
    N = len(ecache)
    gold = torch.randint(0, N, (n_mentions,), generator=torch.Generator().manual_seed(1))
    ranks, first = [], None
    t0 = time.perf_counter()
    for s in range(0, n_mentions, batch):
        men = {k: v[s : min(s + batch, n_mentions)] for k, v in men_raw.items()}
        mc = heads.mention_cache(side_features(heads, men))
        S = torch.empty(len(mc), N)
        for c in range(0, N, chunk):
            ec = ecache[c : c + chunk]
            S[:, c : c + chunk] = current_score(heads, mc, ec) if path == "current" else heads.score(mc, ec).S
        ranks.append(ranks_from_scores(S, gold[s : s + batch]))
        first = S if first is None else first
    return time.perf_counter() - t0, torch.cat(ranks), first


def matmul_gflops(n=2048, reps=5) -> float:
    """Sustained fp32 GFLOP/s of one plain n×n matmul on torch's default threads (best of reps)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def flop_floor_per_pair(cfg: MimicConfig) -> dict[str, int]:
    """GEMM-shaped FLOPs per (mention, entity) pair that an exact method cannot avoid."""
    L, d = cfg.text_max_length, cfg.tglu_dim
    return {
        "tglu_qk": 2 * L * L * d,  # logits of every entity token against every mention token
        "tglu_pooled_v": 2 * L * d,  # the mean-of-softmax identity: pooled attention · V
        "vdlu_fc": 2 * (2 * cfg.vdlu_dim * cfg.vdlu_dim + 2 * cfg.vdlu_dim),  # fc + gate of both DUALs
        "bi_encoder": 2 * cfg.text_global_dim + 2 * cfg.cmfu_dim,  # G2G and S_C dot products
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--mentions", type=int, default=64, help="mentions ranked by the current and new paths")
    ap.add_argument("--official-mentions", type=int, default=20, help="mentions of the official loop (its batch: 20)")
    ap.add_argument("--modes", nargs="+", default=["compat", "fixed"], choices=["compat", "fixed"])
    ap.add_argument("--paths", nargs="+", default=["official", "current", "new"])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best round is reported")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    out: dict = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dtype": "float32",
        "loadavg_start": os.getloadavg(),
        "matmul_gflops_start": round(matmul_gflops(), 1),
        "results": [],
    }
    print(f"# matmul {out['matmul_gflops_start']} GFLOP/s, load {out['loadavg_start']}", flush=True)
    for mode in a.modes:
        heads = MimicHeads(MimicConfig(mode=mode)).eval()
        cfg = heads.config
        floor = flop_floor_per_pair(cfg)
        kb_raw = raw_features(cfg, BLOCK, seed=0)
        men_raw = raw_features(cfg, max(a.mentions, a.official_mentions), seed=1)
        with torch.no_grad():
            t = time.perf_counter()
            block_cache = heads.entity_cache(side_features(heads, kb_raw))
            build_per_1k = (time.perf_counter() - t) / BLOCK * 1000
        for n in a.entities:
            row: dict = {"mode": mode, "entities": n, "flop_floor_per_pair": floor}
            row["flop_floor_per_mention"] = sum(floor.values()) * n
            row["cache_build_seconds_per_1000_entities"] = round(build_per_1k, 3)
            row["matmul_gflops"] = round(matmul_gflops(), 1)  # the rate the fractions below refer to
            ecache = block_cache[torch.arange(n) % BLOCK]  # the repeated KB
            paths = [p for p in a.paths if not (p == "official" and mode != "compat")]  # official: no fixed mode
            runs: dict[str, list] = {p: [] for p in paths}
            got = {}
            for _ in range(a.repeats):  # interleaved, so every path sees the same spread of load
                for path in paths:
                    load = os.getloadavg()
                    m = a.official_mentions if path == "official" else a.mentions
                    cpu = time.process_time()
                    if path == "official":
                        secs, _, first = run_official(heads, kb_raw, men_raw, n, m)
                    else:
                        secs, _, first = run_precomputed(heads, ecache, men_raw, m, path)
                    cpu = time.process_time() - cpu
                    got[path] = first
                    runs[path].append({"seconds": round(secs, 3), "cpu_seconds": round(cpu, 3), "loadavg_before": load})
                    print(f"# {mode} {n} {path}: {m / secs:.3f} mentions/s, load {load}", flush=True)
            for path in paths:
                m = a.official_mentions if path == "official" else a.mentions
                best = min(runs[path], key=lambda r: r["seconds"])
                mps = m / best["seconds"]
                gflops = row["flop_floor_per_mention"] * mps / 1e9
                row[path] = {
                    "mentions": m,
                    "mentions_per_second": round(mps, 3),  # best of the repeats
                    "mentions_per_cpu_second": round(m / best["cpu_seconds"], 3),
                    "gflops_of_floor": round(gflops, 2),
                    "fraction_of_matmul_gflops": round(gflops / row["matmul_gflops"], 3),
                    "runs": runs[path],
                }
            for base in ("official", "current"):
                if base in got and "new" in got:  # the first batch's scores and the ranks they give
                    b = min(len(got[base]), len(got["new"]))
                    ref, new = got[base][:b], got["new"][:b]
                    gold = torch.randint(0, n, (b,), generator=torch.Generator().manual_seed(2))
                    row[f"new_vs_{base}"] = {
                        "mentions_compared": b,
                        "max_abs_score_diff": float((new - ref).abs().max()),
                        "ranks_identical": torch.equal(ranks_from_scores(new, gold), ranks_from_scores(ref, gold)),
                        "speed_ratio": round(row["new"]["mentions_per_second"] / row[base]["mentions_per_second"], 2),
                        "cpu_time_ratio": round(
                            row["new"]["mentions_per_cpu_second"] / row[base]["mentions_per_cpu_second"], 2
                        ),
                    }
            out["results"].append(row)
            del ecache
    out["matmul_gflops_end"] = round(matmul_gflops(), 1)
    out["loadavg_end"] = os.getloadavg()
    print(write_json(out, a.json))


if __name__ == "__main__":
    main()
