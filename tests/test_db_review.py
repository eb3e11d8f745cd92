"""The review list (disagreements and flags), resolving (reviewer-only, the gold rule's reviewer
decision), the agreement figures checked by hand (and against scikit-learn when it is installed),
and the stored users (argon2 hashes only, roles, disabling, the last admin kept)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from app.auth import hash_password
from db import open_store
from db.agreement import cohen_kappa, fleiss_kappa, reviewer_agreement, throughput
from db.errors import Conflict, Forbidden, InvalidInput, NotFound
from db.models import Mention, Project
from db.testing import seed_store

PW_HASH = hash_password("correct horse")


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    seed_store(s, entities=6, mentions=8, candidates=3)
    for n, role in [("ana", "annotator"), ("bob", "annotator"), ("cid", "annotator"), ("rita", "reviewer")]:
        s.add_annotator(n, role)
    s.add_annotator("adam", "admin")
    yield s
    s.close()


def _plan(store):
    """m0 disagreement, m1 agreement, m2 a flag, m3 a flagged skip, m4 disagreement of three, m5 one vote."""
    store.submit("ana", "m0", entity_id="Q1", seconds_spent=30)
    store.submit("bob", "m0", entity_id="Q2", comment="the photo shows Q2")
    store.submit("ana", "m1", entity_id="Q3", seconds_spent=60)
    store.submit("bob", "m1", entity_id="Q3")
    store.submit("ana", "m2", entity_id="Q1", flag="kb-missing", comment="not the right Q1", seconds_spent=90)
    store.skip("ana", "m3", flag="bad-image")
    store.submit("ana", "m4", "nil")
    store.submit("bob", "m4", "nil")
    store.submit("cid", "m4", entity_id="Q3")
    store.submit("cid", "m5", entity_id="Q2")


def _uids(page):
    return [it.mention.uid for it in page.items]


def test_review_list_holds_disagreements_and_flags_with_every_decision(store):
    _plan(store)
    page = store.review_list()
    assert page.total == 4 and _uids(page) == ["m0", "m2", "m3", "m4"]
    why = {it.mention.uid: it.reasons for it in page.items}
    assert why == {"m0": ["disagreement"], "m2": ["flag"], "m3": ["flag"], "m4": ["disagreement"]}
    m0 = page.items[0]
    assert [(d.annotator, d.decision, d.entity_id, d.comment) for d in m0.decisions] == [
        ("ana", "entity", "Q1", None),
        ("bob", "entity", "Q2", "the photo shows Q2"),
    ]
    assert m0.decisions[0].entity_name == "entity 1"
    # the latest prediction's candidates, best first, with names
    assert len(m0.candidates) == 3 and all(c.entity_name.startswith("entity ") for c in m0.candidates)
    assert [c.s for c in m0.candidates] == sorted((c.s for c in m0.candidates), reverse=True)
    m3 = page.items[2]
    assert [(d.decision, d.flag) for d in m3.decisions] == [("skip", "bad-image")]
    # pages
    first, second = store.review_list(limit=3), store.review_list(limit=3, offset=3)
    assert _uids(first) == ["m0", "m2", "m3"] and _uids(second) == ["m4"] and second.total == 4
    assert store.review_list(offset=10).items == []
    with pytest.raises(InvalidInput, match="limit"):
        store.review_list(limit=0)
    with pytest.raises(InvalidInput, match="offset"):
        store.review_list(offset=-1)


def test_resolve_takes_the_mention_off_the_list_and_is_the_gold(store):
    _plan(store)
    rec = store.resolve("rita", "m0", entity_id="Q2", comment="agree with bob")
    assert (rec.annotator, rec.decision, rec.entity_id, rec.comment) == ("rita", "entity", "Q2", "agree with bob")
    store.resolve("adam", "m4", "nil")  # an admin may resolve too
    assert _uids(store.review_list()) == ["m2", "m3"]
    gold, conflicts = store.resolved()
    m0 = store.get_mention("m0").id
    assert (gold[m0].decision, gold[m0].entity_id) == ("entity", "Q2")
    assert {g.mention.id: g.mention.answer for g in store.gold_mentions()}["m0"] == "Q2"
    # resolving again replaces the earlier resolution (the latest reviewer decision is the gold)
    store.resolve("rita", "m0", entity_id="Q1")
    assert (store.resolved()[0][m0].entity_id, len(store.history("m0"))) == ("Q1", 4)
    # something newer than the resolution that disagrees with it, or a new flag, reopens the mention
    store.submit("cid", "m0", entity_id="Q1")  # agrees with the resolution: stays off
    assert "m0" not in _uids(store.review_list())
    store.submit("cid", "m0", entity_id="Q1", flag="unsure")
    reopened = {it.mention.uid: it.reasons for it in store.review_list().items}
    assert reopened["m0"] == ["flag"]


def test_resolve_checks_the_role_and_the_decision(store):
    _plan(store)
    with pytest.raises(Forbidden, match="ana is an annotator"):
        store.resolve("ana", "m0", entity_id="Q1")
    store.set_active("rita", False)
    with pytest.raises(Forbidden, match="disabled"):
        store.resolve("rita", "m0", entity_id="Q1")
    with pytest.raises(InvalidInput, match="decision"):
        store.resolve("adam", "m0", "skip")
    with pytest.raises(NotFound, match="reviewer"):
        store.resolve("nobody", "m0", "nil")
    assert store.review_list().total == 4  # nothing was stored


def test_project_filter(store):
    _plan(store)
    with store.engine.begin() as c:
        pid = c.execute(Project.__table__.insert().values(name="birds")).inserted_primary_key[0]
        c.execute(update(Mention).where(Mention.uid.in_(["m2", "m4"])).values(project_id=pid))
    assert _uids(store.review_list(project=pid)) == ["m2", "m4"]
    assert store.review_list(project=pid + 1).total == 0
    with pytest.raises(InvalidInput, match="project"):
        store.review_list(project="birds")  # type: ignore[arg-type]


# -- agreement --------------------------------------------------------------------------------------
def test_fleiss_with_unequal_rater_counts_by_hand():
    # three raters on a, two on b and c: P_a = 1, P_b = 0, P_c = 1 -> P_bar = 2/3;
    # label shares Q1 4/7, Q2 3/7 -> P_e = 25/49; kappa = (2/3 - 25/49) / (24/49) = 23/72
    assert fleiss_kappa([["Q1", "Q1", "Q1"], ["Q1", "Q2"], ["Q2", "Q2"]]) == pytest.approx(23 / 72)


def test_cohen_kappa_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a = ["Q1", "Q2", "NIL", "Q1", "Q3", "Q2", "Q1", "NIL", "Q3", "Q1"]
    b = ["Q1", "Q2", "Q1", "Q1", "Q3", "NIL", "Q2", "NIL", "Q3", "Q1"]
    assert cohen_kappa(zip(a, b)) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b))


def test_throughput_from_seconds_or_timestamps():
    t0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    rows = [("ana", 30.0, t0), ("ana", 60.0, t0), ("ana", 90.0, t0)]  # 3 decisions in 180 s
    rows += [("bob", None, t0 + timedelta(minutes=m)) for m in (0, 10, 20)]  # 2 gaps in 20 min
    rows += [("cid", None, t0)]
    t = throughput(rows)
    assert t["ana"] == {"decisions": 3, "seconds": 180.0, "per_hour": pytest.approx(60.0), "source": "seconds_spent"}
    assert t["bob"]["per_hour"] == pytest.approx(6.0) and t["bob"]["source"] == "timestamps"
    assert t["cid"]["per_hour"] is None  # one decision: no rate


def test_reviewer_agreement_by_hand():
    labels = {1: {"ana": "Q1", "bob": "Q2"}, 2: {"ana": "Q3"}, 3: {"bob": "NIL"}}
    r = reviewer_agreement(labels, {1: "Q2", 2: "Q3"})  # item 3 is not resolved: not counted
    assert r["ana"] == {"reviewed": 2, "agreed": 1, "fraction": 0.5}
    assert r["bob"] == {"reviewed": 1, "agreed": 1, "fraction": 1.0}


def test_store_agreement_summary(store):
    _plan(store)
    store.resolve("rita", "m0", entity_id="Q2")
    store.resolve("rita", "m4", "nil")
    r = store.agreement_summary()
    assert r["annotators"] == ["ana", "bob", "cid"]  # the reviewer's resolutions are no ratings
    ab = next(p for p in r["pairs"] if (p["a"], p["b"]) == ("ana", "bob"))
    # ana/bob on m0 (Q1/Q2), m1 (Q3/Q3), m4 (NIL/NIL)
    assert ab["items"] == 3 and ab["kappa"] == pytest.approx(cohen_kappa([("Q1", "Q2"), ("Q3", "Q3"), ("N", "N")]))
    # by hand: P_o = 2/3; ana's labels Q1, Q3, NIL and bob's Q2, Q3, NIL share Q3 and NIL -> P_e = 2/9
    assert ab["kappa"] == pytest.approx((2 / 3 - 2 / 9) / (1 - 2 / 9))
    (proj,) = r["projects"]
    assert (proj["project"], proj["items"], proj["min_raters"], proj["max_raters"]) == (None, 3, 2, 3)
    assert proj["kappa"] == pytest.approx(fleiss_kappa([["Q1", "Q2"], ["Q3", "Q3"], ["<NIL>", "<NIL>", "Q3"]]))
    assert r["throughput"]["ana"]["per_hour"] == pytest.approx(60.0)  # 30 + 60 + 90 s for 3 (+1 untimed)
    ra = r["reviewer_agreement"]
    assert ra["ana"] == {"reviewed": 2, "agreed": 1, "fraction": 0.5}  # m0 wrong, m4 right
    assert ra["bob"] == {"reviewed": 2, "agreed": 2, "fraction": 1.0}
    assert ra["cid"] == {"reviewed": 1, "agreed": 0, "fraction": 0.0}
    assert "rita" not in ra
    with_rev = store.agreement_summary(include_reviewers=True)
    assert "rita" in with_rev["annotators"] and "rita" not in with_rev["reviewer_agreement"]


# -- users ------------------------------------------------------------------------------------------
def test_users_are_stored_with_hashes_only(store):
    u = store.create_user("dora", "reviewer", PW_HASH)
    assert (u.name, u.role, u.active, u.has_password) == ("dora", "reviewer", True, True)
    assert "password_hash" not in u.to_dict() and PW_HASH not in repr(store.list_users())
    signin = store.user_for_sign_in("dora")
    assert signin is not None and signin.password_hash == PW_HASH and PW_HASH not in repr(signin)
    assert store.user_for_sign_in("nobody") is None and store.user_for_sign_in("") is None
    with pytest.raises(InvalidInput, match="argon2"):
        store.create_user("eve", "annotator", "plaintext-password")
    with pytest.raises(Conflict, match="already exists"):
        store.create_user("dora")
    with pytest.raises(InvalidInput, match="role"):
        store.create_user("fay", "boss")
    with pytest.raises(InvalidInput, match="name"):
        store.create_user("a:b")
    assert store.has_password_users()
    store.set_password_hash("dora", None)
    assert not store.has_password_users() and store.user_for_sign_in("dora").password_hash is None


def test_roles_and_disabling_keep_one_admin(store):
    assert store.set_role("ana", "reviewer").role == "reviewer"
    assert store.set_active("ana", False).active is False
    assert store.user_for_sign_in("ana").active is False
    assert store.set_active("ana", True).active is True
    with pytest.raises(Conflict, match="last active admin"):
        store.set_role("adam", "annotator")
    with pytest.raises(Conflict, match="last active admin"):
        store.set_active("adam", False)
    store.set_role("rita", "admin")
    assert store.set_active("adam", False).active is False  # another admin exists now
    with pytest.raises(NotFound):
        store.set_role("nobody", "admin")
    with pytest.raises(InvalidInput, match="active"):
        store.set_active("ana", "no")  # type: ignore[arg-type]
    # ensure_user creates once and then leaves the database's role alone
    assert store.ensure_user("ana", "admin").role == "reviewer"
    assert store.ensure_user("newbie", "reviewer").role == "reviewer"
