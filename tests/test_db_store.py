"""Annotation store: annotators, versioned KB, mentions and images, predictions, submit / skip /
undo with history, idempotency, bad input, progress, model versions and training runs."""

from __future__ import annotations

import html

import pytest

from db import Conflict, InvalidImage, InvalidInput, InvalidSpan, NotFound, UnknownEntity, open_store
from db.testing import png_bytes, seed_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    s.add_annotator("ana")
    s.add_annotator("bob")
    s.add_annotator("rita", role="reviewer")
    yield s
    s.close()


@pytest.fixture
def seeded(store):
    ids = seed_store(store, entities=10, mentions=12)
    return store, ids


# -- annotators and entities ---------------------------------------------------------------------


def test_annotators_roles_and_idempotent_creation(store):
    assert store.add_annotator("ana").id == store.get_annotator("ana").id
    assert store.add_annotator("ana", role="admin").role == "admin"
    assert [a.name for a in store.list_annotators()] == ["ana", "bob", "rita"]
    with pytest.raises(InvalidInput, match="role"):
        store.add_annotator("eve", role="boss")
    with pytest.raises(InvalidInput, match="name"):
        store.add_annotator("   ")
    with pytest.raises(NotFound, match="nobody"):
        store.get_annotator("nobody")


def test_entity_edits_are_versioned_and_searchable(store):
    store.upsert_entity("Q42", "Douglas Adams", "English writer", aliases=["DNA"], author="ana")
    again = store.upsert_entity("Q42", "Douglas Adams", "English writer", aliases=["DNA"], author="ana")
    assert again.version == 1  # no change, no new version
    e = store.upsert_entity(
        "Q42", "Douglas Adams", "English writer and humorist", aliases=["DNA"], author="rita", note="more precise"
    )
    assert (e.version, e.updated_by) == (2, "rita")
    hist = store.entity_history("Q42")
    assert [(v.version, v.text, v.author) for v in hist] == [
        (1, "English writer", "ana"),
        (2, "English writer and humorist", "rita"),
    ]
    store.upsert_entity("Q1", "Adams River", aliases=["Rivière Adams"])
    store.upsert_entity("Q5", "100% juice_brand")
    assert [x.id for x in store.search_entities("adams")] == ["Q1", "Q42"]  # name prefix first
    assert [x.id for x in store.search_entities("DNA")] == ["Q42"]  # alias
    assert [x.id for x in store.search_entities("rivière")] == ["Q1"]  # non-ASCII alias, any case
    assert [x.id for x in store.search_entities("q42")] == ["Q42"]  # id
    assert [x.id for x in store.search_entities("0% j")] == ["Q5"]  # LIKE wildcards are literal
    # wildcards match only themselves (a raw LIKE '%%%' would return every entity)
    assert [x.id for x in store.search_entities("%")] == ["Q5"] == [x.id for x in store.search_entities("_")]
    with pytest.raises(UnknownEntity):
        store.get_entity("Q999")


def test_search_is_full_text_over_names_aliases_and_descriptions(store):
    store.upsert_entity("C1", "Cheetah", "A large spotted cat, the fastest land animal.", aliases=["Acinonyx jubatus"])
    store.upsert_entity("C2", "Land Rover", "A British maker of off-road vehicles.")
    store.upsert_entity("C3", "Falcon", "A bird of prey; the peregrine is the fastest animal of all in a dive.")
    store.upsert_entity("C4", "Fastest Land Animal (film)", "A documentary about a cheetah.")
    # every word must occur (stemmed: "animals" finds "animal"); a name match ranks first
    assert [e.id for e in store.search_entities("fastest land animal")] == ["C4", "C1"]
    assert [e.id for e in store.search_entities("Fastest animals")] == ["C4", "C1", "C3"]
    assert [e.id for e in store.search_entities("jubatus")] == ["C1"]  # an alias word
    assert [e.id for e in store.search_entities("off-road vehicle")] == ["C2"]  # punctuation is no syntax
    assert [e.id for e in store.search_entities('peregr" OR "cat')] == []  # quotes and operators are words
    assert [e.id for e in store.search_entities("peregrines")] == ["C3"]  # stemmed
    # a description word weighs less than the same word in a name or alias
    store.upsert_entity("C5", "Dive", "A sudden plunge.", aliases=["dive bombing"])
    assert [e.id for e in store.search_entities("dive")][:2] == ["C5", "C3"]
    # an edit is found at once, and the old words are gone
    store.upsert_entity("C2", "Land Rover", "A maker of four-wheel-drive cars, founded 1948.")
    assert [e.id for e in store.search_entities("four wheel drive")] == ["C2"]
    assert store.search_entities("off-road") == []
    # paging over ranked results; descriptions cut as for substring matches
    page = store.search_entities("fastest", limit=2, offset=1, text_chars=10)
    assert [e.id for e in page] == ["C1", "C3"] and page[0].text == "A large sp…"
    assert store.rebuild_search_index() == 5
    assert [e.id for e in store.search_entities("fastest land animal")] == ["C4", "C1"]
    with store.engine.begin() as c:  # FTS5's own check of its index against kb_entities
        c.exec_driver_sql("INSERT INTO kb_entities_fts(kb_entities_fts, rank) VALUES ('integrity-check', 1)")


