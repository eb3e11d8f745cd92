"""Character n-gram TF-IDF over entity names and aliases: the lexical retriever, scalable to 10^6.

Why not a sparse product with the whole matrix: at a million entities (1.3 M names, ~80 M
non-zeros) `query @ matrix` touches every name that shares any bigram with the mention — most of
them — and took ~75 ms a query. Instead the query's n-grams are taken rarest first until their
posting lists hold `budget` names; those names are the candidates, scored exactly (the same cosine
as the full product). A name that shares only common n-grams with the mention is skipped; its cosine
is low, and when every n-gram fits the budget (small KBs) the search is exact.

The index is one `LexSegment` per index segment (`mimic.serving.lexical_segment`), saved in
`lexical/<segment>/` and memory-mapped on load. An appended segment fits only its own names; the
idf (from the live names' document frequencies) and each candidate name's norm are computed at query
time, so an index grown in K segments, with deletions, scores exactly as one refit over its live
names (`TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mimic.serving.lexical_segment import LexSegment, Vocabulary, term_frequencies

DEFAULT_BUDGET = 30_000  # posting entries read per query (measured: docs/serving.md#scale)
RESCORE = 2048  # candidates scored exactly: the best by their share of the rare n-grams' weight


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[2, 1, 3] -> [0, 1, 0, 0, 1, 2]."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return np.zeros(0, np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - offsets


class LexicalIndex:
    """Character n-gram TF-IDF (char_wb, 2–4, sublinear tf) over names and aliases, in segments.

    `LexicalIndex(records)`: one in-memory segment over `records` (every row live). The KB index
    builds it segment by segment (`add`) and tells it which rows are live (`bind`)."""

    def __init__(self, entities: Iterable[dict] | None = None, budget: int = DEFAULT_BUDGET, rescore: int = RESCORE):
        self.budget, self.rescore = budget, rescore
        self.vocab = Vocabulary()
        self.segments: list[LexSegment] = []
        if entities is not None:
            self.add(LexSegment.fit(entities, self.vocab))
            n = self.segments[0].rows
            self.bind(np.arange(n + 1, dtype=np.int64)[[0, -1]], np.arange(n, dtype=np.int64))

    def add(self, seg: LexSegment) -> None:
        """Append a fitted segment (its n-gram ids follow the vocabulary's); `bind` before searching."""
        if seg.vocab_start != len(self.vocab):
            raise ValueError(f"segment fitted after {seg.vocab_start} n-grams, the index has {len(self.vocab)}")
        self.vocab.extend(seg.new_grams)
        self.segments.append(seg)

    def bind(self, seg_offsets: np.ndarray, phys_to_live: np.ndarray) -> None:
        """seg_offsets [S + 1]: each segment's first physical row; phys_to_live [P]: live row or -1 (deleted).

        Sets name -> live row (-1: deleted), the live document frequencies and idf, and each live
        row's names. Cost: O(names) array work, plus the deleted names' n-grams."""
        offs = np.asarray(seg_offsets, dtype=np.int64)
        V = len(self.vocab)
        df = np.zeros(V, np.int64)
        rows, firsts, counts, name_off = [], [], [], [0]
        for si, seg in enumerate(self.segments):
            p2l = phys_to_live[offs[si] : offs[si + 1]]
            row = p2l[np.asarray(seg.owner)] if seg.names else np.zeros(0, np.int64)
            rows.append(row)
            df[: seg.vocab_end] += seg.df
            dead = np.flatnonzero(row < 0)
            if len(dead):  # deleted names leave the document frequencies
                lo, hi = np.asarray(seg.indptr[dead]), np.asarray(seg.indptr[dead + 1])
                cols = np.asarray(seg.indices[np.repeat(lo, hi - lo) + _ranges(hi - lo)])
                df -= np.bincount(cols, minlength=V)
            starts = np.asarray(seg.starts)
            firsts.append(name_off[-1] + starts[:-1])
            counts.append(np.diff(starts))
            name_off.append(name_off[-1] + seg.names)
        self.name_offsets = np.asarray(name_off, dtype=np.int64)
        self.name_row = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        live_phys = np.flatnonzero(phys_to_live >= 0)
        self.row_first = np.concatenate(firsts)[live_phys] if firsts else np.zeros(0, np.int64)
        self.row_count = np.concatenate(counts)[live_phys] if counts else np.zeros(0, np.int64)
        self.n = len(live_phys)
        self.df = df
        docs = int((self.name_row >= 0).sum())
        self.idf = (np.log((1.0 + docs) / (1.0 + df)) + 1.0).astype(np.float32)  # sklearn's smooth idf

    # -- scoring ---------------------------------------------------------------------------------
    def _query(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The query's n-grams that live names hold, with their unit-norm TF-IDF weights."""
        tf = term_frequencies(text, self.vocab.ids)
        feats = np.fromiter(tf.keys(), np.int64, len(tf))
        w = np.fromiter(tf.values(), np.float32, len(tf))
        keep = self.df[feats] > 0 if len(feats) else np.zeros(0, bool)
        feats, w = feats[keep], w[keep] * self.idf[feats[keep]]
        norm = float(np.linalg.norm(w))
        order = np.argsort(feats)
        return feats[order], (w[order] / norm if norm > 0 else w[order]).astype(np.float32)

    def _cosines(self, names: np.ndarray, feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Exact cosine of the query (features, weights) with each of `names` (sorted global ids)."""
        out = np.zeros(len(names), np.float32)
        if not len(names):
            return out
        qdense = np.zeros(len(self.idf), np.float32)
        qdense[feats] = weights
        seg_of = np.searchsorted(self.name_offsets, names, side="right") - 1
        for si in np.unique(seg_of):
            at_names = np.flatnonzero(seg_of == si)
            seg = self.segments[int(si)]
            local = names[at_names] - self.name_offsets[si]
            lo, hi = np.asarray(seg.indptr[local]), np.asarray(seg.indptr[local + 1])
            counts = hi - lo
            at = np.repeat(lo, counts) + _ranges(counts)
            cols = np.asarray(seg.indices[at])
            w = np.append(np.asarray(seg.tf[at]) * self.idf[cols], np.float32(0))  # a sentinel: names without n-grams
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            dot = np.add.reduceat(w * np.append(qdense[cols], np.float32(0)), starts)
            norm = np.sqrt(np.add.reduceat(w * w, starts))
            cos = np.where(norm > 0, dot / np.maximum(norm, 1e-30), 0.0)
            cos[counts == 0] = 0.0  # reduceat repeats a value for empty groups
            out[at_names] = cos
        return out

    def _candidates(self, feats: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Live names holding the query's rarest n-grams, up to `budget` posting entries (sorted, unique)."""
        if not len(feats):
            return np.zeros(0, np.int64)
        df = self.df[feats]
        order = np.argsort(df, kind="stable")
        take = order[: max(1, int(np.searchsorted(np.cumsum(df[order]), self.budget, side="right")))]
        tfeat, tw = feats[take], weights[take]
        names, wts = [], []
        for si, seg in enumerate(self.segments):
            inside = tfeat < seg.vocab_end
            f = tfeat[inside]
            lo, hi = np.asarray(seg.post_indptr[f]), np.asarray(seg.post_indptr[f + 1])
            counts = hi - lo
            names.append(np.asarray(seg.post_names[np.repeat(lo, counts) + _ranges(counts)]) + self.name_offsets[si])
            wts.append(np.repeat(tw[inside], counts))
        allnames = np.concatenate(names).astype(np.int64)
        allw = np.concatenate(wts)
        live = self.name_row[allnames] >= 0
        allnames, allw = allnames[live], allw[live]
        uniq, inv = np.unique(allnames, return_inverse=True)
        if len(uniq) <= self.rescore:
            return uniq
        # more candidates than are worth exact scores: keep those holding most of the query's weight
        share = np.bincount(inv, weights=allw, minlength=len(uniq))
        return np.sort(uniq[np.argpartition(-share, self.rescore - 1)[: self.rescore]])

    def search(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [Q, k], rows [Q, k]); best alias per entity; -1 rows where fewer than k match."""
        k = min(k, self.n)
        scores = np.zeros((len(texts), k), np.float32)
        rows = np.full((len(texts), k), -1, np.int64)
        if k <= 0:
            return scores, rows
        for qi, text in enumerate(texts):
            feats, weights = self._query(text)
            names = self._candidates(feats, weights)
            sims = self._cosines(names, feats, weights)
            ent = self.name_row[names]
            if not len(ent):
                continue
            # names are sorted, so one entity's names are adjacent: best name per entity
            first = np.concatenate([[0], np.flatnonzero(np.diff(ent)) + 1])
            best, ents = np.maximum.reduceat(sims, first), ent[first]
            kk = min(k, len(ents))
            top = np.argpartition(-best, kk - 1)[:kk]
            top = top[np.lexsort((ents[top], -best[top]))]  # score, then row: deterministic ties
            top = top[best[top] > 0]
            scores[qi, : len(top)] = best[top]
            rows[qi, : len(top)] = ents[top]
        return scores, rows

    def similarity(self, texts: list[str], rows: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Cosine of texts[i] with each entity of rows[i] (its best name or alias) -> list of [len(rows[i])]."""
        out = []
        for text, rr in zip(texts, rows):
            rr = np.asarray(rr, dtype=np.int64)
            if not len(rr):
                out.append(np.zeros(0, np.float32))
                continue
            feats, weights = self._query(text)
            per = self.row_count[rr]
            names = np.repeat(self.row_first[rr], per) + _ranges(per)
            order = np.argsort(names, kind="stable")
            sims = np.empty(len(names), np.float32)
            sims[order] = self._cosines(names[order], feats, weights)
            sims = np.append(sims, np.float32(0))  # an entity without names scores 0
            first = np.concatenate([[0], np.cumsum(per)[:-1]])
            best = np.maximum.reduceat(sims, np.minimum(first, len(names)))[: len(rr)]
            out.append(np.where(per > 0, best, 0.0).astype(np.float32))
        return out

    def nbytes(self) -> int:
        """Bytes of the segments' arrays (mapped from disk: resident only as far as read)."""
        return int(sum(s.nbytes() for s in self.segments))
