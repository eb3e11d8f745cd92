"""What each UI event does, as plain functions of the AppContext (no Gradio objects in or out).

The UI module (`app/ui.py`) wires these to components and turns `UserError` into a message; the
tests call them directly. Every write and job checks `AppContext.require(action, username)` here, at
the handler level (app/permissions.py is the table), so UI events, the documented API and raw queue
calls meet the same check. Image paths handed out are only files under DATA_DIR/images or assets/.
"""
from __future__ import annotations

import json
import math
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from db import StoreError
from mimic.data.schema import Entity
from mimic.serving.linker import LinkInputError, LinkResult
from mimic.serving.service import safe_name

from . import figures
from .context import AppContext, WriteDenied, candidates_for_store, resolve_image, resolve_images

CANDIDATE_COLUMNS = ["rank", "name", "id", "S", "S_T", "S_V", "S_C", "margin", "found by"]
DECISIONS = ("entity", "nil", "ambiguous")
NIL, AMBIGUOUS = "__NIL__", "__AMBIGUOUS__"


class UserError(ValueError):
    """Bad input or a refused action; the message is shown to the user as it is."""


def _user_errors(fn):
    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except (LinkInputError, StoreError, WriteDenied) as exc:
            raise UserError(str(exc)) from None
    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def _r(v, nd=4):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


# -- Link -----------------------------------------------------------------------------------------
@_user_errors
def link(ctx: AppContext, image: str | None, sentence: str, mention, top_k: int | None = None) -> LinkResult:
    """Rank KB entities for the mention. `mention` is its text or a (start, end) span."""
    if isinstance(mention, str) and not mention.strip() and isinstance(sentence, str) and sentence.strip():
        raise UserError("mark the mention: type it (it must occur in the sentence) or select it in the sentence")
    try:
        return ctx.service.link(sentence, mention, image or None, top_k=top_k or ctx.config.top_k, explain=True)
    except LinkInputError as exc:
        msg = str(exc)
        if isinstance(image, str) and image:
            msg = msg.replace(image, Path(image).name)    # no server paths in messages
        raise UserError(msg) from None


def candidates_table(result: LinkResult | dict | None) -> pd.DataFrame:
    if result is None:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    cands = result["candidates"] if isinstance(result, dict) else [asdict(c) for c in result.candidates]
    rows = [[c["rank"], c["name"], c["entity_id"], _r(c["S"]), _r(c["S_T"]), _r(c["S_V"]), _r(c["S_C"]),
             _r(c["margin"]), ", ".join(c["retrievers"])] for c in cands]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


def result_json(ctx: AppContext, result: LinkResult) -> dict:
    """The /link API answer: ranked candidates with unit scores (explanations left out)."""
    d = result.to_dict()
    for c in d["candidates"]:
        c.pop("explanation", None)
        for k in ("S", "S_T", "S_V", "S_C", "margin"):
            c[k] = _r(c[k], 6)
    d["model"] = ctx.service.describe()
    return d


def choice_value(decision: str, entity_id: str | None = None) -> str:
    return {"nil": NIL, "ambiguous": AMBIGUOUS}.get(decision, entity_id or "")


def parse_choice(choice: str | None) -> tuple[str, str | None]:
    """Radio value -> (decision, entity_id)."""
    if not choice:
        raise UserError("pick a candidate, NIL (not in the list) or ambiguous first")
    if choice == NIL:
        return "nil", None
    if choice == AMBIGUOUS:
        return "ambiguous", None
    return "entity", choice


@_user_errors
def save_link(ctx: AppContext, username: str | None, result: dict, choice: str | None, *,
              image: str | None = None, request_id: str | None = None, seconds_spent: float | None = None):
    """Store the linked mention, the model's prediction and the user's decision (one annotation)."""
    annotator = ctx.require("annotate", username)
    if not result:
        raise UserError("link a mention first")
    decision, entity_id = parse_choice(choice)
    m = ctx.store.add_mention(result["sentence"], result["mention"], result["start"], result["end"],
                              image=image or None, source="link")
    pred = ctx.store.add_prediction(m.id, ctx.service.served.version, candidates_for_store(result["candidates"])) \
        if result["candidates"] else None
    return ctx.store.submit(annotator, m.id, decision, entity_id, prediction_id=pred.id if pred else None,
                            request_id=request_id or uuid.uuid4().hex, seconds_spent=seconds_spent)


