"""Security findings of issue 18 (and finding 3), reproduced: KB files naming files outside their
folder, planted paths in an existing database, what `/gradio_api/file=` serves, Link with a bad
entity image, and roles on KB edit/import (handler, raw queue call), retraining and serving.

Every finding of the issue and where its test lives (each fails on a build without its fix):

1. a KB file reads any server file: test_kb_import_refuses_images_outside_the_kb_folder,
   test_csv_and_official_kb_files_are_confined_too, test_migration_drops_and_flags_planted_image_paths,
   test_store_never_follows_a_planted_path, test_an_old_database_gets_its_demo_images_back_after_the_repair
2. planted paths served (database, WAL, journal, sources, files under /tmp):
   test_file_route_serves_only_images_and_assets, test_planted_paths_never_reach_a_component
3. a planted entity breaks Link: test_link_answers_with_a_planted_entity_in_the_top_10
4. KB edit and import need no role: test_annotators_cannot_edit_or_import_the_kb (handlers),
   test_raw_queue_call_to_the_private_kb_event_is_refused_for_annotators,
   test_raw_queue_kb_import_is_refused_for_annotators (raw queue calls), test_kb_edit_is_not_an_api_endpoint
   (the API), test_retrain_and_serve_need_an_admin, test_kb_roles_are_configurable
5. KB import in the write queue, upload size, memory, search size: tests/test_kb_jobs.py
6. export folders left behind: tests/test_app_export.py; sign-in rate limit and session expiry,
   server paths in the header, /link results and errors: tests/test_auth.py; CSV formula cells:
   tests/test_db_export.py::test_csv_export_neutralises_formula_cells_unless_raw; server paths in
   CSV exports: tests/test_db_export.py::test_link_exports_name_images_relatively_never_by_server_path;
   nested JSON, huge CSV fields, lone surrogates, BOM, UTF-16, binary files:
   tests/test_kb_files_malformed.py, tests/test_db_mentions_malformed.py;
   `python -m db import-kb`: tests/test_db_import_kb_cli.py
7. `link --batch` stops at the first bad line: tests/test_linker.py::test_cli_batch_keeps_the_good_lines
8. no request id on /annotate: tests/test_app_api.py::test_annotate_endpoint_request_id_makes_a_retry_safe;
   SIGKILL under load (0 lost, 0 duplicated, journal = database) and restart to serving:
   tests/test_faults.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from app.common import UserError
from app.config import REPO, AppConfig, ConfigError, User
from app.context import knowledge_base, resolve_image
from app.tabs import inspect_tab
from app.tabs import knowledge_base as kb_tab
from app.tabs import link as link_tab
from app.tabs import models as models_tab
from db.errors import NotFound

ASSET_IMAGE = REPO / "assets" / "demo_kb" / "images" / "chelsea.jpg"
PASSWD = Path("/etc/passwd")


def _png(path: Path, seed: int) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((32, 32, 3)) * 255).astype("uint8")).save(path)
    return path


def _secret_bytes() -> list[bytes]:
    out = [PASSWD.read_bytes()[:40]] if PASSWD.is_file() else []
    env = Path("/proc/self/environ")
    if env.is_file():
        chunk = env.read_bytes()[:40]
        if chunk:
            out.append(chunk)
    return out


@pytest.fixture
def tmp_secret():
    """A valid image under the temp folder, outside DATA_DIR (the probe got files under /tmp back)."""
    p = _png(Path(tempfile.gettempdir()) / f"mimic-secret-{uuid.uuid4().hex[:8]}.png", 9)
    yield p
    p.unlink(missing_ok=True)


def _export_bytes(ctx) -> bytes:
    z = zipfile.ZipFile(models_tab.export(ctx, "training", "rev"))
    return b"".join(z.read(n) for n in z.namelist())


# -- finding 1: KB import names files outside its folder -------------------------------------------
def test_kb_import_refuses_images_outside_the_kb_folder(studio, tmp_path):
    ctx = studio.ctx
    kbdir = tmp_path / "kb"
    kbdir.mkdir()
    outside = _png(tmp_path / "outside.png", 1)
    _png(kbdir / "ok.png", 2)
    (kbdir / "link.png").symlink_to(outside)
    rows = [
        {"id": "S_ENV", "name": "x", "images": ["/proc/self/environ"]},
        {"id": "S_PW", "name": "x", "images": [str(PASSWD)]},
        {"id": "S_UP", "name": "x", "images": ["../outside.png"]},
        {"id": "S_ABS", "name": "x", "images": [str(outside)]},
        {"id": "S_LINK", "name": "x", "images": ["link.png"]},
        {"id": "S_URL", "name": "x", "images": ["http://169.254.169.254/latest/meta-data"]},
        {"id": "S_OK", "name": "Safe entity", "images": ["ok.png"]},
    ]
    (kbdir / "kb.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    rep = kb_tab.import_kb_file(ctx, "rev", str(kbdir / "kb.jsonl"))
    bad = {"S_ENV", "S_PW", "S_UP", "S_ABS", "S_LINK", "S_URL"}
    reasons = {r["id"]: r["reason"] for r in rep["rejected"]}
    assert set(reasons) == bad and rep["imported"] == 1
    assert all("outside the KB folder" in reasons[i] for i in bad - {"S_URL"}) and "URL" in reasons["S_URL"]
    for eid in bad:
        with pytest.raises(NotFound):
            ctx.store.get_entity(eid)
    ok = ctx.store.get_entity("S_OK")
    assert len(ok.images) == 1 and ok.images[0].startswith("images/")  # by content, store-relative
    assert Path(ctx.store.resolve_data_path(ok.images[0])).read_bytes() == (kbdir / "ok.png").read_bytes()
    blob = _export_bytes(ctx)
    assert all(secret not in blob for secret in _secret_bytes())
    assert (kbdir / "ok.png").read_bytes() in blob  # the valid image is exported


def test_csv_and_official_kb_files_are_confined_too(tmp_path):
    from mimic.data.kb_files import load_kb

    _png(tmp_path / "in.png", 3)
    (tmp_path / "kb.csv").write_text(f"id,name,images\nC1,a,in.png\nC2,b,{PASSWD}\nC3,c,../../etc/passwd\n")
    kb, rep = load_kb(tmp_path / "kb.csv")
    assert [e.id for e in kb] == ["C1"] and {r["id"] for r in rep.rejected} == {"C2", "C3"}
    off = tmp_path / "official"
    (off / "kb_image").mkdir(parents=True)
    _png(off / "kb_image" / "e.png", 4)
    (off / "kb_entity.json").write_text(
        json.dumps(
            [
                {"id": "O1", "entity_name": "a", "image_list": ["e.png"]},
                {"id": "O2", "entity_name": "b", "image_list": ["../../../etc/passwd"]},
                {"id": "O3", "entity_name": "c", "image_list": ["/proc/self/environ"]},
            ]
        )
    )
    kb, rep = load_kb(off)
    assert [e.id for e in kb] == ["O1"] and {r["id"] for r in rep.rejected} == {"O2", "O3"}


# -- an existing database that already holds planted paths ---------------------------------------------
def _plant(engine, eid: str, images: list[str], name: str = "planted") -> None:
    ents = sa.table(
        "kb_entities",
        sa.column("id"),
        sa.column("name"),
        sa.column("text"),
        sa.column("aliases", sa.JSON),
        sa.column("images", sa.JSON),
        sa.column("version"),
        sa.column("updated_at"),
        sa.column("search_text"),
    )
    with engine.begin() as c:
        c.execute(
            sa.insert(ents).values(
                id=eid,
                name=name,
                text="",
                aliases=[],
                images=images,
                version=1,
                updated_at=sa.func.current_timestamp(),
                search_text=name.lower(),
            )
        )


def test_migration_drops_and_flags_planted_image_paths(tmp_path):
    from db import Settings, get_engine, open_store, upgrade

    data2 = tmp_path / "data2"
    data2.mkdir()
    s2 = Settings.from_env(data2)
    e2 = get_engine(s2)
    upgrade(e2, "0001")
    _plant(e2, "P1", [str(PASSWD), "images/ab/" + "ab" * 32 + ".png", "../annotations.db"])
    store = open_store(settings=s2)  # migrates to head: the repair runs
    try:
        rec = store.get_entity("P1")
        assert rec.images == ["images/ab/" + "ab" * 32 + ".png"] and rec.version == 2
        hist = store.entity_history("P1")
        assert "/etc/passwd" in hist[-1].note and hist[-1].note.startswith("security:")
        assert all(str(PASSWD) not in e.images for e in store.knowledge_base())
    finally:
        store.close()


def test_store_never_follows_a_planted_path(tmp_path):
    from db import open_store

    store = open_store(tmp_path / "data")
    try:
        _plant(store.engine, "P3", [str(PASSWD), "../../etc/passwd", "images/../annotations.db"])
        assert store.knowledge_base()[0].images == []
        assert store.resolve_data_path(str(PASSWD)) is None and store.resolve_data_path("images/../x") is None
        out = store.export_training_set(tmp_path / "exp")
        blob = b"".join(f.read_bytes() for f in Path(out.path).rglob("*") if f.is_file())
        assert all(secret not in blob for secret in _secret_bytes())
    finally:
        store.close()


# -- finding 2: what a browser may fetch ---------------------------------------------------------------
def _login(studio, user: str):
    import requests

    s = requests.Session()
    r = s.post(studio.url + "login", data={"username": user, "password": studio.users[user]})
    assert r.status_code < 400
    return s


def test_file_route_serves_only_images_and_assets(studio, tmp_secret):
    ctx = studio.ctx
    s = _login(studio, "ana")
    st = ctx.store.settings
    refused = [
        st.sqlite_path,
        Path(str(st.sqlite_path) + "-wal"),
        st.journal_path,
        REPO / "app" / "common.py",
        REPO / "db" / "store.py",
        tmp_secret,
        PASSWD,
    ]
    for p in refused:
        r = s.get(studio.url + f"gradio_api/file={p}")
        assert 400 <= r.status_code < 500, (p, r.status_code)
    stored = next(p for p in Path(st.images_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in (stored, ASSET_IMAGE):
        r = s.get(studio.url + f"gradio_api/file={p}")
        assert r.status_code == 200 and r.content == p.read_bytes(), p
    # a handler returning such a path could not get it copied into Gradio's cache either
    from gradio.utils import is_allowed_file

    demo = studio.demo
    for p in refused[:-2]:
        ok, why = is_allowed_file(
            Path(p).resolve(), demo.blocked_paths, demo.allowed_paths + [os.getcwd(), tempfile.gettempdir()], []
        )
        assert not ok and why == "in_blocklist", p


def test_planted_paths_never_reach_a_component(studio, tmp_secret):
    ctx = studio.ctx
    assert resolve_image(str(PASSWD), ctx.config.data_dir) is None
    assert resolve_image(str(tmp_secret), ctx.config.data_dir) is None
    assert resolve_image("../annotations.db", ctx.config.data_dir) is None
    assert resolve_image(str(ctx.store.settings.sqlite_path), ctx.config.data_dir) is None
    assert resolve_image(str(REPO / "app" / "ui.py"), ctx.config.data_dir) is None
    assert resolve_image(str(ASSET_IMAGE), ctx.config.data_dir) == str(ASSET_IMAGE.resolve())


# -- finding 3: a bad entity image does not break Link -------------------------------------------------
def test_link_answers_with_a_planted_entity_in_the_top_10(studio, tmp_secret):
    from app.common import candidate_gallery as _gallery

    ctx = studio.ctx
    secret = str(tmp_secret)  # a valid image: before the fix the gallery showed it
    _plant(ctx.store.engine, "Q_PLANT", [secret, str(PASSWD), str(ctx.store.settings.sqlite_path)], name="Zqxplanted")
    with ctx.kb_lock:
        ctx.service.sync_kb(knowledge_base(ctx.store, ctx.config.data_dir))
    r = link_tab.link(ctx, str(ASSET_IMAGE), "We met Zqxplanted near Chelsea.", "Zqxplanted")
    d = r.to_dict()
    # (the query photo is D001's, which the trained default model puts first; the planted entity,
    # found by its name, is still in the list with its images dropped)
    planted = [c for c in d["candidates"] if c["entity_id"] == "Q_PLANT"]
    assert len(planted) == 1 and planted[0]["images"] == []
    gal = _gallery(ctx, d["candidates"])
    assert gal and all(str(PASSWD) not in g[0] and "annotations.db" not in g[0] and g[0] != secret for g in gal)
    view = inspect_tab.inspect_candidate(ctx, d, str(ASSET_IMAGE), "Q_PLANT")
    assert view.entity_overlay is None
    assert kb_tab.entity_images(ctx, ctx.store.get_entity("Q_PLANT")) == []


# -- finding 4: roles ----------------------------------------------------------------------------------
def test_annotators_cannot_edit_or_import_the_kb(studio, tmp_path):
    ctx = studio.ctx
    with pytest.raises(UserError, match="needs the role reviewer or admin"):
        kb_tab.save_entity(ctx, "ana", "D001", "Renamed by ana", "", "", None)
    assert ctx.store.get_entity("D001").name == "Chelsea"
    kb = tmp_path / "kb.jsonl"
    kb.write_text(json.dumps({"id": "R_ANA", "name": "by ana"}) + "\n")
    with pytest.raises(UserError, match="needs the role"):
        kb_tab.import_kb_file(ctx, "ana", str(kb))
    with pytest.raises(UserError, match="sign in"):
        kb_tab.import_kb_file(ctx, None, str(kb))
    assert kb_tab.import_kb_file(ctx, "rev", str(kb))["imported"] == 1  # a reviewer may
    rec = kb_tab.save_entity(ctx, "rev", "R_ANA", "by rev", "", "", None)
    assert rec.name == "by rev"


def test_kb_edit_is_not_an_api_endpoint(studio):
    from gradio_client import Client

    c = Client(studio.url, auth=("ana", studio.users["ana"]), verbose=False)
    # role checks of /review, /resolve: tests/test_app_review.py; /import_mentions, /projects:
    # tests/test_app_projects.py
    assert set(c.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/link",
        "/annotate",
        "/export",
        "/review",
        "/resolve",
        "/import_mentions",
        "/projects",
    }


def _queue_call(session, studio, fn_index: int, data: list) -> list[dict]:
    sh = uuid.uuid4().hex[:10]
    r = session.post(
        studio.url + "gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": sh, "event_data": None, "trigger_id": None},
    )
    if r.status_code >= 400:
        return [{"msg": "refused", "status": r.status_code}]
    msgs, t0 = [], time.time()
    with session.get(studio.url + f"gradio_api/queue/data?session_hash={sh}", stream=True, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data:"):
                m = json.loads(line[5:])
                msgs.append(m)
                if m.get("msg") in ("process_completed", "close_stream") or time.time() - t0 > 60:
                    break
    return msgs


def _fn_index(studio, name: str) -> int:
    return next(i for i, f in studio.demo.fns.items() if getattr(f, "name", "") == name)


def _completed(msgs: list[dict]) -> dict:
    done = [m for m in msgs if m.get("msg") == "process_completed"]
    assert done and done[-1].get("success"), msgs  # the call itself went through: the handler answered
    return done[-1]


def test_raw_queue_call_to_the_private_kb_event_is_refused_for_annotators(studio):
    ctx = studio.ctx
    fn_index = _fn_index(studio, "kb_save")
    out = _completed(_queue_call(_login(studio, "ana"), studio, fn_index, ["R_RAW", "raw by ana", "", "", None, True]))
    assert "needs the role" in json.dumps(out["output"])
    with pytest.raises(NotFound):
        ctx.store.get_entity("R_RAW")
    # the same event and data from a reviewer is stored: the refusal above is the role check, not a bad call
    _completed(_queue_call(_login(studio, "rev"), studio, fn_index, ["R_RAW", "raw by rev", "", "", None, True]))
    assert ctx.store.get_entity("R_RAW").name == "raw by rev"


def _upload(session, studio, path: Path) -> dict:
    with path.open("rb") as f:
        r = session.post(studio.url + "gradio_api/upload", files={"files": (path.name, f)})
    assert r.status_code == 200, r.text
    return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_raw_queue_kb_import_is_refused_for_annotators(studio, tmp_path):
    """The KB tab's import event, called on the queue as the browser would (upload, then the event):
    an annotator's call starts no job and stores nothing; a reviewer's same call imports."""
    ctx = studio.ctx
    kb = tmp_path / "raw.jsonl"
    kb.write_text(json.dumps({"id": "R_IMP", "name": "raw import"}) + "\n", encoding="utf-8")
    fn_index = _fn_index(studio, "import_file")
    jobs_before = len(ctx.jobs.running("kb_import"))
    ana = _login(studio, "ana")
    out = _completed(_queue_call(ana, studio, fn_index, [_upload(ana, studio, kb)]))
    assert "needs the role" in json.dumps(out["output"])
    assert len(ctx.jobs.running("kb_import")) == jobs_before
    with pytest.raises(NotFound):
        ctx.store.get_entity("R_IMP")
    rev = _login(studio, "rev")
    out = _completed(_queue_call(rev, studio, fn_index, [_upload(rev, studio, kb)]))
    assert "Import started" in json.dumps(out["output"])
    deadline = time.time() + 120  # the job runs in the background
    while time.time() < deadline:
        try:
            assert ctx.store.get_entity("R_IMP").name == "raw import"
            break
        except NotFound:
            time.sleep(0.2)
    else:
        pytest.fail("the reviewer's import never stored R_IMP")


def test_retrain_and_serve_need_an_admin(studio):
    ctx = studio.ctx
    v = ctx.service.served.version
    for who in ("ana", "rev"):
        with pytest.raises(UserError, match="needs the role admin"):
            models_tab.start_retrain(ctx, who)
        with pytest.raises(UserError, match="needs the role admin"):
            models_tab.serve_version(ctx, who, v)
    ctx.config.users.append(User("boss", "boss-pw", "admin"))
    try:
        assert models_tab.serve_version(ctx, "boss", v) == v
    finally:
        ctx.config.users.pop()


def test_kb_roles_are_configurable():
    cfg = AppConfig.from_env({"MIMIC_KB_ROLES": "annotator,reviewer,admin"})
    assert cfg.permissions["kb_edit"] == cfg.permissions["kb_import"] == ("annotator", "reviewer", "admin")
    assert AppConfig.from_env({}).permissions["kb_edit"] == ("reviewer", "admin")
    assert AppConfig.from_env({}).permissions["retrain"] == ("admin",) == AppConfig.from_env({}).permissions["serve"]
    with pytest.raises(ConfigError, match="MIMIC_KB_ROLES"):
        AppConfig.from_env({"MIMIC_KB_ROLES": "root"})


def test_an_old_database_gets_its_demo_images_back_after_the_repair(tmp_path, tiny_clip):
    """A database from before images were stored by content held repository paths for the demo
    KB's images; migration 0002 drops them, and the next start restores them by content from the
    configured KB file, keeping later edits of the text."""
    from db import Settings, get_engine, open_store, upgrade

    data = tmp_path / "old"
    data.mkdir()
    settings = Settings.from_env(data)
    upgrade(get_engine(settings), "0001")
    _plant(get_engine(settings), "D001", ["assets/demo_kb/images/chelsea.jpg"])
    store = open_store(settings=settings)  # migration 0002 drops the repository path
    try:
        assert store.get_entity("D001").images == []
        assert store.entities_with_dropped_images() == ["D001"]
    finally:
        store.close()
    from app.context import AppContext
    from mimic.models.checkpoint import save_checkpoint
    from mimic.models.linking_model import LinkingModel

    ckpt = save_checkpoint(LinkingModel.build(tiny_clip, mode="fixed"), tmp_path / "ckpt", backbone_trained=False)
    ctx = AppContext.start(AppConfig.from_env({"DATA_DIR": str(data), "MIMIC_CHECKPOINT": str(ckpt)}), progress=False)
    try:
        rec = ctx.store.get_entity("D001")
        assert len(rec.images) == 1 and rec.images[0].startswith("images/")
        assert (data / rec.images[0]).read_bytes() == ASSET_IMAGE.read_bytes()
        assert rec.name == "planted"  # the text the database held is kept
        assert ctx.store.entities_with_dropped_images() == []
    finally:
        ctx.stop()
