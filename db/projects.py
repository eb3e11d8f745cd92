"""Annotation projects (`ProjectsMixin`): create / edit / archive / list, each project's progress,
and pre-annotation of its corpus by the served model.

A project is a corpus (the mentions whose `project_id` names it) with its own Markdown guidelines,
its own overlap (`annotators_per_mention`), queue, progress and export. Mentions with no project
belong to the built-in default project, named "default" here (the demo queue, mentions saved from
Link); its overlap is the global setting, so a database from before projects works unchanged.

The project's name is its key everywhere outside the database (journal, API, CLI, exported
files), so a project cannot be renamed. Every create / edit is journaled as a "project" event with
the project's whole state; replaying the journal applies them in order, so the last one wins, and
annotation events name their mention's project, so a rebuilt database puts annotated mentions back
in their projects (see reconcile.py).

Pre-annotation (`preannotate`) runs a linker over the project's mentions that have no prediction
yet, `chunk` at a time: the model runs outside any transaction and each chunk's predictions are one
short write, so annotators' submissions go in between chunks; it reports progress and stops at a
cancel between chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Row, exists, func, select, update
from sqlalchemy.orm import Session

from ._base import MAX_NAME, StoreBase, check_int, check_text, iso
from .errors import Conflict, InvalidInput, NotFound
from .models import Annotation, Annotator, Mention, Prediction, Project, utcnow
from .records import MentionRecord, ProjectRecord

DEFAULT_PROJECT = "default"  # the built-in project: mentions whose project_id is NULL
# One store serves one knowledge base (the kb_entities table), named "default". A project names the
# KB it links against; until a store holds several, that must be this one (`check_kb`), so a project
# never claims a KB that nothing serves.
STORE_KBS = ("default",)


def check_kb(kb: Any) -> str:
    """The project's KB: one the store has (today only "default"); InvalidInput otherwise."""
    kb = check_text(kb, "kb", max_len=MAX_NAME).strip()
    if kb not in STORE_KBS:
        served = ", ".join(repr(k) for k in STORE_KBS)
        raise InvalidInput(
            f"no knowledge base named {kb!r}: this store serves one KB, {served} (a project links against it)", "kb"
        )
    return kb


MAX_GUIDELINES = 200_000
MAX_ANNOTATORS_PER_MENTION = 20


def project_row(s: Session, project: Any, field: str = "project") -> Row | None:
    """The project row by id or name; None for the default project ("default" or 0); NotFound else."""
    if project in (DEFAULT_PROJECT, 0):
        return None
    if isinstance(project, int) and not isinstance(project, bool):
        row = s.execute(select(Project.__table__).where(Project.id == project)).first()
    else:
        check_text(project, field, max_len=MAX_NAME)
        row = s.execute(select(Project.__table__).where(Project.name == project)).first()
    if row is None:
        raise NotFound(f"no project {project!r}", field)
    return row


def in_project(project_id: int | None) -> ColumnElement[bool]:
    """SQL condition: the mention belongs to this project (None: the default project)."""
    return Mention.project_id.is_(None) if project_id is None else Mention.project_id == project_id


def project_event(row: Any, created_by: str | None) -> dict:
    """The journal record of a project's whole state (a create or an edit)."""
    return {
        "type": "project",
        "name": row.name,
        "guidelines": row.guidelines,
        "annotators_per_mention": row.annotators_per_mention,
        "kb": row.kb,
        "archived": bool(row.archived),
        "created_by": created_by,
        "created_at": iso(row.created_at),
    }


def _check_overlap(value: Any) -> int:
    check_int(value, "annotators_per_mention")
    if not 1 <= value <= MAX_ANNOTATORS_PER_MENTION:
        raise InvalidInput(f"must be between 1 and {MAX_ANNOTATORS_PER_MENTION}, got {value}", "annotators_per_mention")
    return value


