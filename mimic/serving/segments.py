"""Small pieces of the index's segment bookkeeping (`mimic.serving.index`): a segment encoded and
waiting for its commit, the growable array the zero-shot global vectors live in, and the removal of
a version-1 lexical folder."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class PreparedSegment:
    """An encoded segment waiting in `folder` to be committed under `name`."""

    name: str
    folder: Path
    ids: list[str]


_NAME_LOCK = threading.Lock()


class _Grow:
    """A float32 [n, D] array grown by appends with doubling capacity (amortised O(1) per row)."""

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self.n = 0

    def append(self, a: np.ndarray) -> None:
        if self._buf is None:
            self._buf = np.empty((max(len(a), 16), a.shape[1]), np.float32)
        if self.n + len(a) > len(self._buf):
            bigger = np.empty((max(2 * len(self._buf), self.n + len(a)), self._buf.shape[1]), np.float32)
            bigger[: self.n] = self._buf[: self.n]
            self._buf = bigger
        self._buf[self.n : self.n + len(a)] = a
        self.n += len(a)

    def view(self) -> np.ndarray:
        return self._buf[: self.n] if self._buf is not None else np.zeros((0, 0), np.float32)


def _drop_legacy_lexical(folder: Path) -> None:
    """Remove a version-1 lexical index (one fitted matrix for the whole index; now one part per segment)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return
    if meta.get("version") == 1:
        for p in folder.iterdir():
            if p.is_file():
                p.unlink(missing_ok=True)
