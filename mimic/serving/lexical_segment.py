"""One index segment's part of the lexical retriever: character n-gram term frequencies, fitted once.

Why per segment: the TF-IDF weights of every name depend on the document frequencies of the whole
KB, so an index that stores fitted (normalised TF-IDF) rows must refit everything when a segment is
appended. Here a segment stores only what does not change with the rest of the KB: each name's
n-gram ids with their sublinear term frequency (1 + ln tf) and the postings (n-gram -> names). The
idf and each name's norm are computed at query time from the current document frequencies (the
segments' sums less the deleted names'), for the few thousand candidate names a query scores. So
appending a segment fits only its own names, and the scores equal those of a single refit
`TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)` over the live names.

n-gram ids are global: a segment adds the n-grams first seen in it after those of the segments
before it (its `vocab.json` lists them), so segments are fitted and loaded in the index's order.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mimic.atomic import atomic_file, write_json_atomic

VERSION = 2
NGRAMS = (2, 4)
_ARRAYS = ("indptr", "indices", "tf", "post_indptr", "post_names", "owner", "starts")
_WHITE = re.compile(r"\s\s+")


def analyze(text: str) -> list[str]:
    """The n-grams of `text` as scikit-learn's char_wb analyzer (lowercase, ngram_range (2, 4)) yields them."""
    text = _WHITE.sub(" ", text.lower())
    lo, hi = NGRAMS
    out: list[str] = []
    add = out.append
    for w in text.split():
        w = " " + w + " "
        wl = len(w)
        for n in range(lo, hi + 1):
            offset = 0
            add(w[offset : offset + n])
            while offset + n < wl:
                offset += 1
                add(w[offset : offset + n])
            if offset == 0:  # a short word counts once
                break
    return out


def term_frequencies(text: str, vocab: dict[str, int]) -> dict[int, float]:
    """{n-gram id: 1 + ln count} of the n-grams of `text` known to `vocab`."""
    counts: dict[int, int] = {}
    for g in analyze(text):
        f = vocab.get(g)
        if f is not None:
            counts[f] = counts.get(f, 0) + 1
    return {f: 1.0 + math.log(c) for f, c in counts.items()}


class Vocabulary:
    """n-gram -> global id, in the order the segments added them."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def extend(self, grams: Iterable[str]) -> None:
        for g in grams:
            self.ids[g] = len(self.ids)


class LexSegment:
    """One segment's names: CSR rows (n-gram ids, 1 + ln tf) and postings (n-gram -> local names).

    owner[name] = the segment-local entity row of each name; starts[row] .. starts[row + 1] = the
    names of entity row `row` (name, then aliases); vocab_start .. vocab_end: the n-gram ids it added."""

    indptr: np.ndarray
    indices: np.ndarray
    tf: np.ndarray
    post_indptr: np.ndarray
    post_names: np.ndarray
    owner: np.ndarray
    starts: np.ndarray

    def __init__(self, rows: int, vocab_start: int, new_grams: list[str], arrays: dict[str, np.ndarray]):
        self.rows, self.vocab_start, self.new_grams = rows, vocab_start, new_grams
        for k, v in arrays.items():
            setattr(self, k, v)
        self.vocab_end = vocab_start + len(new_grams)
        self.names = len(self.owner)
        self.df = np.diff(np.asarray(self.post_indptr)).astype(np.int64)  # [vocab_end]

    @classmethod
    def fit(cls, records: Iterable[dict], vocab: Vocabulary) -> LexSegment:
        """Fit the names and aliases of `records` (every row of the segment, in order); `vocab` is not
        changed (the caller extends it with `new_grams` once the segment is kept)."""
        known, new = vocab.ids, dict[str, int]()
        base = len(known)
        indptr, indices, tf, owner, starts = array("q", [0]), array("i"), array("f"), array("i"), array("q", [0])
        rows = 0
        for local, rec in enumerate(records):
            rows = local + 1
            for s in [rec["name"], *rec.get("aliases", [])]:
                if not s:
                    continue
                counts: dict[int, int] = {}
                for g in analyze(s):
                    f = known.get(g)
                    if f is None:
                        f = new.get(g)
                        if f is None:
                            f = new[g] = base + len(new)
                    counts[f] = counts.get(f, 0) + 1
                for f, c in counts.items():
                    indices.append(f)
                    tf.append(1.0 + math.log(c))
                indptr.append(len(indices))
                owner.append(local)
            starts.append(len(owner))
        idx = np.frombuffer(indices, dtype=np.int32) if len(indices) else np.zeros(0, np.int32)
        end = base + len(new)
        name_of = np.repeat(
            np.arange(len(owner), dtype=np.int32), np.diff(np.frombuffer(indptr, dtype=np.int64)).astype(np.int64)
        )
        order = np.argsort(idx, kind="stable")  # names stay ascending within each n-gram
        post_indptr = np.concatenate([[0], np.cumsum(np.bincount(idx, minlength=end))]).astype(np.int64)
        arrays: dict[str, np.ndarray] = {
            "indptr": np.frombuffer(indptr, dtype=np.int64).copy(),
            "indices": idx.copy(),
            "tf": (np.frombuffer(tf, dtype=np.float32) if len(tf) else np.zeros(0, np.float32)).copy(),
            "post_indptr": post_indptr,
            "post_names": name_of[order],
            "owner": (np.frombuffer(owner, dtype=np.int32) if len(owner) else np.zeros(0, np.int32)).copy(),
            "starts": np.frombuffer(starts, dtype=np.int64).copy(),
        }
        return cls(rows, base, sorted(new, key=new.__getitem__), arrays)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: Path, prev: str) -> None:
        """prev: a key of the segments before this one (their n-gram ids are the ones this builds on)."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            with atomic_file(folder / f"{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, np.asarray(getattr(self, name)))
        write_json_atomic(folder / "vocab.json", self.new_grams)
        meta = {"version": VERSION, "rows": self.rows, "vocab_start": self.vocab_start, "prev": prev}
        write_json_atomic(folder / "meta.json", meta | {"vocab_end": self.vocab_end})  # last

    @classmethod
    def load(cls, folder: Path, rows: int, vocab_start: int, prev: str) -> LexSegment | None:
        """The saved segment if it was fitted for these rows after the same segments, else None."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("version") != VERSION or (meta.get("rows"), meta.get("vocab_start"), meta.get("prev")) != (
                rows,
                vocab_start,
                prev,
            ):
                return None
            grams = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
            arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in _ARRAYS}
        except (OSError, ValueError):
            return None
        if len(grams) != meta.get("vocab_end", -1) - vocab_start:
            return None
        return cls(rows, vocab_start, grams, arrays)

    def nbytes(self) -> int:
        return int(sum(np.asarray(getattr(self, a)).nbytes for a in _ARRAYS))
