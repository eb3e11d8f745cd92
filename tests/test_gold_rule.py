"""One gold-label rule (`AnnotationStore.resolved`): the app's Analysis tab, the training export and
the retraining job's in-memory training set give every mention the same gold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.tabs.analysis import corrections_as_mentions
from db import open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    for q, name in [("Q1", "Paris"), ("Q2", "Paris Hilton"), ("Q3", "Paris, Texas")]:
        s.upsert_entity(q, name, f"about {name}")
    for n, role in [("ana", "annotator"), ("bob", "annotator"), ("cid", "annotator"), ("rita", "reviewer")]:
        s.add_annotator(n, role)
    yield s
    s.close()


def _decide(store, uid, *votes):
    store.add_mention(f"{uid}: Paris is in the news.", "Paris", uid=uid)
    for who, eid in votes:
        store.submit(who, uid, entity_id=eid) if eid else store.submit(who, uid, decision="nil")


def test_analysis_and_training_share_the_gold_when_latest_is_not_majority(store):
    _decide(store, "majority", ("ana", "Q1"), ("bob", "Q1"), ("cid", "Q2"))  # latest Q2, majority Q1
    _decide(store, "reviewed", ("ana", "Q1"), ("bob", "Q1"), ("rita", "Q3"))  # the reviewer wins
    _decide(store, "tied", ("ana", "Q1"), ("bob", "Q2"))  # a tie: no gold
    _decide(store, "nil", ("ana", "Q1"), ("bob", None), ("cid", None))  # NIL majority, latest NIL
    _decide(store, "nil_late", ("ana", None), ("bob", None), ("cid", "Q2"))  # NIL majority, latest Q2

    analysis, source = corrections_as_mentions(SimpleNamespace(store=store))
    analysis_gold = {m.id: m.answer for m in analysis}
    assert analysis_gold == {"majority": "Q1", "reviewed": "Q3", "nil": None, "nil_late": None}
    assert set(source.values()) == {"corrections"}

    dataset, used, conflicts, not_entity = store.build_training_dataset(fractions=(1.0, 0.0, 0.0))
    training_gold = {m.id: m.answer for m in dataset.split("train")}
    assert training_gold == {"majority": "Q1", "reviewed": "Q3"}  # NIL golds are no training links
    assert (conflicts, not_entity) == (1, 2)
    # every entity gold the Analysis tab judges on is the label training used
    assert {k: v for k, v in analysis_gold.items() if v is not None} == training_gold
    supporting = {store.get_annotation(a).mention_uid for a in used}
    assert supporting == {"majority", "reviewed"}


def test_ambiguous_majority_gives_no_gold(store):
    _decide(store, "amb", ("ana", "Q1"))
    store.submit("bob", "amb", decision="ambiguous")
    store.submit("cid", "amb", decision="ambiguous")
    assert corrections_as_mentions(SimpleNamespace(store=store))[0] == []
    assert store.gold_mentions() == []
