"""Error analysis (mimic.analysis.error_analysis) on small hand-made evaluations whose every answer is known.

Two synthetic runs over a 6-entity KB (E1..E6):
  * LINKED: 11 hand-made LinkResults (shortlists of 3, one of 6) with every label, NIL decisions
    by a threshold of 0.5 already applied by the "linker" (the nil flags below);
  * DUMP: a full-KB score dump [6 mentions, 6 entities] with ties, a NaN unit and a NIL threshold.
The expected labels, ranks, unit ranks and metrics are worked out by hand in the comments.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from mimic.analysis.cli import add_analyze_parser, cmd_analyze
from mimic.analysis.error_analysis import analyze_link_results, analyze_linker
from mimic.analysis.figures import (
    comparison_figure,
    label_counts_figure,
    recall_at_k_figure,
    reliability_figure,
    unit_accuracy_figure,
)
from mimic.analysis.ranking import ranks_from_scores
from mimic.analysis.records import LABELS, UNITS, MentionAnalysis, load_records, save_records
from mimic.analysis.score_dump import analyze_score_arrays, load_score_dump
from mimic.analysis.summary import compare, filter_records, summarize
from mimic.analysis.tables import RECORD_COLUMNS, comparison_table, records_table, to_csv
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention
from mimic.serving.linker import Candidate, LinkResult

KB_IDS = ["E1", "E2", "E3", "E4", "E5", "E6"]
NAMES = {e: f"Entity {e[1]}" for e in KB_IDS}


def link_result(cands, *, nil, has_image, mention="m"):
    """A LinkResult with candidates (entity, S, S_T, S_V, S_C) already in S order."""
    out = []
    for r, (eid, s, t, v, c) in enumerate(cands, 1):
        nxt = cands[r][1] if r < len(cands) else None
        out.append(
            Candidate(
                entity_id=eid,
                name=NAMES[eid],
                description="",
                images=[],
                S=s,
                S_T=t,
                S_V=v,
                S_C=c,
                rank=r,
                margin=None if nxt is None else s - nxt,
                retrievers=["text"],
            )
        )
    return LinkResult(
        sentence=f"a sentence about {mention}",
        mention=mention,
        start=None,
        end=None,
        has_image=has_image,
        candidates=out,
        nil=nil,
        nil_threshold=0.5,
        shortlist_size=len(out),
    )


# mention id -> (gold, has_image, nil, candidates); expected label in the comment
LINKED = {
    # correct; units disagree (S_T and S_V prefer others) but S ranks the gold first
    "m1": (
        "E1",
        True,
        False,
        [("E1", 0.90, 0.90, 0.80, 1.0), ("E2", 0.60, 0.95, 0.50, 0.40), ("E3", 0.55, 0.30, 0.85, 0.50)],
    ),
    # correct; no image: S_V does not apply
    "m2": (
        "E2",
        False,
        False,
        [("E2", 0.80, 0.80, None, 0.70), ("E1", 0.70, 0.60, None, 0.75), ("E4", 0.60, 0.50, None, 0.20)],
    ),
    # retrieval_miss: E3 not shortlisted
    "m3": ("E3", True, False, [("E4", 0.85, 0.8, 0.8, 0.9), ("E5", 0.70, 0.7, 0.7, 0.7), ("E6", 0.60, 0.6, 0.6, 0.6)]),
    # outranked (rank 2) by S_T and S_C; S_V prefers the gold
    "m4": (
        "E4",
        True,
        False,
        [("E5", 0.80, 0.90, 0.50, 1.0), ("E4", 0.70, 0.60, 0.90, 0.60), ("E1", 0.60, 0.30, 0.40, 0.90)],
    ),
    # outranked (rank 6 of a 6-candidate shortlist); S_T alone would rank it first
    "m5": (
        "E5",
        False,
        False,
        [
            ("E6", 0.75, 0.70, None, 0.80),
            ("E1", 0.70, 0.65, None, 0.60),
            ("E2", 0.68, 0.60, None, 0.55),
            ("E3", 0.66, 0.50, None, 0.50),
            ("E4", 0.65, 0.40, None, 0.45),
            ("E5", 0.60, 0.90, None, 0.30),
        ],
    ),
    # false_nil: gold ranked first, top S 0.45 below the threshold
    "m6": (
        "E6",
        True,
        True,
        [("E6", 0.45, 0.50, 0.40, 0.45), ("E1", 0.30, 0.3, 0.3, 0.3), ("E2", 0.20, 0.2, 0.2, 0.2)],
    ),
    # missed_nil: gold NIL, linked to E1
    "m7": (
        None,
        False,
        False,
        [("E1", 0.70, 0.7, None, 0.7), ("E2", 0.50, 0.5, None, 0.5), ("E3", 0.40, 0.4, None, 0.4)],
    ),
    # correct_nil
    "m8": ("nil", True, True, [("E2", 0.40, 0.4, 0.4, 0.4), ("E3", 0.30, 0.3, 0.3, 0.3), ("E4", 0.20, 0.2, 0.2, 0.2)]),
    # correct, every unit agrees
    "m9": (
        "E1",
        True,
        False,
        [("E1", 0.95, 0.95, 0.95, 0.95), ("E2", 0.50, 0.5, 0.5, 0.5), ("E3", 0.40, 0.4, 0.4, 0.4)],
    ),
    # retrieval_miss although the system also answered NIL (the first failing stage wins)
    "m10": (
        "E2",
        False,
        True,
        [("E5", 0.30, 0.3, None, 0.3), ("E6", 0.20, 0.2, None, 0.2), ("E1", 0.10, 0.1, None, 0.1)],
    ),
    # outranked although NIL answered; S_V ties (not strictly higher), only S_C prefers the top
    "m11": (
        "E3",
        True,
        True,
        [("E4", 0.45, 0.40, 0.50, 0.45), ("E3", 0.44, 0.45, 0.50, 0.37), ("E5", 0.10, 0.1, 0.1, 0.1)],
    ),
}
EXPECTED_LABELS = {
    "m1": "correct",
    "m2": "correct",
    "m3": "retrieval_miss",
    "m4": "outranked",
    "m5": "outranked",
    "m6": "false_nil",
    "m7": "missed_nil",
    "m8": "correct_nil",
    "m9": "correct",
    "m10": "retrieval_miss",
    "m11": "outranked",
}


def analyse(table, version="v1", dataset="synth"):
    ids = list(table)
    results = [link_result(table[i][3], nil=table[i][2], has_image=table[i][1], mention=i) for i in ids]
    return analyze_link_results(
        results, [table[i][0] for i in ids], dataset=dataset, mention_ids=ids, model_version=version, top_k=3
    )


@pytest.fixture()
def records():
    return analyse(LINKED)


def by_id(records):
    return {r.mention_id: r for r in records}


# ------------------------------------------------------------------------------------------------
# Per-mention records from LinkResults
# ------------------------------------------------------------------------------------------------


def test_labels_ranks_and_predictions(records):
    r = by_id(records)
    assert {k: v.label for k, v in r.items()} == EXPECTED_LABELS
    assert {k: v.gold_rank for k, v in r.items()} == {
        "m1": 1,
        "m2": 1,
        "m3": None,
        "m4": 2,
        "m5": 6,
        "m6": 1,
        "m7": None,
        "m8": None,
        "m9": 1,
        "m10": None,
        "m11": 2,
    }
    assert [k for k, v in r.items() if v.retrieved] == ["m1", "m2", "m4", "m5", "m6", "m9", "m11"]
    assert r["m8"].gold is None and r["m7"].gold is None  # "nil" and None both mean a NIL gold
    assert r["m6"].predicted is None and r["m6"].nil_predicted  # false NIL: no answer given
    assert r["m7"].predicted == "E1" and not r["m7"].nil_predicted
    assert r["m4"].predicted == "E5"
    assert r["m5"].shortlist_size == 6 and len(r["m5"].candidates) == 3  # top_k=3 kept for display
    assert r["m4"].gold_scores == {"S": 0.70, "S_T": 0.60, "S_V": 0.90, "S_C": 0.60}
    assert r["m3"].gold_scores is None
    top = r["m4"].candidates[0]
    assert top["entity_id"] == "E5" and top["name"] == "Entity 5" and top["rank"] == 1
    assert top["margin"] == pytest.approx(0.10) and top["retrievers"] == ["text"]
    assert r["m2"].candidates[0]["S_V"] is None and r["m2"].has_image is False
    assert all(x.model_version == "v1" and x.dataset == "synth" for x in records)


def test_outranked_by_and_unit_ranks(records):
    r = by_id(records)
    assert r["m4"].outranked_by == ["S_T", "S_C"]
    assert r["m5"].outranked_by == ["S_C"]
    assert r["m11"].outranked_by == ["S_C"]  # S_V tied at 0.50: not strictly higher
    assert all(r[k].outranked_by == [] for k in ("m1", "m2", "m3", "m6", "m7", "m8", "m9", "m10"))
    assert r["m1"].unit_ranks == {"S_T": 2, "S_V": 2, "S_C": 1}
    assert r["m2"].unit_ranks == {"S_T": 1, "S_V": None, "S_C": 2}
    assert r["m4"].unit_ranks == {"S_T": 2, "S_V": 1, "S_C": 3}
    assert r["m5"].unit_ranks == {"S_T": 1, "S_V": None, "S_C": 6}  # ranks use all 6, not the 3 kept
    assert r["m11"].unit_ranks == {"S_T": 1, "S_V": 2, "S_C": 2}  # tie: the earlier candidate first
    assert r["m3"].unit_ranks == {"S_T": None, "S_V": None, "S_C": None}


def test_truncated_link_results_are_refused():
    res = link_result(LINKED["m1"][3], nil=False, has_image=True)
    res.shortlist_size = 64  # linked with top_k < shortlist
    with pytest.raises(ValueError, match="top_k >= the shortlist"):
        analyze_link_results([res], ["E1"])


# ------------------------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------------------------


def test_summary_counts_and_ranking_metrics(records):
    s = summarize(records, n_bins=5)
    assert s["labels"] == {
        "correct": 3,
        "retrieval_miss": 2,
        "outranked": 3,
        "false_nil": 1,
        "missed_nil": 1,
        "correct_nil": 1,
    }
    assert (s["mentions"], s["in_kb"], s["nil_gold"], s["nil_answers"], s["with_image"]) == (11, 9, 2, 4, 7)
    assert s["accuracy"] == pytest.approx(4 / 11)
    # in-KB ranks: 1, 1, miss, 2, 6, 1, 1, miss, 2
    rk = s["ranking"]
    assert rk["H@1"] == pytest.approx(4 / 9)
    assert rk["H@3"] == pytest.approx(6 / 9) and rk["H@5"] == pytest.approx(6 / 9)
    assert rk["H@10"] == pytest.approx(7 / 9) and rk["H@20"] == pytest.approx(7 / 9)
    assert rk["MRR"] == pytest.approx((4 + 0.5 + 0.5 + 1 / 6) / 9)
    assert rk["MR"] == pytest.approx(2.0)  # (1+1+2+6+1+1+2) / 7 ranked golds
    assert (rk["count"], rk["ranked"], rk["unranked"]) == (9, 7, 2)
    assert s["recall_at_k"] == pytest.approx(
        {"1": 4 / 9, "5": 6 / 9, "10": 7 / 9, "20": 7 / 9, "50": 7 / 9, "shortlist": 7 / 9}
    )
    assert s["shortlist_size"] == {"min": 3, "max": 6}
    # first by S_T alone: m2 m5 m6 m9 m11; S_V: m4 m6 m9; S_C: m1 m6 m9 (out of 9 in-KB golds)
    assert s["per_unit_accuracy"] == pytest.approx({"S": 4 / 9, "S_T": 5 / 9, "S_V": 3 / 9, "S_C": 3 / 9})
    assert s["per_unit_applicable"] == {"S_T": 7, "S_V": 5, "S_C": 7}
    assert s["datasets"] == {"synth": 11} and s["model_versions"] == ["v1"]
    json.dumps(s, allow_nan=False)  # JSON-ready, no NaN


def test_reliability_bins_and_ece(records):
    rel = summarize(records, n_bins=5)["reliability"]
    # top S: m1 .90 ok, m2 .80 ok, m3 .85, m4 .80, m5 .75, m6 .45 ok, m7 .70, m8 .40, m9 .95 ok, m10 .30, m11 .45
    # normalised c = (S - .30) / .65; bin = floor(5c), 1.0 goes to the last bin
    assert rel["score_min"] == pytest.approx(0.30) and rel["score_max"] == pytest.approx(0.95)
    assert [b["count"] for b in rel["bins"]] == [2, 2, 0, 4, 3]
    acc = [b["accuracy"] for b in rel["bins"]]
    assert acc[2] is None
    assert [acc[i] for i in (0, 1, 3, 4)] == pytest.approx([0.0, 0.5, 0.25, 2 / 3])
    conf = {0: [0, 0.10], 1: [0.15, 0.15], 3: [0.40, 0.45, 0.50, 0.50], 4: [0.55, 0.60, 0.65]}  # S - .30
    mean_conf = {b: np.mean(v) / 0.65 for b, v in conf.items()}
    for b, mc in mean_conf.items():
        assert rel["bins"][b]["mean_confidence"] == pytest.approx(mc)
    ece = sum(len(conf[b]) / 11 * abs(acc[b] - mean_conf[b]) for b in conf)
    assert rel["ece"] == pytest.approx(ece)
    assert rel["bins"][4]["score_hi"] == pytest.approx(0.95) and rel["bins"][0]["lo"] == 0.0
    assert summarize([], n_bins=5)["reliability"]["ece"] is None


# ------------------------------------------------------------------------------------------------
# Filters and comparison
# ------------------------------------------------------------------------------------------------


def test_filters(records):
    ids = lambda rs: [r.mention_id for r in rs]
    assert ids(filter_records(records, label="outranked")) == ["m4", "m5", "m11"]
    assert ids(filter_records(records, label=["false_nil", "missed_nil"])) == ["m6", "m7"]
    assert ids(filter_records(records, label="outranked", has_image=True)) == ["m4", "m11"]
    assert ids(filter_records(records, has_image=False)) == ["m2", "m5", "m7", "m10"]
    other = analyse({"x1": LINKED["m1"]}, dataset="other")
    both = records + other
    assert ids(filter_records(both, dataset="other")) == ["x1"]
    assert len(filter_records(both, dataset="synth", label="correct")) == 3
    with pytest.raises(ValueError, match="unknown label"):
        filter_records(records, label="wrong")


def _version_b():
    b = dict(LINKED)
    b["m4"] = (
        "E4",
        True,
        False,
        [("E4", 0.85, 0.9, 0.9, 0.9), ("E5", 0.80, 0.9, 0.5, 1.0), ("E1", 0.60, 0.3, 0.4, 0.9)],
    )  # fixed
    b["m3"] = (
        "E3",
        True,
        False,
        [("E3", 0.90, 0.9, 0.9, 0.9), ("E4", 0.85, 0.8, 0.8, 0.9), ("E5", 0.70, 0.7, 0.7, 0.7)],
    )  # fixed
    b["m9"] = (
        "E1",
        True,
        False,
        [("E2", 0.97, 0.9, 0.9, 0.9), ("E1", 0.95, 0.95, 0.95, 0.95), ("E3", 0.4, 0.4, 0.4, 0.4)],
    )  # new error
    b["m7"] = (
        None,
        False,
        True,
        [("E1", 0.40, 0.4, None, 0.4), ("E2", 0.3, 0.3, None, 0.3), ("E3", 0.2, 0.2, None, 0.2)],
    )  # fixed
    del b["m11"]
    b["m12"] = ("E6", True, False, [("E6", 0.9, 0.9, 0.9, 0.9), ("E1", 0.1, 0.1, 0.1, 0.1), ("E2", 0.0, 0.0, 0.0, 0.0)])
    return analyse(b, version="v2")


def test_compare_two_versions(records):
    cmp = compare(records, _version_b())
    assert cmp["counts"] == {
        "fixed": 3,
        "new_error": 1,
        "unchanged_correct": 3,
        "unchanged_error": 3,
        "only_in_a": 1,
        "only_in_b": 1,
    }
    status = {row["mention_id"]: row["status"] for row in cmp["rows"]}
    assert status == {
        "m1": "unchanged_correct",
        "m2": "unchanged_correct",
        "m3": "fixed",
        "m4": "fixed",
        "m5": "unchanged_error",
        "m6": "unchanged_error",
        "m7": "fixed",
        "m8": "unchanged_correct",
        "m9": "new_error",
        "m10": "unchanged_error",
    }
    assert cmp["only_in_a"] == [{"dataset": "synth", "mention_id": "m11", "label": "outranked"}]
    assert cmp["only_in_b"] == [{"dataset": "synth", "mention_id": "m12", "label": "correct"}]
    m9 = next(row for row in cmp["rows"] if row["mention_id"] == "m9")
    assert (m9["label_a"], m9["label_b"], m9["predicted_a"], m9["predicted_b"]) == ("correct", "outranked", "E1", "E2")
    assert (m9["gold_rank_a"], m9["gold_rank_b"], m9["outranked_by_b"]) == (1, 2, "")
    assert (cmp["version_a"], cmp["version_b"]) == ("v1", "v2")
    table = comparison_table(cmp)
    assert len(table) == 12
    assert table["status"].value_counts().to_dict() == {
        "unchanged_correct": 3,
        "fixed": 3,
        "unchanged_error": 3,
        "new_error": 1,
        "only_in_a": 1,
        "only_in_b": 1,
    }
    assert str(table["gold_rank_b"].dtype) == "Int64"
    fig = comparison_figure(cmp)
    assert isinstance(fig, go.Figure) and list(fig.data[0].y) == [3, 1, 3, 3, 1, 1]


def test_compare_refuses_different_golds_and_duplicates(records):
    other = analyse({"m1": ("E2",) + LINKED["m1"][1:]})
    with pytest.raises(ValueError, match="gold 'E1' in A but 'E2' in B"):
        compare(records, other)
    with pytest.raises(ValueError, match="twice"):
        compare(records + records[:1], records)


# ------------------------------------------------------------------------------------------------
# Tables, CSV, JSONL
# ------------------------------------------------------------------------------------------------


def test_records_table_and_csv_round_trip(records, tmp_path):
    df = records_table(records)
    assert list(df.columns) == RECORD_COLUMNS and len(df) == 11
    assert df.loc[df.mention_id == "m4", "outranked_by"].item() == "S_T, S_C"
    assert df.loc[df.mention_id == "m4", "gold_S_V"].item() == pytest.approx(0.90)
    assert df.loc[df.mention_id == "m4", "margin"].item() == pytest.approx(0.10)
    assert math.isnan(df.loc[df.mention_id == "m2", "top_S_V"].item())
    # sortable: gold ranks are nullable integers, unscored golds sort last
    ranked = df.sort_values("gold_rank", na_position="last", kind="stable")
    assert ranked["mention_id"].tolist()[-4:] == ["m3", "m7", "m8", "m10"]
    assert ranked["gold_rank"].tolist()[:7] == [1, 1, 1, 1, 2, 2, 6]
    path = to_csv(df, tmp_path / "out" / "records.csv")
    back = pd.read_csv(path, dtype={"mention_id": str})
    assert list(back.columns) == RECORD_COLUMNS
    assert back["label"].tolist() == df["label"].tolist()
    assert back["gold_rank"].astype("Int64").tolist() == df["gold_rank"].tolist()
    assert np.allclose(back["top_S"], df["top_S"]) and back["has_image"].tolist() == df["has_image"].tolist()
    assert back["gold"].fillna("-").tolist() == df["gold"].fillna("-").tolist()
    assert not list(tmp_path.joinpath("out").glob(".*tmp*"))  # no temporary file left


def test_jsonl_round_trip(records, tmp_path):
    path = save_records(records, tmp_path / "run.jsonl")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 11
    back = load_records(path)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]
    assert summarize(back) == summarize(records)


def test_malformed_jsonl_names_file_line_and_field(records, tmp_path):
    good = json.dumps(records[0].to_dict())
    bad = records[3].to_dict()
    bad["gold_rank"] = "two"
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as exc:
        load_records(path)
    msg = str(exc.value)
    assert str(path) in msg and "line 3" in msg and "'gold_rank'" in msg
    assert isinstance(exc.value, ValueError)

    cases = [  # (mutation, field named in the message)
        (lambda d: d.update(label="wrong"), "label"),
        (lambda d: d.update(label="correct"), "label"),  # contradicts the facts (m4 is outranked)
        (lambda d: d.pop("has_image"), "has_image"),
        (lambda d: d["candidates"][1].update(S=None), "candidates[1].S"),
        (lambda d: d.update(outranked_by=["S_X"]), "outranked_by"),
        (lambda d: d["unit_ranks"].update(S_V=1.5), "unit_ranks.S_V"),
    ]
    for mutate, fld in cases:
        d = records[3].to_dict()
        mutate(d)
        path.write_text(json.dumps(d) + "\n", encoding="utf-8")
        with pytest.raises(DataFormatError, match=f"line 1, field '{fld}'".replace("[", r"\[").replace("]", r"\]")):
            load_records(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 1: invalid JSON"):
        load_records(path)
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def test_figures(records):
    s = summarize(records, n_bins=5)
    fig = label_counts_figure(s)
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    assert list(fig.data[0].x) == list(LABELS) and list(fig.data[0].y) == [3, 2, 3, 1, 1, 1]
    fig = recall_at_k_figure(s)
    assert len(fig.data[0].x) == 6 and fig.data[0].y[-1] == pytest.approx(7 / 9)
    fig = reliability_figure(s)
    assert isinstance(fig.data[0], go.Bar) and len(fig.data[0].x) == 5
    assert fig.data[0].y[1] == pytest.approx(0.5) and fig.data[0].y[2] is None
    assert isinstance(fig.data[1], go.Scatter) and list(fig.data[1].y) == [0, 1]  # the diagonal
    fig = unit_accuracy_figure(records)  # records work too
    assert len(fig.data[0].x) == 4 and list(fig.data[0].y) == pytest.approx([4 / 9, 5 / 9, 3 / 9, 3 / 9])


# ------------------------------------------------------------------------------------------------
# Full-KB score dumps
# ------------------------------------------------------------------------------------------------

NAN = np.nan
DUMP_S = np.array(
    [
        [0.9, 0.5, 0.9, 0.1, 0.2, 0.3],  # gold E1 (0): tied with E3, placed first -> rank 1, correct
        [0.9, 0.5, 0.9, 0.1, 0.2, 0.3],  # gold E3 (2): the tie goes to E1 -> rank 2, outranked
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # gold E5 (4): rank 2; top .6 < .65 -> NIL answered, still outranked
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.5],  # gold E6 (5): rank 1, top .5 < .65 -> false_nil
        [0.7, 0.1, 0.1, 0.1, 0.1, 0.1],  # gold NIL: top .7 -> missed_nil
        [0.6, 0.1, 0.1, 0.1, 0.1, 0.1],  # gold NIL: top .6 < .65 -> correct_nil
    ],
    dtype=np.float32,
)
DUMP_ST = np.array(
    [
        [0.2, 0.9, 0.1, 0.1, 0.1, 0.1],  # gold E1: rank 2
        [0.5, 0.1, 0.8, 0.1, 0.1, 0.1],  # gold E3: rank 1; E1 .5 < .8 -> S_T does not prefer the top
        [0.1, 0.1, 0.1, 0.1, 0.9, 0.1],  # gold E5: rank 1
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # gold E6: all tied -> rank 6 (KB order)
        [0.1] * 6,
        [0.1] * 6,
    ],
    dtype=np.float32,
)
DUMP_SV = np.array(
    [
        [0.5, 0.4, 0.3, 0.2, 0.1, 0],
        [NAN] * 6,  # no image: S_V does not apply
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.9],  # gold E5 rank 2; top E6 .9 > .5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [NAN] * 6,
        [NAN] * 6,
    ],
    dtype=np.float32,
)
DUMP_SC = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # gold E1 rank 6
        [0.9, 0.1, 0.2, 0.1, 0.1, 0.1],  # gold E3 rank 2; top E1 .9 > .2
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # gold E5: tie with E1..E4 before it -> rank 5; E6 .1 not > .1
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.9],
        [0.1] * 6,
        [0.1] * 6,
    ],
    dtype=np.float32,
)
DUMP_GOLD = np.array([0, 2, 4, 5, -1, -1])


def dump_mentions():
    return [
        Mention(
            id=f"d{i}",
            sentence=f"sentence {i}",
            mention=f"mention {i}",
            answer=KB_IDS[g] if g >= 0 else None,
            image="/img.png" if i % 2 == 0 else None,
        )
        for i, g in enumerate(DUMP_GOLD)
    ]


def test_score_arrays_labels_ranks_units():
    recs = analyze_score_arrays(
        DUMP_S,
        DUMP_ST,
        DUMP_SV,
        DUMP_SC,
        DUMP_GOLD,
        KB_IDS,
        kb_names=[NAMES[e] for e in KB_IDS],
        mentions=dump_mentions(),
        dataset="dump",
        model_version="v-dump",
        nil_threshold=0.65,
        top_k=3,
    )
    assert [r.label for r in recs] == ["correct", "outranked", "outranked", "false_nil", "missed_nil", "correct_nil"]
    assert [r.gold_rank for r in recs] == [1, 2, 2, 1, None, None]
    assert [r.retrieved for r in recs] == [True, True, True, True, False, False]
    assert [r.predicted for r in recs] == ["E1", "E1", None, None, "E1", None]
    assert [r.has_image for r in recs] == [True, False, True, False, True, False]
    assert {r.shortlist_size for r in recs} == {6}
    assert [r.unit_ranks for r in recs[:4]] == [
        {"S_T": 2, "S_V": 1, "S_C": 6},
        {"S_T": 1, "S_V": None, "S_C": 2},
        {"S_T": 1, "S_V": 2, "S_C": 5},
        {"S_T": 6, "S_V": 1, "S_C": 1},
    ]
    assert [r.outranked_by for r in recs[:4]] == [[], ["S_C"], ["S_V"], []]
    c = recs[0].candidates  # stable order: E1 .9, E3 .9, E2 .5, then E6 .3 (margin of the 3rd)
    assert [x["entity_id"] for x in c] == ["E1", "E3", "E2"] and [x["rank"] for x in c] == [1, 2, 3]
    assert [x["margin"] for x in c] == pytest.approx([0.0, 0.4, 0.2])
    assert c[0]["name"] == "Entity 1" and c[0]["S_T"] == pytest.approx(0.2) and c[0]["S_V"] == pytest.approx(0.5)
    assert recs[1].candidates[0]["S_V"] is None and recs[1].gold_scores["S_V"] is None
    assert recs[1].gold_scores["S"] == pytest.approx(0.9)
    s = summarize(recs)
    assert s["labels"] == {
        "correct": 1,
        "retrieval_miss": 0,
        "outranked": 2,
        "false_nil": 1,
        "missed_nil": 1,
        "correct_nil": 1,
    }
    assert s["recall_at_k"]["shortlist"] == 1.0 and s["ranking"]["MRR"] == pytest.approx(0.75)
    assert s["per_unit_accuracy"] == pytest.approx({"S": 0.5, "S_T": 0.5, "S_V": 0.5, "S_C": 0.25})
    # without a threshold nothing is NIL: the false NIL becomes correct, the NIL golds both missed
    plain = analyze_score_arrays(DUMP_S, None, None, None, DUMP_GOLD, KB_IDS)
    assert [r.label for r in plain] == ["correct", "outranked", "outranked", "correct", "missed_nil", "missed_nil"]
    assert plain[0].unit_ranks == {"S_T": None, "S_V": None, "S_C": None} and plain[0].mention_id == "0"


def test_score_arrays_match_evaluation_ranks_in_chunks():
    rng = np.random.default_rng(0)
    M, N = 40, 300
    S = rng.integers(0, 20, size=(M, N)).astype(np.float32)  # coarse scores: many ties
    units = [rng.normal(size=(M, N)).astype(np.float32) for _ in range(3)]
    gold = rng.integers(0, N, size=M)
    ids = [f"Q{j}" for j in range(N)]
    recs = analyze_score_arrays(S, *units, gold, ids, rows_per_chunk=7, top_k=5)
    expected = ranks_from_scores(torch.from_numpy(S), torch.from_numpy(gold)).numpy()
    assert [r.gold_rank for r in recs] == expected.tolist()
    for u, arr in zip(UNITS, units):
        exp_u = ranks_from_scores(torch.from_numpy(arr), torch.from_numpy(gold)).numpy()
        assert [r.unit_ranks[u] for r in recs] == exp_u.tolist()
    for r, row in zip(recs, S):
        order = np.argsort(-row, kind="stable")[:5]
        assert [c["entity_id"] for c in r.candidates] == [ids[j] for j in order]


def test_score_arrays_reject_bad_input():
    with pytest.raises(ValueError, match="S_T has shape"):
        analyze_score_arrays(DUMP_S, DUMP_ST[:2], None, None, DUMP_GOLD, KB_IDS)
    with pytest.raises(ValueError, match="outside the KB"):
        analyze_score_arrays(DUMP_S, None, None, None, [0, 1, 2, 3, 4, 6], KB_IDS)
    bad = DUMP_S.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN for mention 3"):
        analyze_score_arrays(bad, None, None, None, DUMP_GOLD, KB_IDS)


def test_load_score_dump_memory_maps(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, S=DUMP_S, S_T=DUMP_ST, gold=DUMP_GOLD, rank=np.ones(6, dtype=np.int64))
    arrays = load_score_dump(p)
    assert isinstance(arrays["S"], np.memmap) and np.array_equal(arrays["S"], DUMP_S)
    assert np.array_equal(arrays["gold"], DUMP_GOLD) and np.array_equal(arrays["S_T"], DUMP_ST)
    np.savez_compressed(p, S=DUMP_S, gold=DUMP_GOLD)  # compressed: read into memory
    arrays = load_score_dump(p)
    assert not isinstance(arrays["S"], np.memmap) and np.array_equal(arrays["S"], DUMP_S)
    np.savez(p, S=DUMP_S)
    with pytest.raises(ValueError, match="no array gold"):
        load_score_dump(p)


# ------------------------------------------------------------------------------------------------
# analyze_linker (duck-typed linker: no backbone) and the CLI
# ------------------------------------------------------------------------------------------------


class FakeLinker:
    """Answers link_batch from a table keyed by mention text; records how it was called."""

    shortlist = 3

    def __init__(self, table):
        self.table = table
        self.index = type("Idx", (), {"position": {e: i for i, e in enumerate(KB_IDS)}, "fingerprint": "fp123"})()
        self.calls = []

    def link_batch(self, queries, top_k=10, explain=True):
        self.calls.append((len(queries), top_k, explain, [q["mention"] for q in queries]))
        return [
            link_result(
                self.table[q["sentence"]][3],
                nil=self.table[q["sentence"]][2],
                has_image=q["image"] is not None,
                mention=q["sentence"],
            )
            for q in queries
        ]


def test_analyze_linker_batches_and_golds():
    ids = ["m1", "m4", "m6", "m7", "m9"]
    mentions = [
        Mention(
            id=i,
            sentence=i,
            mention=i,
            answer=LINKED[i][0] or "E99",  # m7: gold outside the KB
            image="/x.png" if LINKED[i][1] else None,
            start=0 if i == "m1" else None,
            end=2 if i == "m1" else None,
        )
        for i in ids
    ]
    lk = FakeLinker(LINKED)
    recs = analyze_linker(lk, mentions, dataset="synth", batch_size=2, top_k=2)
    assert [c[:3] for c in lk.calls] == [(2, 3, False), (2, 3, False), (1, 3, False)]
    assert lk.calls[0][3] == [(0, 2), "m4"]  # a known span is passed as (start, end)
    assert [r.label for r in recs] == ["correct", "outranked", "false_nil", "missed_nil", "correct"]
    assert recs[3].gold is None  # E99 is not in the index: NIL for this KB
    assert all(r.model_version == "fp123" and len(r.candidates) == 2 for r in recs)


@pytest.fixture()
def jsonl_dataset(tmp_path):
    from PIL import Image

    from mimic.data.jsonl import write_jsonl_dataset

    img = tmp_path / "img.png"
    Image.new("RGB", (4, 4), "red").save(img)
    kb = KnowledgeBase([Entity(id=e, name=NAMES[e], text=f"about {e}") for e in KB_IDS])
    mentions = [
        Mention(
            id=f"d{i}",
            sentence=f"sentence {i} mention {i}",
            mention=f"mention {i}",
            answer=KB_IDS[g],
            image=str(img) if i == 0 else None,
        )
        for i, g in enumerate(DUMP_GOLD[:4])
    ]
    return write_jsonl_dataset(Dataset(kb, {"test": mentions}), tmp_path / "data")


def parse(argv):
    ap = argparse.ArgumentParser()
    add_analyze_parser(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def test_cli_on_a_score_dump(tmp_path, jsonl_dataset, capsys):
    npz = tmp_path / "scores.npz"
    np.savez(
        npz,
        S=DUMP_S[:4],
        S_T=DUMP_ST[:4],
        S_V=DUMP_SV[:4],
        S_C=DUMP_SC[:4],
        gold=DUMP_GOLD[:4],
        rank=np.array([1, 2, 2, 1]),
    )
    out = tmp_path / "out"
    args = parse(
        [
            "analyze",
            "--scores",
            str(npz),
            "--data",
            str(jsonl_dataset),
            "--split",
            "test",
            "--nil-threshold",
            ".65",
            "--bins",
            "4",
            "--json",
            str(out / "summary.json"),
            "--csv",
            str(out / "records.csv"),
            "--out-records",
            str(out / "records.jsonl"),
        ]
    )
    assert args.func is cmd_analyze
    summary = cmd_analyze(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed == summary == json.loads((out / "summary.json").read_text())
    assert summary["labels"] == {
        "correct": 1,
        "retrieval_miss": 0,
        "outranked": 2,
        "false_nil": 1,
        "missed_nil": 0,
        "correct_nil": 0,
    }
    assert summary["ranking"]["H@1"] == pytest.approx(0.5) and summary["ranking"]["MR"] == pytest.approx(1.5)
    assert summary["per_unit_accuracy"] == pytest.approx({"S": 0.5, "S_T": 0.5, "S_V": 0.5, "S_C": 0.25})
    assert summary["datasets"] == {"data": 4} and summary["model_versions"] == ["scores"]
    assert summary["with_image"] == 1 and summary["reliability"]["n_bins"] == 4
    recs = load_records(out / "records.jsonl")
    assert [r.mention_id for r in recs] == ["d0", "d1", "d2", "d3"] and recs[0].mention == "mention 0"
    assert [r.gold_rank for r in recs] == [1, 2, 2, 1]  # the dump's own ranks
    assert pd.read_csv(out / "records.csv")["label"].tolist() == [r.label for r in recs]

    # the saved records compared against a baseline where d1 was right and d0 wrong
    base = [MentionAnalysis(**{**r.to_dict(), "model_version": "old"}) for r in recs]
    base[0].label, base[0].gold_rank = "outranked", 2
    base[1].label, base[1].gold_rank = "correct", 1
    save_records(base, tmp_path / "base.jsonl")
    summary = cmd_analyze(
        parse(
            [
                "analyze",
                "--records",
                str(out / "records.jsonl"),
                "--compare",
                str(tmp_path / "base.jsonl"),
                "--compare-csv",
                str(out / "cmp.csv"),
                "--model-version",
                "new",
            ]
        )
    )
    assert summary["comparison"] == {
        "version_a": "old",
        "version_b": "new",
        "fixed": 1,
        "new_error": 1,
        "unchanged_correct": 0,
        "unchanged_error": 2,
        "only_in_a": 0,
        "only_in_b": 0,
    }
    assert pd.read_csv(out / "cmp.csv")["status"].tolist() == [
        "fixed",
        "new_error",
        "unchanged_error",
        "unchanged_error",
    ]


def test_cli_bad_input(tmp_path, jsonl_dataset):
    npz = tmp_path / "scores.npz"
    with pytest.raises(ValueError, match="exactly one input"):
        cmd_analyze(parse(["analyze"]))
    with pytest.raises(ValueError, match="exactly one input"):
        cmd_analyze(parse(["analyze", "--records", "a.jsonl", "--scores", str(npz)]))
    with pytest.raises(ValueError, match="needs --data"):
        cmd_analyze(parse(["analyze", "--scores", str(npz)]))
    with pytest.raises(FileNotFoundError, match="score dump not found"):
        cmd_analyze(parse(["analyze", "--scores", str(npz), "--data", str(jsonl_dataset)]))
    gold = DUMP_GOLD[:4].copy()
    gold[2] = 3
    np.savez(npz, S=DUMP_S[:4], gold=gold)
    with pytest.raises(ValueError, match=r"does not match split 'test'.*'d2'"):
        cmd_analyze(parse(["analyze", "--scores", str(npz), "--data", str(jsonl_dataset)]))
    np.savez(npz, S=DUMP_S[:4, :5], gold=DUMP_GOLD[:4])
    with pytest.raises(ValueError, match="5 entity columns"):
        cmd_analyze(parse(["analyze", "--scores", str(npz), "--data", str(jsonl_dataset)]))
    with pytest.raises(ValueError, match="needs --index"):
        cmd_analyze(parse(["analyze", "--checkpoint", "ck", "--data", str(jsonl_dataset)]))
