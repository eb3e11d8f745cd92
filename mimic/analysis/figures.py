"""Plotly figures of an error analysis: labels, recall@K, reliability, per-unit accuracy, comparison.

Each takes a `summarize` result (or the records, summarised on the spot).
"""

from __future__ import annotations

import plotly.graph_objects as go

from mimic.analysis.records import COMPARE_STATUSES, LABELS, RECALL_KS, SCORES
from mimic.analysis.summary import summarize


def _summary_of(x) -> dict:
    return x if isinstance(x, dict) else summarize(x)


def label_counts_figure(summary_or_records):
    """Bars: how many mentions carry each label (all six, in pipeline order)."""

    labels = _summary_of(summary_or_records)["labels"]
    colours = {
        "correct": "#54A24B",
        "correct_nil": "#88D27A",
        "retrieval_miss": "#E45756",
        "outranked": "#F58518",
        "false_nil": "#B279A2",
        "missed_nil": "#9D755D",
    }
    fig = go.Figure(
        go.Bar(
            x=list(LABELS),
            y=[labels[k] for k in LABELS],
            marker_color=[colours[k] for k in LABELS],
            text=[labels[k] for k in LABELS],
            textposition="outside",
            hovertemplate="%{x}: %{y}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Mentions per label", yaxis_title="mentions", height=340, margin=dict(l=40, r=20, t=50, b=40)
    )
    return fig


def recall_at_k_figure(summary_or_records):
    """Bars: recall@K of the candidates (K = 1, 5, 10, 20, 50, the shortlist)."""

    recall = _summary_of(summary_or_records)["recall_at_k"]
    keys = [str(k) for k in RECALL_KS] + ["shortlist"]
    ys = [recall[k] for k in keys]
    fig = go.Figure(
        go.Bar(
            x=[f"@{k}" for k in keys],
            y=ys,
            marker_color="#4C78A8",
            text=[f"{y:.3f}" if y is not None else "n/a" for y in ys],
            textposition="outside",
            hovertemplate="recall%{x}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Recall@K of the candidates (in-KB golds)",
        yaxis_title="recall",
        height=340,
        yaxis_range=[0, 1.1],
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return fig


def reliability_figure(summary_or_records):
    """Reliability diagram: accuracy of the top candidate per confidence bin, with the diagonal."""

    rel = _summary_of(summary_or_records)["reliability"]
    bins = rel["bins"]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[(b["lo"] + b["hi"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[b["hi"] - b["lo"] for b in bins],
            name="accuracy",
            marker_color="#4C78A8",
            customdata=[[b["count"], b["score_lo"], b["score_hi"]] for b in bins],
            hovertemplate="accuracy %{y:.3f}<br>%{customdata[0]} mentions<br>"
            "S in [%{customdata[1]:.4f}, %{customdata[2]:.4f})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line=dict(dash="dash", color="#888888")
        )
    )
    ece = rel["ece"]
    fig.update_layout(
        title="Reliability of the top score" + (f" (ECE {ece:.3f})" if ece is not None else ""),
        xaxis_title="top S, min-max normalised over the run",
        yaxis_title="top-1 accuracy",
        xaxis_range=[0, 1],
        yaxis_range=[0, 1.05],
        height=380,
        bargap=0.05,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return fig


def unit_accuracy_figure(summary_or_records):
    """Bars: share of in-KB golds that each unit alone (and S, combined) ranks first."""

    acc = _summary_of(summary_or_records)["per_unit_accuracy"]
    keys = list(SCORES)
    names = {"S": "S (combined)", "S_T": "S_T text", "S_V": "S_V image", "S_C": "S_C cross-modal"}
    ys = [acc[k] for k in keys]
    fig = go.Figure(
        go.Bar(
            x=[names[k] for k in keys],
            y=ys,
            marker_color=["#333333", "#4C78A8", "#F58518", "#54A24B"],
            text=[f"{y:.3f}" if y is not None else "n/a" for y in ys],
            textposition="outside",
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Gold ranked first by each unit alone",
        yaxis_title="accuracy",
        yaxis_range=[0, 1.1],
        height=340,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return fig


def comparison_figure(comparison: dict):
    """Bars: fixed / new errors / unchanged, plus the mentions found in one run only."""

    keys = list(COMPARE_STATUSES) + ["only_in_a", "only_in_b"]
    counts = comparison["counts"]
    fig = go.Figure(
        go.Bar(
            x=keys,
            y=[counts[k] for k in keys],
            text=[counts[k] for k in keys],
            textposition="outside",
            marker_color=["#54A24B", "#E45756", "#88D27A", "#F58518", "#BBBBBB", "#BBBBBB"],
        )
    )
    fig.update_layout(
        title=f"{comparison['version_a'] or 'A'} → {comparison['version_b'] or 'B'}",
        yaxis_title="mentions",
        height=340,
        margin=dict(l=40, r=20, t=50, b=40),
    )
    return fig