def test_a_word_too_common_to_rank_comes_in_kb_order(store, monkeypatch):
    import db.kb

    for i, n in enumerate(["one", "two two two", "three"]):
        store.upsert_entity(f"W{i}", f"Entity {i}", f"a common word: {n}")
    assert store.search_entities("common word two")[0].id == "W1"
    monkeypatch.setattr(db.kb, "RANK_MAX", 2)  # three matches: more than RANK_MAX, not ranked
    assert [e.id for e in store.search_entities("common")] == ["W0", "W1", "W2"]
    assert [e.id for e in store.search_entities("common", limit=1, offset=2)] == ["W2"]


def test_full_text_search_on_a_database_from_before_the_migration(tmp_path):
    """Migration 0003 indexes the rows already there; its triggers follow raw SQL writes as well."""
    import sqlalchemy as sa

    from db import Settings, get_engine, upgrade

    settings = Settings.from_env(tmp_path / "old")
    settings.data_dir.mkdir(parents=True)
    engine = get_engine(settings)
    upgrade(engine, "0002")
    ents = sa.table(
        "kb_entities",
        *(sa.column(c) for c in ("id", "name", "text", "version", "updated_at", "search_text")),
        sa.column("aliases", sa.JSON),
        sa.column("images", sa.JSON),
    )
    row = dict(aliases=[], images=[], version=1, updated_at=sa.func.current_timestamp())
    with engine.begin() as c:
        c.execute(
            sa.insert(ents).values(
                id="O1", name="Okapi", text="A forest giraffe of the Congo.", search_text="o1\nokapi", **row
            )
        )
    store = open_store(settings=settings)  # migrates to head
    try:
        assert [e.id for e in store.search_entities("giraffe")] == ["O1"]
        with engine.begin() as c:
            c.execute(sa.update(ents).where(ents.c.id == "O1").values(text="A striped forest animal."))
            c.execute(
                sa.insert(ents).values(
                    id="O2", name="Tapir", text="A forest browser with a trunk.", search_text="o2\ntapir", **row
                )
            )
        assert store.search_entities("giraffe") == []
        assert {e.id for e in store.search_entities("forest")} == {"O1", "O2"}
        assert [e.id for e in store.search_entities("trunk")] == ["O2"]
        with engine.begin() as c:
            c.execute(sa.delete(ents).where(ents.c.id == "O2"))
        assert store.search_entities("trunk") == []
    finally:
        store.close()


def test_bulk_kb_import_creates_then_versions_changes(store):
    from mimic.data.schema import Entity, KnowledgeBase

    kb = KnowledgeBase([Entity(f"Q{i}", f"name {i}") for i in range(2500)])
    assert store.import_kb(kb) == {"created": 2500, "updated": 0, "unchanged": 0}
    kb2 = KnowledgeBase([Entity("Q0", "renamed"), Entity("Q1", "name 1"), Entity("Q9999", "new")])
    assert store.import_kb(kb2, author="ana") == {"created": 1, "updated": 1, "unchanged": 1}
    assert [v.name for v in store.entity_history("Q0")] == ["name 0", "renamed"]
    assert store.count_entities() == 2501
    assert len(store.knowledge_base()) == 2501


# -- mentions, images, predictions ------------------------------------------------------------------


