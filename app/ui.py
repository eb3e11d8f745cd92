"""The Gradio Blocks of MIMIC Studio: five tabs wired to `app.handlers`, plus the API endpoints.

    demo, launch_kwargs = build_ui(ctx)
    demo.queue(...).launch(**launch_kwargs)

Queues: link/inspect run in the "inference" queue (MIMIC_INFERENCE_CONCURRENCY at once), every
write in the "db" queue (one at a time, on top of the store's own transaction safety). UI-only
events are private; `/link`, `/annotate` and `/export` are the documented API.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr

from . import handlers as H
from .context import AppContext, browser_paths, resolve_image

STATIC = Path(__file__).resolve().parent / "static"
PRIVATE = dict(api_visibility="private")


class MentionImage(gr.Image):
    """gr.Image that hands the uploaded file's path to the handler without opening it first, so a
    corrupt or oversized upload reaches the linker's validation and gets its clear message."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None) and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


def username_of(request: gr.Request | None) -> str | None:
    """The signed-in name: basic auth (`launch(auth=...)`) or Hugging Face OAuth."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return request.username
    try:
        info = request.session.get("oauth_info") or {}
        return (info.get("userinfo") or {}).get("preferred_username")
    except (AssertionError, AttributeError, RuntimeError):   # no session middleware: OAuth is off
        return None


def _msg(text: str, kind: str = "info") -> str:
    label = {"info": "", "ok": "**OK** · ", "error": "**Error:** "}[kind]
    return f"{label}{text}"


def header_markdown(ctx: AppContext) -> str:
    d = ctx.service.describe()
    loc = ctx.store.location
    parts = [f"**MIMIC Studio** · model **{d['version']}** ({d['model_type']}) · backbone {d['backbone']} · "
             f"{d['entities']} entities · data in `{loc.data_dir}`"]
    if d["scoring"] == "zero-shot":
        parts.append("> **Zero-shot ranking.** No trained checkpoint is loaded: candidates are ranked by the "
                     "backbone's own similarities (text cosine, image cosine), not by trained MIMIC units. "
                     "S_T/S_V/S_C below are those similarities; maps in Inspect are similarities, not attention. "
                     "Serve a trained checkpoint with `MIMIC_CHECKPOINT` for MIMIC's scores and attention.")
    if loc.ephemeral or loc.warnings:
        parts.append("> ⚠️ **Storage:** " + " ".join(loc.warnings or ["this location does not survive a restart"]))
    return "\n\n".join(parts)


def _candidate_label(i: int, c: dict) -> str:
    key = f"{i + 1} · " if i < 9 else ""
    return f"{key}{c['name']} ({c['entity_id']}) S={c['S']:.3f}"


def _choices(cands: list[dict], keys: bool = True):
    ch = [(_candidate_label(i, c) if keys else f"{c['name']} ({c['entity_id']})", c["entity_id"])
          for i, c in enumerate(cands)]
    return ch + [("0 / N · NIL: not in the list", H.NIL), ("A · ambiguous", H.AMBIGUOUS)]


def _gallery(ctx, cands: list[dict]):
    out = []
    for c in cands:
        img = resolve_image((c.get("images") or [None])[0], ctx.config.data_dir)   # None: not servable, dropped
        if img:
            out.append((img, f"{c['rank']}. {c['name']} ({c['entity_id']})"))
    return out


def _describe_candidates(cands: list[dict]) -> str:
    lines = []
    for c in cands:
        d = html.escape((c.get("description") or "").strip())
        lines.append(f"**{c['rank']}. {html.escape(c['name'])}** `{c['entity_id']}` — {d}")
    return "\n\n".join(lines) or "_no candidates_"


def build_ui(ctx: AppContext):
    cfg = ctx.config
    inference = dict(concurrency_id="inference", concurrency_limit=cfg.inference_concurrency)
    db_queue = dict(concurrency_id="db", concurrency_limit=1)
    examples = [[m.image, m.sentence, m.mention] for m in ctx.examples[:16]]

    with gr.Blocks(title="MIMIC Studio", analytics_enabled=False) as demo:
        header = gr.Markdown(header_markdown(ctx), elem_id="header")
        if cfg.oauth:
            gr.LoginButton()
        who = gr.Markdown(elem_id="whoami")
        link_state = gr.State(None)          # last LinkResult as a dict (with explanations)
        link_image_state = gr.State(None)    # the image path of that link
        span_state = gr.State(None)          # (start, end) selected in the sentence, or None

        with gr.Tabs(elem_id="tabs") as tabs:
            # ---------------------------------------------------------------- Link
            with gr.Tab("Link", id="link", elem_id="tab_link"):
                with gr.Row():
                    with gr.Column(scale=1):
                        l_image = MentionImage(type="filepath", sources=["upload", "clipboard"], label="Image (optional)",
                                               elem_id="link_image", height=260)
                    with gr.Column(scale=2):
                        l_sentence = gr.Textbox(label="Sentence", lines=3, elem_id="link_sentence",
                                                placeholder="Type a sentence, then type or select the mention in it")
                        l_mention = gr.Textbox(label="Mention (type it, or select it in the sentence)",
                                               elem_id="link_mention")
                        l_btn = gr.Button("Link", variant="primary", elem_id="link_btn")
                l_status = gr.Markdown(elem_id="link_status")
                l_table = gr.Dataframe(headers=H.CANDIDATE_COLUMNS, interactive=False, elem_id="link_candidates",
                                       label="Ranked candidates")
                with gr.Row():
                    l_gallery = gr.Gallery(label="Candidate images", columns=5, height=220, elem_id="link_gallery")
                    l_desc = gr.Markdown(elem_id="link_descriptions")
                l_choice = gr.Radio(label="Your decision", choices=[], elem_id="link_choice")
                with gr.Row():
                    l_save = gr.Button("Save annotation", variant="primary", elem_id="link_save")
                    l_inspect = gr.Button("Inspect the top candidate →", elem_id="link_inspect")
                l_saved = gr.Markdown(elem_id="link_saved")
                if examples:
                    gr.Examples(examples=examples, inputs=[l_image, l_sentence, l_mention], label="Examples from the demo KB",
                                examples_per_page=8)

            # ---------------------------------------------------------------- Annotate
            with gr.Tab("Annotate", id="annotate", elem_id="tab_annotate"):
                with gr.Column(elem_id="annot_panel"):
                    a_progress = gr.HTML(elem_id="annot_progress")
                    a_msg = gr.Markdown(elem_id="annot_msg")
                    with gr.Row():
                        with gr.Column(scale=2):
                            a_item = gr.HTML(elem_id="annot_item")
                            a_table = gr.Dataframe(headers=H.CANDIDATE_COLUMNS, interactive=False, label="Model candidates",
                                                   elem_id="annot_candidates")
                        with gr.Column(scale=1):
                            a_image = gr.Image(label="Mention image", interactive=False, height=220,
                                               elem_id="annot_image")
                            a_gallery = gr.Gallery(label="Candidate images", columns=3, height=240,
                                                   elem_id="annot_gallery")
                    a_choice = gr.Radio(label="Decision (keys 1–9, 0/N NIL, A ambiguous)", choices=[],
                                        elem_id="annot_choice")
                    with gr.Row():
                        a_prev = gr.Button("← Previous", elem_id="annot_prev", size="sm")
                        a_submit = gr.Button("Submit (Enter)", variant="primary", elem_id="annot_submit")
                        a_skip = gr.Button("Skip (S)", elem_id="annot_skip")
                        a_undo = gr.Button("Undo (Z)", elem_id="annot_undo")
                        a_next = gr.Button("Next →", elem_id="annot_next", size="sm")
                    with gr.Row():
                        a_search = gr.Textbox(label="Search the KB for an entity not in the shortlist", scale=3,
                                              elem_id="annot_search")
                        a_search_btn = gr.Button("Search", scale=1, elem_id="annot_search_btn")
                    a_found = gr.Radio(label="Search results (pick one to use it as the decision)", choices=[],
                                       elem_id="annot_found")
                a_cur = gr.State(None)                       # {"mention_id", "shown_at", "hist"}
                a_pos = gr.BrowserState({"mention_id": None, "hist": -1}, storage_key="mimic_annotate_position")

            # ---------------------------------------------------------------- Inspect
            with gr.Tab("Inspect", id="inspect", elem_id="tab_inspect"):
                i_note = gr.Markdown(elem_id="inspect_note")
                with gr.Row():
                    i_cand = gr.Dropdown(label="Candidate", choices=[], elem_id="inspect_candidate", scale=3)
                    i_scale = gr.Radio(["shared across candidates", "this candidate only"],
                                       value="shared across candidates", label="Colour scale", scale=2,
                                       elem_id="inspect_scale")
                i_bars = gr.Plot(label="Unit scores", elem_id="inspect_bars")
                i_heat = gr.Plot(label="Token map", elem_id="inspect_heatmap")
                i_tokens = gr.HighlightedText(label="Mention sentence coloured by the map (mean over entity tokens)",
                                              elem_id="inspect_tokens", combine_adjacent=False, show_legend=False)
                with gr.Row():
                    i_mimg = gr.Image(label="Mention image", interactive=False, elem_id="inspect_mention_overlay",
                                      type="pil", height=300)
                    i_eimg = gr.Image(label="Entity image", interactive=False, elem_id="inspect_entity_overlay",
                                      type="pil", height=300)
                i_files = gr.File(label="Downloads: figure data (JSON) and overlays (PNG)", file_count="multiple",
                                  elem_id="inspect_downloads")

            # ---------------------------------------------------------------- Knowledge base
            with gr.Tab("Knowledge base", id="kb", elem_id="tab_kb"):
                with gr.Row():
                    k_query = gr.Textbox(label="Search names, aliases and ids (empty: browse)", scale=3, elem_id="kb_query")
                    k_search = gr.Button("Search", scale=1, elem_id="kb_search")
                k_table = gr.Dataframe(headers=["id", "name", "aliases", "description", "images", "version"],
                                       interactive=False, elem_id="kb_table", max_height=360)
                k_gallery = gr.Gallery(label="Images", columns=8, height=180, elem_id="kb_gallery")
                with gr.Accordion("Add or edit an entity (select a row to load it)", open=True):
                    with gr.Row():
                        k_id = gr.Textbox(label="Id", elem_id="kb_id")
                        k_name = gr.Textbox(label="Name", elem_id="kb_name")
                        k_aliases = gr.Textbox(label="Aliases (separated by |)", elem_id="kb_aliases")
                    k_text = gr.Textbox(label="Description / attributes", lines=3, elem_id="kb_text")
                    k_images = gr.File(label="Add images", file_count="multiple", file_types=["image"],
                                       elem_id="kb_images")
                    k_keep = gr.Checkbox(value=True, label="Keep the entity's current images")
                    k_save = gr.Button("Save entity (updates the index in place)", variant="primary", elem_id="kb_save")
                k_msg = gr.Markdown(elem_id="kb_msg")
                with gr.Accordion("Import a KB file (official kb_entity.json, JSONL, CSV)", open=False):
                    k_file = gr.File(label="KB file", file_types=[".json", ".jsonl", ".csv"], elem_id="kb_file")
                    k_import = gr.Button("Import", elem_id="kb_import")
                    k_report = gr.JSON(label="Import report", elem_id="kb_report")

            # ---------------------------------------------------------------- Models & data
            with gr.Tab("Models & data", id="models", elem_id="tab_models") as models_tab:
                m_refresh = gr.Button("Refresh", size="sm", elem_id="models_refresh")
                m_versions = gr.Dataframe(label="Model versions", interactive=False, elem_id="models_versions")
                m_corr = gr.Dataframe(label="Corrections by annotator", interactive=False, elem_id="models_corrections")
                m_overview = gr.JSON(label="Overview and agreement", elem_id="models_overview")
                with gr.Row():
                    m_fmt = gr.Radio(list(H.EXPORT_FORMATS), value="jsonl", label="Export format",
                                     elem_id="models_export_format")
                    m_export = gr.Button("Export", elem_id="models_export")
                m_file = gr.File(label="Export", elem_id="models_export_file")
                with gr.Row():
                    m_version = gr.Dropdown(label="Model version", choices=[], elem_id="models_version", scale=3)
                    m_serve = gr.Button("Serve this version (rollback / roll forward)", elem_id="models_serve", scale=2)
                m_msg = gr.Markdown(elem_id="models_msg")
                with gr.Accordion("Retraining (corrections → fine-tune → evaluated version → promotion)", open=True):
                    gr.Markdown("Runs `python -m mimic retrain` in its own process: builds a training set from the "
                                "accepted annotations, holds out a fixed slice, fine-tunes from the serving model, "
                                "evaluates both on the held-out corrections, registers the version and promotes it "
                                "only if it is not worse. A promoted version is loaded in the background and served "
                                "when ready. Reviewers and admins only.")
                    m_retrain = gr.Button("Start retraining now", variant="primary", elem_id="models_retrain")
                    m_progress = gr.HTML(elem_id="models_retrain_progress")
                    m_log = gr.Textbox(label="Log", lines=10, max_lines=20, autoscroll=True, interactive=False,
                                       elem_id="models_retrain_log")
                    m_runs = gr.Dataframe(label="Training runs", interactive=False, elem_id="models_runs")
                m_job = gr.State(None)                   # {"run_id", "offset"} of the run followed
                m_timer = gr.Timer(2.0, active=False)

            # ---------------------------------------------------------------- Analysis
            with gr.Tab("Analysis", id="analysis", elem_id="tab_analysis"):
                gr.Markdown("Where the model fails (ELEVANT-style labels: retrieval miss, outranked and by which "
                            "unit, NIL errors) and what a new version fixed. Analyse the served model on the "
                            "corrections collected so far, or load a run from `python -m mimic analyze --out-records`.")
                with gr.Row():
                    y_run_btn = gr.Button("Analyse the served model on the corrections", variant="primary",
                                          elem_id="analysis_run")
                    y_upload = gr.File(label="or load records (JSONL)", file_types=[".jsonl"], elem_id="analysis_upload")
                with gr.Row():
                    y_run = gr.Dropdown(label="Run", choices=[], elem_id="analysis_select", scale=3)
                    y_labels = gr.Dropdown(label="Labels", multiselect=True, elem_id="analysis_labels", scale=2,
                                           choices=["correct", "retrieval_miss", "outranked", "false_nil",
                                                    "missed_nil", "correct_nil"])
                    y_dataset = gr.Dropdown(label="Dataset", choices=[], elem_id="analysis_dataset", scale=1)
                    y_img = gr.Radio(["any", "with image", "without image"], value="any", label="Image",
                                     elem_id="analysis_image", scale=1)
                y_msg = gr.Markdown(elem_id="analysis_msg")
                y_summary = gr.JSON(label="Summary", elem_id="analysis_summary")
                with gr.Row():
                    y_fig_labels = gr.Plot(elem_id="analysis_fig_labels")
                    y_fig_units = gr.Plot(elem_id="analysis_fig_units")
                with gr.Row():
                    y_fig_recall = gr.Plot(elem_id="analysis_fig_recall")
                    y_fig_rel = gr.Plot(elem_id="analysis_fig_reliability")
                y_table = gr.Dataframe(label="Mentions (click a row to open it in Inspect)", interactive=False,
                                       elem_id="analysis_table", max_height=420, show_search="filter")
                y_csv = gr.File(label="Table as CSV", elem_id="analysis_csv")
                with gr.Accordion("Compare two runs (A = baseline, B = newer)", open=False):
                    with gr.Row():
                        y_a = gr.Dropdown(label="A", choices=[], elem_id="analysis_compare_a")
                        y_b = gr.Dropdown(label="B", choices=[], elem_id="analysis_compare_b")
                        y_cmp_btn = gr.Button("Compare", elem_id="analysis_compare")
                    y_cmp_counts = gr.JSON(label="Fixed, new errors, unchanged", elem_id="analysis_compare_counts")
                    y_cmp_fig = gr.Plot(elem_id="analysis_compare_fig")
                    y_cmp_table = gr.Dataframe(interactive=False, elem_id="analysis_compare_table", max_height=420,
                                               show_search="filter")
                    y_cmp_csv = gr.File(label="Comparison as CSV", elem_id="analysis_compare_csv")

        # ------------------------------------------------------------ hidden API components
        with gr.Column(visible=False):
            api_image = MentionImage(type="filepath")
            api_sentence, api_mention = gr.Textbox(), gr.Textbox()
            api_link_out = gr.JSON()
            api_link_btn = gr.Button()
            api_mid, api_decision, api_entity, api_annotator = gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox()
            api_ann_out = gr.Number()
            api_ann_btn = gr.Button()
            api_fmt = gr.Textbox()
            api_file = gr.File()
            api_exp_btn = gr.Button()

        # ================================================================ handlers
        def on_load(pos, request: gr.Request):
            name = username_of(request)
            who_md = (f"Signed in as **{name}**" if name else
                      ("Not signed in: saving as **local** (single-user local app)" if cfg.anonymous_writes
                       else "Not signed in: you can link and inspect; sign in to save annotations"))
            return (who_md,) + show_item(pos, request)

        # -- Link
        def do_link(image, sentence, mention, span):
            t0 = time.perf_counter()
            target = mention
            if span and isinstance(sentence, str) and sentence[span[0]:span[1]] == (mention or ""):
                target = tuple(span)
            try:
                r = H.link(ctx, image, sentence, target)
            except H.UserError as exc:
                return (None, None, _msg(str(exc), "error"), H.candidates_table(None), [], "",
                        gr.update(choices=[], value=None), gr.update(choices=[], value=None), "")
            d = r.to_dict()
            cands = d["candidates"]
            ms = (time.perf_counter() - t0) * 1000
            status = (f"{len(cands)} candidates for **{html.escape(r.mention)}** from a shortlist of "
                      f"{r.shortlist_size} ({ms:.0f} ms)" + (" · scoring: zero-shot similarities" if r.scoring ==
                                                              "zero-shot" else "")
                      + (" · **NIL suggested** (top score below the threshold)" if r.nil else ""))
            pre = H.NIL if r.nil else (cands[0]["entity_id"] if cands else None)
            insp = [(f"{c['rank']}. {c['name']} ({c['entity_id']})", c["entity_id"]) for c in cands]
            return (d, image, _msg(status, "ok"), H.candidates_table(d), _gallery(ctx, cands),
                    _describe_candidates(cands[:5]), gr.update(choices=_choices(cands), value=pre),
                    gr.update(choices=insp, value=cands[0]["entity_id"] if cands else None), "")

        l_btn.click(do_link, [l_image, l_sentence, l_mention, span_state],
                    [link_state, link_image_state, l_status, l_table, l_gallery, l_desc, l_choice, i_cand, l_saved],
                    **inference, **PRIVATE)
        l_sentence.submit(do_link, [l_image, l_sentence, l_mention, span_state],
                          [link_state, link_image_state, l_status, l_table, l_gallery, l_desc, l_choice, i_cand, l_saved],
                          **inference, **PRIVATE)
        l_mention.submit(do_link, [l_image, l_sentence, l_mention, span_state],
                         [link_state, link_image_state, l_status, l_table, l_gallery, l_desc, l_choice, i_cand, l_saved],
                         **inference, **PRIVATE)

        def on_select_span(sentence, evt: gr.SelectData):
            """A selection inside the sentence marks the mention. Selecting the whole text is how
            people replace it (select all, type), so that never marks anything."""
            idx = evt.index
            if (isinstance(idx, (list, tuple)) and len(idx) == 2 and idx[1] > idx[0]
                    and (idx[1] - idx[0]) < len(sentence or "") and (evt.value or "").strip()):
                return evt.value, [int(idx[0]), int(idx[1])]
            return gr.update(), gr.update()

        l_sentence.select(on_select_span, l_sentence, [l_mention, span_state], **PRIVATE)
        l_mention.input(lambda: None, None, span_state, **PRIVATE)   # typing a mention drops a selected span

        def do_save_link(result, image, choice, request: gr.Request):
            try:
                rec = H.save_link(ctx, username_of(request), result, choice, image=image)
            except H.UserError as exc:
                return _msg(str(exc), "error")
            what = {"entity": f"entity {rec.entity_id}", "nil": "NIL", "ambiguous": "ambiguous"}[rec.decision]
            return _msg(f"Saved annotation #{rec.id} ({what}) by {rec.annotator}"
                        + (" (already saved)" if rec.duplicate else ""), "ok")

        l_save.click(do_save_link, [link_state, link_image_state, l_choice], l_saved, **db_queue, **PRIVATE)

        # -- Inspect
        def do_inspect(result, image, entity_id, scale):
            try:
                v = H.inspect(ctx, result, image, entity_id, shared_scale=(scale or "").startswith("shared"))
            except H.UserError as exc:
                return (_msg(str(exc), "error"), None, None, [], None, None, None)
            return v.note, v.bars, v.heatmap, v.tokens, v.mention_overlay, v.entity_overlay, v.files

        inspect_out = [i_note, i_bars, i_heat, i_tokens, i_mimg, i_eimg, i_files]
        # .input (user choices only): a new link sets the dropdown without computing an unseen view
        i_cand.input(do_inspect, [link_state, link_image_state, i_cand, i_scale], inspect_out, **inference, **PRIVATE)
        i_scale.input(do_inspect, [link_state, link_image_state, i_cand, i_scale], inspect_out, **inference, **PRIVATE)

        def go_inspect(result):
            top = result["candidates"][0]["entity_id"] if result and result["candidates"] else None
            return gr.Tabs(selected="inspect"), gr.update(value=top)

        l_inspect.click(go_inspect, link_state, [tabs, i_cand], **PRIVATE).then(
            do_inspect, [link_state, link_image_state, i_cand, i_scale], inspect_out, **inference, **PRIVATE)

        # -- Annotate
        def render_item(m, pred, note: str, cur: dict, request) -> tuple:
            name = username_of(request)
            try:
                counts = H.annotator_counts(ctx, name)
            except H.UserError:
                counts = None
            prog = _progress_html(counts)
            if m is None:
                return (prog, note or _msg("Nothing pending in your queue: every mention is decided.", "ok"),
                        "<p>Queue empty.</p>", H.candidates_table(None), None, [], gr.update(choices=[], value=None),
                        cur, cur)
            cands = [{"rank": c.rank + 1, "entity_id": c.entity_id, "name": c.entity_name, "S": c.s, "S_T": c.s_t,
                      "S_V": c.s_v, "S_C": c.s_c, "margin": None, "retrievers": []} for c in (pred.candidates if pred else [])]
            for i in range(len(cands) - 1):
                cands[i]["margin"] = cands[i]["S"] - cands[i + 1]["S"]
            table = H.candidates_table({"candidates": cands})
            current = None
            hist_dec = {a.mention_id: a for a in (H.history(ctx, name, 200) if ctx.can_write(name) else [])
                        if a.status == "current" and a.decision != "skip"}
            prior = hist_dec.get(m.id)
            if prior:
                current = H.choice_value(prior.decision, prior.entity_id)
                note = note or _msg(f"Already decided ({prior.decision}{' ' + prior.entity_id if prior.entity_id else ''});"
                                    " submitting again replaces that decision.", "info")
            elif cands:
                current = cands[0]["entity_id"]    # the model's suggestion, pre-selected
            item_html = (f"<div class='mention-item' data-mention-id='{m.id}'><p style='font-size:1.2em'>{m.html()}</p>"
                         f"<p><small>mention #{m.id} · {html.escape(m.source or '')}"
                         + (f" · margin {m.margin:.4f}" if m.margin is not None else "") + "</small></p></div>")
            cur = {**cur, "mention_id": m.id, "shown_at": time.time()}
            for c in cands:
                rec = ctx.service.entity(c["entity_id"])
                c["images"] = rec.get("images", []) if rec else []
            return (prog, note, item_html, table, m.image_path, _gallery(ctx, cands),
                    gr.update(choices=_choices(cands), value=current),
                    cur, {"mention_id": m.id, "hist": cur.get("hist", -1)})

        def show_item(pos, request: gr.Request, note: str = ""):
            name = username_of(request)
            if not ctx.can_write(name):
                return render_item(None, None, _msg("Sign in to annotate.", "error"), {"hist": -1}, request)
            pos = pos or {}
            try:
                mid = pos.get("mention_id")
                if mid is not None and pos.get("hist", -1) >= 0:
                    m, pred = H.get_item(ctx, mid)
                    return render_item(m, pred, note, {"hist": pos["hist"]}, request)
                item = H.next_item(ctx, name)
            except H.UserError as exc:
                return render_item(None, None, _msg(str(exc), "error"), {"hist": -1}, request)
            if item is None:
                return render_item(None, None, note, {"hist": -1}, request)
            return render_item(item.mention, item.prediction, note, {"hist": -1}, request)

        annot_out = [a_progress, a_msg, a_item, a_table, a_image, a_gallery, a_choice, a_cur, a_pos]

        def do_submit(cur, choice, request: gr.Request):
            cur = cur or {}
            if cur.get("mention_id") is None:
                return show_item(None, request, _msg("nothing to submit", "error"))
            try:
                rec = H.annotate(ctx, username_of(request), cur["mention_id"], choice,
                                 seconds_spent=max(0.0, time.time() - cur.get("shown_at", time.time())))
            except H.UserError as exc:
                return show_item({"mention_id": cur["mention_id"], "hist": cur.get("hist", -1)}, request,
                                 _msg(str(exc), "error"))
            what = rec.entity_id if rec.decision == "entity" else rec.decision
            note = _msg(f"Saved #{rec.id}: mention {rec.mention_id} → {what}", "ok")
            if cur.get("hist", -1) >= 0:     # re-decided an earlier item: go one step newer
                return step(cur, -1, request, note)
            return show_item({"hist": -1}, request, note)

        def do_skip(cur, request: gr.Request):
            cur = cur or {}
            if cur.get("mention_id") is None:
                return show_item(None, request)
            try:
                H.skip(ctx, username_of(request), cur["mention_id"])
            except H.UserError as exc:
                return show_item(None, request, _msg(str(exc), "error"))
            return show_item({"hist": -1}, request, _msg(f"Skipped mention {cur['mention_id']}: it comes back at the "
                                                         "end of your queue", "info"))

        def do_undo(cur, request: gr.Request):
            try:
                rec = H.undo(ctx, username_of(request))
            except H.UserError as exc:
                return show_item(None, request, _msg(str(exc), "error"))
            if rec is None:
                return show_item({"hist": -1}, request, _msg("nothing to undo", "info"))
            # show the mention whose decision was undone, so it can be decided again
            try:
                ctx.store.release(ctx.require("annotate", username_of(request)))
            except Exception:  # noqa: BLE001 - releasing the old lease is best effort
                pass
            m, pred = H.get_item(ctx, rec.mention_id)
            return render_item(m, pred, _msg(f"Undid #{rec.id} ({rec.decision}) on mention {rec.mention_id}", "ok"),
                               {"hist": -1}, request)

        def step(cur, delta: int, request: gr.Request, note: str = ""):
            """delta +1: one item back in your history (←); -1: one item forward (→)."""
            cur = cur or {"hist": -1}
            name = username_of(request)
            try:
                hist = [a for a in H.history(ctx, name, 200) if a.decision != "skip"]
            except H.UserError as exc:
                return show_item(None, request, _msg(str(exc), "error"))
            seen, mids = set(), []
            for a in hist:                       # newest first, one entry per mention
                if a.mention_id not in seen:
                    seen.add(a.mention_id)
                    mids.append(a.mention_id)
            k = cur.get("hist", -1) + delta
            if k < 0 or not mids:
                return show_item({"hist": -1}, request, note)
            k = min(k, len(mids) - 1)
            m, pred = H.get_item(ctx, mids[k])
            return render_item(m, pred, note or _msg(f"History item {k + 1} of {len(mids)}", "info"), {"hist": k},
                               request)

        def do_search(query):
            try:
                recs = H.search_kb(ctx, query, limit=20)
            except H.UserError as exc:
                return gr.update(choices=[], value=None, label=str(exc))
            return gr.update(choices=[(f"{r.name} ({r.id}) — {r.text[:80]}", r.id) for r in recs], value=None,
                             label=f"{len(recs)} result(s): pick one to use it as the decision")

        a_submit.click(do_submit, [a_cur, a_choice], annot_out, **db_queue, **PRIVATE)
        a_skip.click(do_skip, [a_cur], annot_out, **db_queue, **PRIVATE)
        a_undo.click(do_undo, [a_cur], annot_out, **db_queue, **PRIVATE)
        def go_prev(cur, request: gr.Request):
            return step(cur, +1, request)

        def go_next(cur, request: gr.Request):
            return step(cur, -1, request)

        a_prev.click(go_prev, [a_cur], annot_out, **PRIVATE)
        a_next.click(go_next, [a_cur], annot_out, **PRIVATE)
        a_search_btn.click(do_search, a_search, a_found, **PRIVATE)
        a_search.submit(do_search, a_search, a_found, **PRIVATE)
        a_found.select(lambda found: gr.update(choices=[(f"search · {found}", found), ("0 / N · NIL: not in the list", H.NIL),
                                                         ("A · ambiguous", H.AMBIGUOUS)], value=found),
                       a_found, a_choice, **PRIVATE)

        # -- Knowledge base
        def kb_rows(query):
            try:
                recs = H.search_kb(ctx, query, limit=200)
            except H.UserError as exc:
                return [], [], _msg(str(exc), "error")
            rows = [[r.id, r.name, " | ".join(r.aliases), r.text, len(r.images), r.version] for r in recs]
            gal = [(imgs[0], f"{r.name} ({r.id})") for r in recs for imgs in [H.entity_images(ctx, r)] if imgs][:48]
            return rows, gal, _msg(f"{len(recs)} entities" + (" (first 200)" if len(recs) == 200 else ""), "info")

        k_search.click(kb_rows, k_query, [k_table, k_gallery, k_msg], **PRIVATE)
        k_query.submit(kb_rows, k_query, [k_table, k_gallery, k_msg], **PRIVATE)

        def kb_pick(table, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            try:
                eid = table.iloc[row, 0] if hasattr(table, "iloc") else table[row][0]
                r = ctx.store.get_entity(str(eid))
            except Exception:  # noqa: BLE001
                return gr.update(), gr.update(), gr.update(), gr.update()
            return r.id, r.name, " | ".join(r.aliases), r.text

        k_table.select(kb_pick, k_table, [k_id, k_name, k_aliases, k_text], **PRIVATE)

        def kb_save(eid, name, aliases, text, files, keep, request: gr.Request):
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
            try:
                rec = H.save_entity(ctx, username_of(request), eid, name, text, aliases, paths, keep_images=keep)
            except H.UserError as exc:
                return _msg(str(exc), "error"), gr.update()
            return (_msg(f"Saved {rec.id} (version {rec.version}); the index now serves it "
                         f"({len(ctx.service)} entities)", "ok"), header_markdown(ctx))

        k_save.click(kb_save, [k_id, k_name, k_aliases, k_text, k_images, k_keep], [k_msg, header], **db_queue, **PRIVATE)

        def kb_import(file, request: gr.Request, progress=gr.Progress()):
            path = file if isinstance(file, str) else getattr(file, "name", None)
            try:
                rep = H.import_kb_file(ctx, username_of(request), path, progress=progress)
            except H.UserError as exc:
                return {"error": str(exc)}, _msg(str(exc), "error"), gr.update()
            return rep, _msg(f"Imported {rep['imported']} entities", "ok"), header_markdown(ctx)

        k_import.click(kb_import, k_file, [k_report, k_msg, header], **db_queue, **PRIVATE)

        # -- Models & data
        def models_refresh():
            corr, ov = H.corrections_summary(ctx)
            return H.model_versions(ctx), corr, ov

        m_refresh.click(models_refresh, None, [m_versions, m_corr, m_overview], **PRIVATE)
        models_tab.select(models_refresh, None, [m_versions, m_corr, m_overview], **PRIVATE)

        def versions_update():
            names = [v.name for v in ctx.store.list_model_versions()]
            return gr.update(choices=names, value=ctx.service.served.version if ctx.service.served.version in names
                             else None)

        def do_serve(name, request: gr.Request):
            try:
                H.serve_version(ctx, username_of(request), name)
            except H.UserError as exc:
                return _msg(str(exc), "error"), gr.update(), gr.update()
            return _msg(f"Now serving {name}", "ok"), header_markdown(ctx), H.model_versions(ctx)

        m_serve.click(do_serve, m_version, [m_msg, header, m_versions], **db_queue, **PRIVATE)

        def do_retrain(request: gr.Request):
            try:
                run_id = H.start_retrain(ctx, username_of(request))
            except H.UserError as exc:
                return _msg(str(exc), "error"), None, gr.Timer(active=False), "", H.training_runs(ctx)
            return (_msg(f"Retraining run {run_id} started", "ok"), {"run_id": run_id, "offset": 0},
                    gr.Timer(active=True), "", H.training_runs(ctx))

        m_retrain.click(do_retrain, None, [m_msg, m_job, m_timer, m_log, m_runs], **db_queue, **PRIVATE)

        def poll_job(job, log_text):
            if not job:
                return gr.update(), gr.update(), job, gr.Timer(active=False), gr.update(), gr.update(), gr.update()
            prog, new, nxt = H.retrain_status(ctx, job["run_id"], job["offset"])
            pct = 100 * float(prog.get("fraction") or 0)
            bar = (f"<div class='annot-progress'><div class='bar'><div class='fill' style='width:{pct:.0f}%'></div>"
                   f"</div><div class='counts'>run {job['run_id']} · {prog.get('status')} · {prog.get('step', '')} · "
                   f"{html.escape(str(prog.get('message', '')))}</div></div>")
            done = prog.get("status") in ("succeeded", "failed", "cancelled") or prog.get("alive") is False
            job = {**job, "offset": nxt}
            log_text = ((log_text or "") + new)[-20000:]
            if done:   # the run may have promoted a version: load it now rather than at the next watch
                ctx.follow_promotion()
                return (bar, log_text, job, gr.Timer(active=False), H.training_runs(ctx), H.model_versions(ctx),
                        header_markdown(ctx))
            return bar, log_text, job, gr.Timer(active=True), gr.update(), gr.update(), gr.update()

        m_timer.tick(poll_job, [m_job, m_log], [m_progress, m_log, m_job, m_timer, m_runs, m_versions, header],
                     **PRIVATE)
        header_timer = gr.Timer(15.0)
        header_timer.tick(lambda: header_markdown(ctx), None, header, **PRIVATE)

        def do_export_ui(fmt, request: gr.Request):
            try:
                return H.export(ctx, fmt, username_of(request))
            except H.UserError as exc:
                raise gr.Error(str(exc)) from None

        m_export.click(do_export_ui, m_fmt, m_file, **db_queue, **PRIVATE)

        # -- Analysis
        analysis_out = [y_msg, y_summary, y_fig_labels, y_fig_units, y_fig_recall, y_fig_rel, y_table, y_csv, y_dataset]

        def show_analysis(path, labels, dataset, img):
            try:
                v = H.analysis_view(ctx, path, labels, dataset, img)
            except H.UserError as exc:
                return (_msg(str(exc), "error"),) + (None,) * 7 + (gr.update(),)
            f = v.figures
            datasets = sorted(v.summary.get("datasets", {}))
            return (_msg(f"{len(v.table)} of {v.summary['mentions']} mentions shown", "info"), v.summary, f["labels"],
                    f["units"], f["recall"], f["reliability"], v.table, v.csv_path,
                    gr.update(choices=[("all", "")] + [(d, d) for d in datasets],
                              value=dataset if dataset in datasets else ""))

        def runs_update(selected=None):
            runs = H.analysis_runs(ctx)
            value = selected or (runs[0][1] if runs else None)
            return (gr.update(choices=runs, value=value), gr.update(choices=runs),
                    gr.update(choices=runs, value=value))

        def do_analyze(request: gr.Request, progress=gr.Progress()):
            try:
                path = H.analyze_corrections(ctx, username_of(request), progress=progress)
            except H.UserError as exc:
                return (gr.update(), gr.update(), gr.update(), _msg(str(exc), "error"))
            return runs_update(path) + (_msg(f"Analysed {len(H.load_analysis(ctx, path))} corrected mentions with "
                                             f"{ctx.service.served.version}", "ok"),)

        def do_upload(file):
            path = file if isinstance(file, str) else getattr(file, "name", None)
            if not path:
                return gr.update(), gr.update(), gr.update(), ""
            try:
                H.load_analysis(ctx, path)
            except H.UserError as exc:
                return gr.update(), gr.update(), gr.update(), _msg(str(exc), "error")
            runs = H.analysis_runs(ctx) + [(f"uploaded · {Path(path).name}", path)]
            return (gr.update(choices=runs, value=path), gr.update(choices=runs), gr.update(choices=runs),
                    _msg(f"Loaded {Path(path).name}", "ok"))

        y_run_btn.click(do_analyze, None, [y_run, y_a, y_b, y_msg], **inference, **PRIVATE)
        y_upload.upload(do_upload, y_upload, [y_run, y_a, y_b, y_msg], **PRIVATE)
        for comp in (y_run, y_labels, y_dataset, y_img):
            comp.change(show_analysis, [y_run, y_labels, y_dataset, y_img], analysis_out, **PRIVATE)

        def do_compare(a, b):
            try:
                cmp, table, csv, fig = H.analysis_compare(ctx, a, b)
            except H.UserError as exc:
                return {"error": str(exc)}, None, None, None
            return ({"A": cmp["version_a"], "B": cmp["version_b"], **cmp["counts"],
                     "only_in_A": len(cmp["only_in_a"]), "only_in_B": len(cmp["only_in_b"])}, fig, table, csv)

        y_cmp_btn.click(do_compare, [y_a, y_b], [y_cmp_counts, y_cmp_fig, y_cmp_table, y_cmp_csv], **PRIVATE)

        def open_in_inspect(path, table, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            try:
                mid = str(table.iloc[row]["mention_id"])
            except Exception:  # noqa: BLE001 - a click outside the data rows
                return (gr.update(),) * 11
            m = H.analysis_mention(ctx, path, mid)
            if m is None:
                return (gr.update(),) * 11
            span = [m["start"], m["end"]] if m["start"] is not None else None
            out = do_link(m["image"], m["sentence"], m["mention"], span)
            result = out[0]
            target = None
            if result:
                ids = [c["entity_id"] for c in result["candidates"]]
                target = m["gold"] if m["gold"] in ids else (ids[0] if ids else None)
            return out[:7] + (gr.update(choices=out[7]["choices"] if isinstance(out[7], dict) else [],
                                        value=target),) + (gr.Tabs(selected="inspect"), m["sentence"], m["mention"])

        y_table.select(open_in_inspect, [y_run, y_table],
                       [link_state, link_image_state, l_status, l_table, l_gallery, l_desc, l_choice, i_cand, tabs,
                        l_sentence, l_mention], **inference, **PRIVATE).then(
            do_inspect, [link_state, link_image_state, i_cand, i_scale], inspect_out, **inference, **PRIVATE)

        # -- API (documented endpoints)
        def api_link(image: str | None, sentence: str, mention: str) -> dict:
            """Link a mention. image: optional image file; sentence: the text; mention: the mention string
            (it must occur in the sentence). Returns the ranked candidates with S, S_T, S_V, S_C, margin."""
            try:
                r = H.link(ctx, image, sentence, mention)
            except H.UserError as exc:
                raise gr.Error(str(exc)) from None
            return H.result_json(ctx, r)

        def api_annotate(mention_id: str, decision: str, entity_id: str, annotator: str,
                         request: gr.Request) -> float:
            """Store a decision (entity | nil | ambiguous | skip) for a stored mention (id or uid).
            annotator must be the signed-in user (or empty). Returns the stored annotation id."""
            try:
                return H.annotate_api(ctx, username_of(request), mention_id, decision, entity_id or None,
                                      annotator or None)
            except H.UserError as exc:
                raise gr.Error(str(exc)) from None

        def api_export(fmt: str, request: gr.Request) -> str:
            """Export the current decisions: jsonl | csv | training (zip of the training layout)."""
            try:
                return H.export(ctx, fmt, username_of(request))
            except H.UserError as exc:
                raise gr.Error(str(exc)) from None

        api_link_btn.click(api_link, [api_image, api_sentence, api_mention], api_link_out, api_name="link", **inference)
        api_ann_btn.click(api_annotate, [api_mid, api_decision, api_entity, api_annotator], api_ann_out,
                          api_name="annotate", **db_queue)
        api_exp_btn.click(api_export, api_fmt, api_file, api_name="export", **db_queue)

        demo.load(on_load, [a_pos], [who] + annot_out, **PRIVATE)
        demo.load(models_refresh, None, [m_versions, m_corr, m_overview], **PRIVATE)
        demo.load(lambda: (versions_update(), H.training_runs(ctx)), None, [m_version, m_runs], **PRIVATE)
        demo.load(lambda: kb_rows(""), None, [k_table, k_gallery, k_msg], **PRIVATE)
        demo.load(lambda: runs_update(), None, [y_run, y_a, y_b], **PRIVATE)

    allowed, blocked = browser_paths(cfg, ctx.store.settings)   # only DATA_DIR/images and assets/ are served
    launch_kwargs = dict(auth=cfg.auth(), auth_message="MIMIC Studio: sign in to annotate",
                         head=(STATIC / "keyboard.html").read_text(encoding="utf-8"),
                         css=(STATIC / "studio.css").read_text(encoding="utf-8"),
                         server_name=cfg.server_name, server_port=cfg.server_port, footer_links=["api", "settings"],
                         allowed_paths=allowed, blocked_paths=blocked, show_error=True)
    return demo, launch_kwargs


def _progress_html(c: dict | None) -> str:
    if not c:
        return ""
    total = max(1, c["mentions"])
    pct = 100.0 * c["complete"] / total
    rate = f" · {c['items_per_hour']} items/h" if c.get("items_per_hour") else ""
    return (f"<div class='annot-progress'><div class='bar'><div class='fill' style='width:{pct:.1f}%'></div></div>"
            f"<div class='counts'>{c['complete']}/{c['mentions']} mentions complete · you: {c['decided']} decided "
            f"({c['entity']} entity, {c['nil']} NIL, {c['ambiguous']} ambiguous), {c['skipped']} skipped · "
            f"{c['pending_for_you']} pending for you{rate}</div></div>")
