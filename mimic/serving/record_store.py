"""Entity records (id, name, text, aliases, images) of an index, read one line at a time.

Why: a million entity records as Python dicts cost about a gigabyte of RAM, and serving reads only
the dozen records it returns. Version-2 segments keep them in `records.jsonl` (one JSON object a
line) with `records_offsets.npy` (int64 byte offsets, n + 1 of them) and the ids alone in
`entity_ids.json`; version-1 segments (`ids.json`, every record in one JSON list) are loaded whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from mimic.atomic import atomic_file

RECORDS = "records.jsonl"
OFFSETS = "records_offsets.npy"
IDS = "entity_ids.json"
LEGACY = "ids.json"


def write_records(seg: Path, records: Iterable[dict]) -> None:
    """Write a segment's records (v2 layout); each file appears atomically."""
    ids, offsets, at = [], [0], 0
    with atomic_file(seg / RECORDS) as tmp, open(tmp, "wb") as f:
        for r in records:
            line = (json.dumps(r, ensure_ascii=False) + "\n").encode()
            f.write(line)
            at += len(line)
            offsets.append(at)
            ids.append(r["id"])
    with atomic_file(seg / OFFSETS) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(offsets, dtype=np.int64))
    with atomic_file(seg / IDS) as tmp:
        Path(tmp).write_text(json.dumps(ids, ensure_ascii=False))


def segment_ids(seg: Path) -> list[str]:
    if (seg / IDS).exists():
        return json.loads((seg / IDS).read_text())
    return [r["id"] for r in json.loads((seg / LEGACY).read_text())]


class _SegmentRecords:
    """Every record of one segment (deleted rows included)."""

    def __init__(self, seg: Path):
        self.path = seg
        self.fd: int | None = None
        if (seg / RECORDS).exists():
            self.fd = os.open(seg / RECORDS, os.O_RDONLY)
            self.offsets = np.load(seg / OFFSETS, mmap_mode="r")
            self.loaded: list[dict] | None = None
        else:  # format version 1
            self.loaded = json.loads((seg / LEGACY).read_text())

    def get(self, i: int) -> dict:
        if self.loaded is not None:
            return self.loaded[i]
        assert self.fd is not None
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(os.pread(self.fd, b - a, a))  # pread: safe from several threads

    def __len__(self) -> int:
        return len(self.loaded) if self.loaded is not None else len(self.offsets) - 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()


class RecordStore(Sequence):
    """records[row] -> dict, for live index rows (segments and tombstones already applied).

    reuse: a store of the same index before an update; its open segments are shared, not reopened."""

    def __init__(self, segments: Sequence[tuple[Path, np.ndarray]], reuse: RecordStore | None = None):
        opened = {s.path: s for s in reuse._segs} if reuse is not None else {}
        self._segs: list[_SegmentRecords] = [opened.get(p) or _SegmentRecords(p) for p, _ in segments]
        self._seg_of = np.concatenate([np.full(len(live), i, np.int32) for i, (_, live) in enumerate(segments)])
        self._local = np.concatenate([np.asarray(live, np.int64) for _, live in segments])

    def __len__(self) -> int:
        return len(self._local)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range 0..{len(self) - 1}")
        return self._segs[int(self._seg_of[i])].get(int(self._local[i]))

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Close the segment files now (a store sharing them must not be used after)."""
        for s in self._segs:
            s.close()
