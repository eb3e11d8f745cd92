"""Engine, pragmas, migrations and settings: what `open_store` sets up before any operation."""

from __future__ import annotations

import argparse
import io
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db import InvalidInput, Settings, current_revision, describe_location, head_revision, open_store, session_scope
from db.config import Mount
from db.migrate import alembic_config, include_name
from db.models import Annotation, Base
from db.testing import seed_store

REPO = Path(__file__).resolve().parents[1]


def _pragmas(store) -> dict:
    with store.engine.connect() as c:
        return {
            p: c.exec_driver_sql(f"PRAGMA {p}").scalar()
            for p in ("foreign_keys", "busy_timeout", "journal_mode", "synchronous")
        }


def test_migrations_build_exactly_the_models_schema(tmp_path):
    s = open_store(tmp_path / "data")
    try:
        assert current_revision(s.engine) == head_revision()
        with s.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"include_name": include_name})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == []
        with s.engine.connect() as conn:  # the full-text table (0003) is there, left out of the comparison
            assert conn.exec_driver_sql("SELECT count(*) FROM kb_entities_fts").scalar() == 0
    finally:
        s.close()
    again = open_store(tmp_path / "data")  # second start: migrations are a no-op
    assert current_revision(again.engine) == head_revision()
    again.close()


def test_postgresql_ddl_is_generated_from_the_same_migrations():
    """No server needed: Alembic's offline mode renders the migration for the PostgreSQL dialect."""
    buf = io.StringIO()
    cfg = alembic_config()
    cfg.output_buffer = buf
    cfg.cmd_opts = argparse.Namespace(x=["url=postgresql://user:secret@localhost/mimic"])
    command.upgrade(cfg, "head", sql=True)
    sql = buf.getvalue()
    assert "CREATE TABLE annotations" in sql and "BOOLEAN DEFAULT false" in sql
    assert (
        "CREATE UNIQUE INDEX uq_annotations_one_current ON annotations (mention_id, annotator_id) "
        "WHERE status = 'current'" in sql
    )
    assert "PRAGMA" not in sql and "IMMEDIATE" not in sql


def test_sqlite_pragmas_local_disk(tmp_path):
    s = open_store(tmp_path / "data", busy_timeout_ms=7000)
    try:
        assert _pragmas(s) == {"foreign_keys": 1, "busy_timeout": 7000, "journal_mode": "wal", "synchronous": 1}
    finally:
        s.close()


def test_sqlite_pragmas_network_file_system(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_DB_NETWORK_FS", "1")
    s = open_store(tmp_path / "data")
    try:
        assert _pragmas(s)["journal_mode"] == "delete" and _pragmas(s)["synchronous"] == 2  # FULL
        assert s.engine.pool.size() == 1  # one connection: writes serialised
        assert s.location.network_fs and s.location.journal_mode == "delete"
        # the whole workflow runs on that single connection (nothing holds two at once)
        ids = seed_store(s, entities=3, mentions=4)
        s.add_annotator("ana")
        item = s.next_item("ana")
        s.submit("ana", item.mention.id, entity_id="Q1")
        s.undo("ana")
        assert s.reconcile().events_rejournaled == 0 and len(s.history(ids[0])) <= 1
        assert s.export_training_set(tmp_path / "out").entities == 3
    finally:
        s.close()


def test_write_sessions_take_the_lock_at_begin_and_readers_do_not(tmp_path):
    s = open_store(tmp_path / "data")
    other = sqlite3.connect(s.settings.sqlite_path, timeout=0, isolation_level=None)
    try:
        with session_scope(s.engine) as sess:
            sess.connection()  # nothing executed yet, only BEGIN
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        with session_scope(s.engine, read_only=True) as sess:
            sess.execute(text("SELECT count(*) FROM mentions"))
            other.execute("BEGIN IMMEDIATE")  # a reader never blocks a writer
            other.execute("COMMIT")
    finally:
        other.close()
        s.close()


def test_foreign_keys_are_enforced(tmp_path):
    s = open_store(tmp_path / "data")
    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            with session_scope(s.engine) as sess:
                sess.add(Annotation(request_id="x", mention_id=999, annotator_id=999, decision="nil"))
    finally:
        s.close()


def test_open_store_from_any_cwd_and_logs_where_data_lives(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATA_DIR", raising=False)
    with caplog.at_level(logging.INFO, logger="mimic.db"):
        s = open_store()  # default ./data, relative to the cwd
    try:
        assert s.settings.data_dir == tmp_path / "data" and (tmp_path / "data" / "mimic_studio.sqlite3").exists()
        assert any("data lives in" in r.message and str(tmp_path / "data") in r.message for r in caplog.records)
        assert any(r.levelno == logging.WARNING and "temporary" in r.message for r in caplog.records)
    finally:
        s.close()


@pytest.mark.slow
def test_concurrent_start_of_several_processes(tmp_path):
    code = "import sys; from db import open_store; s = open_store(sys.argv[1]); s.add_annotator(sys.argv[2])"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "data"), f"p{i}"], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    s = open_store(tmp_path / "data")
    try:
        assert sorted(a.name for a in s.list_annotators()) == ["p0", "p1", "p2", "p3"]
        assert current_revision(s.engine) == head_revision()
    finally:
        s.close()


