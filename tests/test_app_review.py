"""The Review and Users tabs' handlers (called directly), sign-in with the database's users, and the
`/review` and `/resolve` endpoints through gradio_client, with the roles checked as in the UI.

No model is needed: the handlers run on an `AppContext` over a small store (no linking service), and
the endpoints are served by a Blocks holding only them, behind the app's own sign-in
(`AppConfig.launch_auth(store)`, what app/ui.py passes to `launch`)."""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest

from app.auth import hash_password
from app.common import NIL, UserError
from app.config import AppConfig
from app.context import AppContext
from app.tabs import review as review_tab
from app.tabs import users as users_tab
from db import open_store
from db.testing import seed_store

ENV_ADMIN_PW = "admin-from-env"
# hashed once (argon2 costs tenths of a CPU-second each; every test's store gets the same hashes)
ENV_USERS = f"boss:{hash_password(ENV_ADMIN_PW)}:admin,ana:{hash_password('ana-password')}"
RITA_HASH, BOB_HASH = hash_password("rita-password"), hash_password("bob-password")


@pytest.fixture
def ctx(tmp_path):
    store = open_store(tmp_path / "data")
    seed_store(store, entities=6, mentions=6, candidates=3)
    cfg = AppConfig.from_env({"DATA_DIR": str(tmp_path / "data"), "MIMIC_USERS": ENV_USERS})
    for u in cfg.users:  # what AppContext.start does: MIMIC_USERS bootstraps, then the database rules
        store.ensure_user(u.name, u.role)
    store.create_user("rita", "reviewer", RITA_HASH)
    store.create_user("bob", "annotator", BOB_HASH)
    store.submit("ana", "m0", entity_id="Q1")
    store.submit("bob", "m0", entity_id="Q2", comment="the photo shows Q2")
    store.submit("ana", "m1", entity_id="Q3", flag="unsure")
    store.submit("ana", "m2", entity_id="Q4")
    store.submit("bob", "m2", entity_id="Q4")
    c = AppContext(cfg, store, None)  # these handlers never link
    yield c
    store.close()


# -- Review tab ---------------------------------------------------------------------------------------
def test_review_handlers_list_show_and_resolve(ctx):
    page = review_tab.review_page(ctx, "rita")
    table = review_tab.review_table(page)
    assert list(table["mention_id"]) == [ctx.store.get_mention("m0").id, ctx.store.get_mention("m1").id]
    assert list(table["why"]) == ["disagreement", "flag"]
    assert "bob: entity 2 (Q2)" in table.iloc[0]["decisions"] and "⚑unsure" in table.iloc[1]["decisions"]
    assert review_tab.page_label(page).startswith("Mentions 1–2 of 2")
    m0 = ctx.store.get_mention("m0").id
    item = review_tab.review_item(ctx, "rita", m0)
    assert "<mark>" in item["html"] and "disagreement" in item["html"]
    assert list(item["decisions"]["annotator"]) == ["ana", "bob"]
    assert item["decisions"].iloc[1]["comment"] == "the photo shows Q2"
    values = [v for _, v in item["choices"]]
    assert {"Q1", "Q2"} <= set(values) and values[-2:] == [NIL, "__AMBIGUOUS__"]  # decided entities are offered too
    ann = review_tab.resolve(ctx, "rita", m0, "Q2", "bob is right")
    assert ctx.store.get_annotation(ann).annotator == "rita"
    assert [it.mention.uid for it in review_tab.review_page(ctx, "rita").items] == ["m1"]
    assert ctx.store.resolved()[0][m0].entity_id == "Q2"  # the one gold rule
    with pytest.raises(UserError, match="not on the review list"):
        review_tab.review_item(ctx, "rita", m0)
    with pytest.raises(UserError, match="pick a candidate"):
        review_tab.resolve(ctx, "rita", ctx.store.get_mention("m1").id, None)
    with pytest.raises(UserError, match="page"):
        review_tab.review_page(ctx, "rita", page=0)
    with pytest.raises(UserError, match="project"):
        review_tab.review_page(ctx, "rita", project="birds")


def test_review_is_for_reviewers_and_admins_only(ctx):
    m0 = ctx.store.get_mention("m0").id
    for who in ("ana", None):
        with pytest.raises(UserError, match="review needs the role reviewer or admin|sign in"):
            review_tab.review_page(ctx, who)
        with pytest.raises(UserError, match="review needs the role reviewer or admin|sign in"):
            review_tab.resolve(ctx, who, m0, NIL)
        with pytest.raises(UserError, match="review needs the role reviewer or admin|sign in"):
            review_tab.agreement_view(ctx, who)
    assert review_tab.review_page(ctx, "boss").total == 2  # an admin may
    ctx.store.set_active("rita", False)
    with pytest.raises(UserError, match="disabled"):
        review_tab.review_page(ctx, "rita")


