"""A run's progress file (runs/<id>/progress.json) and log (runs/<id>/log.txt): the job writes
them, the app reads them (`read_progress`, `read_log`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mimic.atomic import write_json_atomic

from .lock import pid_alive

log = logging.getLogger("mimic.retrain")  # under the product-wide "mimic" logger, so the run log gets it


def run_dir(data_dir: str | Path, run_id: int) -> Path:
    return Path(data_dir).absolute() / "runs" / str(int(run_id))


def write_progress(data_dir, run_id: int, **fields_) -> dict:
    path = run_dir(data_dir, run_id) / "progress.json"
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
    rec = {
        **old,
        "run_id": int(run_id),
        **fields_,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, rec)  # atomic: a reader never sees half a file
    return rec


def read_progress(data_dir: str | Path, run_id: int) -> dict | None:
    """{run_id, status, step, fraction, message, pid, log, updated_at, alive} or None (no file yet).
    `alive` is False when the status says the job is under way but its process is gone."""
    path = run_dir(data_dir, run_id) / "progress.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"run_id": int(run_id), "status": "unknown", "alive": None}
    active = rec.get("status") in ("queued", "waiting", "running")
    rec["alive"] = bool(active and pid_alive(rec.get("pid")))
    return rec


def read_log(data_dir: str | Path, run_id: int, offset: int = 0, max_bytes: int = 1 << 20) -> tuple[str, int]:
    """The run log from byte `offset` (at most `max_bytes`) and the offset to continue from: call it
    repeatedly to stream the log."""
    path = run_dir(data_dir, run_id) / "log.txt"
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)


class Progress:
    """Writes progress.json, logs the step, and forwards to the caller's callback."""

    def __init__(self, data_dir, run_id: int, callback: Callable[[dict], None] | None):
        self.data_dir, self.run_id, self.callback = data_dir, run_id, callback

    def __call__(self, step: str, fraction: float, message: str, status: str = "running") -> None:
        log.info("[%s %3.0f%%] %s", step, 100 * fraction, message)
        rec = write_progress(
            self.data_dir,
            self.run_id,
            status=status,
            step=step,
            fraction=round(float(fraction), 4),
            message=message,
            pid=os.getpid(),
        )
        if self.callback:
            try:
                self.callback(dict(rec))
            except Exception:  # a broken UI callback must not fail the run
                log.exception("progress callback failed")


class EpochWatcher(logging.Handler):
    """`mimic.training.trainer.train` logs one line per epoch; turn those into progress updates."""

    def __init__(self, progress: Progress, epochs: int, lo: float, hi: float):
        super().__init__(logging.INFO)
        self.progress, self.epochs, self.lo, self.hi = progress, epochs, lo, hi

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "epoch %d: %s" or not isinstance(record.args, tuple) or len(record.args) != 2:
            return
        args: tuple[Any, ...] = record.args  # (epoch, metrics JSON), as the trainer logs them
        try:
            epoch = int(args[0])
            loss = json.loads(args[1]).get("train_loss")
            msg = f"epoch {epoch}/{self.epochs}" + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
            self.progress("train", self.lo + (self.hi - self.lo) * epoch / self.epochs, msg)
        except Exception:
            pass


def attach_run_log(log_path: Path) -> Callable[[], None]:
    """Every `mimic*` logger (training, evaluation, db, this module) into the run log while it runs.
    In a job process whose stderr already IS the log, root handlers would write each line twice."""
    root = logging.getLogger("mimic")
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    old_level, old_prop = root.level, root.propagate
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        st, lt = os.fstat(sys.stderr.fileno()), os.stat(log_path)
        if (st.st_dev, st.st_ino) == (lt.st_dev, lt.st_ino):
            root.propagate = False
    except (OSError, ValueError, AttributeError):
        pass

    def restore():
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        root.propagate = old_prop

    return restore
