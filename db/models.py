"""The database schema (SQLAlchemy 2 typed ORM). Migrations in db/migrations create exactly this.

Design rules that the operations in `store.py` rely on:

* Nothing an annotator did is ever deleted or updated in place, except the two status fields
  that record what happened later: `Annotation.status` (current → superseded | undone) with
  `superseded_by` / `undone_at`. At most one annotation per (mention, annotator) is `current`
  (a partial unique index), so "the decision of X on M" is always well defined, and every earlier
  one stays queryable as history.
* Every row that must be matched across a rebuild from the journal has a stable external key:
  `Annotation.request_id`, `Mention.uid`, `Prediction.uid`, `Annotator.name`, `KbEntity.id`
  (the KB's own id, e.g. a Wikidata QID). Integer ids are local to one database file.
* Images are stored once, by the SHA-256 of their bytes (`images` table + DATA_DIR/images/).
* A KB entity edit bumps `KbEntity.version` and adds a `KbEntityVersion` row (the full record
  after the edit), so any past state can be shown and each annotation records the version it saw.
* Times are stored as naive UTC and returned as aware UTC datetimes (`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ROLES = ("annotator", "reviewer", "admin")
DECISIONS = ("entity", "nil", "ambiguous", "skip")
#: Decisions that settle a mention for the annotator who made them (skip only defers it).
FINAL_DECISIONS = ("entity", "nil", "ambiguous")
ANNOTATION_STATUSES = ("current", "superseded", "undone")
#: Roles whose decision is a resolution: the gold rule's "senior" roles.
RESOLVING_ROLES = ("reviewer", "admin")


def resolves(role: str | None) -> bool:
    """The gold rule's one test: a decision made in the role `role` (the annotation's own role, the
    one its author had when deciding, `Annotation.role`) is a reviewer's resolution and wins."""
    return role in RESOLVING_ROLES


RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

# Deterministic constraint names: Alembic batch migrations on SQLite need names to find them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database (portable across SQLite and PostgreSQL), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _choice(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint(_choice("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # A salted argon2id hash (app/auth.py hashes; the store only keeps it). NULL for annotators who
    # sign in another way (MIMIC_USERS bootstrap, HF OAuth) or who are only named in an import.
    password_hash: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Project(Base):
    """An annotation project: its own corpus (the mentions that name it), guidelines and overlap.

    Mentions with no project belong to the built-in default project (the demo queue and mentions
    saved from Link), so a database written before projects existed keeps working unchanged.
    """

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="", server_default="")  # Markdown
    # How many annotators decide each mention before it leaves the queue (the global overlap
    # setting is the default project's).
    annotators_per_mention: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    kb: Mapped[str] = mapped_column(String(200), default="default", server_default="default")
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One stored image file: DATA_DIR/images/<sha256[:2]>/<sha256><ext>."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    ext: Mapped[str] = mapped_column(String(8))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KbEntity(Base):
    """The current state of one knowledge-base entity (history in kb_entity_versions)."""

    __tablename__ = "kb_entities"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[list[Any]] = mapped_column(default=list)
    images: Mapped[list[Any]] = mapped_column(default=list)  # paths (absolute, or relative to DATA_DIR)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    # id, name and aliases lower-cased on one text: a plain LIKE over it is the whole search,
    # with no per-row function call (see entity_search_text).
    search_text: Mapped[str] = mapped_column(Text, default="", server_default="")


def entity_search_text(entity_id: str, name: str, aliases) -> str:
    return "\n".join([entity_id, name, *aliases]).lower()


