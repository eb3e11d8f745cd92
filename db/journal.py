"""Append-only JSONL journal of annotation events: the write-ahead copy of the human work.

Every write transaction of the store that records an annotator's decision (submit, skip, undo)
appends its events to this file *before* it commits, as one group of lines:

    {"v": 1, "txn": "<uuid>", "k": 0, "n": 3, "type": "annotation", ...}   one line per event
    {"v": 1, "txn": "<uuid>", "k": 1, "n": 3, ...}
    ...

written with a single `write()` on a file opened with O_APPEND, then flushed with `fsync`. If the
commit then fails, a line `{"v": 1, "type": "abort", "txn": "<uuid>"}` cancels the group.

Invariant (see `store.AnnotationStore.reconcile`):
  * at every instant, every committed transaction's events are in the journal as a complete
    group (journal ⊇ database);
  * a complete, non-aborted group that is not in the database was written by a transaction
    that died between its journal write and its commit (process killed, power lost); the
    store re-applies such groups at start, each as one transaction, so afterwards
    journal = database;
  * an incomplete group (a write cut short by a crash; only possible at the end of the file)
    never committed and is ignored, as are unparsable lines.

The journal names everything by stable keys (request ids, mention uids, entity ids, annotator
names) and carries enough of the mention, entity and prediction to rebuild the annotations into
an empty database.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

JOURNAL_VERSION = 1


def _fsync_dir(path: Path) -> None:
    """Make a newly created file's directory entry durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """Appends event groups to one JSONL file. Thread-safe; several processes may share the file."""

    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    def _ensure_open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            _fsync_dir(self.path.parent)
        self._fd, self._pid = fd, os.getpid()
        return fd

    def _write(self, data: bytes) -> None:
        fd = self._ensure_open()
        # A crash may have left a torn last line without its newline: start on a fresh line so the
        # torn bytes never glue onto (and corrupt) the next record.
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:  # os.write may write less than asked (signals, quotas): finish the job
            n = os.write(fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(fd)

    def append_group(self, events: list[dict]) -> str:
        """Write `events` as one group (one write + fsync); return the group's transaction id."""
        txn = uuid.uuid4().hex
        n = len(events)
        lines = [
            json.dumps(
                {"v": JOURNAL_VERSION, "txn": txn, "k": k, "n": n, **ev},
                ensure_ascii=False,
                separators=(",", ":"),
                default=str,
            )
            + "\n"
            for k, ev in enumerate(events)
        ]
        with self._lock:
            self._write("".join(lines).encode("utf-8"))
        return txn

    def append_abort(self, txn: str) -> None:
        """Cancel a group whose transaction did not commit."""
        with self._lock:
            self._write((json.dumps({"v": JOURNAL_VERSION, "type": "abort", "txn": txn}) + "\n").encode())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = self._pid = None


@dataclass
class JournalScan:
    """What `scan_journal` found: complete non-aborted groups in file order, and what it skipped."""

    groups: list[list[dict]] = field(default_factory=list)
    lines: int = 0
    aborted: int = 0
    incomplete: int = 0
    bad_lines: list[int] = field(default_factory=list)

    def events(self) -> Iterator[dict]:
        for g in self.groups:
            yield from g


def scan_journal(path: str | Path) -> JournalScan:
    """Read the journal (binary, split on b"\\n" only, so no Unicode line separator can split a record)."""
    path = Path(path)
    scan = JournalScan()
    if not path.exists():
        return scan
    order: list[str] = []
    groups: dict[str, list[dict]] = {}
    aborted: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f.read().split(b"\n"), 1):
            if not raw.strip():
                continue
            scan.lines += 1
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                scan.bad_lines.append(lineno)
                continue
            if not isinstance(obj, dict) or "txn" not in obj:
                scan.bad_lines.append(lineno)
                continue
            if obj.get("type") == "abort":
                aborted.add(obj["txn"])
                continue
            txn = obj["txn"]
            if txn not in groups:
                groups[txn] = []
                order.append(txn)
            groups[txn].append(obj)
    for txn in order:
        events = sorted(groups[txn], key=lambda e: e.get("k", 0))
        n = events[0].get("n", len(events))
        if txn in aborted:
            scan.aborted += 1
        elif [e.get("k") for e in events] != list(range(n)):
            scan.incomplete += 1
        else:
            scan.groups.append(events)
    return scan