# -- Inspect --------------------------------------------------------------------------------------
@dataclass
class InspectView:
    note: str
    bars: object            # plotly Figure: the unit scores
    heatmap: object         # plotly Figure: entity tokens x mention tokens
    tokens: list            # [(token, 0..1)] for gr.HighlightedText
    mention_overlay: object  # PIL image or None
    entity_overlay: object
    files: list[str]        # JSON figure data first, then the overlay PNGs
    data: dict


def inspect(ctx: AppContext, result: dict | None, image: str | None, entity_id: str | None, *,
            shared_scale: bool = True) -> InspectView:
    """Everything the Inspect tab draws for one candidate of the last link result. Candidates outside
    the explained top 3 are explained on demand (and cached in `result`)."""
    from mimic.serving.linker import Explanation
    if not result:
        raise UserError("link a mention first (Link tab), then pick a candidate here")
    cands = result["candidates"]
    c = next((x for x in cands if x["entity_id"] == entity_id), None)
    if c is None:
        raise UserError(f"pick a candidate of the last link (got {entity_id!r})")
    if c.get("explanation") is None:
        try:
            e = ctx.service.explain(result["sentence"], (result["start"], result["end"]), entity_id, image)
        except LinkInputError as exc:
            raise UserError(f"cannot explain {entity_id}: {exc}") from None
        c["explanation"] = asdict(e)
    e = Explanation(**c["explanation"])
    zero = result.get("scoring") == "zero-shot"
    pool = [Explanation(**x["explanation"]) for x in cands if x.get("explanation")] if shared_scale else [e]
    tv = figures.shared_range([x.tglu_attention for x in pool])
    gv = figures.shared_range([g for x in pool for g in (x.cmfu_mention_grid, x.cmfu_entity_grid)])
    if e.kind == "similarity":
        title = "Backbone token similarity (zero-shot cosine, not TGLU attention)"
    else:
        title = "TGLU attention: entity tokens (queries) × mention tokens (keys), padding masked"
    tmp = Path(tempfile.mkdtemp(prefix="mimic-inspect-"))
    files, m_ov, e_ov = [], None, None
    if image and e.cmfu_mention_grid is not None:
        m_ov = figures.overlay(image, e.cmfu_mention_grid, *gv)
        m_ov.save(tmp / f"mention_overlay_{safe_name(entity_id)}.png")
        files.append(str(tmp / f"mention_overlay_{safe_name(entity_id)}.png"))
    ent_img = resolve_image((c.get("images") or [None])[0], ctx.config.data_dir)
    if ent_img and e.cmfu_entity_grid is not None:
        e_ov = figures.overlay(ent_img, e.cmfu_entity_grid, *gv)
        e_ov.save(tmp / f"entity_overlay_{safe_name(entity_id)}.png")
        files.append(str(tmp / f"entity_overlay_{safe_name(entity_id)}.png"))
    data = {"sentence": result["sentence"], "mention": result["mention"], "entity_id": entity_id, "name": c["name"],
            "scores": {k: c[k] for k in ("S", "S_T", "S_V", "S_C", "margin")}, "scoring": result.get("scoring"),
            "map_kind": e.kind, "token_map_range": list(tv), "patch_map_range": list(gv), **asdict(e)}
    jpath = tmp / f"inspect_{safe_name(entity_id)}.json"
    jpath.write_text(json.dumps(data, indent=1), encoding="utf-8")
    files.insert(0, str(jpath))
    img_note = ("CMFU text→patch attention" if e.kind == "attention" else
                "each region's cosine to the other image's mean region state (zero-shot)")
    note = (f"**{c['name']}** `{entity_id}` · rank {c['rank']} · "
            + ("maps are backbone similarities (zero-shot), not model attention. " if zero else
               "attention shows where a unit looked, not why it decided (Jain & Wallace 2019); the unit scores are "
               "the primary explanation. ")
            + (f"Image maps: {img_note}; colour range {gv[0]:.3g} to {gv[1]:.3g}"
               + (" (shared by the explained candidates)." if shared_scale else " (this candidate).")
               if (m_ov is not None or e_ov is not None) else "No image map: the mention or the entity has no image."))
    return InspectView(note, figures.unit_bars(c, zero), figures.token_heatmap(e, title, *tv),
                       figures.token_highlights(e), m_ov, e_ov, files, data)


