"""The Models & data tab: the model versions and which one serves (rollback), the corrections by
annotator and their agreement, exports, and the retraining run (started in its own process and
followed here)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from db import StoreError
from db.export import zip_folder
from retraining import RetrainBusy, read_log, read_progress, start_retrain_process

from ..common import (
    EXPORT_QUEUE,
    PRIVATE,
    Shared,
    UserError,
    header_markdown,
    message,
    progress_bar_html,
    rounded,
    user_errors,
    username_of,
)
from ..context import AppContext

VERSION_COLUMNS = [
    "version",
    "status",
    "backbone",
    "held-out MRR (serving → this)",
    "base dev H@1 (serving → this)",
    "trained",
    "decision",
    "created",
    "metrics",
]
# the formats of the export handler (and /export): the links as JSONL / CSV (images named by
# relative paths), the same zipped with the images, the training layout (zip), Label Studio tasks (zip)
EXPORT_FORMATS = ("jsonl", "csv", "jsonl.zip", "csv.zip", "training", "label-studio")
EXPORT_LABELS = {
    "jsonl": "JSONL",
    "csv": "CSV",
    "jsonl.zip": "JSONL + images (zip)",
    "csv.zip": "CSV + images (zip)",
    "training": "training layout (zip)",
    "label-studio": "Label Studio tasks + images (zip)",
}


# -- handlers: versions and corrections -----------------------------------------------------------
def _get(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _pair(a, b) -> str:
    return f"{a:.3f} → {b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""


def version_summary(metrics: dict | None) -> list[str]:
    """The figures a reviewer compares at a glance, from a retraining run's metrics (blank where a
    version has none, e.g. one registered by hand)."""
    m = metrics or {}
    tr = m.get("train") if isinstance(m.get("train"), dict) else {}
    trained = ""
    if tr:
        sps = [x for x in (tr.get("samples_per_second") or []) if isinstance(x, (int, float))]
        trained = ", ".join(
            x
            for x in (
                f"{_get(m, 'data', 'train_corrections') or 0} corrections + {_get(m, 'data', 'base_train') or 0} base",
                f"{tr.get('epochs')} epoch(s) on {tr.get('device')}" + (" bf16" if tr.get("bf16") else ""),
                "backbone frozen" if tr.get("freeze_backbone") else "backbone trained",
                f"{tr['seconds']:.0f} s" if isinstance(tr.get("seconds"), (int, float)) else "",
                f"{sps[-1]:.0f} samples/s" if sps else "",
            )
            if x
        )
    decision = _get(m, "decision", "reason") or ""
    return [
        _pair(_get(m, "serving", "heldout", "MRR"), _get(m, "candidate", "heldout", "MRR")),
        _pair(_get(m, "serving", "base_dev", "H@1"), _get(m, "candidate", "base_dev", "H@1")),
        trained,
        decision,
    ]


def model_versions(ctx: AppContext) -> pd.DataFrame:
    serving = ctx.service.served.version
    rows = [
        [
            v.name,
            "serving" if v.name == serving else ("promoted" if v.promoted else ""),
            v.backbone or "",
            *version_summary(v.metrics),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            json.dumps(v.metrics, sort_keys=True) if v.metrics else "",
        ]
        for v in ctx.store.list_model_versions()
    ]
    if not any(r[0] == serving for r in rows):
        rows.insert(0, [serving, "serving", ctx.service.served.backbone, "", "", "", "", "", ""])
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def corrections_summary(ctx: AppContext) -> tuple[pd.DataFrame, dict]:
    prog = ctx.store.progress()
    df = pd.DataFrame(
        [
            [
                p.annotator,
                p.role,
                p.decided,
                p.entity,
                p.nil,
                p.ambiguous,
                p.skipped,
                p.changed,
                p.undone,
                rounded(p.median_seconds, 1),
                rounded(p.items_per_hour, 1),
            ]
            for p in prog
        ],
        columns=[
            "annotator",
            "role",
            "decided",
            "entity",
            "NIL",
            "ambiguous",
            "skipped",
            "changed",
            "undone",
            "median s",
            "items/h",
        ],
    )
    ov = ctx.store.overview()
    try:
        ov["agreement"] = ctx.store.agreement()
    except StoreError as exc:
        ov["agreement"] = {"note": str(exc)}
    return df, ov


@user_errors
def serve_version(ctx: AppContext, username: str | None, name: str) -> str:
    """Serve a registered version (rollback is this one action): promote it, load it while the old
    one keeps serving, switch. Admins only (app/permissions.py)."""
    if not name:
        raise UserError("choose a model version")
    ctx.serve_version(name, username)
    if ctx.service.served.version != name:
        raise UserError(
            f"{name} is promoted but could not be loaded (see the server log); still serving "
            f"{ctx.service.served.version}"
        )
    return name


# -- handlers: retraining -------------------------------------------------------------------------
@user_errors
def start_retrain(ctx: AppContext, username: str | None, **overrides) -> int:
    """Start `python -m mimic retrain` in its own process (one at a time). -> the training run id."""
    ctx.require("retrain", username)
    with ctx.retrain_start_lock:
        # The job's own lock refuses a second run once the first process holds it; a run that is
        # queued but whose process has not started yet is caught here, so a double click never
        # queues a second run.
        for r in ctx.store.list_training_runs():
            alive = (read_progress(ctx.config.data_dir, r.id) or {}).get("alive", True)
            if r.status in ("queued", "running") and alive:
                raise UserError(
                    f"another retraining run (run {r.id}, {r.status} since "
                    f"{r.created_at:%Y-%m-%d %H:%M} UTC) is under way: one run at a time"
                )
        try:
            proc = start_retrain_process(ctx.retrain_config(**overrides), store=ctx.store)
        except RetrainBusy as exc:
            raise UserError(str(exc)) from None
    run_id = proc.run_id
    return run_id


def retrain_status(ctx: AppContext, run_id: int, offset: int = 0) -> tuple[dict, str, int]:
    """-> (progress {status, step, fraction, message, alive, ...}, new log text, next offset)."""
    prog = read_progress(ctx.config.data_dir, int(run_id)) or {"status": "unknown", "fraction": 0.0, "message": ""}
    text, nxt = read_log(ctx.config.data_dir, int(run_id), offset)
    return prog, text, nxt


def training_runs(ctx: AppContext) -> pd.DataFrame:
    rows = [
        [
            r.id,
            r.status,
            r.base_model_version or "",
            r.output_model_version or "",
            r.annotations,
            json.dumps({k: v for k, v in (r.metrics or {}).items() if k in ("promoted", "reason", "decision")})
            if r.metrics
            else "",
            (r.error or "")[:200],
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for r in reversed(ctx.store.list_training_runs())
    ]
    return pd.DataFrame(
        rows, columns=["run", "status", "from version", "new version", "annotations", "result", "error", "created"]
    )


# -- handlers: export -----------------------------------------------------------------------------
# Each export is written into its own temporary folder (mimic-export-*). Gradio copies a returned
# file into its own cache while it answers the request, so an earlier export's folder is removed at
# the next export once it is older than EXPORT_KEEP_SECONDS (long enough for that copy, also when
# several people export at once), and every folder left is removed when the process exits.
EXPORT_KEEP_SECONDS = 120.0
_export_dirs: list[tuple[float, Path]] = []
_export_lock = threading.Lock()


def _clean_exports(everything: bool = False) -> None:
    """Remove the export folders handed over more than EXPORT_KEEP_SECONDS ago (or all of them)."""
    now = time.monotonic()
    with _export_lock:
        old = [d for t, d in _export_dirs if everything or now - t > EXPORT_KEEP_SECONDS]
        _export_dirs[:] = [(t, d) for t, d in _export_dirs if d not in old]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_clean_exports, True)


@user_errors
def export(ctx: AppContext, fmt: str, username: str | None = None) -> str:
    """Write an export to a new temporary file; returns its path (JSONL, CSV, or a zip of the
    training layout that `python -m mimic train --data` reads; "jsonl.zip" / "csv.zip": the JSONL
    or CSV with the mention images it names, self-contained; "label-studio": a zip of Label Studio
    tasks, their labeling config and the images). Images are named by relative paths, never by
    server paths; CSV cells a spreadsheet would run as formulas are neutralised. Signed-in users
    only: it carries every annotator's decisions."""
    ctx.require("export", username)
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    _clean_exports()
    out = Path(tempfile.mkdtemp(prefix="mimic-export-"))
    with _export_lock:
        _export_dirs.append((time.monotonic(), out))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if fmt == "jsonl":
        p = out / f"links-{stamp}.jsonl"
        ctx.store.export_links_jsonl(p)
    elif fmt == "csv":
        p = out / f"links-{stamp}.csv"
        ctx.store.export_links_csv(p)
    elif fmt.endswith(".zip"):
        kind = fmt.removesuffix(".zip")
        p = out / f"links-{stamp}-{kind}.zip"
        ctx.store.export_links_zip(p, fmt=kind)
    elif fmt == "label-studio":
        p = out / f"label-studio-{stamp}.zip"
        ctx.store.export_label_studio(p)
    else:
        d = out / f"training-{stamp}"
        ctx.store.export_training_set(d)
        p = out / f"training-{stamp}.zip"
        try:
            zip_folder(d, p, arc_root=d.name)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return str(p)


