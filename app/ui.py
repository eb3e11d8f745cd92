"""The Gradio Blocks of MIMIC Studio: the header, the nine tabs (app/tabs/, one module each), the
wiring between tabs, the documented API (app/api.py) and the launch settings.

    demo, launch_kwargs = build_ui(ctx)
    demo.queue(...).launch(**launch_kwargs)

Queues: link/inspect run in the "inference" queue (MIMIC_INFERENCE_CONCURRENCY at once), every
write in the "db" queue (one at a time, on top of the store's own transaction safety). UI-only
events are private; `/link`, `/annotate` and `/export` are the documented API.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from . import api
from .common import (
    HEADER_SECONDS,
    PRIVATE,
    Shared,
    add_private_root,
    browser_states,
    header_markdown,
    header_update,
    username_of,
)
from .context import AppContext, browser_paths
from .media import MediaRoute
from .tabs import analysis, annotate, inspect_tab, knowledge_base, link, models, projects, review, users

STATIC = Path(__file__).resolve().parent / "static"


def build_ui(ctx: AppContext):
    cfg = ctx.config
    add_private_root(cfg.data_dir)  # its absolute path is never shown (header, messages, /link)
    with gr.Blocks(title="MIMIC Studio", analytics_enabled=False) as demo:
        header = gr.Markdown(header_markdown(ctx), elem_id="header")
        if cfg.oauth:
            gr.LoginButton()
        who = gr.Markdown(elem_id="whoami")
        link_state, link_image_state = gr.State(None), gr.State(None)
        # created here, rendered in Inspect: every link fills it, and the Link tab is built first
        picker = gr.Dropdown(label="Candidate", choices=[], elem_id="inspect_candidate", scale=3, render=False)
        states = browser_states()  # here, not in a tab: read from localStorage before the page load's events
        with gr.Tabs(elem_id="tabs") as tabs:
            shared = Shared(
                browser_states=states,
                demo=demo,
                header=header,
                tabs=tabs,
                link_state=link_state,
                link_image_state=link_image_state,
                candidate_picker=picker,
                inference=dict(concurrency_id="inference", concurrency_limit=cfg.inference_concurrency),
                db_queue=dict(concurrency_id="db", concurrency_limit=1),
            )
            link_tab = link.build(ctx, shared)
            annotate_tab = annotate.build(ctx, shared)
            inspect = inspect_tab.build(ctx, shared)
            knowledge_base.build(ctx, shared)
            models.build(ctx, shared)
            analysis_tab = analysis.build(ctx, shared)
            projects.build(ctx, shared)
            review.build(ctx, shared)
            users.build(ctx, shared)
        api.build(ctx, shared)
        _wire_across_tabs(ctx, shared, who, link_tab, annotate_tab, inspect, analysis_tab)

    allowed, blocked = browser_paths(cfg, ctx.store.settings)  # only DATA_DIR/images and assets/ are served
    # argon2 check (MIMIC_USERS and the database's users), sign-in rate limits, session expiry (app/auth.py)
    auth = cfg.launch_auth(ctx.store)
    app_kwargs = auth.pop("app_kwargs", {})
    # the card list's images by content-addressed URL (app/media.py), inside the sign-in guard
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(MediaRoute, data_dir=cfg.data_dir)]
    launch_kwargs = dict(
        **auth,
        app_kwargs=app_kwargs,
        auth_message="MIMIC Studio: sign in to annotate",
        head=(STATIC / "keyboard.html").read_text(encoding="utf-8"),
        css=(STATIC / "studio.css").read_text(encoding="utf-8"),
        server_name=cfg.server_name,
        server_port=cfg.server_port,
        footer_links=["api", "settings"],
        allowed_paths=allowed,
        blocked_paths=blocked,
        # only gr.Error messages (written for users) reach a client; other exceptions may name server paths
        show_error=False,
        # uploads past MIMIC_MAX_UPLOAD_MB are refused by Gradio before any handler runs (the KB
        # import checks the size again, for files handed to it otherwise)
        max_file_size=cfg.max_upload_bytes,
    )
    return demo, launch_kwargs


def _wire_across_tabs(
    ctx: AppContext,
    shared: Shared,
    who: gr.Markdown,
    link_tab: link.LinkTab,
    annotate_tab: annotate.AnnotateTab,
    inspect: inspect_tab.InspectTab,
    analysis_tab: analysis.AnalysisTab,
) -> None:
    """Events that join tabs: Link → Inspect, an Analysis row → Link and Inspect, the page load (who
    is signed in, their Annotate item) and the header's refresh."""
    cfg, inference = ctx.config, shared.inference

    def on_load(pos, remembered, request: gr.Request):
        name = username_of(request)
        who_md = (
            f"Signed in as **{name}**"
            if name
            else (
                "Not signed in: saving as **local** (single-user local app)"
                if cfg.anonymous_writes
                else "Not signed in: you can link and inspect; sign in to save annotations"
            )
        )
        project = annotate_tab.restored_project(name, remembered)  # the picker's value at this load
        return (who_md,) + annotate_tab.show_item(pos, request, project=project)

    def go_inspect(result):
        top = result["candidates"][0]["entity_id"] if result and result["candidates"] else None
        return gr.Tabs(selected="inspect"), gr.update(value=top)

    def open_in_inspect(path, table, evt: gr.SelectData):
        """Link the clicked row's mention (Link tab filled in) and show the gold entity, else the
        top candidate, in Inspect."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            mid = str(table.iloc[row]["mention_id"])
        except Exception:
            return (gr.update(),) * 12
        m = analysis.analysis_mention(ctx, path, mid)
        if m is None:
            return (gr.update(),) * 12
        span = [m["start"], m["end"]] if m["start"] is not None else None
        out = link_tab.do_link(m["image"], m["sentence"], m["mention"], span)
        result = out[0]
        target = None
        if result:
            ids = [c["entity_id"] for c in result["candidates"]]
            target = m["gold"] if m["gold"] in ids else (ids[0] if ids else None)
        picker = gr.update(choices=out[7]["choices"] if isinstance(out[7], dict) else [], value=target)
        return out[:7] + (picker, out[9], gr.Tabs(selected="inspect"), m["sentence"], m["mention"])

    # the top candidate is usually drawn already (after the link): then nothing is recomputed
    link_tab.inspect_button.click(
        go_inspect, shared.link_state, [shared.tabs, shared.candidate_picker], **PRIVATE
    ).then(inspect.refresh, inspect.show_inputs + [inspect.drawn], inspect.show_outputs, **inference, **PRIVATE)
    # every link draws its top candidate into the (hidden) Inspect tab at once, replacing the earlier
    # link's figures; in the inference queue, so that it runs before any Inspect view asked for later
    link_tab.link_event.then(
        inspect.after_link, inspect.show_inputs, inspect.show_outputs, show_progress="hidden", **inference, **PRIVATE
    )
    # do_link's outputs less the "saved" note, then the tab switch and the Link inputs
    analysis_tab.table.select(
        open_in_inspect,
        [analysis_tab.run, analysis_tab.table],
        link_tab.link_outputs[:8] + [link_tab.columns_note, shared.tabs, link_tab.sentence, link_tab.mention],
        **inference,
        **PRIVATE,
    ).then(inspect.show, inspect.show_inputs, inspect.show_outputs, **inference, **PRIVATE)
    shared.demo.load(
        on_load, [annotate_tab.position, annotate_tab.remembered], [who] + annotate_tab.item_outputs, **PRIVATE
    )
    # the header is read at each page load and follows the store within HEADER_SECONDS (KB edits and
    # imports of other sessions); a tick that finds nothing new sends nothing
    shared.demo.load(lambda: header_markdown(ctx), None, shared.header, show_progress="hidden", **PRIVATE)
    header_timer = gr.Timer(HEADER_SECONDS)
    header_timer.tick(
        lambda shown: header_update(ctx, shown), shared.header, shared.header, show_progress="hidden", **PRIVATE
    )
