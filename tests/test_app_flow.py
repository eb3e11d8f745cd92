"""The whole annotation flow, end to end, on the launched app (issue 14 point 7): a reviewer creates
a project in the Projects tab (Chromium), a small corpus with an images zip is imported into it and
pre-annotated by the served model (background jobs), two annotators in two browser contexts pick the
project in Annotate and decide every item with keys (one disagreement, one comment), the reviewer
resolves the disagreement, the project is exported as a zip (images and guidelines inside), and the
store's training export, the one the retraining pipeline reads, holds the resolved gold and loads
with the library's loader.

Driven in Chromium, waiting on what the page shows (never a fixed sleep): the project's creation,
the upload of the corpus and its images zip in the Projects tab, whose progress bar reports the
import and pre-annotation jobs, both annotators' keys, the Review tab's list of the disputed
mention, the click on its row, the resolution (the choice, a comment, Resolve) and the export zip
downloaded from the Projects tab. The last step reads the store's training export in Python, as the
retraining pipeline does.
Skips when /usr/bin/chromium or playwright is missing."""

from __future__ import annotations

import io
import json
import zipfile

import test_app_browser as B
from PIL import Image
from test_app_browser import browser  # noqa: F401  (the module's Chromium fixture)

from mimic.data.formats import load_dataset

pytestmark = B.pytestmark

PROJECT = "FlowProject"
GUIDE = "# Flow rules\n\nLink the **place** the sentence means."
SENTENCES = [
    "We flew to Paris for the spring meeting of the flow test.",
    "The flow test team crossed London by bus at night.",
    "A flow test postcard from Rome arrived on Monday.",
]


def _corpus(tmp_path):
    places = ["Paris", "London", "Rome"]
    rows = [
        {"id": f"f{i}", "sentence": s, "mention": places[i], "image": f"pics/f{i}.png"} for i, s in enumerate(SENTENCES)
    ]
    path = tmp_path / "flow.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    z = tmp_path / "flow_images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(len(rows)):
            buf = io.BytesIO()
            Image.new("RGB", (24, 24), (40 * i, 100, 200)).save(buf, "PNG")
            zf.writestr(f"pics/f{i}.png", buf.getvalue())
    return path, z


def _wait_job(pg, done: str):
    """Wait for the Projects tab's job bar to say `done` (a failure says so at once)."""
    pg.wait_for_function(
        "d => { const t = document.querySelector('#projects_job')?.innerText || '';"
        " return t.includes(d) || t.includes('failed'); }",
        arg=done,
        timeout=120_000,
    )
    text = pg.inner_text("#projects_job")
    assert done in text, text


def _pick_project(pg, name, mids):
    """Choose `name` in the Annotate tab's project picker, then wait for one of its items."""
    pg.click("#annot_project input")
    pg.get_by_role("option", name=name).click()
    pg.wait_for_function(
        "ids => ids.includes(Number(document.querySelector('#annot_view .mention-item')?.dataset.mentionId))",
        arg=mids,
    )


def _decide_all(pg, ctx, user, choose):
    """Decide the picked project's queue with keys: `choose(mention)` gives the key (and a comment)."""
    done = []
    for _ in range(len(SENTENCES)):
        mid = B.current_item_id(pg)
        m = ctx.store.get_mention(mid)
        assert m.uid.startswith(f"{PROJECT}/"), f"{user} was served {m.uid} outside the project"
        key, comment = choose(m)
        pg.locator("#annot_view .annot-meta").click()  # focus off the picker: keys go to the card list
        if comment:
            pg.keyboard.press("c")
            pg.keyboard.type(comment)
            pg.keyboard.press("Escape")
        pg.keyboard.press(key)
        B.wait_saved(pg, mid)
        done.append(mid)
    pg.wait_for_selector("#annot_view .annot-empty")
    return done


