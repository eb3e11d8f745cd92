"""entity images only inside the image store

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Repairs databases written before KB images were stored by content. Every current entity row
(`kb_entities`) whose `images` list holds a path that is not a DATA_DIR-relative path into the
image store (an absolute path such as /proc/self/environ or /etc/passwd, a `..` escape, a
repository-relative demo path like assets/demo_kb/images/x.jpg, a URL) gets those paths dropped:
the row keeps only its `images/...` paths and its version is bumped, and a new `kb_entity_versions`
row records the repaired state with a note `security: dropped image paths outside DATA_DIR/images:
[...]` naming what was dropped (the flag an operator can search for). Older history rows keep the
paths they had, as a record; the store never follows them (`resolve_data_path` refuses any path
outside DATA_DIR/images). Files are neither read nor deleted; this is a pure string rule, so it
runs the same whatever DATA_DIR is. Downgrade does nothing (the dropped paths must not come back).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def safe_store_path(p) -> bool:
    """A DATA_DIR-relative path into the image store: images/<...>, no '..', no absolute form."""
    if not isinstance(p, str) or not p or "\x00" in p or "\\" in p or ":" in p:
        return False
    parts = p.split("/")
    return len(parts) >= 2 and parts[0] == "images" and all(x not in ("", ".", "..") for x in parts)


def _list(v):
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return [v]
    return list(v or [])


def upgrade() -> None:
    if context.is_offline_mode():
        # `alembic upgrade --sql` writes DDL only; this is a data repair with nothing to emit there.
        return
    conn = op.get_bind()
    ents = sa.table(
        "kb_entities",
        sa.column("id", sa.String),
        sa.column("name", sa.Text),
        sa.column("text", sa.Text),
        sa.column("aliases", sa.JSON),
        sa.column("images", sa.JSON),
        sa.column("version", sa.Integer),
        sa.column("updated_at", sa.DateTime),
        sa.column("updated_by", sa.Integer),
    )
    vers = sa.table(
        "kb_entity_versions",
        sa.column("entity_id", sa.String),
        sa.column("version", sa.Integer),
        sa.column("name", sa.Text),
        sa.column("text", sa.Text),
        sa.column("aliases", sa.JSON),
        sa.column("images", sa.JSON),
        sa.column("author_id", sa.Integer),
        sa.column("note", sa.Text),
        sa.column("created_at", sa.DateTime),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = conn.execute(
        sa.select(ents.c.id, ents.c.name, ents.c.text, ents.c.aliases, ents.c.images, ents.c.version)
    ).all()
    for r in rows:
        images = _list(r.images)
        keep = [p for p in images if safe_store_path(p)]
        if len(keep) == len(images):
            continue
        dropped = [p for p in images if not safe_store_path(p)]
        v = (r.version or 1) + 1
        conn.execute(
            sa.update(ents).where(ents.c.id == r.id).values(images=keep, version=v, updated_at=now, updated_by=None)
        )
        conn.execute(
            sa.insert(vers).values(
                entity_id=r.id,
                version=v,
                name=r.name,
                text=r.text,
                aliases=_list(r.aliases),
                images=keep,
                author_id=None,
                created_at=now,
                note="security: dropped image paths outside DATA_DIR/images: " + json.dumps(dropped)[:4000],
            )
        )


def downgrade() -> None:
    pass
