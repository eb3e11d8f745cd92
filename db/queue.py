"""Each annotator's work queue: uncertainty order, skipped items last, leases against double work.

A mention is *pending* for annotator X when X has no current final decision on it (entity, NIL,
ambiguous) and fewer than `overlap` other annotators have decided it or hold a live lease on it.
With the default overlap of 1 that means: nobody decided it and nobody else is working on it.
`overlap` is the mention's project's `annotators_per_mention` (db/projects.py), the global
setting for mentions of no project. Every call may name a project (its queue only); without one
the queue spans every mention outside archived projects.

Order: mentions whose latest prediction has two or more candidates, smallest margin between the
top two scores first (the model is least sure); then mentions without such a prediction, in
insertion order; then the mentions X skipped, oldest skip first.

`next_item` hands out the first pending mention and writes a lease (mention, slot, annotator,
expires_at) in the same transaction. The lease table's primary key (mention, slot) with `overlap`
slots per mention means the database itself refuses a second holder of a slot, so two annotators
cannot get the same item at the same time unless overlap allows it. On SQLite, write transactions
are serialised (BEGIN IMMEDIATE), which makes the check-then-claim atomic; on PostgreSQL a
concurrent claim of the same slot fails on the key and the next candidate is tried. Leases expire
(`lease_seconds`) so an abandoned item comes back; asking again before the lease expires returns
the same item (a page refresh does not lose your place).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    BindParameter,
    CursorResult,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from . import statements as Q
from ._base import StoreBase, check_int
from .models import Annotation, Lease, Mention, Project, UTCDateTime, utcnow
from .projects import project_row
from .records import MentionRecord, QueueItem

_GROUPS = ("uncertain", "unscored", "skipped")


@functools.lru_cache(maxsize=256)
def _pending_query(
    group: str, limit: int | None, single: bool = False, scope: str = "all", per_mention: bool = False
) -> Select:
    """Ids of mentions pending for annotator :me in one queue group, in order (:now, :overlap bound
    at execution). Built once per variant: constructing SQLAlchemy statements with aliases costs
    more than running them. `single` (overlap = 1) spells "nobody decided it" as decided = 0,
    which the (decided, margin, id) index serves in queue order without a sort.

    scope: "all" every mention; "active" every mention outside archived projects; "project" the
    mentions of project :pid; "default" those of no project. per_mention: each mention's overlap is
    its project's `annotators_per_mention` (:overlap, the global setting, for the default project)
    instead of :overlap for all; used only when projects with another overlap exist."""
    me: BindParameter[int] = bindparam("me")
    now = bindparam("now", type_=UTCDateTime())
    overlap: Any = bindparam("overlap")
    if per_mention:
        overlap = func.coalesce(
            select(Project.annotators_per_mention).where(Project.id == Mention.project_id).scalar_subquery(), overlap
        )
    mine, skip = aliased(Annotation, name="mine"), aliased(Annotation, name="skip")
    decided_by_me = exists().where(
        mine.mention_id == Mention.id, mine.annotator_id == me, mine.status == "current", mine.decision != "skip"
    )
    n_leased = (
        select(func.count())
        .select_from(Lease)
        .where(Lease.mention_id == Mention.id, Lease.expires_at > now, Lease.annotator_id != me)
        .scalar_subquery()
    )
    # Mention.decided (a plain column) first: finished mentions are rejected without subqueries.
    # When I have not decided a mention, `decided` counts only the others' decisions.
    unfinished = Mention.decided == 0 if single else Mention.decided < overlap
    available = and_(unfinished, ~decided_by_me, Mention.decided + n_leased < overlap)
    if scope == "project":
        available = and_(Mention.project_id == bindparam("pid"), available)
    elif scope == "default":
        available = and_(Mention.project_id.is_(None), available)
    elif scope == "active":
        archived = exists().where(Project.id == Mention.project_id, Project.archived.is_(True))
        available = and_(available, ~archived)
    if group == "skipped":
        q = (
            select(Mention.id)
            .join(
                skip,
                and_(
                    skip.mention_id == Mention.id,
                    skip.annotator_id == me,
                    skip.status == "current",
                    skip.decision == "skip",
                ),
            )
            .where(available)
            .order_by(skip.created_at, Mention.id)
        )
    else:
        skipped_by_me = exists().where(
            skip.mention_id == Mention.id, skip.annotator_id == me, skip.status == "current", skip.decision == "skip"
        )
        q = select(Mention.id).where(available, ~skipped_by_me)
        if group == "uncertain":
            q = q.where(Mention.margin.is_not(None)).order_by(Mention.margin, Mention.id)
        else:
            q = q.where(Mention.margin.is_(None)).order_by(Mention.id)
    return q.limit(limit) if limit is not None else q


@functools.lru_cache(maxsize=64)
def _count_query(group: str, single: bool, scope: str = "all", per_mention: bool = False) -> Select:
    inner = _pending_query(group, None, single, scope, per_mention).order_by(None).subquery()
    return select(func.count()).select_from(inner)


@dataclass(frozen=True)
class _Scope:
    """Which mentions a queue call looks at and how their overlap is read (see `_pending_query`)."""

    scope: str
    overlap: int
    per_mention: bool
    project_id: int | None

    @property
    def single(self) -> bool:
        return self.overlap == 1 and not self.per_mention

    def params(self, me: int, now: datetime) -> dict:
        return {"me": me, "now": now, "overlap": self.overlap, "pid": self.project_id}

    def holds(self, project_id: int | None) -> bool:
        """Whether a mention of this project is in scope (for leases held from another scope)."""
        if self.scope == "project":
            return project_id == self.project_id
        if self.scope == "default":
            return project_id is None
        return True


class QueueMixin(StoreBase):
    if TYPE_CHECKING:  # ProjectsMixin

        def project_overlap(self, s: Session, project_id: int | None) -> int: ...

    def _lease_delta(self, lease_seconds: int | None) -> timedelta:
        seconds = self.settings.lease_seconds if lease_seconds is None else check_int(lease_seconds, "lease_seconds")
        return timedelta(seconds=max(1, seconds))

    def _scope(self, s: Session, project: int | str | None) -> _Scope:
        """project None: every mention (outside archived projects), each with its own project's
        overlap; "default" / 0: the mentions of no project; an id or name: that project's."""
        if project is None:
            projects = s.execute(select(Project.annotators_per_mention, Project.archived)).all()
            per_mention = any(n != self.settings.overlap for n, _ in projects)
            scope = "active" if any(a for _, a in projects) else "all"
            return _Scope(scope, self.settings.overlap, per_mention, None)
        row = project_row(s, project)
        if row is None:
            return _Scope("default", self.settings.overlap, False, None)
        return _Scope("project", row.annotators_per_mention, False, row.id)

    def _pending(
        self, s: Session, me: int, now: datetime, group: str, limit: int | None, scope: _Scope | None = None
    ) -> list[int]:
        """Ids of the mentions pending for annotator `me` in one queue group, in queue order."""
        sc = scope or _Scope("all", self.settings.overlap, False, None)
        q = _pending_query(group, limit, sc.single, sc.scope, sc.per_mention)
        return list(s.scalars(q, sc.params(me, now)))

    def _mention_overlap(self, s: Session, m: Row) -> int:
        """Annotators per mention for this mention: its project's, or the global setting."""
        return self.project_overlap(s, m.project_id)

    def _claim(
        self, s: Session, mention_id: int, me: int, now: datetime, lease_seconds: int | None = None
    ) -> datetime | None:
        """Lease `mention_id` to annotator `me` (or extend their lease); the expiry, or None if full."""
        expires = now + self._lease_delta(lease_seconds)
        held = s.execute(Q.leases_on(), {"mid": mention_id}).all()
        for slot, who, _ in held:
            if who == me:
                s.execute(
                    update(Lease).where(Lease.mention_id == mention_id, Lease.slot == slot).values(expires_at=expires)
                )
                return expires
        live = {slot for slot, _, exp in held if exp > now}
        decided = s.connection().execute(Q.count_current(mine=False), {"mid": mention_id, "aid": me}).scalar_one()
        overlap = self._mention_overlap(s, self._mention_row(s, mention_id))
        if decided + len(live) >= overlap:
            return None
        expired = {slot for slot, _, exp in held if exp <= now}
        for slot in range(overlap):
            if slot in live:
                continue
            if slot in expired:  # take over an abandoned lease, only if it is still expired
                res = s.execute(
                    update(Lease)
                    .where(Lease.mention_id == mention_id, Lease.slot == slot, Lease.expires_at <= now)
                    .values(annotator_id=me, expires_at=expires, created_at=now)
                )
                if cast(CursorResult, res).rowcount == 1:  # Session.execute is typed Result even for DML
                    return expires
                continue
            stmt = insert(Lease).values(
                mention_id=mention_id, slot=slot, annotator_id=me, expires_at=expires, created_at=now
            )
            if self.is_sqlite:  # serialised writers: nobody can take the slot between check and insert
                s.execute(stmt)
                return expires
            try:
                with s.begin_nested():  # a lost race must not abort the whole transaction
                    s.execute(stmt)
                return expires
            except IntegrityError:
                continue
        return None

    def _queue_item(self, s: Session, mention_id: int, me: int, expires: datetime) -> QueueItem:
        m = self._mention_row(s, mention_id)
        pred = self._latest_prediction(s, mention_id)
        skipped = (
            s.connection().execute(Q.count_current(mine=True, skips=True), {"mid": mention_id, "aid": me}).scalar_one()
            > 0
        )
        return QueueItem(
            mention=self._mention_record(s, m),
            prediction=self._prediction_record(s, pred) if pred is not None else None,
            lease_expires_at=expires,
            previously_skipped=skipped,
        )

    def next_item(
        self, annotator: str, *, lease_seconds: int | None = None, project: int | str | None = None
    ) -> QueueItem | None:
        """The annotator's next mention, leased to them; None when their queue is empty.

        If they already hold a live lease on a mention they have not decided, that one is returned
        again (lease renewed), so asking twice never skips an item. `project` (id or name; "default"
        for mentions of no project) restricts the queue to one project; None serves every mention
        outside archived projects, each with its project's annotators per mention."""

        def fn(s: Session, events: list) -> QueueItem | None:
            ann = self._annotator_row(s, annotator)
            scope = self._scope(s, project)
            now = utcnow()
            for lease in s.scalars(Q.live_leases_of(), {"aid": ann.id, "now": now}).all():
                mine = (
                    s.connection()
                    .execute(Q.count_current(mine=True), {"mid": lease.mention_id, "aid": ann.id})
                    .scalar()
                )
                m = self._mention_row(s, lease.mention_id)
                # Drop leases on mentions that are finished for me, or finished by others meanwhile
                # (an expired lease taken over, then decided by its first holder).
                if mine or m.decided >= self._mention_overlap(s, m):
                    s.delete(lease)
                    continue
                if not scope.holds(m.project_id):  # held for another project's queue: kept for it
                    continue
                lease.expires_at = now + self._lease_delta(lease_seconds)
                return self._queue_item(s, lease.mention_id, ann.id, lease.expires_at)
            for group in _GROUPS:
                for mid in self._pending(s, ann.id, now, group, 50, scope):
                    expires = self._claim(s, mid, ann.id, now, lease_seconds)
                    if expires is not None:
                        return self._queue_item(s, mid, ann.id, expires)
            return None

        return self._write(fn)

    def peek_queue(self, annotator: str, limit: int = 20, *, project: int | str | None = None) -> list[MentionRecord]:
        """The next `limit` pending mentions in queue order, without leasing anything."""
        check_int(limit, "limit")

        def fn(s: Session) -> list[MentionRecord]:
            ann = self._annotator_row(s, annotator)
            scope = self._scope(s, project)
            now = utcnow()
            ids: list[int] = []
            for group in _GROUPS:
                if len(ids) >= limit:
                    break
                ids += self._pending(s, ann.id, now, group, limit, scope)[: limit - len(ids)]
            return [self._mention_record(s, self._mention_row(s, i)) for i in ids]

        return self.read_transaction(fn)

    def queue_size(self, annotator: str, *, project: int | str | None = None) -> int:
        """How many mentions are pending for the annotator (skipped ones included), in one project
        or (None) in all of them, as `next_item` serves them."""

        def fn(s: Session) -> int:
            ann = self._annotator_row(s, annotator)
            sc = self._scope(s, project)
            params = sc.params(ann.id, utcnow())
            return sum(s.scalar(_count_query(g, sc.single, sc.scope, sc.per_mention), params) for g in _GROUPS)

        return self.read_transaction(fn)

    def release(self, annotator: str, mention: int | str | None = None) -> int:
        """Give back the annotator's leases (all, or on one mention), e.g. at logout. Returns how many."""

        def fn(s: Session, events: list) -> int:
            ann = self._annotator_row(s, annotator)
            stmt = delete(Lease).where(Lease.annotator_id == ann.id)
            if mention is not None:
                stmt = stmt.where(Lease.mention_id == self._mention_row(s, mention, "mention").id)
            return cast(CursorResult, s.execute(stmt)).rowcount  # Session.execute is typed Result even for DML

        return self._write(fn)

    def peek_sentence_mentions(self, mention: int | str, limit: int = 50) -> list[MentionRecord]:
        """The other mentions stored with the same sentence and the same image (several mentions of
        one post), in sentence order; read-only, leases nothing. The Annotate tab shows them in the
        sentence as context. The sentence is not indexed: this scans the mentions table."""
        check_int(limit, "limit")

        def fn(s: Session) -> list[MentionRecord]:
            m = self._mention_row(s, mention)
            same_image = Mention.image_sha256 == m.image_sha256 if m.image_sha256 else Mention.image_sha256.is_(None)
            rows = s.scalars(
                select(Mention)
                .where(Mention.sentence == m.sentence, same_image, Mention.id != m.id)
                .order_by(Mention.start, Mention.id)
                .limit(limit)
            ).all()
            return [self._mention_record(s, r) for r in rows]

        return self.read_transaction(fn)
