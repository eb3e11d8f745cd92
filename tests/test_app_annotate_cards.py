"""The Annotate tab's card list (issue 14 point 2), on the session's app context: what each item's
payload holds (descriptions, aliases, unit scores, keys 1-9 and 0), the decision's comment and flag,
a missed span stored as a new mention, the other mentions of a sentence shown as context, escaping,
and the browser's action checked before anything is written. The browser side is in
tests/test_app_browser.py."""

from __future__ import annotations

import html
import json
import re
from types import SimpleNamespace

import gradio as gr
import pytest

from app.common import AMBIGUOUS, NIL, UserError
from app.tabs import annotate as annotate_tab
from app.tabs.annotate_cards import CARD_KEYS, item_view, parse_action, payload_html
from mimic.data.schema import Entity


@pytest.fixture(scope="module")
def tab(studio):
    """An Annotate tab built on the session's context (its handlers, outside the served page)."""
    with gr.Blocks():
        with gr.Tabs():
            t = annotate_tab.AnnotateTab(studio.ctx, SimpleNamespace(db_queue={}))
    return t


def _payload(outputs) -> dict:
    """The JSON the browser reads from the hidden `data` output."""
    m = re.search(r"data-payload='([^']*)'", outputs[2])
    assert m, outputs[2][:200]
    return json.loads(html.unescape(m.group(1)))


def _with_ten_candidates(ctx):
    for m in ctx.examples:
        mm = ctx.store.get_mention(f"example:{m.id}")
        preds = ctx.store.predictions(mm.id)
        if preds and len(preds[0].candidates) >= 10:
            return mm, preds[0]
    pytest.fail("no example mention with 10 candidates")


def test_a_card_shows_name_description_aliases_image_scores_and_key(studio):
    ctx = studio.ctx
    m, pred = _with_ten_candidates(ctx)
    view = item_view(ctx, m, pred)
    page = view["html"]
    assert [c["key"] for c in view["choices"]] == CARD_KEYS + ["n", "a"]  # 1-9, then 0 for the 10th
    assert [c["value"] for c in view["choices"]][:10] == [c.entity_id for c in pred.candidates[:10]]
    assert [c["value"] for c in view["choices"]][10:] == [NIL, AMBIGUOUS]
    assert view["selected"] == pred.candidates[0].entity_id  # the model's top is highlighted
    cards = re.findall(r"<div class='annot-card[^>]*data-choice='([^']*)' data-key='([^']*)'", page)
    assert cards[:10] == [(c.entity_id, k) for c, k in zip(pred.candidates, CARD_KEYS)]  # ranking order
    for c in pred.candidates[:10]:
        e = ctx.service.entity(c.entity_id)
        body = page.split(f"data-choice='{c.entity_id}'")[1].split("<div class='annot-card")[0]
        assert html.escape(e["text"][:60]) in body  # the description
        for alias in e["aliases"]:
            if alias != e["name"]:
                assert html.escape(alias) in body
        assert f"S {c.s:.3f}" in body and "S_T" in body and "S_V" in body and "S_C" in body
        if e["images"]:  # served through the file route, only from DATA_DIR/images or assets/
            src = re.search(r"<img class='annot-thumb' src='([^']*)'", body).group(1)
            assert src.startswith("mimic-media/") and str(studio.ctx.config.data_dir) not in src
    assert f"data-mention-id='{m.id}'" in page and "<mark class='annot-mention'" in page


def test_comment_and_flag_go_with_the_decision_and_the_next_item_is_prefetched(studio, tab):
    ctx, req = studio.ctx, SimpleNamespace(username="cara")
    first = _payload(tab.show_item(None, req))
    cur = first["current"]
    assert cur is not None and first["seq"] is None
    ahead = [u["mention_id"] for u in first["upcoming"]]
    assert len(ahead) == annotate_tab.PREFETCH and cur["mention_id"] not in ahead
    assert [m.id for m in ctx.store.peek_queue("cara", 4) if m.id != cur["mention_id"]][:3] == ahead
    action = {
        "action": "decide",
        "seq": 7,
        "mention_id": cur["mention_id"],
        "choice": NIL,
        "comment": "  the cat in the photo is not in the KB  ",
        "flag": "kb-missing",
        "seconds": 1.5,
        "request_id": "cards-test-1",
    }
    out = tab.on_action(json.dumps(action), req)
    rec = next(a for a in ctx.store.current_annotations() if a.annotator == "cara")
    assert (rec.mention_id, rec.decision, rec.flag) == (cur["mention_id"], "nil", "kb-missing")
    assert rec.comment == "the cat in the photo is not in the KB" and rec.seconds_spent == 1.5
    nxt = _payload(out)
    assert nxt["seq"] == 7  # the browser tells the answer to its latest action by it
    assert nxt["current"]["mention_id"] == ahead[0]  # the item the browser swapped in is the one leased
    assert "Saved" in out[1] and "kb-missing" in out[1]
    # the same request again (a retry) stores nothing new
    tab.on_action(json.dumps({**action, "seq": 8}), req)
    assert len([a for a in ctx.store.current_annotations() if a.annotator == "cara"]) == 1
    # a bad flag is refused with a message naming it, and nothing is stored
    bad_flag = {**action, "seq": 9, "flag": "maybe", "request_id": "cards-test-2", "mention_id": ahead[0]}
    bad = tab.on_action(json.dumps(bad_flag), req)
    assert "flag" in bad[1] and "Error" in bad[1]
    assert len([a for a in ctx.store.current_annotations() if a.annotator == "cara"]) == 1
    assert _payload(bad)["current"]["mention_id"] == ahead[0]  # still on screen, to decide again