def test_project_import_annotate_review_export_retrain_flow(browser, studio, tmp_path):  # noqa: F811
    ctx = studio.ctx
    rev_pg = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True).new_page()
    rev_pg.set_default_timeout(30_000)
    # 1. the reviewer creates the project (two annotators per mention) in the Projects tab
    B.login(rev_pg, studio, "rev")
    B.open_tab(rev_pg, "Projects")
    rev_pg.get_by_text("Create or edit a project").click()
    # the page load fills the table and the form in one update (no picker .change after it);
    # the form's fields are on screen (the accordion's content is drawn when it opens)
    rev_pg.wait_for_function("() => document.querySelector('#projects_table').innerText.includes('default')")
    rev_pg.wait_for_selector("#projects_guidelines_edit textarea")
    rev_pg.fill("#projects_name input, #projects_name textarea", PROJECT)
    rev_pg.fill("#projects_overlap input", "2")
    rev_pg.fill("#projects_guidelines_edit textarea", GUIDE)
    rev_pg.click("#projects_save")
    rev_pg.wait_for_function(
        f"() => document.querySelector('#projects_msg').innerText.includes('Saved project {PROJECT}')"
    )
    proj = ctx.store.get_project(PROJECT)
    assert (proj.annotators_per_mention, proj.guidelines, proj.created_by) == (2, GUIDE, "rev")

    # 2. import the corpus with its images zip, then pre-annotate (background jobs with a progress bar)
    path, z = _corpus(tmp_path)
    rev_pg.get_by_text("Import a corpus, pre-annotate").click()
    rev_pg.wait_for_function(f"() => document.querySelector('#projects_pick input')?.value === '{PROJECT}'")
    rev_pg.set_input_files("#projects_corpus input[type=file]", str(path))
    rev_pg.set_input_files("#projects_zip input[type=file]", str(z))
    for box, stem in (("#projects_corpus", path.stem), ("#projects_zip", z.stem)):  # both uploads landed
        rev_pg.wait_for_function(
            f"() => document.querySelector('{box} .file-preview')?.innerText.includes('{stem}')", timeout=60_000
        )
    rev_pg.click("#projects_import")
    _wait_job(rev_pg, "Import done")
    assert ctx.store.project_progress(PROJECT)["mentions"] == 3  # every row imported, none rejected
    rev_pg.click("#projects_pre")
    _wait_job(rev_pg, "Pre-annotation done")
    rev_pg.screenshot(path=str(studio.shots / "flow_projects_jobs.png"), full_page=True)
    assert ctx.store.project_progress(PROJECT)["mentions"] == 3
    mids = [ctx.store.get_mention(f"{PROJECT}/f{i}").id for i in range(3)]
    preds = {mid: ctx.store.predictions(mid)[0] for mid in mids}
    assert all(len(p.candidates) >= 2 for p in preds.values())
    assert all(ctx.store.get_mention(mid).image_path for mid in mids)

    # 3. two annotators, two browser contexts, pick the project and decide with keys
    target = mids[1]  # ana takes candidate 1 everywhere, bob candidate 2 on this one (+ a comment)
    pages = {}
    for user in ("ana", "bob"):
        pg = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
        pg.set_default_timeout(30_000)
        B.login(pg, studio, user)
        B.open_tab(pg, "Annotate")
        _pick_project(pg, PROJECT, mids)
        pages[user] = pg
    # the imported mention image loads by its content-addressed URL (no server path in the page)
    pages["ana"].wait_for_function(
        "() => { const i = document.querySelector('#annot_view img.annot-mention-image');"
        " return !!i && i.complete && i.naturalWidth > 0 && i.getAttribute('src').startsWith('mimic-media/images/'); }"
    )
    assert str(ctx.config.data_dir) not in pages["ana"].content()
    pages["ana"].get_by_text("Guidelines of this project").click()
    pages["ana"].wait_for_function("() => document.querySelector('#annot_guidelines strong')?.innerText === 'place'")
    got_ana = _decide_all(pages["ana"], ctx, "ana", lambda m: ("1", None))
    got_bob = _decide_all(
        pages["bob"], ctx, "bob", lambda m: ("2", "the second reading fits") if m.id == target else ("1", None)
    )
    assert sorted(got_ana) == sorted(got_bob) == sorted(mids)
    pages["bob"].screenshot(path=str(studio.shots / "flow_annotate_done.png"), full_page=True)
    cur = {(a.annotator, a.mention_id): a for a in ctx.store.current_annotations() if a.mention_id in mids}
    first = {mid: preds[mid].candidates[0].entity_id for mid in mids}
    assert all(cur[("ana", mid)].entity_id == first[mid] for mid in mids)
    assert cur[("bob", target)].entity_id == preds[target].candidates[1].entity_id
    assert cur[("bob", target)].comment == "the second reading fits"

    # 4. the reviewer resolves the disagreement (bob was right) in the Review tab: the list holds only
    # the disputed mention; a click opens it, the reviewer picks bob's reading and resolves
    gold = preds[target].candidates[1].entity_id
    B.open_tab(rev_pg, "Review")
    rev_pg.fill("#review_project input, #review_project textarea", str(ctx.store.get_project(PROJECT).id))
    rev_pg.press("#review_project input, #review_project textarea", "Enter")
    rev_pg.wait_for_function(
        "s => document.querySelector('#review_list')?.innerText.includes(s)", arg=SENTENCES[1], timeout=60_000
    )
    listed = rev_pg.inner_text("#review_list")
    assert "disagreement" in listed and SENTENCES[0] not in listed  # only the mention in dispute
    # the grid draws its visible rows as div cells (a virtual table): click the row's sentence cell
    rev_pg.locator("#review_list span.text", has_text=SENTENCES[1]).first.click()
    rev_pg.wait_for_function(
        "g => document.querySelector('#review_choice')?.innerText.includes(g)", arg=gold, timeout=60_000
    )
    rev_pg.locator("#review_choice label", has_text=f"({gold})").first.click()
    rev_pg.fill("#review_comment textarea, #review_comment input", "bob's reading")
    rev_pg.click("#review_resolve")
    rev_pg.wait_for_function(
        "() => document.querySelector('#review_msg')?.innerText.includes('Resolved mention')", timeout=60_000
    )
    resolution = [a for a in ctx.store.current_annotations() if a.mention_id == target and a.annotator == "rev"]
    assert [(a.entity_id, a.comment) for a in resolution] == [(gold, "bob's reading")]

    # 5. the project's export, downloaded from the Projects tab, holds the guidelines, the decisions
    # and the images
    B.open_tab(rev_pg, "Projects")
    rev_pg.click("#projects_export")
    link = rev_pg.locator("#projects_export_file a").first
    link.wait_for()
    with rev_pg.expect_download() as dl:
        link.click()
    out = tmp_path / "export.zip"
    dl.value.save_as(out)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.read("guidelines.md").decode() == GUIDE
        images = [n for n in names if n.startswith("mention_image/")]
        assert len(images) == 3
        rows = [json.loads(x) for x in zf.read("links.jsonl").decode().splitlines() if x.strip()]
    assert {r["annotator"] for r in rows} >= {"ana", "bob", "rev"}

    # 6. what retraining reads: the store's training dataset (retraining/pipeline.py load_corrections)
    # and its export on disk, loaded with the library's loader, hold the resolved gold
    dataset, used, _, _ = ctx.store.build_training_dataset(name="flow")
    by_sentence = {m.sentence: m for s in ("train", "dev", "test") for m in dataset.split(s)}
    assert by_sentence[SENTENCES[1]].answer == gold
    assert by_sentence[SENTENCES[0]].answer == first[mids[0]]
    ctx.store.export_training_set(tmp_path / "train", layout="official")
    loaded = load_dataset(tmp_path / "train")
    got = {m.sentence: m.answer for ms in loaded.splits.values() for m in ms}
    assert got[SENTENCES[1]] == gold and got[SENTENCES[2]] == first[mids[2]]
    for pg in (*pages.values(), rev_pg):
        pg.context.close()
