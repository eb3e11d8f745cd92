"""Retraining from the annotators' accepted corrections: `python -m mimic retrain`.

One run, in order (each step is logged to DATA_DIR/runs/<run_id>/log.txt and reported in
DATA_DIR/runs/<run_id>/progress.json):

 1. lock      Take the job lock DATA_DIR/runs/retrain.lock (`JobLock`: an flock the kernel drops
              when its holder dies). Refused -> `RetrainBusy` naming the holder, or wait if asked.
              Holding it, mark runs left "running" by a dead process as failed (`recover_stale_runs`).
 2. record    Create (or take the queued) training run in the store and mark it running.
 3. export    `store.export_training_set(runs/<id>/export, layout="jsonl")` with the fractions
              (1 - holdout, 0, holdout): the "test" split of that export IS the held-out slice. The
              split is `db.export.split_of(mention uid)`, a SHA-256 of the uid compared with the
              cumulative fractions, so a mention always falls on the same side, adding mentions never
              moves old ones, and with the default 20 % the held-out slice is exactly the dev + test
              part of the store's ordinary 80/10/10 export. The ids of every annotation used (trained
              on or held out) are attached to the run; split.json lists which uid went where.
 4. base      Optionally load a base dataset (any supported format): its train split joins the
              training set, its dev split is the second judge. Nothing that is judged is trained on:
              training mentions with the (sentence, mention) of a held-out correction or of a base
              dev mention are dropped. Base entities missing from the store are appended to the KB.
 5. train     Fine-tune the serving model (`mimic.training.trainer.train` with `init_checkpoint`) into
              runs/<id>/train/; a zero-shot serving model has no trained units to start from, so the
              candidate is then a fresh MIMIC model on the same backbone. Frozen backbone on the CPU.
              No epoch selection on the judging sets: the last epoch is the candidate.
 6. evaluate  Serving model and candidate on the SAME sets (held-out corrections, base dev) against
              the full KB; a zero-shot serving model is ranked by backbone similarities exactly as
              `mimic.serving.zeroshot` ranks (`zero_shot_ranks`).
 7. version   Copy the candidate into models_dir/<version>/ (temporary folder, then rename; the
              serving checkpoint folder is only ever read), register the version with every number
              and the decision, link it to the run.
 8. promote   `store.promote(version)` only when `decide_promotion` says so (default: held-out MRR
              not lower, base dev H@1 not lower by more than 0.5 points).
 9. finish    Run marked succeeded. Any exception on the way: run marked failed (cancelled on
              SIGTERM / Ctrl-C) with the error, and the log stays.

Crash safety: the only write that changes what is served is `promote` (one transaction, the last
step before finishing); everything else is new rows and new folders renamed into place. So a run
that fails or is killed before `promote` leaves the serving checkpoint, the promoted version, the
annotations and every earlier version exactly as they were; one that dies after it has promoted a
candidate that passed the rule. A killed run cannot record its own end: its row stays "running"
until the next run (or `recover_stale_runs`, which the app may call) finds the lock free and marks
it failed. At worst a killed run also leaves an unreferenced models_dir/<version>/ (killed between
the copy and the registration) or a registered, unpromoted version.

Scheduling (`should_retrain`): retrain after N new accepted annotations and/or every T hours since
the last successful run; "new" = accepted annotations not attached to that run. The job always
runs in its own process (`start_retrain_process`, or `python -m mimic retrain --if-due` from cron);
the app follows it with `read_progress` / `read_log`.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from mimic.config_file import ConfigFile

log = logging.getLogger("mimic.retrain")   # under the product-wide "mimic" logger, so the run log gets it

# db.export.split_of's default seed: with it the held-out slice agrees with the store's ordinary export.
HOLDOUT_SEED = ""
LOCK_NAME = "retrain.lock"
_EPS = 1e-9   # "not lower" must not fail on float noise (0.800 - 0.795 = 0.005000000000000004)


class RetrainBusy(RuntimeError):
    """Another retraining run holds the job lock."""


class RetrainFailed(RuntimeError):
    """A run started but did not finish; it is recorded as failed (or cancelled) with its log."""

    def __init__(self, message: str, run_id: int, log_path: str):
        super().__init__(message)
        self.run_id, self.log_path = run_id, log_path


class RetrainCancelled(BaseException):
    """Raised in the job process on SIGTERM so the run is recorded as cancelled, not left running."""


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class RetrainConfig(ConfigFile):
    _what = "retrain config"

    data_dir: str = "data"                  # the app's DATA_DIR; the store is db.open_store(data_dir)
    base_data: str | None = None            # optional base dataset (official / MELBench / JSONL)
    checkpoint: str | None = None           # serving checkpoint when no version is promoted
    prefer_promoted: bool = True            # the store's promoted version (if it has a checkpoint) serves
    backbone: str = "offline"               # backbone of the zero-shot serving model (app: MIMIC_BACKBONE)
    model: str = "mimic"                    # family of a fresh candidate (zero-shot serving only)
    holdout: float = 0.2                    # fraction of corrections held out (by mention uid hash)
    epochs: int = 4
    batch_size: int = 64
    lr: float | None = None                 # None: 1e-3 fresh heads, 2e-4 heads from a checkpoint, 1e-5 full
    freeze_backbone: bool | None = None     # None: fine-tune the backbone on CUDA, freeze it on the CPU
    device: str = "auto"
    bf16: bool = True                       # bf16 autocast for training on CUDA (ignored on the CPU)
    seed: int = 43
    min_mrr_delta: float = 0.0              # candidate held-out MRR - serving held-out MRR must be >= this
    max_dev_h1_drop: float = 0.005          # serving base-dev H@1 - candidate base-dev H@1 must be <= this
    min_heldout: int = 1                    # fewer held-out corrections: no judgement, no promotion
    min_new_annotations: int | None = None  # policy N
    every_hours: float | None = None        # policy T
    retry_hours: float = 1.0                # after a failed or cancelled run, the policy waits this long
    models_dir: str | None = None           # default DATA_DIR/models
    eval_batch_size: int = 32
    eval_chunk_size: int = 1024

    def __post_init__(self):
        if not 0 < float(self.holdout) < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        if int(self.epochs) < 1 or int(self.batch_size) < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (in-batch negatives)")
        if self.min_new_annotations is not None and int(self.min_new_annotations) < 1:
            raise ValueError("min_new_annotations must be >= 1 (or None)")
        if self.every_hours is not None and float(self.every_hours) <= 0:
            raise ValueError("every_hours must be > 0 (or None)")

    # -- places ----------------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).absolute()

    @property
    def runs_path(self) -> Path:
        return self.data_path / "runs"

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).absolute() if self.models_dir else self.data_path / "models"

    @property
    def lock_path(self) -> Path:
        return self.runs_path / LOCK_NAME

    # -- construction ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "RetrainConfig":
        """DATA_DIR, MIMIC_CHECKPOINT and MIMIC_BACKBONE as the app reads them, then
        MIMIC_RETRAIN_<FIELD> for any field (e.g. MIMIC_RETRAIN_EVERY_HOURS=24); `overrides` win."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        if env.get("DATA_DIR"):
            raw["data_dir"] = env["DATA_DIR"]
        if env.get("MIMIC_CHECKPOINT"):
            raw["checkpoint"] = env["MIMIC_CHECKPOINT"]
        if env.get("MIMIC_BACKBONE"):
            raw["backbone"] = env["MIMIC_BACKBONE"]
        for f in fields(cls):
            v = env.get(f"MIMIC_RETRAIN_{f.name.upper()}")
            if v is not None and v != "":
                raw[f.name] = _parse_env(v, f.name)
        return cls.from_dict(raw, **overrides)