def test_the_other_mentions_of_a_sentence_are_shown_as_context(studio, tab):
    ctx = studio.ctx
    sentence = "Mint and Cell met Chelsea in Mint Street."
    a = ctx.store.add_mention(sentence, "Cell", source="cards-test")
    b = ctx.store.add_mention(sentence, None, 18, 25, source="cards-test")
    elsewhere = ctx.store.add_mention("Cell is a word.", "Cell", source="cards-test")
    others = ctx.store.peek_sentence_mentions(a.id)
    assert [o.id for o in others] == [b.id] and elsewhere.id not in [o.id for o in others]
    view = item_view(ctx, a, None, others=others)
    assert "<mark class='annot-mention' data-o='9'" in view["html"] and ">Cell</mark>" in view["html"]
    assert f"(#{b.id})'>Chelsea</mark>" in view["html"]  # the other mention, marked as context
    # each text piece carries its offset, so a selection maps to (start, end) of the sentence
    pieces = re.findall(r"data-o='(\d+)'[^>]*>([^<]*)<", view["html"].split("annot-sentence")[1].split("</p>")[0])
    assert "".join(t for _, t in pieces) == sentence
    assert all(sentence[int(o) :].startswith(t) for o, t in pieces)
    tab_view = _payload(tab.render_item(a, None, "", {"hist": -1}, SimpleNamespace(username="cara")))
    assert "annot-co" in tab_view["current"]["html"] and "1 other mention(s)" in tab_view["current"]["html"]


def test_a_missed_span_becomes_a_new_mention_in_the_queue(studio, tab):
    ctx, req = studio.ctx, SimpleNamespace(username="cara")
    sentence = "Mercury rose while Cell slept."
    m = ctx.store.add_mention(sentence, "Cell", source="cards-missed")
    start = sentence.index("Mercury")
    out = tab.on_action(
        json.dumps({"action": "add_span", "seq": 3, "mention_id": m.id, "start": start, "end": start + 7}), req
    )
    assert "Added mention" in out[1], out[1]
    new = next(o for o in ctx.store.peek_sentence_mentions(m.id) if o.mention == "Mercury")
    assert (new.sentence, new.start, new.end, new.source) == (sentence, start, start + 7, "cards-missed")
    assert ctx.store.predictions(new.id)[0].candidates  # ranked by the serving model: it has cards
    assert new.id in [x.id for x in ctx.store.peek_queue("cara", 500)]  # pending
    p = _payload(out)
    assert p["seq"] == 3 and p["refresh"] and p["current"]["mention_id"] == m.id  # the item stays
    assert ">Mercury</mark>" in p["current"]["html"]  # now shown as context
    with pytest.raises(UserError, match="already mention"):
        annotate_tab.add_missed_mention(ctx, "cara", m.id, start, start + 7)
    with pytest.raises(UserError, match="outside the sentence"):
        annotate_tab.add_missed_mention(ctx, "cara", m.id, 5, 500)
    with pytest.raises(UserError, match="sign in"):
        annotate_tab.add_missed_mention(ctx, None, m.id, 0, 3)


