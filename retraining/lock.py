"""`JobLock`: one retraining job at a time across processes (an flock the kernel drops when its
holder dies), and `RetrainBusy`, the refusal that names the holder."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from .errors import RetrainBusy


def pid_alive(pid: int | None) -> bool:
    """True while `pid` runs (a zombie, i.e. exited but not yet reaped by its parent, counts as dead)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class JobLock:
    """One retraining job at a time, across processes.

    `fcntl.flock` on DATA_DIR/runs/retrain.lock. The kernel releases an flock when its holder's file
    descriptor closes, which includes the holder being killed or crashing, so a dead holder never
    blocks the next run and no stale-lock heuristics are needed. The file also holds the holder's
    pid, host, start time and run id (JSON), only to say who holds it; the flock is the truth.
    The file is never deleted (deleting a lock file lets two processes lock two different inodes).
    flock is per open file, so two JobLock objects in one process exclude each other too.
    (On NFS, flock is emulated with POSIX locks by Linux; keep DATA_DIR/runs on a local disk.)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None
        self.info: dict = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def read_info(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}  # being rewritten by its holder this instant: "unknown" is the honest answer

    def holder(self) -> dict | None:
        """Who holds the lock ({} if not yet known), or None when it is free. Never blocks."""
        if self.held:
            return dict(self.info)
        fd = self._open()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return self.read_info()
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def busy_message(self, info: dict | None = None) -> str:
        info = self.read_info() if info is None else info
        who = f"pid {info.get('pid', '?')}"
        if info.get("host") and info.get("host") != socket.gethostname():
            who += f" on {info['host']}"
        if info.get("run_id") is not None:
            who += f", run {info['run_id']}"
        return (
            f"another retraining run ({who}, started at {info.get('started_at', '?')}) holds the lock "
            f"{self.path}; wait for it to finish, or retry with wait (--wait)"
        )

    def acquire(
        self, wait: bool | float = False, *, poll: float = 0.25, on_wait: Callable[[dict], None] | None = None
    ) -> JobLock:
        """Take the lock. wait=False: refuse at once (after a 0.5 s grace, so a reader's brief probe
        never causes a refusal); True: wait as long as it takes; a number: at most that many seconds.
        Refusal raises `RetrainBusy` naming the holder."""
        if self.held:
            raise RuntimeError("JobLock.acquire: already held by this object")
        fd = self._open()
        start = time.monotonic()
        limit = 0.5 if wait is False else (None if wait is True else max(float(wait), 0.5))
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if limit is not None and time.monotonic() - start >= limit:
                info = self.read_info()
                os.close(fd)
                raise RetrainBusy(self.busy_message(info))
            if on_wait and not told and wait is not False:
                told = True
                on_wait(self.read_info())
            time.sleep(poll)
        self._fd = fd
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "run_id": None,
        }
        self._write_info()
        return self

    def update(self, **info) -> None:
        if not self.held:
            raise RuntimeError("JobLock.update: not held")
        self.info.update(info)
        self._write_info()

    def _write_info(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        assert self._fd is not None  # acquire sets it before the first write; update checks `held`
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it: no holder to name
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> JobLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()
