"""Sign-in hardening (robustness issue, point 4): argon2 hashes instead of kept passwords, sign-in
rate limits per user and per client address, session expiry, and no server paths reaching a client.

The sign-in tests launch a small Blocks on 127.0.0.1 with the app's own launch settings
(`AppConfig.launch_auth()`, what app/ui.py passes to `launch`), so limits and lifetimes can be set
per test; the path tests use the full studio (conftest.py)."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from pathlib import Path

import pytest

from app.auth import LoginLimiter, hash_password
from app.config import REPO, AppConfig, ConfigError, User

DEMO = REPO / "assets" / "demo_kb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _second_loopback_works() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def mini_app():
    """launch(env) -> port: a one-event Blocks behind the app's sign-in, closed after the test."""
    import gradio as gr

    launched = []

    def launch(env: dict) -> int:
        cfg = AppConfig.from_env(env)
        with gr.Blocks(analytics_enabled=False) as demo:
            t = gr.Textbox()
            t.submit(lambda x: x, t, t, api_name="echo")
        port = _free_port()
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, **cfg.launch_auth())
        launched.append(demo)
        return port

    yield launch
    for d in launched:
        d.close()


def _request(port, method, path, *, body=None, headers=None, source="127.0.0.1", cookie=None):
    """-> (status, headers dict (lower-case names; set-cookie joined), body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        h = dict(headers or {})
        if cookie:
            h["Cookie"] = cookie
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        hdrs: dict[str, str] = {}
        for k, v in r.getheaders():
            hdrs[k.lower()] = hdrs[k.lower()] + "\n" + v if k.lower() in hdrs else v
        return r.status, hdrs, r.read()
    finally:
        conn.close()


def _login(port, user, password, headers=None, **kw):
    body = urllib.parse.urlencode({"username": user, "password": password})
    h = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return _request(port, "POST", "/login", body=body, headers=h, **kw)


def _cookie(headers: dict) -> str:
    """The `name=value` pairs of the login's Set-Cookie headers, as a Cookie header."""
    return "; ".join(line.split(";", 1)[0] for line in headers.get("set-cookie", "").split("\n") if line)


# -- 1: passwords only as salted hashes ----------------------------------------------------------------
def test_users_keep_hashes_never_plaintext(tmp_path):
    h = hash_password("hashed-pw")
    assert "," in h  # `$m=65536,t=3,p=4$`: the entry splitter must keep it whole
    spec = f"ana:plain-pw-1,bea:{h}:reviewer,\ncid:plain-pw-2:admin"
    f = tmp_path / "users.txt"
    f.write_text(f"# comment\ndan:{h}\n")
    cfg = AppConfig.from_env({"MIMIC_USERS": spec, "MIMIC_USERS_FILE": str(f)})
    assert [(u.name, u.role) for u in cfg.users] == [
        ("ana", "annotator"),
        ("bea", "reviewer"),
        ("cid", "admin"),
        ("dan", "annotator"),
    ]
    assert cfg.users[1].password_hash == h == cfg.users[3].password_hash  # a given hash is kept as it is
    for u in cfg.users:
        assert u.password_hash.startswith("$argon2id$")
        assert not hasattr(u, "password")
    # salted: the same plaintext hashes differently each time
    assert User("x", "plain-pw-1").password_hash != User("y", "plain-pw-1").password_hash
    blob = repr(cfg) + repr(vars(cfg)) + "".join(repr(vars(u)) for u in cfg.users)
    assert "plain-pw-1" not in blob and "plain-pw-2" not in blob
    with pytest.raises(ConfigError, match="argon2"):
        AppConfig.from_env({"MIMIC_USERS": "eve:$argon2id$v=19$broken"})


def test_unknown_names_cost_the_same_argon2_work():
    """The dummy hash verified for unknown names (a constant since it cost 0.23 CPU-seconds of every
    start) has the parameters of a real hash, so an unknown name takes as long as a known one."""
    from argon2 import extract_parameters

    from app import auth

    p = extract_parameters(auth._DUMMY_HASH)
    h = auth._HASHER
    assert (p.type, p.time_cost, p.memory_cost, p.parallelism) == (h.type, h.time_cost, h.memory_cost, h.parallelism)
    assert auth.verify_password(None, "\x00dummy\x00") is False  # never a sign-in, even with its password


