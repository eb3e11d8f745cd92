"""The reviewer's work: which mentions need a reviewer, resolving one, and the agreement figures a
reviewer reads (Cohen's kappa per pair, Fleiss' kappa per project, throughput, agreement with the
reviewers).

A mention needs review when, among its current annotations, the annotators' final decisions
disagree or one of them carries a flag (db.annotations.FLAGS). A reviewer resolves it with one
decision, stored as an ordinary annotation of the reviewer: the gold rule (`ReportsMixin.resolved`,
the one rule used everywhere) already makes a reviewer's or admin's decision the gold, so the
resolution is the gold for training, exports and analysis with nothing else to keep in step.
A resolved mention leaves the list; it comes back only when something newer than the resolution
asks for it again (a decision that differs from the resolution, or a new flag).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from ._base import StoreBase, check_int
from .agreement import agreement_report, fleiss_kappa, reviewer_agreement, throughput
from .annotations import check_submission
from .errors import Forbidden, InvalidInput
from .models import (
    FINAL_DECISIONS,
    RESOLVING_ROLES,
    Annotation,
    Annotator,
    KbEntity,
    Mention,
    Project,
    decision_role,
    resolves,
)
from .records import AnnotationRecord, ReviewDecision, ReviewItem, ReviewPage
from .reports import decision_label

if TYPE_CHECKING:
    from .annotations import Submission

#: roles that may resolve (the gold rule's "senior" roles, `models.RESOLVING_ROLES`)
REVIEW_ROLES = RESOLVING_ROLES
MAX_PAGE = 500


class ReviewMixin(StoreBase):
    if TYPE_CHECKING:  # from AnnotationsMixin

        def _apply_submission(self, s: Session, sub: Submission, events: list[dict]) -> AnnotationRecord: ...

    # -- the list ------------------------------------------------------------------------------

    def _current_rows(self, s: Session, project: int | None) -> Sequence[Row]:
        """Every current annotation (skips too: a skip may carry a flag) with its annotator, the
        entity's name and the mention's project, oldest first."""
        q = (
            select(
                Annotation.id,
                Annotation.mention_id,
                Annotation.decision,
                Annotation.entity_id,
                Annotation.comment,
                Annotation.flag,
                Annotation.seconds_spent,
                Annotation.created_at,
                Annotator.name,
                decision_role(),  # the role decided in: the gold rule's
                KbEntity.name.label("entity_name"),
                Mention.project_id,
            )
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .join(Mention, Mention.id == Annotation.mention_id)
            .outerjoin(KbEntity, KbEntity.id == Annotation.entity_id)
            .where(Annotation.status == "current")
            .order_by(Annotation.id)
        )
        if project is not None:
            q = q.where(Mention.project_id == check_int(project, "project"))
        return s.execute(q).all()

    @staticmethod
    def _reasons(rows: Sequence[Row]) -> list[str]:
        """Why a mention's current annotations need a reviewer ([] when they do not)."""
        final = [r for r in rows if r.decision in FINAL_DECISIONS]
        senior = [r for r in final if resolves(r.role)]
        if senior:  # resolved: only what came after the latest resolution counts
            last = max(senior, key=lambda r: r.id)
            gold = (last.decision, last.entity_id)
            newer = [r for r in rows if r.id > last.id]
            differs = any(r.decision in FINAL_DECISIONS and (r.decision, r.entity_id) != gold for r in newer)
            flagged = any(r.flag for r in newer)
        else:
            differs = len({(r.decision, r.entity_id) for r in final}) > 1
            flagged = any(r.flag for r in rows)
        return (["disagreement"] if differs else []) + (["flag"] if flagged else [])

    def review_list(self, project: int | None = None, limit: int = 50, offset: int = 0) -> ReviewPage:
        """The mentions that need a reviewer (see the module docstring), by mention id, one page:
        each with the mention, its latest prediction's candidates and every annotator's current
        decision, comment and flag. `project`: only that project's mentions (None: all)."""
        check_int(limit, "limit")
        check_int(offset, "offset")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"must be between 1 and {MAX_PAGE}, got {limit}", "limit")
        if offset < 0:
            raise InvalidInput(f"must be >= 0, got {offset}", "offset")

        def fn(s: Session) -> ReviewPage:
            by_mention: dict[int, list[Row]] = defaultdict(list)
            for r in self._current_rows(s, project):
                by_mention[r.mention_id].append(r)
            due = [(mid, why) for mid, rows in sorted(by_mention.items()) if (why := self._reasons(rows))]
            items = []
            for mid, why in due[offset : offset + limit]:
                pred = self._latest_prediction(s, mid)
                pr = self._prediction_record(s, pred) if pred is not None else None
                items.append(
                    ReviewItem(
                        mention=self._mention_record(s, self._mention_row(s, mid)),
                        prediction_id=pr.id if pr else None,
                        candidates=pr.candidates if pr else [],
                        decisions=[
                            ReviewDecision(
                                annotation_id=r.id,
                                annotator=r.name,
                                role=r.role,
                                decision=r.decision,
                                entity_id=r.entity_id,
                                entity_name=r.entity_name,
                                comment=r.comment,
                                flag=r.flag,
                                created_at=r.created_at,
                            )
                            for r in by_mention[mid]
                        ],
                        reasons=why,
                    )
                )
            return ReviewPage(items=items, total=len(due), offset=offset, limit=limit)

        return self.read_transaction(fn)

    # -- resolving -------------------------------------------------------------------------------

    def resolve(
        self,
        reviewer: str,
        mention: int | str,
        decision: str | None = None,
        entity_id: str | None = None,
        comment: str | None = None,
        *,
        request_id: str | None = None,
        seconds_spent: float | None = None,
    ) -> AnnotationRecord:
        """Settle a mention: the reviewer's decision (entity with `entity_id`, nil or ambiguous),
        stored as their annotation, becomes the gold. Only an active reviewer or admin may resolve
        (Forbidden otherwise), checked here in the same transaction as the write, whatever the
        caller checked before. Resolving again replaces the reviewer's earlier resolution."""
        sub = check_submission(
            reviewer, mention, decision, entity_id, comment=comment, request_id=request_id, seconds_spent=seconds_spent
        )
        if sub.decision not in FINAL_DECISIONS:
            raise InvalidInput(f"a resolution is one of {', '.join(FINAL_DECISIONS)}; got {sub.decision!r}", "decision")

        def fn(s: Session, events: list) -> AnnotationRecord:
            who = self._annotator_row(s, reviewer, "reviewer")
            if who.role not in REVIEW_ROLES:
                article = "an" if who.role[0] in "aeiou" else "a"
                why = f"{reviewer} is {article} {who.role}: resolving needs the role reviewer or admin"
                raise Forbidden(why, "reviewer")
            if not who.active:
                raise Forbidden(f"{reviewer} is disabled", "reviewer")
            return self._apply_submission(s, sub, events)

        return self._write(fn)

    # -- agreement -------------------------------------------------------------------------------

    def agreement_summary(self, project: int | None = None, *, include_reviewers: bool = False) -> dict[str, Any]:
        """Everything the Review tab's agreement section shows, from the current final decisions:

        - "pairs": Cohen's kappa for every pair of annotators over the mentions both decided
          ({"a", "b", "items", "kappa", "observed_agreement"}), "annotators": their names;
        - "projects": Fleiss' kappa per project (None = the default project) over its mentions with
          two or more raters ({"project", "name", "items", "min_raters", "max_raters", "kappa"});
          mentions with unequal rater counts are kept (see `fleiss_kappa_from_counts`);
        - "throughput": per user (reviewers too), decisions and decisions per hour
          (`agreement.throughput`);
        - "reviewer_agreement": per annotator, the share of their decisions on resolved mentions
          that match the resolution (the gold rule's reviewer decision).
        Reviewers' and admins' decisions are resolutions, not independent ratings: the kappas
        leave them out unless `include_reviewers`. kappa is None where it is undefined.
        """

        def fn(s: Session) -> dict[str, Any]:
            labels: dict[int, dict[str, str]] = defaultdict(dict)
            gold: dict[int, tuple[int, str]] = {}
            project_of: dict[int, int | None] = {}
            timing, reviewers = [], set()
            for r in self._current_rows(s, project):
                if r.decision not in FINAL_DECISIONS:
                    continue
                label = decision_label(r.decision, r.entity_id)
                project_of[r.mention_id] = r.project_id
                timing.append((r.name, r.seconds_spent, r.created_at))
                if resolves(r.role):
                    reviewers.add(r.name)
                    if r.mention_id not in gold or r.id > gold[r.mention_id][0]:
                        gold[r.mention_id] = (r.id, label)
                    if not include_reviewers:
                        continue
                labels[r.mention_id][r.name] = label
            report = agreement_report(labels)
            names = dict(s.execute(select(Project.id, Project.name)).all())
            groups: dict[int | None, list[list[str]]] = defaultdict(list)
            for mid, by in labels.items():
                if len(by) >= 2:
                    groups[project_of[mid]].append(list(by.values()))
            projects = [
                {
                    "project": pid,
                    "name": names.get(pid, "default") if pid is not None else "default",
                    "items": len(items),
                    "min_raters": min(len(i) for i in items),
                    "max_raters": max(len(i) for i in items),
                    "kappa": fleiss_kappa(items),
                }
                for pid, items in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))
            ]
            # a reviewer does not "agree with the reviewers" by resolving
            others = {mid: {w: lab for w, lab in by.items() if w not in reviewers} for mid, by in labels.items()}
            return {
                "annotators": sorted({a for by in labels.values() for a in by}),
                "pairs": report["pairs"],
                "items": report["items"],
                "projects": projects,
                "throughput": throughput(timing),
                "reviewer_agreement": reviewer_agreement(others, {mid: lab for mid, (_, lab) in gold.items()}),
            }

        return self.read_transaction(fn)
