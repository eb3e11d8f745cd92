"""faiss indexes over the global vectors (inner product on L2-normalised or model retrieval rows).

Kinds (`--faiss`): flat (exact; rebuilt on load, it is a copy of the vectors), fp16 (exact up to
fp16), hnsw (graph, M = 32, efSearch 128), ivf (inverted lists, nlist = 4 sqrt(n) (at most n/8), nprobe: `ivf_nprobe`),
ivfpq (ivf with product-quantised codes, one byte per 3 dimensions: approximate scores, which
only choose the shortlist; the re-ranker scores it exactly from the token store).
Which one to serve a million entities with was measured (`bench-link --compare-faiss`, recall@k
against flat and RAM): see docs/serving.md#scale.

Approximate kinds are trained and filled at build time in chunks and saved as
`faiss_<name>.index`; a build that is interrupted keeps the finished ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mimic.atomic import atomic_file

KINDS = ("flat", "fp16", "hnsw", "ivf", "ivfpq")
APPROXIMATE = ("hnsw", "ivf", "ivfpq")
TRAIN_SAMPLE = 64  # points per IVF list used to train the coarse quantiser (and PQ)


SCAN_MIN = 16_384  # rows an IVF search scans at least


def ivf_nprobe(nlist: int, n: int) -> int:
    """Inverted lists an IVF search over n rows visits: 1/16 of them, and enough for SCAN_MIN rows.

    Measured with bench-link's model (its "model" and "text" retrievers, 100 queries, recall of the
    exact top 32): at 1M rows (nlist 4,000) nlist/16 kept 1.000 and 0.9997 against 1.000 with
    nlist/8 and halved the search (model 9.1 -> 4.9 ms, one thread); at 100,000 rows (lists of
    ~80) nlist/16 alone fell to 0.994, hence the floor in rows scanned (16,384 rows = 208 lists there)."""
    return int(min(nlist, max(1, nlist // 16, -(-SCAN_MIN * nlist // max(n, 1)))))


def make_index(d: int, n: int, kind: str):
    """An empty (untrained) inner-product index of `kind` for n vectors of dimension d."""
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind == "fp16":
        return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efSearch = 128
        return graph
    if kind in ("ivf", "ivfpq"):
        idx: Any
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 8 or 1))  # training needs points for every list
        if kind == "ivf":
            idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = next(m for m in (d // 3, d // 4, d // 2, d // 6, d // 8, d, 1) if m >= 1 and d % m == 0)
            bits = int(min(8, max(1, np.log2(max(n, 2)) - 2)))  # 256 codes need >= 1024 points
            idx = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, bits, faiss.METRIC_INNER_PRODUCT)
        idx.nprobe = ivf_nprobe(nlist, n)
        return idx
    raise ValueError(f"unknown faiss index kind {kind!r} (one of {', '.join(KINDS)})")


def build_index(
    n: int,
    d: int,
    rows: Callable[[int, int], np.ndarray],
    kind: str,
    path: Path | None = None,
    chunk: int = 100_000,
    log: Callable[[str], None] | None = None,
):
    """Build an index from rows(start, stop) -> float32 [stop - start, d], added `chunk` at a time.

    An approximate index found at `path` with n rows is read instead of rebuilt; a new one is
    written there (atomically) once complete."""
    if path is not None and path.exists() and kind in APPROXIMATE:
        idx = faiss.read_index(str(path))
        if idx.ntotal == n and idx.d == d:
            _set_search_params(idx, n)
            return idx
    t0 = time.perf_counter()
    idx = make_index(d, n, kind)
    if not idx.is_trained:
        nlist = faiss.extract_index_ivf(idx).nlist
        sample = _sample(n, TRAIN_SAMPLE * nlist, rows)
        idx.train(sample)
    for s in range(0, n, chunk):
        idx.add(np.ascontiguousarray(rows(s, min(n, s + chunk)), dtype=np.float32))
        if log is not None and n > chunk:
            log(f"faiss {kind}: {min(n, s + chunk):,} / {n:,} rows ({time.perf_counter() - t0:.0f} s)")
    if path is not None and kind in APPROXIMATE:
        with atomic_file(path) as tmp:
            faiss.write_index(idx, str(tmp))
    return idx


def _set_search_params(idx, n: int) -> None:
    """Search-time settings are not all saved with an index: set them again after reading one."""
    if isinstance(idx, faiss.IndexHNSW):
        idx.hnsw.efSearch = 128
    elif isinstance(idx, faiss.IndexIVF):
        idx.nprobe = ivf_nprobe(idx.nlist, n)


def _sample(n: int, size: int, rows: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """Up to `size` rows spread evenly over the KB (contiguous runs, so reads stay sequential)."""
    if n <= size:
        return np.ascontiguousarray(rows(0, n), dtype=np.float32)
    runs = 64
    per = size // runs
    starts = np.linspace(0, n - per, runs).astype(np.int64)
    return np.ascontiguousarray(np.concatenate([rows(int(s), int(s) + per) for s in starts]), dtype=np.float32)


def index_bytes(idx) -> int:
    """RAM an index holds (its serialised size: vectors or codes, graph links, lists)."""
    return int(faiss.serialize_index(idx).nbytes)


def recall_at_k(exact_rows: np.ndarray, approx_rows: np.ndarray) -> float:
    """Mean fraction of the exact top-k rows found in the approximate top-k ([Q, k] each)."""
    k = exact_rows.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx_rows, exact_rows)]))
