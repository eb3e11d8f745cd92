"""Importing a corpus into the store (`MentionImportMixin.import_mentions`): rows read by
db/corpus.py in any supported layout, checked one by one (each bad row reported with its row and
problem), then written in short batch transactions of multi-row INSERTs, optionally into a project."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from . import statements as Q
from ._base import check_text
from .corpus import ImageFolder, read_corpus, unpack_images_zip
from .errors import Conflict, InvalidInput, StoreError, UnknownEntity
from .mentions import CandidateInput, MentionInput, MentionsMixin, check_candidates
from .models import Image, KbEntity, Mention, Prediction, PredictionCandidate, utcnow
from .projects import project_row
from .records import ImportReport


class MentionImportMixin(MentionsMixin):
    # -- import ---------------------------------------------------------------------------------

    def import_mentions(
        self,
        source: str | Path | Iterable[dict],
        *,
        default_source: str = "",
        model_version: str | None = None,
        on_error: str = "raise",
        base_dir: str | Path | None = None,
        batch_size: int = 500,
        project: int | str | None = None,
        format: str = "auto",
        images_zip: str | Path | None = None,
        max_zip_bytes: int = 4 * 2**30,
        progress: Callable[[float, str], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> ImportReport:
        """Import mentions (optionally pre-annotated) from a corpus file or an iterable of dicts.

        Each record: {"uid" or "id", "source", "sentence", "mention", "start", "end", "image"
        (a path, relative to the file's folder), "candidates": [{"entity_id", "S", "S_T", "S_V",
        "S_C"}, ...], "model_version"}; only "sentence" and "mention" (or start/end) are required.
        A file may be JSONL, CSV, the official MIMIC layout or MELBench raw JSON (`format`, see
        db/corpus.py). A known uid is not duplicated (its new candidates are added as a new prediction).

        project (an existing project's id or name): the mentions join it, their uids become
        "<project>/<uid>" (one corpus may go into several projects), and images are looked up only
        inside `images_zip` (unpacked safely, see db/corpus.py) or the file's own folder.

        on_error="raise": every record is checked first and the first bad one raises (naming its
        row and field) before anything is written. on_error="skip": bad records are reported in
        `ImportReport.rejected` ({row, problem}) and `errors`, and the others imported.
        `progress(fraction, message)` is called as rows are checked and batches written; `cancel()`
        returning True stops before the next batch (batches written stay). Each batch of
        `batch_size` mentions is one short transaction, so annotations are written between them.
        """
        if on_error not in ("raise", "skip"):
            raise InvalidInput(f"must be 'raise' or 'skip', got {on_error!r}", "on_error")
        pid, pname = self._import_project(project)
        report = ImportReport(project=pname)
        work = None
        try:
            folder: ImageFolder | None = None
            if images_zip is not None:
                work = Path(tempfile.mkdtemp(prefix=".import-images-", dir=self.settings.data_dir))
                z = unpack_images_zip(
                    images_zip, work, max_file_bytes=self.settings.max_image_bytes, max_total_bytes=max_zip_bytes
                )
                report.images_in_zip, report.zip_skipped = z.extracted, z.skipped
                folder = ImageFolder(work)
            if isinstance(source, (str, Path)):
                path = Path(source)
                report.format, records, img_base = read_corpus(path, format)
                base = Path(base_dir) if base_dir is not None else img_base
                if folder is None and pid is not None:
                    folder = ImageFolder(base)
            else:
                base = Path(base_dir) if base_dir is not None else Path.cwd()
                records = [(i + 1, f"line {i + 1}", r) for i, r in enumerate(source)]
                report.format = "records"
            report.rows = len(records)
            self._import_records(
                records,
                report,
                base,
                folder,
                pid,
                pname,
                default_source,
                model_version,
                on_error,
                batch_size,
                progress,
                cancel,
            )
        finally:
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
        return report

    def _import_project(self, project: int | str | None) -> tuple[int | None, str | None]:
        """(id, name) of the project an import goes into; (None, None) for the default project."""
        if project is None:
            return None, None

        def fn(s: Session) -> tuple[int | None, str | None]:
            row = project_row(s, project)
            if row is None:
                return None, None
            if row.archived:
                raise Conflict(f"project {row.name!r} is archived: unarchive it before importing", "project")
            return row.id, row.name

        return self.read_transaction(fn)

    def _import_records(
        self,
        records,
        report,
        base,
        folder,
        pid,
        pname,
        default_source,
        model_version,
        on_error,
        batch_size,
        progress,
        cancel,
    ) -> None:
        errors: list[tuple[int, str, StoreError]] = []
        prepared: list[tuple[int, str, MentionInput, list[CandidateInput], str | None]] = []
        n = max(1, len(records))
        for i, (lineno, where, rec) in enumerate(records):
            if i % 200 == 0:
                if cancel is not None and cancel():
                    report.cancelled = True
                    return
                if progress is not None:
                    progress(0.5 * i / n, f"checked {i:,} of {len(records):,} rows")
            try:
                if isinstance(rec, InvalidInput):
                    raise rec
                if not isinstance(rec, dict):
                    raise InvalidInput(f"expected a JSON object, got {type(rec).__name__}", where)
                image = rec.get("image") or rec.get("image_path")
                if image is not None:
                    check_text(image, f"{where}.image", max_len=4096)
                    if folder is not None:
                        try:
                            image = folder.find(image, rec.get("image_names"))
                        except InvalidInput as e:
                            raise InvalidInput(str(e), f"{where}.image") from None
                    else:
                        image = Path(image) if Path(image).is_absolute() else base / image
                uid = rec.get("uid", rec.get("id"))
                m = self.prepare_mention(
                    rec.get("sentence"),
                    rec.get("mention"),
                    rec.get("start"),
                    rec.get("end"),
                    image=image,
                    source=rec.get("source", default_source),
                    uid=uid,
                    field=where,
                )
                if pname is not None:
                    m = replace(m, uid=f"{pname}/{m.uid}")
                    check_text(m.uid, f"{where}.uid", max_len=255)
                cands = check_candidates(rec.get("candidates") or [], f"{where}.candidates")
                mv = rec.get("model_version", model_version)
                if cands and mv is None:
                    raise InvalidInput(
                        "candidates need a model_version (in the record or as an argument)", f"{where}.model_version"
                    )
                prepared.append((lineno, where, m, cands, mv))
            except StoreError as e:
                errors.append((lineno, where, e))
        # Unknown entity ids and uids taken by other content or projects need the database: one
        # query per 500 for the whole file.
        known = self._existing_entity_ids({c.entity_id for *_, cands, _ in prepared for c in cands})
        taken = self._existing_mentions([m.uid for _, _, m, _, _ in prepared])
        kept = []
        for lineno, where, m, cands, mv in prepared:
            bad = next((i for i, c in enumerate(cands) if c.entity_id not in known), None)
            old = taken.get(m.uid)
            sha = m.image.sha256 if m.image else None
            if old is None:  # a later row of this file with the same uid must match this one
                taken[m.uid] = SimpleNamespace(
                    project_id=pid, sentence=m.sentence, start=m.start, end=m.end, image_sha256=sha
                )
            if bad is not None:
                problem: StoreError = UnknownEntity(
                    f"unknown entity {cands[bad].entity_id!r} (not in the knowledge base)",
                    f"{where}.candidates[{bad}].entity_id",
                )
            elif old is not None and old.project_id != pid:
                problem = Conflict(f"mention uid {m.uid!r} already belongs to another project", f"{where}.uid")
            elif old is not None and (old.sentence, old.start, old.end, old.image_sha256) != (
                m.sentence,
                m.start,
                m.end,
                sha,
            ):
                problem = Conflict(
                    f"mention uid {m.uid!r} already exists with a different sentence, span or image", f"{where}.uid"
                )
            else:
                kept.append((where, m, cands, mv))
                continue
            errors.append((lineno, where, problem))
        errors.sort(key=lambda t: t[0])
        if errors and on_error == "raise":
            raise errors[0][2]  # the first bad row, before anything was written
        report.errors = [str(e) for _, _, e in errors]
        report.rejected = [{"row": where, "problem": str(e)} for _, where, e in errors]
        for start in range(0, len(kept), batch_size):
            if cancel is not None and cancel():
                report.cancelled = True
                break
            batch = kept[start : start + batch_size]

            def write_batch(s: Session, events: list[dict], batch: list = batch) -> tuple[int, int, int]:
                return self._bulk_insert(s, batch, pid)

            created, existing, predicted = self._write(write_batch)
            report.created += created
            report.existing += existing
            report.predictions += predicted
            if progress is not None:
                done = start + len(batch)
                progress(0.5 + 0.5 * done / len(kept), f"stored {done:,} of {len(kept):,} mentions")

    def _existing_mentions(self, uids: list[str]) -> dict[str, Any]:
        def fn(s: Session) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for i in range(0, len(uids), 500):
                for r in s.execute(
                    select(
                        Mention.uid,
                        Mention.project_id,
                        Mention.sentence,
                        Mention.start,
                        Mention.end,
                        Mention.image_sha256,
                    ).where(Mention.uid.in_(uids[i : i + 500]))
                ):
                    out[r.uid] = r
            return out

        return self.read_transaction(fn) if uids else {}

    def _bulk_insert(self, s: Session, batch: list, project_id: int | None = None) -> tuple[int, int, int]:
        """Insert a batch of prepared (where, mention, candidates, model_version) with Core
        statements: a few multi-row INSERTs instead of thousands of ORM round trips."""
        now = utcnow()
        uids = list(dict.fromkeys(m.uid for _, m, _, _ in batch))
        known = {
            r.uid: r
            for r in s.execute(
                select(
                    Mention.id, Mention.uid, Mention.sentence, Mention.start, Mention.end, Mention.image_sha256
                ).where(Mention.uid.in_(uids))
            )
        }
        images = {m.image.sha256: m.image for _, m, _, _ in batch if m.image is not None}
        if images:
            have = set(s.scalars(select(Image.sha256).where(Image.sha256.in_(list(images)))))
            rows = [
                dict(
                    sha256=i.sha256, ext=i.ext, width=i.width, height=i.height, size_bytes=i.size_bytes, created_at=now
                )
                for sha, i in images.items()
                if sha not in have
            ]
            if rows:
                s.execute(insert(Image), rows)
        new_rows: list[dict[str, Any]] = []
        seen: dict[str, SimpleNamespace] = {}
        for where, m, _, _ in batch:
            sha = m.image.sha256 if m.image else None
            old = known.get(m.uid) or seen.get(m.uid)
            if old is not None:
                if (old.sentence, old.start, old.end, old.image_sha256) != (m.sentence, m.start, m.end, sha):
                    raise Conflict(
                        f"mention uid {m.uid!r} already exists with a different sentence, span or image", f"{where}.uid"
                    )
                continue
            seen[m.uid] = SimpleNamespace(sentence=m.sentence, start=m.start, end=m.end, image_sha256=sha)
            new_rows.append(
                dict(
                    uid=m.uid,
                    source=m.source,
                    sentence=m.sentence,
                    mention=m.mention,
                    start=m.start,
                    end=m.end,
                    image_sha256=sha,
                    margin=None,
                    decided=0,
                    project_id=project_id,
                    created_at=now,
                )
            )
        ids = {r.uid: r.id for r in known.values()}
        returning = s.get_bind().dialect.insert_executemany_returning  # SQLite >= 3.35, PostgreSQL
        if new_rows and returning:
            ids.update({uid: i for i, uid in s.execute(insert(Mention).returning(Mention.id, Mention.uid), new_rows)})
        elif new_rows:
            s.execute(insert(Mention), new_rows)
            ids.update(self._ids_by_uid(s, Mention, [r["uid"] for r in new_rows]))
        versions: dict[str, int] = {}
        preds = []
        for where, m, cands, mv in batch:
            if not cands:
                continue
            if mv not in versions:
                versions[mv] = self._model_version_row(s, mv, f"{where}.model_version", create=True).id
            margin = cands[0].s - cands[1].s if len(cands) >= 2 else None
            preds.append(
                (
                    dict(
                        uid=uuid.uuid4().hex,
                        mention_id=ids[m.uid],
                        model_version_id=versions[mv],
                        margin=margin,
                        created_at=now,
                    ),
                    cands,
                )
            )
        if preds:
            if returning:
                pred_ids = dict(
                    s.execute(insert(Prediction).returning(Prediction.uid, Prediction.id), [p for p, _ in preds]).all()
                )
            else:
                s.execute(insert(Prediction), [p for p, _ in preds])
                pred_ids = self._ids_by_uid(s, Prediction, [p["uid"] for p, _ in preds])
            s.execute(
                insert(PredictionCandidate),
                [
                    dict(
                        prediction_id=pred_ids[p["uid"]],
                        rank=r,
                        entity_id=c.entity_id,
                        s=c.s,
                        s_t=c.s_t,
                        s_v=c.s_v,
                        s_c=c.s_c,
                    )
                    for p, cands in preds
                    for r, c in enumerate(cands)
                ],
            )
            # These predictions are the newest of their mentions: their margins order the queue.
            s.execute(
                update(Q.table(Mention))
                .where(Q.table(Mention).c.id == bindparam("mid"))
                .values(margin=bindparam("mg")),
                [{"mid": p["mention_id"], "mg": p["margin"]} for p, _ in preds],
            )
        return len(new_rows), len(batch) - len(new_rows), len(preds)

    @staticmethod
    def _ids_by_uid(s: Session, model, uids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(uids), 500):
            out.update(dict(s.execute(select(model.uid, model.id).where(model.uid.in_(uids[i : i + 500]))).all()))
        return out

    def _existing_entity_ids(self, ids: set[str]) -> set[str]:
        id_list = list(ids)

        def fn(s: Session) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(id_list), 500):
                found.update(s.scalars(select(KbEntity.id).where(KbEntity.id.in_(id_list[i : i + 500]))))
            return found

        return self.read_transaction(fn) if id_list else set()
