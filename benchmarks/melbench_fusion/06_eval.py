"""Step 6: dev and test figures of a saved re-ranker (fuse_{tag}.pt from 04_fuse.py).

The only step that reads test labels for a learned model; run it only for configurations chosen on dev.
Full-KB rank rule as in 04_fuse.py (common.rerank_ranks); recall64 is the shortlist's ceiling.

  python benchmarks/melbench_fusion/06_eval.py mlp_all
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import fmt, load_features, load_model, model_scores, parser, record, rerank_ranks, setup


def main():
    ap = parser(__doc__)
    ap.add_argument("tag")
    a = ap.parse_args()
    setup(a)
    net, ck = load_model(a.cache, a.tag)
    out = {"step": "06_eval", "tag": a.tag}
    for s in ("dev", "test"):
        X, gold_in, r_sum = load_features(a.cache, s, ck["sel"], ck["extra"])
        out[s] = fmt(rerank_ranks(model_scores(net, ck, X), gold_in, r_sum))
        out[s]["recall64"] = round(float(gold_in.any(1).mean()), 4)
    record(a.cache, out)


if __name__ == "__main__":
    main()
