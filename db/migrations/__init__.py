"""Alembic migrations of the annotation store (run by `db.migrate.upgrade`; no alembic.ini needed)."""
