"""The whole annotation flow, end to end, on the launched app (issue 14 point 7): a reviewer creates
a project in the Projects tab (Chromium), a small corpus with an images zip is imported into it and
pre-annotated by the served model (background jobs), two annotators in two browser contexts pick the
project in Annotate and decide every item with keys (one disagreement, one comment), the reviewer
resolves the disagreement, the project is exported as a zip (images and guidelines inside), and the
store's training export, the one the retraining pipeline reads, holds the resolved gold and loads
with the library's loader.

Steps driven through the tab's handlers instead of the browser (they are what the tab's events call,
with the same role checks): the corpus import and the pre-annotation (`app.tabs.projects.start_import`
and `start_preannotate`: a file upload in Chromium adds time, not coverage, that
tests/test_app_projects.py covers already), the resolution (`app.tabs.review.resolve`, what the Review
tab's Resolve button calls) and the export (`export_project`, the Projects tab's export button).
Skips when /usr/bin/chromium or playwright is missing."""

from __future__ import annotations

import io
import json
import zipfile

import test_app_browser as B
from PIL import Image
from test_app_browser import browser  # noqa: F401  (the module's Chromium fixture)

from app.tabs import projects as P
from app.tabs import review as R
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
    rev_pg = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
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

    # 2. import the corpus with its images zip, then pre-annotate (background jobs, handlers)
    path, z = _corpus(tmp_path)
    job = P.start_import(ctx, "rev", PROJECT, str(path), str(z))
    job.wait(60)
    assert job.snapshot()["state"] == "done", job.snapshot()
    assert job.snapshot()["result"]["created"] == 3
    job = P.start_preannotate(ctx, "rev", PROJECT)
    job.wait(90)
    assert job.snapshot()["state"] == "done", job.snapshot()
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

    # 4. the reviewer resolves the disagreement (bob was right)
    gold = preds[target].candidates[1].entity_id
    R.resolve(ctx, "rev", target, gold, "bob's reading")

    # 5. the project's export holds the guidelines, the decisions and the images
    out = P.export_project(ctx, "rev", PROJECT)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.read("guidelines.md").decode() == GUIDE
        images = [n for n in names if n.startswith("mention_image/")]
        assert len(images) == 3
        rows = [json.loads(x) for x in zf.read("links.jsonl").decode().splitlines() if x.strip()]
    assert {r["annotator"] for r in rows} >= {"ana", "bob"}

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
