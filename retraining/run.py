"""`run_retrain`: one run under the job lock, recorded in the store from start to end (succeeded,
failed or cancelled) whatever happens in the steps (pipeline.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from db import open_store

from .config import RetrainConfig
from .errors import RetrainBusy, RetrainCancelled, RetrainFailed
from .lock import JobLock
from .pipeline import run_steps
from .progress import Progress, attach_run_log, run_dir, write_progress
from .recovery import clean_partial_versions, recover_stale_runs
from .serving import resolve_serving

log = logging.getLogger("mimic.retrain")


def run_retrain(
    cfg: RetrainConfig,
    progress: Callable[[dict], None] | None = None,
    *,
    wait: bool | float = False,
    run_id: int | None = None,
    store=None,
) -> dict:
    """One retraining run (see the package docstring). Returns {run_id, status, version, promoted,
    reason, metrics, serving, paths, ...}. Raises `RetrainBusy` (nothing recorded) when another run
    holds the lock, `RetrainFailed` (run recorded failed/cancelled, log kept) when a step fails.
    `run_id`: a run queued by `start_retrain_process`. `store`: an open store (else opened here)."""
    own_store = store is None
    if not own_store and Path(store.settings.data_dir).absolute() != cfg.data_path:
        # the lock and the run folders live in the store's DATA_DIR: one place, one lock
        raise ValueError(f"cfg.data_dir {cfg.data_path} is not the store's DATA_DIR {store.settings.data_dir}")
    store = open_store(cfg.data_path) if own_store else store
    lock = JobLock(cfg.lock_path)
    try:
        _acquire(lock, cfg, store, wait, run_id)
        try:
            return _locked_run(cfg, store, lock, progress, run_id)
        finally:
            lock.release()
    finally:
        if own_store:
            store.close()


def _acquire(lock: JobLock, cfg: RetrainConfig, store, wait: bool | float, run_id: int | None) -> None:
    def waiting(info):
        if run_id is not None:
            write_progress(
                cfg.data_path,
                run_id,
                status="waiting",
                step="lock",
                fraction=0.0,
                message="waiting: " + lock.busy_message(info),
                pid=os.getpid(),
            )

    try:
        lock.acquire(wait, on_wait=waiting)
    except RetrainBusy as busy:
        if run_id is not None:  # a queued run that cannot start: say so on the run itself
            store.finish_training_run(run_id, "cancelled", error=f"refused: {busy}")
            write_progress(
                cfg.data_path,
                run_id,
                status="cancelled",
                step="lock",
                fraction=0.0,
                message=f"refused: {busy}",
                pid=os.getpid(),
            )
        raise


def _locked_run(cfg: RetrainConfig, store, lock: JobLock, callback, run_id: int | None) -> dict:
    recover_stale_runs(store, _lock_held=True, _current_run=run_id)
    clean_partial_versions(cfg.models_path)
    serving = resolve_serving(store, cfg)
    if run_id is None:
        run = store.create_training_run(
            cfg.to_dict(), base_model_version=serving.version if serving.registered else None
        )
    else:
        run = store.get_training_run(run_id)
        if run.status != "queued":
            raise ValueError(f"run {run_id} is {run.status}, not queued")
    # From here on the run exists: whatever happens, it ends succeeded, failed or cancelled.
    rid = run.id
    rdir = run_dir(cfg.data_path, rid)
    log_path = rdir / "log.txt"
    restore: Callable[[], None] = lambda: None
    t0 = time.perf_counter()
    try:
        rdir.mkdir(parents=True, exist_ok=True)
        restore = attach_run_log(log_path)
        lock.update(run_id=rid)
        store.start_training_run(rid, log_path=str(log_path))
        store.update_training_run(rid, metrics={"pid": os.getpid(), "host": socket.gethostname()})
        prog = Progress(cfg.data_path, rid, callback)
        log.info("retraining run %d (pid %d) with %s", rid, os.getpid(), json.dumps(cfg.to_dict()))
        if run.base_model_version not in (None, serving.version):
            log.warning("the promoted version changed while this run was queued: serving is now %s", serving.version)
        summary = run_steps(cfg, store, rid, rdir, serving, prog)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        store.finish_training_run(
            rid, "succeeded", metrics={"promoted": summary["promoted"], "seconds": summary["seconds"]}
        )
        prog("done", 1.0, summary["reason"], status="succeeded")
        summary["status"] = "succeeded"
        return summary
    except BaseException as exc:
        cancelled = isinstance(exc, (RetrainCancelled, KeyboardInterrupt))
        _record_end(cfg, store, rid, exc, cancelled, round(time.perf_counter() - t0, 1))
        if cancelled:
            raise
        raise RetrainFailed(
            f"retraining run {rid} failed: {type(exc).__name__}: {exc} (log: {log_path})", rid, str(log_path)
        ) from exc
    finally:
        restore()


def _record_end(cfg: RetrainConfig, store, rid: int, exc: BaseException, cancelled: bool, seconds: float) -> None:
    """The run failed or was cancelled: say so in the store and the progress file, as far as they work."""
    status = "cancelled" if cancelled else "failed"
    err = f"{type(exc).__name__}: {exc}"
    log.error("run %d %s: %s", rid, status, err, exc_info=not cancelled)
    try:
        store.finish_training_run(rid, status, error=err[:4000], metrics={"seconds": seconds})
    except Exception:  # the database itself failing: the next run's recovery will mark it
        log.exception("could not record run %d as %s", rid, status)
    try:
        write_progress(cfg.data_path, rid, status=status, step="done", fraction=1.0, message=err, pid=os.getpid())
    except Exception:
        log.exception("could not write the progress file")
