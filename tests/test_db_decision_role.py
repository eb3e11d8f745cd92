"""The gold rule reads the role a decision was made in (`annotations.role`, migration 0005), not the
annotator's current role: demoting a reviewer or promoting an annotator afterwards changes no past
gold, review list, agreement or export flag; the migration backfills an existing database; a
rebuild from the journal gives the same roles."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command

from db import Settings, get_engine, open_store
from db.migrate import alembic_config, current_revision, head_revision
from db.models import RESOLVING_ROLES, resolves
from db.testing import seed_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    seed_store(s, entities=6, mentions=6, candidates=3)
    for n, role in [("ana", "annotator"), ("bob", "annotator"), ("rita", "reviewer"), ("adam", "admin")]:
        s.add_annotator(n, role)
    yield s
    s.close()


def _decide(store):
    """m0: ana Q1, bob Q2, rita resolves Q2. m1: ana Q3, bob Q1 (a tie). m2: ana Q1 alone."""
    store.submit("ana", "m0", entity_id="Q1")
    store.submit("bob", "m0", entity_id="Q2")
    store.resolve("rita", "m0", entity_id="Q2")
    store.submit("ana", "m1", entity_id="Q3")
    store.submit("bob", "m1", entity_id="Q1")
    store.submit("ana", "m2", entity_id="Q1")


def _gold(store) -> tuple[dict, int]:
    gold, conflicts = store.resolved()
    return {store.get_mention(mid).uid: (r.decision, r.entity_id) for mid, r in gold.items()}, conflicts


def _snapshot(store) -> tuple:
    """Everything the gold rule feeds: gold, review list, agreement, the export's ground_truth flags."""
    links = sorted((r["annotator"], r["mention_uid"], r["role"]) for r in store.accepted_links())
    review = [
        (it.mention.uid, it.reasons, [(d.annotator, d.role) for d in it.decisions]) for it in store.review_list().items
    ]
    return _gold(store), review, store.agreement(), links


def test_the_one_gold_rule_test():
    assert RESOLVING_ROLES == ("reviewer", "admin")
    assert resolves("reviewer") and resolves("admin") and not resolves("annotator") and not resolves(None)


def test_demoting_or_promoting_after_deciding_changes_no_past_gold(store):
    _decide(store)
    before = _snapshot(store)
    gold, conflicts = before[0]
    assert gold["m0"] == ("entity", "Q2") and "m1" not in gold and conflicts == 1
    # rita is demoted, bob promoted: their earlier decisions keep the role they were made in
    store.set_role("rita", "annotator")
    store.set_role("bob", "reviewer")
    assert _snapshot(store) == before
    rows = {(r["annotator"], r["mention_uid"]): r["role"] for r in store.accepted_links()}
    assert rows[("rita", "m0")] == "reviewer" and rows[("bob", "m1")] == "annotator"
    # a decision made in the new role counts in that role: bob's new decision on m1 resolves it
    store.submit("bob", "m1", entity_id="Q3")
    assert _gold(store)[0]["m1"] == ("entity", "Q3")
    # and rita, now an annotator, no longer resolves: her new vote on m2 is one vote of two (a tie)
    store.submit("rita", "m2", entity_id="Q2")
    gold, _ = _gold(store)
    assert "m2" not in gold and gold["m0"] == ("entity", "Q2")


def test_journal_rebuild_gives_the_same_roles_and_gold(store, tmp_path):
    _decide(store)
    store.set_role("rita", "annotator")  # after deciding: the journal holds the role decided in
    store.set_role("bob", "reviewer")
    expected = _snapshot(store)
    events = [json.loads(x) for x in store.settings.journal_path.read_text().splitlines() if x.strip()]
    ann = [e for e in events if e.get("type") == "annotation"]
    assert {(e["annotator"]["name"], e["role"]) for e in ann} >= {("rita", "reviewer"), ("bob", "annotator")}
    other = open_store(tmp_path / "rebuilt")  # an empty DATA_DIR
    try:
        other.reconcile(store.settings.journal_path)
        # each decision keeps its own role (the rebuilt users get the role of their first event)
        assert _snapshot(other) == expected
    finally:
        other.close()


def test_a_journal_event_from_before_0005_gives_its_annotator_snapshot_role(store, tmp_path):
    _decide(store)
    path = store.settings.journal_path
    lines = []
    for x in path.read_text().splitlines():
        e = json.loads(x) if x.strip() else None
        if e and e.get("type") == "annotation":
            e.pop("role")  # as an older store wrote it
        lines.append(json.dumps(e) if e else x)
    old = tmp_path / "old_journal.jsonl"
    old.write_text("\n".join(lines) + "\n")
    other = open_store(tmp_path / "rebuilt")
    try:
        other.reconcile(old)
        assert _gold(other) == _gold(store)
    finally:
        other.close()


def test_migration_0005_backfills_the_role_of_existing_decisions(tmp_path):
    settings = Settings.from_env(tmp_path / "old")
    s = open_store(settings=settings)
    seed_store(s, entities=4, mentions=3, candidates=2)
    s.add_annotator("ana", "annotator")
    s.add_annotator("rita", "reviewer")
    s.submit("ana", "m0", entity_id="Q1")
    s.submit("rita", "m0", entity_id="Q2")
    s.submit("ana", "m1", "nil")
    s.close()
    engine = get_engine(settings)
    cfg = alembic_config()
    with engine.begin() as conn:  # back to 0004: the column is gone, the data stays
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0004")
    assert current_revision(engine) == "0004"
    assert "role" not in {c["name"] for c in sa.inspect(engine).get_columns("annotations")}
    s = open_store(settings=settings)  # migrates to head
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as c:
            roles = dict(
                c.execute(
                    sa.text(
                        "SELECT annotators.name || ':' || annotations.mention_id, annotations.role FROM annotations"
                        " JOIN annotators ON annotators.id = annotations.annotator_id"
                    )
                ).all()
            )
        m0, m1 = s.get_mention("m0").id, s.get_mention("m1").id
        assert roles == {f"ana:{m0}": "annotator", f"rita:{m0}": "reviewer", f"ana:{m1}": "annotator"}
        gold, _ = s.resolved()
        assert gold[m0].entity_id == "Q2"  # the reviewer's decision wins after the upgrade too
        s.set_role("rita", "annotator")
        assert s.resolved()[0][m0].entity_id == "Q2"
    finally:
        s.close()
        engine.dispose()
