"""projects, stored users, decision flags

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- `projects`: an annotation project (name, Markdown guidelines, annotators per mention, KB name,
  archived), and `mentions.project_id` naming the project a mention belongs to. Existing mentions
  keep NULL, the built-in default project, so their queue and exports do not change.
- `annotators.password_hash`: users managed in the app keep a salted argon2id hash here (the
  environment variable still bootstraps the first admin); NULL for everyone who signs in otherwise.
- `annotations.flag`: an annotator's flag for review next to the decision's comment.

Adds nullable columns and a table only, so the upgrade needs no data rewrite; downgrade drops them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("guidelines", sa.Text(), server_default="", nullable=False),
        sa.Column("annotators_per_mention", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("kb", sa.String(length=200), server_default="default", nullable=False),
        sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["annotators.id"], name=op.f("fk_projects_created_by_annotators")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    with op.batch_alter_table("mentions") as batch:
        batch.add_column(sa.Column("project_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_mentions_project_id_projects"), "projects", ["project_id"], ["id"])
        batch.create_index("ix_mentions_project_id", ["project_id"])
    with op.batch_alter_table("annotators") as batch:
        batch.add_column(sa.Column("password_hash", sa.Text(), nullable=True))
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("flag", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("flag")
    with op.batch_alter_table("annotators") as batch:
        batch.drop_column("password_hash")
    with op.batch_alter_table("mentions") as batch:
        batch.drop_index("ix_mentions_project_id")
        batch.drop_constraint(op.f("fk_mentions_project_id_projects"), type_="foreignkey")
        batch.drop_column("project_id")
    op.drop_table("projects")
