"""`mimic-studio` (console script) and `python app.py`: build the app from the environment and serve it.

`app.py` imports `spaces` before torch itself (ZeroGPU needs that order; importing this module
imports the `app` package, which imports torch). Settings: app/config.py.
"""

from __future__ import annotations

import logging
import os

from . import build_app

# On ZeroGPU `spaces` must be imported before torch (app.py does that); elsewhere the package may be
# absent and the decorator is a no-op with the same call shapes.
try:
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)


# Before gradio is imported (it is imported by build_app, not by the `app` package).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo, launch_kwargs, ctx = build_app()
    # the users are hashed into the config now: no plaintext password stays in this process's
    # environment or reaches a child process (retraining)
    os.environ.pop("MIMIC_USERS", None)
    ctx.service.wrap_inference(gpu(duration=60))  # ZeroGPU: a GPU slot per link; no-op elsewhere
    print(
        f"[mimic] serving {ctx.service.served.version} on http://{ctx.config.server_name}:{ctx.config.server_port} "
        f"(started in {ctx.startup_seconds['total']} s)",
        flush=True,
    )
    demo.launch(**launch_kwargs)


if __name__ == "__main__":
    main()