def _parse_env(value: str, name: str):
    """An environment string as the type of field `name` ("none" for an optional one)."""
    kind = {f.name: str(f.type) for f in fields(RetrainConfig)}[name]
    v = value.strip()
    if "None" in kind and v.lower() in ("none", "null", ""):
        return None
    if kind.startswith("bool"):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"MIMIC_RETRAIN_{name.upper()}: expected true/false, got {value!r}")
    try:
        if kind.startswith("int"):
            return int(v)
        if kind.startswith("float"):
            return float(v)
    except ValueError:
        raise ValueError(f"MIMIC_RETRAIN_{name.upper()}: expected a number, got {value!r}") from None
    return value


# ------------------------------------------------------------------------------------------------
# The job lock
# ------------------------------------------------------------------------------------------------
def _pid_alive(pid: int | None) -> bool:
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
            return {}   # being rewritten by its holder this instant: "unknown" is the honest answer

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
        return (f"another retraining run ({who}, started at {info.get('started_at', '?')}) holds the lock "
                f"{self.path}; wait for it to finish, or retry with wait (--wait)")

    def acquire(self, wait: bool | float = False, *, poll: float = 0.25,
                on_wait: Callable[[dict], None] | None = None) -> "JobLock":
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
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": None}
        self._write_info()
        return self

    def update(self, **info) -> None:
        if not self.held:
            raise RuntimeError("JobLock.update: not held")
        self.info.update(info)
        self._write_info()

    def _write_info(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)        # nobody holds it: no holder to name
        finally:
            os.close(fd)               # closing drops the flock

    def __enter__(self) -> "JobLock":
        return self.acquire() if not self.held else self

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------
# Progress file and log (what the app reads)
# ------------------------------------------------------------------------------------------------
def run_dir(data_dir: str | Path, run_id: int) -> Path:
    return Path(data_dir).absolute() / "runs" / str(int(run_id))


