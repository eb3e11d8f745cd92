"""The promotion rule: does the candidate replace the serving model?"""

from __future__ import annotations

from .config import RetrainConfig

_EPS = 1e-9  # "not lower" must not fail on float noise (0.800 - 0.795 = 0.005000000000000004)


def decide_promotion(serving: dict, candidate: dict, cfg: RetrainConfig) -> tuple[bool, str]:
    """serving / candidate: {"heldout": metrics, "base_dev": metrics or absent}. Promote only if
    held-out MRR rose by at least `min_mrr_delta` and base-dev H@1 fell by at most `max_dev_h1_drop`."""
    s_h, c_h = serving.get("heldout") or {}, candidate.get("heldout") or {}
    count = int(c_h.get("count", 0))
    if count < max(cfg.min_heldout, 1):
        return False, (
            f"not promoted: {count} held-out correction(s), need at least {max(cfg.min_heldout, 1)} "
            "to judge (collect more corrections or raise holdout)"
        )
    d_mrr = c_h["MRR"] - s_h["MRR"]
    parts = [f"held-out MRR {s_h['MRR']:.4f} -> {c_h['MRR']:.4f} ({d_mrr:+.4f}, required >= {cfg.min_mrr_delta:+.4f})"]
    ok = d_mrr >= cfg.min_mrr_delta - _EPS
    s_d, c_d = serving.get("base_dev") or {}, candidate.get("base_dev") or {}
    if c_d.get("count"):
        drop = s_d["H@1"] - c_d["H@1"]
        parts.append(
            f"base dev H@1 {s_d['H@1']:.4f} -> {c_d['H@1']:.4f} (drop {drop:+.4f}, "
            f"allowed <= {cfg.max_dev_h1_drop:.4f})"
        )
        ok = ok and drop <= cfg.max_dev_h1_drop + _EPS
    else:
        parts.append("no base dev split: that criterion does not apply")
    return ok, ("promoted: " if ok else "not promoted: ") + "; ".join(parts)
