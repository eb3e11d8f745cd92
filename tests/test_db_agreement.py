"""Cohen's and Fleiss' kappa against textbook examples, and the store's agreement report."""

from __future__ import annotations

import pytest

from db import agreement_report, cohen_kappa, fleiss_kappa, fleiss_kappa_from_counts, open_store


def test_cohen_kappa_textbook_example():
    # Wikipedia "Cohen's kappa": 50 proposals, A and B both yes 20, A yes B no 5, A no B yes 10, both no 15.
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)  # P_o = 0.7, P_e = 0.5


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a")] * 5) is None  # one single label: chance agreement is 1
    assert cohen_kappa([]) is None


FLEISS_WIKIPEDIA = [  # 10 subjects, 14 raters each, 5 categories (Wikipedia "Fleiss' kappa")
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_textbook_example():
    # P_bar = 0.378, P_e = 0.213, kappa = 0.210
    assert fleiss_kappa_from_counts(FLEISS_WIKIPEDIA) == pytest.approx(0.210, abs=5e-4)
    # the same table given as label lists
    items = [[c for c, n in enumerate(row) for _ in range(n)] for row in FLEISS_WIKIPEDIA]
    assert fleiss_kappa(items) == pytest.approx(fleiss_kappa_from_counts(FLEISS_WIKIPEDIA))


def test_fleiss_equals_hand_computation_with_two_raters():
    # 4 items, 2 raters: agree, agree, disagree, disagree -> P_bar = 0.5;
    # label shares Q1 4/8, Q2 2/8, NIL 2/8 -> P_e = 0.375; kappa = 0.125 / 0.625 = 0.2
    items = [["Q1", "Q1"], ["Q2", "Q2"], ["NIL", "Q1"], ["Q1", "NIL"]]
    assert fleiss_kappa(items) == pytest.approx(0.2)
    assert fleiss_kappa([["a"]]) is None  # nothing doubly rated


def test_store_agreement_uses_current_decisions_only(tmp_path):
    s = open_store(tmp_path / "data")
    try:
        for q in ("Q1", "Q2", "Q3"):
            s.upsert_entity(q, q)
        for n in ("ana", "bob", "cid"):
            s.add_annotator(n)
        m = [s.add_mention(f"item {i} text", f"item {i}").id for i in range(5)]
        plan = {"ana": ["Q1", "Q2", "nil", "Q1", None], "bob": ["Q1", "Q2", "Q1", "nil", "Q3"]}
        s.submit("bob", m[0], entity_id="Q2")  # bob changes his mind on m0: superseded
        for who, labels in plan.items():
            for mid, lab in zip(m, labels):
                if lab is not None:
                    s.submit(who, mid, lab if lab == "nil" else "entity", None if lab == "nil" else lab)
        s.skip("ana", m[4])  # a skip is not a decision
        s.submit("cid", m[4], entity_id="Q3")
        s.submit("cid", m[3], entity_id="Q2")
        s.undo("cid")  # undone: does not count
        r = s.agreement()
        assert r["items"] == 5  # m0..m3 (ana, bob) and m4 (bob, cid)
        ab = next(p for p in r["pairs"] if (p["a"], p["b"]) == ("ana", "bob"))
        assert ab["items"] == 4 and ab["kappa"] == pytest.approx(0.2) and ab["observed_agreement"] == 0.5
        bc = next(p for p in r["pairs"] if (p["a"], p["b"]) == ("bob", "cid"))
        assert bc["items"] == 1 and bc["observed_agreement"] == 1.0
        # Fleiss over the 5 items: P_bar = 3/5; shares Q1 4/10, Q2 2/10, NIL 2/10, Q3 2/10
        pe = 0.4**2 + 3 * 0.2**2
        assert r["fleiss_kappa"] == pytest.approx((0.6 - pe) / (1 - pe))
        assert agreement_report({})["fleiss_kappa"] is None
    finally:
        s.close()
