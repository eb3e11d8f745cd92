"""Alembic environment for the annotation store.

`db.migrate.upgrade` passes an open connection (already inside a write transaction) through
`config.attributes["connection"]`, so the version check and every migration run in one
transaction: on SQLite that transaction began with BEGIN IMMEDIATE, so processes starting at the
same time apply the migrations one after the other (the second finds the schema at head and does
nothing); on PostgreSQL an advisory lock gives the same effect.

Used from the `alembic` command line (with `-x url=...` or DATABASE_URL / DATA_DIR set), it builds
the engine from `db.config.Settings` itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import context

try:
    import db  # noqa: F401
except ImportError:  # run by the alembic CLI from elsewhere: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from db.migrate import include_name
from db.models import Base

target_metadata = Base.metadata
_PG_LOCK_KEY = 7420131  # arbitrary constant shared by every process of this app


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        transactional_ddl=True,  # our BEGIN makes SQLite DDL transactional as well
        compare_type=True,
        include_name=include_name,  # the full-text search objects are not in the models (0003)
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from db.config import Settings
    from db.engine import make_engine

    url = context.get_x_argument(as_dictionary=True).get("url")
    engine = make_engine(Settings.from_env(url=url))
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or "sqlite:///data/mimic_studio.sqlite3"
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