class ProjectsMixin(StoreBase):
    if TYPE_CHECKING:  # MentionsMixin

        def add_predictions(self, items: list[tuple[int | str, list]], model_version: str) -> int: ...

    def _creator_name(self, s: Session, annotator_id: int | None) -> str | None:
        if annotator_id is None:
            return None
        return s.execute(select(Annotator.name).where(Annotator.id == annotator_id)).scalar()

    def _project_record(self, s: Session, row: Any) -> ProjectRecord:
        return ProjectRecord(
            id=row.id,
            name=row.name,
            guidelines=row.guidelines,
            annotators_per_mention=row.annotators_per_mention,
            kb=row.kb,
            archived=bool(row.archived),
            created_by=self._creator_name(s, row.created_by),
            created_at=row.created_at,
        )

    def create_project(
        self,
        name: str,
        *,
        guidelines: str = "",
        annotators_per_mention: int = 1,
        kb: str = "default",
        created_by: str | None = None,
    ) -> ProjectRecord:
        """A new project (Conflict when the name is taken; "default" is the built-in project's)."""
        check_text(name, "name", max_len=MAX_NAME)
        if name.strip() != name or "/" in name:
            raise InvalidInput("must not start or end with spaces or contain '/' (it prefixes mention uids)", "name")
        if name.lower() == DEFAULT_PROJECT:
            raise InvalidInput(f"{DEFAULT_PROJECT!r} is the built-in project (mentions with no project)", "name")
        check_text(guidelines, "guidelines", max_len=MAX_GUIDELINES, allow_empty=True)
        kb = check_kb(kb)
        _check_overlap(annotators_per_mention)

        def fn(s: Session, events: list) -> ProjectRecord:
            if s.execute(select(Project.id).where(Project.name == name)).first() is not None:
                raise Conflict(f"a project named {name!r} already exists", "name")
            creator = self._annotator_row(s, created_by, "created_by").id if created_by is not None else None
            row = Project(
                name=name,
                guidelines=guidelines,
                annotators_per_mention=annotators_per_mention,
                kb=kb,
                archived=False,
                created_by=creator,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            events.append(project_event(row, created_by))
            return self._project_record(s, row)

        return self._write(fn)

    def update_project(
        self,
        project: int | str,
        *,
        guidelines: str | None = None,
        annotators_per_mention: int | None = None,
        kb: str | None = None,
        archived: bool | None = None,
    ) -> ProjectRecord:
        """Change a project's guidelines, overlap, KB or archived flag (None: unchanged). An archived
        project's mentions leave the all-projects queue; its data stay."""
        values: dict[str, Any] = {}
        if guidelines is not None:
            values["guidelines"] = check_text(guidelines, "guidelines", max_len=MAX_GUIDELINES, allow_empty=True)
        if annotators_per_mention is not None:
            values["annotators_per_mention"] = _check_overlap(annotators_per_mention)
        if kb is not None:
            values["kb"] = check_kb(kb)
        if archived is not None:
            if not isinstance(archived, bool):
                raise InvalidInput(f"expected true or false, got {archived!r:.40}", "archived")
            values["archived"] = archived

        def fn(s: Session, events: list) -> ProjectRecord:
            row = project_row(s, project)
            if row is None:
                raise InvalidInput("the default project has no settings of its own (see MIMIC_ANNOTATION_OVERLAP)")
            if values:
                s.execute(update(Project).where(Project.id == row.id).values(**values))
            new = s.execute(select(Project.__table__).where(Project.id == row.id)).one()
            if values:
                events.append(project_event(new, self._creator_name(s, new.created_by)))
            return self._project_record(s, new)

        return self._write(fn)

    def archive_project(self, project: int | str, archived: bool = True) -> ProjectRecord:
        return self.update_project(project, archived=archived)

    def get_project(self, project: int | str) -> ProjectRecord:
        """A project by id or name (NotFound for the default project, which has no record)."""

        def fn(s: Session) -> ProjectRecord:
            row = project_row(s, project)
            if row is None:
                raise NotFound("the default project has no record (it is the mentions with no project)", "project")
            return self._project_record(s, row)

        return self.read_transaction(fn)

    def list_projects(self, *, include_archived: bool = True) -> list[ProjectRecord]:
        def fn(s: Session) -> list[ProjectRecord]:
            q = select(Project.__table__).order_by(Project.id)
            if not include_archived:
                q = q.where(Project.archived.is_(False))
            return [self._project_record(s, r) for r in s.execute(q)]

        return self.read_transaction(fn)

    def project_overlap(self, s: Session, project_id: int | None) -> int:
        """Annotators per mention in a project (the global `overlap` setting for the default one)."""
        if project_id is None:
            return self.settings.overlap
        value = s.execute(select(Project.annotators_per_mention).where(Project.id == project_id)).scalar()
        return value or self.settings.overlap

    def project_progress(self, project: int | str = DEFAULT_PROJECT) -> dict:
        """A project's progress: mentions, complete (decided by `annotators_per_mention` annotators),
        started (some but not all decisions), pending (not complete), predicted (with a model
        prediction), and per annotator their current decisions (entity / nil / ambiguous) and skips."""

        def fn(s: Session) -> dict:
            row = project_row(s, project)
            pid = row.id if row is not None else None
            overlap = self.project_overlap(s, pid)
            scope = in_project(pid)

            def count(*where) -> int:
                return s.execute(select(func.count()).select_from(Mention).where(scope, *where)).scalar_one()

            mentions = count()
            complete = count(Mention.decided >= overlap)
            started = count(Mention.decided > 0, Mention.decided < overlap)
            predicted = count(exists().where(Prediction.mention_id == Mention.id))
            per: dict[str, dict[str, int]] = {}
            for name, decision, n in s.execute(
                select(Annotator.name, Annotation.decision, func.count())
                .join(Annotation, Annotation.annotator_id == Annotator.id)
                .join(Mention, Mention.id == Annotation.mention_id)
                .where(scope, Annotation.status == "current")
                .group_by(Annotator.name, Annotation.decision)
            ):
                d = per.setdefault(name, {"entity": 0, "nil": 0, "ambiguous": 0, "skip": 0})
                d[decision] = n
            annotators = [
                {
                    "annotator": name,
                    "decided": d["entity"] + d["nil"] + d["ambiguous"],
                    "entity": d["entity"],
                    "nil": d["nil"],
                    "ambiguous": d["ambiguous"],
                    "skipped": d["skip"],
                }
                for name, d in sorted(per.items())
            ]
            return {
                "project": row.name if row is not None else DEFAULT_PROJECT,
                "annotators_per_mention": overlap,
                "mentions": mentions,
                "complete": complete,
                "started": started,
                "pending": mentions - complete,
                "predicted": predicted,
                "annotators": annotators,
            }

        return self.read_transaction(fn)

    def project_mention_uids(self, project: int | str = DEFAULT_PROJECT) -> set[str]:
        def fn(s: Session) -> set[str]:
            row = project_row(s, project)
            return set(s.scalars(select(Mention.uid).where(in_project(row.id if row is not None else None))))

        return self.read_transaction(fn)

    # -- pre-annotation ------------------------------------------------------------------------

    def mentions_without_prediction(
        self, project: int | str, *, after_id: int = 0, limit: int = 32
    ) -> tuple[list[MentionRecord], int]:
        """(up to `limit` of the project's mentions with no prediction and id > after_id in id
        order, how many such mentions there are in all from after_id on)."""

        def fn(s: Session) -> tuple[list[MentionRecord], int]:
            row = project_row(s, project)
            where = (
                in_project(row.id if row is not None else None),
                Mention.id > after_id,
                ~exists().where(Prediction.mention_id == Mention.id),
            )
            ids = list(s.scalars(select(Mention.id).where(*where).order_by(Mention.id).limit(limit)))
            total = s.execute(select(func.count()).select_from(Mention).where(*where)).scalar_one()
            return [self._mention_record(s, self._mention_row(s, i)) for i in ids], total

        return self.read_transaction(fn)

    def preannotate(
        self,
        project: int | str,
        link: Callable[[list[MentionRecord]], Sequence[list | Exception]],
        model_version: str,
        *,
        chunk: int = 32,
        progress: Callable[[float, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> dict:
        """Store `link`'s ranking for every mention of the project that has none yet.

        `link(mentions)` returns, per mention, its ranked candidates ({entity_id, S, S_T, S_V, S_C})
        or the Exception that refused it (reported, the others stored). Returns a report: predicted,
        failed ([{mention, problem}]), seconds, mentions_per_second, cancelled."""
        check_int(chunk, "chunk")
        chunk = max(1, chunk)
        check_text(model_version, "model_version", max_len=MAX_NAME)
        t0 = time.perf_counter()
        predicted, failed, last_id, done = 0, [], 0, 0
        first, total = self.mentions_without_prediction(project, limit=chunk)
        batch, cancelled = first, False
        while batch:
            if cancel is not None and cancel():
                cancelled = True
                break
            results = link(batch)
            items: list[tuple[int | str, list]] = []
            for m, r in zip(batch, results):
                if isinstance(r, Exception):
                    failed.append({"mention": m.uid, "problem": str(r)})
                else:
                    items.append((m.id, r))
            predicted += self.add_predictions(items, model_version)
            done += len(batch)
            last_id = batch[-1].id
            if progress is not None:
                progress(done / max(1, total), f"pre-annotated {done:,} of {total:,} mentions")
            batch, _ = self.mentions_without_prediction(project, after_id=last_id, limit=chunk)
        seconds = time.perf_counter() - t0
        return {
            "model_version": model_version,
            "mentions": total,
            "predicted": predicted,
            "failed": failed,
            "cancelled": cancelled,
            "seconds": round(seconds, 3),
            "mentions_per_second": round(done / seconds, 2) if seconds > 0 else None,
        }