# -- Annotate -------------------------------------------------------------------------------------
@_user_errors
def next_item(ctx: AppContext, username: str | None):
    """The annotator's current item (leased; asking again returns the same one) or None."""
    return ctx.store.next_item(ctx.require("annotate", username))


@_user_errors
def get_item(ctx: AppContext, mention_id: int):
    """A mention with its latest prediction (for ←/→ navigation and restoring after a reload)."""
    m = ctx.store.get_mention(mention_id)
    preds = ctx.store.predictions(mention_id)
    return m, (preds[0] if preds else None)


@_user_errors
def annotate(ctx: AppContext, username: str | None, mention_id: int, choice: str | None, *,
             seconds_spent: float | None = None, request_id: str | None = None):
    """Store a decision for a queued mention. Returns the AnnotationRecord."""
    decision, entity_id = parse_choice(choice)
    return ctx.store.submit(ctx.require("annotate", username), mention_id, decision, entity_id,
                            seconds_spent=seconds_spent, request_id=request_id or uuid.uuid4().hex)


@_user_errors
def annotate_api(ctx: AppContext, username: str | None, mention_id, decision: str, entity_id: str | None,
                 annotator: str | None = None) -> int:
    """/annotate: decision is entity | nil | ambiguous | skip. Returns the stored annotation id."""
    name = ctx.require("annotate", username)
    if annotator and annotator != name:
        raise UserError(f"signed in as {name!r}: cannot store annotations for {annotator!r}")
    if decision not in DECISIONS + ("skip",):
        raise UserError(f"decision must be one of entity, nil, ambiguous, skip (got {decision!r})")
    try:
        mid = int(mention_id)
    except (TypeError, ValueError):
        mid = str(mention_id)
    rec = ctx.store.submit(name, mid, decision, entity_id or None, request_id=uuid.uuid4().hex)
    return rec.id


@_user_errors
def skip(ctx: AppContext, username: str | None, mention_id: int):
    return ctx.store.skip(ctx.require("annotate", username), mention_id, request_id=uuid.uuid4().hex)


@_user_errors
def undo(ctx: AppContext, username: str | None):
    """Undo the annotator's last decision; returns the undone AnnotationRecord or None."""
    return ctx.store.undo(ctx.require("annotate", username), request_id=uuid.uuid4().hex)


@_user_errors
def annotator_counts(ctx: AppContext, username: str | None) -> dict:
    name = ctx.annotator(username)
    prog = {p.annotator: p for p in ctx.store.progress(name)}.get(name)
    ov = ctx.store.overview()
    out = {"annotator": name, "decided": 0, "entity": 0, "nil": 0, "ambiguous": 0, "skipped": 0,
           "items_per_hour": None, "pending_for_you": ctx.store.queue_size(name), "mentions": ov["mentions"],
           "complete": ov["complete"]}
    if prog:
        out.update(decided=prog.decided, entity=prog.entity, nil=prog.nil, ambiguous=prog.ambiguous,
                   skipped=prog.skipped, items_per_hour=_r(prog.items_per_hour, 1))
    return out


@_user_errors
def history(ctx: AppContext, username: str | None, limit: int = 50) -> list:
    return ctx.store.annotator_history(ctx.annotator(username), limit=limit)


# -- Knowledge base -------------------------------------------------------------------------------
@_user_errors
def search_kb(ctx: AppContext, query: str, limit: int = 30) -> list:
    query = (query or "").strip()
    if not query:
        return ctx.store.list_entities(0, limit)
    return ctx.store.search_entities(query, limit=limit)


def entity_images(ctx: AppContext, rec) -> list[str]:
    """The entity's images that may be shown (inside DATA_DIR/images or assets/); others dropped."""
    return resolve_images(rec.images, ctx.config.data_dir)


