"""full-text search over the knowledge base

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12

The KB search (`KbMixin.search_entities`) covers the descriptions as well as the names, aliases
and ids. What indexes the words depends on the database:

- SQLite: an FTS5 table `kb_entities_fts` over `kb_entities.search_text` (id, name and aliases,
  lower-cased) and `kb_entities.text` (the description), with kb_entities as its external content
  (the text is not stored twice), the Porter stemmer and diacritics folded. Three triggers keep it
  in step with every write of kb_entities, whatever writes it (the store, a bulk import, a migration,
  a repair); the existing rows are indexed here ('rebuild'). The index names rows by their SQLite
  rowid: a manual VACUUM may renumber those of a table without an INTEGER PRIMARY KEY, so after one
  run `AnnotationStore.rebuild_search_index()` (`python -m db rebuild-search`). A SQLite built
  without FTS5 gets nothing here and the search falls back to a substring match on the description.
- PostgreSQL (12 or later): a stored generated column `search_vector`, the same two columns as an
  English `tsvector` (names and aliases weighted A, the description B), kept by the server itself,
  and a GIN index on it; the search matches it with `plainto_tsquery` and ranks with `ts_rank` on
  the stored vector (no per-row re-parsing). The column is not in the models (db/migrate.py
  `include_name` leaves it out of schema comparisons); the ORM and Core writes never name it.
"""

from __future__ import annotations

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FTS = "kb_entities_fts"
PG_SEARCH_VECTOR = (
    "setweight(to_tsvector('english'::regconfig, coalesce(search_text, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(text, '')), 'B')"
)

SQLITE_DDL = [
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(search_text, text, content='kb_entities', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER {FTS}_ai AFTER INSERT ON kb_entities BEGIN "
    f"INSERT INTO {FTS}(rowid, search_text, text) VALUES (new.rowid, new.search_text, new.text); END",
    f"CREATE TRIGGER {FTS}_ad AFTER DELETE ON kb_entities BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, search_text, text) VALUES ('delete', old.rowid, old.search_text, old.text); "
    "END",
    f"CREATE TRIGGER {FTS}_au AFTER UPDATE OF search_text, text ON kb_entities BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, search_text, text) VALUES ('delete', old.rowid, old.search_text, old.text); "
    f"INSERT INTO {FTS}(rowid, search_text, text) VALUES (new.rowid, new.search_text, new.text); END",
    f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')",
]


def _sqlite_has_fts5() -> bool:
    if context.is_offline_mode():
        return True  # `alembic upgrade --sql` writes the DDL for a SQLite that has it
    return bool(op.get_bind().exec_driver_sql("SELECT sqlite_compileoption_used('ENABLE_FTS5')").scalar())


def upgrade() -> None:
    dialect = context.get_context().dialect.name
    if dialect == "sqlite":
        if not _sqlite_has_fts5():
            return  # the store's search falls back to substring matching (db/kb.py)
        for statement in SQLITE_DDL:
            op.execute(statement)
    elif dialect == "postgresql":
        op.execute(
            f"ALTER TABLE kb_entities ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({PG_SEARCH_VECTOR}) STORED"
        )
        op.execute("CREATE INDEX ix_kb_entities_fulltext ON kb_entities USING gin (search_vector)")


def downgrade() -> None:
    dialect = context.get_context().dialect.name
    if dialect == "sqlite":
        for suffix in ("_ai", "_ad", "_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}{suffix}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_kb_entities_fulltext")
        op.execute("ALTER TABLE kb_entities DROP COLUMN IF EXISTS search_vector")
