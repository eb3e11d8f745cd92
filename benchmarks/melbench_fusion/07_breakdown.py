"""Step 7: where the gain is — dev H@1 by mention length (1 token vs more) and by whether the gold
entity occurs in the train split (seen vs unseen), for TF-IDF, the zero-shot TF-IDF + MiniLM sum and a
saved re-ranker. A gain that is only on seen entities is memorisation and will not transfer to another
MELBench file.

  python benchmarks/melbench_fusion/07_breakdown.py mlp_all
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from common import FEATS, load, load_features, load_model, model_scores, parser, record, setup


def main():
    ap = parser(__doc__)
    ap.add_argument("tag")
    a = ap.parse_args()
    setup(a)
    _, _, _, gold = load(a.data)
    net, ck = load_model(a.cache, a.tag)
    X, gold_in, _ = load_features(a.cache, "dev", ck["sel"], ck["extra"])
    S = model_scores(net, ck, X)
    sh = np.load(a.cache / "short_dev.npz")
    hit1 = {
        "tfidf": sh["r_tfidf"] == 1,
        "zeroshot_sum": sh["r_sum"] == 1,
        a.tag: gold_in[np.arange(len(S)), S.argmax(1)],
    }
    one_tok = np.load(a.cache / "feat_dev.npz")["X"][:, 0, FEATS.index("m_ntok")] <= 1
    seen = np.isin(gold["dev"], gold["train"])
    groups = {"1-token": one_tok, "multi-token": ~one_tok, "seen": seen, "unseen": ~seen}
    out = {"step": "07_breakdown", "tag": a.tag, "n": {k: int(v.sum()) for k, v in groups.items()}}
    for name, ok in hit1.items():
        out[name] = {k: round(float(ok[v].mean()), 4) for k, v in groups.items()}
    record(a.cache, out)


if __name__ == "__main__":
    main()
