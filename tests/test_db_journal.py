"""The JSONL journal: every decision is in it before it commits, and the database can be rebuilt
from it (lost database file, lost journal, torn last line, crash between journal and commit)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from db import open_store, scan_journal
from db.journal import Journal
from db.testing import png_bytes, seed_store


def links(store):
    """What must survive: every current decision with its mention, entity and prediction."""
    keys = (
        "request_id",
        "mention_uid",
        "sentence",
        "start",
        "end",
        "decision",
        "entity_id",
        "entity_name",
        "entity_version",
        "annotator",
        "role",
        "seconds_spent",
        "comment",
        "created_at",
        "model_version",
        "predicted_entity_id",
        "predicted_score",
    )
    return sorted(tuple(r[k] for k in keys) for r in store.accepted_links())


def histories(store, uids):
    return {u: [(h.request_id, h.annotator, h.decision, h.entity_id, h.status) for h in store.history(u)] for u in uids}


def busy_day(store):
    """A realistic mix: decisions, changes of mind, NIL, ambiguous, skips, undos, a reviewer, an image."""
    ids = seed_store(store, entities=8, mentions=10)
    store.add_annotator("ana")
    store.add_annotator("bob")
    store.add_annotator("rita", role="reviewer")
    img = store.add_mention("a red thing on a photo", "red thing", image=png_bytes((250, 10, 10)), uid="img1")
    store.submit("ana", ids[0], entity_id="Q1", seconds_spent=3.5, comment="easy")
    store.submit("ana", ids[1], entity_id="Q2", seconds_spent=8)
    store.submit("ana", ids[1], entity_id="Q3", seconds_spent=2)  # change of mind
    store.submit("ana", ids[2], "nil")
    store.skip("ana", ids[3])
    store.submit("ana", ids[4], "ambiguous", comment="<b>needs context</b>")
    store.submit("ana", ids[5], entity_id="Q5")
    store.undo("ana")  # undoes ids[5]
    store.submit("bob", ids[0], entity_id="Q2")
    store.submit("rita", ids[0], entity_id="Q1")
    store.submit("bob", img.id, entity_id="Q4", request_id="client-42")
    store.submit_many(
        [
            {"annotator": "bob", "mention": ids[6], "entity_id": "Q6"},
            {"annotator": "bob", "mention": ids[7], "decision": "nil"},
        ]
    )
    return [f"m{i}" for i in range(8)] + ["img1"]  # the annotated mentions (m8, m9 never were)


def test_every_decision_is_in_the_journal_before_the_call_returns(tmp_path):
    s = open_store(tmp_path / "data")
    try:
        ids = seed_store(s, entities=4, mentions=3)
        s.add_annotator("ana")
        a = s.submit("ana", ids[0], entity_id="Q1", request_id="r1")
        # read the file while the store is still open: the line is already written and flushed
        lines = [json.loads(x) for x in s.settings.journal_path.read_text(encoding="utf-8").splitlines()]
        assert [(x["type"], x["request_id"], x["annotation_id"]) for x in lines] == [("annotation", "r1", a.id)]
        assert lines[0]["mention"]["uid"] == "m0" and lines[0]["entity"]["id"] == "Q1"
        assert lines[0]["prediction"]["candidates"][0]["S"] is not None
        s.submit("ana", ids[0], entity_id="Q1", request_id="r1")  # duplicate: nothing new journaled
        s.undo("ana", request_id="u1")
        events = list(scan_journal(s.settings.journal_path).events())
        assert [(e["type"], e["request_id"]) for e in events] == [("annotation", "r1"), ("undo", "u1")]
    finally:
        s.close()


def test_rebuild_from_journal_into_an_empty_database_gives_the_same_links(tmp_path):
    a = open_store(tmp_path / "a")
    uids = busy_day(a)
    expected, expected_hist = links(a), histories(a, uids)
    a.close()
    assert len(expected) == 9
    b = open_store(tmp_path / "b")  # an empty DATA_DIR (no KB imported)
    try:
        r = b.reconcile(tmp_path / "a" / "journal" / "annotations.jsonl")
        assert r.events_reapplied == 13 and r.incomplete_groups == 0
        assert links(b) == expected
        assert histories(b, uids) == expected_hist
        assert b.agreement() == open_store(tmp_path / "a").agreement()
        # b's own journal now holds everything too: it can rebuild a third copy by itself
        c = open_store(tmp_path / "c")
        c.reconcile(b.settings.journal_path)
        assert links(c) == expected
        c.close()
    finally:
        b.close()


def test_lost_database_file_is_rebuilt_at_start(tmp_path):
    s = open_store(tmp_path / "data")
    uids = busy_day(s)
    expected, expected_hist = links(s), histories(s, uids)
    db_file = s.settings.sqlite_path
    s.close()
    for suffix in ("", "-wal", "-shm"):
        p = db_file.with_name(db_file.name + suffix)
        if p.exists():
            p.unlink()
    s = open_store(tmp_path / "data")  # migrates an empty file, replays the journal
    try:
        assert links(s) == expected and histories(s, uids) == expected_hist
        assert s.get_mention("img1").image_path.endswith(".png")
        assert s.reconcile().events_reapplied == 0  # idempotent
    finally:
        s.close()


def test_lost_journal_is_rewritten_from_the_database(tmp_path):
    s = open_store(tmp_path / "data")
    busy_day(s)
    expected = links(s)
    s.close()
    (tmp_path / "data" / "journal" / "annotations.jsonl").unlink()
    s = open_store(tmp_path / "data")
    try:
        events = list(scan_journal(s.settings.journal_path).events())
        assert sum(e["type"] == "annotation" for e in events) == 12 and sum(e["type"] == "undo" for e in events) == 1
        assert s.reconcile().events_rejournaled == 0
    finally:
        s.close()
    r = open_store(tmp_path / "rebuilt")
    try:
        r.reconcile(tmp_path / "data" / "journal" / "annotations.jsonl")
        assert links(r) == expected
    finally:
        r.close()


def test_torn_last_line_is_ignored_and_the_next_write_starts_a_new_line(tmp_path):
    s = open_store(tmp_path / "data")
    ids = seed_store(s, entities=3, mentions=2)
    s.add_annotator("ana")
    s.submit("ana", ids[0], entity_id="Q1")
    s.close()
    path = tmp_path / "data" / "journal" / "annotations.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"v":1,"txn":"dead","k":0,"n":2,"type":"annot')  # a crash mid-write
    s = open_store(tmp_path / "data")
    try:
        assert s.reconcile().bad_lines  # reported, not fatal
        s.submit("ana", ids[1], entity_id="Q2")
        scan = scan_journal(path)
        assert len(scan.bad_lines) == 1 and sum(1 for _ in scan.events()) == 2
        assert len(links(s)) == 2
    finally:
        s.close()


def test_crash_between_journal_write_and_commit(tmp_path, monkeypatch):
    """Journal written, COMMIT never happened (the process died): the start-up reconciliation
    applies the group. A COMMIT that failed and was cancelled with an abort line is not applied."""
    s = open_store(tmp_path / "data")
    ids = seed_store(s, entities=3, mentions=3)
    s.add_annotator("ana")

    def boom(self):
        raise OSError("simulated crash at COMMIT")

    monkeypatch.setattr(Session, "commit", boom)
    with pytest.raises(OSError):
        s.submit("ana", ids[0], entity_id="Q1", request_id="aborted")  # failed commit: abort line
    monkeypatch.setattr(Journal, "append_abort", lambda self, txn: None)  # a dead process writes nothing more
    with pytest.raises(OSError):
        s.submit("ana", ids[1], entity_id="Q2", request_id="died")
    monkeypatch.undo()
    assert s.current_annotations() == []  # nothing committed
    r = s.reconcile()
    assert (r.groups_reapplied, r.aborted_groups) == (1, 1)
    assert [(a.request_id, a.entity_id) for a in s.current_annotations()] == [("died", "Q2")]
    s.close()


def test_cli_rebuilds_a_database_from_a_journal_and_exports(tmp_path, capsys):
    from db.__main__ import main

    a = open_store(tmp_path / "a")
    busy_day(a)
    expected = links(a)
    a.close()
    journal = str(tmp_path / "a" / "journal" / "annotations.jsonl")
    assert main(["--data-dir", str(tmp_path / "new"), "reconcile", "--journal", journal]) == 0
    assert json.loads(capsys.readouterr().out)["events_reapplied"] == 13
    assert main(["--data-dir", str(tmp_path / "new"), "export-links", str(tmp_path / "links.csv"), "--csv"]) == 0
    assert json.loads(capsys.readouterr().out)["links"] == 9
    assert main(["--data-dir", str(tmp_path / "new"), "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["overview"]["annotations"]["current"] == 10 and info["location"]["data_dir"].endswith("new")
    assert main(["--data-dir", str(tmp_path / "new"), "export-training", str(tmp_path / "train")]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]
    assert main(["--data-dir", str(tmp_path / "new"), "export-training", str(tmp_path / "train")]) == 2
    r = open_store(tmp_path / "new")
    try:
        assert links(r) == expected
    finally:
        r.close()
