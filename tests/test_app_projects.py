"""The Projects tab's handlers (roles, corpus import and pre-annotation jobs, export, guidelines)
and the `/import_mentions` and `/projects` endpoints through gradio_client, on the launched app."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from app.common import UserError
from app.tabs import projects as P


def _corpus(tmp_path, n=6, bad=True):
    rows = [{"id": f"r{i}", "sentence": f"We went to Chelsea on day {i}.", "mention": "Chelsea"} for i in range(n)]
    rows[0]["image"] = "pics/a.png"
    lines = [json.dumps(r) for r in rows]
    if bad:
        lines += ['{"id": "x", "sentence": "No mention here.", "mention": "Arsenal"}', "{oops"]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, "PNG")
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("pics/a.png", buf.getvalue())
        zf.writestr("../escape.png", buf.getvalue())
    return path, z


def test_roles_on_every_project_action(studio, tmp_path):
    ctx = studio.ctx
    with pytest.raises(UserError, match="needs the role reviewer or admin"):
        P.save_project(ctx, "ana", "AnaProject")
    with pytest.raises(UserError, match="sign in"):
        P.list_projects(ctx, None)
    rec = P.save_project(ctx, "rev", "RoleProject", "# Guide\nBe *careful*.", 2)
    assert (rec.name, rec.annotators_per_mention, rec.created_by) == ("RoleProject", 2, "rev")
    path, z = _corpus(tmp_path)
    with pytest.raises(UserError, match="needs the role"):
        P.start_import(ctx, "ana", "RoleProject", str(path), str(z))
    with pytest.raises(UserError, match="needs the role"):
        P.start_preannotate(ctx, "bob", "RoleProject")
    # annotators see the list and the guidelines
    names = [p["name"] for p in P.list_projects(ctx, "ana")]
    assert "RoleProject" in names and names[-1] == "default"
    assert P.guidelines_markdown(ctx, "RoleProject") == "# Guide\nBe *careful*."
    assert "no project named" in P.guidelines_markdown(ctx, "Nope").lower()
    # editing an existing name updates it
    assert P.save_project(ctx, "rev", "RoleProject", "v2", 1).guidelines == "v2"


def test_import_job_reports_rejected_rows_then_preannotate_and_export(studio, tmp_path):
    ctx = studio.ctx
    P.save_project(ctx, "rev", "JobProject", "Link the club.", 1)
    path, z = _corpus(tmp_path)
    job = P.start_import(ctx, "rev", "JobProject", str(path), str(z))
    assert job.wait(60) and job.state == "done", job.snapshot()
    rep = job.result
    assert (rep["created"], rep["format"], rep["rejected_count"]) == (6, "jsonl", 2)
    assert [r["row"] for r in rep["rejected"]] == ["line 7", "line 8"]
    assert "does not occur" in rep["rejected"][0]["problem"]
    assert rep["zip_skipped"][0]["name"] == "../escape.png"
    assert str(tmp_path) not in json.dumps(rep)  # no server paths in what the user sees
    assert ctx.store.get_mention("JobProject/r0").image_sha256
    # only its owner or an admin cancels a job
    with pytest.raises(UserError, match="only rev"):
        P.cancel_job(ctx, "ana", job.id)
    pre = P.start_preannotate(ctx, "rev", "JobProject")
    assert pre.wait(120) and pre.state == "done", pre.snapshot()
    assert pre.result["predicted"] == 6 and pre.result["failed"] == []
    prog = ctx.store.project_progress("JobProject")
    assert prog["predicted"] == prog["mentions"] == 6
    pred = ctx.store.predictions("JobProject/r1")[0]
    assert pred.model_version == ctx.service.served.version and pred.candidates[0].entity_id
    # the project's queue serves its mentions; a decision shows in its progress and export
    item = ctx.store.next_item("bob", project="JobProject")
    assert item.mention.uid.startswith("JobProject/") and item.prediction is not None
    ctx.store.submit("bob", item.mention.id, "entity", item.prediction.candidates[0].entity_id)
    out = P.export_project(ctx, "ana", "JobProject", "jsonl")
    with zipfile.ZipFile(out) as zf:
        assert zf.read("guidelines.md").decode() == "Link the club."
        rows = [json.loads(x) for x in zf.read("links.jsonl").decode().splitlines()]
    assert [(r["annotator"], r["mention_uid"]) for r in rows] == [("bob", item.mention.uid)]
    with pytest.raises(UserError, match="sign in"):
        P.export_project(ctx, None, "JobProject")


def test_import_refuses_bad_uploads_before_starting(studio, tmp_path):
    ctx = studio.ctx
    P.save_project(ctx, "rev", "BadUploads")
    with pytest.raises(UserError, match="choose a corpus file"):
        P.start_import(ctx, "rev", "BadUploads", None, None)
    weird = tmp_path / "corpus.txt"
    weird.write_text("hello", encoding="utf-8")
    with pytest.raises(UserError, match="cannot tell the format"):
        P.start_import(ctx, "rev", "BadUploads", str(weird), None)
    with pytest.raises(UserError, match="no project"):
        P.start_import(ctx, "rev", "Missing", str(weird), None)
    good, _ = _corpus(tmp_path, n=2, bad=False)
    notzip = tmp_path / "bad.zip"
    notzip.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a zip file"):
        P.start_import(ctx, "rev", "BadUploads", str(good), str(notzip))
    # a whole-file problem found by the job fails it with a message naming the file, not its path
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    job = P.start_import(ctx, "rev", "BadUploads", str(empty), None, "jsonl")
    assert job.wait(30) and job.state == "failed" and "empty.jsonl" in job.error and "empty" in job.error
    assert str(tmp_path) not in job.error


@pytest.fixture(scope="module")
def clients(studio):
    from gradio_client import Client

    return {u: Client(studio.url, auth=(u, studio.users[u]), verbose=False) for u in ("rev", "ana")}


def test_import_mentions_and_projects_endpoints(clients, studio, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path, z = _corpus(tmp_path)
    rep = clients["rev"].predict(
        "ApiProject", handle_file(str(path)), handle_file(str(z)), "auto", "# API guide", 2, api_name="/import_mentions"
    )
    assert rep["project_created"] and rep["created"] == 6 and rep["rejected_count"] == 2
    assert studio.ctx.store.get_project("ApiProject").annotators_per_mention == 2
    again = clients["rev"].predict("ApiProject", handle_file(str(path)), None, api_name="/import_mentions")
    # without the zip the row naming an image is refused; the others are found again, not duplicated
    assert not again["project_created"] and (again["existing"], again["created"], again["rejected_count"]) == (5, 0, 3)
    assert any(r["row"] == "line 1" and "not in the images zip" in r["problem"] for r in again["rejected"])
    with pytest.raises(AppError, match="needs the role"):
        clients["ana"].predict("ApiProject", handle_file(str(path)), None, api_name="/import_mentions")
    listing = clients["ana"].predict(api_name="/projects")
    api = next(p for p in listing if p["name"] == "ApiProject")
    assert api["guidelines"] == "# API guide" and api["progress"]["mentions"] == 6
    assert api["progress"]["pending"] == 6 and api["progress"]["annotators_per_mention"] == 2


def test_raw_queue_calls_to_the_private_project_events_check_roles(studio, tmp_path):
    """The tab's save event, called on the queue as a browser would: refused for an annotator (no
    project created), done for a reviewer; so the role check is in the handler, not in the page."""
    from test_security import _completed, _fn_index, _login, _queue_call

    ctx = studio.ctx
    fn_index = _fn_index(studio, "project_save")
    data = ["RawProject", "raw guide", 1, "default", False]
    out = _completed(_queue_call(_login(studio, "ana"), studio, fn_index, data))
    assert "needs the role" in json.dumps(out["output"])
    assert "RawProject" not in {p.name for p in ctx.store.list_projects()}
    _completed(_queue_call(_login(studio, "rev"), studio, fn_index, data))
    assert ctx.store.get_project("RawProject").guidelines == "raw guide"
    # the pre-annotate event is refused the same way (no job starts)
    before = len(ctx.jobs.running())
    out = _completed(_queue_call(_login(studio, "ana"), studio, _fn_index(studio, "project_start_pre"), ["RawProject"]))
    assert "needs the role" in json.dumps(out["output"]) and len(ctx.jobs.running()) == before


def test_tab_events_save_import_poll_and_export(studio, tmp_path):
    """The tab's own event handlers, on a tab built for the test: save, import, the poll that draws
    the progress bar and the rejected rows, the guidelines shown, the export file."""
    from types import SimpleNamespace

    import gradio as gr

    ctx = studio.ctx
    with gr.Blocks() as demo:
        tab = P.ProjectsTab(ctx, SimpleNamespace(demo=demo, db_queue={}))
    rev, ana = SimpleNamespace(username="rev"), SimpleNamespace(username="ana")
    msg, pick, rows, shown_md, _, remembered = tab.project_save("TabProject", "**Bold** rule", 1, "default", False, rev)
    assert "Saved project TabProject" in msg and pick["value"] == "TabProject"
    assert any(r[0] == "TabProject" for r in rows) and shown_md == "**Bold** rule" and remembered == "TabProject"
    assert "Error" in tab.project_save("X", "", 1, "default", False, ana)[0]
    path, z = _corpus(tmp_path)
    job_id, bar, _, _, note, timer, _ = tab.project_start_import("TabProject", str(path), str(z), "auto", rev)
    assert job_id and "annot-progress" in bar and "background" in note
    ctx.jobs.get(job_id).wait(60)
    bar, rejected, report, note, *_ = tab.project_poll(job_id)
    assert "Import done" in bar and "width:100%" in bar
    assert [r[0] for r in rejected] == ["line 7", "line 8"] and report["created"] == 6
    md, per_annotator, name, overlap, *_ = tab.project_show("TabProject", ana)
    assert md == "**Bold** rule" and (name, overlap) == ("TabProject", 1)
    refused = tab.project_start_pre("TabProject", ana)
    assert refused[0] is None and "needs the role" in refused[4]
    out, err = tab.project_export_zip("TabProject", "csv", ana)
    assert err == "" and zipfile.ZipFile(out).read("guidelines.md").decode() == "**Bold** rule"


def test_only_the_page_load_and_a_users_pick_fill_the_project_form(studio):
    """The race behind "give the project a name": a picker `.change` also fires when a handler sets
    the picker (the page load, Refresh, Save) and overwrote what the user had typed. The form's
    fields are written only by the page load and by the picker's `.input` (a user's pick)."""
    from types import SimpleNamespace

    import gradio as gr

    ctx = studio.ctx
    with gr.Blocks() as demo:
        tab = P.ProjectsTab(ctx, SimpleNamespace(demo=demo, db_queue={}))
    form = {tab.name._id, tab.guidelines._id, tab.overlap._id, tab.kb._id, tab.archived._id}
    writers = [(t, fn) for fn in demo.config["dependencies"] if form & set(fn["outputs"]) for t in fn["targets"]]
    assert writers and all(t == (tab.project._id, "input") or t[1] == "load" for t, _ in writers), writers
    # the picker has no .change at all, and Refresh leaves the form alone
    assert not [t for fn in demo.config["dependencies"] for t in fn["targets"] if t == (tab.project._id, "change")]
    P.save_project(ctx, "rev", "FormProject", "form guide", 2)
    rev = SimpleNamespace(username="rev")
    assert len(tab.project_refresh("FormProject", rev)) == 5  # picker, table, message, guidelines, per annotator
    loaded = tab.project_load("FormProject", rev)  # the project this browser remembered
    assert loaded[3] == "form guide" and loaded[5:] == ("FormProject", 2, "default", False, "form guide")
    # a remembered project that is gone: the first one is shown instead
    assert tab.project_load("GoneProject", rev)[0]["value"] == P.list_projects(ctx, "rev")[0]["name"]


def test_projects_tab_in_a_browser(studio, tmp_path):
    """A reviewer creates a project in the tab and sees its guidelines rendered (Chromium)."""
    import test_app_browser as B

    if not B.Path(B.CHROMIUM).exists():
        pytest.skip(f"{B.CHROMIUM} not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=B.CHROMIUM, args=B.ARGS)
        try:
            pg = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
            pg.set_default_timeout(30_000)
            B.login(pg, studio, "rev")
            B.open_tab(pg, "Projects")
            pg.get_by_text("Create or edit a project").click()
            # the page load fills the table and the form in one update (no picker .change after it);
            # the form's fields are on screen (the accordion's content is drawn when it opens)
            pg.wait_for_function("() => document.querySelector('#projects_table').innerText.includes('default')")
            pg.wait_for_selector("#projects_guidelines_edit textarea")
            pg.fill("#projects_name input, #projects_name textarea", "BrowserProject")
            pg.fill("#projects_guidelines_edit textarea", "# Browser rules\n\nLink the **club**, not the town.")
            pg.click("#projects_save")
            try:
                pg.wait_for_function(
                    "() => document.querySelector('#projects_msg').innerText.includes('Saved project BrowserProject')",
                    timeout=60_000,
                )
            except Exception:  # say what the page showed instead
                pg.screenshot(path=str(studio.shots / "projects_tab_failed.png"), full_page=True)
                name = pg.evaluate(
                    "() => document.querySelector('#projects_name input, #projects_name textarea')?.value"
                )
                raise AssertionError(
                    f"no save message; the page says {pg.inner_text('#projects_msg')!r}, the name field {name!r}"
                ) from None
            pg.wait_for_function("() => document.querySelector('#projects_table').innerText.includes('BrowserProject')")
            pg.wait_for_function("() => document.querySelector('#projects_guidelines strong')?.innerText === 'club'")
            pg.screenshot(path=str(studio.shots / "projects_tab.png"), full_page=True)
            # the pick is remembered per browser: after a reload both pickers show it again
            pg.reload()  # (Annotate's picker lists the projects that exist at the page load)
            B.open_tab(pg, "Annotate")
            pg.wait_for_selector("#annot_view .mention-item")  # the page load has landed
            pg.click("#annot_project input")
            pg.get_by_role("option", name="BrowserProject").click()
            pg.wait_for_selector("#annot_view .annot-empty")  # the project has no mentions yet
            pg.reload()
            B.open_tab(pg, "Annotate")
            try:
                pg.wait_for_function("() => document.querySelector('#annot_project input')?.value === 'BrowserProject'")
            except Exception:
                shown = pg.evaluate("() => document.querySelector('#annot_project input')?.value")
                keys = pg.evaluate("() => Object.keys(localStorage)")
                raise AssertionError(f"picker shows {shown!r}; localStorage keys {keys}") from None
            # the page load's item is of the restored project (its empty queue), not of "all"
            pg.wait_for_function(
                "() => document.querySelector('#annot_view .annot-empty')?.innerText.includes('BrowserProject')"
            )
            B.open_tab(pg, "Projects")
            pg.wait_for_function("() => document.querySelector('#projects_pick input')?.value === 'BrowserProject'")
            pg.get_by_text("Create or edit a project").click()
            pg.wait_for_function(
                "() => document.querySelector('#projects_name input, #projects_name textarea')?.value"
                " === 'BrowserProject'"
            )
        finally:
            browser.close()
    assert studio.ctx.store.get_project("BrowserProject").created_by == "rev"


def test_one_progress_bar_for_annotate_project_jobs_and_retraining():
    """Annotate's counts, a project job and a retraining run draw the same bar (app.common)."""
    from app.common import progress_bar_html
    from app.tabs.annotate import progress_html as annotate_bar
    from app.tabs.models import retrain_progress_html

    assert "width:50%" in progress_bar_html(0.5, "half") and "width:100%" in progress_bar_html(3, "x")
    assert "width:0%" in progress_bar_html(None, "x") and "width:0%" in progress_bar_html(float("nan"), "x")
    assert "&lt;b&gt;" in progress_bar_html(0.2, "<b>") and "<b>" not in progress_bar_html(0.2, "<b>")
    job = {"kind": "project_import", "state": "running", "seconds": 3.0, "message": "row <7>", "fraction": 0.25}
    assert P.progress_html(job) == progress_bar_html(0.25, "Import running · 3 s · row <7>")
    run = {"status": "running", "step": "train", "message": "epoch 1", "fraction": 0.4}
    assert retrain_progress_html(5, run) == progress_bar_html(0.4, "run 5 · running · train · epoch 1")
    counts = dict(mentions=4, complete=1, decided=2, entity=1, nil=1, ambiguous=0, skipped=0, pending_for_you=2)
    text = "1/4 mentions complete · you: 2 decided (1 entity, 1 NIL, 0 ambiguous), 0 skipped · 2 pending for you"
    assert annotate_bar(counts) == progress_bar_html(0.25, text)


