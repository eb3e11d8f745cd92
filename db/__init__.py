"""MIMIC Studio's annotation store: SQLAlchemy 2 persistence for entity-linking corrections.

    from db import open_store
    store = open_store()                       # DATA_DIR (./data) and DATABASE_URL from the environment
    store.add_annotator("ana")
    store.import_kb(dataset.kb)
    store.import_mentions("premarked.jsonl")   # mentions + model candidates
    item = store.next_item("ana")              # most uncertain pending mention, leased to ana
    store.submit("ana", item.mention.id, entity_id="Q42", seconds_spent=7.5, request_id=client_uuid)
    store.undo("ana")
    store.export_training_set("exports/v3")    # official MIMIC layout, `python -m mimic train` reads it

SQLite by default (WAL, or the rollback journal on network file systems), any SQLAlchemy URL by
configuration. Every decision is also appended to DATA_DIR/journal/annotations.jsonl before it
commits, so the database can be rebuilt from the journal (`AnnotationStore.reconcile`).
"""

from .agreement import agreement_report, cohen_kappa, fleiss_kappa, fleiss_kappa_from_counts
from .config import Settings, StorageReport, describe_location
from .engine import get_engine, make_engine, session_scope
from .errors import (
    Conflict,
    Forbidden,
    InvalidImage,
    InvalidInput,
    InvalidSpan,
    NotFound,
    StoreBusy,
    StoreError,
    UnknownEntity,
)
from .journal import Journal, scan_journal
from .migrate import current_revision, head_revision, upgrade
from .records import (
    AnnotationRecord,
    AnnotatorRecord,
    CandidateRecord,
    EntityRecord,
    EntityVersionRecord,
    ImportReport,
    MentionRecord,
    ModelVersionRecord,
    PredictionRecord,
    ProgressRecord,
    QueueItem,
    ReconcileReport,
    ReviewDecision,
    ReviewItem,
    ReviewPage,
    SignInRecord,
    TrainingExport,
    TrainingRunRecord,
    UserRecord,
)
from .store import AnnotationStore, open_store

__all__ = [
    "open_store",
    "AnnotationStore",
    "Settings",
    "StorageReport",
    "describe_location",
    "get_engine",
    "make_engine",
    "session_scope",
    "upgrade",
    "current_revision",
    "head_revision",
    "Journal",
    "scan_journal",
    "cohen_kappa",
    "fleiss_kappa",
    "fleiss_kappa_from_counts",
    "agreement_report",
    "StoreError",
    "NotFound",
    "UnknownEntity",
    "InvalidInput",
    "InvalidSpan",
    "InvalidImage",
    "Conflict",
    "Forbidden",
    "StoreBusy",
    "AnnotationRecord",
    "AnnotatorRecord",
    "CandidateRecord",
    "EntityRecord",
    "EntityVersionRecord",
    "ImportReport",
    "MentionRecord",
    "ModelVersionRecord",
    "PredictionRecord",
    "ProgressRecord",
    "QueueItem",
    "ReconcileReport",
    "ReviewDecision",
    "ReviewItem",
    "ReviewPage",
    "SignInRecord",
    "UserRecord",
    "TrainingExport",
    "TrainingRunRecord",
]
