"""Atomic writes of whole folders and single files.

A folder is filled in a temporary sibling and renamed into place, so a reader (or a crash) only
ever sees the old complete folder or the new complete one. Replacing an existing folder takes two
renames (old away, new in); if a crash falls between them `recover_dir` puts the old one back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def recover_dir(target: str | Path) -> None:
    """If `target` is missing but a displaced old copy exists (crash mid-swap), restore it."""
    target = Path(target)
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"))
    if olds:
        os.rename(olds[-1], target)


def _sibling(root: Path, tag: str) -> Path:
    """Create a fresh hidden directory next to `root` (normal permissions, unlike mkdtemp's 0700)."""
    while True:
        p = root.parent / f".{root.name}.{tag}-{secrets.token_hex(4)}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_dir(root: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to `root`, on failure delete it.

    A sibling (same parent) guarantees the final rename stays on one filesystem and is atomic.
    With `overwrite`, an existing `root` is renamed away first and deleted only once the new one
    is in place, so readers see either the old or the new dataset, never a mix.
    """
    root = Path(root).absolute()
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} already exists (pass overwrite=True to replace it)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(root, "tmp")
    try:
        yield tmp
        if not (root.exists() or root.is_symlink()):
            os.rename(tmp, root)
            return
        if not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{root} already exists (pass overwrite=True to replace it)")
        old = root.parent / f".{root.name}.old-{secrets.token_hex(4)}"
        os.rename(root, old)
        try:
            os.rename(tmp, root)
        except BaseException:
            os.rename(old, root)  # put the previous dataset back
            raise
        _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dir_atomic(target: str | Path, fill: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Create `target` by calling `fill(tmp_dir)` in a temporary sibling and renaming it into place."""
    recover_dir(target)
    with atomic_dir(target, overwrite) as tmp:
        fill(tmp)
        _fsync_tree(tmp)
    return Path(target)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write `path` through; on success fsync it and rename it
    over `path`, on failure delete it. For writers that want a file name (numpy, zipfile, faiss)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
