"""Replaying the journal into the database: `reconcile` makes the two agree again after a crash
between a journal write and its commit, and rebuilds a lost database from a saved journal. The
events it replays are the ones `AnnotationsMixin` writes (`_annotation_event`, `_undo_event`) and
the projects' ("project", db/projects.py). An annotation event names its mention's project
(`mention.project`), so a rebuilt database puts annotated mentions back into their projects."""

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
    Project,
    entity_search_text,
    utcnow,
)
from .projects import project_event
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

    def _annotation_event(self, s: Session, a, ann=None, m=None) -> dict:
        """AnnotationsMixin's event, with the name of the mention's project (absent: no project)."""
        ev = super()._annotation_event(s, a, ann, m)
        pid = getattr(m, "project_id", None) if m is not None else self._mention_row(s, a.mention_id).project_id
        if pid is not None:
            ev["mention"]["project"] = s.execute(select(Project.name).where(Project.id == pid)).scalar()
        return ev

    def _ensure_project(self, s: Session, name: str) -> int:
        """The project's id; a placeholder project (default settings) when the journal named a
        project whose own event is missing (the events are written in order, so rarely)."""
        pid = s.execute(select(Project.id).where(Project.name == name)).scalar()
        if pid is None:
            row = Project(name=name, guidelines="", annotators_per_mention=1, kb="default", created_at=utcnow())
            s.add(row)
            s.flush()
            pid = row.id
        return pid

    def _replay_project(self, s: Session, ev: dict) -> bool:
        """Bring the project to the event's state (the last event replayed wins). True if it changed."""
        row = s.scalar(select(Project).where(Project.name == ev["name"]))
        state = {
            "guidelines": ev.get("guidelines") or "",
            "annotators_per_mention": int(ev.get("annotators_per_mention") or 1),
            "kb": ev.get("kb") or "default",
            "archived": bool(ev.get("archived")),
        }
        if row is None:
            creator = self._ensure_annotator(s, {"name": ev["created_by"]}).id if ev.get("created_by") else None
            created = _parse_time(ev["created_at"]) if ev.get("created_at") else utcnow()
            s.add(Project(name=ev["name"], created_by=creator, created_at=created, **state))
            s.flush()
            return True
        if all(getattr(row, k) == v for k, v in state.items()):
            return False
        for k, v in state.items():
            setattr(row, k, v)
        s.flush()
        return True

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
            project_id=self._ensure_project(s, snap["project"]) if snap.get("project") else None,
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
            # the role decided in; an older event has none of its own, but its annotator snapshot
            # was written with the decision, so it holds the role of that moment
            role=ev.get("role") or ev["annotator"].get("role") or ann.role,
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
            # A project event holds the project's whole state: only each project's last one counts.
            last_state = {ev["name"]: ev for ev in scan.events() if ev.get("type") == "project" and ev.get("name")}
            for group in scan.groups:
                applied = 0
                for ev in group:
                    if ev.get("type") == "project":
                        if last_state.get(ev.get("name", "")) is ev:
                            applied += self._replay_project(s, ev)
                    elif ev.get("type") == "annotation" and ev["request_id"] not in db_requests:
                        applied += self._replay_annotation(s, ev)
                        db_requests.add(ev["request_id"])
                    elif ev.get("type") == "undo" and ev["request_id"] not in db_undos:
                        applied += self._replay_undo(s, ev)
                        db_undos.add(ev["request_id"])
                report.groups_reapplied += applied > 0
                report.events_reapplied += applied
            s.expire_all()  # rows changed through Core statements above must be re-read
            own_scan = scan_journal(own) if foreign else scan
            journaled = {ev["request_id"] for ev in own_scan.events() if "request_id" in ev}
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
            # Projects missing from the journal go first: their annotations' replay needs them.
            named = {ev["name"] for ev in own_scan.events() if ev.get("type") == "project"}
            for p in s.scalars(select(Project).where(Project.name.not_in(named)).order_by(Project.id)):
                creator = s.get(Annotator, p.created_by).name if p.created_by is not None else None  # type: ignore[union-attr]
                events.append(project_event(p, creator))
            events.extend(ev for _, _, ev in missing)
            report.events_rejournaled = len(events)
            return report

        return self._write(fn)
