"""Sign-in for `launch(auth=...)`: argon2id password hashes, sign-in rate limiting per user and per
client address, and session expiry.

Gradio 6 (gradio/routes.py) signs in on `POST /login`: it calls the auth callable with
(username, password) only, stores `token -> username` in `App.tokens` and sets the token as a
cookie; every authorised route looks the cookie up with `App.tokens.get(token)`. Two hooks:

- `AuthGuard`, an ASGI middleware (passed as `launch(app_kwargs={"middleware": [...]})`), sees the
  client address gradio's callable never gets. On `POST /login` it refuses (429, Retry-After) while
  the user or the address is locked out, before any password is checked; otherwise it lets gradio
  check the password and counts the outcome (200 = success: both counters reset; 400 = failure).
  After `max_failures` failures within `window` seconds a key is locked for `lockout` seconds,
  doubling with each further failure (at most an hour). Attempts in flight count as failures until
  they succeed, so parallel guesses cannot slip past the limit.
- `ExpiringTokens`, the dict that replaces `App.tokens` (the middleware installs it on the first
  request, and again if gradio resets the dict): a token older than the session lifetime is gone
  for `get` and `in`, so the cookie no longer authorises. The login cookie also gets a Max-Age.

Who may sign in: the database's users (added in the Users tab, argon2 hashes in the annotators table;
a disabled one is refused) and the MIMIC_USERS entries (for users without a stored hash). MIMIC_USERS
creates its users in the database at start when absent, so the first admin always exists.

HF OAuth ("Sign in with Hugging Face") uses its own session cookie and routes (`/login/huggingface`,
`/login/callback`, GET); the guard leaves them alone.

Hash a password for MIMIC_USERS / MIMIC_USERS_FILE (prompts, prints `$argon2id$...`):

    python -m app.auth
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.middleware import Middleware
from starlette.requests import Request

_HASHER = PasswordHasher()  # argon2id, the library's RFC 9106 low-memory defaults
MAX_LOCKOUT_SECONDS = 3600.0
MAX_TRACKED_KEYS = 10_000
MAX_LOGIN_BODY = 64 * 1024
MIN_PASSWORD = 8  # characters of a password set in the Users tab
log = logging.getLogger("mimic.app")


# -- hashes --------------------------------------------------------------------------------------
def is_password_hash(value: str) -> bool:
    return value.startswith("$argon2")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def check_hash(value: str) -> str:
    """An argon2 hash as given in the settings; ValueError when the library cannot read it."""
    try:
        extract_parameters(value)
    except (InvalidHashError, ValueError):
        raise ValueError("not a valid argon2 hash") from None
    return value


# Verified for unknown names, so they cost the same time as a real user. A constant (hashing it at
# import cost 0.23 CPU-seconds of every start); made by `hash_password` with the library's defaults,
# and made again if those defaults ever differ from its parameters (the cost must match a real hash).
_DUMMY_HASH = "$argon2id$v=19$m=65536,t=3,p=4$2g6bc0wzZtfPkjIbSw4vMQ$CvFZfUCyu5OhetmIbDP6Mlzjz7Cu8QYCMLJjHvu0weM"
_dummy = extract_parameters(_DUMMY_HASH)
if (_dummy.type, _dummy.time_cost, _dummy.memory_cost, _dummy.parallelism) != (
    _HASHER.type,
    _HASHER.time_cost,
    _HASHER.memory_cost,
    _HASHER.parallelism,
):
    _DUMMY_HASH = hash_password("\x00dummy\x00")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time comparison through argon2 (an unknown user costs the same as a known one)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password or "") and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class StoredUser(Protocol):
    """What sign-in reads of a database user (db.records.SignInRecord)."""

    active: bool
    password_hash: str | None


UserLookup = Callable[[str], "StoredUser | None"]


def check_sign_in(table: dict[str, str], lookup: UserLookup | None, username: str, password: str) -> bool:
    """One sign-in check. The database decides for the users it holds: a disabled user is refused
    (after the same argon2 work, so the answer takes no shorter), a stored hash is the password.
    A user without a stored hash (or not in the database) signs in with their MIMIC_USERS entry.
    A database that cannot be read refuses rather than falling back."""
    try:
        stored = lookup(username) if lookup is not None else None
    except Exception:
        log.exception("sign-in: the user table could not be read; refusing %r", username)
        verify_password(None, password)
        return False
    if stored is not None and not stored.active:
        verify_password(None, password)
        return False
    if stored is not None and stored.password_hash:
        return verify_password(stored.password_hash, password)
    return verify_password(table.get(username), password)


def make_auth(table: dict[str, str], lookup: UserLookup | None = None):
    """The async `launch(auth=...)` callable over name -> hash (MIMIC_USERS) and the database's
    users (`lookup`, e.g. `AnnotationStore.user_for_sign_in`). Async, so gradio awaits it and the
    argon2 work (tenths of a second) runs in a worker thread, not on the server's event loop."""

    limiter = anyio.CapacityLimiter(4)  # argon2 takes 64 MiB per check: bound the parallel ones

    async def check(username: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(check_sign_in, table, lookup, username, password, limiter=limiter)

    return check


# -- rate limiting -------------------------------------------------------------------------------
@dataclass
class AuthSettings:
    session_seconds: float = 12 * 3600.0
    max_failures: int = 5
    window_seconds: float = 900.0
    lockout_seconds: float = 30.0
    trust_forwarded: bool = False  # take the client address from X-Forwarded-For (behind a proxy)


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginLimiter:
    """Failure counters per key ("user:<name>", "addr:<ip>"), thread-safe and bounded in size."""

    def __init__(self, settings: AuthSettings, clock=time.monotonic):
        self.s, self.clock = settings, clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: list[str]) -> float:
        """Seconds until every key may try again (0: may try now)."""
        now = self.clock()
        with self._lock:
            waits = [r.locked_until - now for k in keys if (r := self._records.get(k)) is not None]
        return max([0.0, *waits])

    def begin(self, keys: list[str]) -> float:
        """Atomically: 0 and count the attempt as a failure (undone by `success`), or the wait."""
        now = self.clock()
        with self._lock:
            waits = [r.locked_until - now for k in keys if (r := self._records.get(k)) is not None]
            wait = max([0.0, *waits])
            if wait > 0:
                return wait
            for k in keys:
                r = self._records.get(k)
                if r is None or now - r.last > self.s.window_seconds:
                    r = self._records[k] = _Record()
                r.failures += 1
                r.last = now
                over = r.failures - self.s.max_failures
                if over >= 0:
                    r.locked_until = now + min(self.s.lockout_seconds * 2**over, MAX_LOCKOUT_SECONDS)
            self._prune(now)
            return 0.0

    def success(self, keys: list[str]) -> None:
        with self._lock:
            for k in keys:
                self._records.pop(k, None)

    def undo(self, keys: list[str]) -> None:
        """Neither success nor failure (the request failed otherwise): take the attempt back."""
        with self._lock:
            for k in keys:
                r = self._records.get(k)
                if r is not None and r.failures > 0:
                    r.failures -= 1
                    if r.failures < self.s.max_failures:
                        r.locked_until = 0.0

    def _prune(self, now: float) -> None:
        if len(self._records) <= MAX_TRACKED_KEYS:
            return
        stale = [k for k, r in self._records.items() if now - r.last > self.s.window_seconds and r.locked_until <= now]
        for k in stale:
            del self._records[k]
        if len(self._records) > MAX_TRACKED_KEYS:  # still too many: forget the oldest
            for k, _ in sorted(self._records.items(), key=lambda kv: kv[1].last)[: len(self._records) // 10]:
                del self._records[k]


# -- session expiry ------------------------------------------------------------------------------
class ExpiringTokens(dict):
    """gradio's `App.tokens` (token -> username) whose entries lapse `max_age` seconds after issue."""

    def __init__(self, max_age: float, initial: dict | None = None, clock=time.monotonic):
        super().__init__()
        self.max_age, self.clock = max_age, clock
        self.issued: dict[Any, float] = {}
        for k, v in (initial or {}).items():
            self[k] = v

    def __setitem__(self, key, value) -> None:
        now = self.clock()
        for k in [k for k, t in self.issued.items() if now - t > self.max_age]:  # drop lapsed ones
            self.issued.pop(k, None)
            super().pop(k, None)
        super().__setitem__(key, value)
        self.issued[key] = now

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self.issued.pop(key, None)

    def _expired(self, key) -> bool:
        t = self.issued.get(key)
        if t is not None and self.clock() - t > self.max_age:
            super().pop(key, None)
            self.issued.pop(key, None)
            return True
        return False

    def get(self, key, default=None):
        if key is None or self._expired(key):
            return default
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        return not self._expired(key) and super().__contains__(key)


# -- the middleware ------------------------------------------------------------------------------
def client_address(scope: dict, trust_forwarded: bool) -> str:
    if trust_forwarded:
        for name, value in scope.get("headers") or []:
            if name == b"x-forwarded-for":
                hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
                if hops:
                    return hops[-1]  # added by the proxy in front of us; earlier ones the client may forge
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class AuthGuard:
    """ASGI middleware: sign-in rate limiting on `POST /login` and session expiry of gradio's tokens."""

    def __init__(self, app, settings: AuthSettings, limiter: LoginLimiter | None = None):
        self.app, self.settings = app, settings
        self.limiter = limiter or LoginLimiter(settings)

    def _install_tokens(self, scope: dict) -> None:
        gapp = scope.get("app")
        tokens = getattr(gapp, "tokens", None)
        if isinstance(tokens, dict) and not isinstance(tokens, ExpiringTokens):
            gapp.tokens = ExpiringTokens(self.settings.session_seconds, tokens)  # type: ignore[union-attr]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._install_tokens(scope)
        path = scope.get("path", "").rstrip("/")
        if scope.get("method") == "POST" and path.rsplit("/", 1)[-1] == "login":
            return await self._login(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _login(self, scope, receive, send):
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                return await _respond(send, 413, {"detail": "sign-in request too large"})
        username = await _form_username(scope, body)
        keys = [f"user:{username}", f"addr:{client_address(scope, self.settings.trust_forwarded)}"]
        wait = self.limiter.begin(keys)
        if wait > 0:
            secs = math.ceil(wait)
            return await _respond(
                send,
                429,
                {"detail": f"Too many failed sign-ins: try again in {secs} s."},
                [(b"retry-after", str(secs).encode())],
            )
        status: list[int] = []
        max_age = f"; Max-Age={max(1, int(self.settings.session_seconds))}".encode()

        async def replay():
            nonlocal body
            chunk, body = body, b""
            return {"type": "http.request", "body": chunk, "more_body": False}

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status.append(msg["status"])
                if msg["status"] == 200:
                    msg = dict(msg)
                    msg["headers"] = [
                        (k, v + max_age if k.lower() == b"set-cookie" else v) for k, v in msg.get("headers", [])
                    ]
            await send(msg)

        try:
            await self.app(scope, replay, send_wrapper)
        finally:
            code = status[0] if status else None
            if code == 200:
                self.limiter.success(keys)
            elif code != 400:  # 400 = wrong credentials: the failure stays counted
                self.limiter.undo(keys)


async def _form_username(scope, body: bytes) -> str:

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, receive).form()
        return str(form.get("username") or "").strip()
    except Exception:  # a malformed form: gradio answers it; it still counts against the address
        return ""


async def _respond(send, status: int, content: dict, headers: list | None = None) -> None:
    data = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            + (headers or []),
        }
    )
    await send({"type": "http.response.body", "body": data})


def launch_auth_kwargs(
    table: dict[str, str], settings: AuthSettings, lookup: UserLookup | None = None, stored_users: bool = False
) -> dict:
    """`auth` and the guard middleware for `launch(**...)`; empty when nobody signs in (no
    MIMIC_USERS and, `stored_users` False, no database user with a password)."""
    if not table and not stored_users:
        return {}
    return {
        "auth": make_auth(table, lookup),
        "app_kwargs": {"middleware": [Middleware(AuthGuard, settings=settings)]},
    }


def main() -> None:  # python -m app.auth

    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        raise SystemExit("the passwords differ")
    print(hash_password(pw))


if __name__ == "__main__":
    main()
