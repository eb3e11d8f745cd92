"""Background jobs of the app process: long work (a KB import) runs in a thread of its own, never in
a Gradio queue, so it cannot hold the "db" write queue that annotations go through.

    job = ctx.jobs.start("kb_import", owner, work)   # work(job) runs in a daemon thread
    job.progress(0.4, "stored 4000 entities")        # from inside work
    if job.cancel_requested: ...                     # checked by work between chunks
    ctx.jobs.get(job.id).snapshot()                  # what the UI polls

A job is registered with its kind, owner, progress (fraction and message), state (running, done,
cancelled, failed), result (a report) and a cancel flag. Finished jobs are kept (the newest
`keep` of them) so a page reload can still show the report.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mimic.app.jobs")

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


class JobError(Exception):
    """A job that does not exist, or that this user may not touch; the message is for the user."""


class JobFailure(Exception):
    """Raised by a job's work for a failure whose message the user may read (others are logged and
    reported as a generic failure, since they may name server paths)."""


@dataclass
class Job:
    id: str
    kind: str
    owner: str
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    state: str = RUNNING
    fraction: float = 0.0
    message: str = "starting"
    result: Any = None
    error: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.state != RUNNING

    def progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self.fraction = max(0.0, min(1.0, float(fraction)))
            self.message = message

    def snapshot(self) -> dict:
        """A JSON-able copy (what the UI shows)."""
        with self._lock:
            return {
                "id": self.id,
                "kind": self.kind,
                "owner": self.owner,
                "state": self.state,
                "fraction": round(self.fraction, 4),
                "message": self.message,
                "seconds": round((self.finished_at or time.time()) - self.started_at, 1),
                "result": self.result,
                "error": self.error,
            }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (or `timeout`); True when it has."""
        if self.thread is not None:
            self.thread.join(timeout)
        return self.finished


class JobRegistry:
    """The jobs of one app process (thread-safe)."""

    def __init__(self, keep: int = 50):
        self.keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, owner: str, work: Callable[[Job], Any]) -> Job:
        """Register a job and run `work(job)` in a daemon thread; its return value becomes the
        result. A `JobFailure` becomes the job's error message; any other exception is logged and
        reported without its text."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, owner=owner)

        def run() -> None:
            try:
                result = work(job)
                state, error = (CANCELLED if job.cancel_requested else DONE), None
            except JobFailure as exc:
                result, state, error = None, FAILED, str(exc)
            except Exception:
                log.exception("job %s (%s) failed", job.id, kind)
                result, state, error = None, FAILED, "the job failed (see the server log)"
            with job._lock:
                job.result, job.error, job.state, job.finished_at = result, error, state, time.time()
                if state == DONE:
                    job.fraction = 1.0

        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.finished]
            for old in sorted(finished, key=lambda j: j.started_at)[: max(0, len(finished) - self.keep)]:
                del self._jobs[old.id]
        job.thread = threading.Thread(target=run, name=f"mimic-job-{kind}-{job.id}", daemon=True)
        job.thread.start()
        return job

    def get(self, job_id: str | None) -> Job:
        with self._lock:
            job = self._jobs.get(job_id or "")
        if job is None:
            raise JobError("no such job (it may have finished before the app restarted)")
        return job

    def running(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.finished and (kind is None or j.kind == kind)]

    def cancel(self, job_id: str | None, user: str, *, is_admin: bool = False) -> Job:
        """Ask a running job to stop at its next check. Only its owner or an admin may."""
        job = self.get(job_id)
        if user != job.owner and not is_admin:
            raise JobError(f"only {job.owner} (who started it) or an admin can cancel this job")
        job._cancel.set()
        return job