@_user_errors
def save_entity(ctx: AppContext, username: str | None, entity_id: str, name: str, description: str,
                aliases: str, images: list[str] | None, keep_images: bool = True):
    """Create or edit an entity; the index is updated in place (a new segment), not rebuilt."""
    author = ctx.require("kb_edit", username)
    entity_id, name = (entity_id or "").strip(), (name or "").strip()
    if not entity_id:
        raise UserError("the entity needs an id")
    if not name:
        raise UserError("the entity needs a name")
    alias_list = [a.strip() for a in (aliases or "").replace("\n", "|").split("|") if a.strip()]
    paths = []
    if keep_images:
        try:
            paths += ctx.store.get_entity(entity_id).images
        except StoreError:
            pass
    for p in images or []:
        stored = ctx.store.images.put(p, "images")    # validated, content-addressed copy in DATA_DIR
        paths.append(ctx.store.store_relative(stored.path))
    ent = Entity(entity_id, name, description or "", alias_list, list(dict.fromkeys(paths)))
    return ctx.save_entity(ent, author)


@_user_errors
def import_kb_file(ctx: AppContext, username: str | None, path: str, progress=None) -> dict:
    """Import a KB file (official kb_entity.json, JSONL, CSV): valid rows are stored and indexed, the
    rest reported. Returns the loader's report plus counts."""
    author = ctx.require("kb_import", username)
    if not path:
        raise UserError("choose a KB file to import")
    from mimic.data.kb_files import load_kb
    try:
        kb, report = load_kb(path)
    except (ValueError, OSError) as exc:   # unreadable file, unknown format: nothing was imported
        raise UserError(f"cannot import {Path(path).name}: {exc}") from None
    ents = kb.entities
    if progress:
        progress(0.1, desc=f"storing {len(ents)} entities")
    image_errors: list = []
    with ctx.kb_lock:
        ctx.store.import_kb(kb, author=author, image_errors=image_errors)   # images copied in by content
        stored = {e.id: e for e in ctx.store.knowledge_base()} if ents else {}
        ents = [replace(stored[e.id], images=resolve_images(stored[e.id].images, ctx.config.data_dir))
                for e in ents if e.id in stored]
        done = 0
        for s in range(0, len(ents), 64):
            chunk = ents[s:s + 64]
            ctx.service.upsert_entities(chunk)
            done += len(chunk)
            if progress:
                progress(0.1 + 0.9 * done / max(1, len(ents)), desc=f"indexed {done}/{len(ents)}")
    out = report.to_dict()
    out["imported"] = len(ents)
    out["rejected_images"] = [{**e, "image": Path(e["image"]).name} for e in image_errors]   # no server paths
    return out


# -- Analysis -------------------------------------------------------------------------------------
_ANALYSIS_CACHE: dict[str, list] = {}


def analysis_dir(ctx: AppContext) -> Path:
    return ctx.config.data_dir / "analysis"


def corrections_as_mentions(ctx: AppContext) -> tuple[list, dict]:
    """One gold per corrected mention, by the store's gold rule (`AnnotationStore.resolved`, the
    one training uses): a NIL gold has answer None; ambiguous and tied mentions are left out.
    -> (mentions with `answer`, {mention uid: its source})"""
    gold = ctx.store.gold_mentions()
    return [g.mention for g in gold], {g.mention.id: (g.source or "corrections") for g in gold}


@_user_errors
def analyze_corrections(ctx: AppContext, username: str | None = None, progress=None) -> str:
    """Analyse the served model on the corrections collected so far; the records are saved under
    DATA_DIR/analysis/ and the path returned (pick it later to compare versions). Signed-in users."""
    from mimic.analysis.records import save_records
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
    while path.exists():                       # never overwrite an earlier run
        n += 1
        path = path.with_name(f"{stamp}-{n}_{safe_name(ctx.service.served.version)}.jsonl")
    save_records(records, path)
    _ANALYSIS_CACHE[str(path)] = records
    return str(path)


def analysis_runs(ctx: AppContext) -> list[tuple[str, str]]:
    """Saved analysis runs, newest first: (label, path)."""
    d = analysis_dir(ctx)
    files = sorted(d.glob("*.jsonl"), key=lambda f: (f.stat().st_mtime, f.name), reverse=True) if d.is_dir() else []
    return [(f.stem.replace("_", " · ", 1), str(f)) for f in files]