# -- settings and the storage report ---------------------------------------------------------------


def test_settings_from_environment_and_errors_name_the_variable(tmp_path):
    env = {
        "DATA_DIR": str(tmp_path / "d"),
        "MIMIC_ANNOTATION_OVERLAP": "2",
        "MIMIC_LEASE_SECONDS": "30",
        "MIMIC_DB_JOURNAL_MODE": "DELETE",
    }
    s = Settings.from_env(env=env)
    assert (s.data_dir, s.overlap, s.lease_seconds, s.resolved_journal_mode()) == (tmp_path / "d", 2, 30, "delete")
    assert s.database_url == f"sqlite:///{tmp_path / 'd' / 'mimic_studio.sqlite3'}"
    assert Settings.from_env(tmp_path / "x", env=env).data_dir == tmp_path / "x"  # argument wins
    with pytest.raises(InvalidInput, match="MIMIC_ANNOTATION_OVERLAP"):
        Settings.from_env(env={"MIMIC_ANNOTATION_OVERLAP": "0"})
    with pytest.raises(InvalidInput, match="MIMIC_DB_NETWORK_FS"):
        Settings.from_env(env={"MIMIC_DB_NETWORK_FS": "maybe"})
    with pytest.raises(InvalidInput, match="MIMIC_DB_JOURNAL_MODE"):
        Settings.from_env(env={"MIMIC_DB_JOURNAL_MODE": "wall"})
    with pytest.raises(InvalidInput, match="in-memory"):
        Settings.from_env(env={"DATABASE_URL": "sqlite://"})
    pg = Settings.from_env(env={"DATABASE_URL": "postgresql://ana:s3cret@db.example/mimic"})
    assert not pg.is_sqlite and "s3cret" not in pg.safe_url and pg.sqlite_path is None


ROOT_ONLY = [Mount("/", "overlay")]
WITH_BUCKET = [Mount("/", "overlay"), Mount("/data", "fuse.hf-mount")]


def test_storage_report_warns_on_a_space_without_a_bucket():
    s = Settings.from_env("/home/user/app/data", env={})
    r = describe_location(s, env={"SPACE_ID": "ana/mimic-studio"}, mounts=ROOT_ONLY)
    assert r.ephemeral and "Hugging Face Space" in r.warnings[0] and "/data" in r.warnings[0]


def test_storage_report_bucket_mount_is_durable_and_switches_off_wal():
    s = Settings.from_env("/data", env={})
    r = describe_location(s, env={"SPACE_ID": "ana/mimic-studio"}, mounts=WITH_BUCKET)
    assert not r.ephemeral and r.warnings == []
    assert r.network_fs and r.journal_mode == "delete" and r.fstype == "fuse.hf-mount"
    assert s.resolved_journal_mode(WITH_BUCKET) == "delete"
    assert "data lives in /data" in r.summary()


def test_storage_report_temp_and_overlay_locations():
    tmp = describe_location(Settings.from_env("/tmp/x", env={}), env={}, mounts=[Mount("/", "ext4")])
    assert tmp.ephemeral and "temporary" in tmp.warnings[0]
    shm = describe_location(
        Settings.from_env("/mnt/ram/x", env={}), env={}, mounts=[Mount("/", "ext4"), Mount("/mnt/ram", "tmpfs")]
    )
    assert shm.ephemeral
    over = describe_location(Settings.from_env("/app/data", env={}), env={}, mounts=ROOT_ONLY)
    assert over.ephemeral and "overlay" in over.warnings[0]
    disk = describe_location(
        Settings.from_env("/srv/mimic", env={}), env={}, mounts=[Mount("/", "overlay"), Mount("/srv", "ext4")]
    )
    assert not disk.ephemeral and disk.journal_mode == "wal"
    forced = Settings.from_env("/data", env={"MIMIC_DB_JOURNAL_MODE": "wal"})
    assert "unsafe" in describe_location(forced, env={}, mounts=WITH_BUCKET).warnings[0]
