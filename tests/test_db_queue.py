"""Work queue: uncertainty order, skipped items last, leases (no two annotators on one item unless
overlap says so), expiry, undo puts the item back in front."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import db.queue
from db import open_store
from db.models import utcnow


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(**overrides):
        s = open_store(tmp_path / f"data{len(stores)}", **overrides)
        stores.append(s)
        s.upsert_entity("Q1", "one")
        s.upsert_entity("Q2", "two")
        s.upsert_entity("Q3", "three")
        for name in ("ana", "bob", "cid"):
            s.add_annotator(name)
        return s

    yield make
    for s in stores:
        s.close()


def _mention(store, uid, margin):
    """A mention whose prediction has top-2 margin `margin` (None: no prediction at all)."""
    m = store.add_mention(f"text {uid} here", uid, uid=uid)
    if margin is not None:
        store.add_prediction(
            m.id,
            "v0",
            [{"entity_id": "Q1", "S": 0.5 + margin}, {"entity_id": "Q2", "S": 0.5}, {"entity_id": "Q3", "S": 0.1}],
        )
    return m.id


def test_order_is_smallest_margin_first_then_unscored_then_skipped(make_store):
    s = make_store()
    ids = {
        u: _mention(s, u, mg)
        for u, mg in [("sure", 0.4), ("none1", None), ("unsure", 0.01), ("mid", 0.2), ("none2", None)]
    }
    one = s.add_mention("text single here", "single", uid="single")  # one candidate: no margin
    s.add_prediction(one.id, "v0", [{"entity_id": "Q1", "S": 0.9}])
    assert [m.uid for m in s.peek_queue("ana", 10)] == ["unsure", "mid", "sure", "none1", "none2", "single"]
    s.skip("ana", ids["unsure"])
    s.skip("ana", ids["none1"])
    assert [m.uid for m in s.peek_queue("ana", 10)] == ["mid", "sure", "none2", "single", "unsure", "none1"]
    assert s.queue_size("ana") == 6
    # a newer prediction re-ranks the mention
    s.add_prediction(ids["sure"], "v1", [{"entity_id": "Q1", "S": 0.51}, {"entity_id": "Q2", "S": 0.5}])
    assert [m.uid for m in s.peek_queue("ana", 2)] == ["sure", "mid"]


def test_next_item_leases_and_walks_the_queue(make_store):
    s = make_store()
    a, b, c = _mention(s, "a", 0.1), _mention(s, "b", 0.2), _mention(s, "c", 0.3)
    first = s.next_item("ana")
    assert first.mention.id == a and first.prediction.candidates[0].entity_id == "Q1"
    assert first.lease_expires_at > utcnow()
    assert s.next_item("ana").mention.id == a  # asking again keeps the place
    assert s.next_item("bob").mention.id == b  # leased to ana: bob gets the next one
    s.submit("ana", a, entity_id="Q1")
    assert s.next_item("ana").mention.id == c  # b is bob's
    s.skip("ana", c)
    assert s.next_item("ana").mention.id == c and s.next_item("ana").previously_skipped  # only skipped left
    s.submit("ana", c, "nil")
    assert s.next_item("ana") is None and s.queue_size("ana") == 0
    assert s.next_item("cid") is None  # a and c decided, b leased to bob
    assert s.release("bob") == 1
    assert s.next_item("cid").mention.id == b


def test_expired_leases_are_reclaimed(make_store, monkeypatch):
    s = make_store(lease_seconds=60)
    a = _mention(s, "a", 0.1)
    assert s.next_item("ana").mention.id == a
    assert s.next_item("bob") is None
    later = utcnow() + timedelta(minutes=5)
    monkeypatch.setattr(db.queue, "utcnow", lambda: later)
    assert s.next_item("bob").mention.id == a  # ana walked away: bob takes it over
    assert s.next_item("ana") is None
    s.submit("ana", a, entity_id="Q2")  # ana can still submit: nothing is lost
    assert s.next_item("bob") is None  # ...and it left bob's queue


def test_concurrent_annotators_never_get_the_same_item(make_store):
    s = make_store()
    ids = [_mention(s, f"m{i}", i / 100) for i in range(12)]
    names = [f"t{i}" for i in range(12)]
    for n in names:
        s.add_annotator(n)
    got, errors, barrier = {}, [], threading.Barrier(len(names))

    def grab(name):
        try:
            barrier.wait()
            got[name] = s.next_item(name).mention.id
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=grab, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got.values()) == sorted(ids)  # 12 annotators, 12 distinct items


def test_overlap_two_gives_each_item_to_two_annotators(make_store):
    s = make_store(overlap=2)
    a, b = _mention(s, "a", 0.1), _mention(s, "b", 0.2)
    assert s.next_item("ana").mention.id == a
    assert s.next_item("bob").mention.id == a  # the second annotator of the same item
    assert s.next_item("cid").mention.id == b  # a has its two annotators
    s.submit("ana", a, entity_id="Q1")
    s.submit("bob", a, entity_id="Q2")
    s.release("cid")
    assert [m.uid for m in s.peek_queue("cid")] == ["b"]  # a is complete (2 decisions)
    assert s.overview()["complete"] == 1


def test_undo_brings_the_item_back_first_and_others_see_it_again(make_store):
    s = make_store()
    a, b = _mention(s, "a", 0.1), _mention(s, "b", 0.2)
    s.submit("ana", a, entity_id="Q1")
    assert [m.uid for m in s.peek_queue("bob")] == ["b"]  # decided by ana: out of bob's queue
    assert s.next_item("ana").mention.id == b
    s.undo("ana")  # undoes a (latest current decision)
    assert s.next_item("ana").mention.id == a  # the undone item comes back first
    s.submit("ana", a, entity_id="Q2")
    assert s.next_item("ana").mention.id == b


def test_decided_counter_matches_the_annotations(make_store):
    s = make_store(overlap=2)
    ids = [_mention(s, f"m{i}", i / 10) for i in range(4)]
    s.submit("ana", ids[0], entity_id="Q1")
    s.submit("ana", ids[0], "skip")  # final -> skip: -1
    s.submit("bob", ids[0], "nil")
    s.submit("ana", ids[1], entity_id="Q1")
    s.submit("ana", ids[1], entity_id="Q2")  # final -> final: unchanged
    s.submit("bob", ids[2], "ambiguous")
    s.undo("bob")  # -1
    from sqlalchemy import func, select

    from db.models import Annotation, Mention

    def check(sess):
        for m in sess.scalars(select(Mention)):
            n = sess.scalar(
                select(func.count())
                .select_from(Annotation)
                .where(
                    Annotation.mention_id == m.id,
                    Annotation.status == "current",
                    Annotation.decision.in_(["entity", "nil", "ambiguous"]),
                )
            )
            assert m.decided == n, m.uid
        return True

    assert s.read_transaction(check)
