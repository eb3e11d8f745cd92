"""`AnnotationStore`: every operation of the annotation store, and `open_store`, the way to get one.

The operations are grouped by concept in mixins (one module each):
  kb.py           annotators; knowledge-base entities with versioned edits; search; bulk KB import
  mentions.py     mentions (image stored once by content hash), predictions
  mention_import.py  corpus import (JSONL, CSV, official, MELBench; images zip), optionally into a project
  projects.py     annotation projects: guidelines, overlap, progress, pre-annotation
  annotations.py  submit / skip / undo, history, journal reconciliation and rebuild
  queue.py        next item per annotator (uncertainty order, leases), queue size, release
  reports.py      progress and speed, agreement, accepted links, one label per mention
  runs.py         model versions (promotion) and training runs
  export.py       gold mentions; JSONL / CSV / training-set exports
  review.py       the review list, resolving a mention, the agreement figures of the Review tab
  users.py        users who sign in: role, active flag, argon2 password hash
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import Engine, text

from .annotations import AnnotationsMixin
from .config import Settings, describe_location
from .engine import dispose_engine, get_engine
from .export import ExportsMixin
from .kb import KbMixin
from .mention_import import MentionImportMixin
from .migrate import upgrade
from .projects import ProjectsMixin
from .queue import QueueMixin
from .reconcile import JournalReplayMixin
from .reports import ReportsMixin
from .review import ReviewMixin
from .runs import RunsMixin
from .users import UsersMixin

log = logging.getLogger("mimic.db")


class AnnotationStore(
    KbMixin,
    MentionImportMixin,
    ProjectsMixin,
    JournalReplayMixin,
    AnnotationsMixin,
    QueueMixin,
    ReportsMixin,
    RunsMixin,
    ExportsMixin,
    ReviewMixin,
    UsersMixin,
):
    """The annotation store over one database (see the mixins for the operations).

    Thread-safe: every call opens its own short session from the shared engine. Use `open_store`
    to get one with the schema migrated and the journal reconciled.
    """

    def __init__(self, settings: Settings, engine: Engine | None = None):
        super().__init__(settings, engine)

    # -- maintenance ---------------------------------------------------------------------------

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check` ("ok" when healthy); "ok" for other databases."""
        if not self.is_sqlite:
            return "ok"
        return self.read_transaction(lambda s: "\n".join(r[0] for r in s.execute(text("PRAGMA integrity_check"))))

    def close(self) -> None:
        """Close the journal file and this process's pooled connections."""
        self.journal.close()
        dispose_engine(self.settings)

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(
    data_dir: str | Path | None = None,
    url: str | None = None,
    *,
    settings: Settings | None = None,
    reconcile: bool = True,
    env: Mapping[str, str] | None = None,
    **overrides,
) -> AnnotationStore:
    """Start the store: create DATA_DIR, migrate the schema to head, reconcile the journal, and log
    where the data lives (a warning when that place is ephemeral).

    Arguments override the environment (see config.py); `overrides` are Settings fields
    (e.g. overlap=2, lease_seconds=60). Safe to call from several processes at once: migrations and
    reconciliation each run in one write transaction.
    """
    if settings is None:
        settings = Settings.from_env(data_dir, url, env=env, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    settings.journal_path.parent.mkdir(parents=True, exist_ok=True)
    report = describe_location(settings, env=env)
    log.info(report.summary())
    for w in report.warnings:
        log.warning(w)
    engine = get_engine(settings)
    upgrade(engine)
    store = AnnotationStore(settings, engine)
    store.location = report
    if reconcile:
        r = store.reconcile()
        if r.events_reapplied or r.events_rejournaled or r.incomplete_groups or r.bad_lines:
            log.warning(
                "journal reconciliation: %d event(s) re-applied to the database, %d appended to the "
                "journal, %d incomplete group(s) and %d unreadable line(s) ignored",
                r.events_reapplied,
                r.events_rejournaled,
                r.incomplete_groups,
                len(r.bad_lines),
            )
    return store
