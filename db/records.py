"""Plain, immutable values returned by the store.

The store never hands out ORM objects: they are tied to a session that is closed when the call
returns, and a caller touching one later would trigger lazy loads or DetachedInstanceError.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from dataclasses import Field


class _Record:
    if TYPE_CHECKING:  # every subclass is a dataclass (what `asdict` needs)
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (datetimes as ISO 8601 strings)."""

        def conv(v):
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v

        return {k: conv(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class AnnotatorRecord(_Record):
    id: int
    name: str
    role: str
    active: bool
    created_at: datetime


@dataclass(frozen=True)
class EntityRecord(_Record):
    id: str
    name: str
    text: str
    aliases: list[str]
    images: list[str]
    version: int
    updated_at: datetime
    updated_by: str | None


@dataclass(frozen=True)
class EntityVersionRecord(_Record):
    entity_id: str
    version: int
    name: str
    text: str
    aliases: list[str]
    images: list[str]
    author: str | None
    note: str | None
    created_at: datetime


@dataclass(frozen=True)
class MentionRecord(_Record):
    id: int
    uid: str
    source: str
    sentence: str
    mention: str
    start: int
    end: int
    image_sha256: str | None
    image_path: str | None  # absolute path of the stored image file
    margin: float | None
    created_at: datetime

    def html(self) -> str:
        """The sentence as HTML with the mention in <mark>. All text is escaped: markup stored in
        a sentence is displayed as text, never interpreted (the store keeps text verbatim)."""
        s, a, b = self.sentence, self.start, self.end
        return f"{escape(s[:a])}<mark>{escape(s[a:b])}</mark>{escape(s[b:])}"


@dataclass(frozen=True)
class CandidateRecord(_Record):
    rank: int
    entity_id: str
    entity_name: str
    s: float
    s_t: float | None
    s_v: float | None
    s_c: float | None


@dataclass(frozen=True)
class PredictionRecord(_Record):
    id: int
    uid: str
    mention_id: int
    model_version: str
    margin: float | None
    created_at: datetime
    candidates: list[CandidateRecord]


@dataclass(frozen=True)
class QueueItem(_Record):
    """The next mention for an annotator, reserved for them until `lease_expires_at`."""

    mention: MentionRecord
    prediction: PredictionRecord | None
    lease_expires_at: datetime
    previously_skipped: bool


@dataclass(frozen=True)
class AnnotationRecord(_Record):
    id: int
    request_id: str
    mention_id: int
    mention_uid: str
    annotator: str
    decision: str  # entity | nil | ambiguous | skip
    entity_id: str | None
    entity_version: int | None
    prediction_id: int | None
    seconds_spent: float | None
    comment: str | None
    status: str  # current | superseded | undone
    superseded_by: int | None
    undone_at: datetime | None
    created_at: datetime
    duplicate: bool = False  # True when this call stored nothing: the same submission was already there
    flag: str | None = None  # one of db.annotations.FLAGS, raised for the reviewers


@dataclass(frozen=True)
class ProgressRecord(_Record):
    annotator: str
    role: str
    decided: int  # current entity / nil / ambiguous decisions
    entity: int
    nil: int
    ambiguous: int
    skipped: int  # mentions whose current state is "skipped"
    changed: int  # decisions later replaced by a new one (superseded)
    undone: int
    total_seconds: float
    mean_seconds: float | None
    median_seconds: float | None
    items_per_hour: float | None
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True)
class ModelVersionRecord(_Record):
    id: int
    name: str
    checkpoint: str | None
    backbone: str | None
    metrics: dict
    promoted: bool
    created_at: datetime


@dataclass(frozen=True)
class TrainingRunRecord(_Record):
    id: int
    status: str
    config: dict
    export_dir: str | None
    log_path: str | None
    metrics: dict
    error: str | None
    base_model_version: str | None
    output_model_version: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    annotations: int  # how many annotations went in


@dataclass(frozen=True)
class ProjectRecord(_Record):
    id: int
    name: str
    guidelines: str  # Markdown
    annotators_per_mention: int
    kb: str
    archived: bool
    created_by: str | None
    created_at: datetime


@dataclass
class ImportReport(_Record):
    created: int = 0
    existing: int = 0
    predictions: int = 0
    errors: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)  # {"row": where in the file, "problem": why}
    project: str | None = None  # None: the default project
    format: str = ""
    rows: int = 0  # rows read (a MELBench sample with several mentions counts once per mention)
    images_in_zip: int = 0
    zip_skipped: list[dict] = field(default_factory=list)  # {"name", "problem"}: zip entries not extracted
    cancelled: bool = False


@dataclass
class ReconcileReport(_Record):
    journal_lines: int = 0
    groups_reapplied: int = 0  # journal groups missing from the database, now applied
    events_reapplied: int = 0
    events_rejournaled: int = 0  # database rows missing from the journal, now appended
    incomplete_groups: int = 0  # torn writes of crashed transactions, ignored
    aborted_groups: int = 0
    bad_lines: list[int] = field(default_factory=list)


@dataclass
class TrainingExport(_Record):
    path: str
    splits: dict[str, int]
    entities: int
    annotation_ids: list[int]
    conflicts: int  # mentions whose annotators disagree with no reviewer decision
    not_entity: int  # mentions resolved to NIL / ambiguous (not trainable)


# -- review and users (db/review.py, db/users.py) ------------------------------------------------
@dataclass(frozen=True)
class UserRecord(_Record):
    """A user as the Users tab shows one: never the password hash, only whether there is one."""

    id: int
    name: str
    role: str
    active: bool
    has_password: bool
    created_at: datetime


@dataclass(frozen=True)
class SignInRecord:
    """What sign-in needs (`UsersMixin.user_for_sign_in`). Holds the hash: not a `_Record` (no
    `to_dict`), and its repr leaves the hash out, so it is never shown or logged by accident."""

    name: str
    role: str
    active: bool
    password_hash: str | None = field(repr=False)


@dataclass(frozen=True)
class ReviewDecision(_Record):
    """One annotator's current decision on a mention under review."""

    annotation_id: int
    annotator: str
    role: str
    decision: str  # entity | nil | ambiguous | skip
    entity_id: str | None
    entity_name: str | None
    comment: str | None
    flag: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReviewItem(_Record):
    """A mention that needs a reviewer: its annotators disagree, or one of them raised a flag."""

    mention: MentionRecord
    prediction_id: int | None
    candidates: list[CandidateRecord]  # the latest prediction's, best first (names included)
    decisions: list[ReviewDecision]
    reasons: list[str]  # "disagreement" and/or "flag"


@dataclass(frozen=True)
class ReviewPage(_Record):
    items: list[ReviewItem]
    total: int  # mentions needing review (all pages)
    offset: int
    limit: int
