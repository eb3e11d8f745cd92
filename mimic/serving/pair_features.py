"""The lexical unit's pair features (`mimic.models.lexical_unit.FEATURES`) for one query's shortlist.

Why these: TF-IDF alone is right on most multi-token mentions; its errors are short, ambiguous
mentions ("Paris", "Smith") whose candidates differ by tokens the mention lacks: a first name, a
qualifier in parentheses. So the features describe how the name covers the mention and vice versa,
whether the name's extra tokens appear in the rest of the sentence or in the sentence's other
mentions, how ambiguous the mention is within its shortlist, and the retrievers' scores and ranks.
No entity ids, priors or training frequencies: nothing here is specific to the training entities.

The TF-IDF cosines use the index's own fitted vectoriser (`LexicalIndex`), so training (which
builds an index of its KB) and serving compute the same numbers for the same KB.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from mimic.models.lexical_unit import FEATURES

COL = {f: i for i, f in enumerate(FEATURES)}
STOP = frozenset(
    "a an the of in at on with and & for to from by as is was his her their its".split()
    + "de la le von van der da du di y or vs".split()
)


@lru_cache(maxsize=65536)
def tokens(s: str) -> tuple[str, ...]:
    """ASCII-folded, lower-cased alphanumeric tokens."""
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()
    return tuple(t for t in re.split(r"[^a-z0-9]+", s) if t)


@lru_cache(maxsize=65536)
def name_tokens(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'Paris (Texas)' -> (('paris',), ('texas',)); a name without a trailing qualifier -> (tokens, ())."""
    m = re.match(r"^(.*?)\s*\((.*)\)\s*$", name)
    main, qual = (m.group(1), m.group(2)) if m else (name, "")
    return tokens(main), tokens(qual)


def pair_features(
    *,
    mention: str,
    sentence: str,
    span: tuple[int, int] | None,
    other_mentions: Sequence[str],
    names: Sequence[str],
    tfidf: np.ndarray,
    name_in_sentence: np.ndarray,
    dense: np.ndarray,
    ranks: Sequence[dict[str, int]],
) -> np.ndarray:
    """Features [len(names), len(FEATURES)] float32 of one query against its shortlisted candidates.

    tfidf / name_in_sentence / dense [K]: cosines of the mention / the sentence / the query text vector
    with each candidate; ranks[j]: {retriever name: 0-based rank} of candidate j."""
    k = len(names)
    X = np.zeros((k, len(FEATURES)), np.float32)
    X[:, COL["tfidf"]] = tfidf
    X[:, COL["name_in_sent_tfidf"]] = name_in_sentence
    X[:, COL["dense_ctx"]] = dense
    for col, retriever in (("lex_rr", "lexical"), ("text_rr", "text"), ("model_rr", "model")):
        X[:, COL[col]] = [1.0 / (1 + r[retriever]) if retriever in r else 0.0 for r in ranks]
    mt = tokens(mention)
    mset = set(mt)
    mstr = " ".join(mt)
    rest = sentence[: span[0]] + " " + sentence[span[1] :] if span else sentence.replace(mention, " ")
    ctx = set(tokens(rest)) - STOP - mset
    others = {t for o in other_mentions for t in tokens(o)} - STOP
    for j, name in enumerate(names):
        main, qual = name_tokens(name)
        nset = set(main)
        nstr = " ".join(main)
        row = X[j]
        row[COL["exact"]] = float(mstr == nstr)
        row[COL["m_in_n"]] = len(mset & nset) / max(1, len(mset))
        row[COL["n_in_m"]] = len(mset & nset) / max(1, len(nset))
        row[COL["is_last"]] = float(bool(main) and bool(mt) and mt[-1] == main[-1])
        row[COL["is_first"]] = float(bool(main) and bool(mt) and mt[0] == main[0])
        row[COL["n_extra"]] = np.log1p(len(nset - mset))
        extra = ((nset | set(qual)) - mset) - STOP
        row[COL["ctx_overlap"]] = len(extra & ctx) / len(extra) if extra else 0.0
        row[COL["other_overlap"]] = len(extra & others) / len(extra) if extra else 0.0
        row[COL["has_paren"]] = float(bool(qual))
        row[COL["contig"]] = float(mstr != "" and f" {mstr} " in f" {nstr} ")
        row[COL["paren_ctx"]] = float(bool(set(qual) & ctx))
    X[:, COL["ambig"]] = np.log1p((X[:, COL["m_in_n"]] == 1.0).sum())
    X[:, COL["m_ntok"]] = len(mt)
    return X
