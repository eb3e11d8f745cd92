"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22

The tables of db/models.py: annotators, images, kb_entities (+ kb_entity_versions), mentions,
model_versions, predictions (+ prediction_candidates), annotations, leases, training_runs
(+ training_run_annotations). Column types are spelled with plain SQLAlchemy types (naive UTC
DateTime) so this file never depends on the application code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("role IN ('annotator', 'reviewer', 'admin')", name=op.f("ck_annotators_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
        sa.UniqueConstraint("name", name=op.f("uq_annotators_name")),
    )
    op.create_table(
        "images",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("ext", sa.String(length=8), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_images")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("backbone", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("promoted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(
        "uq_model_versions_one_promoted",
        "model_versions",
        ["promoted"],
        unique=True,
        sqlite_where=sa.text("promoted = 1"),
        postgresql_where=sa.text("promoted"),
    )

    op.create_table(
        "kb_entities",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.Integer(), nullable=True),
        sa.Column("search_text", sa.Text(), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["updated_by"], ["annotators.id"], name=op.f("fk_kb_entities_updated_by_annotators")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_entities")),
    )
    op.create_table(
        "mentions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("sentence", sa.Text(), nullable=False),
        sa.Column("mention", sa.Text(), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("end", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("decided", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint('start >= 0 AND start < "end"', name=op.f("ck_mentions_span")),
        sa.ForeignKeyConstraint(["image_sha256"], ["images.sha256"], name=op.f("fk_mentions_image_sha256_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mentions")),
        sa.UniqueConstraint("uid", name=op.f("uq_mentions_uid")),
    )
    op.create_index("ix_mentions_decided_margin_id", "mentions", ["decided", "margin", "id"], unique=False)

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("export_dir", sa.Text(), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("base_model_version_id", sa.Integer(), nullable=True),
        sa.Column("output_model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_training_runs_status")
        ),
        sa.ForeignKeyConstraint(
            ["base_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_runs_base_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["output_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_runs_output_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_table(
        "kb_entity_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entity_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["annotators.id"], name=op.f("fk_kb_entity_versions_author_id_annotators")
        ),
        sa.ForeignKeyConstraint(
            ["entity_id"], ["kb_entities.id"], name=op.f("fk_kb_entity_versions_entity_id_kb_entities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_entity_versions")),
        sa.UniqueConstraint("entity_id", "version", name=op.f("uq_kb_entity_versions_entity_id_version")),
    )
    op.create_table(
        "leases",
        sa.Column("mention_id", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["annotator_id"], ["annotators.id"], name=op.f("fk_leases_annotator_id_annotators")),
        sa.ForeignKeyConstraint(["mention_id"], ["mentions.id"], name=op.f("fk_leases_mention_id_mentions")),
        sa.PrimaryKeyConstraint("mention_id", "slot", name=op.f("pk_leases")),
    )
    op.create_index("ix_leases_annotator", "leases", ["annotator_id"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=False),
        sa.Column("mention_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["mention_id"], ["mentions.id"], name=op.f("fk_predictions_mention_id_mentions")),
        sa.ForeignKeyConstraint(
            ["model_version_id"], ["model_versions.id"], name=op.f("fk_predictions_model_version_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint("uid", name=op.f("uq_predictions_uid")),
    )
    op.create_index("ix_predictions_mention_created", "predictions", ["mention_id", "created_at"], unique=False)

    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("mention_id", sa.Integer(), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.String(length=200), nullable=True),
        sa.Column("entity_version", sa.Integer(), nullable=True),
        sa.Column("prediction_id", sa.Integer(), nullable=True),
        sa.Column("seconds_spent", sa.Float(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.Column("undone_at", sa.DateTime(), nullable=True),
        sa.Column("undo_request_id", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "(decision = 'entity') = (entity_id IS NOT NULL)", name=op.f("ck_annotations_entity_iff_decision")
        ),
        sa.CheckConstraint("decision IN ('entity', 'nil', 'ambiguous', 'skip')", name=op.f("ck_annotations_decision")),
        sa.CheckConstraint("status IN ('current', 'superseded', 'undone')", name=op.f("ck_annotations_status")),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_annotations_annotator_id_annotators")
        ),
        sa.ForeignKeyConstraint(["entity_id"], ["kb_entities.id"], name=op.f("fk_annotations_entity_id_kb_entities")),
        sa.ForeignKeyConstraint(["mention_id"], ["mentions.id"], name=op.f("fk_annotations_mention_id_mentions")),
        sa.ForeignKeyConstraint(
            ["prediction_id"], ["predictions.id"], name=op.f("fk_annotations_prediction_id_predictions")
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"], ["annotations.id"], name=op.f("fk_annotations_superseded_by_annotations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
        sa.UniqueConstraint("request_id", name=op.f("uq_annotations_request_id")),
        sa.UniqueConstraint("undo_request_id", name=op.f("uq_annotations_undo_request_id")),
    )
    op.create_index("ix_annotations_annotator_status", "annotations", ["annotator_id", "status"], unique=False)
    op.create_index("ix_annotations_mention_status", "annotations", ["mention_id", "status"], unique=False)
    op.create_index(
        "uq_annotations_one_current",
        "annotations",
        ["mention_id", "annotator_id"],
        unique=True,
        sqlite_where=sa.text("status = 'current'"),
        postgresql_where=sa.text("status = 'current'"),
    )

    op.create_table(
        "prediction_candidates",
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("entity_id", sa.String(length=200), nullable=False),
        sa.Column("s", sa.Float(), nullable=False),
        sa.Column("s_t", sa.Float(), nullable=True),
        sa.Column("s_v", sa.Float(), nullable=True),
        sa.Column("s_c", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entity_id"], ["kb_entities.id"], name=op.f("fk_prediction_candidates_entity_id_kb_entities")
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"], ["predictions.id"], name=op.f("fk_prediction_candidates_prediction_id_predictions")
        ),
        sa.PrimaryKeyConstraint("prediction_id", "rank", name=op.f("pk_prediction_candidates")),
    )
    op.create_table(
        "training_run_annotations",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotation_id"], ["annotations.id"], name=op.f("fk_training_run_annotations_annotation_id_annotations")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_training_run_annotations_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "annotation_id", name=op.f("pk_training_run_annotations")),
    )


def downgrade() -> None:
    op.drop_table("training_run_annotations")
    op.drop_table("prediction_candidates")
    op.drop_index(
        "uq_annotations_one_current",
        table_name="annotations",
        sqlite_where=sa.text("status = 'current'"),
        postgresql_where=sa.text("status = 'current'"),
    )
    op.drop_index("ix_annotations_mention_status", table_name="annotations")
    op.drop_index("ix_annotations_annotator_status", table_name="annotations")

    op.drop_table("annotations")
    op.drop_index("ix_predictions_mention_created", table_name="predictions")

    op.drop_table("predictions")
    op.drop_index("ix_leases_annotator", table_name="leases")

    op.drop_table("leases")
    op.drop_table("kb_entity_versions")
    op.drop_table("training_runs")
    op.drop_index("ix_mentions_decided_margin_id", table_name="mentions")

    op.drop_table("mentions")
    op.drop_table("kb_entities")
    op.drop_index(
        "uq_model_versions_one_promoted",
        table_name="model_versions",
        sqlite_where=sa.text("promoted = 1"),
        postgresql_where=sa.text("promoted"),
    )

    op.drop_table("model_versions")
    op.drop_table("images")
    op.drop_table("annotators")
