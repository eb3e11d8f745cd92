"""The database engine: one per process, SQLite pragmas on connect, short scoped sessions.

SQLite specifics (nothing here runs for PostgreSQL or other databases):

* Every new connection gets `foreign_keys=ON` (off by default in SQLite, so FKs would be
  decoration), a `busy_timeout` (a locked database makes the caller wait instead of failing at
  once), and the journal mode: WAL + synchronous=NORMAL on a local disk (readers never block the
  writer; a commit is one append to the WAL), the rollback journal (DELETE) + synchronous=FULL
  and no mmap on a network / bucket file system, where WAL's shared-memory index is unsafe.
* pysqlite's own transaction handling is switched off (`isolation_level = None`) and the `begin`
  event emits `BEGIN IMMEDIATE` for write sessions. A deferred BEGIN would take the write lock
  only at the first INSERT, and two such transactions that both read first then deadlock on the
  upgrade: SQLite answers one of them "database is locked" *without* waiting for busy_timeout.
  With BEGIN IMMEDIATE writers queue on the lock (busy_timeout) from the start. Read-only sessions
  use a plain (deferred) BEGIN so they never take the write lock.
* `check_same_thread=False`: connections come from a pool and may serve any thread, one at a time.
* On a network file system the pool holds a single connection, which serialises all database
  work of the process (the advice from the hf-mount / trackio reports about bucket mounts).
* Within a process, write transactions queue on a `threading.Lock` per database (`write_lock`):
  SQLite's busy handler polls with growing sleeps, so threads waiting on the file lock would
  mostly sleep; the Python lock hands over at once. busy_timeout arbitrates between processes.

`is_lock_error` and `retry_on_lock` are the last line of defence: a whole transaction that still
hits "database is locked" is rolled back and run again with backoff; callers never see the error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from .config import Settings
from .errors import StoreBusy

log = logging.getLogger("mimic.db")

T = TypeVar("T")

#: Execution option marking an engine proxy whose transactions only read.
READ_ONLY_OPTION = "mimic_read_only"

_ENGINES: dict[tuple, tuple[int, Engine]] = {}
_ENGINES_LOCK = threading.Lock()


def _engine_key(settings: Settings) -> tuple:
    return (
        settings.database_url,
        settings.resolved_journal_mode() if settings.is_sqlite else None,
        settings.busy_timeout_ms,
        settings.resolved_network_fs() if settings.is_sqlite else None,
    )


def get_engine(settings: Settings) -> Engine:
    """The process-wide engine for these settings (created on first use).

    A forked child never reuses its parent's engine: pooled connections must not cross a fork.
    """
    key = _engine_key(settings)
    with _ENGINES_LOCK:
        hit = _ENGINES.get(key)
        if hit is not None and hit[0] == os.getpid():
            return hit[1]
        engine = make_engine(settings)
        _ENGINES[key] = (os.getpid(), engine)
        return engine


def dispose_engine(settings: Settings) -> None:
    """Close the pooled connections of this process's engine for `settings` and forget it."""
    with _ENGINES_LOCK:
        hit = _ENGINES.pop(_engine_key(settings), None)
    if hit is not None and hit[0] == os.getpid():
        hit[1].dispose()


def make_engine(settings: Settings) -> Engine:
    """A new engine (prefer `get_engine`, which keeps one per process)."""
    if not settings.is_sqlite:
        return create_engine(settings.database_url, pool_pre_ping=True, json_serializer=_json_dumps)
    path = settings.sqlite_path
    assert path is not None  # Settings refuses an SQLite URL without a file
    path.parent.mkdir(parents=True, exist_ok=True)
    network = settings.resolved_network_fs()
    mode = settings.resolved_journal_mode()
    pool = (
        dict(pool_size=1, max_overflow=0, pool_timeout=600)
        if network
        else dict(pool_size=8, max_overflow=24, pool_timeout=120)
    )
    engine = create_engine(
        settings.database_url,
        connect_args={"check_same_thread": False, "timeout": settings.busy_timeout_ms / 1000},
        json_serializer=_json_dumps,
        **pool,
    )
    install_sqlite_hooks(engine, journal_mode=mode, busy_timeout_ms=settings.busy_timeout_ms, network_fs=network)
    return engine


