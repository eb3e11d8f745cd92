"""The store's plumbing: transactions (with retry and journaling), row lookups, input checks and
conversions from rows to records. The operations live in the mixins (kb, mentions, annotations,
queue, runs, reports) that `store.AnnotationStore` combines.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar, overload

from sqlalchemy import Engine, Row, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import statements as Q
from .config import Settings, StorageReport
from .engine import backoff_delay, get_engine, retry_on_lock, session_scope, write_lock
from .errors import Conflict, InvalidInput, NotFound, UnknownEntity
from .images import ImageStore
from .journal import Journal
from .models import Annotation, Annotator, Image, Mention, ModelVersion, Prediction
from .records import AnnotationRecord, CandidateRecord, MentionRecord, PredictionRecord

T = TypeVar("T")

# Databases this thread is inside a write transaction on (see StoreBase._write).
_WRITING = threading.local()

# Bounds on free text, so a runaway client cannot store megabytes in one field.
MAX_SENTENCE = 20_000
MAX_NAME = 200
MAX_COMMENT = 5_000
MAX_REQUEST_ID = 100


# ------------------------------------------------------------------------------------------------
# Input checks (each raises InvalidInput naming the field)
# ------------------------------------------------------------------------------------------------


def check_text(value: Any, field: str, *, max_len: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"expected a string, got {type(value).__name__}", field)
    if not allow_empty and not value.strip():
        raise InvalidInput("must not be empty", field)
    if len(value) > max_len:
        raise InvalidInput(f"is {len(value)} characters long, the limit is {max_len}", field)
    if "\x00" in value:
        raise InvalidInput("contains a NUL character", field)
    return value


def check_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"expected an integer, got {type(value).__name__} {value!r:.40}", field)
    return value


@overload
def check_float(
    value: Any,
    field: str,
    *,
    optional: Literal[False] = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float: ...
@overload
def check_float(
    value: Any, field: str, *, optional: bool, minimum: float | None = None, maximum: float | None = None
) -> float | None: ...
def check_float(
    value: Any, field: str, *, optional: bool = False, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"expected a number, got {type(value).__name__} {value!r:.40}", field)
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInput(f"must be a finite number, got {value}", field)
    if minimum is not None and value < minimum:
        raise InvalidInput(f"must be >= {minimum}, got {value}", field)
    if maximum is not None and value > maximum:
        raise InvalidInput(f"must be <= {maximum}, got {value}", field)
    return value


def check_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidInput(f"must be one of {', '.join(choices)}; got {value!r:.60}", field)
    return value


class StoreBase:
    """Settings, engine, image store and journal, plus the transaction helpers."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine if engine is not None else get_engine(settings)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = write_lock(settings.database_url) if self.is_sqlite else None
        self.images = ImageStore(
            settings.images_dir, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        self.journal = Journal(settings.journal_path, fsync=settings.journal_fsync)
        self.location: StorageReport | None = None  # set by open_store

    # -- transactions ------------------------------------------------------------------------

    def read_transaction(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in a read-only transaction (deferred BEGIN on SQLite)."""

        def run() -> T:
            with session_scope(self.engine, read_only=True) as s:
                return fn(s)

        return retry_on_lock(run, self.settings.write_retries)

    def _write(self, fn: Callable[[Session, list[dict]], T]) -> T:
        """Run `fn(session, events)` in one write transaction and return its result.

        `fn` appends the journal events of what it did to `events`; they are written to the
        journal as one group after every statement succeeded and *before* COMMIT, and cancelled
        with an abort line if COMMIT fails (see journal.py for the invariant). A lock error
        reruns the whole transaction with backoff; so does a unique-key race (possible on
        PostgreSQL, where writers are not serialised), which the rerun then sees as a duplicate.
        """

        def attempt() -> T:
            session = Session(self.engine, expire_on_commit=False)
            txn = None
            try:
                session.begin()
                # Take the write lock now (BEGIN IMMEDIATE on SQLite), not at the first statement:
                # reconcile reads the journal before any SQL and must already hold the lock then.
                session.connection()
                events: list[dict] = []
                result = fn(session, events)
                session.flush()
                if events:
                    txn = self.journal.append_group(events)
                session.commit()
                return result
            except BaseException:
                try:
                    if txn is not None:  # journaled but not committed: cancel the group first
                        self.journal.append_abort(txn)
                finally:
                    session.rollback()
                raise
            finally:
                session.close()

        def serialised() -> T:
            if self._write_lock is None:
                return attempt()
            held = _WRITING.__dict__.setdefault("urls", set())
            if self.settings.database_url in held:  # would wait on itself forever: fail loudly
                raise RuntimeError("a write transaction was started inside another one on the same database")
            with self._write_lock:
                held.add(self.settings.database_url)
                try:
                    return attempt()
                finally:
                    held.discard(self.settings.database_url)

        for race in range(3):
            try:
                return retry_on_lock(serialised, self.settings.write_retries)
            except IntegrityError as e:
                if race == 2:
                    raise Conflict(f"the write collided with a concurrent one three times: {e.orig}") from e
                time.sleep(backoff_delay(race))
        raise AssertionError("unreachable")

    # -- lookups inside a session -------------------------------------------------------------

    # The lookups below return read-only rows (attribute access like an ORM object, see
    # statements.py for why); write through UPDATE statements, not by setting attributes.

    def _annotator_row(self, s: Session, name: Any, field: str = "annotator") -> Row:
        check_text(name, field, max_len=MAX_NAME)
        row = s.connection().execute(Q.annotator_by_name(), {"name": name}).first()
        if row is None:
            raise NotFound(f"no annotator named {name!r}", field)
        return row

    def _mention_row(self, s: Session, mention: Any, field: str = "mention_id") -> Row:
        """A mention (with its image's `ext`) by integer id or by uid string."""
        if isinstance(mention, str):
            row = s.connection().execute(Q.mention_by("uid"), {"key": mention}).first()
        else:
            row = s.connection().execute(Q.mention_by("id"), {"key": check_int(mention, field)}).first()
        if row is None:
            raise NotFound(f"no mention {mention!r}", field)
        return row

    def _entity_row(self, s: Session, entity_id: Any, field: str = "entity_id") -> Row:
        if isinstance(entity_id, int) and not isinstance(entity_id, bool):
            entity_id = str(entity_id)
        check_text(entity_id, field, max_len=MAX_NAME)
        row = s.connection().execute(Q.entity_by_id(), {"id": entity_id}).first()
        if row is None:
            raise UnknownEntity(f"unknown entity {entity_id!r} (not in the knowledge base)", field)
        return row

    def _model_version_row(
        self, s: Session, name: Any, field: str = "model_version", create: bool = False
    ) -> ModelVersion:
        check_text(name, field, max_len=MAX_NAME)
        row = s.scalar(select(ModelVersion).where(ModelVersion.name == name))
        if row is None:
            if not create:
                raise NotFound(f"no model version named {name!r}", field)
            row = ModelVersion(name=name, metrics={})
            s.add(row)
            s.flush()
        return row

    # -- rows -> records ----------------------------------------------------------------------

    def image_path(self, sha256: str | None, s: Session | None = None, ext: str | None = None) -> str | None:
        if not sha256:
            return None
        if ext is None and s is not None:
            img = s.get(Image, sha256)
            ext = img.ext if img else ""
        return str(self.images.path_for(sha256, ext or ""))

    def _mention_record(self, s: Session, m: Mention | Row) -> MentionRecord:
        return MentionRecord(
            id=m.id,
            uid=m.uid,
            source=m.source,
            sentence=m.sentence,
            mention=m.mention,
            start=m.start,
            end=m.end,
            image_sha256=m.image_sha256,
            image_path=self.image_path(m.image_sha256, s, getattr(m, "ext", None)),
            margin=m.margin,
            created_at=m.created_at,
        )

    def _prediction_record(self, s: Session, p: Prediction) -> PredictionRecord:
        rows = s.execute(Q.candidates_with_names(), {"pid": p.id}).all()
        mv = s.connection().execute(Q.model_version_name(), {"id": p.model_version_id}).scalar()
        return PredictionRecord(
            id=p.id,
            uid=p.uid,
            mention_id=p.mention_id,
            model_version=mv or "",
            margin=p.margin,
            created_at=p.created_at,
            candidates=[
                CandidateRecord(
                    rank=c.rank, entity_id=c.entity_id, entity_name=name, s=c.s, s_t=c.s_t, s_v=c.s_v, s_c=c.s_c
                )
                for c, name in rows
            ],
        )

    def _latest_prediction(self, s: Session, mention_id: int) -> Prediction | None:
        return s.scalar(Q.latest_prediction(), {"mid": mention_id})

    def _annotation_record(
        self,
        s: Session,
        a: Annotation | Row | SimpleNamespace,  # an ORM object, a Core row or _insert_annotation's result
        *,
        duplicate: bool = False,
        annotator_name: str | None = None,
        mention_uid: str | None = None,
    ) -> AnnotationRecord:
        if annotator_name is None:
            annotator_name = s.execute(select(Annotator.name).where(Annotator.id == a.annotator_id)).scalar_one()
        if mention_uid is None:
            mention_uid = self._mention_row(s, a.mention_id).uid
        return AnnotationRecord(
            id=a.id,
            request_id=a.request_id,
            mention_id=a.mention_id,
            mention_uid=mention_uid,
            annotator=annotator_name,
            decision=a.decision,
            entity_id=a.entity_id,
            entity_version=a.entity_version,
            prediction_id=a.prediction_id,
            seconds_spent=a.seconds_spent,
            comment=a.comment,
            status=a.status,
            superseded_by=a.superseded_by,
            undone_at=a.undone_at,
            created_at=a.created_at,
            duplicate=duplicate,
            flag=getattr(a, "flag", None),
        )

    def resolve_data_path(self, p: str) -> str | None:
        """A stored image path (relative to DATA_DIR) made absolute, or None when it does not resolve
        inside DATA_DIR/images (an absolute path, a `..` escape, a symlink leading out): the store
        never follows a path outside its own image folder."""
        if not isinstance(p, str) or not p or "\x00" in p or Path(p).is_absolute():
            return None
        root = Path(self.settings.images_dir).resolve()
        target = (Path(self.settings.data_dir) / p).resolve()
        if root not in target.parents:
            return None
        return str(target)

    def store_relative(self, path: str | Path) -> str:
        """The DATA_DIR-relative name of a file of the image store (what the database holds)."""
        return Path(path).resolve().relative_to(Path(self.settings.data_dir).resolve()).as_posix()


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()