def _write_progress(data_dir, run_id: int, **fields_) -> dict:
    from mimic.atomic import write_json_atomic
    path = run_dir(data_dir, run_id) / "progress.json"
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
    rec = {**old, "run_id": int(run_id), **fields_,
           "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(path, rec)   # atomic: a reader never sees half a file
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
    rec["alive"] = bool(active and _pid_alive(rec.get("pid")))
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


class _Progress:
    """Writes progress.json, logs the step, and forwards to the caller's callback."""

    def __init__(self, data_dir, run_id: int, callback: Callable[[dict], None] | None):
        self.data_dir, self.run_id, self.callback = data_dir, run_id, callback

    def __call__(self, step: str, fraction: float, message: str, status: str = "running") -> None:
        log.info("[%s %3.0f%%] %s", step, 100 * fraction, message)
        rec = _write_progress(self.data_dir, self.run_id, status=status, step=step,
                              fraction=round(float(fraction), 4), message=message, pid=os.getpid())
        if self.callback:
            try:
                self.callback(dict(rec))
            except Exception:   # a broken UI callback must not fail the run
                log.exception("progress callback failed")


class _EpochWatcher(logging.Handler):
    """`mimic.training.trainer.train` logs one line per epoch; turn those into progress updates."""

    def __init__(self, progress: _Progress, epochs: int, lo: float, hi: float):
        super().__init__(logging.INFO)
        self.progress, self.epochs, self.lo, self.hi = progress, epochs, lo, hi

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "epoch %d: %s" or not isinstance(record.args, tuple) or len(record.args) != 2:
            return
        try:
            epoch = int(record.args[0])
            loss = json.loads(record.args[1]).get("train_loss")
            msg = f"epoch {epoch}/{self.epochs}" + (f", loss {loss:.4f}" if isinstance(loss, float) else "")
            self.progress("train", self.lo + (self.hi - self.lo) * epoch / self.epochs, msg)
        except Exception:
            pass


# ------------------------------------------------------------------------------------------------
# Dead runs
# ------------------------------------------------------------------------------------------------
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
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for r in store.list_training_runs():
            if r.id == _current_run or r.status not in ("running", "queued"):
                continue
            pid = (r.metrics or {}).get("pid")
            if r.status == "queued":
                # A queued run's job process may still be starting or waiting for the lock; without
                # a recorded process (its starter died before spawning it) give it 10 minutes.
                age = datetime.now(timezone.utc) - r.created_at
                if _pid_alive(pid) or (pid is None and age < timedelta(minutes=10)):
                    continue
            what = "was killed or crashed" if r.status == "running" else "ended before it started"
            err = (f"the retraining process (pid {pid if pid is not None else '?'}) {what} without finishing "
                   f"the run; found at {now} while no process held the job lock. Log: {r.log_path or '-'}")
            try:
                store.finish_training_run(r.id, "failed", error=err)
            except Exception as exc:   # e.g. another recoverer finished it first
                log.warning("could not mark run %d failed: %s", r.id, exc)
                continue
            if (run_dir(data_dir, r.id) / "progress.json").exists():
                _write_progress(data_dir, r.id, status="failed", message=err)
            log.warning("run %d marked failed: %s", r.id, err)
            marked.append(r.id)
        return marked
    finally:
        if not _lock_held:
            lock.release()


def _clean_partial_versions(models_path: Path) -> None:
    """Temporary folders left by a copy into models_dir that was killed (only called under the lock)."""
    if models_path.is_dir():
        for p in models_path.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Policy
# ------------------------------------------------------------------------------------------------
def accepted_annotation_ids(store) -> set[int]:
    """Ids of the annotations behind every accepted entity link (what an export would train on)."""
    resolutions, _ = store.resolved()
    return {a for r in resolutions.values() if r.decision == "entity" for a in r.annotation_ids}


def should_retrain(store, cfg: RetrainConfig, now: datetime | None = None) -> tuple[bool, str]:
    """The policy: due when at least `min_new_annotations` accepted annotations are new since the
    last successful run, and/or `every_hours` have passed since it finished and something is new
    (retraining on unchanged data would only reproduce the last candidate). With both set, either
    trigger suffices. Never due while a run holds the lock."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    n, t = cfg.min_new_annotations, cfg.every_hours
    if n is None and t is None:
        return False, "no retraining policy configured (set min_new_annotations and/or every_hours)"
    holder = JobLock(cfg.lock_path).holder()
    if holder is not None:
        return False, f"a retraining run is in progress (pid {holder.get('pid', '?')}, run {holder.get('run_id')})"
    runs = store.list_training_runs()
    latest = max(runs, key=lambda r: r.id, default=None)
    if latest is not None and latest.status in ("failed", "cancelled"):
        # back off: a run that fails for a lasting reason must not be restarted at every check
        ended = latest.finished_at or latest.created_at
        if ended.tzinfo is None:
            ended = ended.replace(tzinfo=timezone.utc)
        waited = (now - ended).total_seconds() / 3600
        if waited < float(cfg.retry_hours):
            return False, (f"run {latest.id} {latest.status} {waited:.2f} h ago: the policy retries after "
                           f"{float(cfg.retry_hours):g} h")
    last = next((r for r in runs if r.status == "succeeded"), None)
    used = set(store.training_run_annotations(last.id)) if last else set()
    new = len(accepted_annotation_ids(store) - used)
    since = f"since run {last.id}" if last else "(no successful run yet)"
    if n is not None and new >= n:
        return True, f"{new} new accepted annotation(s) {since} >= {n}"
    if t is not None:
        if last is None or last.finished_at is None:
            if new > 0:
                return True, f"no successful run yet and {new} accepted annotation(s) (every {t:g} h)"
        else:
            hours = (now - last.finished_at).total_seconds() / 3600
            if hours >= t and new > 0:
                return True, f"{hours:.1f} h since run {last.id} >= {t:g} h, {new} new accepted annotation(s)"
            if hours >= t:
                return False, f"{hours:.1f} h since run {last.id} but no new accepted annotation"
            return False, (f"not due: {new} new accepted annotation(s) {since}"
                           + (f" (< {n})" if n is not None else "") + f", {hours:.1f} h of {t:g} h")
    return False, f"not due: {new} new accepted annotation(s) {since}" + (f" (< {n})" if n is not None else "")


# ------------------------------------------------------------------------------------------------
# Promotion rule
# ------------------------------------------------------------------------------------------------
def decide_promotion(serving: dict, candidate: dict, cfg: RetrainConfig) -> tuple[bool, str]:
    """serving / candidate: {"heldout": metrics, "base_dev": metrics or absent}. Promote only if
    held-out MRR rose by at least `min_mrr_delta` and base-dev H@1 fell by at most `max_dev_h1_drop`."""
    s_h, c_h = serving.get("heldout") or {}, candidate.get("heldout") or {}
    count = int(c_h.get("count", 0))
    if count < max(cfg.min_heldout, 1):
        return False, (f"not promoted: {count} held-out correction(s), need at least {max(cfg.min_heldout, 1)} "
                       "to judge (collect more corrections or raise holdout)")
    d_mrr = c_h["MRR"] - s_h["MRR"]
    parts = [f"held-out MRR {s_h['MRR']:.4f} -> {c_h['MRR']:.4f} ({d_mrr:+.4f}, required >= {cfg.min_mrr_delta:+.4f})"]
    ok = d_mrr >= cfg.min_mrr_delta - _EPS
    s_d, c_d = serving.get("base_dev") or {}, candidate.get("base_dev") or {}
    if c_d.get("count"):
        drop = s_d["H@1"] - c_d["H@1"]
        parts.append(f"base dev H@1 {s_d['H@1']:.4f} -> {c_d['H@1']:.4f} (drop {drop:+.4f}, "
                     f"allowed <= {cfg.max_dev_h1_drop:.4f})")
        ok = ok and drop <= cfg.max_dev_h1_drop + _EPS
    else:
        parts.append("no base dev split: that criterion does not apply")
    return ok, ("promoted: " if ok else "not promoted: ") + "; ".join(parts)


# ------------------------------------------------------------------------------------------------
# Evaluation on shared features
# ------------------------------------------------------------------------------------------------
def _cross_modal(backbone) -> bool:
    """As `Linker`: text->image similarity only in a joint space (CLIP with equal widths)."""
    return backbone.describe().get("type") == "clip" and backbone.dims.text_global == backbone.dims.image_global


class _Globals:
    """Unit-norm backbone vectors of many items: what zero-shot scoring compares."""

    def __init__(self, text, image, has):
        self.text, self.image, self.has = text, image, has


def _globals_of(text, image) -> _Globals:
    import torch.nn.functional as F
    return _Globals(F.normalize(text.global_.float(), dim=-1).cpu(), F.normalize(image.global_.float(), dim=-1).cpu(),
                    image.has_image.bool().cpu())


def zero_shot_scores(q: _Globals, e: _Globals, cross_modal: bool):
    """S [B, N] as `mimic.serving.zeroshot.ZeroShotLinker` scores a pair: mean of the cosines that apply
    (text-text always; image-image when both have an image; text-image for CLIP when the entity
    has an image), all B x N at once."""
    import torch
    nan = torch.tensor(float("nan"))
    units = [q.text @ e.text.T]
    both = q.has[:, None] & e.has[None, :]
    units.append(torch.where(both, q.image @ e.image.T, nan))
    if cross_modal:
        units.append(torch.where(e.has[None, :].expand(len(q.has), -1), q.text @ e.image.T, nan))
    return torch.nanmean(torch.stack(units), dim=0)


def _kb_pass(groups: list[tuple[Any, list, bool]], kb, batch_size: int) -> list[tuple[list, "_Globals | None"]]:
    """One pass over the KB for several encoders: each KB chunk's images are decoded once and fed to
    every (encoder, heads sharing that encoder's backbone, want zero-shot globals) group. -> per
    group (its heads' `EntityCache`s, exactly what `LinkingModel.entity_cache` computes; the global
    vectors for zero-shot scoring or None). Decoding KB images is the costly part of the pass on
    real data, so serving and candidate share it."""
    import torch

    from mimic.models.linking_model import entity_text, load_images
    parts = [[[] for _ in heads_list] for _enc, heads_list, _want in groups]
    glob_parts = [([], [], []) for _ in groups]
    with torch.no_grad():
        for s in range(0, len(kb), batch_size):
            chunk = kb.entities[s:s + batch_size]
            texts = [entity_text(e) for e in chunk]
            decoded: dict[str, list] = {}          # per mode: compat keeps non-RGB images out
            for g, (encoder, heads_list, want_globals) in enumerate(groups):
                mode = encoder.config.mode
                if mode not in decoded:
                    decoded[mode] = load_images([e.images[0] if e.images else None for e in chunk], mode)
                text, image = encoder.backbone_features(texts, decoded[mode])
                for p, h in zip(parts[g], heads_list):
                    p.append(h.entity_cache(h.side_features(text, image)))
                if want_globals:
                    gl = _globals_of(text, image)
                    for acc, t in zip(glob_parts[g], (gl.text, gl.image, gl.has)):
                        acc.append(t)
    out = []
    for g, (_enc, _heads, want_globals) in enumerate(groups):
        caches = [type(p[0]).cat(p) for p in parts[g]]
        glob = _Globals(*(torch.cat(acc) for acc in glob_parts[g])) if want_globals else None
        out.append((caches, glob))
    return out


def zero_shot_ranks(model, kb_globals: _Globals, kb, mentions, batch_size: int = 64) -> list[int]:
    """Full-KB ranks of `mentions` under zero-shot scoring (ties by KB order, as `evaluate`)."""
    import torch

    from mimic.analysis.ranking import ranks_from_scores
    from mimic.models.linking_model import load_images, mention_text
    cross = _cross_modal(model.backbone)
    out: list[int] = []
    with torch.no_grad():
        for s in range(0, len(mentions), batch_size):
            batch = mentions[s:s + batch_size]
            text, image = model.backbone_features([mention_text(m) for m in batch],
                                                  load_images([m.image for m in batch], model.config.mode))
            S = zero_shot_scores(_globals_of(text, image), kb_globals, cross)
            gold = torch.tensor([kb.position(m.answer) for m in batch])
            out += ranks_from_scores(S, gold).tolist()
    return out


def _evaluate_models(models: dict[str, Any], zero_shot: set[str], kb, sets: dict[str, list], cfg: RetrainConfig) -> dict:
    """{name: {set: metrics}} for every model on every set, the KB encoded once per backbone."""
    from mimic.analysis.ranking import evaluate, metrics_from_ranks
    groups: dict[tuple, list[str]] = {}
    for name, m in models.items():
        groups.setdefault((id(m.backbone), m.config.mode, m.config.text_max_length), []).append(name)
    results: dict[str, dict] = {name: {} for name in models}
    if not any(sets.values()):
        return results
    group_names = list(groups.values())
    passes = _kb_pass([(models[names[0]], [models[n].heads for n in names if n not in zero_shot],
                        any(n in zero_shot for n in names)) for names in group_names], kb, 64)
    for names, (caches, glob) in zip(group_names, passes):
        trained = [n for n in names if n not in zero_shot]
        for n, cache in zip(trained, caches):
            for set_name, mentions in sets.items():
                if not mentions:
                    continue
                res = evaluate(models[n], kb, mentions, batch_size=cfg.eval_batch_size,
                               chunk_size=cfg.eval_chunk_size, entity_cache=cache)
                results[n][set_name] = {k: v for k, v in res.items() if k not in ("images",)}
        for n in names:
            if n in zero_shot:
                for set_name, mentions in sets.items():
                    if mentions:
                        ranks = zero_shot_ranks(models[n], glob, kb, mentions, cfg.eval_batch_size)
                        results[n][set_name] = {**metrics_from_ranks(ranks), "ranks": ranks, "scoring": "zero-shot"}
    return results


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
@dataclass
class _Serving:
    version: str                 # promoted version name, checkpoint folder name, or "zero-shot (...)"
    registered: bool             # a model version row exists (and is promoted)
    checkpoint: str | None       # None: zero-shot


def resolve_serving(store, cfg: RetrainConfig) -> _Serving:
    """What serves now: the promoted version with a checkpoint (prefer_promoted), else
    cfg.checkpoint, else the zero-shot model on cfg.backbone."""
    if cfg.prefer_promoted:
        mv = store.promoted_model_version()
        if mv is not None and mv.checkpoint:
            return _Serving(mv.name, True, mv.checkpoint)
    if cfg.checkpoint:
        return _Serving(Path(cfg.checkpoint).name, False, str(Path(cfg.checkpoint).absolute()))
    from mimic.serving.service import zero_shot_version
    return _Serving(zero_shot_version(cfg.backbone), False, None)


def _key(m) -> tuple[str, str]:
    return (m.sentence.strip(), m.mention.strip())


def _merge_kb(store_kb, base_kb):
    """The store's KB, then base entities it lacks (appended: store positions do not move)."""
    from mimic.data.schema import KnowledgeBase
    if base_kb is None:
        return store_kb, 0
    extra = [e for e in base_kb.entities if e.id not in store_kb]
    return (KnowledgeBase(store_kb.entities + extra) if extra else store_kb), len(extra)


def _write_version(best_dir: Path, version_dir: Path, candidate, *, resave_backbone: bool, metrics: dict) -> Path:
    """models_dir/<version>/ from the candidate, atomically (temporary sibling, then rename; an
    existing folder is never replaced). Normally a copy of train/best; when the serving checkpoint
    carried fine-tuned backbone weights and this run froze them, best/ only describes the backbone,
    so the version is re-saved with the weights to stay self-contained."""
    from mimic.atomic import write_dir_atomic
    from mimic.models.checkpoint import save_checkpoint
    if resave_backbone:
        old = json.loads((best_dir / "metrics.json").read_text())
        return save_checkpoint(candidate, version_dir, backbone_trained=True, metrics={**old, "retrain": metrics})

    def fill(tmp: Path) -> None:
        for p in best_dir.iterdir():
            if p.name == "training_state.pt":
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        m = json.loads((tmp / "metrics.json").read_text()) if (tmp / "metrics.json").exists() else {}
        (tmp / "metrics.json").write_text(json.dumps({**m, "retrain": metrics}, indent=2) + "\n")
    return write_dir_atomic(version_dir, fill, overwrite=False)


def _strip_ranks(res: dict) -> dict:
    return {s: {k: v for k, v in m.items() if k != "ranks"} for s, m in res.items()}


def run_retrain(cfg: RetrainConfig, progress: Callable[[dict], None] | None = None, *, wait: bool | float = False,
                run_id: int | None = None, store=None) -> dict:
    """One retraining run (see the module docstring). Returns {run_id, status, version, promoted,
    reason, metrics, serving, paths, ...}. Raises `RetrainBusy` (nothing recorded) when another run
    holds the lock, `RetrainFailed` (run recorded failed/cancelled, log kept) when a step fails.
    `run_id`: a run queued by `start_retrain_process`. `store`: an open store (else opened here)."""
    from db import open_store
    own_store = store is None
    if not own_store and Path(store.settings.data_dir).absolute() != cfg.data_path:
        # the lock and the run folders live in the store's DATA_DIR: one place, one lock
        raise ValueError(f"cfg.data_dir {cfg.data_path} is not the store's DATA_DIR {store.settings.data_dir}")
    store = open_store(cfg.data_path) if own_store else store
    lock = JobLock(cfg.lock_path)
    try:
        def waiting(info):
            if run_id is not None:
                _write_progress(cfg.data_path, run_id, status="waiting", step="lock", fraction=0.0,
                                message="waiting: " + lock.busy_message(info), pid=os.getpid())
        try:
            lock.acquire(wait, on_wait=waiting)
        except RetrainBusy as busy:
            if run_id is not None:   # a queued run that cannot start: say so on the run itself
                store.finish_training_run(run_id, "cancelled", error=f"refused: {busy}")
                _write_progress(cfg.data_path, run_id, status="cancelled", step="lock", fraction=0.0,
                                message=f"refused: {busy}", pid=os.getpid())
            raise
        try:
            return _locked_run(cfg, store, lock, progress, run_id)
        finally:
            lock.release()
    finally:
        if own_store:
            store.close()


def _locked_run(cfg: RetrainConfig, store, lock: JobLock, callback, run_id: int | None) -> dict:
    recover_stale_runs(store, _lock_held=True, _current_run=run_id)
    _clean_partial_versions(cfg.models_path)
    serving = resolve_serving(store, cfg)
    if run_id is None:
        run = store.create_training_run(cfg.to_dict(), base_model_version=serving.version if serving.registered else None)
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
        restore = _attach_log(log_path)
        lock.update(run_id=rid)
        store.start_training_run(rid, log_path=str(log_path))
        store.update_training_run(rid, metrics={"pid": os.getpid(), "host": socket.gethostname()})
        prog = _Progress(cfg.data_path, rid, callback)
        log.info("retraining run %d (pid %d) with %s", rid, os.getpid(), json.dumps(cfg.to_dict()))
        if run.base_model_version not in (None, serving.version):
            log.warning("the promoted version changed while this run was queued: serving is now %s", serving.version)
        summary = _steps(cfg, store, rid, rdir, serving, prog)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        store.finish_training_run(rid, "succeeded", metrics={"promoted": summary["promoted"],
                                                             "seconds": summary["seconds"]})
        prog("done", 1.0, summary["reason"], status="succeeded")
        summary["status"] = "succeeded"
        return summary
    except BaseException as exc:
        cancelled = isinstance(exc, (RetrainCancelled, KeyboardInterrupt))
        status = "cancelled" if cancelled else "failed"
        err = f"{type(exc).__name__}: {exc}"
        log.error("run %d %s: %s", rid, status, err, exc_info=not cancelled)
        try:
            store.finish_training_run(rid, status, error=err[:4000],
                                      metrics={"seconds": round(time.perf_counter() - t0, 1)})
        except Exception:   # the database itself failing: the next run's recovery will mark it
            log.exception("could not record run %d as %s", rid, status)
        try:
            _write_progress(cfg.data_path, rid, status=status, step="done", fraction=1.0, message=err,
                            pid=os.getpid())
        except Exception:
            log.exception("could not write the progress file")
        if cancelled:
            raise
        raise RetrainFailed(f"retraining run {rid} failed: {err} (log: {log_path})", rid, str(log_path)) from exc
    finally:
        restore()


def _attach_log(log_path: Path) -> Callable[[], None]:
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


def _steps(cfg: RetrainConfig, store, rid: int, rdir: Path, serving: _Serving, prog: _Progress) -> dict:
    from mimic.training import trainer as _training
    from mimic.backbones import load_backbone
    from mimic.models.checkpoint import load_checkpoint, read_config
    from mimic.data.formats import load_dataset
    from mimic.data.schema import Dataset
    from mimic.serving.zeroshot import zero_shot_model

    # -- export: the corrections, split by uid hash -----------------------------------------------
    prog("export", 0.02, "exporting the accepted annotations")
    export_dir = rdir / "export"
    exp = store.export_training_set(export_dir, layout="jsonl", fractions=(1 - cfg.holdout, 0.0, cfg.holdout),
                                    seed=HOLDOUT_SEED, overwrite=True)
    store.attach_annotations(rid, exp.annotation_ids)
    corr = load_dataset(export_dir, format="jsonl")
    train_c, heldout = list(corr.splits.get("train", [])), list(corr.splits.get("test", []))
    from mimic.atomic import write_json_atomic
    write_json_atomic(rdir / "split.json", {
        "rule": f"db.export.split_of(uid, (1 - {cfg.holdout}, 0, {cfg.holdout}), seed={HOLDOUT_SEED!r}): "
                "SHA-256 of the mention uid; 'test' = held out",
        "train_uids": [m.id for m in train_c], "heldout_uids": [m.id for m in heldout],
        "annotation_ids": exp.annotation_ids})
    prog("export", 0.05, f"{len(exp.annotation_ids)} annotations: {len(train_c)} corrections to train on, "
                         f"{len(heldout)} held out; {exp.conflicts} conflicting and {exp.not_entity} NIL/ambiguous "
                         "mentions left out")

    # -- base dataset ----------------------------------------------------------------------------
    base_train, base_dev, base_kb = [], [], None
    if cfg.base_data:
        base = load_dataset(cfg.base_data)
        base_kb = base.kb
        base_dev = list(base.splits.get("dev", []))
        # Whatever judges the candidate must not be trained on, whichever source it comes from.
        judged = {_key(m) for m in heldout + base_dev}
        all_train = list(base.splits.get("train", []))
        base_train = [m for m in all_train if _key(m) not in judged]
        dropped = [m.id for m in train_c if _key(m) in judged]
        train_c = [m for m in train_c if _key(m) not in judged]
        prog("base", 0.07, f"base dataset {cfg.base_data}: {len(base_train)} train mentions, {len(base_dev)} dev "
                           f"mentions; {len(all_train) - len(base_train)} base train mentions and {len(dropped)} "
                           "corrections identical to a judged mention left out of training")
        if dropped:
            split = json.loads((rdir / "split.json").read_text())
            write_json_atomic(rdir / "split.json", {**split, "train_uids": [m.id for m in train_c],
                                                    "excluded_uids": dropped})
    kb, extra = _merge_kb(corr.kb, base_kb)
    if extra:
        log.warning("%d base-dataset entities are not in the store's KB; they are appended to the KB", extra)
    train_set = train_c + base_train
    if len(train_set) < 2:
        raise ValueError(f"only {len(train_set)} training mention(s) (after holding out {len(heldout)}): "
                         "need at least 2 accepted corrections or a base dataset")

    # -- models ------------------------------------------------------------------------------------
    device = _training.pick_device(cfg.device)
    freeze = cfg.freeze_backbone if cfg.freeze_backbone is not None else device.type != "cuda"
    if device.type == "cpu" and not freeze:
        log.warning("freeze_backbone=False ignored on the CPU: fine-tuning the backbone there takes hours")
        freeze = True
    if serving.checkpoint:
        serving_cfg = read_config(serving.checkpoint)
        serving_model = load_checkpoint(serving.checkpoint, device)
        model_type, mode = serving_cfg.get("model_type", "mimic"), serving_cfg["model_config"]["mode"]
        resave_backbone = freeze and bool(serving_cfg.get("backbone_trained"))
        lr = cfg.lr if cfg.lr is not None else (2e-4 if freeze else 1e-5)
    else:
        serving_model = zero_shot_model(load_backbone(cfg.backbone), cfg.model).to(device)
        model_type, mode, resave_backbone = cfg.model, "fixed", False
        lr = cfg.lr if cfg.lr is not None else (1e-3 if freeze else 1e-5)
    serving_model.eval()
    from mimic.backbones import backbone_label as _label
    backbone_label = _label(serving_model.backbone)
    prog("train", 0.1, f"serving: {serving.version}" + (f" (checkpoint {serving.checkpoint})" if serving.checkpoint else "")
                       + f"; training {len(train_set)} mentions, {cfg.epochs} epoch(s), lr {lr:g}, "
                       f"{'frozen' if freeze else 'trainable'} backbone, on {device}")

    # -- train -------------------------------------------------------------------------------------
    train_dir = rdir / "train"
    tc = _training.TrainConfig(
        output=str(train_dir), backbone=cfg.backbone, init_checkpoint=serving.checkpoint, model=model_type, mode=mode,
        lr=lr, adam_eps=1e-8, no_decay="standard", batch_size=cfg.batch_size, epochs=cfg.epochs, bf16=cfg.bf16,
        val_every=cfg.epochs + 1, patience=cfg.epochs + 1, seed=cfg.seed, freeze_backbone=freeze, device=str(device),
        eval_batch_size=cfg.eval_batch_size, eval_chunk_size=cfg.eval_chunk_size, progress=False, test_after=False)
    watcher = _EpochWatcher(prog, cfg.epochs, 0.1, 0.7)
    t_train = time.perf_counter()
    logging.getLogger("mimic").addHandler(watcher)
    try:
        # No dev split on purpose: the judging sets must not pick the epoch (that would bias the
        # comparison towards the candidate), so best/ is the last epoch.
        tsum = _training.train(tc, Dataset(kb, {"train": train_set}, name="retrain"))
    finally:
        logging.getLogger("mimic").removeHandler(watcher)
    t_train = round(time.perf_counter() - t_train, 2)
    best_dir = train_dir / "best"
    candidate = load_checkpoint(best_dir, device, backbone=serving_model.backbone if freeze else None)
    candidate.eval()

    # -- evaluate both on the same sets --------------------------------------------------------------
    prog("evaluate", 0.72, f"evaluating serving and candidate on {len(heldout)} held-out corrections"
                           + (f" and {len(base_dev)} base dev mentions" if base_dev else "")
                           + f" against {len(kb)} entities")
    sets = {"heldout": heldout}
    if base_dev:
        sets["base_dev"] = base_dev
    t_eval = time.perf_counter()
    res = _evaluate_models({"serving": serving_model, "candidate": candidate},
                           set() if serving.checkpoint else {"serving"}, kb, sets, cfg)
    t_eval = round(time.perf_counter() - t_eval, 2)
    write_json_atomic(rdir / "evaluation.json", {
        name: {s: {"ranks": m.get("ranks"), "mention_ids": [x.id for x in sets[s]]} for s, m in r.items()}
        for name, r in res.items()})
    promote, reason = decide_promotion(res["serving"], res["candidate"], cfg)
    prog("evaluate", 0.9, reason)

    # -- version -------------------------------------------------------------------------------------
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    version = f"r{rid}-{stamp}"
    version_dir = cfg.models_path / version
    if serving.checkpoint and Path(serving.checkpoint).resolve() in (version_dir.resolve(), *version_dir.resolve().parents):
        raise ValueError(f"refusing to write {version_dir}: it is (inside) the serving checkpoint")
    metrics = {
        "run_id": rid, "version": version,
        "serving": {"version": serving.version, "checkpoint": serving.checkpoint,
                    "scoring": "model" if serving.checkpoint else "zero-shot", **_strip_ranks(res["serving"])},
        "candidate": {"checkpoint": str(version_dir), **_strip_ranks(res["candidate"])},
        "delta": {"heldout_MRR": res["candidate"]["heldout"]["MRR"] - res["serving"]["heldout"]["MRR"]
                  if heldout else None,
                  "base_dev_H@1": res["candidate"]["base_dev"]["H@1"] - res["serving"]["base_dev"]["H@1"]
                  if base_dev else None},
        "decision": {"promote": promote, "reason": reason,
                     "rule": {"min_mrr_delta": cfg.min_mrr_delta, "max_dev_h1_drop": cfg.max_dev_h1_drop,
                              "min_heldout": cfg.min_heldout}},
        "data": {"annotations": len(exp.annotation_ids), "train_corrections": len(train_c),
                 "heldout_corrections": len(heldout), "base_train": len(base_train), "base_dev": len(base_dev),
                 "entities": len(kb), "base_entities_added": extra, "holdout": cfg.holdout,
                 "conflicts": exp.conflicts, "not_entity": exp.not_entity},
        "train": {"epochs": len(tsum.get("history", [])), "final_loss": (tsum.get("history") or [{}])[-1].get("train_loss"),
                  "lr": lr, "freeze_backbone": freeze, "device": str(device), "backbone": backbone_label,
                  "feature_cache_seconds": tsum.get("feature_cache_seconds"), "input_cache": tsum.get("input_cache"),
                  "bf16": bool(cfg.bf16 and device.type == "cuda"),
                  "samples_per_second": [h.get("samples_per_second") for h in tsum.get("history", [])],
                  "seconds": t_train},
        "evaluate_seconds": t_eval,
    }
    prog("version", 0.93, f"writing {version_dir}")
    _write_version(best_dir, version_dir, candidate, resave_backbone=resave_backbone, metrics=metrics)
    # train/last only serves to resume a run, which a retraining run never does; it holds the
    # optimizer state (twice the trained weights), so it goes. train/best stays for provenance.
    shutil.rmtree(train_dir / "last", ignore_errors=True)
    store.register_model_version(version, checkpoint=str(version_dir), backbone=backbone_label, metrics=metrics)
    store.update_training_run(rid, metrics=metrics, output_model_version=version)

    # -- promote ----------------------------------------------------------------------------------------
    if promote:
        store.promote(version)
        prog("promote", 0.97, f"{version} promoted (was {serving.version})")
    else:
        prog("promote", 0.97, f"{version} registered, not promoted; {serving.version} keeps serving")
    return {"run_id": rid, "version": version, "promoted": promote, "reason": reason, "metrics": metrics,
            "serving": serving.version,
            "paths": {"run_dir": str(rdir), "log": str(rdir / "log.txt"), "progress": str(rdir / "progress.json"),
                      "export": str(export_dir), "train": str(train_dir), "checkpoint": str(version_dir)}}


# ------------------------------------------------------------------------------------------------
# Own process (for the app) and the command line
# ------------------------------------------------------------------------------------------------
_REPO_ROOT = Path(__file__).resolve().parents[1]


def start_retrain_process(cfg: RetrainConfig, *, wait: bool = False, store=None,
                          python: str | None = None) -> subprocess.Popen:
    """Queue a run and start `python -m retraining.job` (the same command as `python -m mimic
    retrain`) for it in a new process and session, stdout/stderr appended to the run's log. The
    run id is `proc.run_id`; follow it with `read_progress` / `read_log`. Raises `RetrainBusy` at
    once if a run holds the lock (unless wait); should two starts race past that check, the later
    job process is refused by the lock and records its run as cancelled with the reason."""
    from mimic.atomic import write_json_atomic
    if not wait:
        holder = JobLock(cfg.lock_path).holder()
        if holder is not None:
            raise RetrainBusy(JobLock(cfg.lock_path).busy_message(holder))
    own = store is None
    if own:
        from db import open_store
        store = open_store(cfg.data_path)
    try:
        serving = resolve_serving(store, cfg)
        cfg = replace(cfg, data_dir=str(cfg.data_path))   # the child may run elsewhere
        run = store.create_training_run(cfg.to_dict(), base_model_version=serving.version if serving.registered else None)
        rdir = run_dir(cfg.data_path, run.id)
        rdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(rdir / "retrain_config.json", cfg.to_dict())
        cmd = [python or sys.executable, "-m", "retraining", "--config", str(rdir / "retrain_config.json"),
               "--run-id", str(run.id), "--wait" if wait else "--no-wait"]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(_REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        # progress.json exists before the process does, so the app can follow the run at once
        _write_progress(cfg.data_path, run.id, status="queued", step="start", fraction=0.0,
                        message="starting the job process", pid=None, log=str(rdir / "log.txt"))
        with open(rdir / "log.txt", "ab") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, close_fds=True)   # own session: survives the app's Ctrl-C
        store.update_training_run(run.id, log_path=str(rdir / "log.txt"), metrics={"pid": proc.pid})
        if (read_progress(cfg.data_path, run.id) or {}).get("status") == "queued":   # the job has not written yet
            _write_progress(cfg.data_path, run.id, message=f"started process {proc.pid}", pid=proc.pid)
        proc.run_id = run.id
        return proc
    finally:
        if own:
            store.close()


def maybe_start_retrain(cfg: RetrainConfig, store=None, now: datetime | None = None) -> tuple[subprocess.Popen | None, str]:
    """For a periodic timer: start a job process if `should_retrain` says so. -> (process or None, reason)."""
    own = store is None
    if own:
        from db import open_store
        store = open_store(cfg.data_path)
    try:
        due, reason = should_retrain(store, cfg, now)
        if not due:
            return None, reason
        try:
            return start_retrain_process(cfg, store=store), reason
        except RetrainBusy as busy:
            return None, str(busy)
    finally:
        if own:
            store.close()


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML/JSON file of RetrainConfig fields (environment: DATA_DIR, "
                                    "MIMIC_CHECKPOINT, MIMIC_BACKBONE, MIMIC_RETRAIN_<FIELD>; flags win)")
    p.add_argument("--data-dir", help="the app's DATA_DIR (store, runs/, models/)")
    p.add_argument("--base-data", help="base dataset to train with (train split) and judge on (dev split)")
    p.add_argument("--checkpoint", help="serving checkpoint when no version is promoted (default: zero-shot)")
    p.add_argument("--ignore-promoted", action="store_true", help="start from --checkpoint even if a version is promoted")
    p.add_argument("--backbone", help="backbone of the zero-shot serving model (offline | clip | a CLIP folder)")
    p.add_argument("--models-dir", help="where versions are written (default DATA_DIR/models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--holdout", type=float, help="fraction of corrections held out (default 0.2)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast when training on CUDA (default on)")
    p.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="train the heads only (always on the CPU)")
    p.add_argument("--min-mrr-delta", type=float, help="promotion: held-out MRR gain required (default 0)")
    p.add_argument("--max-dev-h1-drop", type=float, help="promotion: base dev H@1 drop allowed (default 0.005)")
    p.add_argument("--min-new-annotations", type=int, help="policy: N new accepted annotations")
    p.add_argument("--every-hours", type=float, help="policy: T hours since the last successful run")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=False,
                   help="wait for a running job instead of refusing (default: refuse)")
    p.add_argument("--wait-timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--if-due", action="store_true", help="run only if the policy says a run is due")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help="the summary JSON is always printed; with PATH also written there")
    p.add_argument("--run-id", type=int, help=argparse.SUPPRESS)   # a run queued by start_retrain_process


