"""MIMIC Studio's Gradio app: thin UI over `mimic` (linking) and `db` (annotations).

from app import build_app
demo, launch_kwargs, ctx = build_app()       # settings from the environment (app/config.py)
demo.queue().launch(**launch_kwargs)
"""

from __future__ import annotations

from .config import AppConfig, ConfigError
from .context import AppContext


def build_app(config: AppConfig | None = None, *, progress: bool = True, model=None, **start):
    """Start the context (store, KB, linking service) and build the Blocks.
    -> (demo, launch_kwargs, ctx). `start`: `AppContext.start`'s background / on_ready / on_failure
    (app/launch.py loads the model while the UI is built and served)."""
    # Here, not at the top: Gradio (13.8 s to import, measured on the shared 2-core machine) loads
    # only when the UI is built, so `import app` stays light and app/launch.py sets Gradio's
    # environment before it loads; and without writing its type stubs (app/startup.py).
    from .startup import skip_gradio_stub_files

    skip_gradio_stub_files()
    # the context first: with background=True the model loads while Gradio imports and the UI builds
    ctx = AppContext.start(config or AppConfig.from_env(), progress=progress, model=model, **start)
    from .ui import build_ui

    demo, launch_kwargs = build_ui(ctx)
    demo.queue(default_concurrency_limit=ctx.config.inference_concurrency, max_size=ctx.config.queue_size)
    ctx.start_watcher(ctx.config.watch_seconds)
    return demo, launch_kwargs, ctx


__all__ = ["build_app", "AppConfig", "AppContext", "ConfigError"]