def test_mention_span_is_located_checked_and_idempotent(store):
    m = store.add_mention("I met Douglas Adams in London.", "Douglas Adams", source="demo")
    assert (m.start, m.end) == (6, 19)
    assert store.add_mention("I met Douglas Adams in London.", "Douglas Adams", source="demo").id == m.id
    by_span = store.add_mention("I met Douglas Adams in London.", start=23, end=29)
    assert by_span.mention == "London"
    with pytest.raises(InvalidSpan, match="end"):
        store.add_mention("short", "short", start=0, end=99)
    with pytest.raises(InvalidSpan, match="start"):
        store.add_mention("short", start=-1, end=2)
    with pytest.raises(InvalidSpan):
        store.add_mention("short", start=3, end=3)  # empty span
    with pytest.raises(InvalidSpan, match="not the mention text"):
        store.add_mention("I met Douglas Adams", "Adams", start=0, end=5)
    with pytest.raises(InvalidSpan, match="does not occur"):
        store.add_mention("I met Douglas Adams", "Einstein")
    with pytest.raises(InvalidInput, match="start"):
        store.add_mention("I met Douglas Adams", start=True, end=3)
    with pytest.raises(Conflict, match="uid"):
        store.add_mention("A different sentence", "different", uid=m.uid)
    assert store.count_mentions() == 2


def test_images_are_stored_once_by_content_hash(store, tmp_path):
    red = png_bytes((255, 0, 0))
    p = tmp_path / "red.png"
    p.write_bytes(red)
    a = store.add_mention("a red square", "red", image=p)
    b = store.add_mention("another red square", "red", image=red)
    assert a.image_sha256 == b.image_sha256 and a.image_path == b.image_path
    assert a.image_path.endswith(f"{a.image_sha256[:2]}/{a.image_sha256}.png")
    files = [f for f in (tmp_path / "data" / "images").rglob("*") if f.is_file()]
    assert len(files) == 1 and files[0].read_bytes() == red


def test_bad_images_are_refused_before_anything_is_written(tmp_path):
    s = open_store(tmp_path / "data", max_image_bytes=2000, max_image_pixels=10_000)
    try:
        with pytest.raises(InvalidImage, match="not an image"):
            s.add_mention("x y", "x", image=b"this is not a picture")
        truncated = png_bytes((1, 2, 3), (50, 50))[:60]
        with pytest.raises(InvalidImage):
            s.add_mention("x y", "x", image=truncated)
        with pytest.raises(InvalidImage, match="too large"):
            s.add_mention("x y", "x", image=png_bytes((1, 2, 3), (200, 200)))  # 40k pixels > 10k
        big = tmp_path / "big.bin"
        big.write_bytes(b"\0" * 5000)
        with pytest.raises(InvalidImage, match="limit"):
            s.add_mention("x y", "x", image=big)
        with pytest.raises(InvalidImage, match="not found"):
            s.add_mention("x y", "x", image=tmp_path / "missing.jpg")
        assert s.count_mentions() == 0
        assert not [f for f in (tmp_path / "data" / "images").rglob("*") if f.is_file()]
    finally:
        s.close()


def test_predictions_rank_by_score_and_check_entities(seeded):
    store, ids = seeded
    p = store.add_prediction(ids[0], "v1", [("Q1", 0.2, 0.1, 0.0, 0.1), {"entity_id": "Q2", "S": 0.9}])
    assert [c.entity_id for c in p.candidates] == ["Q2", "Q1"] and p.margin == pytest.approx(0.7)
    assert store.get_mention(ids[0]).margin == pytest.approx(0.7)  # latest prediction drives the queue
    assert store.predictions(ids[0])[0].model_version == "v1"
    with pytest.raises(UnknownEntity, match=r"candidates\[1\].entity_id"):
        store.add_prediction(ids[0], "v1", [{"entity_id": "Q1", "S": 1.0}, {"entity_id": "NOPE", "S": 0.5}])
    with pytest.raises(InvalidInput, match="finite"):
        store.add_prediction(ids[0], "v1", [{"entity_id": "Q1", "S": float("nan")}])
    assert len(store.predictions(ids[0])) == 2  # the failed ones stored nothing


# -- decisions ------------------------------------------------------------------------------------------


