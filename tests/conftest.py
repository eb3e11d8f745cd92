"""Shared fixtures: a tiny randomly initialised CLIP (no download) and synthetic data.

The tiny CLIP uses a BPE tokenizer trained here on the synthetic vocabulary, so nothing is fetched.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MELBENCH = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"

torch.set_num_threads(min(2, torch.get_num_threads()))

from mimic.testing.tiny_clip import build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from mimic.backbones.clip import ClipBackbone

    return ClipBackbone(str(tiny_clip_dir)).eval()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    from mimic.testing.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n_names=6, per_name=3, mentions_per_entity=8)


@pytest.fixture(scope="session")
def synthetic_official(tmp_path_factory, synthetic_dataset) -> Path:
    """The synthetic dataset written in the official MIMIC layout."""
    from mimic.data.official import write_official

    root = tmp_path_factory.mktemp("official") / "WikiMEL"
    write_official(synthetic_dataset, root, prefix="WIKIMEL")
    return root


# ------------------------------------------------------------------------------------------------
# The app, launched once per session (the default checkpoint on the offline backbone, demo KB, three users)
# ------------------------------------------------------------------------------------------------
STUDIO_USERS = {"ana": "ana-pw", "bob": "bob-pw", "rev": "rev-pw"}


class _NetworkRecorder:
    """Records every connection or name lookup to a non-loopback address while the app runs."""

    def __init__(self):
        import socket

        self.calls: list[str] = []
        self._socket = socket
        self._connect, self._getaddrinfo = socket.socket.connect, socket.getaddrinfo

    @staticmethod
    def _local(host) -> bool:
        h = str(host)
        return h in ("localhost", "::1", "", "0.0.0.0") or h.startswith("127.") or h.startswith("/")

    def install(self):
        rec = self

        def connect(sock, address, *a, **kw):
            host = address[0] if isinstance(address, tuple) else address
            if not rec._local(host):
                rec.calls.append(f"connect {address}")
            return rec._connect(sock, address, *a, **kw)

        def getaddrinfo(host, *a, **kw):
            if host is not None and not rec._local(host if not isinstance(host, bytes) else host.decode()):
                rec.calls.append(f"getaddrinfo {host}")
            return rec._getaddrinfo(host, *a, **kw)

        self._socket.socket.connect = connect
        self._socket.getaddrinfo = getaddrinfo

    def uninstall(self):
        self._socket.socket.connect = self._connect
        self._socket.getaddrinfo = self._getaddrinfo


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """SimpleNamespace(demo, url, ctx, users, network, shots): the app serving on 127.0.0.1."""
    from types import SimpleNamespace

    os.environ["GRADIO_SSR_MODE"] = "False"
    net = _NetworkRecorder()
    net.install()
    from app import AppConfig, build_app

    data = tmp_path_factory.mktemp("studio_data")
    users = ",".join(f"{u}:{p}" + (":reviewer" if u == "rev" else "") for u, p in STUDIO_USERS.items())
    cfg = AppConfig.from_env({"DATA_DIR": str(data), "MIMIC_USERS": users}, server_port=_free_port())
    demo, kw, ctx = build_app(cfg, progress=False)
    _, url, _ = demo.launch(prevent_thread_lock=True, **kw)
    shots = Path(os.environ.get("MIMIC_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    yield SimpleNamespace(demo=demo, url=url.rstrip("/") + "/", ctx=ctx, users=STUDIO_USERS, network=net, shots=shots)
    demo.close()
    ctx.stop()
    net.uninstall()
    ctx.store.close()
