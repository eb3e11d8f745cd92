"""MIMIC Studio: `python app.py` (and the Hugging Face Spaces entry point).

Starts on the embedded default: SQLite in DATA_DIR (./data), the demo KB from assets/, the offline
backbone (no network), at http://127.0.0.1:7860. Settings: app/config.py.
"""
import os

# On ZeroGPU `spaces` must be imported before torch; elsewhere the package may be absent and the
# decorator is a no-op with the same call shapes.
try:
    import spaces  # noqa: F401
    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_kw):
        return fn if callable(fn) else (lambda f: f)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402

from app import build_app  # noqa: E402


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo, launch_kwargs, ctx = build_app()
    ctx.service.wrap_inference(gpu(duration=60))      # ZeroGPU: a GPU slot per link; no-op elsewhere
    print(f"[mimic] serving {ctx.service.served.version} on http://{ctx.config.server_name}:{ctx.config.server_port} "
          f"(started in {ctx.startup_seconds['total']} s)", flush=True)
    demo.launch(**launch_kwargs)


if __name__ == "__main__":
    main()
