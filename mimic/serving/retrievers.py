"""A faiss retriever over an index's physical rows that grows with appended segments.

Why physical rows: a KB edit appends a segment and tombstones the rows it replaces. If faiss held
the live rows by position, every tombstone would shift the rows after it and the whole index would
have to be rebuilt (what made an import commit cost a full reload). Here faiss holds every row of
every segment in index order, deleted ones included; an appended segment is `add`ed (exact for flat
and fp16; for HNSW and IVF it is the same operation a build does, row by row, with the quantiser
trained when the index was made), and deleted rows are excluded at search time by a faiss
`IDSelectorBitmap`. An IVF index that has grown past `RETRAIN_GROWTH` times the rows it was trained
for is rebuilt (its lists were sized for the smaller KB).

Approximate kinds are saved as `faiss_<name>.index` with `faiss_<name>.json` naming the segments
it holds; a load reads it and adds the rows of later segments, and it is saved again once that tail
passes `SAVE_TAIL` of its rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mimic.atomic import atomic_file, write_json_atomic
from mimic.serving import vector_index as vi

CHUNK = 16_384  # rows read and added at a time: bounds the memory a load or rebuild takes
SAVE_TAIL = 0.1
RETRAIN_GROWTH = 4.0

# reader(start, stop) -> float32 vectors of physical rows [start, stop) (unit-norm where the retriever needs it)
Reader = Callable[[int, int], np.ndarray]


class Retriever:
    """faiss over the physical rows `only` selects (all, or those with an image); search -> live rows."""

    def __init__(self, name: str, kind: str, dim: int, root: Path | None, log: Callable[[str], None] | None = None):
        self.name, self.kind, self.dim, self.root, self.log = name, kind, dim, root, log
        self.idx: Any = None  # a faiss index
        self.phys = np.zeros(0, np.int64)  # faiss position -> physical row
        self.covered = 0  # physical rows looked at (those without an image are skipped by the image retriever)
        self.saved_rows = 0
        self.trained_for = 0
        self._phys_to_live = np.zeros(0, np.int64)
        self._params: Any = None
        self._bitmap: np.ndarray | None = None
        self._sel: Any = None
        self.live = 0

    # -- growth --------------------------------------------------------------------------------
    @property
    def _paths(self) -> tuple[Path, Path] | None:
        if self.root is None or self.kind not in vi.APPROXIMATE:
            return None
        return self.root / f"faiss_{self.name}.index", self.root / f"faiss_{self.name}.json"

    def sync(
        self, segments: Sequence[str], sizes: Sequence[int], read: Reader, select: np.ndarray | None, legacy_ok: bool
    ):
        """Hold every physical row of `segments` (sizes: rows each). select [P] bool: the rows this
        retriever holds (None: all). legacy_ok: a saved index without its .json may be trusted (no
        tombstones: its rows are the physical rows)."""
        total = int(sum(sizes))
        wanted = int(select.sum()) if select is not None else total
        if self.idx is None:
            self._read_saved(segments, sizes, select, legacy_ok)
        if (
            self.idx is not None
            and self.kind in ("ivf", "ivfpq")
            and wanted > RETRAIN_GROWTH * max(self.trained_for, 1)
        ):
            self._say(f"faiss {self.kind} {self.name}: {wanted:,} rows, trained for {self.trained_for:,}: rebuilding")
            self.idx, self.covered, self.phys, self.saved_rows = None, 0, np.zeros(0, np.int64), 0
        if self.idx is None:
            self.idx = vi.make_index(self.dim, max(wanted, 1), self.kind)
            self.trained_for = wanted
            if not self.idx.is_trained:
                nlist = faiss.extract_index_ivf(self.idx).nlist
                self.idx.train(_sample(total, vi.TRAIN_SAMPLE * nlist, read, select))
        t0, start = time.perf_counter(), self.covered
        for s in range(self.covered, total, CHUNK):
            e = min(total, s + CHUNK)
            x = read(s, e)
            rows = np.arange(s, e, dtype=np.int64)
            if select is not None:
                keep = select[s:e]
                x, rows = x[keep], rows[keep]
            if len(rows):
                self.idx.add(np.ascontiguousarray(x, dtype=np.float32))
                self.phys = np.concatenate([self.phys, rows])
            self.covered = e
            if total - start > CHUNK:
                self._say(f"faiss {self.kind} {self.name}: {e:,} / {total:,} rows ({time.perf_counter() - t0:.0f} s)")
        paths = self._paths
        if paths is not None and self.idx.ntotal - self.saved_rows > SAVE_TAIL * max(self.idx.ntotal, 1):
            try:
                with atomic_file(paths[0]) as tmp:
                    faiss.write_index(self.idx, str(tmp))
                covered = {"segments": list(segments), "physical_rows": total, "ntotal": int(self.idx.ntotal)}
                write_json_atomic(paths[1], covered | {"kind": self.kind, "trained_for": self.trained_for})
                self.saved_rows = int(self.idx.ntotal)
            except OSError as exc:  # a read-only index folder still serves; it adds the tail next time
                self._say(f"could not save {paths[0]}: {exc}")

    def _read_saved(self, segments, sizes, select, legacy_ok: bool) -> None:
        paths = self._paths
        if paths is None or not paths[0].exists():
            return
        try:
            meta = json.loads(paths[1].read_text()) if paths[1].exists() else None
        except (OSError, ValueError):
            meta = None
        if meta is None:
            if not legacy_ok:
                return
            meta = {"segments": list(segments), "physical_rows": int(sum(sizes)), "kind": self.kind}
        n = len(meta.get("segments", []))
        covered = int(sum(sizes[:n]))
        if meta.get("kind") != self.kind or list(segments[:n]) != meta["segments"] or meta["physical_rows"] != covered:
            return
        phys = np.arange(covered, dtype=np.int64)
        if select is not None:
            phys = phys[select[:covered]]
        try:
            idx = faiss.read_index(str(paths[0]))
        except RuntimeError:
            return
        if idx.ntotal != len(phys) or idx.d != self.dim:
            return
        vi._set_search_params(idx, idx.ntotal)
        self.idx, self.phys, self.covered = idx, phys, covered
        self.saved_rows = int(idx.ntotal)
        self.trained_for = int(meta.get("trained_for", idx.ntotal))

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    # -- live rows -------------------------------------------------------------------------------
    def bind(self, phys_to_live: np.ndarray) -> None:
        """phys_to_live [P]: each physical row's live row, -1 where deleted."""
        self._phys_to_live = phys_to_live
        alive = phys_to_live[self.phys] >= 0
        self.live = int(alive.sum())
        self._params = None
        self._bitmap = None
        if self.live < len(self.phys):
            bitmap = np.packbits(alive, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(alive), faiss.swig_ptr(bitmap))
            params: Any
            if isinstance(self.idx, faiss.IndexHNSW):
                params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                params.efSearch = self.idx.hnsw.efSearch
            elif isinstance(self.idx, faiss.IndexIVF):
                params = faiss.SearchParametersIVF()
                params.nprobe = self.idx.nprobe
            else:
                params = faiss.SearchParameters()
            params.sel = sel
            self._params, self._sel, self._bitmap = params, sel, bitmap  # the parameters own neither

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [Q, k], live rows [Q, k]; -1 where fewer than k live rows were found)."""
        k = max(1, min(k, max(self.live, 1)))
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.live == 0 or self.idx is None:
            return np.zeros((len(q), k), np.float32), np.full((len(q), k), -1, np.int64)
        D, pos = self.idx.search(q, k) if self._params is None else self.idx.search(q, k, params=self._params)
        rows = np.where(pos >= 0, self._phys_to_live[self.phys[np.maximum(pos, 0)]], -1)
        return D, rows

    @property
    def ntotal(self) -> int:
        return int(self.idx.ntotal) if self.idx is not None else 0


def _sample(n: int, size: int, read: Reader, select: np.ndarray | None) -> np.ndarray:
    """Up to `size` selected rows spread evenly over the physical rows (contiguous runs: sequential reads)."""
    runs = 64
    if n <= size:
        spans = [(0, n)]
    else:
        per = size // runs
        spans = [(int(s), int(s) + per) for s in np.linspace(0, n - per, runs).astype(np.int64)]
    parts = []
    for s, e in spans:
        x = read(s, e)
        parts.append(x[select[s:e]] if select is not None else x)
    if select is not None and n > size and sum(len(p) for p in parts) < size // 4:  # few rows selected: all of them
        parts = [read(s, min(n, s + CHUNK))[select[s : min(n, s + CHUNK)]] for s in range(0, n, CHUNK)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
