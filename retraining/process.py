"""The job in its own process: `start_retrain_process` queues a run and starts `python -m
retraining` for it; the app follows it with `read_progress` / `read_log` (progress.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from db import open_store
from mimic.atomic import write_json_atomic

from .config import RetrainConfig
from .errors import RetrainBusy
from .lock import JobLock
from .progress import read_progress, run_dir, write_progress
from .serving import resolve_serving

_REPO_ROOT = Path(__file__).resolve().parents[1]


class RetrainProcess(subprocess.Popen[bytes]):
    """The job's process, with the id of the run it executes."""

    run_id: int


def start_retrain_process(
    cfg: RetrainConfig, *, wait: bool = False, store=None, python: str | None = None
) -> RetrainProcess:
    """Queue a run and start `python -m retraining` (the same command as `python -m mimic
    retrain`) for it in a new process and session, stdout/stderr appended to the run's log. The
    run id is `proc.run_id`; follow it with `read_progress` / `read_log`. Raises `RetrainBusy` at
    once if a run holds the lock (unless wait); should two starts race past that check, the later
    job process is refused by the lock and records its run as cancelled with the reason."""
    if not wait:
        holder = JobLock(cfg.lock_path).holder()
        if holder is not None:
            raise RetrainBusy(JobLock(cfg.lock_path).busy_message(holder))
    own = store is None
    if own:
        store = open_store(cfg.data_path)
    try:
        serving = resolve_serving(store, cfg)
        cfg = replace(cfg, data_dir=str(cfg.data_path))  # the child may run elsewhere
        run = store.create_training_run(
            cfg.to_dict(), base_model_version=serving.version if serving.registered else None
        )
        rdir = run_dir(cfg.data_path, run.id)
        rdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rdir / "retrain_config.json", cfg.to_dict())
        cmd = [
            python or sys.executable,
            "-m",
            "retraining",
            "--config",
            str(rdir / "retrain_config.json"),
            "--run-id",
            str(run.id),
            "--wait" if wait else "--no-wait",
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # progress.json exists before the process does, so the app can follow the run at once
        write_progress(
            cfg.data_path,
            run.id,
            status="queued",
            step="start",
            fraction=0.0,
            message="starting the job process",
            pid=None,
            log=str(rdir / "log.txt"),
        )
        with open(rdir / "log.txt", "ab") as logf:
            proc = RetrainProcess(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )  # own session: survives the app's Ctrl-C
        store.update_training_run(run.id, log_path=str(rdir / "log.txt"), metrics={"pid": proc.pid})
        if (read_progress(cfg.data_path, run.id) or {}).get("status") == "queued":  # the job has not written yet
            write_progress(cfg.data_path, run.id, message=f"started process {proc.pid}", pid=proc.pid)
        proc.run_id = run.id
        return proc
    finally:
        if own:
            store.close()
