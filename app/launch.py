"""`mimic-studio` (console script) and `python app.py`: build the app from the environment and serve it.

`app.py` imports `spaces` before torch itself (ZeroGPU needs that order; importing this module
imports the `app` package, which imports torch). Settings: app/config.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from . import build_app

# On ZeroGPU `spaces` must be imported before torch (app.py does that); elsewhere the package may be
# absent and the decorator is a no-op with the same call shapes.
try:
    import spaces

    gpu = spaces.GPU
    ZEROGPU = True
except ImportError:
    ZEROGPU = False

    def gpu(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)


# Before gradio is imported (it is imported by build_app, not by the `app` package).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


PREWARM_AFTER_S = 3.0


def _ready(ctx, t0: float) -> None:
    """Once the model has loaded (in the background): ZeroGPU's wrapper, and the line that says so."""
    ctx.service.wrap_inference(gpu(duration=60))  # ZeroGPU: a GPU slot per link; no-op elsewhere
    print(
        f"[mimic] serving {ctx.service.served.version} on http://{ctx.config.server_name}:{ctx.config.server_port} "
        f"(started in {time.perf_counter() - t0:.3f} s; model loaded in {ctx.startup_seconds['total']} s)",
        flush=True,
    )
    from . import figures  # imported by the Inspect tab already

    # the first Inspect does not pay for plotly's first figures; a few seconds later, so as not to
    # slow the requests that waited for the model
    warm = threading.Timer(PREWARM_AFTER_S, figures.prewarm)
    warm.daemon = True
    warm.start()


def _failed(exc: BaseException) -> None:
    """A background model load that failed ends the process, as a failed start always did (the
    traceback is logged): a supervisor restarts it, and nobody is left with an app that cannot link."""
    print(f"[mimic] the model failed to load: {exc!r}; exiting", file=sys.stderr, flush=True)
    os._exit(1)


def main():
    t0 = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the UI is built and served while the model loads: requests that need it wait (app/context.py);
    # on ZeroGPU the model loads first (its GPU wrapper is in place before the server starts)
    demo, launch_kwargs, ctx = build_app(background=not ZEROGPU, on_ready=lambda c: _ready(c, t0), on_failure=_failed)
    # the users are hashed into the config now: no plaintext password stays in this process's
    # environment or reaches a child process (retraining)
    os.environ.pop("MIMIC_USERS", None)
    from . import figures

    # the browser loads plotly.js while the page is idle, not at the first Inspect
    launch_kwargs["head"] = (launch_kwargs.get("head") or "") + figures.plotly_preload_head()
    if not ctx.ready:
        print(f"[mimic] UI built in {time.perf_counter() - t0:.3f} s; the model loads in the background", flush=True)
    # the server answers first, then the model loads (a load sharing the interpreter with Gradio's
    # imports and the UI build would delay the page as much as it gains)
    demo.launch(prevent_thread_lock=True, **launch_kwargs)
    ctx.begin_loading()
    from .tabs.knowledge_base import resume_kb_imports

    resume_kb_imports(ctx)  # imports a stop cut continue (their jobs wait for the model)
    demo.block_thread()


if __name__ == "__main__":
    main()