def test_settings_are_checked():
    cfg = AppConfig.from_env({"MIMIC_SESSION_HOURS": "0.5", "MIMIC_LOGIN_MAX_FAILURES": "3"})
    assert cfg.auth_settings.session_seconds == 1800 and cfg.auth_settings.max_failures == 3
    assert cfg.auth_settings.trust_forwarded is False
    assert AppConfig.from_env({"SPACE_ID": "x/y"}).auth_settings.trust_forwarded is True
    for bad in ({"MIMIC_SESSION_HOURS": "0"}, {"MIMIC_LOGIN_MAX_FAILURES": "0"}, {"MIMIC_SESSION_HOURS": "x"}):
        with pytest.raises(ConfigError):
            AppConfig.from_env(bad)
    with pytest.raises(ConfigError, match="MIMIC_TRUST_FORWARDED_FOR"):
        AppConfig.from_env({"MIMIC_TRUST_FORWARDED_FOR": "maybe"})


def test_hashed_user_signs_in_and_the_plaintext_one_too(mini_app):
    h = hash_password("hashed-pw")
    port = mini_app({"MIMIC_USERS": f"ana:{h}:reviewer,bob:bob-pw"})
    assert _request(port, "GET", "/config")[0] == 401
    st, hd, _ = _login(port, "ana", "hashed-pw")
    assert st == 200
    assert _request(port, "GET", "/config", cookie=_cookie(hd))[0] == 200
    assert _login(port, "ana", h)[0] == 400  # the hash itself is not a password
    assert _login(port, "bob", "bob-pw")[0] == 200
    assert _login(port, "nobody", "bob-pw")[0] == 400
    # the sign-in page posts multipart FormData: the guard reads the name from that too
    import requests

    url = f"http://127.0.0.1:{port}/login"
    form = {"username": (None, "bob"), "password": (None, "bob-pw")}
    assert requests.post(url, files=form, timeout=30).status_code == 200
    bad = {"username": (None, "bob"), "password": (None, "nope")}
    assert [requests.post(url, files=bad, timeout=30).status_code for _ in range(6)] == [400] * 5 + [429]


# -- 2: rate limits and session expiry -----------------------------------------------------------------
@pytest.mark.slow
def test_failed_sign_ins_lock_that_user_and_that_address(mini_app):
    port = mini_app(
        {
            "MIMIC_USERS": "ana:ana-pw,bob:bob-pw,cat:cat-pw",
            "MIMIC_LOGIN_MAX_FAILURES": "5",
            "MIMIC_LOGIN_LOCKOUT_SECONDS": "6",
        }
    )
    # the attacker signs in from 127.0.0.2 where the loopback allows it: uvicorn (under gradio) takes
    # X-Forwarded-For from a proxy at 127.0.0.1 (its FORWARDED_ALLOW_IPS), not from other addresses
    two = _second_loopback_works()
    bad, good = ("127.0.0.2", "127.0.0.1") if two else ("127.0.0.1", None)
    t0 = time.perf_counter()
    statuses = [_login(port, "ana", f"wrong-{i}", source=bad)[0] for i in range(10)]
    t_wrong = time.perf_counter() - t0
    st, hd, body = _login(port, "ana", "ana-pw", source=bad)  # the 11th attempt, with the right password
    t_locked = time.perf_counter()
    print(f"\n[auth] 10 wrong sign-ins in {t_wrong:.2f} s: statuses {statuses}; 11th (right password): {st}")
    assert statuses[:5] == [400] * 5 and statuses[5:] == [429] * 5
    assert st == 429 and 1 <= int(hd["retry-after"]) <= 6 and "try again" in json.loads(body)["detail"]
    # the address is locked for everybody, the user from every address
    assert _login(port, "cat", "cat-pw", source=bad)[0] == 429
    if good:
        assert _login(port, "ana", "ana-pw", source=good)[0] == 429
        st2, hd2, _ = _login(port, "bob", "bob-pw", source=good)  # another user, another address
        assert st2 == 200 and _request(port, "GET", "/config", cookie=_cookie(hd2), source=good)[0] == 200
        # X-Forwarded-For is not trusted here: a forged one does not get round the address lock
        assert _login(port, "cat", "cat-pw", headers={"X-Forwarded-For": "10.9.9.9"}, source=bad)[0] == 429
    # the lock lapses (bounded wait); a success resets the counters
    wait = 6 - (time.perf_counter() - t_locked) + 0.5
    time.sleep(max(0.0, min(wait, 8.0)))
    assert _login(port, "ana", "ana-pw", source=bad)[0] == 200
    assert [_login(port, "ana", "wrong", source=bad)[0] for _ in range(2)] == [400, 400]  # counting from 0 again


