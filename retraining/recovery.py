"""Runs whose process died: recorded as failed, and half-copied version folders removed."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .config import LOCK_NAME
from .errors import RetrainBusy
from .lock import JobLock, pid_alive
from .progress import run_dir, write_progress

log = logging.getLogger("mimic.retrain")


def recover_stale_runs(store, *, _lock_held: bool = False, _current_run: int | None = None) -> list[int]:
    """Mark as failed the runs whose process died: every "running" run while nobody holds the job
    lock (a live run always holds it), and "queued" runs whose recorded process is gone.
    Does nothing while another process holds the lock (that holder already did this when it
    started). Returns the ids marked failed."""
    data_dir = store.settings.data_dir
    lock = JobLock(Path(data_dir).absolute() / "runs" / LOCK_NAME)
    if not _lock_held:
        try:
            lock.acquire(wait=False)
        except RetrainBusy:
            return []
    marked = []
    try:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for r in store.list_training_runs():
            if r.id == _current_run or r.status not in ("running", "queued"):
                continue
            pid = (r.metrics or {}).get("pid")
            if r.status == "queued":
                # A queued run's job process may still be starting or waiting for the lock; without
                # a recorded process (its starter died before spawning it) give it 10 minutes.
                age = datetime.now(UTC) - r.created_at
                if pid_alive(pid) or (pid is None and age < timedelta(minutes=10)):
                    continue
            what = "was killed or crashed" if r.status == "running" else "ended before it started"
            err = (
                f"the retraining process (pid {pid if pid is not None else '?'}) {what} without finishing "
                f"the run; found at {now} while no process held the job lock. Log: {r.log_path or '-'}"
            )
            try:
                store.finish_training_run(r.id, "failed", error=err)
            except Exception as exc:  # e.g. another recoverer finished it first
                log.warning("could not mark run %d failed: %s", r.id, exc)
                continue
            if (run_dir(data_dir, r.id) / "progress.json").exists():
                write_progress(data_dir, r.id, status="failed", message=err)
            log.warning("run %d marked failed: %s", r.id, err)
            marked.append(r.id)
        return marked
    finally:
        if not _lock_held:
            lock.release()


def clean_partial_versions(models_path: Path) -> None:
    """Temporary folders left by a copy into models_dir that was killed (only called under the lock)."""
    if models_path.is_dir():
        for p in models_path.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