def retrain_progress_html(run_id: int, prog: dict) -> str:
    text = f"run {run_id} · {prog.get('status')} · {prog.get('step', '')} · {prog.get('message', '')}"
    return progress_bar_html(prog.get("fraction"), text)


# -- the tab --------------------------------------------------------------------------------------
class ModelsTab:
    """The Models & data tab's components and events."""

    def __init__(self, ctx: AppContext, shared: Shared):
        self.ctx, self.shared = ctx, shared
        self._layout()
        self._wire()

    def _layout(self):
        with gr.Tab("Models & data", id="models", elem_id="tab_models") as self.tab:
            self.refresh_button = gr.Button("Refresh", size="sm", elem_id="models_refresh")
            self.versions = gr.Dataframe(label="Model versions", interactive=False, elem_id="models_versions")
            self.corrections = gr.Dataframe(
                label="Corrections by annotator", interactive=False, elem_id="models_corrections"
            )
            self.overview = gr.JSON(label="Overview and agreement", elem_id="models_overview")
            with gr.Row():
                self.export_format = gr.Radio(
                    [(EXPORT_LABELS[f], f) for f in EXPORT_FORMATS],
                    value="jsonl",
                    label="Export format",
                    elem_id="models_export_format",
                )
                self.export_button = gr.Button("Export", elem_id="models_export")
                self.export_cancel = gr.Button("Cancel export", size="sm", elem_id="models_export_cancel")
            self.export_file = gr.File(label="Export", elem_id="models_export_file")
            with gr.Row():
                self.version = gr.Dropdown(label="Model version", choices=[], elem_id="models_version", scale=3)
                self.serve_button = gr.Button(
                    "Serve this version (rollback / roll forward)", elem_id="models_serve", scale=2
                )
            self.msg = gr.Markdown(elem_id="models_msg")
            with gr.Accordion("Retraining (corrections → fine-tune → evaluated version → promotion)", open=True):
                gr.Markdown(
                    "Runs `python -m mimic retrain` in its own process: builds a training set from the "
                    "accepted annotations, holds out a fixed slice, fine-tunes from the serving model, "
                    "evaluates both on the held-out corrections, registers the version and promotes it "
                    "only if it is not worse. A promoted version is loaded in the background and served "
                    "when ready. Reviewers and admins only."
                )
                self.retrain_button = gr.Button("Start retraining now", variant="primary", elem_id="models_retrain")
                self.retrain_progress = gr.HTML(elem_id="models_retrain_progress")
                self.log = gr.Textbox(
                    label="Log",
                    lines=10,
                    max_lines=20,
                    autoscroll=True,
                    interactive=False,
                    elem_id="models_retrain_log",
                )
                self.runs = gr.Dataframe(label="Training runs", interactive=False, elem_id="models_runs")
            self.job = gr.State(None)  # {"run_id", "offset"} of the run followed
            self.timer = gr.Timer(2.0, active=False)

    def _wire(self):
        s = self.shared
        refresh_out = [self.versions, self.corrections, self.overview]
        gr.on([self.refresh_button.click, self.tab.select], self.refresh, None, refresh_out, **PRIVATE)
        self.serve_button.click(self.serve, self.version, [self.msg, s.header, self.versions], **s.db_queue, **PRIVATE)
        self.retrain_button.click(
            self.retrain, None, [self.msg, self.job, self.timer, self.log, self.runs], **s.db_queue, **PRIVATE
        )
        self.timer.tick(
            self.poll_job,
            [self.job, self.log],
            [self.retrain_progress, self.log, self.job, self.timer, self.runs, self.versions, s.header],
            **PRIVATE,
        )
        exporting = self.export_button.click(
            self.on_export, self.export_format, self.export_file, **EXPORT_QUEUE, **PRIVATE
        )
        self.export_cancel.click(None, cancels=[exporting], **PRIVATE)
        s.demo.load(self.refresh, None, refresh_out, **PRIVATE)
        s.demo.load(self.versions_and_runs, None, [self.version, self.runs], **PRIVATE)

    def refresh(self):
        corr, ov = corrections_summary(self.ctx)
        return model_versions(self.ctx), corr, ov

    def versions_and_runs(self):
        names = [v.name for v in self.ctx.store.list_model_versions()]
        serving = self.ctx.service.served.version
        return gr.update(choices=names, value=serving if serving in names else None), training_runs(self.ctx)

    def serve(self, name, request: gr.Request):
        try:
            serve_version(self.ctx, username_of(request), name)
        except UserError as exc:
            return message(str(exc), "error"), gr.update(), gr.update()
        return message(f"Now serving {name}", "ok"), header_markdown(self.ctx), model_versions(self.ctx)

    def retrain(self, request: gr.Request):
        try:
            run_id = start_retrain(self.ctx, username_of(request))
        except UserError as exc:
            return message(str(exc), "error"), None, gr.Timer(active=False), "", training_runs(self.ctx)
        return (
            message(f"Retraining run {run_id} started", "ok"),
            {"run_id": run_id, "offset": 0},
            gr.Timer(active=True),
            "",
            training_runs(self.ctx),
        )

    def poll_job(self, job, log_text):
        if not job:
            return gr.update(), gr.update(), job, gr.Timer(active=False), gr.update(), gr.update(), gr.update()
        prog, new, nxt = retrain_status(self.ctx, job["run_id"], job["offset"])
        bar = retrain_progress_html(job["run_id"], prog)
        done = prog.get("status") in ("succeeded", "failed", "cancelled") or prog.get("alive") is False
        job = {**job, "offset": nxt}
        log_text = ((log_text or "") + new)[-20000:]
        if done:  # the run may have promoted a version: load it now rather than at the next watch
            self.ctx.follow_promotion()
            return (
                bar,
                log_text,
                job,
                gr.Timer(active=False),
                training_runs(self.ctx),
                model_versions(self.ctx),
                header_markdown(self.ctx),
            )
        return bar, log_text, job, gr.Timer(active=True), gr.update(), gr.update(), gr.update()

    def on_export(self, fmt, request: gr.Request):
        try:
            return export(self.ctx, fmt, username_of(request))
        except UserError as exc:
            raise gr.Error(str(exc)) from None


def build(ctx: AppContext, shared: Shared) -> ModelsTab:
    return ModelsTab(ctx, shared)
