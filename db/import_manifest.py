"""Resumable KB imports: a manifest per imported file, so an import cut by a crash, a restart or a
cancel continues where it stopped instead of storing and indexing its first rows again.

    manifests = ImportManifests(settings.data_dir / "imports")
    m = manifests.begin(upload_path, author="ana")   # same bytes as an unfinished import: its manifest
    for chunk in ...:                                # after each committed chunk:
        manifests.advance(m, rows_done=report.rows_read, imported=n)
    manifests.finish(m, "done")                      # the kept copy of the file goes

A file is known by the SHA-256 of its bytes, so a re-upload of the same file (under any name) finds
the manifest. `begin` keeps a copy of the file under `<folder>/<sha256>/` while the import is
unfinished (Gradio's upload folder does not survive a restart): an app that restarts finds the
unfinished manifests (`unfinished()`) and their copies and resumes them. `rows_done` counts the rows
of the file read up to and including the last entity of the last committed chunk (kept and
rejected rows alike, as `mimic.data.kb_files.KBReport.rows_read` counts them); a resumed import
reads those rows again without storing them. A row stored twice is harmless anyway (an unchanged
entity is not stored again), so a crash between a commit and its manifest write costs one chunk of
work, never a wrong KB. Every manifest write is atomic (a temporary file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MB blocks (bounded memory)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


@dataclass
class ImportManifest:
    """Where one file's import stands. `copy`: the kept copy of the file (relative to the folder)."""

    sha256: str
    name: str  # the file's name as uploaded (no folder: the upload folder is a server path)
    size: int
    author: str
    copy: str
    source: str = ""  # where the file was imported from (a server path: never shown)
    state: str = RUNNING
    rows_done: int = 0
    imported: int = 0  # entities stored and indexed so far (over every run of the import)
    runs: int = 1  # how many times the import was started (1 + resumes)
    started_at: float = 0.0
    updated_at: float = 0.0

    @property
    def unfinished(self) -> bool:
        return self.state != DONE


class ImportManifests:
    """The manifests of one DATA_DIR (`<folder>/<sha256>.json`), with the kept copies of files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, sha: str) -> Path:
        return self.folder / f"{sha}.json"

    def get(self, sha: str) -> ImportManifest | None:
        """The manifest of the file with this SHA-256, or None (none, or unreadable: then it starts over)."""
        try:
            data = json.loads(self._path(sha).read_text(encoding="utf-8"))
            return ImportManifest(**data)
        except (OSError, ValueError, TypeError):
            return None

    def begin(self, path: str | Path, author: str, name: str | None = None) -> ImportManifest:
        """The manifest to import `path` under: the unfinished one of the same bytes (its run count
        bumped, `rows_done` kept) or a new one at row 0; either way the file's copy is in place and
        the state is running. A finished import of the same bytes starts over (a re-import)."""
        path = Path(path)
        sha = file_sha256(path)
        old = self.get(sha)
        now = time.time()
        if old is not None and old.unfinished and (self.folder / old.copy).is_file():
            old.state, old.runs, old.updated_at, old.author = RUNNING, old.runs + 1, now, author
            if path.resolve() != self.file(old).resolve():
                old.source = str(path.resolve())
            self._write(old)
            return old
        copy = f"{sha}/{Path(name or path.name).name}"
        target = self.folder / copy
        if path.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        m = ImportManifest(
            sha,
            Path(name or path.name).name,
            path.stat().st_size,
            author,
            copy,
            source=str(path.resolve()),
            started_at=now,
            updated_at=now,
        )
        self._write(m)
        return m

    def file(self, m: ImportManifest) -> Path:
        """The kept copy of the manifest's file (what a resumed import reads)."""
        return self.folder / m.copy

    def source(self, m: ImportManifest) -> Path:
        """What a resumed import reads: the file it was imported from while it is still there with
        the same size (images named beside it resolve there), else the kept copy."""
        src = Path(m.source) if m.source else None
        try:
            if src is not None and src.is_file() and src.stat().st_size == m.size:
                return src
        except OSError:
            pass
        return self.file(m)

    def advance(self, m: ImportManifest, rows_done: int, imported: int) -> None:
        """Record a committed chunk: the rows read through its last entity, the entities imported."""
        m.rows_done, m.imported, m.updated_at = int(rows_done), int(imported), time.time()
        self._write(m)

    def finish(self, m: ImportManifest, state: str) -> None:
        """The import ended: `done` drops the kept copy (nothing left to resume); `cancelled` and
        `failed` keep it, so uploading the same file again continues from `rows_done`."""
        m.state, m.updated_at = state, time.time()
        self._write(m)
        if state == DONE:
            shutil.rmtree(self.folder / m.sha256, ignore_errors=True)

    def unfinished(self) -> list[ImportManifest]:
        """Imports a stop cut short while running (a crash or a restart), oldest first: the ones an
        app resumes at start. Cancelled and failed imports wait for their file to be uploaded again."""
        out = []
        for p in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            m = self.get(p.stem)
            if m is not None and m.state == RUNNING and (self.folder / m.copy).is_file():
                out.append(m)
        return sorted(out, key=lambda m: m.started_at)

    def _write(self, m: ImportManifest) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".manifest-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(m), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(m.sha256))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