def test_submit_supersede_undo_keep_full_history(seeded):
    store, ids = seeded
    m = ids[0]
    a1 = store.submit("ana", m, entity_id="Q1", seconds_spent=4.0)
    a2 = store.submit("ana", m, "nil", seconds_spent=2.0)
    assert store.get_annotation(a1.id).status == "superseded"
    assert store.get_annotation(a1.id).superseded_by == a2.id
    undone = store.undo("ana")
    assert undone.id == a2.id and undone.status == "undone" and undone.undone_at is not None
    assert store.undo("ana") is None  # nothing current left: undo never revives a1
    assert store.get_annotation(a1.id).status == "superseded"
    a3 = store.submit("ana", m, entity_id="Q3")
    hist = store.history(m)
    assert [(h.id, h.status) for h in hist] == [(a1.id, "superseded"), (a2.id, "undone"), (a3.id, "current")]
    assert a3.prediction_id == store.predictions(m)[0].id  # defaults to the prediction that was shown
    # another annotator's decision on the same mention does not supersede ana's
    store.submit("bob", m, entity_id="Q4")
    assert store.get_annotation(a3.id).status == "current"


def test_undo_is_idempotent_and_targets_only_own_current_annotations(seeded):
    store, ids = seeded
    a = store.submit("ana", ids[0], entity_id="Q1")
    b = store.submit("ana", ids[1], entity_id="Q2")
    first = store.undo("ana", request_id="undo-1")
    again = store.undo("ana", request_id="undo-1")  # a double-pressed Z
    assert first.id == again.id == b.id and again.duplicate
    assert store.get_annotation(a.id).status == "current"
    bob = store.submit("bob", ids[2], "ambiguous")
    with pytest.raises(Conflict, match="another annotator"):
        store.undo("ana", annotation_id=bob.id)
    with pytest.raises(Conflict, match="undone"):
        store.undo("ana", annotation_id=b.id)


def test_duplicate_submissions_are_idempotent(seeded):
    store, ids = seeded
    a = store.submit("ana", ids[0], entity_id="Q1", request_id="req-1")
    dup = store.submit("ana", ids[0], entity_id="Q1", request_id="req-1")
    assert dup.id == a.id and dup.duplicate
    # same decision again with a fresh request id (double click): nothing new either
    assert store.submit("ana", ids[0], entity_id="Q1").id == a.id
    with pytest.raises(Conflict, match="request_id"):
        store.submit("ana", ids[1], entity_id="Q1", request_id="req-1")
    assert len(store.history(ids[0])) == 1


def test_bad_submissions_raise_clear_errors_and_store_nothing(seeded):
    store, ids = seeded
    with pytest.raises(UnknownEntity, match="entity_id"):
        store.submit("ana", ids[0], entity_id="Q404")
    with pytest.raises(NotFound, match="annotator"):
        store.submit("mallory", ids[0], entity_id="Q1")
    with pytest.raises(NotFound, match="mention"):
        store.submit("ana", 10_000, entity_id="Q1")
    with pytest.raises(InvalidInput, match="decision"):
        store.submit("ana", ids[0], "maybe")
    with pytest.raises(InvalidInput, match="entity_id"):
        store.submit("ana", ids[0], "nil", entity_id="Q1")
    with pytest.raises(InvalidInput, match="entity_id"):
        store.submit("ana", ids[0], "entity")
    with pytest.raises(InvalidInput, match="seconds_spent"):
        store.submit("ana", ids[0], entity_id="Q1", seconds_spent=-3)
    with pytest.raises(InvalidInput, match="prediction"):
        store.submit("ana", ids[0], entity_id="Q1", prediction_id=store.predictions(ids[1])[0].id)
    # a batch with one bad item stores none of them
    with pytest.raises(UnknownEntity, match="entity_id"):
        store.submit_many(
            [
                {"annotator": "ana", "mention": ids[0], "entity_id": "Q1"},
                {"annotator": "ana", "mention": ids[1], "entity_id": "Q404"},
            ]
        )
    assert store.history(ids[0]) == [] and store.current_annotations() == []
    assert not store.settings.journal_path.exists() or "Q404" not in store.settings.journal_path.read_text()