class KbEntityVersion(Base):
    """The full entity record as it was after edit number `version`."""

    __tablename__ = "kb_entity_versions"
    __table_args__ = (UniqueConstraint("entity_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[str] = mapped_column(ForeignKey("kb_entities.id"))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    aliases: Mapped[list[Any]] = mapped_column(default=list)
    images: Mapped[list[Any]] = mapped_column(default=list)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("annotators.id"))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Mention(Base):
    """A mention to link. `margin` caches the top-1 minus top-2 score of its latest prediction
    (the queue's uncertainty order), NULL when it has no prediction with two candidates;
    `decided` caches the number of current final decisions on it."""

    __tablename__ = "mentions"
    __table_args__ = (
        CheckConstraint('start >= 0 AND start < "end"', name="span"),
        # The queue reads pending mentions (decided below overlap) in margin order.
        Index("ix_mentions_decided_margin_id", "decided", "margin", "id"),
        Index("ix_mentions_project_id", "project_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(255), unique=True)
    source: Mapped[str] = mapped_column(String(200), default="")
    sentence: Mapped[str] = mapped_column(Text)
    mention: Mapped[str] = mapped_column(Text)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"))
    margin: Mapped[float | None] = mapped_column(Float)
    # How many annotators have a current final decision on it: kept in step by every write that
    # changes an annotation's status, so the queue can skip finished mentions without counting.
    decided: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # NULL: the default project (see Project).
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    # At most one promoted version: a unique index over the rows where promoted is true.
    __table_args__ = (
        Index(
            "uq_model_versions_one_promoted",
            "promoted",
            unique=True,
            sqlite_where=text("promoted = 1"),
            postgresql_where=text("promoted"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    checkpoint: Mapped[str | None] = mapped_column(Text)
    backbone: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prediction(Base):
    """One model's ranked candidate list for one mention (children: prediction_candidates)."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_mention_created", "mention_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    mention_id: Mapped[int] = mapped_column(ForeignKey("mentions.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    margin: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictionCandidate(Base):
    """Candidate number `rank` (0 = best) with its total score S and the three unit scores."""

    __tablename__ = "prediction_candidates"

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), primary_key=True)
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity_id: Mapped[str] = mapped_column(ForeignKey("kb_entities.id"))
    s: Mapped[float] = mapped_column(Float)
    s_t: Mapped[float | None] = mapped_column(Float)
    s_v: Mapped[float | None] = mapped_column(Float)
    s_c: Mapped[float | None] = mapped_column(Float)


class Annotation(Base):
    """One decision by one annotator on one mention. Never deleted; see the module docstring."""

    __tablename__ = "annotations"
    __table_args__ = (
        CheckConstraint(_choice("decision", DECISIONS), name="decision"),
        CheckConstraint(_choice("status", ANNOTATION_STATUSES), name="status"),
        CheckConstraint("(decision = 'entity') = (entity_id IS NOT NULL)", name="entity_iff_decision"),
        Index(
            "uq_annotations_one_current",
            "mention_id",
            "annotator_id",
            unique=True,
            sqlite_where=text("status = 'current'"),
            postgresql_where=text("status = 'current'"),
        ),
        Index("ix_annotations_annotator_status", "annotator_id", "status"),
        Index("ix_annotations_mention_status", "mention_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(100), unique=True)
    mention_id: Mapped[int] = mapped_column(ForeignKey("mentions.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    decision: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[str | None] = mapped_column(ForeignKey("kb_entities.id"))
    entity_version: Mapped[int | None] = mapped_column(Integer)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    seconds_spent: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    # An annotator's flag for review (e.g. "unsure", "kb-missing", "bad-span"); NULL when none.
    flag: Mapped[str | None] = mapped_column(String(32))
    # The annotator's role when deciding (migration 0005): the gold rule reads this, never the
    # current role, so a later promotion or demotion does not rewrite past gold.
    role: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(12), default="current")
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    undone_at: Mapped[datetime | None] = mapped_column()
    undo_request_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def decision_role():
    """The column the gold rule reads: the annotation's own role (the one it was decided in); the
    annotator's current role only for a row written before migration 0005 could fill it (none
    after the backfill). Select it in a query that joins Annotator."""
    return func.coalesce(Annotation.role, Annotator.role).label("role")


class Lease(Base):
    """A queue item handed to an annotator and reserved for them until `expires_at`.

    The primary key (mention, slot) is what makes two annotators unable to hold the same item at
    the same time: with overlap k there are k slots per mention, and a claim is an INSERT that the
    database itself refuses when the slot is taken (or a conditional UPDATE of an expired lease).
    """

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_annotator", "annotator_id"),)

    mention_id: Mapped[int] = mapped_column(ForeignKey("mentions.id"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (CheckConstraint(_choice("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    export_dir: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    base_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    output_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class TrainingRunAnnotation(Base):
    """Which annotations went into which training run."""

    __tablename__ = "training_run_annotations"

    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id"), primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id"), primary_key=True)