def test_a_project_names_a_kb_the_store_serves(studio):
    """One store serves one KB ("default"): a project naming another is refused with a clear error,
    on create and on edit, through the handler and the store; the table shows each project's KB."""
    from types import SimpleNamespace

    import gradio as gr

    from db.errors import InvalidInput
    from db.projects import STORE_KBS

    ctx = studio.ctx
    assert STORE_KBS == ("default",)
    with pytest.raises(UserError, match="no knowledge base named 'wikidata': this store serves one KB, 'default'"):
        P.save_project(ctx, "rev", "KbProject", kb="wikidata")
    assert "KbProject" not in {p.name for p in ctx.store.list_projects()}
    assert P.save_project(ctx, "rev", "KbProject", kb=" default ").kb == "default"
    with pytest.raises(UserError, match="no knowledge base named"):
        P.save_project(ctx, "rev", "KbProject", kb="other")  # an edit
    assert ctx.store.get_project("KbProject").kb == "default"
    with pytest.raises(InvalidInput, match="serves one KB"):
        ctx.store.update_project("KbProject", kb="other")
    with gr.Blocks() as demo:
        tab = P.ProjectsTab(ctx, SimpleNamespace(demo=demo, db_queue={}))
    msg = tab.project_save("KbProject2", "", 1, "elsewhere", False, SimpleNamespace(username="rev"))[0]
    assert msg.startswith("**Error:**") and "this store serves one KB" in msg
    _, rows, _, _, _ = tab.project_refresh("KbProject", SimpleNamespace(username="rev"))
    kb_col = P.PROJECT_COLUMNS.index("kb")
    assert next(r for r in rows if r[0] == "KbProject")[kb_col] == "default"
    assert tab.kb.choices == [("default", "default")]
