"""Character n-gram TF-IDF over entity names and aliases: the lexical retriever, scalable to 10^6.

Why not a sparse product with the whole matrix: at a million entities (1.3 M names, ~80 M
non-zeros) `query @ matrix` touches every name that shares any bigram with the mention — most of
them — and took ~75 ms a query. Instead the query's n-grams are taken rarest first until their
posting lists hold `budget` names; those names are the candidates, scored exactly (the same cosine
as the full product). A name that shares only common n-grams with the mention is skipped; its cosine
is low, and when every n-gram fits the budget (small KBs) the search is exact.

The fitted vocabulary, idf and both sparse orientations are saved in the index folder (`lexical/`)
and memory-mapped on load, so a million-entity index neither refits (about a minute) nor holds the
matrices in process memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mimic.atomic import atomic_file, write_json_atomic

VERSION = 1
DEFAULT_BUDGET = 30_000  # posting entries read per query (measured: docs/serving.md#scale)
RESCORE = 2048  # candidates scored exactly: the best by their share of the rare n-grams' weight
_ARRAYS = ("owner", "starts", "data", "indices", "indptr", "post_indptr", "post_names", "idf")


def _vectorizer():
    # lazy: sklearn adds 1.0 s to importing this module (python -X importtime), for lexical search only
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, lowercase=True, dtype=np.float32)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[2, 1, 3] -> [0, 1, 0, 0, 1, 2]."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return np.zeros(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - offsets


class LexicalIndex:
    """Character n-gram TF-IDF (char_wb, 2–4, sublinear tf) over names and aliases."""

    def __init__(self, entities: Iterable[dict] | None = None, budget: int = DEFAULT_BUDGET, rescore: int = RESCORE):
        self.budget, self.rescore = budget, rescore
        if entities is None:  # filled by `load`
            return
        names, owner = [], []
        n = 0
        for i, e in enumerate(entities):
            n = i + 1
            for s in [e["name"], *e.get("aliases", [])]:
                if s:
                    names.append(s)
                    owner.append(i)
        self.n = n
        self.owner = np.asarray(owner, dtype=np.int64)
        # Names of one entity are contiguous and every entity has one: reduceat gives the best per entity.
        self.starts = np.searchsorted(self.owner, np.arange(n))
        self.vec = _vectorizer()
        by_name = self.vec.fit_transform(names).astype(np.float32).tocsr()  # [names, features]
        del names
        self.data, self.indices, self.indptr = by_name.data, by_name.indices.astype(np.int32), by_name.indptr
        post = by_name.tocsc()  # [names, features] by column: feature -> names holding it
        del by_name
        self.post_indptr, self.post_names = post.indptr.astype(np.int64), post.indices.astype(np.int32)
        self.idf = np.asarray(self.vec.idf_, dtype=np.float32)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: Path, key: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            with atomic_file(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, getattr(self, name))
        write_json_atomic(folder / "vocabulary.json", self.vec.vocabulary_)
        write_json_atomic(folder / "meta.json", {"version": VERSION, "key": key, "entities": self.n})  # last

    @classmethod
    def load(cls, folder: Path, key: str, budget: int = DEFAULT_BUDGET, rescore: int = RESCORE) -> LexicalIndex | None:
        """The saved index if it was built for `key` (the index's live rows), else None."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("version") != VERSION or meta.get("key") != key:
            return None
        self = cls(None, budget, rescore)
        self.n = int(meta["entities"])
        for name in _ARRAYS:
            setattr(self, name, np.load(folder / f"{name}.npy", mmap_mode="r"))
        self.vec = _vectorizer()
        self.vec.vocabulary_ = {k: int(v) for k, v in json.loads((folder / "vocabulary.json").read_text()).items()}
        self.vec.idf_ = np.asarray(self.idf)
        return self

    # -- scoring ---------------------------------------------------------------------------------
    def _query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        q = self.vec.transform([text])
        return q.indices.astype(np.int64), q.data.astype(np.float32)

    def _cosines(self, names: np.ndarray, feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Exact cosine of the query (features, weights) with each of `names` -> [len(names)]."""
        if not len(names):
            return np.zeros(0, np.float32)
        lo, hi = np.asarray(self.indptr[names]), np.asarray(self.indptr[names + 1])
        counts = hi - lo
        at = np.repeat(lo, counts) + _ranges(counts)
        cols = np.asarray(self.indices[at])
        qdense = np.zeros(len(self.idf), np.float32)
        qdense[feats] = weights
        prod = np.asarray(self.data[at]) * qdense[cols]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.add.reduceat(prod, starts) if len(prod) else np.zeros(len(names), np.float32)
        out[counts == 0] = 0.0  # reduceat repeats a value for empty groups
        return out.astype(np.float32)

    def _candidates(self, feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Names holding the query's rarest n-grams, up to `budget` posting entries (sorted, unique)."""
        if not len(feats):
            return np.zeros(0, np.int64)
        df = np.asarray(self.post_indptr[feats + 1] - self.post_indptr[feats])
        order = np.argsort(df, kind="stable")
        take = order[: max(1, int(np.searchsorted(np.cumsum(df[order]), self.budget, side="right")))]
        lo, hi = np.asarray(self.post_indptr[feats[take]]), np.asarray(self.post_indptr[feats[take] + 1])
        counts = hi - lo
        names = np.asarray(self.post_names[np.repeat(lo, counts) + _ranges(counts)])
        uniq, inv = np.unique(names, return_inverse=True)
        if len(uniq) <= self.rescore:
            return uniq
        # more candidates than are worth exact scores: keep those holding most of the query's weight
        share = np.bincount(inv, weights=np.repeat(weights[take], counts), minlength=len(uniq))
        return np.sort(uniq[np.argpartition(-share, self.rescore - 1)[: self.rescore]])

    def search(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [Q, k], rows [Q, k]); best alias per entity; -1 rows where fewer than k match."""
        k = min(k, self.n)
        scores = np.zeros((len(texts), k), np.float32)
        rows = np.full((len(texts), k), -1, np.int64)
        for qi, text in enumerate(texts):
            feats, weights = self._query(text)
            names = self._candidates(feats, weights)
            sims = self._cosines(names, feats, weights)
            ent = np.asarray(self.owner[names])
            if not len(ent):
                continue
            # names are sorted, so one entity's names are adjacent: best name per entity
            first = np.concatenate([[0], np.flatnonzero(np.diff(ent)) + 1])
            best, ents = np.maximum.reduceat(sims, first), ent[first]
            kk = min(k, len(ents))
            top = np.argpartition(-best, kk - 1)[:kk]
            top = top[np.lexsort((ents[top], -best[top]))]  # score, then row: deterministic ties
            keep = best[top] > 0
            top = top[keep]
            scores[qi, : len(top)] = best[top]
            rows[qi, : len(top)] = ents[top]
        return scores, rows

    def similarity(self, texts: list[str], rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Cosine of texts[i] with each entity of rows[i] (its best name or alias) -> list of [len(rows[i])]."""
        ends = np.append(np.asarray(self.starts[1:]), len(self.owner))
        out = []
        for text, rr in zip(texts, rows):
            rr = np.asarray(rr, dtype=np.int64)
            feats, weights = self._query(text)
            per = ends[rr] - np.asarray(self.starts[rr])  # names of each candidate
            names = np.repeat(np.asarray(self.starts[rr]), per) + _ranges(per)
            sims = self._cosines(names, feats, weights)
            if len(rr):
                out.append(np.maximum.reduceat(sims, np.concatenate([[0], np.cumsum(per)[:-1]])).astype(np.float32))
            else:
                out.append(np.zeros(0, np.float32))
        return out

    def nbytes(self) -> int:
        return int(sum(np.asarray(getattr(self, a)).nbytes for a in _ARRAYS))
