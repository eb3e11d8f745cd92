"""Step 2: zero-shot baselines over the full KB and the serving shortlist the re-ranker works on.

Baselines (no training), full-KB ranks with the `mimic evaluate` tie rule:
  * char n-gram TF-IDF of the mention vs the names (char_wb 2-4, sublinear tf; as `LexicalIndex`),
  * MiniLM cosine of "mention [SEP] sentence" vs the name,
  * their sum with equal weights, and TF-IDF + 0.5 x MiniLM.
Shortlist: reciprocal-rank fusion (k = 60) of the lexical top-64 and the dense top-64, cut to 64 —
the candidate set `Linker._retrieve` hands to a re-ranker at serving time. Its recall@64 is the ceiling
of every re-ranker in step 4.

Writes short_{split}.npz (cands [M,64] KB positions, lexrank/denrank = 0-based rank of each candidate in
the lexical/dense top-64 or 999, r_tfidf/r_sum = full-KB gold ranks) and tfidf.pkl (the vectoriser fitted
on the KB names, reused by step 3). Test metrics are only reported with --test, so that the baselines'
dev figures can be read without seeing test.

  python benchmarks/melbench_fusion/02_shortlist.py train
  python benchmarks/melbench_fusion/02_shortlist.py dev test --test
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from common import SPLITS, K, fmt, load, parser, ranks_dense, record, setup

RRF_K = 60


def rrf_shortlist(lex_top: np.ndarray, den_top: np.ndarray):
    """Fuse one mention's lexical and dense top-K by reciprocal rank (ties by KB position); return the
    fused top-K candidates and each one's 0-based rank in either list (999 when absent)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for src, top in (("lex", lex_top), ("den", den_top)):
        for r, c in enumerate(top):
            found.setdefault(int(c), []).append((src, r))
    fused = sorted(found.items(), key=lambda kv: (-sum(1.0 / (RRF_K + r) for _, r in kv[1]), kv[0]))[:K]
    cands = np.zeros(K, np.int64)
    ranks = {"lex": np.full(K, 999, np.int64), "den": np.full(K, 999, np.int64)}
    for j, (c, srcs) in enumerate(fused):
        cands[j] = c
        for src, r in srcs:
            ranks[src][j] = r
    return cands, ranks["lex"], ranks["den"]


def main():
    ap = parser(__doc__)
    ap.add_argument("splits", nargs="*", choices=SPLITS, help="splits to process (default: all three)")
    ap.add_argument("--test", action="store_true", help="report the test split's metrics")
    a = ap.parse_args()
    setup(a)
    from sklearn.feature_extraction.text import TfidfVectorizer

    t0 = time.time()
    _, names, ms, gold = load(a.data)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
    ET = vec.fit_transform(names).astype(np.float32).T.tocsr()
    En = np.load(a.cache / "E_name.npy")
    for s in a.splits or SPLITS:
        M, g = ms[s], gold[s]
        Q = vec.transform([m.mention for m in M]).astype(np.float32)
        Mc = np.load(a.cache / f"M_{s}_ctx.npy")
        ranks = {"tfidf": [], "dense_ctx": [], "sum": [], "sum_half": []}
        cands = np.zeros((len(M), K), np.int64)
        lexrank = np.full((len(M), K), 999, np.int64)
        denrank = np.full((len(M), K), 999, np.int64)
        for b in range(0, len(M), 512):
            sl = slice(b, b + 512)
            T = (Q[sl] @ ET).toarray()
            D = Mc[sl] @ En.T
            for key, S in (("tfidf", T), ("dense_ctx", D), ("sum", T + D), ("sum_half", T + 0.5 * D)):
                ranks[key].append(ranks_dense(S, g[sl]))
            lex_top = np.argsort(-T, axis=1, kind="stable")[:, :K]
            den_top = np.argsort(-D, axis=1, kind="stable")[:, :K]
            for i in range(len(T)):
                cands[b + i], lexrank[b + i], denrank[b + i] = rrf_shortlist(lex_top[i], den_top[i])
        ranks = {k: np.concatenate(v) for k, v in ranks.items()}
        np.savez(
            a.cache / f"short_{s}.npz",
            cands=cands,
            lexrank=lexrank,
            denrank=denrank,
            r_tfidf=ranks["tfidf"],
            r_sum=ranks["sum"],
        )
        if s != "test" or a.test:
            out = {"step": "02_shortlist", "split": s, **{k: fmt(r) for k, r in ranks.items()}}
            out["recall64"] = round(float((cands == g[:, None]).any(1).mean()), 4)
            out["tfidf_recall64"] = round(float((ranks["tfidf"] <= K).mean()), 4)
            out["dense_recall64"] = round(float((ranks["dense_ctx"] <= K).mean()), 4)
            out["wall_s"] = round(time.time() - t0, 1)
            record(a.cache, out)
    with open(a.cache / "tfidf.pkl", "wb") as f:
        pickle.dump(vec, f)


if __name__ == "__main__":
    main()