def test_user_text_is_escaped_everywhere_in_the_item(studio):
    ctx = studio.ctx
    evil = "<script>alert(1)</script>"
    ctx.save_entity(Entity("XSS1", f"{evil}Qwxz", "<img src=x onerror=alert(2)> a ' quote", [f"<b>{evil}</b>"]), "rev")
    m = ctx.store.add_mention(f"<i>{evil}</i> met Chelsea's '<u>' here.", "Chelsea", source="<b>src</b>")
    other = ctx.store.add_mention(m.sentence, "here", source="<b>src</b>")
    pred = ctx.store.add_prediction(m.id, ctx.service.served.version, [{"entity_id": "XSS1", "S": 0.5}])
    view = item_view(ctx, m, pred, others=[other])
    page = view["html"]
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page and "<u>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;Qwxz" in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&#x27;s &#x27;&lt;u&gt;&#x27;" in page  # quotes too: attributes are single-quoted
    box = payload_html({"seq": None, "current": view, "upcoming": []})
    attr = box.split("data-payload='", 1)[1].removesuffix("'></div>")
    assert "'" not in attr and "<" not in attr  # the JSON cannot leave its attribute
    assert json.loads(html.unescape(attr))["current"] == view


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", "no action"),
        ("{not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"action": "delete", "mention_id": 1, "seq": 1}', "action must be one of"),
        ('{"action": "decide", "mention_id": "x", "seq": 1, "choice": "D001"}', "mention_id must be"),
        ('{"action": "decide", "mention_id": 1, "seq": -2, "choice": "D001"}', "seq must be"),
        ('{"action": "decide", "mention_id": 1, "seq": 1}', "choice must"),
        ('{"action": "decide", "mention_id": 1, "seq": 1, "choice": "D001", "comment": 5}', "comment must be text"),
        ('{"action": "add_span", "mention_id": 1, "seq": 1, "start": 2}', "end must be"),
        ("x" * 20_001, "too long"),
    ],
)
def test_bad_actions_are_refused_with_a_clear_message(raw, message):
    with pytest.raises(UserError, match=message):
        parse_action(raw)


def test_a_refused_action_writes_nothing_and_says_why(studio, tab):
    ctx = studio.ctx
    n = len(ctx.store.current_annotations())
    out = tab.on_action('{"action": "decide", "seq": 1, "mention_id": 1}', SimpleNamespace(username="cara"))
    assert "Error" in out[1] and "choice" in out[1]
    denied = tab.on_action(
        json.dumps({"action": "decide", "seq": 1, "mention_id": 1, "choice": NIL}), SimpleNamespace(username=None)
    )
    assert "Error" in denied[1] or "Sign in" in denied[1]
    assert len(ctx.store.current_annotations()) == n
    assert (
        parse_action('{"action": "decide", "mention_id": 1, "seq": 1, "choice": "D1", "seconds": "x"}')["seconds"]
        is None
    )


def test_skip_and_redeciding_a_history_item_through_the_browser_action(studio, tab):
    ctx, req = studio.ctx, SimpleNamespace(username="dina")
    first = _payload(tab.show_item(None, req))["current"]["mention_id"]
    out = tab.on_action(json.dumps({"action": "skip", "seq": 1, "mention_id": first}), req)
    assert "Skipped" in out[1]
    nxt = _payload(out)["current"]["mention_id"]
    assert nxt != first and first not in [u["mention_id"] for u in _payload(out)["upcoming"]]  # skipped: last
    decide = {"action": "decide", "seq": 2, "mention_id": nxt, "choice": NIL, "request_id": "dina-1"}
    tab.on_action(json.dumps(decide), req)
    # ← shows it as history item 0 with the decision; deciding it again supersedes the old one
    hist = _payload(tab.go_prev({"hist": -1}, req))["current"]
    assert (hist["mention_id"], hist["hist"], hist["selected"]) == (nxt, 0, NIL)
    assert "Already decided (nil)" in hist["html"]
    redo = {**decide, "seq": 3, "hist": 0, "choice": AMBIGUOUS, "request_id": "dina-2", "flag": "unsure"}
    back = _payload(tab.on_action(json.dumps(redo), req))
    mine = [a for a in ctx.store.current_annotations() if a.annotator == "dina" and a.mention_id == nxt]
    assert [(a.decision, a.flag) for a in mine] == [("ambiguous", "unsure")]
    assert back["seq"] == 3 and back["current"]["hist"] == -1  # one step newer: back to the queue