def add_retrain_parser(subparsers) -> argparse.ArgumentParser:
    """Register `retrain` on `python -m mimic`'s subparsers."""
    p = subparsers.add_parser("retrain", help="fine-tune on accepted annotations, evaluate, maybe promote",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=cmd_retrain)
    return p


def config_from_args(a) -> RetrainConfig:
    over = {"data_dir": a.data_dir, "base_data": a.base_data, "checkpoint": a.checkpoint, "backbone": a.backbone,
            "models_dir": a.models_dir, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr,
            "holdout": a.holdout, "device": a.device, "freeze_backbone": a.freeze_backbone, "bf16": a.bf16,
            "min_mrr_delta": a.min_mrr_delta, "max_dev_h1_drop": a.max_dev_h1_drop,
            "min_new_annotations": a.min_new_annotations, "every_hours": a.every_hours}
    if a.ignore_promoted:
        over["prefer_promoted"] = False
    if a.config:
        return RetrainConfig.from_yaml(a.config, **over)
    return RetrainConfig.from_env(**over)


def _print_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path and path != "-":
        from mimic.atomic import write_text_atomic
        write_text_atomic(path, text + "\n")
    print(text, flush=True)


def cmd_retrain(a) -> None:
    """`python -m mimic retrain`. Exit status: 0 done (promoted or not) or not due; 1 the run
    failed (recorded, see its log); 3 refused, another run holds the lock; 143 stopped by SIGTERM
    (recorded as cancelled)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="[mimic] %(message)s")
    cfg = config_from_args(a)

    def on_term(signum, frame):
        raise RetrainCancelled(f"stopped by signal {signum}")
    try:
        previous = signal.signal(signal.SIGTERM, on_term)   # a stop from the app records the run as cancelled
    except ValueError:
        previous = None                                     # not the main thread: leave signals alone
    try:
        _retrain_command(a, cfg)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _retrain_command(a, cfg: RetrainConfig) -> None:
    if a.if_due:
        from db import open_store
        with open_store(cfg.data_path) as store:
            due, reason = should_retrain(store, cfg)
        if not due:
            _print_json({"ran": False, "reason": reason}, a.json)
            return
        log.warning("retraining is due: %s", reason)
    wait = (a.wait_timeout if a.wait_timeout is not None else True) if a.wait else False
    try:
        summary = run_retrain(cfg, wait=wait, run_id=a.run_id)
    except RetrainBusy as busy:
        print(f"error: {busy}", file=sys.stderr)
        _print_json({"ran": False, "status": "refused", "reason": str(busy)}, a.json)
        raise SystemExit(3)
    except RetrainCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        _print_json({"ran": True, "status": "cancelled", "reason": str(exc)}, a.json)
        raise SystemExit(128 + signal.SIGTERM)
    except RetrainFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        _print_json({"ran": True, "status": "failed", "run_id": exc.run_id, "log": exc.log_path,
                     "error": str(exc)}, a.json)
        raise SystemExit(1)
    _print_json({"ran": True, **summary}, a.json)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retraining", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(ap)
    a = ap.parse_args(argv)
    try:
        cmd_retrain(a)
    except SystemExit as exc:
        return int(exc.code or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
