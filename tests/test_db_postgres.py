"""The annotation store against a real PostgreSQL server (the "any SQLAlchemy URL" promise).

Runs when MIMIC_TEST_POSTGRES_URL points at a server whose user may create databases (CI starts
Debian's PostgreSQL and sets it); otherwise skips. Each test gets a fresh database.
"""

from __future__ import annotations

import os
import threading
import uuid

import pytest

URL = os.environ.get("MIMIC_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="MIMIC_TEST_POSTGRES_URL not set (no PostgreSQL server)"),
]


@pytest.fixture
def pg_url():
    import sqlalchemy as sa

    admin = sa.create_engine(URL, isolation_level="AUTOCOMMIT")
    name = f"mimic_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a server that is set but unreachable is a failure, not a skip
        pytest.fail(f"cannot create a test database on {URL}: {exc}")
    url = sa.engine.make_url(URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def store(pg_url, tmp_path):
    from db import open_store

    s = open_store(tmp_path / "pgdata", url=pg_url)
    for name in ("ana", "bob"):
        s.add_annotator(name)
    yield s
    s.close()


def test_migrations_and_core_operations(store):
    from db import UnknownEntity
    from db.testing import seed_store

    assert store.engine.dialect.name == "postgresql"
    ids = seed_store(store, entities=8, mentions=10)
    item = store.next_item("ana")
    assert item is not None
    a = store.submit("ana", item.mention.id, entity_id="Q1", request_id="r-1", seconds_spent=3.0)
    assert store.submit("ana", item.mention.id, entity_id="Q1", request_id="r-1").id == a.id  # idempotent
    store.submit("ana", item.mention.id, decision="nil")  # supersedes
    hist = store.history(item.mention.id)
    assert [h.decision for h in hist][-2:] == ["entity", "nil"]
    store.undo("ana")
    with pytest.raises(UnknownEntity):
        store.submit("bob", ids[0], entity_id="Q_missing")
    sql = "Robert'); DROP TABLE annotations;-- <script>alert(1)</script>"
    m = store.add_mention(sql + " Q", mention="Q")
    assert store.get_mention(m.id).sentence == sql + " Q"


def test_concurrent_submissions_are_stored_exactly_once(store):
    from db.testing import seed_store

    seed_store(store, entities=5, mentions=120, seed=1)
    names = [f"w{i}" for i in range(4)]
    for n in names:
        store.add_annotator(n)
    errors, got = [], []

    def work(name):
        try:
            for _ in range(30):
                it = store.next_item(name)
                if it is None:
                    return
                got.append(store.submit(name, it.mention.id, entity_id="Q1", request_id=f"{name}-{it.mention.id}").id)
        except Exception as exc:  # any error reaching the caller fails the test
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(got) == len(set(got)) == 120


def test_export_training_set_loads(store, tmp_path):
    from db.testing import seed_store
    from mimic.data.formats import load_dataset

    ids = seed_store(store, entities=6, mentions=20, seed=2)
    for i, mid in enumerate(ids):
        store.submit("ana", mid, entity_id=f"Q{1 + i % 6}")
    exp = store.export_training_set(tmp_path / "export", fractions=(0.8, 0.1, 0.1))
    ds = load_dataset(tmp_path / "export")
    assert sum(len(v) for v in ds.splits.values()) == len(exp.annotation_ids) > 0


def test_full_text_search_over_descriptions(store):
    """The same search API as on SQLite: names/aliases/ids as substrings, every word of the
    query in the names, aliases or description (English stemming), ranked, paged; the GIN index
    of migration 0003 serves the word match."""
    store.upsert_entity("C1", "Cheetah", "A large spotted cat, the fastest land animal.", aliases=["Acinonyx jubatus"])
    store.upsert_entity("C2", "Land Rover", "A British maker of off-road vehicles.")
    store.upsert_entity("C4", "Fastest Land Animal (film)", "A documentary about a cheetah.")
    assert [e.id for e in store.search_entities("fastest land animals")] == ["C4", "C1"]
    assert [e.id for e in store.search_entities("jubatus")] == ["C1"]
    assert [e.id for e in store.search_entities("chee")] == ["C1"]  # a name substring
    store.upsert_entity("C2", "Land Rover", "A maker of four-wheel-drive cars.")
    assert [e.id for e in store.search_entities("four wheel drive")] == ["C2"]
    assert store.search_entities("vehicles") == []
    page = store.search_entities("land", limit=1, offset=1, text_chars=8)
    assert len(page) == 1 and page[0].text.endswith("…")
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from db.migrate import include_name
    from db.models import Base

    with store.engine.connect() as c:
        names = c.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'kb_entities'").scalars().all()
        assert "ix_kb_entities_fulltext" in names
        # the migrations build the models' schema, plus the search objects the comparison leaves out
        assert compare_metadata(MigrationContext.configure(c, opts={"include_name": include_name}), Base.metadata) == []
