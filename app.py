"""MIMIC Studio: `python app.py` (and the Hugging Face Spaces entry point); installed: `mimic-studio`.

Starts on the embedded default: SQLite in DATA_DIR (./data), the demo KB from assets/, the offline
backbone (no network), at http://127.0.0.1:7860. Settings: app/config.py; launch: app/launch.py.
"""

import os

# On ZeroGPU `spaces` must be imported before torch (the `app` package imports torch); elsewhere
# the package may be absent (app/launch.py then uses a no-op decorator).
try:
    import spaces  # noqa: F401
except ImportError:
    pass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.launch import main

if __name__ == "__main__":
    main()
