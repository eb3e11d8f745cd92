"""App settings from the environment (Space secrets / variables, or a local shell).

| variable | default | meaning |
|---|---|---|
| `DATA_DIR` | `./data` | database, journal, images, KB indexes (a mounted bucket on Spaces) |
| `MIMIC_CHECKPOINT` | unset | checkpoint folder to serve; unset = zero-shot ranking by the backbone |
| `MIMIC_BACKBONE` | `offline` | backbone of the zero-shot ranking (`offline`, `clip`, `auto`, a CLIP path) |
| `MIMIC_KB` | `assets/demo_kb/kb.jsonl` | KB loaded into an empty database on first start (.jsonl, .csv, official folder) |
| `MIMIC_EXAMPLES` | `assets/demo_kb/examples.jsonl` | example mentions (Link tab) and the first annotation queue |
| `MIMIC_USERS` | unset | annotators who sign in: `name:password[:role],...` (a secret, never in code) |
| `MIMIC_USERS_FILE` | unset | the same, one `name:password[:role]` per line |
| `MIMIC_ANONYMOUS_WRITES` | `auto` | may visitors who are not signed in save? auto = only for a local single-user app (no users configured, loopback address, not on Spaces) |
| `MIMIC_KB_ROLES` | `reviewer,admin` | roles that may edit the KB and import KB files (app/permissions.py holds the whole table) |
| `MIMIC_DEVICE` | `auto` | where the model runs: `cpu`, `cuda`, `auto` (CUDA when present) |
| `MIMIC_INFERENCE_CONCURRENCY` | `1` | link/inspect requests run at once (the rest queue) |
| `MIMIC_QUEUE_SIZE` | `64` | requests waiting at most per event before new ones are refused |
| `MIMIC_WATCH_SECONDS` | `10` | how often the app checks for a newly promoted version (hot swap) and the retraining policy; 0: never |
| `MIMIC_RETRAIN_MIN_NEW_ANNOTATIONS` / `MIMIC_RETRAIN_EVERY_HOURS` | unset | retraining policy (see retraining/config.py; any `MIMIC_RETRAIN_<FIELD>`) |
| `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` | `127.0.0.1` / `7860` | where to listen |
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .permissions import permission_table

REPO = Path(__file__).resolve().parents[1]
ROLES = ("annotator", "reviewer", "admin")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass
class User:
    name: str
    password: str
    role: str = "annotator"


def parse_users(spec: str, source: str) -> list[User]:
    users, seen = [], set()
    for i, item in enumerate(x.strip() for x in spec.replace("\n", ",").split(",")):
        if not item or item.startswith("#"):
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1]:
            raise ConfigError(f"{source}: entry {i + 1} must be name:password or name:password:role")
        role = parts[2].strip() if len(parts) == 3 else "annotator"
        if role not in ROLES:
            raise ConfigError(f"{source}: entry {i + 1} has role {role!r}; use one of {', '.join(ROLES)}")
        name = parts[0].strip()
        if name in seen:
            raise ConfigError(f"{source}: user {name!r} appears twice")
        seen.add(name)
        users.append(User(name, parts[1], role))
    return users


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


@dataclass
class AppConfig:
    data_dir: Path = field(default_factory=lambda: Path("data"))
    checkpoint: str | None = None
    backbone: str = "offline"
    device: str = "auto"
    kb_path: Path = REPO / "assets" / "demo_kb" / "kb.jsonl"
    examples_path: Path | None = REPO / "assets" / "demo_kb" / "examples.jsonl"
    users: list[User] = field(default_factory=list)
    anonymous_writes: bool = False
    oauth: bool = False  # "Sign in with Hugging Face" (a Space with hf_oauth: true)
    on_spaces: bool = False
    server_name: str = "127.0.0.1"
    server_port: int = 7860
    inference_concurrency: int = 1
    queue_size: int = 64
    top_k: int = 10
    watch_seconds: float = 10.0
    permissions: dict = field(default_factory=lambda: permission_table())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> AppConfig:
        env = os.environ if env is None else env
        users: list[User] = []
        if env.get("MIMIC_USERS"):
            users += parse_users(env["MIMIC_USERS"], "MIMIC_USERS")
        if env.get("MIMIC_USERS_FILE"):
            p = Path(env["MIMIC_USERS_FILE"])
            if not p.is_file():
                raise ConfigError(f"MIMIC_USERS_FILE: {p} does not exist")
            users += parse_users(p.read_text(encoding="utf-8"), f"MIMIC_USERS_FILE ({p})")
        on_spaces = bool(env.get("SPACE_ID"))
        oauth = on_spaces and bool(env.get("OAUTH_CLIENT_ID"))
        server_name = env.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_spaces else "127.0.0.1")
        try:
            port = int(env.get("GRADIO_SERVER_PORT", "7860"))
            conc = int(env.get("MIMIC_INFERENCE_CONCURRENCY", "1"))
            qsize = int(env.get("MIMIC_QUEUE_SIZE", "64"))
            watch = float(env.get("MIMIC_WATCH_SECONDS", "10"))
        except ValueError as exc:
            raise ConfigError(f"a numeric setting is not a number: {exc}") from None
        if conc < 1 or qsize < 1:
            raise ConfigError("MIMIC_INFERENCE_CONCURRENCY and MIMIC_QUEUE_SIZE must be at least 1")
        anon = env.get("MIMIC_ANONYMOUS_WRITES", "auto").strip().lower()
        if anon == "auto":
            anonymous_writes = not users and not oauth and not on_spaces and _loopback(server_name)
        elif anon in ("1", "true", "yes"):
            anonymous_writes = True
        elif anon in ("0", "false", "no"):
            anonymous_writes = False
        else:
            raise ConfigError(f"MIMIC_ANONYMOUS_WRITES must be auto, 1 or 0, got {anon!r}")
        examples = env.get("MIMIC_EXAMPLES")
        cfg = cls(
            data_dir=Path(env.get("DATA_DIR", "data")),
            checkpoint=env.get("MIMIC_CHECKPOINT") or None,
            backbone=env.get("MIMIC_BACKBONE", "offline"),
            device=env.get("MIMIC_DEVICE", "auto"),
            kb_path=Path(env["MIMIC_KB"]) if env.get("MIMIC_KB") else cls.kb_path,
            examples_path=(Path(examples) if examples else cls.examples_path) if examples != "" else None,
            users=users,
            anonymous_writes=anonymous_writes,
            oauth=oauth,
            on_spaces=on_spaces,
            server_name=server_name,
            server_port=port,
            inference_concurrency=conc,
            queue_size=qsize,
            watch_seconds=watch,
            permissions=permission_table(env),
        )
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ConfigError(f"unknown setting {k!r}")
            setattr(cfg, k, v)
        return cfg

    def auth(self):
        """The `launch(auth=...)` callable, or None when nobody is configured to sign in."""
        if not self.users:
            return None
        table = {u.name: u.password for u in self.users}

        def check(username: str, password: str) -> bool:
            want = table.get(username)
            return want is not None and hmac.compare_digest(want.encode(), (password or "").encode())

        return check
