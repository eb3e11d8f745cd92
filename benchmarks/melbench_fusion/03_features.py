"""Step 3: the 19 features of every (mention, shortlisted candidate) pair (listed in common.FEATS).

Why these: TF-IDF alone is right on most multi-token mentions; the errors are short, ambiguous mentions
("Paris", "Smith") whose candidates differ by tokens the mention lacks — a first name, a qualifier in
parentheses. The features therefore describe how the name covers the mention and vice versa, whether the
name's extra tokens appear in the sentence or in the sentence's other mentions, how ambiguous the mention
is within its shortlist, and the two retrievers' scores and ranks. There are no entity priors, no
training-frequency and no entity-id features, so nothing here is specific to the training entities.

Writes feat_{split}.npz: X [M, 64, 19] float32, cands [M, 64], gold_in [M, 64] (candidate is the gold).

  python benchmarks/melbench_fusion/03_features.py train
  python benchmarks/melbench_fusion/03_features.py dev test
"""

from __future__ import annotations

import pickle
import re
import sys
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from common import FEATS, SPLITS, by_sentence, load, other_mentions, parser, record, setup

COL = {f: i for i, f in enumerate(FEATS)}
STOP = set(
    "a an the of in at on with and & for to from by as is was his her their its"
    " de la le von van der da du di y or vs".split()
)


def toks(s: str) -> list[str]:
    """ASCII-folded, lower-cased alphanumeric tokens."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()
    return [t for t in re.split(r"[^a-z0-9]+", s) if t]


def split_name(n: str) -> tuple[str, str]:
    """'Paris (Texas)' -> ('Paris', 'Texas'); a name without a trailing qualifier -> (name, '')."""
    m = re.match(r"^(.*?)\s*\((.*)\)\s*$", n)
    return (m.group(1), m.group(2)) if m else (n, "")


def rowwise_cosine(E, C: np.ndarray, Q) -> np.ndarray:
    """TF-IDF cosine of each query row Q[i] with the names of its candidates C[i] (rows are unit-norm)."""
    val = np.zeros(C.shape, np.float32)
    for i in range(C.shape[0]):
        val[i] = (E[C[i]] @ Q[i].T).toarray().ravel()
    return val


def lexical_features(X: np.ndarray, M: list, C: np.ndarray, name_toks: list, sentences: dict) -> None:
    """Fill the token-overlap, context and mention-level columns of X in place."""
    for i, m in enumerate(M):
        mt = toks(m.mention)
        mset = set(mt)
        mstr = " ".join(mt)
        if m.start is not None:
            rest = toks(m.sentence[: m.start] + " " + m.sentence[m.end :])
        else:
            rest = toks(m.sentence.replace(m.mention, " "))
        ctx = set(rest) - STOP - mset
        oth = {t for o in other_mentions(m, sentences) for t in toks(o)} - STOP
        row = X[i]
        for j, c in enumerate(C[i]):
            main, qual = name_toks[c]
            nset = set(main)
            nstr = " ".join(main)
            row[j, COL["exact"]] = float(mstr == nstr)
            row[j, COL["m_in_n"]] = len(mset & nset) / max(1, len(mset))
            row[j, COL["n_in_m"]] = len(mset & nset) / max(1, len(nset))
            row[j, COL["is_last"]] = float(len(main) > 0 and len(mt) > 0 and mt[-1] == main[-1])
            row[j, COL["is_first"]] = float(len(main) > 0 and len(mt) > 0 and mt[0] == main[0])
            row[j, COL["n_extra"]] = np.log1p(len(nset - mset))
            extra = ((nset | set(qual)) - mset) - STOP
            row[j, COL["ctx_overlap"]] = len(extra & ctx) / len(extra) if extra else 0.0
            row[j, COL["other_overlap"]] = len(extra & oth) / len(extra) if extra else 0.0
            row[j, COL["has_paren"]] = float(bool(qual))
            row[j, COL["contig"]] = float(mstr != "" and f" {mstr} " in f" {nstr} ")
            row[j, COL["paren_ctx"]] = float(len(set(qual) & ctx) > 0)
        row[:, COL["ambig"]] = np.log1p((row[:, COL["m_in_n"]] == 1.0).sum())
        row[:, COL["m_ntok"]] = len(mt)


def main():
    ap = parser(__doc__)
    ap.add_argument("splits", nargs="*", choices=SPLITS, help="splits to process (default: all three)")
    a = ap.parse_args()
    setup(a)
    t0 = time.time()
    _, names, ms, gold = load(a.data)
    sentences = by_sentence(ms)
    with open(a.cache / "tfidf.pkl", "rb") as f:
        vec = pickle.load(f)  # the vectoriser step 2 fitted on the KB names: training and serving must share it
    E = vec.transform(names).astype(np.float32).tocsr()
    En = np.load(a.cache / "E_name.npy")
    name_toks = [(toks(main), toks(qual)) for main, qual in map(split_name, names)]
    for s in a.splits or SPLITS:
        M, g = ms[s], gold[s]
        sh = np.load(a.cache / f"short_{s}.npz")
        C = sh["cands"]
        Mc = np.load(a.cache / f"M_{s}_ctx.npy")
        Mm = np.load(a.cache / f"M_{s}_mention.npy")
        Q = vec.transform([m.mention for m in M]).astype(np.float32).tocsr()
        Sq = vec.transform([m.sentence for m in M]).astype(np.float32).tocsr()
        X = np.zeros((*C.shape, len(FEATS)), np.float32)
        for b in range(0, len(M), 1024):
            sl = slice(b, b + 1024)
            X[sl, :, COL["tfidf"]] = rowwise_cosine(E, C[sl], Q[sl])
            X[sl, :, COL["name_in_sent_tfidf"]] = rowwise_cosine(E, C[sl], Sq[sl])
            X[sl, :, COL["dense_ctx"]] = np.einsum("md,mkd->mk", Mc[sl], En[C[sl]])
            X[sl, :, COL["dense_mention"]] = np.einsum("md,mkd->mk", Mm[sl], En[C[sl]])
        X[:, :, COL["lex_rr"]] = 1.0 / (1 + sh["lexrank"]) * (sh["lexrank"] < 999)
        X[:, :, COL["den_rr"]] = 1.0 / (1 + sh["denrank"]) * (sh["denrank"] < 999)
        lexical_features(X, M, C, name_toks, sentences)
        gold_in = C == g[:, None]
        np.savez(a.cache / f"feat_{s}.npz", X=X, cands=C, gold_in=gold_in)
        record(
            a.cache,
            {
                "step": "03_features",
                "split": s,
                "shape": list(X.shape),
                "recall64": round(float(gold_in.any(1).mean()), 4),
                "wall_s": round(time.time() - t0, 1),
            },
        )


if __name__ == "__main__":
    main()
