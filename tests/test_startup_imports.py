"""A restart serves the page before the model loads: nothing the server imports before it listens
may import torch, transformers, faiss or scikit-learn (torch alone was ~9 s of a restart at load 11,
`python -X importtime`). The engine is imported by the background load (`LinkingService.start`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import sys
import app, app.launch, app.ui, app.context, app.common, app.figures
import app.tabs.link, app.tabs.inspect_tab, app.tabs.analysis, app.tabs.projects, app.tabs.knowledge_base
from mimic.serving.linker import LinkInputError, LinkResult, Explanation, Candidate
from mimic.serving.service import LinkingService, safe_name
heavy = sorted(m for m in ("torch", "transformers", "faiss", "sklearn") if m in sys.modules)
print(",".join(heavy) or "none")
from mimic.serving.linker import Linker  # the engine, on first use
print("torch" in sys.modules and Linker.__module__)
"""


def test_the_page_imports_no_engine():
    env = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["none", "mimic.serving.linking"]
