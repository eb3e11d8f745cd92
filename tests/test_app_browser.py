"""A real browser (Debian's Chromium driven by Playwright) through the app, checking the database
after each step and saving screenshots. Skips when /usr/bin/chromium or playwright is missing
(`.ci/run` installs both; never `playwright install`)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo_kb"
CHROMIUM = os.environ.get("MIMIC_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and shutil.which(CHROMIUM)), reason=f"{CHROMIUM} not installed"),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, studio):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    external = []
    pg.on(
        "request",
        lambda r: (
            external.append(r.url)
            if not re.match(r"^(https?://(127\.0\.0\.1|localhost)[:/]|data:|blob:)", r.url)
            else None
        ),
    )
    pg.external_requests = external
    yield pg
    ctx.close()


def login(pg, studio, user="ana"):
    pg.goto(studio.url)
    pg.locator("input[type=text], input:not([type])").first.fill(user)
    pg.locator("input[type=password]").fill(studio.users[user])
    pg.locator("button", has_text=re.compile("login", re.I)).click()
    pg.wait_for_selector("#link_sentence textarea")


def link(pg, sentence, mention, image=None):
    if image is not None:
        pg.set_input_files("#link_image input[type=file]", str(image))
        pg.wait_for_timeout(300)
    pg.fill("#link_sentence textarea", sentence)
    pg.fill("#link_mention textarea, #link_mention input", mention)
    # each call in these tests expects a message different from the previous one; the comparison is
    # on trimmed text because the status tracker briefly adds whitespace and a timer around the old one
    before = pg.inner_text("#link_status").strip()
    pg.click("#link_btn")
    pg.wait_for_function(
        "b => { const e = document.querySelector('#link_status'); if (!e) return false; "
        "const t = e.innerText.trim(); return t !== b && /^(OK ·|Error:)/.test(t) "
        "&& !/processing|[\\d.]+s\\b/.test(t.slice(0, 30)); }",
        arg=before,
    )
    return pg.inner_text("#link_status")


def clear_image(pg):
    pg.locator("#link_image button[aria-label='Remove Image']").click()
    pg.wait_for_function("() => !document.querySelector('#link_image img')")


def open_tab(pg, name):
    pg.get_by_role("tab", name=name).click()
    pg.wait_for_timeout(400)


def current_item_id(pg) -> int:
    pg.wait_for_selector("#annot_view .mention-item")
    return int(pg.get_attribute("#annot_view .mention-item", "data-mention-id"))


def wait_saved(pg, mid):
    pg.wait_for_function(
        "m => { const e = document.querySelector('#annot_msg'); return e && "
        "e.innerText.includes('Saved') && e.innerText.includes('mention ' + m + ' '); }",
        arg=mid,
    )


def test_link_inspect_annotate_undo_in_a_browser(page, studio):
    pg, ctx, shots = page, studio.ctx, studio.shots
    login(pg, studio, "ana")
    n0 = len(ctx.store.current_annotations())

    # 1. upload an image, type a sentence and the mention, see candidates
    status = link(pg, "Chelsea fell asleep on the windowsill again.", "Chelsea", DEMO / "query_images" / "X01.jpg")
    assert "candidates for Chelsea" in status
    table = pg.inner_text("#link_candidates")
    assert len(re.findall(r"\bD0\d\d\b", table)) == 10
    assert table.index("D001") < min(table.index(f"D00{i}") for i in (2, 3, 4))  # the cat, decided by the image
    pg.screenshot(path=str(shots / "01_link.png"), full_page=True)
    assert len(ctx.store.current_annotations()) == n0  # linking writes nothing

    # 2. open Inspect for the top candidate
    pg.click("#link_inspect")
    pg.wait_for_selector("#inspect_heatmap .js-plotly-plot")
    pg.wait_for_selector("#inspect_bars .js-plotly-plot")
    assert "D001" in pg.inner_text("#inspect_note")
    assert pg.locator("#inspect_tokens").inner_text().lower().count("chelsea") >= 2
    pg.wait_for_selector("#inspect_mention_overlay img")
    pg.screenshot(path=str(shots / "02_inspect.png"), full_page=True)
    assert len(ctx.store.current_annotations()) == n0

    # 3. annotate with the keyboard: 1 decides the first card at once
    open_tab(pg, "Annotate")
    mid = current_item_id(pg)
    pred = ctx.store.predictions(mid)[0]
    pg.locator("#annot_view .annot-meta").click()  # focus outside any text field
    pg.keyboard.press("1")
    wait_saved(pg, mid)
    cur = [a for a in ctx.store.current_annotations() if a.mention_id == mid and a.annotator == "ana"]
    assert len(cur) == 1 and cur[0].decision == "entity" and cur[0].entity_id == pred.candidates[0].entity_id
    ann_id = cur[0].id
    assert cur[0].seconds_spent is not None and cur[0].seconds_spent >= 0
    assert current_item_id(pg) != mid  # moved on to the next item
    pg.screenshot(path=str(shots / "03_annotated.png"), full_page=True)

    # 4. undo with Z: the decision is marked undone and the mention is back on screen
    pg.keyboard.press("z")
    pg.wait_for_function(
        "() => { const e = document.querySelector('#annot_msg'); return e && e.innerText.includes('Undid'); }"
    )
    assert ctx.store.get_annotation(ann_id).status == "undone"
    assert current_item_id(pg) == mid
    pg.screenshot(path=str(shots / "04_undone.png"), full_page=True)

    # 5. NIL with N, then the position survives a reload
    pg.locator("#annot_view .annot-meta").click()
    pg.keyboard.press("n")
    pg.wait_for_function("() => document.querySelector('#annot_msg').innerText.includes('nil')")
    now = [a for a in ctx.store.current_annotations() if a.mention_id == mid and a.annotator == "ana"]
    assert len(now) == 1 and now[0].decision == "nil"
    shown = current_item_id(pg)
    pg.reload()
    pg.wait_for_selector("#link_sentence textarea")
    open_tab(pg, "Annotate")
    assert current_item_id(pg) == shown
    assert pg.external_requests == [], pg.external_requests


def test_bad_input_shows_a_clear_message_and_the_app_stays_usable(page, studio, tmp_path):
    pg, ctx = page, studio.ctx
    login(pg, studio, "bob")
    n0 = ctx.store.count_mentions()
    assert "sentence is empty" in link(pg, "", "Chelsea")
    assert "does not occur in the sentence" in link(pg, "Chelsea won again.", "Arsenal")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 200)
    assert "image rejected" in link(pg, "Chelsea won again.", "Chelsea", corrupt)
    huge = tmp_path / "huge.png"
    Image.new("L", (8200, 6200)).save(huge)  # 50.8 megapixels
    t = time.perf_counter()
    msg = link(pg, "Chelsea won again.", "Chelsea", huge)
    assert "image rejected" in msg and "pixels" in msg and time.perf_counter() - t < 20
    assert "/tmp" not in msg and "huge.png" in msg  # no server paths in messages
    pg.screenshot(path=str(shots_path(studio) / "05_bad_image.png"), full_page=True)
    clear_image(pg)
    ok = link(pg, "Chelsea won 2-1 after a late goal in the second half.", "Chelsea")
    assert "candidates for Chelsea" in ok
    assert ctx.store.count_mentions() == n0  # nothing half-written
    assert pg.external_requests == [], pg.external_requests


def shots_path(studio):
    return studio.shots


def test_no_external_requests_from_the_server(studio):
    assert studio.network.calls == [], studio.network.calls


def test_analysis_tab_opens_a_mention_in_inspect(page, studio):
    pg, ctx = page, studio.ctx
    H_ = __import__("app.tabs.annotate", fromlist=["annotate_api"])
    H_.annotate_api(ctx, "rev", ctx.store.get_mention("example:X04").id, "entity", "D004")
    login(pg, studio, "rev")
    open_tab(pg, "Analysis")
    pg.click("#analysis_run")
    pg.wait_for_function(
        "() => /Analysed \\d+ corrected mentions/.test(document.querySelector('#analysis_msg').innerText)"
    )
    pg.wait_for_function(
        "() => document.querySelector('#analysis_table') && "
        "document.querySelector('#analysis_table').innerText.includes('example:X04')"
    )
    pg.wait_for_selector("#analysis_fig_labels .js-plotly-plot")
    pg.screenshot(path=str(studio.shots / "06_analysis.png"), full_page=True)
    # the grid draws its visible rows as div cells (a virtual table); the <table> is for sizing
    pg.locator("#analysis_table span.text", has_text="example:X04").first.click()
    pg.wait_for_selector("#inspect_heatmap .js-plotly-plot")
    pg.wait_for_function("() => document.querySelector('#inspect_note').innerText.includes('D004')")
    assert pg.input_value("#link_sentence textarea") == ctx.store.get_mention("example:X04").sentence
    pg.screenshot(path=str(studio.shots / "07_analysis_to_inspect.png"), full_page=True)
    # a new link, then the Inspect tab: the figures follow the new link's top candidate (issue 14)
    open_tab(pg, "Link")
    coffee = next(m for m in ctx.examples if m.answer == "D005")
    link(pg, coffee.sentence, coffee.mention)
    top = pg.input_value("#inspect_candidate input")
    assert "D004" not in top
    open_tab(pg, "Inspect")
    pg.wait_for_function(
        "t => document.querySelector('#inspect_note').innerText.includes(t) && "
        "document.querySelector('#inspect_bars .js-plotly-plot') && "
        "(document.querySelector('#inspect_bars .gtitle') || {}).textContent?.includes(t)",
        arg=top.split("(")[-1].rstrip(")"),
    )
    assert "D004" not in pg.inner_text("#inspect_note")
    # drawn while the tab was hidden (after the link), at the width it is shown at
    widths = pg.evaluate(
        "() => ['#inspect_bars', '#inspect_heatmap'].map(s => [Number(document.querySelector(s + ' .main-svg')"
        ".getAttribute('width')), document.querySelector(s + ' .js-plotly-plot').clientWidth])"
    )
    assert all(w > 300 and abs(w - c) <= 2 for w, c in widths), widths
    assert pg.external_requests == [], pg.external_requests


def test_knowledge_base_tab_edit_and_import(page, studio, tmp_path):
    pg, ctx = page, studio.ctx
    login(pg, studio, "rev")
    open_tab(pg, "Knowledge base")
    pg.fill("#kb_query input, #kb_query textarea", "mercury")
    pg.click("#kb_search")
    pg.wait_for_function(
        "() => /\\d+ entities/.test(document.querySelector('#kb_msg').innerText) && "
        "document.querySelector('#kb_table').innerText.includes('D014')"
    )
    before = ctx.store.get_entity("D014")
    pg.locator("#kb_table span.text", has_text="D014").first.click()  # a row loads into the form
    pg.wait_for_function(
        "t => document.querySelector('#kb_id input, #kb_id textarea')?.value === 'D014' && "
        "document.querySelector('#kb_text textarea')?.value === t",
        arg=before.text,
    )
    pg.fill("#kb_text textarea", before.text + " Edited in the browser test.")
    pg.wait_for_timeout(300)  # let the textbox hand its new value to the app (a typist is slower)
    pg.click("#kb_save")
    pg.wait_for_function("() => document.querySelector('#kb_msg').innerText.includes('Saved D014')")
    after = ctx.store.get_entity("D014")
    assert after.version == before.version + 1 and after.text.endswith("Edited in the browser test.")
    assert ctx.service.entity("D014")["text"] == after.text  # the index serves the edit
    csv = tmp_path / "more.csv"
    csv.write_text("id,name,text\nB1,Borealis,A fictional ferry\nB2,,no name\n", encoding="utf-8")
    pg.get_by_text("Import a KB file").click()
    pg.set_input_files("#kb_file input[type=file]", str(csv))
    pg.wait_for_timeout(500)
    pg.click("#kb_import")
    pg.wait_for_function("() => document.querySelector('#kb_msg').innerText.includes('Imported 1 entities')")
    assert "no name" in pg.inner_text("#kb_report") or "empty" in pg.inner_text("#kb_report").lower()
    assert ctx.store.get_entity("B1").name == "Borealis" and ctx.service.entity("B1") is not None
    pg.screenshot(path=str(studio.shots / "08_kb.png"), full_page=True)


def _mine(ctx, user, mid):
    return [a for a in ctx.store.current_annotations() if a.mention_id == mid and a.annotator == user]


def test_annotate_cards_and_keys_act_in_the_browser(page, studio, monkeypatch):
    """Issue 14 point 2: cards with descriptions and keys, `?` help, 0 for the 10th candidate, a
    comment and a flag with the decision, the next item on screen before the write returns, and a
    missed span added as a mention shown in the sentence."""
    pg, ctx = page, studio.ctx
    login(pg, studio, "bob")
    open_tab(pg, "Annotate")
    mid = current_item_id(pg)
    pred = ctx.store.predictions(mid)[0]
    assert len(pred.candidates) == 10
    keys = pg.eval_on_selector_all("#annot_view .annot-card", "cs => cs.map(c => c.dataset.key)")
    assert keys == [str(i) for i in range(1, 10)] + ["0", "n", "a"]
    top = ctx.service.entity(pred.candidates[0].entity_id)
    assert top["text"][:40] in pg.inner_text("#annot_view .annot-card >> nth=0")
    pg.screenshot(path=str(studio.shots / "09_annotate_cards.png"), full_page=True)

    # ? shows the key help, Esc closes it
    pg.locator("#annot_view .annot-meta").click()
    pg.keyboard.press("?")
    pg.wait_for_selector("#annot_help", state="visible")
    assert "0 the 10th" in pg.inner_text("#annot_help")
    pg.screenshot(path=str(studio.shots / "10_annotate_help.png"))
    pg.keyboard.press("Escape")
    pg.wait_for_selector("#annot_help", state="hidden")
    pg.click("#annot_help_btn")  # the button does the same
    pg.wait_for_selector("#annot_help", state="visible")
    pg.keyboard.press("Escape")
    pg.wait_for_selector("#annot_help", state="hidden")

    # 0 decides the 10th candidate
    pg.keyboard.press("0")
    wait_saved(pg, mid)
    (a,) = _mine(ctx, "bob", mid)
    assert (a.decision, a.entity_id) == ("entity", pred.candidates[9].entity_id)

    # a comment (C, type, Esc) and a flag (F) go with the decision (2: the second card)
    mid2 = current_item_id(pg)
    assert mid2 != mid
    pred2 = ctx.store.predictions(mid2)[0]
    pg.keyboard.press("c")
    pg.keyboard.type("two clubs share the name")
    pg.keyboard.press("Escape")
    pg.keyboard.press("f")
    pg.keyboard.press("2")
    wait_saved(pg, mid2)
    (b,) = _mine(ctx, "bob", mid2)
    assert (b.entity_id, b.comment, b.flag) == (pred2.candidates[1].entity_id, "two clubs share the name", "unsure")

    # the next item is on screen before the server's write returns (the write is held back here)
    mid3 = current_item_id(pg)
    real_submit, entered = ctx.store.submit, []

    def slow_submit(*a, **kw):
        entered.append(time.perf_counter())
        time.sleep(2.0)
        return real_submit(*a, **kw)

    monkeypatch.setattr(ctx.store, "submit", slow_submit)
    t0 = time.perf_counter()
    pg.keyboard.press("n")
    pg.wait_for_function("m => document.querySelector('#annot_view').dataset.shown !== 'm' + m + ':-1'", arg=mid3)
    swapped = time.perf_counter() - t0
    mid4 = current_item_id(pg)
    assert mid4 != mid3 and _mine(ctx, "bob", mid3) == []  # on screen, not yet written
    assert swapped < 1.0, swapped
    wait_saved(pg, mid3)
    assert time.perf_counter() - t0 >= 2.0 and _mine(ctx, "bob", mid3)[0].decision == "nil"
    assert current_item_id(pg) == mid4  # the answer confirmed the item the browser had swapped in
    monkeypatch.setattr(ctx.store, "submit", real_submit)

    # a span the corpus missed: select it in the sentence, M; it becomes a mention shown as context
    m4 = ctx.store.get_mention(mid4)
    taken = [(m4.start, m4.end)] + [(o.start, o.end) for o in ctx.store.peek_sentence_mentions(mid4)]
    hit = next(
        w for w in re.finditer(r"[A-Za-z]{4,}", m4.sentence) if all(w.end() <= a or w.start() >= b for a, b in taken)
    )
    word, start = hit.group(0), hit.start()
    pg.evaluate(
        """([a, b]) => {
            const spans = [...document.querySelectorAll('#annot_view .annot-sentence [data-o]')];
            const at = o => { const e = spans.filter(s => +s.dataset.o <= o).pop();
                              return [e.firstChild, o - +e.dataset.o]; };
            const r = document.createRange(); r.setStart(...at(a)); r.setEnd(...at(b));
            const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(r);
        }""",
        [start, start + len(word)],
    )
    pg.keyboard.press("m")
    pg.wait_for_function("() => document.querySelector('#annot_msg').innerText.includes('Added mention')")
    new = [o for o in ctx.store.peek_sentence_mentions(mid4) if (o.start, o.end) == (start, start + len(word))]
    assert len(new) == 1 and ctx.store.predictions(new[0].id)
    pg.wait_for_function(
        "w => [...document.querySelectorAll('#annot_view mark.annot-co')].some(m => m.innerText === w)", arg=word
    )
    assert current_item_id(pg) == mid4
    pg.screenshot(path=str(studio.shots / "11_annotate_missed_span.png"), full_page=True)

    # an entity outside the shortlist: search the KB, pick a result, Enter decides it
    outside = next(
        e for e in ("D014", "D020", "D030") if e not in {c.entity_id for c in ctx.store.predictions(mid4)[0].candidates}
    )
    pg.fill("#annot_search textarea, #annot_search input", outside)
    pg.click("#annot_search_btn")
    pg.locator("#annot_found label", has_text=outside).first.click()
    pg.wait_for_function("() => !document.querySelector('#annot_view .annot-found').hidden")
    pg.locator("#annot_view .annot-meta").click()
    pg.keyboard.press("Enter")
    wait_saved(pg, mid4)
    assert _mine(ctx, "bob", mid4)[0].entity_id == outside

    # the Skip and Accept buttons act like S and Enter
    mid5 = current_item_id(pg)
    pg.click("#annot_skip")
    pg.wait_for_function(
        "m => document.querySelector('#annot_msg').innerText.includes('Skipped mention ' + m)", arg=mid5
    )
    assert [a.decision for a in ctx.store.current_annotations() if a.mention_id == mid5 and a.annotator == "bob"] == [
        "skip"
    ]
    mid6 = current_item_id(pg)
    assert mid6 != mid5
    pg.click("#annot_submit")
    wait_saved(pg, mid6)
    assert _mine(ctx, "bob", mid6)[0].entity_id == ctx.store.predictions(mid6)[0].candidates[0].entity_id
    assert pg.external_requests == [], pg.external_requests