@_user_errors
def load_analysis(ctx: AppContext, path: str) -> list:
    from mimic.analysis.records import load_records
    if not path:
        raise UserError("choose an analysis run (or analyse the corrections first)")
    if path not in _ANALYSIS_CACHE:
        try:
            _ANALYSIS_CACHE[path] = load_records(path)
        except (ValueError, OSError) as exc:
            raise UserError(f"cannot read {Path(path).name}: {exc}") from None
    return _ANALYSIS_CACHE[path]


@dataclass
class AnalysisView:
    summary: dict
    figures: dict           # name -> plotly Figure
    table: pd.DataFrame
    csv_path: str


@_user_errors
def analysis_view(ctx: AppContext, path: str, labels=None, dataset=None, has_image: str = "any") -> AnalysisView:
    from mimic.analysis.figures import label_counts_figure, recall_at_k_figure, reliability_figure, unit_accuracy_figure
    from mimic.analysis.summary import filter_records, summarize
    from mimic.analysis.tables import records_table, to_csv
    records = load_analysis(ctx, path)
    summary = summarize(records)
    img = {"any": None, "with image": True, "without image": False}.get(has_image or "any")
    shown = filter_records(records, label=labels or None, dataset=dataset or None, has_image=img)
    table = records_table(shown)
    out = Path(tempfile.mkdtemp(prefix="mimic-analysis-")) / f"{Path(path).stem}.csv"
    to_csv(table, out)
    figs = {"labels": label_counts_figure(summary), "recall": recall_at_k_figure(summary),
            "units": unit_accuracy_figure(summary), "reliability": reliability_figure(summary)}
    return AnalysisView(summary, figs, table, str(out))


@_user_errors
def analysis_compare(ctx: AppContext, path_a: str, path_b: str):
    """-> (comparison dict, table, csv path, figure): A is the baseline, B the newer run."""
    from mimic.analysis.figures import comparison_figure
    from mimic.analysis.summary import compare
    from mimic.analysis.tables import comparison_table, to_csv
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


def analysis_mention(ctx: AppContext, path: str, mention_id: str) -> dict | None:
    """The sentence, span and image of an analysed mention (to open it in Link/Inspect)."""
    rec = next((r for r in load_analysis(ctx, path) if str(r.mention_id) == str(mention_id)), None)
    if rec is None:
        return None
    image = None
    try:
        m = ctx.store.get_mention(str(mention_id))
        image, start, end = m.image_path, m.start, m.end
    except StoreError:
        start = end = None
    return {"sentence": rec.sentence, "mention": rec.mention, "start": start, "end": end, "image": image,
            "gold": rec.gold, "predicted": rec.predicted}


# -- Models & data --------------------------------------------------------------------------------
VERSION_COLUMNS = ["version", "status", "backbone", "held-out MRR (serving → this)", "base dev H@1 (serving → this)",
                   "trained", "decision", "created", "metrics"]


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
        trained = ", ".join(x for x in (
            f"{_get(m, 'data', 'train_corrections') or 0} corrections + {_get(m, 'data', 'base_train') or 0} base",
            f"{tr.get('epochs')} epoch(s) on {tr.get('device')}" + (" bf16" if tr.get("bf16") else ""),
            "backbone frozen" if tr.get("freeze_backbone") else "backbone trained",
            f"{tr['seconds']:.0f} s" if isinstance(tr.get("seconds"), (int, float)) else "",
            f"{sps[-1]:.0f} samples/s" if sps else "") if x)
    decision = _get(m, "decision", "reason") or ""
    return [_pair(_get(m, "serving", "heldout", "MRR"), _get(m, "candidate", "heldout", "MRR")),
            _pair(_get(m, "serving", "base_dev", "H@1"), _get(m, "candidate", "base_dev", "H@1")), trained, decision]