def test_a_prefetched_item_another_annotator_leased_meanwhile_is_not_decided_twice(studio, tab):
    """Two annotators see the same prefetched items (they are read without a lease). When one of
    them gets the item leased first, the other's key on it is refused and their next item shown."""
    ctx, fay = studio.ctx, SimpleNamespace(username="fay")
    fay_first = _payload(tab.show_item(None, fay))
    taken = fay_first["upcoming"][0]["mention_id"]  # fay's next prefetched item ...
    ctx.annotator("erin")
    assert ctx.store.next_item("erin").mention.id == taken  # ... is erin's next item: erin leases it
    n = len(ctx.store.current_annotations())
    out = tab.on_action(json.dumps({"action": "decide", "seq": 4, "mention_id": taken, "choice": NIL}), fay)
    assert "no longer pending for you" in out[1] and len(ctx.store.current_annotations()) == n
    p = _payload(out)
    assert p["seq"] == 4 and p["current"]["mention_id"] == fay_first["current"]["mention_id"]  # her leased item
    assert taken not in [u["mention_id"] for u in p["upcoming"]]


def _project_with_mentions(ctx, name: str, n: int, guidelines: str) -> list[int]:
    """A project of `n` mentions, each pre-annotated with two KB entities; their ids."""
    ctx.store.create_project(name, guidelines=guidelines, created_by="rev")
    ids = [e["id"] for e in (ctx.service.entity(c.entity_id) for c in _with_ten_candidates(ctx)[1].candidates[:2])]
    rows = [
        {
            "uid": f"p{i}",
            "sentence": f"The picker test sentence number {i} about Paris.",
            "mention": "Paris",
            "candidates": [{"entity_id": e, "S": 0.9 - 0.1 * k} for k, e in enumerate(ids)],
        }
        for i in range(n)
    ]
    ctx.store.import_mentions(rows, project=name, model_version=ctx.service.served.version)
    return [ctx.store.get_mention(f"{name}/p{i}").id for i in range(n)]


def test_choosing_a_project_restricts_the_queue_and_shows_its_guidelines(studio, tab):
    """The project picker: its choices, the queue, prefetch, pending count and actions of the chosen
    project only; its guidelines one click away; "all" is every active project's queue."""
    ctx, gus = studio.ctx, SimpleNamespace(username="gus")
    mine = _project_with_mentions(ctx, "PickerProj", 3, "# Picker rules\nLink the *city*.")
    choices, guide = tab.on_project_list("PickerProj", gus)
    assert choices["value"] == "PickerProj" and "PickerProj" in choices["choices"]
    assert choices["choices"][0] == annotate_tab.ALL_PROJECTS and choices["choices"][-1] == "default"
    assert guide == "# Picker rules\nLink the *city*."
    out = tab.on_project("PickerProj", gus)
    assert out[-2] == "# Picker rules\nLink the *city*."  # the guidelines output
    assert out[-1] == "PickerProj"  # remembered for this browser (its BrowserState)
    p = _payload(out[:-2])
    assert p["current"]["mention_id"] in mine
    assert {u["mention_id"] for u in p["upcoming"]} == set(mine) - {p["current"]["mention_id"]}
    assert "3 pending for you" in out[0] and "0/3 mentions complete" in out[0]
    # "all" serves the whole store: its queue holds far more than this project's mentions
    assert annotate_tab.annotator_counts(ctx, "gus", "all")["pending_for_you"] > 3
    # decide every item of the project with the browser's action: then its queue is empty
    seen = []
    for seq in range(1, 4):
        cur = p["current"]["mention_id"]
        seen.append(cur)
        act = {"action": "decide", "seq": seq, "mention_id": cur, "choice": NIL}
        p = _payload(tab.on_action(json.dumps(act), gus, "PickerProj"))
        assert p["seq"] == seq
    assert sorted(seen) == sorted(mine)
    assert p["current"] is None and "PickerProj" in p["empty"]
    assert annotate_tab.next_item(ctx, "gus", "PickerProj") is None
    assert annotate_tab.next_item(ctx, "gus", "all").mention.id not in mine  # "all" still has work
    # the default project, a project unknown to the store, and visitors
    assert tab.on_project_list("NoSuchProj", gus)[0]["value"] == annotate_tab.ALL_PROJECTS
    # the page load restores the browser's remembered pick while it is a choice, else "all"
    assert tab.on_project_restore(None, "PickerProj", gus)[0]["value"] == "PickerProj"
    assert tab.on_project_restore("PickerProj", "NoSuchProj", gus)[0]["value"] == annotate_tab.ALL_PROJECTS
    assert tab.restored_project(None, "PickerProj") == annotate_tab.ALL_PROJECTS  # visitors: no projects
    assert "no project named" in annotate_tab.project_guidelines(ctx, "gus", "NoSuchProj").lower()
    with pytest.raises(UserError, match="no project"):
        annotate_tab.next_item(ctx, "gus", "NoSuchProj")
    assert "no guidelines" in annotate_tab.project_guidelines(ctx, "gus", "default")
    assert annotate_tab.project_guidelines(ctx, None, "PickerProj") == ""
