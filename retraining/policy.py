"""When to retrain (`should_retrain`), and the periodic check that starts a due run
(`maybe_start_retrain`)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

from db import open_store

from .config import RetrainConfig
from .errors import RetrainBusy
from .lock import JobLock
from .process import start_retrain_process


def accepted_annotation_ids(store) -> set[int]:
    """Ids of the annotations behind every accepted entity link (what an export would train on)."""
    resolutions, _ = store.resolved()
    return {a for r in resolutions.values() if r.decision == "entity" for a in r.annotation_ids}


def should_retrain(store, cfg: RetrainConfig, now: datetime | None = None) -> tuple[bool, str]:
    """The policy: due when at least `min_new_annotations` accepted annotations are new since the
    last successful run, and/or `every_hours` have passed since it finished and something is new
    (retraining on unchanged data would only reproduce the last candidate). With both set, either
    trigger suffices. Never due while a run holds the lock."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
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
            ended = ended.replace(tzinfo=UTC)
        waited = (now - ended).total_seconds() / 3600
        if waited < float(cfg.retry_hours):
            return False, (
                f"run {latest.id} {latest.status} {waited:.2f} h ago: the policy retries after "
                f"{float(cfg.retry_hours):g} h"
            )
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
            return False, (
                f"not due: {new} new accepted annotation(s) {since}"
                + (f" (< {n})" if n is not None else "")
                + f", {hours:.1f} h of {t:g} h"
            )
    return False, f"not due: {new} new accepted annotation(s) {since}" + (f" (< {n})" if n is not None else "")


def maybe_start_retrain(
    cfg: RetrainConfig, store=None, now: datetime | None = None
) -> tuple[subprocess.Popen | None, str]:
    """For a periodic timer: start a job process if `should_retrain` says so. -> (process or None, reason)."""
    own = store is None
    if own:
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
