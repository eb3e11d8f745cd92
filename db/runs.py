"""Model versions and training runs: what the retraining job records and reads.

Life of a run: `create_training_run` (queued, with the annotation ids that went into its
training set) → `start_training_run` (running) → `finish_training_run` (succeeded / failed /
cancelled, with metrics and possibly the model version it produced). A finished run is final.
Exactly zero or one model version is promoted (served); `promote` switches it in one transaction,
and a partial unique index makes two promoted versions impossible even under concurrent calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from ._base import MAX_NAME, StoreBase, check_choice, check_int, check_text
from .errors import Conflict, InvalidInput, NotFound
from .models import RUN_STATUSES, Annotation, ModelVersion, TrainingRun, TrainingRunAnnotation, utcnow
from .records import ModelVersionRecord, TrainingRunRecord

# Allowed status transitions; the terminal states have none.
_TRANSITIONS = {
    "queued": {"running", "failed", "cancelled"},
    "running": {"succeeded", "failed", "cancelled"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}


def _check_json_dict(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"expected a dict, got {type(value).__name__}", field)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"must be JSON-serialisable ({e})", field) from None
    return value


def _mv_record(m: ModelVersion) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=m.id,
        name=m.name,
        checkpoint=m.checkpoint,
        backbone=m.backbone,
        metrics=dict(m.metrics or {}),
        promoted=bool(m.promoted),
        created_at=m.created_at,
    )


class RunsMixin(StoreBase):
    # -- model versions -------------------------------------------------------------------------

    def register_model_version(
        self, name: str, *, checkpoint: str | None = None, backbone: str | None = None, metrics: dict | None = None
    ) -> ModelVersionRecord:
        """Create a model version, or fill in / update the given fields of an existing one
        (versions referenced only by name in imported predictions are created bare)."""
        check_text(name, "name", max_len=MAX_NAME)
        metrics = _check_json_dict(metrics, "metrics") if metrics is not None else None

        def fn(s: Session, events: list) -> ModelVersionRecord:
            row = self._model_version_row(s, name, "name", create=True)
            if checkpoint is not None:
                row.checkpoint = checkpoint
            if backbone is not None:
                row.backbone = backbone
            if metrics is not None:
                row.metrics = {**(row.metrics or {}), **metrics}
            s.flush()
            return _mv_record(row)

        return self._write(fn)

    def get_model_version(self, name: str) -> ModelVersionRecord:
        return self.read_transaction(lambda s: _mv_record(self._model_version_row(s, name, "name")))

    def list_model_versions(self) -> list[ModelVersionRecord]:
        return self.read_transaction(
            lambda s: [_mv_record(m) for m in s.scalars(select(ModelVersion).order_by(ModelVersion.id))]
        )

    def promoted_model_version(self) -> ModelVersionRecord | None:
        return self.read_transaction(
            lambda s: (lambda m: _mv_record(m) if m else None)(
                s.scalar(select(ModelVersion).where(ModelVersion.promoted.is_(True)))
            )
        )

    def promote(self, name: str) -> ModelVersionRecord:
        """Make `name` the only promoted model version (one transaction)."""

        def fn(s: Session, events: list) -> ModelVersionRecord:
            row = self._model_version_row(s, name, "name")
            s.execute(
                update(ModelVersion)
                .where(ModelVersion.promoted.is_(True), ModelVersion.id != row.id)
                .values(promoted=False)
            )
            s.flush()
            row.promoted = True
            s.flush()
            return _mv_record(row)

        return self._write(fn)

    # -- training runs --------------------------------------------------------------------------

    def _run_record(self, s: Session, r: TrainingRun) -> TrainingRunRecord:
        def mv(i):
            return s.get(ModelVersion, i).name if i is not None else None

        n = s.execute(
            select(func.count()).select_from(TrainingRunAnnotation).where(TrainingRunAnnotation.run_id == r.id)
        ).scalar_one()
        return TrainingRunRecord(
            id=r.id,
            status=r.status,
            config=dict(r.config or {}),
            export_dir=r.export_dir,
            log_path=r.log_path,
            metrics=dict(r.metrics or {}),
            error=r.error,
            base_model_version=mv(r.base_model_version_id),
            output_model_version=mv(r.output_model_version_id),
            created_at=r.created_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            annotations=n,
        )

    def _run_row(self, s: Session, run_id: int) -> TrainingRun:
        row = s.get(TrainingRun, check_int(run_id, "run_id"))
        if row is None:
            raise NotFound(f"no training run {run_id}", "run_id")
        return row

    def _attach(self, s: Session, run_id: int, annotation_ids: list[int]) -> None:
        ids = sorted(set(annotation_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            found = set(s.scalars(select(Annotation.id).where(Annotation.id.in_(chunk))))
            missing = [a for a in chunk if a not in found]
            if missing:
                raise NotFound(f"no annotation(s) {missing[:10]}", "annotation_ids")
            already = set(
                s.scalars(
                    select(TrainingRunAnnotation.annotation_id).where(
                        TrainingRunAnnotation.run_id == run_id, TrainingRunAnnotation.annotation_id.in_(chunk)
                    )
                )
            )
            rows = [{"run_id": run_id, "annotation_id": a} for a in chunk if a not in already]
            if rows:
                s.execute(insert(TrainingRunAnnotation), rows)

    def create_training_run(
        self,
        config: dict | None = None,
        *,
        export_dir: str | None = None,
        base_model_version: str | None = None,
        annotation_ids: Iterable[int] = (),
    ) -> TrainingRunRecord:
        """Record a queued run and which annotations its training set holds."""
        config = _check_json_dict(config, "config")
        ids = [check_int(a, "annotation_ids[]") for a in annotation_ids]

        def fn(s: Session, events: list) -> TrainingRunRecord:
            base = (
                self._model_version_row(s, base_model_version, "base_model_version").id
                if base_model_version is not None
                else None
            )
            row = TrainingRun(
                status="queued",
                config=config,
                export_dir=export_dir,
                metrics={},
                base_model_version_id=base,
                created_at=utcnow(),
            )
            s.add(row)
            s.flush()
            self._attach(s, row.id, ids)
            return self._run_record(s, row)

        return self._write(fn)

    def attach_annotations(self, run_id: int, annotation_ids: Iterable[int]) -> TrainingRunRecord:
        ids = [check_int(a, "annotation_ids[]") for a in annotation_ids]

        def fn(s: Session, events: list) -> TrainingRunRecord:
            row = self._run_row(s, run_id)
            self._attach(s, row.id, ids)
            return self._run_record(s, row)

        return self._write(fn)

    def update_training_run(
        self,
        run_id: int,
        *,
        status: str | None = None,
        metrics: dict | None = None,
        log_path: str | None = None,
        error: str | None = None,
        output_model_version: str | None = None,
    ) -> TrainingRunRecord:
        """Change a run's status (only along queued → running → succeeded/failed/cancelled) and/or
        merge metrics, set the log location, the error text, the model version it produced."""
        if status is not None:
            check_choice(status, "status", RUN_STATUSES)
        metrics = _check_json_dict(metrics, "metrics") if metrics is not None else None

        def fn(s: Session, events: list) -> TrainingRunRecord:
            row = self._run_row(s, run_id)
            now = utcnow()
            if status is not None and status != row.status:
                if status not in _TRANSITIONS[row.status]:
                    raise Conflict(f"run {row.id} is {row.status}; it cannot become {status}", "status")
                row.status = status
                if status == "running":
                    row.started_at = now
                if status in ("succeeded", "failed", "cancelled"):
                    row.finished_at = now
            if metrics is not None:
                row.metrics = {**(row.metrics or {}), **metrics}
            if log_path is not None:
                row.log_path = log_path
            if error is not None:
                row.error = error
            if output_model_version is not None:
                row.output_model_version_id = self._model_version_row(
                    s, output_model_version, "output_model_version"
                ).id
            s.flush()
            return self._run_record(s, row)

        return self._write(fn)

    def start_training_run(self, run_id: int, *, log_path: str | None = None) -> TrainingRunRecord:
        return self.update_training_run(run_id, status="running", log_path=log_path)

    def finish_training_run(
        self,
        run_id: int,
        status: str = "succeeded",
        *,
        metrics: dict | None = None,
        error: str | None = None,
        output_model_version: str | None = None,
    ) -> TrainingRunRecord:
        if status not in ("succeeded", "failed", "cancelled"):
            raise InvalidInput(f"must be succeeded, failed or cancelled; got {status!r}", "status")
        return self.update_training_run(
            run_id, status=status, metrics=metrics, error=error, output_model_version=output_model_version
        )

    def get_training_run(self, run_id: int) -> TrainingRunRecord:
        return self.read_transaction(lambda s: self._run_record(s, self._run_row(s, run_id)))

    def list_training_runs(self) -> list[TrainingRunRecord]:
        return self.read_transaction(
            lambda s: [self._run_record(s, r) for r in s.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()))]
        )

    def training_run_annotations(self, run_id: int) -> list[int]:
        def fn(s: Session) -> list[int]:
            self._run_row(s, run_id)
            tra = TrainingRunAnnotation
            return list(s.scalars(select(tra.annotation_id).where(tra.run_id == run_id).order_by(tra.annotation_id)))

        return self.read_transaction(fn)
