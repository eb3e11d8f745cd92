"""Reliability under concurrency and crashes, against real SQLite files.

* 8 threads x 200 annotations (each: next item from the queue, then submit; every 10th submission
  is sent twice): every annotation stored exactly once, no item given to two annotators, no
  "database is locked" (or any other) error reaches a caller.
* Several processes writing to one database at once.
* A writer process killed with SIGKILL in the middle of its batches (at a random point, and exactly
  between a batch's journal write and its COMMIT): the database opens cleanly, holds only whole
  transactions, every committed transaction is in the journal, and after the start-up
  reconciliation journal and database hold exactly the same annotations.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from db import open_store, scan_journal
from db.testing import seed_store

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.slow
def test_8_threads_x_200_annotations(tmp_path):
    threads, per_thread = 8, 200
    store = open_store(tmp_path / "data")
    try:
        seed_store(store, entities=50, mentions=threads * per_thread, candidates=3)
        names = [f"annotator{k}" for k in range(threads)]
        for n in names:
            store.add_annotator(n)
        errors: list[str] = []
        given: dict[str, list[int]] = {n: [] for n in names}
        barrier = threading.Barrier(threads)

        def work(name: str) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    item = store.next_item(name)
                    given[name].append(item.mention.id)
                    kw = dict(
                        entity_id=item.prediction.candidates[0].entity_id,
                        request_id=f"{name}-{i}",
                        seconds_spent=1.0 + i % 7,
                    )
                    a = store.submit(name, item.mention.id, **kw)
                    if i % 10 == 0:  # a client retrying after a timeout: must be idempotent
                        again = store.submit(name, item.mention.id, **kw)
                        assert again.id == a.id and again.duplicate
            except Exception as e:
                errors.append(f"{name}: {e!r}")

        t0 = time.perf_counter()
        pool = [threading.Thread(target=work, args=(n,)) for n in names]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        elapsed = time.perf_counter() - t0
        assert errors == []
        rows = store.current_annotations()
        assert len(rows) == threads * per_thread
        assert Counter(r.request_id for r in rows) == Counter({f"{n}-{i}": 1 for n in names for i in range(per_thread)})
        handed_out = [m for ms in given.values() for m in ms]
        assert len(set(handed_out)) == len(handed_out) == threads * per_thread  # no item given twice
        assert len({r.mention_id for r in rows}) == threads * per_thread
        events = list(scan_journal(store.settings.journal_path).events())
        assert sorted(e["request_id"] for e in events) == sorted(r.request_id for r in rows)
        assert store.integrity_check() == "ok"
        transactions = threads * per_thread * 2 + threads * per_thread // 10
        print(
            f"\n8x200: {elapsed:.1f} s, {transactions / elapsed:.0f} write transactions/s "
            f"({threads * per_thread / elapsed:.0f} annotations/s with queue + journal fsync)"
        )
    finally:
        store.close()


WRITER = textwrap.dedent("""
    import sys, time
    from db import open_store
    from db.journal import Journal
    store = open_store(sys.argv[1])
    prefix, batches, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    first = int(sys.argv[5])
    if len(sys.argv) > 6:  # from batch argv[6] on, stop between journal write and COMMIT, say so
        original = Journal.append_group
        def slow(self, events):
            txn = original(self, events)
            if b >= int(sys.argv[6]):
                print("journaled", flush=True)
                time.sleep(60)
            return txn
        Journal.append_group = slow
    for b in range(batches):
        base = first + b * size
        store.submit_many([{"annotator": "writer", "mention": f"m{base + i}", "entity_id": "Q1",
                            "request_id": f"{prefix}{b}-{i}", "seconds_spent": 1.0} for i in range(size)])
        print(b, flush=True)
    """)


def _request_ids_in_db(db_file: Path) -> list[str]:
    con = sqlite3.connect(db_file)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [r[0] for r in con.execute("SELECT request_id FROM annotations")]
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["anywhere", "between_journal_and_commit"])
def test_writer_killed_mid_batch_leaves_whole_transactions_and_a_matching_journal(tmp_path, where):
    """SIGKILL at a random point of a batch, or exactly after a batch's journal write and before its
    COMMIT (the child pauses there and says so): the case that reconciliation exists for."""
    data, size = tmp_path / "data", 10
    store = open_store(data)
    seed_store(store, entities=5, mentions=3000, candidates=2)
    store.add_annotator("writer")
    db_file, journal = store.settings.sqlite_path, store.settings.journal_path
    store.close()

    pause = ["26"] if where == "between_journal_and_commit" else []
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(data), "b", "300", str(size), "0"] + pause,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    done = -1
    try:
        for line in proc.stdout:  # let it commit some batches, then kill it mid-flight
            if not line.strip().isdigit():  # "journaled": batch 26 is written but not committed
                break
            done = int(line)
            if done >= 25 and not pause:
                time.sleep(0.003)
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()

    # 1. Before any recovery: the file is sound and holds whole batches only.
    in_db = _request_ids_in_db(db_file)
    per_batch = Counter(r.split("-")[0] for r in in_db)
    assert set(per_batch.values()) <= {size}
    assert len(per_batch) >= 26  # 0..25 were reported committed
    # 2. Write-ahead invariant: every committed transaction is in the journal, as a whole group.
    scan = scan_journal(journal)
    journaled = {e["request_id"] for e in scan.events()}
    assert set(in_db) <= journaled
    assert all(len(g) == size for g in scan.groups)
    assert len(journaled - set(in_db)) in (0, size)  # at most the one batch in flight
    if pause:  # killed inside the window:
        assert len(per_batch) == 26 and len(journaled - set(in_db)) == size  # batch 26 journaled only
    # 3. Start-up reconciliation: journal and database now hold exactly the same annotations.
    store = open_store(data)
    try:
        after = [a.request_id for a in store.current_annotations()]
        assert sorted(after) == sorted(journaled)
        assert set(Counter(r.split("-")[0] for r in after).values()) == {size}
        assert store.integrity_check() == "ok"
    finally:
        store.close()


@pytest.mark.slow
def test_several_processes_write_to_one_database(tmp_path):
    data, procs, batches, size = tmp_path / "data", 3, 20, 5
    store = open_store(data)
    seed_store(store, entities=5, mentions=procs * batches * size, candidates=2)
    store.add_annotator("writer")
    store.close()
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(data), f"p{k}x", str(batches), str(size), str(k * batches * size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for k in range(procs)
    ]
    for p in runs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = open_store(data)
    try:
        rows = store.current_annotations()
        assert len(rows) == len({r.request_id for r in rows}) == procs * batches * size
        events = list(scan_journal(store.settings.journal_path).events())
        assert sorted(e["request_id"] for e in events) == sorted(r.request_id for r in rows)
    finally:
        store.close()