def _json_dumps(obj) -> str:
    """JSON columns keep non-ASCII text as is, so LIKE searches over aliases match 'Bêta'."""
    return json.dumps(obj, ensure_ascii=False)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def install_sqlite_hooks(engine: Engine, *, journal_mode: str, busy_timeout_ms: int, network_fs: bool) -> None:
    """Pragmas on connect and BEGIN IMMEDIATE for writers (see the module docstring)."""
    synchronous = "NORMAL" if journal_mode == "wal" else "FULL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        # SQLite's lower() only folds ASCII; searches must match 'École' with 'école'.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)
        cur = dbapi_connection.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys = ON")
            got = cur.execute(f"PRAGMA journal_mode = {journal_mode}").fetchone()[0]
            if str(got).lower() != journal_mode:
                log.warning("SQLite refused journal_mode=%s (kept %s)", journal_mode, got)
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            if network_fs:
                cur.execute("PRAGMA mmap_size = 0")  # mmap over NFS/FUSE can SIGBUS
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


_WRITE_LOCKS: dict[str, threading.Lock] = {}


def write_lock(url: str) -> threading.Lock:
    """The in-process lock that serialises this process's write transactions on one SQLite file.

    SQLite allows one writer at a time anyway; without this lock the waiting threads poll the
    file lock with sleeps of growing length (SQLite's busy handler) and most of the time goes to
    sleeping. With it, threads queue on a Python lock and start the moment the previous writer
    commits; busy_timeout is left to arbitrate between processes.
    """
    with _ENGINES_LOCK:
        return _WRITE_LOCKS.setdefault(url, threading.Lock())


_READERS: dict[int, Engine] = {}


def reader_engine(engine: Engine) -> Engine:
    """A proxy of `engine` (same pool) whose transactions are read-only (deferred BEGIN on SQLite)."""
    proxy = _READERS.get(id(engine))
    if proxy is None or proxy.engine is not engine:
        proxy = engine.execution_options(**{READ_ONLY_OPTION: True})
        _READERS[id(engine)] = proxy
    return proxy


@contextmanager
def session_scope(engine: Engine, *, read_only: bool = False) -> Iterator[Session]:
    """A short session in one transaction: committed on success, rolled back on any error.

    Objects stay usable after the commit (`expire_on_commit=False`) so plain values can be
    returned from them; never keep a session beyond one request.
    """
    bind = reader_engine(engine) if read_only else engine
    with Session(bind, expire_on_commit=False, autoflush=True) as session:
        with session.begin():
            yield session


def is_lock_error(exc: BaseException) -> bool:
    """True for a transient lock / serialisation failure worth retrying the transaction for."""
    if not isinstance(exc, (OperationalError, DBAPIError)):
        return False
    msg = str(getattr(exc, "orig", exc)).lower()
    return any(
        s in msg
        for s in (
            "database is locked",
            "database table is locked",
            "database is busy",
            "deadlock detected",
            "could not serialize",
        )
    )


def backoff_delay(attempt: int, base: float = 0.02, cap: float = 1.0) -> float:
    """Exponential backoff with full jitter, so retrying writers do not collide again in step."""
    return random.uniform(0, min(cap, base * (2**attempt)))


def retry_on_lock(fn: Callable[[], T], retries: int = 8) -> T:
    """Run `fn` (one whole transaction) again on a lock error, up to `retries` more times."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except (OperationalError, DBAPIError) as e:
            if not is_lock_error(e):
                raise
            if attempt == retries:
                raise StoreBusy(
                    f"the database stayed locked after {retries + 1} attempts; nothing was written, try again"
                ) from e
            time.sleep(backoff_delay(attempt))
    raise AssertionError("unreachable")
