"""Apply the Alembic migrations programmatically (no alembic.ini; works from any cwd)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# What migration 0003 adds outside the models (full-text search): SQLite's FTS5 table with its
# shadow tables, PostgreSQL's generated tsvector column and its GIN index. Schema comparisons
# leave them out (`include_name`).
SEARCH_OBJECTS = ("kb_entities_fts", "ix_kb_entities_fulltext", "search_vector")


def include_name(name: str | None, type_: str, parent_names) -> bool:
    """Alembic's `include_name` hook: everything but the full-text search objects."""
    return not (name or "").startswith(SEARCH_OBJECTS)


def alembic_config() -> Config:
    """An Alembic Config built in code, pointing at db/migrations by absolute path."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` inside one write transaction (see migrations/env.py)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
