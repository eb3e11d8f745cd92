"""Replaying the journal into the database: `reconcile` makes the two agree again after a crash
between a journal write and its commit, and rebuilds a lost database from a saved journal. The
events it replays are the ones `AnnotationsMixin` writes (`_annotation_event`, `_undo_event`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .annotations import AnnotationsMixin
from .journal import scan_journal
from .mentions import CandidateInput
from .models import (
    ROLES,
    Annotation,
    Annotator,
    Image,
    KbEntity,
    KbEntityVersion,
    Mention,
    Prediction,
    entity_search_text,
    utcnow,
)
from .records import ReconcileReport


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class JournalReplayMixin(AnnotationsMixin):
    def _ensure_annotator(self, s: Session, snap: dict) -> Annotator:
        row = s.scalar(select(Annotator).where(Annotator.name == snap["name"]))
        if row is None:
            role = snap.get("role") if snap.get("role") in ROLES else "annotator"
            row = Annotator(name=snap["name"], role=role, active=True, created_at=utcnow())
            s.add(row)
            s.flush()
        return row

    def _ensure_entity(self, s: Session, entity_id: str, name: str | None) -> KbEntity:
        """The entity, or a placeholder (the KB was not imported into this database yet; a later
        `import_kb` turns the placeholder into the real record as a new version)."""
        row = s.get(KbEntity, entity_id)
        if row is None:
            now = utcnow()
            row = KbEntity(
                id=entity_id,
                name=name or entity_id,
                text="",
                aliases=[],
                images=[],
                version=1,
                updated_at=now,
                search_text=entity_search_text(entity_id, name or entity_id, []),
            )
            s.add(row)
            s.flush()
            s.add(
                KbEntityVersion(
                    entity_id=entity_id,
                    version=1,
                    name=row.name,
                    text="",
                    aliases=[],
                    images=[],
                    note="placeholder rebuilt from the journal",
                    created_at=now,
                )
            )
        return row

    def _ensure_mention(self, s: Session, snap: dict) -> Mention:
        row = s.scalar(select(Mention).where(Mention.uid == snap["uid"]))
        if row is not None:
            return row
        image = snap.get("image")
        if image and s.get(Image, image["sha256"]) is None:
            path = self.images.path_for(image["sha256"], image.get("ext", ""))
            s.add(
                Image(
                    sha256=image["sha256"],
                    ext=image.get("ext", ""),
                    size_bytes=path.stat().st_size if path.is_file() else None,
                    created_at=utcnow(),
                )
            )
            s.flush()
        row = Mention(
            uid=snap["uid"],
            source=snap.get("source") or "",
            sentence=snap["sentence"],
            mention=snap["mention"],
            start=snap["start"],
            end=snap["end"],
            image_sha256=image["sha256"] if image else None,
            margin=None,
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
        return row

    def _ensure_prediction(self, s: Session, snap: dict, m: Mention) -> Prediction:
        row = s.scalar(select(Prediction).where(Prediction.uid == snap["uid"]))
        if row is not None:
            return row
        cands = []
        for c in snap.get("candidates") or []:
            self._ensure_entity(s, c["entity_id"], c.get("name"))
            cands.append(CandidateInput(c["entity_id"], c["S"], c.get("S_T"), c.get("S_V"), c.get("S_C")))
        return self._insert_prediction(
            s,
            m,
            snap["model_version"],
            cands,
            uid=snap["uid"],
            created_at=_parse_time(snap["created_at"]) if snap.get("created_at") else None,
        )

    def _replay_annotation(self, s: Session, ev: dict) -> bool:
        if s.scalar(select(Annotation.id).where(Annotation.request_id == ev["request_id"])) is not None:
            return False
        ann = self._ensure_annotator(s, ev["annotator"])
        m = self._ensure_mention(s, ev["mention"])
        entity = ev.get("entity")
        if entity:
            self._ensure_entity(s, entity["id"], entity.get("name"))
        pred = self._ensure_prediction(s, ev["prediction"], m) if ev.get("prediction") else None
        self._insert_annotation(
            s,
            ann=ann,
            m=m,
            current=self._current(s, m.id, ann.id),
            request_id=ev["request_id"],
            decision=ev["decision"],
            entity_id=entity["id"] if entity else None,
            entity_version=entity.get("version") if entity else None,
            prediction_id=pred.id if pred else None,
            seconds_spent=ev.get("seconds_spent"),
            comment=ev.get("comment"),
            flag=ev.get("flag"),
            created_at=_parse_time(ev["created_at"]),
        )
        return True

    def _replay_undo(self, s: Session, ev: dict) -> bool:
        if s.scalar(select(Annotation.id).where(Annotation.undo_request_id == ev["request_id"])) is not None:
            return False
        target = s.scalar(select(Annotation).where(Annotation.request_id == ev["target"]))
        if target is None or target.undo_request_id is not None:
            return False
        self._mark_undone(s, target, _parse_time(ev["created_at"]), ev["request_id"])
        return True

    def reconcile(self, journal_path: str | Path | None = None) -> ReconcileReport:
        """Make the database and the journal agree again; safe to run at any time, from any process.

        1. Journal groups (complete, not aborted) missing from the database are applied, in file
           order: transactions that wrote their journal lines but died before COMMIT.
        2. Annotations / undos in the database but missing from the journal (a deleted or
           truncated journal file) are appended to it, in time order.

        With `journal_path` naming another journal file, step 1 replays that file instead: this
        rebuilds a lost database from a saved journal (`open_store` on an empty DATA_DIR plus
        `reconcile(saved_journal)`, or just `open_store` when the journal is in place).

        Everything runs in one write transaction that reads the journal while holding the
        database's write lock, so no other writer can be between its journal write and its commit.
        """
        own = self.settings.journal_path
        path = Path(journal_path) if journal_path is not None else own
        foreign = path.absolute() != own.absolute()
        report = ReconcileReport()

        def fn(s: Session, events: list) -> ReconcileReport:
            scan = scan_journal(path)
            report.journal_lines, report.incomplete_groups = scan.lines, scan.incomplete
            report.aborted_groups, report.bad_lines = scan.aborted, scan.bad_lines
            report.groups_reapplied = report.events_reapplied = report.events_rejournaled = 0
            db_requests = set(s.scalars(select(Annotation.request_id)))
            db_undos = set(s.scalars(select(Annotation.undo_request_id).where(Annotation.undo_request_id.is_not(None))))
            for group in scan.groups:
                applied = 0
                for ev in group:
                    if ev.get("type") == "annotation" and ev["request_id"] not in db_requests:
                        applied += self._replay_annotation(s, ev)
                        db_requests.add(ev["request_id"])
                    elif ev.get("type") == "undo" and ev["request_id"] not in db_undos:
                        applied += self._replay_undo(s, ev)
                        db_undos.add(ev["request_id"])
                report.groups_reapplied += applied > 0
                report.events_reapplied += applied
            s.expire_all()  # rows changed through Core statements above must be re-read
            own_scan = scan_journal(own) if foreign else scan
            journaled = {ev["request_id"] for ev in own_scan.events()}
            missing: list[tuple[Any, int, dict]] = []
            # Compare keys first; load full rows only for what is missing (usually nothing).
            keys = s.execute(
                select(Annotation.id, Annotation.request_id, Annotation.undo_request_id).order_by(Annotation.id)
            ).all()
            for aid, rid, urid in keys:
                if rid in journaled and (urid is None or urid in journaled):
                    continue
                a = s.get_one(Annotation, aid)
                if a.request_id not in journaled:
                    missing.append((a.created_at, 0, self._annotation_event(s, a)))
                if a.undo_request_id is not None and a.undo_request_id not in journaled:
                    missing.append((a.undone_at, 1, self._undo_event(a, s.get_one(Annotator, a.annotator_id).name)))
            missing.sort(key=lambda t: (t[0], t[1]))
            events.extend(ev for _, _, ev in missing)
            report.events_rejournaled = len(missing)
            return report

        return self._write(fn)