def test_forwarded_for_is_the_address_behind_a_trusted_proxy(mini_app):
    port = mini_app(
        {"MIMIC_USERS": "ana:ana-pw,bob:bob-pw", "MIMIC_LOGIN_MAX_FAILURES": "2", "MIMIC_TRUST_FORWARDED_FOR": "1"}
    )
    bad = {"X-Forwarded-For": "203.0.113.7"}
    assert [_login(port, "nobody", "x", headers=bad)[0] for _ in range(3)] == [400, 400, 429]
    assert _login(port, "bob", "bob-pw", headers=bad)[0] == 429  # that client address is locked
    # another client behind the same proxy (the forged first hop is ignored; the proxy's last hop counts)
    other = {"X-Forwarded-For": "203.0.113.7, 198.51.100.2"}
    assert _login(port, "bob", "bob-pw", headers=other)[0] == 200


def test_parallel_guesses_cannot_pass_the_limit():
    from app.auth import AuthSettings

    lim = LoginLimiter(AuthSettings(max_failures=5, lockout_seconds=30))
    keys = ["user:ana", "addr:1.2.3.4"]
    started = [lim.begin(keys) == 0 for _ in range(20)]  # 20 attempts in flight, none finished
    assert sum(started) == 5
    lim.success(keys)
    assert lim.begin(keys) == 0


@pytest.mark.slow
def test_an_expired_session_is_refused(mini_app):
    port = mini_app({"MIMIC_USERS": "ana:ana-pw", "MIMIC_SESSION_HOURS": str(3 / 3600)})  # 3 s
    st, hd, _ = _login(port, "ana", "ana-pw")
    t_login = time.perf_counter()
    assert st == 200 and "Max-Age=3" in hd["set-cookie"]
    cookie = _cookie(hd)
    fresh = _request(port, "GET", "/config", cookie=cookie)[0]
    if time.perf_counter() - t_login < 2.5:  # a very slow machine may already be past the lifetime
        assert fresh == 200
    time.sleep(max(0.0, 3.5 - (time.perf_counter() - t_login)))
    assert _request(port, "GET", "/config", cookie=cookie)[0] == 401
    body = json.dumps({"data": ["x"], "fn_index": 0, "session_hash": "abc"})
    assert _request(port, "POST", "/gradio_api/queue/join", body=body, cookie=cookie)[0] == 401
    st, hd, _ = _login(port, "ana", "ana-pw")  # signing in again works
    assert st == 200 and _request(port, "GET", "/config", cookie=_cookie(hd))[0] == 200


# -- 3: no server paths reach a client -----------------------------------------------------------------
def _private_paths(studio) -> list[str]:
    data = Path(studio.ctx.config.data_dir)
    return sorted({str(data.resolve()), str(data.absolute()), str(REPO)}, key=len, reverse=True)


def test_header_shows_no_server_path(studio):
    from app.common import header_markdown

    md = header_markdown(studio.ctx)
    assert "data in `" in md
    for p in _private_paths(studio):
        assert p not in md, p


def test_link_result_and_errors_show_no_server_path(studio, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    c = Client(studio.url, auth=("ana", studio.users["ana"]), verbose=False)
    out = c.predict(
        handle_file(str(DEMO / "query_images" / "X02.jpg")),
        "We finally made it to Chelsea on Saturday.",
        "Chelsea",
        api_name="/link",
    )
    blob = json.dumps(out)
    assert out["candidates"] and out["model"]["index"]
    for p in [*_private_paths(studio), "/tmp/"]:
        assert p not in blob, p
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"not an image at all")
    errors = []
    for args in ((handle_file(str(bad)), "Chelsea won.", "Chelsea"), (None, "Chelsea won again.", "Arsenal")):
        with pytest.raises(AppError) as exc:
            c.predict(*args, api_name="/link")
        errors.append(str(exc.value))
    for msg in errors:
        for p in [*_private_paths(studio), str(tmp_path), "/tmp/"]:
            assert p not in msg, (p, msg)
    assert "corrupt.jpg" in errors[0] or "image" in errors[0].lower()
    # the studio serves behind the same guard: its tokens lapse
    from app.auth import ExpiringTokens

    assert isinstance(studio.demo.server_app.tokens, ExpiringTokens)


def test_scrub_paths_keeps_names_only(studio):
    from app.common import public_path, scrub_paths

    data = Path(studio.ctx.config.data_dir).resolve()
    msg = scrub_paths(f"cannot read {data}/images/ab/x.png nor {REPO}/app/ui.py (see http://example.org/a/b)")
    assert str(data) not in msg and str(REPO) not in msg
    assert "x.png" in msg and "http://example.org/a/b" in msg
    assert public_path(data / "images" / "y.png") == "…/y.png"
