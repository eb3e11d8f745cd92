"""Annotators' decisions: submit, skip, undo, history, and journal reconciliation / rebuild.

Rules (all enforced inside one write transaction per call):

* Submitting on a mention where the annotator already has a current decision *supersedes* it: the
  old row gets status "superseded" and `superseded_by` = the new row. Nothing is deleted.
* Undo marks the annotator's latest current annotation "undone" (with the time and the undo's own
  request id); the mention goes back to the front of that annotator's queue.
* Idempotency: a submission carries a `request_id` (a client-generated unique string; one is made
  up when absent). Resubmitting a known request_id returns the stored annotation and writes
  nothing; reusing it for a different submission is a Conflict. Submitting the decision that is
  already the annotator's current one on that mention (a double click with fresh request ids)
  also writes nothing. Undo takes a request_id as well, so a repeated undo undoes only once.
* Each write appends its journal events before committing; `reconcile` makes journal and
  database equal again after a crash (see journal.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from . import statements as Q
from ._base import MAX_COMMENT, MAX_REQUEST_ID, StoreBase, check_choice, check_float, check_int, check_text, iso
from .errors import Conflict, InvalidInput, NotFound
from .mentions import CandidateInput
from .models import (
    DECISIONS,
    FINAL_DECISIONS,
    Annotation,
    Annotator,
    Image,
    Mention,
    Prediction,
    utcnow,
)
from .records import AnnotationRecord

MAX_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class Submission:
    """A checked submission (no database access needed to build one)."""

    annotator: str
    mention: int | str
    decision: str
    entity_id: str | None
    prediction_id: int | None
    seconds_spent: float | None
    comment: str | None
    request_id: str
    flag: str | None = None


#: Flags an annotator can raise on a decision for the reviewers (shown in the review list).
FLAGS = ("unsure", "kb-missing", "bad-span", "bad-image", "other")


def check_submission(
    annotator: Any,
    mention: Any,
    decision: Any = None,
    entity_id: Any = None,
    *,
    prediction_id: Any = None,
    seconds_spent: Any = None,
    comment: Any = None,
    request_id: Any = None,
    flag: Any = None,
    field: str = "",
) -> Submission:
    p = f"{field}." if field else ""
    check_text(annotator, f"{p}annotator", max_len=200)
    if isinstance(mention, str):
        check_text(mention, f"{p}mention", max_len=255)
    else:
        check_int(mention, f"{p}mention")
    if isinstance(entity_id, int) and not isinstance(entity_id, bool):
        entity_id = str(entity_id)
    if decision is None:
        decision = "entity" if entity_id is not None else None
    check_choice(decision, f"{p}decision", DECISIONS)
    if decision == "entity":
        if entity_id is None:
            raise InvalidInput("required when the decision is 'entity'", f"{p}entity_id")
        check_text(entity_id, f"{p}entity_id", max_len=200)
    elif entity_id is not None:
        raise InvalidInput(f"must be empty for decision {decision!r}", f"{p}entity_id")
    if prediction_id is not None:
        check_int(prediction_id, f"{p}prediction_id")
    seconds = check_float(seconds_spent, f"{p}seconds_spent", optional=True, minimum=0.0, maximum=MAX_SECONDS)
    if comment is not None:
        check_text(comment, f"{p}comment", max_len=MAX_COMMENT, allow_empty=True)
    if flag is not None and flag != "":
        check_choice(flag, f"{p}flag", FLAGS)
    else:
        flag = None
    if request_id is None:
        request_id = uuid.uuid4().hex
    check_text(request_id, f"{p}request_id", max_len=MAX_REQUEST_ID)
    return Submission(
        annotator=annotator,
        mention=mention,
        decision=decision,
        entity_id=entity_id,
        prediction_id=prediction_id,
        seconds_spent=seconds,
        comment=comment,
        request_id=request_id,
        flag=flag,
    )


class AnnotationsMixin(StoreBase):
    if TYPE_CHECKING:  # from the other mixins of AnnotationStore

        def _claim(
            self, s: Session, mention_id: int, me: int, now: datetime, lease_seconds: int | None = None
        ) -> datetime | None: ...  # QueueMixin

        def _insert_prediction(
            self,
            s: Session,
            mention: Mention | Row,
            model_version: str,
            cands: list[CandidateInput],
            *,
            created_at: datetime | None = None,
            uid: str | None = None,
            field: str = "candidates",
        ) -> Prediction: ...  # MentionsMixin

    # -- submit / skip ----------------------------------------------------------------------

    def submit(
        self,
        annotator: str,
        mention: int | str,
        decision: str | None = None,
        entity_id: str | None = None,
        *,
        prediction_id: int | None = None,
        seconds_spent: float | None = None,
        comment: str | None = None,
        request_id: str | None = None,
        flag: str | None = None,
    ) -> AnnotationRecord:
        """Record a decision: decision="entity" with `entity_id`, or "nil" (not in the list),
        "ambiguous", or "skip". `decision` may be left out when `entity_id` is given.
        `prediction_id` is the prediction the annotator was shown (default: the mention's latest).
        `flag` (one of FLAGS) asks the reviewers to look at the decision; `comment` says why.
        Returns the stored annotation (`duplicate=True` when nothing new was stored)."""
        sub = check_submission(
            annotator,
            mention,
            decision,
            entity_id,
            prediction_id=prediction_id,
            seconds_spent=seconds_spent,
            comment=comment,
            request_id=request_id,
            flag=flag,
        )
        return self._write(lambda s, events: self._apply_submission(s, sub, events))

    def skip(self, annotator: str, mention: int | str, **kw) -> AnnotationRecord:
        """Defer a mention: it leaves the annotator's queue and comes back after everything else."""
        return self.submit(annotator, mention, "skip", **kw)

    def submit_many(self, items: list[dict]) -> list[AnnotationRecord]:
        """Several submissions (dicts of `submit`'s arguments) in ONE transaction: all or none."""
        if not isinstance(items, (list, tuple)):
            raise InvalidInput(f"expected a list, got {type(items).__name__}", "items")
        subs = []
        for i, it in enumerate(items):
            if not isinstance(it, dict):
                raise InvalidInput(f"expected a dict, got {type(it).__name__}", f"items[{i}]")
            it = dict(it)
            try:
                annotator, mention = it.pop("annotator"), it.pop("mention")
            except KeyError as e:
                raise InvalidInput("missing", f"items[{i}].{e.args[0]}") from None
            subs.append(
                check_submission(
                    annotator, mention, it.pop("decision", None), it.pop("entity_id", None), field=f"items[{i}]", **it
                )
            )
        return self._write(lambda s, events: [self._apply_submission(s, sub, events) for sub in subs])

    def _apply_submission(self, s: Session, sub: Submission, events: list[dict]) -> AnnotationRecord:
        ann = self._annotator_row(s, sub.annotator)
        m = self._mention_row(s, sub.mention, "mention")
        same = s.connection().execute(Q.annotation_by_request(), {"rid": sub.request_id}).first()
        if same is not None:
            if (same.annotator_id, same.mention_id, same.decision, same.entity_id) != (
                ann.id,
                m.id,
                sub.decision,
                sub.entity_id,
            ):
                raise Conflict(
                    f"request_id {sub.request_id!r} was already used for a different submission (annotation {same.id})",
                    "request_id",
                )
            return self._annotation_record(s, same, duplicate=True, annotator_name=ann.name, mention_uid=m.uid)
        entity = self._entity_row(s, sub.entity_id) if sub.decision == "entity" else None
        if sub.prediction_id is not None:
            pred = s.get(Prediction, sub.prediction_id)
            if pred is None:
                raise NotFound(f"no prediction {sub.prediction_id}", "prediction_id")
            if pred.mention_id != m.id:
                raise InvalidInput(f"prediction {pred.id} belongs to another mention", "prediction_id")
        else:
            pred = self._latest_prediction(s, m.id)
        current = self._current(s, m.id, ann.id)
        if current is not None and (current.decision, current.entity_id, current.comment, current.flag) == (
            sub.decision,
            sub.entity_id,
            sub.comment,
            sub.flag,
        ):
            return self._annotation_record(s, current, duplicate=True, annotator_name=ann.name, mention_uid=m.uid)
        row = self._insert_annotation(
            s,
            ann=ann,
            m=m,
            current=current,
            request_id=sub.request_id,
            decision=sub.decision,
            entity_id=entity.id if entity else None,
            entity_version=entity.version if entity else None,
            prediction_id=pred.id if pred else None,
            seconds_spent=sub.seconds_spent,
            comment=sub.comment,
            flag=sub.flag,
            role=ann.role,  # the role decided in (the gold rule's, whatever the role later becomes)
            created_at=utcnow(),
        )
        events.append(self._annotation_event(s, row, ann, m))
        return self._annotation_record(s, row, annotator_name=ann.name, mention_uid=m.uid)

    def _current(self, s: Session, mention_id: int, annotator_id: int) -> Row | None:
        return s.connection().execute(Q.current_annotation(), {"mid": mention_id, "aid": annotator_id}).first()

    def _insert_annotation(
        self, s: Session, *, ann: Annotator | Row, m: Mention | Row, current: Row | None, **values
    ) -> SimpleNamespace:
        """Insert a current annotation, superseding `current`, and release the annotator's lease.

        Core statements, not the ORM unit of work: this is the hottest write (about half the cost
        of an ORM flush); `current` is a plain row and the result a namespace of the new row's values."""
        conn = s.connection()
        if current is not None:
            # Demote first: the partial unique index allows one current row per (mention, annotator).
            conn.execute(Q.set_annotation_status(), {"aid_": current.id, "status_": "superseded", "by_": None})
        params = dict(
            mention_id=m.id,
            annotator_id=ann.id,
            status="current",
            superseded_by=None,
            undone_at=None,
            undo_request_id=None,
            **values,
        )
        key = conn.execute(Q.insert_annotation(), params).inserted_primary_key
        assert key is not None  # a single-row INSERT always reports its key
        row = SimpleNamespace(id=key[0], **params)
        if current is not None:
            conn.execute(Q.set_annotation_status(), {"aid_": current.id, "status_": "superseded", "by_": row.id})
        was = current is not None and current.decision in FINAL_DECISIONS
        self._count_decided(s, m.id, (row.decision in FINAL_DECISIONS) - was)
        s.execute(Q.delete_lease_of(), {"mid": m.id, "aid": ann.id})
        return row

    @staticmethod
    def _count_decided(s: Session, mention_id: int, delta: int) -> None:
        """Keep Mention.decided in step (an SQL increment: no lost update under concurrency)."""
        if delta:
            s.execute(Q.bump_decided(), {"mid": mention_id, "delta": delta})

    def _mark_undone(self, s: Session, target: Annotation, when: datetime, undo_request_id: str) -> None:
        if target.status == "current" and target.decision in FINAL_DECISIONS:
            self._count_decided(s, target.mention_id, -1)
        target.status, target.undone_at, target.undo_request_id = "undone", when, undo_request_id
        s.flush()

    # -- undo ---------------------------------------------------------------------------------

    def undo(
        self, annotator: str, *, request_id: str | None = None, annotation_id: int | None = None
    ) -> AnnotationRecord | None:
        """Undo the annotator's latest current annotation (or `annotation_id`, which must be one of
        their current ones). The row stays, with status "undone"; the mention returns to the front
        of their queue. Returns the undone annotation, or None when there is nothing to undo."""
        rid = request_id if request_id is not None else uuid.uuid4().hex
        check_text(rid, "request_id", max_len=MAX_REQUEST_ID)
        if annotation_id is not None:
            check_int(annotation_id, "annotation_id")

        def fn(s: Session, events: list) -> AnnotationRecord | None:
            ann = self._annotator_row(s, annotator)
            done = s.scalar(select(Annotation).where(Annotation.undo_request_id == rid))
            if done is not None:
                return self._annotation_record(s, done, duplicate=True, annotator_name=ann.name)
            if annotation_id is not None:
                target = s.get(Annotation, annotation_id)
                if target is None:
                    raise NotFound(f"no annotation {annotation_id}", "annotation_id")
                if target.annotator_id != ann.id:
                    raise Conflict(f"annotation {annotation_id} belongs to another annotator", "annotation_id")
                if target.status != "current":
                    raise Conflict(
                        f"annotation {annotation_id} is {target.status}; only a current one can be undone",
                        "annotation_id",
                    )
            else:
                target = s.scalar(
                    select(Annotation)
                    .where(Annotation.annotator_id == ann.id, Annotation.status == "current")
                    .order_by(Annotation.id.desc())
                    .limit(1)
                )
                if target is None:
                    return None
            now = utcnow()
            self._mark_undone(s, target, now, rid)
            self._claim(s, target.mention_id, ann.id, now)  # back to this annotator first (queue.py)
            events.append(self._undo_event(target, ann.name))
            return self._annotation_record(s, target, annotator_name=ann.name)

        return self._write(fn)

    # -- reading --------------------------------------------------------------------------------

    def get_annotation(self, annotation: int | str) -> AnnotationRecord:
        """An annotation by id or by request_id."""

        def fn(s: Session) -> AnnotationRecord:
            if isinstance(annotation, str):
                row = s.scalar(select(Annotation).where(Annotation.request_id == annotation))
            else:
                row = s.get(Annotation, check_int(annotation, "annotation"))
            if row is None:
                raise NotFound(f"no annotation {annotation!r}", "annotation")
            return self._annotation_record(s, row)

        return self.read_transaction(fn)

    def history(self, mention: int | str) -> list[AnnotationRecord]:
        """Every annotation ever made on a mention (current, superseded, undone), oldest first."""

        def fn(s: Session) -> list[AnnotationRecord]:
            m = self._mention_row(s, mention, "mention")
            rows = s.execute(
                select(Annotation, Annotator.name)
                .join(Annotator, Annotator.id == Annotation.annotator_id)
                .where(Annotation.mention_id == m.id)
                .order_by(Annotation.id)
            ).all()
            return [self._annotation_record(s, a, annotator_name=n, mention_uid=m.uid) for a, n in rows]

        return self.read_transaction(fn)

    def annotator_history(self, annotator: str, limit: int = 50) -> list[AnnotationRecord]:
        """The annotator's most recent annotations (any status), newest first."""

        def fn(s: Session) -> list[AnnotationRecord]:
            ann = self._annotator_row(s, annotator)
            rows = s.execute(
                select(Annotation, Mention.uid)
                .join(Mention, Mention.id == Annotation.mention_id)
                .where(Annotation.annotator_id == ann.id)
                .order_by(Annotation.id.desc())
                .limit(limit)
            ).all()
            return [self._annotation_record(s, a, annotator_name=ann.name, mention_uid=u) for a, u in rows]

        return self.read_transaction(fn)

    def current_annotations(self) -> list[AnnotationRecord]:
        """Every current annotation (skips included), in id order."""

        def fn(s: Session) -> list[AnnotationRecord]:
            rows = s.execute(
                select(Annotation, Annotator.name, Mention.uid)
                .join(Annotator, Annotator.id == Annotation.annotator_id)
                .join(Mention, Mention.id == Annotation.mention_id)
                .where(Annotation.status == "current")
                .order_by(Annotation.id)
            ).all()
            return [self._annotation_record(s, a, annotator_name=n, mention_uid=u) for a, n, u in rows]

        return self.read_transaction(fn)

    # -- journal events ---------------------------------------------------------------------------

    def _annotation_event(
        self,
        s: Session,
        a: Annotation | Row | SimpleNamespace,
        ann: Annotator | Row | None = None,
        m: Mention | Row | None = None,
    ) -> dict:
        """A self-contained journal record of annotation `a`: enough to rebuild it in an empty database."""
        ann = ann or s.get_one(Annotator, a.annotator_id)
        m = m or self._mention_row(s, a.mention_id)
        image = None
        if m.image_sha256:
            ext = getattr(m, "ext", None)
            if ext is None:
                img = s.get(Image, m.image_sha256)
                ext = img.ext if img else ""
            image = {"sha256": m.image_sha256, "ext": ext}
        entity = None
        if a.entity_id is not None:
            e = s.connection().execute(Q.entity_by_id(), {"id": a.entity_id}).first()
            entity = {"id": a.entity_id, "name": e.name if e else a.entity_id, "version": a.entity_version}
        prediction = None
        if a.prediction_id is not None:
            p = s.get_one(Prediction, a.prediction_id)
            mv = s.connection().execute(Q.model_version_name(), {"id": p.model_version_id}).scalar()
            cands = s.execute(Q.candidates_with_names(), {"pid": p.id}).all()
            prediction = {
                "uid": p.uid,
                "model_version": mv,
                "created_at": iso(p.created_at),
                "candidates": [
                    {"entity_id": c.entity_id, "name": n, "S": c.s, "S_T": c.s_t, "S_V": c.s_v, "S_C": c.s_c}
                    for c, n in cands
                ],
            }
        return {
            "type": "annotation",
            "request_id": a.request_id,
            "created_at": iso(a.created_at),
            "annotation_id": a.id,
            "annotator": {"name": ann.name, "role": ann.role},
            "role": getattr(a, "role", None) or ann.role,  # the role decided in (the gold rule's)
            "mention": {
                "uid": m.uid,
                "source": m.source,
                "sentence": m.sentence,
                "mention": m.mention,
                "start": m.start,
                "end": m.end,
                "image": image,
            },
            "decision": a.decision,
            "entity": entity,
            "prediction": prediction,
            "seconds_spent": a.seconds_spent,
            "comment": a.comment,
            "flag": a.flag,
        }

    @staticmethod
    def _undo_event(a: Annotation, annotator_name: str) -> dict:
        return {
            "type": "undo",
            "request_id": a.undo_request_id,
            "target": a.request_id,
            "annotator": annotator_name,
            "created_at": iso(a.undone_at),
        }