def model_versions(ctx: AppContext) -> pd.DataFrame:
    serving = ctx.service.served.version
    rows = [[v.name, "serving" if v.name == serving else ("promoted" if v.promoted else ""), v.backbone or "",
             *version_summary(v.metrics), v.created_at.strftime("%Y-%m-%d %H:%M"),
             json.dumps(v.metrics, sort_keys=True) if v.metrics else ""]
            for v in ctx.store.list_model_versions()]
    if not any(r[0] == serving for r in rows):
        rows.insert(0, [serving, "serving", ctx.service.served.backbone, "", "", "", "", "", ""])
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def corrections_summary(ctx: AppContext) -> tuple[pd.DataFrame, dict]:
    prog = ctx.store.progress()
    df = pd.DataFrame([[p.annotator, p.role, p.decided, p.entity, p.nil, p.ambiguous, p.skipped, p.changed, p.undone,
                        _r(p.median_seconds, 1), _r(p.items_per_hour, 1)] for p in prog],
                      columns=["annotator", "role", "decided", "entity", "NIL", "ambiguous", "skipped", "changed",
                               "undone", "median s", "items/h"])
    ov = ctx.store.overview()
    try:
        ov["agreement"] = ctx.store.agreement()
    except StoreError as exc:
        ov["agreement"] = {"note": str(exc)}
    return df, ov


@_user_errors
def serve_version(ctx: AppContext, username: str | None, name: str) -> str:
    """Serve a registered version (rollback is this one action): promote it, load it while the old
    one keeps serving, switch. Admins only (app/permissions.py)."""
    if not name:
        raise UserError("choose a model version")
    ctx.serve_version(name, username)
    if ctx.service.served.version != name:
        raise UserError(f"{name} is promoted but could not be loaded (see the server log); still serving "
                        f"{ctx.service.served.version}")
    return name


@_user_errors
def start_retrain(ctx: AppContext, username: str | None, **overrides) -> int:
    """Start `python -m mimic retrain` in its own process (one at a time). -> the training run id."""
    from retraining import RetrainBusy, read_progress, start_retrain_process
    ctx.require("retrain", username)
    with _RETRAIN_START:
        # The job's own lock refuses a second run once the first process holds it; a run that is
        # queued but whose process has not started yet is caught here, so a double click never
        # queues a second run.
        for r in ctx.store.list_training_runs():
            if r.status in ("queued", "running") and (read_progress(ctx.config.data_dir, r.id) or {}).get("alive", True):
                raise UserError(f"another retraining run (run {r.id}, {r.status} since "
                                f"{r.created_at:%Y-%m-%d %H:%M} UTC) is under way: one run at a time")
        try:
            proc = start_retrain_process(ctx.retrain_config(**overrides), store=ctx.store)
        except RetrainBusy as exc:
            raise UserError(str(exc)) from None
    return proc.run_id


_RETRAIN_START = threading.Lock()


def retrain_status(ctx: AppContext, run_id: int, offset: int = 0) -> tuple[dict, str, int]:
    """-> (progress {status, step, fraction, message, alive, ...}, new log text, next offset)."""
    from retraining import read_log, read_progress
    prog = read_progress(ctx.config.data_dir, int(run_id)) or {"status": "unknown", "fraction": 0.0, "message": ""}
    text, nxt = read_log(ctx.config.data_dir, int(run_id), offset)
    return prog, text, nxt


def training_runs(ctx: AppContext) -> pd.DataFrame:
    rows = [[r.id, r.status, r.base_model_version or "", r.output_model_version or "", r.annotations,
             json.dumps({k: v for k, v in (r.metrics or {}).items() if k in ("promoted", "reason", "decision")})
             if r.metrics else "", (r.error or "")[:200], r.created_at.strftime("%Y-%m-%d %H:%M")]
            for r in reversed(ctx.store.list_training_runs())]
    return pd.DataFrame(rows, columns=["run", "status", "from version", "new version", "annotations", "result",
                                       "error", "created"])


EXPORT_FORMATS = ("jsonl", "csv", "training")


@_user_errors
def export(ctx: AppContext, fmt: str, username: str | None = None) -> str:
    """Write an export to a new temporary file; returns its path (JSONL, CSV, or a zip of the
    training layout that `python -m mimic train --data` reads). Signed-in users only: it carries
    every annotator's decisions."""
    ctx.require("export", username)
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)} (got {fmt!r})")
    out = Path(tempfile.mkdtemp(prefix="mimic-export-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if fmt == "jsonl":
        p = out / f"links-{stamp}.jsonl"
        ctx.store.export_links_jsonl(p)
    elif fmt == "csv":
        p = out / f"links-{stamp}.csv"
        ctx.store.export_links_csv(p)
    else:
        d = out / f"training-{stamp}"
        ctx.store.export_training_set(d)
        p = out / f"training-{stamp}.zip"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(d.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(out))
    return str(p)
