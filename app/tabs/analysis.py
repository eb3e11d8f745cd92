"""The Analysis tab: where the served model fails on the corrections collected so far (ELEVANT-style
labels), and what a newer version fixed (two runs compared). A table row opens the mention in
Link/Inspect (wired by app/ui.py)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from db import StoreError
from mimic.analysis.figures import (
    comparison_figure,
    label_counts_figure,
    recall_at_k_figure,
    reliability_figure,
    unit_accuracy_figure,
)
from mimic.analysis.records import load_records, save_records
from mimic.analysis.summary import compare, filter_records, summarize
from mimic.analysis.tables import comparison_table, records_table, to_csv
from mimic.serving.service import safe_name

from ..common import PRIVATE, Shared, UserError, message, upload_path, user_errors, username_of
from ..context import AppContext

LABELS = ["correct", "retrieval_miss", "outranked", "false_nil", "missed_nil", "correct_nil"]


# -- handlers -------------------------------------------------------------------------------------
def analysis_dir(ctx: AppContext) -> Path:
    return ctx.config.data_dir / "analysis"


def corrections_as_mentions(ctx: AppContext) -> tuple[list, dict]:
    """One gold per corrected mention, by the store's gold rule (`AnnotationStore.resolved`, the
    one training uses): a NIL gold has answer None; ambiguous and tied mentions are left out.
    -> (mentions with `answer`, {mention uid: its source})"""
    gold = ctx.store.gold_mentions()
    return [g.mention for g in gold], {g.mention.id: (g.source or "corrections") for g in gold}


@user_errors
def analyze_corrections(ctx: AppContext, username: str | None = None, progress=None) -> str:
    """Analyse the served model on the corrections collected so far; the records are saved under
    DATA_DIR/analysis/ and the path returned (pick it later to compare versions). Signed-in users."""
    ctx.require("analyze", username)
    mentions, source = corrections_as_mentions(ctx)
    if not mentions:
        raise UserError("no corrections yet: annotate some mentions (Annotate tab) first")
    groups: dict[str, list] = {}
    for m in mentions:
        groups.setdefault(source[m.id], []).append(m)
    records = []
    for i, (name, ms) in enumerate(sorted(groups.items())):
        if progress:
            progress(i / len(groups), desc=f"linking {len(ms)} mentions from {name}")
        try:
            records += ctx.service.analyze(ms, dataset=name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{now % 1:.3f}"[1:]
    path = analysis_dir(ctx) / f"{stamp}_{safe_name(ctx.service.served.version)}.jsonl"
    n = 1
    while path.exists():  # never overwrite an earlier run
        n += 1
        path = path.with_name(f"{stamp}-{n}_{safe_name(ctx.service.served.version)}.jsonl")
    save_records(records, path)
    ctx.analysis_records[str(path)] = records
    return str(path)


def analysis_runs(ctx: AppContext) -> list[tuple[str, str]]:
    """Saved analysis runs, newest first: (label, path)."""
    d = analysis_dir(ctx)
    files = sorted(d.glob("*.jsonl"), key=lambda f: (f.stat().st_mtime, f.name), reverse=True) if d.is_dir() else []
    return [(f.stem.replace("_", " · ", 1), str(f)) for f in files]


@user_errors
def load_analysis(ctx: AppContext, path: str) -> list:
    if not path:
        raise UserError("choose an analysis run (or analyse the corrections first)")
    if path not in ctx.analysis_records:
        try:
            ctx.analysis_records[path] = load_records(path)
        except (ValueError, OSError) as exc:
            raise UserError(f"cannot read {Path(path).name}: {exc}") from None
    return ctx.analysis_records[path]


@dataclass
class AnalysisView:
    summary: dict
    figures: dict  # name -> plotly Figure
    table: pd.DataFrame
    csv_path: str


@user_errors
def analysis_view(ctx: AppContext, path: str, labels=None, dataset=None, has_image: str = "any") -> AnalysisView:
    records = load_analysis(ctx, path)
    summary = summarize(records)
    img = {"any": None, "with image": True, "without image": False}.get(has_image or "any")
    shown = filter_records(records, label=labels or None, dataset=dataset or None, has_image=img)
    table = records_table(shown)
    out = Path(tempfile.mkdtemp(prefix="mimic-analysis-")) / f"{Path(path).stem}.csv"
    to_csv(table, out)
    figs = {
        "labels": label_counts_figure(summary),
        "recall": recall_at_k_figure(summary),
        "units": unit_accuracy_figure(summary),
        "reliability": reliability_figure(summary),
    }
    return AnalysisView(summary, figs, table, str(out))


@user_errors
def analysis_compare(ctx: AppContext, path_a: str, path_b: str):
    """-> (comparison dict, table, csv path, figure): A is the baseline, B the newer run."""
    if not path_a or not path_b:
        raise UserError("choose two analysis runs to compare")
    try:
        cmp = compare(load_analysis(ctx, path_a), load_analysis(ctx, path_b))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    table = comparison_table(cmp)
    out = Path(tempfile.mkdtemp(prefix="mimic-compare-")) / "comparison.csv"
    to_csv(table, out)
    return cmp, table, str(out), comparison_figure(cmp)


EMPTY_STATE = (
    "No analysis run yet. Press **Analyse the served model on the corrections** once some mentions "
    "are annotated (Annotate or Link tab), or load records written by `python -m mimic analyze --out-records`."
)


def view_outputs(ctx: AppContext, path: str | None, labels=None, dataset=None, has_image: str = "any") -> tuple:
    """The values of the tab's view outputs (message, summary, four figures, table, CSV, the dataset
    filter, the results' visibility). No run chosen (a fresh start): the empty state, a plain note
    and nothing else; a run that cannot be read: the error, nothing else."""
    hidden = (None,) * 7 + (gr.update(), gr.update(visible=False))
    if not path:
        return (message(EMPTY_STATE),) + hidden
    try:
        v = analysis_view(ctx, path, labels, dataset, has_image)
    except UserError as exc:
        return (message(str(exc), "error"),) + hidden
    f = v.figures
    datasets = sorted(v.summary.get("datasets", {}))
    return (
        message(f"{len(v.table)} of {v.summary['mentions']} mentions shown", "info"),
        v.summary,
        f["labels"],
        f["units"],
        f["recall"],
        f["reliability"],
        v.table,
        v.csv_path,
        gr.update(choices=[("all", "")] + [(d, d) for d in datasets], value=dataset if dataset in datasets else ""),
        gr.update(visible=True),
    )


def analysis_mention(ctx: AppContext, path: str, mention_id: str) -> dict | None:
    """The sentence, span and image of an analysed mention (to open it in Link/Inspect)."""
    rec = next((r for r in load_analysis(ctx, path) if str(r.mention_id) == str(mention_id)), None)
    if rec is None:
        return None
    image: str | None = None
    start: int | None
    end: int | None
    try:
        m = ctx.store.get_mention(str(mention_id))
        image, start, end = m.image_path, m.start, m.end
    except StoreError:
        start = end = None
    return {
        "sentence": rec.sentence,
        "mention": rec.mention,
        "start": start,
        "end": end,
        "image": image,
        "gold": rec.gold,
        "predicted": rec.predicted,
    }


# -- the tab --------------------------------------------------------------------------------------
class AnalysisTab:
    """The Analysis tab's components and events."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Analysis", id="analysis", elem_id="tab_analysis"):
            gr.Markdown(
                "Where the model fails (ELEVANT-style labels: retrieval miss, outranked and by which "
                "unit, NIL errors) and what a new version fixed. Analyse the served model on the "
                "corrections collected so far, or load a run from `python -m mimic analyze --out-records`."
            )
            with gr.Row():
                self.analyse_button = gr.Button(
                    "Analyse the served model on the corrections", variant="primary", elem_id="analysis_run"
                )
                self.upload = gr.File(label="or load records (JSONL)", file_types=[".jsonl"], elem_id="analysis_upload")
            with gr.Row():
                self.run = gr.Dropdown(label="Run", choices=[], elem_id="analysis_select", scale=3)
                self.labels = gr.Dropdown(
                    label="Labels", multiselect=True, elem_id="analysis_labels", scale=2, choices=LABELS
                )
                self.dataset = gr.Dropdown(label="Dataset", choices=[], elem_id="analysis_dataset", scale=1)
                self.has_image = gr.Radio(
                    ["any", "with image", "without image"],
                    value="any",
                    label="Image",
                    elem_id="analysis_image",
                    scale=1,
                )
            self.msg = gr.Markdown(EMPTY_STATE, elem_id="analysis_msg")
            # shown once a run is chosen: a fresh start has only the note above (`view_outputs`)
            with gr.Column(visible=False, elem_id="analysis_results") as self.results:
                self.summary = gr.JSON(label="Summary", elem_id="analysis_summary")
                with gr.Row():
                    self.fig_labels = gr.Plot(elem_id="analysis_fig_labels")
                    self.fig_units = gr.Plot(elem_id="analysis_fig_units")
                with gr.Row():
                    self.fig_recall = gr.Plot(elem_id="analysis_fig_recall")
                    self.fig_reliability = gr.Plot(elem_id="analysis_fig_reliability")
                self.table = gr.Dataframe(
                    label="Mentions (click a row to open it in Inspect)",
                    interactive=False,
                    elem_id="analysis_table",
                    max_height=420,
                    show_search="filter",
                )
                self.csv = gr.File(label="Table as CSV", elem_id="analysis_csv")
            with gr.Accordion("Compare two runs (A = baseline, B = newer)", open=False):
                with gr.Row():
                    self.run_a = gr.Dropdown(label="A", choices=[], elem_id="analysis_compare_a")
                    self.run_b = gr.Dropdown(label="B", choices=[], elem_id="analysis_compare_b")
                    self.compare_button = gr.Button("Compare", elem_id="analysis_compare")
                self.compare_counts = gr.JSON(label="Fixed, new errors, unchanged", elem_id="analysis_compare_counts")
                self.compare_fig = gr.Plot(elem_id="analysis_compare_fig")
                self.compare_table = gr.Dataframe(
                    interactive=False, elem_id="analysis_compare_table", max_height=420, show_search="filter"
                )
                self.compare_csv = gr.File(label="Comparison as CSV", elem_id="analysis_compare_csv")

    def _wire(self):
        s = self.shared
        runs_out = [self.run, self.run_a, self.run_b]
        filters = [self.run, self.labels, self.dataset, self.has_image]
        view_out = [
            self.msg,
            self.summary,
            self.fig_labels,
            self.fig_units,
            self.fig_recall,
            self.fig_reliability,
            self.table,
            self.csv,
            self.dataset,
            self.results,
        ]
        self.analyse_button.click(self.analyse, None, runs_out + [self.msg], **s.inference, **PRIVATE)
        self.upload.upload(self.load_upload, self.upload, runs_out + [self.msg], **PRIVATE)
        gr.on([f.change for f in filters], self.show, filters, view_out, **PRIVATE)
        self.compare_button.click(
            self.compare,
            [self.run_a, self.run_b],
            [self.compare_counts, self.compare_fig, self.compare_table, self.compare_csv],
            **PRIVATE,
        )
        s.demo.load(self.runs_update, None, runs_out, **PRIVATE)

    def show(self, path, labels, dataset, img):
        return view_outputs(self.ctx, path, labels, dataset, img)

    def runs_update(self, selected=None):
        runs = analysis_runs(self.ctx)
        value = selected or (runs[0][1] if runs else None)
        return (gr.update(choices=runs, value=value), gr.update(choices=runs), gr.update(choices=runs, value=value))

    def analyse(self, request: gr.Request, progress=gr.Progress()):
        try:
            path = analyze_corrections(self.ctx, username_of(request), progress=progress)
        except UserError as exc:
            return (gr.update(), gr.update(), gr.update(), message(str(exc), "error"))
        return self.runs_update(path) + (
            message(
                f"Analysed {len(load_analysis(self.ctx, path))} corrected mentions "
                f"with {self.ctx.service.served.version}",
                "ok",
            ),
        )

    def load_upload(self, file):
        path = upload_path(file)
        if not path:
            return gr.update(), gr.update(), gr.update(), ""
        try:
            load_analysis(self.ctx, path)
        except UserError as exc:
            return gr.update(), gr.update(), gr.update(), message(str(exc), "error")
        runs = analysis_runs(self.ctx) + [(f"uploaded · {Path(path).name}", path)]
        return (
            gr.update(choices=runs, value=path),
            gr.update(choices=runs),
            gr.update(choices=runs),
            message(f"Loaded {Path(path).name}", "ok"),
        )

    def compare(self, a, b):
        try:
            cmp, table, csv, fig = analysis_compare(self.ctx, a, b)
        except UserError as exc:
            return {"error": str(exc)}, None, None, None
        return (
            {
                "A": cmp["version_a"],
                "B": cmp["version_b"],
                **cmp["counts"],
                "only_in_A": len(cmp["only_in_a"]),
                "only_in_B": len(cmp["only_in_b"]),
            },
            fig,
            table,
            csv,
        )


def build(ctx: AppContext, shared: Shared) -> AnalysisTab:
    return AnalysisTab(ctx, shared)
