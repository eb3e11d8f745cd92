"""App settings from the environment (Space secrets / variables, or a local shell).

| variable | default | meaning |
|---|---|---|
| `DATA_DIR` | `./data` | database, journal, images, KB indexes (a mounted bucket on Spaces) |
| `MIMIC_CHECKPOINT` | unset | checkpoint folder to serve (pinned: promoted versions are not followed); unset = the promoted version, else the default checkpoint `assets/models/default` (MIMIC trained on the demo KB, offline backbone); `zero-shot` = the backbone's own similarities instead of the default |
| `MIMIC_BACKBONE` | `offline` | backbone of the zero-shot ranking (`offline`, `clip`, `auto`, a CLIP path); any other than `offline` also means zero-shot instead of the default checkpoint (which is for the offline backbone) |
| `MIMIC_KB` | `assets/demo_kb/kb.jsonl` | KB loaded into an empty database on first start (.jsonl, .csv, official folder) |
| `MIMIC_EXAMPLES` | `assets/demo_kb/examples.jsonl` | example mentions (Link tab) and the first annotation queue |
| `MIMIC_USERS` | unset | annotators who sign in: `name:password[:role],...` (a secret, never in code); the password may be an argon2 hash (`name:$argon2id$v=19$m=...,t=...,p=...$salt$hash:role`, from `python -m app.auth`); a plaintext one is hashed at start and not kept. Each user is created in the database at start when absent (the first admin); after that the database's role and active flag rule, and a password set in the Users tab replaces the entry's |
| `MIMIC_USERS_FILE` | unset | the same, one `name:password[:role]` per line |
| `MIMIC_SESSION_HOURS` | `12` | a sign-in lasts this long (fractions allowed: `0.001` = 3.6 s); after it the session cookie no longer authorises |
| `MIMIC_LOGIN_MAX_FAILURES` | `5` | failed sign-ins per user, and per client address, within the window before a lock-out |
| `MIMIC_LOGIN_WINDOW_SECONDS` | `900` | failures older than this (since the last one) are forgotten |
| `MIMIC_LOGIN_LOCKOUT_SECONDS` | `30` | the first lock-out; it doubles with each further failure (at most 1 h); a successful sign-in resets |
| `MIMIC_TRUST_FORWARDED_FOR` | `auto` | take the client address from `X-Forwarded-For` (the proxy's last hop); auto = only on Spaces |
| `MIMIC_ANONYMOUS_WRITES` | `auto` | may visitors who are not signed in save? auto = only for a local single-user app (no users configured, loopback address, not on Spaces) |
| `MIMIC_KB_ROLES` | `reviewer,admin` | roles that may edit the KB and import KB files (app/permissions.py holds the whole table) |
| `MIMIC_DEVICE` | `auto` | where the model runs: `cpu`, `cuda`, `auto` (CUDA when present) |
| `MIMIC_INFERENCE_CONCURRENCY` | `1` | link/inspect requests run at once (the rest queue) |
| `MIMIC_QUEUE_SIZE` | `64` | requests waiting at most per event before new ones are refused |
| `MIMIC_WATCH_SECONDS` | `10` | how often the app checks for a newly promoted version (hot swap) and the retraining policy; 0: never |
| `MIMIC_RETRAIN_MIN_NEW_ANNOTATIONS` / `MIMIC_RETRAIN_EVERY_HOURS` | unset | retraining policy (see retraining/config.py; any `MIMIC_RETRAIN_<FIELD>`) |
| `MIMIC_MAX_UPLOAD_MB` | `50` | largest upload accepted (Gradio's `max_file_size`, and checked again by the KB import) |
| `MIMIC_KB_IMPORT_CHUNK` | `500` | entities per transaction of a KB import (a background job; annotations are written between chunks) |
| `MIMIC_KEEP_MODEL` | unset | rows of the model retriever re-ranked even when fusion cuts them (unset: half the shortlist, 32); a million-entity KB needed 224 for 0.98 agreement with exhaustive ranking (docs/serving.md) |
| `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` | `127.0.0.1` / `7860` | where to listen |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path

from .auth import AuthSettings, check_hash, hash_password, is_password_hash, launch_auth_kwargs
from .permissions import permission_table

REPO = Path(__file__).resolve().parents[1]
ROLES = ("annotator", "reviewer", "admin")
#: what serves when MIMIC_CHECKPOINT is unset and no version is promoted (built by
#: `python -m assets.default_model`)
DEFAULT_CHECKPOINT = REPO / "assets" / "models" / "default"
#: the MIMIC_CHECKPOINT value that asks for the zero-shot ranking instead of the default checkpoint
ZERO_SHOT = "zero-shot"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


@dataclass
class User:
    """A user who signs in. `password` (plaintext or an argon2 hash) is only an init argument: the
    object keeps `password_hash`, never the plaintext."""

    name: str
    password: InitVar[str]
    role: str = "annotator"
    password_hash: str = field(init=False, repr=False)

    def __post_init__(self, password: str) -> None:
        self.password_hash = check_hash(password) if is_password_hash(password) else hash_password(password)


# entries are split on commas and new lines, except the commas inside an argon2 hash's parameters
# (`$m=65536,t=3,p=4$`)
_ENTRY_SPLIT = re.compile(r"\n|,(?![tp]=\d+[,$])")


def parse_users(spec: str, source: str) -> list[User]:
    users, seen = [], set()
    for i, item in enumerate(x.strip() for x in _ENTRY_SPLIT.split(spec)):
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
        try:
            users.append(User(name, parts[1], role))
        except ValueError as exc:
            raise ConfigError(f"{source}: user {name!r}: {exc}") from None
    return users


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


@dataclass
class AppConfig:
    data_dir: Path = field(default_factory=lambda: Path("data"))
    # MIMIC_CHECKPOINT: pins this checkpoint (promoted versions are not followed)
    checkpoint: str | None = None
    # served when nothing is pinned or promoted; None: zero-shot (MIMIC_CHECKPOINT=zero-shot, or a
    # backbone other than the offline one that the default checkpoint is trained on)
    default_checkpoint: str | None = str(DEFAULT_CHECKPOINT)
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
    max_upload_mb: float = 50.0
    kb_import_chunk: int = 500
    keep_model: int | None = None  # Linker(keep_model=...): None is the linker's default
    permissions: dict = field(default_factory=lambda: permission_table())
    auth_settings: AuthSettings = field(default_factory=AuthSettings)

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
            session_hours = float(env.get("MIMIC_SESSION_HOURS", "12"))
            max_failures = int(env.get("MIMIC_LOGIN_MAX_FAILURES", "5"))
            window = float(env.get("MIMIC_LOGIN_WINDOW_SECONDS", "900"))
            lockout = float(env.get("MIMIC_LOGIN_LOCKOUT_SECONDS", "30"))
            max_upload_mb = float(env.get("MIMIC_MAX_UPLOAD_MB", "50"))
            kb_chunk = int(env.get("MIMIC_KB_IMPORT_CHUNK", "500"))
            keep_model = int(env["MIMIC_KEEP_MODEL"]) if env.get("MIMIC_KEEP_MODEL", "").strip() else None
        except ValueError as exc:
            raise ConfigError(f"a numeric setting is not a number: {exc}") from None
        if conc < 1 or qsize < 1:
            raise ConfigError("MIMIC_INFERENCE_CONCURRENCY and MIMIC_QUEUE_SIZE must be at least 1")
        if not session_hours > 0 or max_failures < 1 or not window > 0 or not lockout > 0:
            raise ConfigError(
                "MIMIC_SESSION_HOURS, MIMIC_LOGIN_WINDOW_SECONDS and MIMIC_LOGIN_LOCKOUT_SECONDS must be "
                "above 0, MIMIC_LOGIN_MAX_FAILURES at least 1"
            )
        if keep_model is not None and keep_model < 0:
            raise ConfigError(f"MIMIC_KEEP_MODEL must be 0 or more, got {keep_model}")
        if not max_upload_mb > 0 or kb_chunk < 1:
            raise ConfigError("MIMIC_MAX_UPLOAD_MB must be above 0 and MIMIC_KB_IMPORT_CHUNK at least 1")
        trust = env.get("MIMIC_TRUST_FORWARDED_FOR", "auto").strip().lower()
        if trust not in ("auto", "1", "true", "yes", "0", "false", "no"):
            raise ConfigError(f"MIMIC_TRUST_FORWARDED_FOR must be auto, 1 or 0, got {trust!r}")
        auth_settings = AuthSettings(
            session_seconds=session_hours * 3600.0,
            max_failures=max_failures,
            window_seconds=window,
            lockout_seconds=lockout,
            trust_forwarded=on_spaces if trust == "auto" else trust in ("1", "true", "yes"),
        )
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
        checkpoint = (env.get("MIMIC_CHECKPOINT") or "").strip()
        zero_shot = checkpoint.lower() == ZERO_SHOT
        backbone = env.get("MIMIC_BACKBONE", "offline")
        cfg = cls(
            data_dir=Path(env.get("DATA_DIR", "data")),
            checkpoint=checkpoint if checkpoint and not zero_shot else None,
            default_checkpoint=None if zero_shot or backbone != "offline" else str(DEFAULT_CHECKPOINT),
            backbone=backbone,
            device=env.get("MIMIC_DEVICE", "auto"),
            # absolute: the KB loader names images relative to the KB file, and the store copies
            # them by content only from absolute paths
            kb_path=Path(env["MIMIC_KB"]).resolve() if env.get("MIMIC_KB") else cls.kb_path,
            examples_path=(Path(examples).resolve() if examples else cls.examples_path) if examples != "" else None,
            users=users,
            anonymous_writes=anonymous_writes,
            oauth=oauth,
            on_spaces=on_spaces,
            server_name=server_name,
            server_port=port,
            inference_concurrency=conc,
            queue_size=qsize,
            watch_seconds=watch,
            max_upload_mb=max_upload_mb,
            kb_import_chunk=kb_chunk,
            keep_model=keep_model,
            permissions=permission_table(env),
            auth_settings=auth_settings,
        )
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ConfigError(f"unknown setting {k!r}")
            setattr(cfg, k, v)
        return cfg

    @property
    def base_checkpoint(self) -> str | None:
        """What serves when no version is promoted: the pinned checkpoint, else the default one;
        None: the zero-shot ranking."""
        return self.checkpoint or self.default_checkpoint

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def auth(self):
        """The `launch(auth=...)` callable (argon2 verification), or None when nobody signs in."""
        return self.launch_auth().get("auth")

    def launch_auth(self, store=None) -> dict:
        """`auth` and the sign-in guard (rate limiting, session expiry) for `launch(**...)`
        (app/auth.py); empty when nobody is configured to sign in. With the annotation `store`,
        its users sign in too (and sign-in is on when it holds any user with a password)."""
        return launch_auth_kwargs(
            {u.name: u.password_hash for u in self.users},
            self.auth_settings,
            lookup=store.user_for_sign_in if store is not None else None,
            stored_users=store is not None and store.has_password_users(),
        )
