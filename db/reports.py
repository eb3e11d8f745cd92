"""Read-only views over the annotations: progress and speed, agreement, the accepted links and the
gold rule (`resolved`: one label per mention, for training and for analysis alike)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session, aliased

from ._base import StoreBase
from .agreement import agreement_report
from .models import (
    FINAL_DECISIONS,
    Annotation,
    Annotator,
    Image,
    KbEntity,
    Lease,
    Mention,
    ModelVersion,
    Prediction,
    PredictionCandidate,
    decision_role,
    resolves,
    utcnow,
)
from .records import ProgressRecord

NIL_LABEL = "<NIL>"
AMBIGUOUS_LABEL = "<AMBIGUOUS>"


def decision_label(decision: str, entity_id: str | None) -> str:
    """The category of a decision for agreement: the entity id, or <NIL> / <AMBIGUOUS>."""
    if decision == "entity":
        assert entity_id is not None  # the CHECK constraint entity_iff_decision
        return entity_id
    return NIL_LABEL if decision == "nil" else AMBIGUOUS_LABEL


@dataclass(frozen=True)
class Resolution:
    """The gold label of a mention (see `ReportsMixin.resolved`), and the annotations that support it."""

    mention_id: int
    decision: str
    entity_id: str | None
    annotation_ids: tuple[int, ...]


class ReportsMixin(StoreBase):
    def progress(self, annotator: str | None = None) -> list[ProgressRecord]:
        """Per-annotator counts and speed (from the seconds spent on their current decisions)."""

        def fn(s: Session) -> list[ProgressRecord]:
            q = (
                select(
                    Annotator.name,
                    Annotator.role,
                    Annotation.status,
                    Annotation.decision,
                    Annotation.seconds_spent,
                    Annotation.created_at,
                )
                .join(Annotation, Annotation.annotator_id == Annotator.id, isouter=True)
                .order_by(Annotator.id)
            )
            if annotator is not None:
                self._annotator_row(s, annotator)
                q = q.where(Annotator.name == annotator)
            per: dict[str, dict] = {}
            for name, role, status, decision, seconds, created in s.execute(q):
                p = per.setdefault(name, {"role": role, "counts": Counter(), "seconds": [], "times": []})
                if status is None:
                    continue  # an annotator without annotations (outer join)
                p["times"].append(created)
                if status == "current":
                    p["counts"][decision] += 1
                    if decision in FINAL_DECISIONS and seconds is not None:
                        p["seconds"].append(seconds)
                else:
                    p["counts"][status] += 1
            out = []
            for name, p in per.items():
                c, secs = p["counts"], p["seconds"]
                mean = statistics.fmean(secs) if secs else None
                out.append(
                    ProgressRecord(
                        annotator=name,
                        role=p["role"],
                        decided=sum(c[d] for d in FINAL_DECISIONS),
                        entity=c["entity"],
                        nil=c["nil"],
                        ambiguous=c["ambiguous"],
                        skipped=c["skip"],
                        changed=c["superseded"],
                        undone=c["undone"],
                        total_seconds=float(sum(secs)),
                        mean_seconds=mean,
                        median_seconds=statistics.median(secs) if secs else None,
                        items_per_hour=3600.0 / mean if mean else None,
                        first_at=min(p["times"]) if p["times"] else None,
                        last_at=max(p["times"]) if p["times"] else None,
                    )
                )
            return out

        return self.read_transaction(fn)

    def overview(self) -> dict:
        """Whole-project counts: mentions, how many are complete (decided by `overlap` annotators),
        started, pending; annotation rows by status; live leases."""

        def fn(s: Session) -> dict:
            mentions = s.execute(select(func.count()).select_from(Mention)).scalar_one()
            per_mention = (
                select(Annotation.mention_id, func.count().label("n"))
                .where(Annotation.status == "current", Annotation.decision.in_(FINAL_DECISIONS))
                .group_by(Annotation.mention_id)
                .subquery()
            )
            started = s.scalar(select(func.count()).select_from(per_mention))
            complete = s.execute(
                select(func.count()).select_from(per_mention).where(per_mention.c.n >= self.settings.overlap)
            ).scalar_one()
            by_status = dict(s.execute(select(Annotation.status, func.count()).group_by(Annotation.status)).all())
            leases = s.scalar(select(func.count()).select_from(Lease).where(Lease.expires_at > utcnow()))
            return {
                "mentions": mentions,
                "complete": complete,
                "started": started,
                "pending": mentions - complete,
                "overlap": self.settings.overlap,
                "annotations": by_status,
                "live_leases": leases,
                "entities": s.scalar(select(func.count()).select_from(KbEntity)),
            }

        return self.read_transaction(fn)

    def _current_final(self, s: Session) -> Sequence[Row[int, int, str, str, str, str | None]]:
        return s.execute(
            select(
                Annotation.id,
                Annotation.mention_id,
                Annotator.name,
                decision_role(),
                Annotation.decision,
                Annotation.entity_id,
            )
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .where(Annotation.status == "current", Annotation.decision.in_(FINAL_DECISIONS))
            .order_by(Annotation.id)
        ).all()

    def agreement(self) -> dict:
        """Cohen's kappa per annotator pair and Fleiss' kappa over the mentions that have current
        decisions (entity / NIL / ambiguous; skips excluded) from two or more annotators."""

        def fn(s: Session) -> dict:
            labels: dict[int, dict[str, str]] = defaultdict(dict)
            for _, mid, name, _, decision, eid in self._current_final(s):
                labels[mid][name] = decision_label(decision, eid)
            return agreement_report(labels)

        return self.read_transaction(fn)

    def resolved(self) -> tuple[dict[int, Resolution], int]:
        """The gold rule, the store's only one: one label per decided mention, and how many
        mentions are in conflict. Training exports, the retraining job and the app's Analysis tab
        all use it (through `gold_mentions` / `build_training_dataset`).

        1. A reviewer's or admin's decision wins; among several, the latest (highest annotation id).
           The role is the one the decision was made in (`Annotation.role`, `models.resolves`), so
           a later promotion or demotion changes no past gold.
        2. Otherwise the majority of the annotators' current decisions, a decision being
           (entity / nil / ambiguous, entity id).
        3. Tie-break: a tie for the most votes is a conflict (counted) and gives no label; no
           annotator's vote counts more than another's, and the order of the votes does not matter.
        Only current final decisions count (skips, superseded and undone ones do not). An
        "ambiguous" label is returned here but is no gold: `gold_mentions` leaves it out; "nil"
        gives a NIL gold (answer None).
        """

        def fn(s: Session) -> tuple[dict[int, Resolution], int]:
            by_mention: dict[int, list] = defaultdict(list)
            for row in self._current_final(s):
                by_mention[row.mention_id].append(row)
            out, conflicts = {}, 0
            for mid, rows in by_mention.items():
                senior = [r for r in rows if resolves(r.role)]
                if senior:
                    win = max(senior, key=lambda r: r.id)
                    label = (win.decision, win.entity_id)
                else:
                    counts = Counter((r.decision, r.entity_id) for r in rows).most_common()
                    if len(counts) > 1 and counts[0][1] == counts[1][1]:
                        conflicts += 1
                        continue
                    label = counts[0][0]
                ids = tuple(r.id for r in rows if (r.decision, r.entity_id) == label)
                out[mid] = Resolution(mid, label[0], label[1], ids)
            return out, conflicts

        return self.read_transaction(fn)

    def accepted_links(self) -> list[dict]:
        """Every current decision (entity / NIL / ambiguous) with its mention, entity, annotator and
        the prediction it answered (top-1 entity and score, and whether the annotator changed it)."""

        def fn(s: Session) -> list[dict]:
            top = aliased(PredictionCandidate)
            rows = s.execute(
                select(
                    Annotation,
                    Mention,
                    Annotator.name,
                    decision_role(),
                    KbEntity.name,
                    Image.ext,
                    ModelVersion.name,
                    top.entity_id,
                    top.s,
                )
                .join(Mention, Mention.id == Annotation.mention_id)
                .join(Annotator, Annotator.id == Annotation.annotator_id)
                .outerjoin(KbEntity, KbEntity.id == Annotation.entity_id)
                .outerjoin(Image, Image.sha256 == Mention.image_sha256)
                .outerjoin(Prediction, Prediction.id == Annotation.prediction_id)
                .outerjoin(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .outerjoin(top, (top.prediction_id == Prediction.id) & (top.rank == 0))
                .where(Annotation.status == "current", Annotation.decision.in_(FINAL_DECISIONS))
                .order_by(Annotation.id)
            ).all()
            out = []
            for a, m, who, role, ename, ext, mv, top_id, top_s in rows:
                out.append(
                    {
                        "annotation_id": a.id,
                        "request_id": a.request_id,
                        "mention_uid": m.uid,
                        "source": m.source,
                        "sentence": m.sentence,
                        "mention": m.mention,
                        "start": m.start,
                        "end": m.end,
                        "image": self.image_path(m.image_sha256, ext=ext) if m.image_sha256 else None,
                        "decision": a.decision,
                        "entity_id": a.entity_id,
                        "entity_name": ename,
                        "entity_version": a.entity_version,
                        "annotator": who,
                        "role": role,
                        "seconds_spent": a.seconds_spent,
                        "comment": a.comment,
                        "created_at": a.created_at.isoformat(),
                        "model_version": mv,
                        "predicted_entity_id": top_id,
                        "predicted_score": top_s,
                        "corrected": None if top_id is None else (a.decision != "entity" or a.entity_id != top_id),
                    }
                )
            return out

        return self.read_transaction(fn)
