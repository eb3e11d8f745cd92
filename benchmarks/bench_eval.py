"""Full-KB evaluation throughput (mentions per second) of the MIMIC matcher.

Compares, at the paper's dimensions (CLIP-B/32: 40 text tokens × 512, 50 image tokens × 768, d = 96):
  official     the reference loop: raw KB features cached, every batch of 20 mentions recomputes all
               entity-side projections, KB walked in 6000-entity chunks;
  precomputed  this project's path: entity-side projections (`EntityCache`) computed once, mention
               batches of 64 score against KB chunks.
Backbone encoding is excluded (it is the same one-off cost for both); the one-off cost of building
the precomputed cache is reported separately. Features are random: throughput does not depend on
their values. Text lengths: all 40 positions real (WikiMEL attributes fill them), so fixed mode's
trimming gives no help and the comparison is conservative.

  python benchmarks/bench_eval.py --entities 10000 100000 --json bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mimic.backbones.base import ImageFeatures, TextFeatures
from mimic.models.modeling_mimic import EntityCache, MimicConfig, MimicHeads, SideFeatures


def random_side(heads, n, device, dtype, base=None):
    """LayerNorm'd side features for n items; built from a 2,000-item block repeated (saves RAM/time)."""
    cfg = heads.config
    b = min(n, 2000)
    g = torch.Generator().manual_seed(n)
    text = TextFeatures(
        torch.randn(b, cfg.text_global_dim, generator=g),
        torch.randn(b, cfg.text_max_length, cfg.text_token_dim, generator=g),
        torch.ones(b, cfg.text_max_length, dtype=torch.bool),
    )
    image = ImageFeatures(
        torch.randn(b, cfg.image_global_dim, generator=g),
        torch.randn(b, cfg.num_image_tokens, cfg.image_token_dim, generator=g),
        torch.ones(b, dtype=torch.bool),
    )
    with torch.no_grad():
        s = heads.side_features(text, image)
    reps = -(-n // b)
    return SideFeatures(
        **{
            k: getattr(s, k)
            .to(device)
            .repeat(reps, *([1] * (getattr(s, k).dim() - 1)))[:n]
            .to(dtype if getattr(s, k).is_floating_point() else getattr(s, k).dtype)
            for k in SideFeatures.__dataclass_fields__
        }
    )


@torch.no_grad()
def run(heads, n_entities, n_mentions, strategy, device, dtype):
    ent = random_side(heads, n_entities, device, dtype)
    men = random_side(heads, n_mentions, device, dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    if strategy == "precomputed":
        chunk, bs = 1024, 64
        parts = [
            heads.entity_cache(
                SideFeatures(**{k: getattr(ent, k)[s : s + chunk] for k in SideFeatures.__dataclass_fields__})
            )
            for s in range(0, n_entities, chunk)
        ]
        ecache = EntityCache.cat(parts)
        sync()
    else:
        chunk, bs = 6000, 20
    t_cache = time.perf_counter() - t0
    t1 = time.perf_counter()
    for s in range(0, n_mentions, bs):
        mside = SideFeatures(**{k: getattr(men, k)[s : s + bs] for k in SideFeatures.__dataclass_fields__})
        mc = heads.mention_cache(mside)
        best = None
        for c in range(0, n_entities, chunk):
            if strategy == "precomputed":
                ec = ecache[c : c + chunk]
            else:
                ec = heads.entity_cache(
                    SideFeatures(**{k: getattr(ent, k)[c : c + chunk] for k in SideFeatures.__dataclass_fields__})
                )
            S = heads.score(mc, ec).S
            m = S.max(1).values
            best = m if best is None else torch.maximum(best, m)
        sync()
    t_rank = time.perf_counter() - t1
    return {
        "strategy": strategy,
        "entities": n_entities,
        "mentions": n_mentions,
        "mention_batch": bs,
        "kb_chunk": chunk,
        "cache_build_seconds": round(t_cache, 3),
        "rank_seconds": round(t_rank, 3),
        "mentions_per_second": round(n_mentions / t_rank, 3),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--mentions", type=int, default=None, help="default: 64 on CPU, 5000 on GPU")
    ap.add_argument("--strategies", nargs="+", default=["official", "precomputed"])
    ap.add_argument("--mode", default="fixed", choices=["fixed", "compat"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16/float16 (GPU default bf16)")
    ap.add_argument("--json")
    a = ap.parse_args()
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    dtype = getattr(torch, a.dtype) if a.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n_m = a.mentions or (5000 if device.type == "cuda" else 64)
    torch.manual_seed(0)
    heads = MimicHeads(MimicConfig(mode=a.mode)).eval()
    rows = []
    for n in a.entities:
        for strat in a.strategies:
            h = heads.to(device=device, dtype=dtype if device.type == "cuda" else torch.float32)
            r = run(
                h,
                n,
                n_m if strat == "precomputed" else min(n_m, 40 if device.type == "cpu" else n_m),
                strat,
                device,
                dtype if device.type == "cuda" else torch.float32,
            )
            r.update({"device": str(device), "dtype": str(dtype).replace("torch.", ""), "mode": a.mode})
            rows.append(r)
            print(json.dumps(r), flush=True)
    out = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "results": rows,
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