def test_agreement_view_tables_and_heatmap(ctx):
    ctx.store.submit("rita", "m0", entity_id="Q2")
    v = review_tab.agreement_view(ctx, "rita")
    assert list(v.pairs.columns) == review_tab.PAIR_COLUMNS and len(v.pairs) == 1
    row = v.pairs.iloc[0]
    assert (row["annotator A"], row["annotator B"], row["mentions"], row["observed agreement"]) == (
        "ana",
        "bob",
        2,
        0.5,
    )
    assert isinstance(v.heatmap, go.Figure)
    z = v.heatmap.data[0].z
    # by hand: ana Q1, Q4 / bob Q2, Q4 -> P_o = 1/2, P_e = 1/4, kappa = 1/3 (the table rounds to 3 places)
    assert z[0][0] == 1.0 and z[0][1] == z[1][0] == pytest.approx(1 / 3) and row["Cohen's κ"] == 0.333
    assert list(v.heatmap.data[0].x) == ["ana", "bob"]
    assert v.projects.iloc[0]["project"] == "default" and v.projects.iloc[0]["mentions (≥ 2 raters)"] == 2
    people = v.people.set_index("annotator")
    assert people.loc["ana", "agrees with reviewer"] == 0.0 and people.loc["bob", "agrees with reviewer"] == 1.0
    assert people.loc["ana", "decisions"] == 3


# -- Users tab ----------------------------------------------------------------------------------------
def test_users_tab_is_admin_only_and_stores_hashes(ctx):
    for who in ("ana", "rita", None):
        with pytest.raises(UserError):
            users_tab.users_table(ctx, who)
        with pytest.raises(UserError):
            users_tab.add_user(ctx, who, "mallory", "admin", "mallory-password")
    assert "mallory" not in {u.name for u in ctx.store.list_users()}
    t = users_tab.users_table(ctx, "boss").set_index("name")
    assert t.loc["boss", "password"] == "MIMIC_USERS" and t.loc["rita", "password"] == "stored"
    assert "$argon2" not in t.to_csv()
    users_tab.add_user(ctx, "boss", "dora", "annotator", "dora-password")
    signin = ctx.store.user_for_sign_in("dora")
    assert signin.password_hash.startswith("$argon2id$") and "dora-password" not in signin.password_hash
    with pytest.raises(UserError, match="at least 8"):
        users_tab.add_user(ctx, "boss", "eve", "annotator", "short")
    with pytest.raises(UserError, match="already exists"):
        users_tab.add_user(ctx, "boss", "dora", "annotator", "dora-password")
    assert users_tab.change_role(ctx, "boss", "dora", "reviewer") == "dora is reviewer now."
    users_tab.set_active(ctx, "boss", "dora", False)
    assert users_tab.users_table(ctx, "boss").set_index("name").loc["dora", "active"] == False  # noqa: E712
    with pytest.raises(UserError, match="your own account"):
        users_tab.set_active(ctx, "boss", "boss", False)
    with pytest.raises(UserError, match="last active admin"):
        users_tab.change_role(ctx, "boss", "boss", "annotator")
    old = ctx.store.user_for_sign_in("rita").password_hash
    users_tab.reset_password(ctx, "boss", "rita", "a-new-password")
    assert ctx.store.user_for_sign_in("rita").password_hash != old


def test_database_role_survives_the_environment(ctx):
    """MIMIC_USERS lists ana as an annotator; an admin makes her a reviewer in the Users tab: signing
    in again (ctx.annotator) keeps the database's role."""
    users_tab.change_role(ctx, "boss", "ana", "reviewer")
    assert ctx.annotator("ana") == "ana" and ctx.store.get_annotator("ana").role == "reviewer"
    # she may review now; her own flagged m1 was decided as an annotator and stays one (the gold
    # rule reads the role a decision was made in, migration 0005), so m1 is still to review
    assert [it.mention.uid for it in review_tab.review_page(ctx, "ana").items] == ["m0", "m1"]


# -- sign-in and the API --------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _login(port: int, user: str, password: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = urllib.parse.urlencode({"username": user, "password": password})
        conn.request("POST", "/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


@pytest.fixture
def served(ctx):
    """The `/review` and `/resolve` endpoints and the Users tab's events behind the app's sign-in
    -> (ctx, url, port, demo)."""
    import gradio as gr

    from app import api

    with gr.Blocks(analytics_enabled=False) as demo:
        shared = SimpleNamespace(demo=demo, db_queue={"concurrency_id": "db", "concurrency_limit": 1})
        api._review_endpoints(ctx, shared)
        users_tab.UsersTab(ctx, shared)  # type: ignore[arg-type]  # its private events, for raw queue calls
    port = _free_port()
    _, url, _ = demo.queue().launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, **ctx.config.launch_auth(ctx.store)
    )
    yield ctx, url, port, demo
    demo.close()


def test_sign_in_with_database_users_and_a_disabled_one_refused(served):
    ctx, _, port, _ = served
    assert _login(port, "rita", "rita-password") == 200  # a database user
    assert _login(port, "rita", "wrong-password") == 400
    assert _login(port, "boss", ENV_ADMIN_PW) == 200  # MIMIC_USERS (no stored hash) still works
    ctx.store.set_password_hash("boss", hash_password("boss-new-password"))
    assert _login(port, "boss", ENV_ADMIN_PW) == 400  # a stored password replaces the entry's
    assert _login(port, "boss", "boss-new-password") == 200
    ctx.store.set_active("bob", False)
    assert _login(port, "bob", "bob-password") == 400  # disabled: refused with the right password


