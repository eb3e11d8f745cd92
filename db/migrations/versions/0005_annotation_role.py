"""the role an annotation was decided in

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

`annotations.role`: the annotator's role when they made the decision. The gold rule ("a reviewer's
or admin's decision wins", `db.models.resolves`) reads it instead of the annotator's current role,
so demoting a reviewer does not turn their old resolutions into plain votes, and promoting an
annotator does not turn their old votes into resolutions. Existing rows are backfilled from the
annotator's current role (the best that is known; the journal's annotation events carried the role
at write time, and a rebuild from the journal uses that). The column is nullable (old rows of a
database a migration could not backfill stay readable); the store writes it on every new decision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=True))
    op.execute(
        "UPDATE annotations SET role = (SELECT annotators.role FROM annotators"
        " WHERE annotators.id = annotations.annotator_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("annotations") as batch:
        batch.drop_column("role")