HOSTILE = [
    "Robert'); DROP TABLE annotations;--",
    "<script>alert('x')</script> & <b>bold</b> \"quoted\"",
    "50% off_sale \\ back\\slash; SELECT * FROM mentions WHERE 1=1",
    "emoji 🎉, RTL שלום, zero-width \u200b, line\u2028separator, tab\tend",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_metacharacters_are_stored_and_returned_verbatim(store, text):
    store.upsert_entity("E1", text, text, aliases=[text])
    sentence = f"before {text} after"
    m = store.add_mention(sentence, text, uid=f"uid {text}")
    assert store.get_mention(m.uid).sentence == sentence and store.get_mention(m.id).mention == text
    shown = store.get_mention(m.id).html()  # display helper: escaped, span in <mark>
    assert "<script>" not in shown and "<b>" not in shown
    assert html.unescape(shown.replace("<mark>", "").replace("</mark>", "")) == sentence
    a = store.submit("ana", m.id, entity_id="E1", comment=text, request_id=text[:100])
    assert store.get_annotation(text[:100]).comment == text and a.entity_id == "E1"
    assert store.get_entity("E1").name == text
    assert [e.id for e in store.search_entities(text[:20])] == ["E1"]
    # every table is still there and holds what it should
    assert store.integrity_check() == "ok"
    assert store.count_mentions() == 1 and len(store.current_annotations()) == 1


# -- reports, model versions, training runs ------------------------------------------------------------


def test_progress_counts_and_speed(seeded):
    store, ids = seeded
    store.submit("ana", ids[0], entity_id="Q1", seconds_spent=10)
    store.submit("ana", ids[1], "nil", seconds_spent=20)
    store.submit("ana", ids[2], "ambiguous", seconds_spent=60)
    store.submit("ana", ids[2], entity_id="Q2", seconds_spent=30)  # changed its mind
    store.skip("ana", ids[3])
    store.submit("ana", ids[4], entity_id="Q5", seconds_spent=5)
    store.undo("ana")
    p = {r.annotator: r for r in store.progress()}["ana"]
    assert (p.decided, p.entity, p.nil, p.ambiguous, p.skipped, p.changed, p.undone) == (3, 2, 1, 0, 1, 1, 1)
    assert p.total_seconds == 60 and p.mean_seconds == 20 and p.median_seconds == 20
    assert p.items_per_hour == pytest.approx(180)
    assert store.progress("bob")[0].decided == 0
    ov = store.overview()
    assert ov["mentions"] == 12 and ov["complete"] == 3 and ov["pending"] == 9


def test_model_versions_only_one_promoted(store):
    store.register_model_version("v1", checkpoint="runs/v1/best", backbone="clip", metrics={"H@1": 0.5})
    store.register_model_version("v2", checkpoint="runs/v2/best", backbone="clip")
    store.promote("v1")
    store.promote("v2")
    assert [m.name for m in store.list_model_versions() if m.promoted] == ["v2"]
    assert store.promoted_model_version().name == "v2"
    assert store.register_model_version("v1", metrics={"MRR": 0.6}).metrics == {"H@1": 0.5, "MRR": 0.6}
    with pytest.raises(NotFound):
        store.promote("v9")
    assert store.promoted_model_version().name == "v2"


def test_training_run_lifecycle_records_its_annotations(seeded):
    store, ids = seeded
    a = [store.submit("ana", m, entity_id="Q1").id for m in ids[:3]]
    store.register_model_version("v0")
    run = store.create_training_run({"epochs": 1}, export_dir="exports/r1", base_model_version="v0", annotation_ids=a)
    assert run.status == "queued" and run.annotations == 3
    run = store.start_training_run(run.id, log_path="runs/r1/train.log")
    assert run.status == "running" and run.started_at is not None
    store.register_model_version("v1", checkpoint="runs/r1/best")
    run = store.finish_training_run(run.id, metrics={"dev": {"MRR": 0.7}}, output_model_version="v1")
    assert (run.status, run.output_model_version, run.metrics["dev"]["MRR"]) == ("succeeded", "v1", 0.7)
    assert run.finished_at >= run.started_at
    assert store.training_run_annotations(run.id) == sorted(a)
    with pytest.raises(Conflict, match="succeeded"):
        store.update_training_run(run.id, status="running")
    with pytest.raises(NotFound, match="annotation"):
        store.create_training_run(annotation_ids=[999_999])
    with pytest.raises(InvalidInput, match="config"):
        store.create_training_run({"bad": object()})
    assert [r.id for r in store.list_training_runs()] == [run.id]