def test_review_and_resolve_through_gradio_client(served):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    ctx, url, _, _ = served
    rita = Client(url, auth=("rita", "rita-password"), verbose=False)
    names = set(rita.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/review", "/resolve"} <= names
    page = rita.predict(1, 20, "", api_name="/review")
    assert page["total"] == 2 and [it["mention"]["uid"] for it in page["items"]] == ["m0", "m1"]
    assert [d["annotator"] for d in page["items"][0]["decisions"]] == ["ana", "bob"]
    assert page["items"][1]["decisions"][0]["flag"] == "unsure"
    ann = rita.predict("m1", "Q3", "ok as it is", api_name="/resolve")
    assert ctx.store.get_annotation(int(ann)).annotator == "rita"
    assert rita.predict(1, 20, "", api_name="/review")["total"] == 1
    with pytest.raises(AppError, match="page_size"):
        rita.predict(1, 0, "", api_name="/review")
    ana = Client(url, auth=("ana", "ana-password"), verbose=False)
    with pytest.raises(AppError, match="needs the role reviewer or admin"):
        ana.predict(1, 20, "", api_name="/review")
    with pytest.raises(AppError, match="needs the role reviewer or admin"):
        ana.predict("m0", "Q1", "", api_name="/resolve")
    assert ctx.store.review_list().total == 1  # nothing stored by the refused call


def test_the_tabs_callbacks(ctx):
    """The Review and Users tabs' event callbacks, as Gradio calls them (a request carrying the name)."""
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as demo:
        shared = SimpleNamespace(demo=demo, db_queue={"concurrency_id": "db", "concurrency_limit": 1})
        rt = review_tab.ReviewTab(ctx, shared)  # type: ignore[arg-type]
        ut = users_tab.UsersTab(ctx, shared)  # type: ignore[arg-type]
    rita, ana = SimpleNamespace(username="rita"), SimpleNamespace(username="ana")
    table, note, msg, page = rt.show_list(1, "", rita)
    assert len(table) == 2 and note.startswith("Mentions 1–2 of 2") and msg == "" and page == 1
    assert "needs the role" in rt.show_list(1, "", ana)[2]
    assert rt.show_list(9, "", rita)[3] == 1  # past the end: the last page
    mid, html, cands, decisions, choice, msg = rt.show_item(table, "", SimpleNamespace(index=[0, 1]), rita)
    assert mid == table.iloc[0]["mention_id"] and "<mark>" in html and len(decisions) == 2
    out = rt.on_resolve(mid, "Q2", "bob is right", 1, "", rita)
    assert out[0].startswith("**OK**") and len(out[2]) == 1
    assert rt.on_resolve(mid, "Q2", "", 1, "", ana)[0].startswith("**Error:**")
    pairs, fig, projects, people, note = rt.show_agreement("", rita)
    assert len(pairs) == 1 and fig.data[0].type == "heatmap" and "mention(s)" in note
    boss = SimpleNamespace(username="boss")
    assert ut.refresh(ana)[0].startswith("**Error:**")
    run = ut._runner(lambda r, n, ro, pw: users_tab.add_user(ctx, r.username, n, ro, pw))
    msg, users, password = run("dora", "annotator", "dora-password", boss)
    assert msg.startswith("**OK**") and "dora" in set(users["name"]) and password == ""


def _raw_queue_call(url: str, user: str, password: str, fn_index: int, data: list) -> str:
    """A private event called on the queue as a browser would, signed in as `user` -> the output."""
    import json
    import uuid

    import requests

    s = requests.Session()
    assert s.post(url + "login", data={"username": user, "password": password}).status_code == 200
    sh = uuid.uuid4().hex[:10]
    body = {"data": data, "fn_index": fn_index, "session_hash": sh, "event_data": None, "trigger_id": None}
    assert s.post(url + "gradio_api/queue/join", json=body).status_code == 200
    with s.get(url + f"gradio_api/queue/data?session_hash={sh}", stream=True, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data:") and (m := json.loads(line[5:])).get("msg") == "process_completed":
                assert m.get("success"), m
                return json.dumps(m["output"])
    raise AssertionError("the queue call did not complete")


def test_raw_queue_call_to_the_users_event_is_refused_for_non_admins(served):
    ctx, url, _, demo = served
    url = url.rstrip("/") + "/"
    fn_index = next(i for i, f in demo.fns.items() if getattr(f, "name", "") == "users_add")
    out = _raw_queue_call(url, "rita", "rita-password", fn_index, ["mallory", "admin", "mallory-password"])
    assert "needs the role admin" in out
    assert "mallory" not in {u.name for u in ctx.store.list_users()}
    out = _raw_queue_call(url, "boss", ENV_ADMIN_PW, fn_index, ["mallory", "annotator", "mallory-password"])
    assert "Added mallory" in out and ctx.store.user_for_sign_in("mallory").password_hash.startswith("$argon2id$")
