"""The app's handler functions, called directly on the session's app context (the default
checkpoint `assets/models/default`, demo KB)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app.common import CANDIDATE_COLUMNS, NIL, UserError, candidates_table, candidates_view
from app.config import DEFAULT_CHECKPOINT, REPO, AppConfig, ConfigError, parse_users
from app.context import WriteDenied
from app.tabs import analysis as analysis_tab
from app.tabs import annotate as annotate_tab
from app.tabs import inspect_tab
from app.tabs import knowledge_base as kb_tab
from app.tabs import link as link_tab
from app.tabs import models as models_tab
from mimic.models.checkpoint import read_config

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo_kb"


def test_startup_loads_demo_kb_index_and_queue(studio):
    ctx = studio.ctx
    d = ctx.service.describe()
    # (other test files share this app and may have added entities: count the demo ones)
    assert d["scoring"] == "model" and d["entities"] == ctx.store.count_entities() >= 48
    assert d["version"] == "default" and Path(d["checkpoint"]).resolve() == DEFAULT_CHECKPOINT.resolve()
    assert ctx.store.promoted_model_version().name == "default"
    # the demo KB's index was built with that model (DATA_DIR/indexes/<its fingerprint>/)
    fp = read_config(DEFAULT_CHECKPOINT)["fingerprint"]
    assert d["fingerprint"] == fp == ctx.service.linker.index.fingerprint and Path(d["index"]).name == fp
    assert sum(eid.startswith("D0") for eid in ctx.service.linker.index.ids) == 48
    assert ctx.store.count_mentions() >= 48  # the examples fill the first queue
    assert len(ctx.examples) == 48
    assert ctx.startup_seconds["total"] > 0


@pytest.mark.slow
def test_default_model_demo_rankings_are_meaningful(studio):
    """The demo shows meaningful rankings: the default checkpoint's top-1 on the 48 examples far
    above chance (1/48). (The zero-shot ranking's: tests/test_default_model.py; both measured by
    benchmarks/bench_default_model.py.)"""
    ctx = studio.ctx
    hits = sum(
        link_tab.link(ctx, m.image, m.sentence, (m.start, m.end)).top.entity_id == m.answer for m in ctx.examples
    )
    assert hits / len(ctx.examples) >= 0.9


def test_link_returns_the_default_models_units_and_attention(studio):
    r = link_tab.link(
        studio.ctx, str(DEMO / "query_images" / "X01.jpg"), "Chelsea fell asleep on the windowsill again.", "Chelsea"
    )
    assert r.scoring == "model"
    top = r.top
    assert top.entity_id == "D001"
    assert None not in (top.S_T, top.S_V, top.S_C)  # an image on both sides: all three units score
    assert top.S == pytest.approx((top.S_T + top.S_V + top.S_C) / 3, abs=1e-4)
    e = top.explanation
    assert e.kind == "attention"  # TGLU and CMFU attention of the trained model, not similarities
    assert np.asarray(e.tglu_attention).shape == (len(e.entity_tokens), len(e.mention_tokens))
    assert np.asarray(e.cmfu_mention_grid).shape == np.asarray(e.cmfu_entity_grid).shape == (7, 7)
    df = candidates_table(r)
    assert list(df.columns) == CANDIDATE_COLUMNS and len(df) == len(r.candidates)
    j = link_tab.result_json(studio.ctx, r)
    json.dumps(j)  # the /link answer is JSON-serialisable
    assert j["candidates"][0]["entity_id"] == "D001" and "explanation" not in j["candidates"][0]
    assert j["scoring"] == "model" and j["model"]["version"] == "default" and j["model"]["scoring"] == "model"


@pytest.mark.parametrize(
    "sentence, mention, message",
    [
        ("", "x", "sentence is empty"),
        ("Chelsea won again.", "Arsenal", "does not occur in the sentence"),
        ("Chelsea won again.", "", "mark the mention"),
        ("Chelsea won again.", (5, 99), "out of range"),
    ],
)
def test_link_bad_text_input(studio, sentence, mention, message):
    with pytest.raises(UserError, match=message):
        link_tab.link(studio.ctx, None, sentence, mention)


def test_link_bad_images(studio, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(UserError, match="image rejected"):
        link_tab.link(studio.ctx, str(corrupt), "Chelsea won again.", "Chelsea")
    huge = tmp_path / "huge.png"
    Image.new("L", (8200, 6200)).save(huge)  # 50.8 megapixels, a small file
    with pytest.raises(UserError, match="megapixel|pixels"):
        link_tab.link(studio.ctx, str(huge), "Chelsea won again.", "Chelsea")


def test_save_link_stores_mention_prediction_and_annotation(studio):
    ctx = studio.ctx
    img = str(DEMO / "query_images" / "X02.jpg")
    r = link_tab.link(ctx, img, "We finally made it to Chelsea on Saturday.", "Chelsea")
    d = r.to_dict()
    rec = link_tab.save_link(ctx, "ana", d, r.top.entity_id, image=img)
    assert rec.annotator == "ana" and rec.decision == "entity" and rec.entity_id == r.top.entity_id
    m = ctx.store.get_mention(rec.mention_id)
    assert (m.sentence, m.mention, m.start, m.end) == (r.sentence, "Chelsea", r.start, r.end)
    assert m.image_sha256 is not None
    pred = ctx.store.predictions(rec.mention_id)[0]
    assert pred.model_version == ctx.service.served.version
    assert [c.entity_id for c in pred.candidates] == [c.entity_id for c in r.candidates]
    nil = link_tab.save_link(ctx, "ana", d, NIL, image=img)
    assert nil.decision == "nil" and nil.mention_id == rec.mention_id
    assert ctx.store.get_annotation(rec.id).status == "superseded"
    with pytest.raises(UserError, match="pick a candidate"):
        link_tab.save_link(ctx, "ana", d, None)


def test_anonymous_visitors_can_link_but_not_write(studio):
    ctx = studio.ctx
    assert not ctx.config.anonymous_writes  # users are configured: writes need a sign-in
    r = link_tab.link(ctx, None, "Chelsea won 2-1 after a late goal in the second half.", "Chelsea")
    assert r.candidates
    before = len(ctx.store.current_annotations())
    for call in (
        lambda: link_tab.save_link(ctx, None, r.to_dict(), r.top.entity_id),
        lambda: annotate_tab.next_item(ctx, None),
        lambda: annotate_tab.undo(ctx, None),
        lambda: kb_tab.save_entity(ctx, None, "X1", "x", "", "", None),
        lambda: annotate_tab.annotate_api(ctx, None, 1, "nil", None),
    ):
        with pytest.raises(UserError, match="sign in"):
            call()
    assert len(ctx.store.current_annotations()) == before
    with pytest.raises(WriteDenied):
        ctx.annotator(None)


def test_annotate_queue_submit_skip_undo(studio):
    ctx = studio.ctx
    # An annotator no other test uses: the browser tests leave bob holding prefetched leases, and a
    # held lease is served before the most uncertain item, which this test checks.
    user = "queue-probe"
    decided_before = annotate_tab.annotator_counts(ctx, user)["decided"]
    item = annotate_tab.next_item(ctx, user)
    assert item is not None and item.prediction is not None
    margins = [m.margin for m in ctx.store.peek_queue(user, 5) if m.margin is not None]
    assert item.mention.margin <= min(margins)  # most uncertain first
    assert annotate_tab.next_item(ctx, user).mention.id == item.mention.id  # leased: asking again returns it
    top = item.prediction.candidates[0].entity_id
    rec = annotate_tab.annotate(ctx, user, item.mention.id, top, seconds_spent=2.5)
    assert rec.entity_id == top and rec.seconds_spent == 2.5
    nxt = annotate_tab.next_item(ctx, user)
    assert nxt.mention.id != item.mention.id
    annotate_tab.skip(ctx, user, nxt.mention.id)
    assert annotate_tab.next_item(ctx, user).mention.id != nxt.mention.id  # skipped items come back last
    undone = annotate_tab.undo(ctx, user)
    assert undone is not None and undone.decision == "skip"
    undone = annotate_tab.undo(ctx, user)
    assert undone.id == rec.id and ctx.store.get_annotation(rec.id).status == "undone"
    counts = annotate_tab.annotator_counts(ctx, user)
    assert counts["annotator"] == user and counts["decided"] == decided_before and counts["mentions"] >= 48
    with pytest.raises(UserError, match="pick a candidate"):
        annotate_tab.annotate(ctx, user, item.mention.id, "")


def test_annotate_api_rules(studio):
    ctx = studio.ctx
    mid = ctx.store.get_mention("example:X05").id
    ann_id = annotate_tab.annotate_api(ctx, "ana", mid, "entity", "D008", "ana")
    a = ctx.store.get_annotation(ann_id)
    assert (a.annotator, a.decision, a.entity_id, a.mention_id) == ("ana", "entity", "D008", mid)
    with pytest.raises(UserError, match="cannot store annotations for 'bob'"):
        annotate_tab.annotate_api(ctx, "ana", mid, "nil", None, "bob")
    with pytest.raises(UserError, match="decision must be"):
        annotate_tab.annotate_api(ctx, "ana", mid, "maybe", None)
    with pytest.raises(UserError, match="unknown entity|not in the knowledge base"):
        annotate_tab.annotate_api(ctx, "ana", mid, "entity", "NOPE")


def test_inspect_top_and_on_demand_candidate(studio):
    ctx = studio.ctx
    img = str(DEMO / "query_images" / "X01.jpg")
    r = link_tab.link(ctx, img, "Chelsea fell asleep on the windowsill again.", "Chelsea")
    d = r.to_dict()
    v = inspect_tab.inspect_candidate(ctx, d, img, "D001")
    e = d["candidates"][0]["explanation"]
    assert v.heatmap.data[0].z.shape == (len(e["entity_tokens"]), len(e["mention_tokens"]))
    assert "[PAD]" not in e["mention_tokens"] and "[PAD]" not in e["entity_tokens"]
    assert [t.strip() for t, _ in v.tokens] == e["mention_tokens"]
    assert all(0.0 <= s <= 1.0 for _, s in v.tokens)
    assert v.mention_overlay is not None and v.entity_overlay is not None
    assert v.files[0].endswith(".json") and all(Path(f).is_file() for f in v.files)
    data = json.loads(Path(v.files[0]).read_text())
    assert data["entity_id"] == "D001" and data["map_kind"] == "attention" and data["scoring"] == "model"
    assert len([f for f in v.files if f.endswith(".png")]) == 2
    # a candidate beyond the explained top 3 is explained on demand, on the same colour scale
    far = d["candidates"][6]
    assert far.get("explanation") is None
    v2 = inspect_tab.inspect_candidate(ctx, d, img, far["entity_id"])
    assert d["candidates"][6]["explanation"] is not None
    assert v2.data["patch_map_range"] != [0.0, 1.0]
    bars = v2.bars.data[0]
    assert list(bars.y)[3] == pytest.approx(far["S"])
    with pytest.raises(UserError, match="link a mention first"):
        inspect_tab.inspect_candidate(ctx, None, None, "D001")


def test_inspect_figures_size_their_own_margins(studio):
    """plotly's automargin (a second layout pass in the browser) is off: the margins are sized from
    the tick labels, so a longer token gets a wider margin."""
    from app import figures

    ctx = studio.ctx
    m = next(m for m in ctx.examples if m.answer == "D001" and m.image)
    d = link_tab.link_state(link_tab.link(ctx, m.image, m.sentence, (m.start, m.end)))
    v = inspect_tab.inspect_candidate(ctx, d, m.image, d["candidates"][0]["entity_id"])
    for fig in (v.bars, v.heatmap):
        assert fig.layout.xaxis.automargin is False and fig.layout.yaxis.automargin is False
    e = d["candidates"][0]["explanation"]
    assert v.heatmap.layout.margin.l >= 7 * max(len(t) for t in e["entity_tokens"]) + 40
    assert v.heatmap.layout.margin.b >= 6 * max(len(t) for t in e["mention_tokens"]) + 40
    short, long = figures._token_margins(["a"], ["b"]), figures._token_margins(["x" * 30], ["y" * 30])
    assert long["l"] > short["l"] and long["b"] > short["b"]


def test_inspect_always_shows_the_latest_link(studio):
    """Inspect, a new link, then the Inspect tab: the figures follow the new link and the candidate
    in the dropdown (issue 14), and opening the tab again redraws nothing."""
    ctx = studio.ctx
    cat = next(m for m in ctx.examples if m.answer == "D001" and m.image)
    coffee = next(m for m in ctx.examples if m.answer == "D005" and m.image)
    scale = inspect_tab.SCALES[0]

    def title(fig) -> str:
        return fig.layout.title.text

    a = link_tab.link_state(link_tab.link(ctx, cat.image, cat.sentence, (cat.start, cat.end)))
    top_a = a["candidates"][0]["entity_id"]
    out = inspect_tab.view_outputs(ctx, a, cat.image, top_a, scale)
    assert len(out) == 8 and f"({top_a})" in title(out[1]) and top_a in out[0]
    drawn = out[-1]
    # a new link (another mention): its state has a new link id, and the step chained after the link
    # draws its top candidate (the dropdown's value) in place of the earlier link's figures at once
    b = link_tab.link_state(link_tab.link(ctx, coffee.image, coffee.sentence, (coffee.start, coffee.end)))
    top_b = b["candidates"][0]["entity_id"]
    assert b["link_id"] != a["link_id"] and top_b != top_a
    out = inspect_tab.after_link_outputs(ctx, b, coffee.image, top_b, scale)
    assert f"({top_b})" in title(out[1]) and top_b in out[0] and out[-1] != drawn
    assert f"({top_a})" not in title(out[1]) + title(out[2]) + out[0]
    data = json.loads(Path(out[6][0]).read_text())
    assert (data["entity_id"], data["sentence"]) == (top_b, coffee.sentence)
    # opening the tab then changes nothing (no redraw), nor does the Link tab's Inspect button
    again = inspect_tab.refresh_outputs(ctx, b, coffee.image, top_b, scale, out[-1])
    assert all(isinstance(x, dict) and x.get("__type__") == "update" for x in again)
    # opening the tab when the view was not drawn (e.g. the state changed elsewhere) draws it
    fresh = inspect_tab.refresh_outputs(ctx, b, coffee.image, top_b, scale, drawn)
    assert f"({top_b})" in title(fresh[1]) and fresh[-1] == out[-1]
    # the same link, another candidate or another colour scale: drawn again
    second = b["candidates"][1]["entity_id"]
    assert f"({second})" in title(inspect_tab.refresh_outputs(ctx, b, coffee.image, second, scale, out[-1])[1])
    other = inspect_tab.refresh_outputs(ctx, b, coffee.image, top_b, inspect_tab.SCALES[1], out[-1])
    assert f"({top_b})" in title(other[1]) and other[-1] != out[-1]
    # nothing linked yet: a note, no error
    empty = inspect_tab.refresh_outputs(ctx, None, None, None, scale, None)
    assert "Error" not in empty[0] and empty[1] is None


def test_a_failed_link_or_view_after_a_link_takes_the_earlier_figures_away(studio, monkeypatch):
    """After a link that failed (no result) the chained view clears the figures with a note; if
    drawing the new view fails unexpectedly, the figures are cleared too and an error is shown."""
    ctx = studio.ctx
    m = next(m for m in ctx.examples if m.answer == "D001" and m.image)
    scale = inspect_tab.SCALES[0]
    failed = inspect_tab.after_link_outputs(ctx, None, None, None, scale)
    assert failed[1:] == (None,) * 7 and "link a mention first" in failed[0].lower()
    d = link_tab.link_state(link_tab.link(ctx, m.image, m.sentence, (m.start, m.end)))

    def broken(*args, **kwargs):
        raise RuntimeError("figure backend down")

    monkeypatch.setattr(inspect_tab.figures, "token_heatmap", broken)
    out = inspect_tab.after_link_outputs(ctx, d, m.image, d["candidates"][0]["entity_id"], scale)
    assert out[1:] == (None,) * 7 and "could not be drawn" in out[0] and "figure backend down" not in out[0]


def test_unit_score_bars_share_one_axis_across_candidates(studio):
    ctx = studio.ctx
    m = next(m for m in ctx.examples if m.answer == "D001" and m.image)
    d = link_tab.link_state(link_tab.link(ctx, m.image, m.sentence, (m.start, m.end)))
    top, low = d["candidates"][0], d["candidates"][-1]
    assert top["S"] > low["S"]  # different scores ...
    ranges = []
    for c in (top, low):
        bars = inspect_tab.inspect_candidate(ctx, d, m.image, c["entity_id"]).bars
        ranges.append(tuple(bars.layout.yaxis.range))
        assert list(bars.data[0].y)[-1] == pytest.approx(c["S"])
    assert ranges[0] == ranges[1]  # ... on the same y-range: S = 0.2 is drawn lower than S = 0.7
    lo, hi = ranges[0]
    units = [c[k] for c in d["candidates"] for k in ("S", "S_T", "S_V", "S_C") if c[k] is not None]
    assert lo <= min(0.0, *units) and hi >= max(units)


def test_columns_empty_for_every_candidate_are_hidden_and_explained(studio):
    ctx = studio.ctx
    m = next(m for m in ctx.examples if m.image)
    with_image = link_tab.link(ctx, m.image, m.sentence, (m.start, m.end))
    cands = with_image.to_dict()["candidates"]
    df, note = candidates_view(with_image)
    # the default checkpoint fills S_T, S_V and S_C; it has no lexical unit
    assert {k for k in ("S_T", "S_V", "S_C", "S_L") if all(c[k] is None for c in cands)} == {"S_L"}
    assert "S_L" not in df.columns and {"S", "S_T", "S_V", "S_C", "found by"} <= set(df.columns)
    assert note.count("\n") == 0 and "S_L (lexical)" in note and "S_C" not in note
    # zero-shot on the offline backbone has no cross-modal score; a text-only query no image score
    zero_shot = [dict(c, S_C=None) for c in cands]
    df, note = candidates_view({"candidates": zero_shot})
    assert "S_C" not in df.columns and "S_C (cross-modal)" in note and "S_L (lexical)" in note
    df, note = candidates_view({"candidates": [dict(c, S_V=None) for c in zero_shot]})
    assert "S_V" not in df.columns and "S_V (image): the mention or the candidates have no image" in note
    # the app's Link tab shows the same (the note beneath the table)
    out = link_tab.LinkTab.do_link(SimpleNamespace(ctx=ctx), m.image, m.sentence, m.mention, None)
    assert list(out[3].columns) == list(candidates_view(with_image)[0].columns) and "S_L (lexical)" in out[-1]
    # a stored prediction (Annotate) does not keep the retrievers: "found by" is hidden and explained
    stored = {"candidates": [dict(c, retrievers=[], S_L=None) for c in with_image.to_dict()["candidates"]]}
    df, note = candidates_view(stored)
    assert "found by" not in df.columns and "found by: the retrievers" in note
    # every column filled: nothing hidden, no note
    full = [dict(c, S_C=0.1, S_L=0.2) for c in with_image.to_dict()["candidates"]]
    df, note = candidates_view({"candidates": full})
    assert list(df.columns) == CANDIDATE_COLUMNS and note == ""
    assert candidates_view(None)[1] == "" and list(candidates_view(None)[0].columns) == CANDIDATE_COLUMNS


def test_analysis_tab_starts_in_a_clean_empty_state(studio, tmp_path):
    ctx = studio.ctx
    for no_run in (None, ""):  # a fresh start: no run chosen
        out = analysis_tab.view_outputs(ctx, no_run, None, None, "any")
        assert "Error" not in out[0] and "No analysis run yet" in out[0]
        assert out[1:8] == (None,) * 7 and out[-1] == {"__type__": "update", "visible": False}
    bad = tmp_path / "broken.jsonl"
    bad.write_text("not json\n")
    out = analysis_tab.view_outputs(ctx, str(bad))
    assert out[0].startswith("**Error:**") and "broken.jsonl" in out[0] and out[-1]["visible"] is False


def test_kb_edit_updates_index_without_rebuild(studio, tmp_path):
    ctx = studio.ctx
    idx = ctx.service.linker.index
    segments = list(idx.manifest["segments"])
    n0 = len(ctx.service)
    photo = tmp_path / "zorblax.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")).save(photo)
    rec = kb_tab.save_entity(
        ctx,
        "rev",
        "Z900",
        "Zorblax",
        "A fictional purple lighthouse on a basalt cliff.",
        "Zorb | The Zorblax",
        [str(photo)],
    )
    assert rec.version == 1 and rec.aliases == ["Zorb", "The Zorblax"] and len(rec.images) == 1
    assert len(ctx.service) == n0 + 1
    assert idx.manifest["segments"][: len(segments)] == segments and len(idx.manifest["segments"]) == len(segments) + 1
    r = link_tab.link(ctx, None, "We walked up to the Zorblax at dusk.", "Zorblax")
    assert r.top.entity_id == "Z900"
    rec2 = kb_tab.save_entity(
        ctx, "rev", "Z900", "Zorblax", "A fictional purple lighthouse, now a museum.", "Zorb", None
    )
    assert rec2.version == 2 and rec2.images == rec.images  # kept its image
    assert ctx.service.entity("Z900")["text"].endswith("now a museum.")
    again = link_tab.link(ctx, None, "We walked up to the Zorblax at dusk.", "Zorblax")  # cached explanation features
    assert "museum" in again.top.explanation.entity_tokens  # follow the edit
    assert kb_tab.search_kb(ctx, "zorb")[0].id == "Z900"
    with pytest.raises(UserError, match="needs a name"):
        kb_tab.save_entity(ctx, "rev", "Z901", " ", "", "", None)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError):
        kb_tab.save_entity(ctx, "rev", "Z902", "Bad", "", "", [str(bad)])
    assert ctx.service.entity("Z902") is None


def test_kb_import_reports_rejected_rows(studio, tmp_path):
    ctx = studio.ctx
    csv = tmp_path / "kb.csv"
    csv.write_text(
        "id,name,text\nQ1,Quokka Island,A small island\nQ2,,no name here\nQ1,Duplicate,again\nQ3,Quill,A writing pen\n",
        encoding="utf-8",
    )
    steps = []
    rep = kb_tab.import_kb_file(ctx, "rev", str(csv), progress=lambda f, desc="": steps.append(f))
    assert rep["imported"] == 2 and rep["loaded"] == 2
    assert rep["rejected"] and {r.get("id") for r in rep["rejected"]} >= {"Q1"}
    assert steps and steps[-1] == pytest.approx(1.0)
    assert ctx.service.entity("Q3")["name"] == "Quill" and ctx.store.get_entity("Q1").name == "Quokka Island"
    with pytest.raises(UserError, match="cannot import"):
        kb_tab.import_kb_file(ctx, "rev", str(tmp_path / "missing.jsonl"))


def test_exports_and_model_tables(studio):
    ctx = studio.ctx
    mid = ctx.store.get_mention("example:X07").id
    annotate_tab.annotate_api(ctx, "rev", mid, "entity", "D010")
    with pytest.raises(UserError, match="sign in"):
        models_tab.export(ctx, "jsonl")  # anonymous visitors get no data
    p = models_tab.export(ctx, "jsonl", "rev")
    rows = [json.loads(line) for line in Path(p).read_text().splitlines()]
    assert any(r.get("annotator") == "rev" and r.get("entity_id") == "D010" for r in rows)
    assert Path(models_tab.export(ctx, "csv", "rev")).read_text().count("\n") == len(rows) + 1
    z = zipfile.ZipFile(models_tab.export(ctx, "training", "rev"))
    assert any(n.endswith("kb_entity.json") for n in z.namelist())
    with pytest.raises(UserError, match="export format"):
        models_tab.export(ctx, "xml", "rev")
    mv = models_tab.model_versions(ctx)
    assert (mv["status"] == "serving").sum() == 1 and mv.loc[mv["status"] == "serving", "version"].iloc[
        0
    ] == ctx.service.served.version
    corr, ov = models_tab.corrections_summary(ctx)
    assert set(corr["annotator"]) >= {"ana", "rev"} and ov["mentions"] >= 48 and "agreement" in ov


def test_version_summary_reads_a_run_and_tolerates_anything_else():
    m = {
        "serving": {"heldout": {"MRR": 0.5}, "base_dev": {"H@1": 0.7}},
        "candidate": {"heldout": {"MRR": 0.75}, "base_dev": {"H@1": 0.69}},
        "data": {"train_corrections": 30, "base_train": 100},
        "train": {
            "epochs": 2,
            "device": "cuda",
            "bf16": True,
            "freeze_backbone": False,
            "seconds": 31.2,
            "samples_per_second": [500.0, 861.4],
        },
        "decision": {"reason": "promoted: held-out MRR 0.500 -> 0.750"},
    }
    mrr, dev, trained, decision = models_tab.version_summary(m)
    assert (mrr, dev) == ("0.500 → 0.750", "0.700 → 0.690")
    assert trained == "30 corrections + 100 base, 2 epoch(s) on cuda bf16, backbone trained, 31 s, 861 samples/s"
    assert decision.startswith("promoted")
    assert models_tab.version_summary(None) == ["", "", "", ""]
    assert models_tab.version_summary({"train": "odd", "serving": [], "decision": 3}) == ["", "", "", ""]


def test_config_parsing():
    users = parse_users("ana:pw, rev:pw2:reviewer\n# comment\n", "MIMIC_USERS")
    assert [(u.name, u.role) for u in users] == [("ana", "annotator"), ("rev", "reviewer")]
    for bad, msg in [("ana", "name:password"), ("ana:pw:boss", "role"), ("a:1,a:2", "twice")]:
        with pytest.raises(ConfigError, match=msg):
            parse_users(bad, "MIMIC_USERS")
    local = AppConfig.from_env({})
    assert local.anonymous_writes and local.auth() is None
    assert not AppConfig.from_env({"MIMIC_USERS": "ana:pw"}).anonymous_writes
    assert not AppConfig.from_env({"SPACE_ID": "org/space"}).anonymous_writes
    assert not AppConfig.from_env({"GRADIO_SERVER_NAME": "0.0.0.0"}).anonymous_writes
    assert AppConfig.from_env({"SPACE_ID": "x/y", "MIMIC_ANONYMOUS_WRITES": "1"}).anonymous_writes
    check = AppConfig.from_env({"MIMIC_USERS": "ana:pw"}).auth()  # async: argon2 runs off the event loop
    import asyncio

    assert asyncio.run(check("ana", "pw")) and not asyncio.run(check("ana", "nope"))
    assert not asyncio.run(check("bob", "pw"))
    with pytest.raises(ConfigError, match="MIMIC_ANONYMOUS_WRITES"):
        AppConfig.from_env({"MIMIC_ANONYMOUS_WRITES": "maybe"})
    assert local.keep_model is None and AppConfig.from_env({"MIMIC_KEEP_MODEL": "224"}).keep_model == 224
    for bad in ("-1", "many"):
        with pytest.raises(ConfigError, match="MIMIC_KEEP_MODEL" if bad == "-1" else "not a number"):
            AppConfig.from_env({"MIMIC_KEEP_MODEL": bad})


def test_app_serves_a_trained_checkpoint_with_real_attention(tmp_path, tiny_clip, synthetic_dataset):
    """With MIMIC_CHECKPOINT the app serves the model's own scores, and Inspect shows TGLU attention
    and CMFU text→patch attention (not similarities)."""
    import torch

    from app.context import AppContext
    from mimic.data.jsonl import write_jsonl_dataset
    from mimic.models.checkpoint import save_checkpoint
    from mimic.models.linking_model import LinkingModel

    torch.manual_seed(0)
    ckpt = save_checkpoint(LinkingModel.build(tiny_clip, mode="fixed"), tmp_path / "ckpt", backbone_trained=False)
    data = write_jsonl_dataset(synthetic_dataset, tmp_path / "synthetic")
    split = next(iter(synthetic_dataset.splits))
    cfg = AppConfig.from_env(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "MIMIC_CHECKPOINT": str(ckpt),
            "MIMIC_KB": str(data / "kb.jsonl"),
            "MIMIC_EXAMPLES": str(data / f"{split}.jsonl"),
        }
    )
    ctx = AppContext.start(cfg, progress=False)
    try:
        d = ctx.service.describe()
        assert d["scoring"] == "model" and d["version"] == "ckpt" and d["entities"] == len(synthetic_dataset.kb)
        m = next(x for x in synthetic_dataset.splits[split] if x.image)
        r = link_tab.link(ctx, m.image, m.sentence, m.mention)
        assert r.scoring == "model"
        top = r.top
        assert None not in (top.S_T, top.S_V, top.S_C)
        assert top.S == pytest.approx((top.S_T + top.S_V + top.S_C) / 3, abs=1e-4)
        e = top.explanation
        assert e.kind == "attention"
        att = np.asarray(e.tglu_attention)
        assert att.shape == (len(e.entity_tokens), len(e.mention_tokens))
        assert np.allclose(att.sum(1), 1.0, atol=1e-3)  # softmax over the real mention tokens
        side = ctx.service.linker.patch_grid
        assert side > 1 and np.asarray(e.cmfu_mention_grid).shape == (side, side)
        assert np.asarray(e.cmfu_entity_grid).shape == (side, side)
        v = inspect_tab.inspect_candidate(ctx, r.to_dict(), m.image, top.entity_id)
        assert "TGLU attention" in v.heatmap.layout.title.text and v.mention_overlay is not None
        assert "Unit scores" in v.bars.layout.title.text and "(TGLU)" in v.bars.data[0].x[0]
    finally:
        ctx.store.close()


def test_username_from_basic_auth_or_hugging_face_oauth():
    from types import SimpleNamespace

    from app.ui import username_of

    assert username_of(None) is None
    assert username_of(SimpleNamespace(username="ana")) == "ana"
    oauth = SimpleNamespace(username=None, session={"oauth_info": {"userinfo": {"preferred_username": "hf-user"}}})
    assert username_of(oauth) == "hf-user"

    class NoSession:
        username = None

        @property
        def session(self):
            raise AssertionError("SessionMiddleware must be installed to access request.session")

    assert username_of(NoSession()) is None


@pytest.mark.slow
def test_analysis_of_the_corrections(studio):
    """The Analysis tab's handlers: analyse the served model on the corrections, filter, compare."""
    from mimic.analysis.records import LABELS

    ctx = studio.ctx
    # two corrections with known golds: X01's gold (the cat) and a NIL for X03
    annotate_tab.annotate_api(ctx, "rev", ctx.store.get_mention("example:X01").id, "entity", "D001")
    annotate_tab.annotate_api(ctx, "rev", ctx.store.get_mention("example:X03").id, "nil", None)
    mentions, source = analysis_tab.corrections_as_mentions(ctx)
    by_id = {m.id: m for m in mentions}
    assert by_id["example:X01"].answer == "D001" and by_id["example:X03"].answer is None
    assert source["example:X01"] == "examples"
    with pytest.raises(UserError, match="sign in"):
        analysis_tab.analyze_corrections(ctx)
    path = analysis_tab.analyze_corrections(ctx, "rev")
    assert Path(path).is_file() and Path(path).parent == ctx.config.data_dir / "analysis"
    recs = {r.mention_id: r for r in analysis_tab.load_analysis(ctx, path)}
    assert len(recs) == len(mentions)
    assert recs["example:X01"].label == "correct" and recs["example:X01"].gold_rank == 1
    assert recs["example:X03"].label == "missed_nil"  # no NIL threshold is calibrated: never answers NIL
    assert all(r.label in LABELS for r in recs.values())
    v = analysis_tab.analysis_view(ctx, path)
    assert v.summary["mentions"] == len(recs) and set(v.figures) == {"labels", "recall", "units", "reliability"}
    assert len(v.table) == len(recs) and Path(v.csv_path).read_text().count("\n") == len(recs) + 1
    only = analysis_tab.analysis_view(ctx, path, labels=["missed_nil"])
    assert len(only.table) == v.summary["labels"]["missed_nil"] and set(only.table["label"]) == {"missed_nil"}
    with_img = analysis_tab.analysis_view(ctx, path, has_image="with image")
    assert len(with_img.table) == sum(r.has_image for r in recs.values())
    out = analysis_tab.view_outputs(ctx, path)  # what the tab shows for a chosen run: the results
    assert out[-1]["visible"] is True and len(out[6]) == len(recs) and "mentions shown" in out[0]
    m = analysis_tab.analysis_mention(ctx, path, "example:X01")
    assert m["image"] and m["gold"] == "D001" and (m["start"], m["end"]) == (0, 7)
    # a second run after one more correction: the comparison matches mentions across runs
    # (an example no earlier test of the shared app has corrected: the browser tests decide some)
    extra = next(u for u in (f"example:X{i:02d}" for i in range(2, 49)) if u not in by_id)
    annotate_tab.annotate_api(ctx, "rev", ctx.store.get_mention(extra).id, "entity", "D003")
    path2 = analysis_tab.analyze_corrections(ctx, "rev")
    assert path2 != path and [p for _, p in analysis_tab.analysis_runs(ctx)][:2] == sorted([path, path2], reverse=True)
    cmp, table, csv, fig = analysis_tab.analysis_compare(ctx, path, path2)
    assert cmp["counts"]["fixed"] == 0 and cmp["counts"]["new_error"] == 0  # same model both times
    assert [r["mention_id"] for r in cmp["only_in_b"]] == [extra] and not cmp["only_in_a"]
    assert Path(csv).is_file() and len(table) == sum(cmp["counts"].values())
    with pytest.raises(UserError, match="choose two"):
        analysis_tab.analysis_compare(ctx, path, "")


def test_a_relative_kb_path_is_made_absolute(tmp_path, monkeypatch):
    """MIMIC_KB given relative to the working folder still finds its images (they are named
    relative to the KB file, and copied into the store by content only from absolute paths)."""
    monkeypatch.chdir(REPO)
    cfg = AppConfig.from_env({"MIMIC_KB": "assets/demo_kb/kb.jsonl", "MIMIC_EXAMPLES": "assets/demo_kb/examples.jsonl"})
    assert cfg.kb_path.is_absolute() and cfg.kb_path == REPO / "assets" / "demo_kb" / "kb.jsonl"
    assert cfg.examples_path is not None and cfg.examples_path.is_absolute()
