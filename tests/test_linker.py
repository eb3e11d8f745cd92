"""Linking engine: KB files, index (build, resume, incremental updates, fingerprint), retrieve-then-rerank
against exhaustive scoring, explanations, NIL, bad input, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimic.data.kb_files import load_kb
from mimic.data.schema import KnowledgeBase
from mimic.models.checkpoint import load_checkpoint, save_checkpoint
from mimic.models.linking_model import LinkingModel
from mimic.serving.index import IndexMismatchError, KBIndex
from mimic.serving.linker import Linker, LinkInputError
from mimic.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dataset, tiny_clip_dir):
    out = tmp_path_factory.mktemp("linker_run")
    train(
        TrainConfig(
            output=str(out),
            backbone=str(tiny_clip_dir),
            freeze_backbone=True,
            lr=3e-3,
            epochs=6,
            batch_size=16,
            progress=False,
            test_after=False,
            seed=0,
            adam_eps=1e-8,
            no_decay="standard",
        ),
        synthetic_dataset,
    )
    return out / "best"


@pytest.fixture(scope="module")
def index(trained, synthetic_dataset, tmp_path_factory):
    model = load_checkpoint(trained)
    return KBIndex.build(model, synthetic_dataset.kb, tmp_path_factory.mktemp("idx") / "index", progress=False)


@pytest.fixture(scope="module")
def linker(trained, index):
    return Linker(load_checkpoint(trained), index, shortlist=64)


def test_rerank_equals_exhaustive_scoring(linker, synthetic_dataset):
    for m in synthetic_dataset.split("test")[:12]:
        r = linker.link(m.sentence, m.mention, m.image, top_k=len(linker.index), explain=False)
        S = linker.exhaustive_scores(m.sentence, m.mention, m.image)
        # shortlist covers this small KB: identical scores and the same top-1
        got = {c.entity_id: c.S for c in r.candidates}
        for eid, s in got.items():
            assert s == pytest.approx(float(S[linker.index.position[eid]]), rel=1e-4, abs=1e-3)
        assert r.top.entity_id == linker.index.ids[int(torch.argsort(-S, stable=True)[0])]
        assert [c.rank for c in r.candidates] == list(range(1, len(r.candidates) + 1))
        assert all(
            r.candidates[i].margin == pytest.approx(r.candidates[i].S - r.candidates[i + 1].S)
            for i in range(len(r.candidates) - 1)
        )


def test_small_shortlist_keeps_the_exhaustive_top1(trained, index, synthetic_dataset):
    lk = Linker(load_checkpoint(trained), index, shortlist=6)
    ms = synthetic_dataset.split("test")
    agree = 0
    for m in ms:
        S = lk.exhaustive_scores(m.sentence, m.mention, m.image)
        r = lk.link(m.sentence, m.mention, m.image, explain=False)
        assert len(r.candidates) <= 9 and r.shortlist_size <= 9  # 6 fused + up to 3 of the model retriever's
        agree += r.top.entity_id == lk.index.ids[int(S.argmax())]
    assert agree / len(ms) >= 0.9
    # the linker is also right most of the time
    acc = sum(lk.link(m.sentence, m.mention, m.image, explain=False).top.entity_id == m.answer for m in ms) / len(ms)
    assert acc >= 0.6


def test_shortlist_adds_the_model_retrievers_best_rows_that_fusion_cut(trained, index, synthetic_dataset):
    model = load_checkpoint(trained)
    fused_only = Linker(model, index, shortlist=4, keep_model=0)
    for keep in (3, 8):  # fewer than the cut, and deeper than the rows fusion sees (4 a retriever)
        kept = Linker(model, index, shortlist=4, keep_model=keep)
        added = 0
        for m in synthetic_dataset.split("test"):
            q = kept._query(m.sentence, m.mention, m.image)
            mc, text, image, _ = kept._encode([q])
            base = [row for row, _ in fused_only._retrieve(mc, text.global_, image.global_, [q], 4)[0]]
            got = kept._retrieve(mc, text.global_, image.global_, [q], 4, keep_model=keep)[0]
            both = [row for row, _ in got]
            mq = model.heads.retrieval_vector(mc, "mention").numpy()
            top = index.retrievers["model"].search(mq, keep)[1][0].tolist()
            assert both[:4] == base  # the fused cut is unchanged, the extras come after it
            assert set(both) == set(base) | set(top) and len(both) == len(set(both))
            assert all(src["model"] == top.index(row) for row, src in got[4:])  # their rank is reported
            added += len(both) - len(base)
            # served: the extra rows are re-ranked (a model without a lexical unit)
            r = kept.link(m.sentence, m.mention, m.image, top_k=10, explain=False)
            assert r.shortlist_size == len(both)
        assert added > 0  # this KB has queries where fusion cut one of the model retriever's top rows


def test_explanations_have_real_tokens_and_patch_grids(linker, synthetic_dataset):
    m = next(x for x in synthetic_dataset.split("test") if x.image)
    r = linker.link(m.sentence, m.mention, m.image, top_k=5)
    assert r.has_image
    for c in r.candidates[: linker.explain_top]:
        e = c.explanation
        assert e is not None and e.mention_tokens[0] == "<|startoftext|>" and e.mention_tokens[-1] == "<|endoftext|>"
        assert m.mention in "".join(e.mention_tokens)
        assert len(e.tglu_attention) == len(e.entity_tokens)  # rows: entity tokens (no padding)
        assert all(len(row) == len(e.mention_tokens) for row in e.tglu_attention)
        np.testing.assert_allclose([sum(row) for row in e.tglu_attention], 1.0, atol=1e-4)
        assert np.array(e.cmfu_mention_grid).shape == (4, 4)  # 64 px / 16 px patches; CLS apart
        grid_sum = np.array(e.cmfu_mention_grid).sum() + e.cmfu_mention_cls
        assert grid_sum == pytest.approx(1.0, abs=1e-3)
    assert r.candidates[-1].explanation is None  # only the top ones are explained
    # any entity can be explained on demand
    other = linker.index.ids[-1]
    e = linker.explain(m.sentence, m.mention, other, m.image)
    assert len(e.tglu_attention) == len(e.entity_tokens)


def test_nil_threshold_and_calibration(trained, index, synthetic_dataset):
    lk = Linker(load_checkpoint(trained), index)
    m = synthetic_dataset.split("test")[0]
    top = lk.link(m.sentence, m.mention, m.image, explain=False).top.S
    assert not Linker(lk.model, index, nil_threshold=top - 1).link(m.sentence, m.mention, m.image).nil
    assert Linker(lk.model, index, nil_threshold=top + 1).link(m.sentence, m.mention, m.image).nil
    details = lk.calibrate_nil(synthetic_dataset.split("dev"))
    assert 0.5 <= details["accuracy"] <= 1.0 and details["in_kb"] == len(synthetic_dataset.split("dev"))
    assert KBIndex(index.root).manifest["nil_threshold"] == details["threshold"]  # persisted
    index.set_nil_threshold(None)


def test_incremental_updates_equal_a_rebuild(trained, synthetic_dataset, tmp_path):
    model = load_checkpoint(trained)
    ents = synthetic_dataset.kb.entities
    base = KnowledgeBase(ents[:-3])
    idx = KBIndex.build(model, base, tmp_path / "inc", progress=False)
    changed = replace(ents[0], text=ents[0].text + " painter")
    idx.upsert(model, [ents[-3], ents[-2], ents[-1], changed])  # three added, one updated
    idx.delete([ents[5].id])
    final = KnowledgeBase([changed] + [e for e in ents[1:] if e.id != ents[5].id])
    fresh = KBIndex.build(model, final, tmp_path / "fresh", progress=False)
    reloaded = KBIndex(tmp_path / "inc")
    for a in (idx, reloaded):
        assert sorted(a.ids) == sorted(fresh.ids)
        pa = torch.tensor([a.position[i] for i in fresh.ids])
        for name, t in fresh.cache.tensors().items():
            torch.testing.assert_close(getattr(a.cache, name)[pa], t)
    la, lb = Linker(model, reloaded), Linker(model, fresh)
    for m in synthetic_dataset.split("test")[:8]:
        ra, rb = (
            la.link(m.sentence, m.mention, m.image, explain=False),
            lb.link(m.sentence, m.mention, m.image, explain=False),
        )
        assert [(c.entity_id, round(c.S, 4)) for c in ra.candidates] == [
            (c.entity_id, round(c.S, 4)) for c in rb.candidates
        ]
    with pytest.raises(KeyError):
        idx.delete(["Q_unknown"])


def test_index_refuses_another_model(index, tiny_clip, tmp_path):
    other = LinkingModel.build(tiny_clip, mode="fixed")
    save_checkpoint(other, tmp_path / "other", backbone_trained=False)
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        Linker(load_checkpoint(tmp_path / "other"), index)


def test_interrupted_build_resumes_and_never_leaves_a_half_index(trained, synthetic_dataset, tmp_path, monkeypatch):
    import mimic.serving.index as mi

    model = load_checkpoint(trained)
    calls = {"n": 0}
    real = mi.load_images

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(mi, "load_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        KBIndex.build(model, synthetic_dataset.kb, tmp_path / "idx", batch_size=4, progress=False)
    assert not (tmp_path / "idx").exists()
    prog = json.loads((tmp_path / ".idx.building" / "seg-0000" / "progress.json").read_text())
    assert prog["done"] == 8  # two batches of 4 were on disk
    monkeypatch.setattr(mi, "load_images", real)
    calls["n"] = 0
    counted = []
    monkeypatch.setattr(mi, "load_images", lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = KBIndex.build(model, synthetic_dataset.kb, tmp_path / "idx", batch_size=4, progress=False)
    assert len(counted) == -(-(len(synthetic_dataset.kb) - 8) // 4)  # only the remaining batches
    fresh = KBIndex.build(model, synthetic_dataset.kb, tmp_path / "fresh", batch_size=4, progress=False)
    for name, t in fresh.cache.tensors().items():
        torch.testing.assert_close(getattr(resumed.cache, name), t)
    assert not (tmp_path / ".idx.building").exists()


# ---------------------------------------------------------------------------------- bad input
def _bad_images(d: Path) -> dict:
    d.mkdir(exist_ok=True)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(d / "full.jpg")
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:200])
    return {"corrupt": d / "corrupt.jpg", "truncated": d / "truncated.jpg"}


def test_bad_inputs_get_clear_errors(linker, tmp_path):
    s = "the alder painter near the river"
    cases = [
        (("", "alder"), "sentence is empty"),
        (("   ", "alder"), "sentence is empty"),
        ((s, "oak"), "does not occur"),
        ((s, (3, 999)), "out of range"),
        ((s, (5, 2)), "out of range"),
        ((s, ""), "mention is empty"),
        ((b"\xff\xfe bad bytes", "x"), "not valid UTF-8"),
    ]
    for args, needle in cases:
        with pytest.raises(LinkInputError, match=needle):
            linker.link(*args)
    bad = _bad_images(tmp_path)
    for p in bad.values():
        with pytest.raises(LinkInputError, match="image rejected"):
            linker.link(s, "alder", str(p))
    # a decompression bomb: header says 60 megapixels
    big = tmp_path / "big.png"
    Image.new("L", (10000, 6000)).save(big)
    with pytest.raises(LinkInputError, match="image rejected"):
        linker.link(s, "alder", str(big))
    # path outside the allowed folders
    (tmp_path / "allowed").mkdir()
    guarded = Linker(linker.model, linker.index, allowed_image_dirs=[str(tmp_path / "allowed")])
    with pytest.raises(LinkInputError, match="outside"):
        guarded.link(s, "alder", str(tmp_path / "full.jpg"))  # a valid image, but not in an allowed folder
    Image.new("RGB", (8, 8)).save(tmp_path / "allowed" / "ok.png")
    assert guarded.link(s, "alder", str(tmp_path / "allowed" / "ok.png"), explain=False).has_image
    # the linker still works afterwards
    assert linker.link(s, "alder").top is not None


def test_odd_but_valid_images_are_converted(linker, tmp_path):
    s = "the alder painter near the river"
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(cmyk)
    i16 = tmp_path / "i16.png"
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(i16)
    pal = tmp_path / "pal.png"
    Image.new("P", (20, 20), 5).save(pal, transparency=5)
    gif = tmp_path / "anim.gif"
    frames = [Image.new("P", (16, 16), c) for c in (1, 2, 3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    for p in (cmyk, i16, pal, gif):
        r = linker.link(s, "alder", str(p), explain=False)
        assert r.has_image and r.top is not None, p.name


# ---------------------------------------------------------------------------------- KB files
def test_kb_files_report_problems(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    (tmp_path / "kb.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "Q1", "name": "Alder", "text": "a painter", "images": ["a.png"], "aliases": ["Al"]}),
                json.dumps({"id": "Q2", "name": "", "text": "no name"}),
                json.dumps({"id": "Q1", "name": "Alder again"}),
                "{broken json",
                json.dumps({"id": "Q3", "name": "Birch", "images": ["missing.png"]}),
            ]
        )
        + "\n"
    )
    kb, rep = load_kb(tmp_path / "kb.jsonl")
    assert [e.id for e in kb] == ["Q1", "Q3"]
    assert rep.duplicates == ["Q1"] and rep.empty_names == ["Q2"] and len(rep.rejected) == 3
    assert rep.missing_images[0]["id"] == "Q3" and kb[1].images == []
    assert any("invalid JSON" in r["reason"] for r in rep.rejected)
    (tmp_path / "kb.csv").write_text(
        "id,name,description,aliases,images\nQ1,Alder,a painter,Al|Big Al,a.png\nQ1,Dup,,,\n,NoId,,,\n"
    )
    kb, rep = load_kb(tmp_path / "kb.csv")
    assert len(kb) == 1 and kb[0].aliases == ["Al", "Big Al"] and len(rep.rejected) == 2
    (tmp_path / "bad.csv").write_text("title,desc\nx,y\n")
    from mimic.data.schema import DataFormatError

    with pytest.raises(DataFormatError, match="'id' and 'name'"):
        load_kb(tmp_path / "bad.csv")


def test_kb_official_layout(synthetic_official):
    kb, rep = load_kb(synthetic_official)
    assert len(kb) == 18 and not rep.rejected and all(e.id.startswith("Q") for e in kb)
    assert all(Path(p).exists() for e in kb for p in e.images)


@pytest.mark.slow
def test_cli_index_and_link(trained, synthetic_official, tmp_path):
    idx = tmp_path / "index"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "index",
            "--checkpoint",
            str(trained),
            "--kb",
            str(synthetic_official),
            "--output",
            str(idx),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["entities"] == 18
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "link",
            "--checkpoint",
            str(trained),
            "--index",
            str(idx),
            "--sentence",
            "the alder painter near the river",
            "--mention",
            "alder",
            "--top-k",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["candidates"]) == 3 and {"S", "S_T", "S_V", "S_C", "rank", "margin", "retrievers"} <= set(
        res["candidates"][0]
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "link",
            "--checkpoint",
            str(trained),
            "--index",
            str(idx),
            "--sentence",
            "the alder painter",
            "--mention",
            "oak",
            "--absent-mention",
            "error",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "does not occur" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------------
# Tolerant mention location and `link --batch` that never loses the good lines
# ------------------------------------------------------------------------------------------------


def test_mention_found_after_normalising(linker):
    s = "the alder painter met U.N.C.L.E. agents near the river"
    r = linker.link(s, "UNCLE", explain=False)
    assert s[r.start : r.end] == "U.N.C.L.E" and r.mention == "UNCLE" and r.top is not None
    assert len(r.warnings) == 1 and "does not occur verbatim" in r.warnings[0]
    assert r.to_dict()["warnings"] == r.warnings
    r = linker.link(s, "alder   painter", explain=False)
    assert s[r.start : r.end] == "alder painter" and r.warnings
    exact = linker.link(s, "alder", explain=False)
    assert (exact.start, exact.end, exact.warnings) == (4, 9, [])


def test_absent_mention_is_linked_with_a_warning_when_asked(linker):
    s = "the alder painter near the river"
    with pytest.raises(LinkInputError, match="does not occur"):
        linker.link(s, "oak")  # default: refused
    warn = Linker(linker.model, linker.index, absent_mention="warn")
    r = warn.link(s, "oak", explain=False)
    assert (r.start, r.end, r.mention) == (None, None, "oak") and r.candidates
    assert "does not occur in the sentence" in r.warnings[0] and "without a span" in r.warnings[0]
    with pytest.raises(ValueError, match="absent_mention"):
        Linker(linker.model, linker.index, absent_mention="ignore")


def test_link_each_isolates_bad_queries(linker):
    s = "the alder painter near the river"
    out = linker.link_each(
        [{"sentence": s, "mention": "alder"}, {"sentence": s, "mention": "oak"}, {"sentence": s, "mention": "river"}],
        explain=False,
        batch_size=2,
    )
    assert [type(o).__name__ for o in out] == ["LinkResult", "LinkInputError", "LinkResult"]
    assert out[2].mention == "river"


def _cli_link(trained, index, *args):
    from mimic.cli import main

    return main(["link", "--checkpoint", str(trained), "--index", str(index.root), *args])


def test_cli_batch_keeps_the_good_lines(trained, index, tmp_path, capsys):
    s = "the alder painter near the river"
    bad = {
        5: "{not json",
        50: json.dumps({"mention": "alder"}),
        100: json.dumps({"sentence": "   ", "mention": "alder"}),
        200: json.dumps({"sentence": s, "mention": "   "}),
        300: json.dumps({"sentence": s, "mention": "alder", "image": str(tmp_path / "missing.jpg")}),
        400: json.dumps(["not", "an", "object"]),
        450: json.dumps({"sentence": s}),
        500: json.dumps({"sentence": s, "span": [3, 999]}),
    }
    lines = []
    for n in range(1, 601):
        if n in bad:
            lines.append(bad[n])
        elif n % 3 == 0:
            lines.append(json.dumps({"sentence": s, "span": [4, 9]}))
        else:
            lines.append(json.dumps({"sentence": s, "mention": ["alder", "painter", "UNCLE", "river"][n % 4]}))
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc = _cli_link(trained, index, "--batch", str(path), "--no-explain", "--top-k", "2", "--batch-size", "64")
    out = capsys.readouterr()
    records = [json.loads(x) for x in out.out.splitlines()]
    assert rc == 1
    assert len(records) == 601 and [r["line"] for r in records[:600]] == list(range(1, 601))
    errors = {r["line"]: r["error"] for r in records[:600] if "error" in r}
    assert set(errors) == set(bad)
    assert "invalid JSON" in errors[5] and "'sentence'" in errors[50] and "'sentence'" in errors[100]
    assert "blank 'mention'" in errors[200] and "image rejected" in errors[300] and "JSON object" in errors[400]
    assert "missing 'mention'" in errors[450] and "out of range" in errors[500]
    linked = [r for r in records[:600] if "error" not in r]
    assert all(len(r["candidates"]) == 2 for r in linked)
    assert any(r["mention"] == "UNCLE" and r["start"] is None and r["warnings"] for r in linked)  # absent: warned
    assert records[600] == {"summary": {"lines": 600, "linked": 592, "failed": 8, "failed_lines": sorted(bad)}}
    assert "600 lines, 592 linked, 8 failed" in out.err and "line 200: blank 'mention'" in out.err


def test_cli_batch_exit_status(trained, index, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"sentence": "the alder painter", "mention": "alder"}) + "\n\n")
    assert _cli_link(trained, index, "--batch", str(good), "--no-explain") == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert records[-1]["summary"] == {"lines": 1, "linked": 1, "failed": 0, "failed_lines": []}
    assert _cli_link(trained, index, "--batch", str(tmp_path / "nope.jsonl")) == 2
    assert "batch file not found" in capsys.readouterr().err


def test_cli_link_keep_model_sets_the_shortlist_depth(trained, index, capsys):
    sizes = {}
    for keep in ("0", "5"):
        _cli_link(
            trained, index, "--sentence", "the alder painter near the river", "--mention", "alder",
            "--shortlist", "3", "--keep-model", keep, "--no-explain",
        )  # fmt: skip
        sizes[keep] = json.loads(capsys.readouterr().out)["shortlist_size"]
    assert sizes["0"] == 3 and 3 < sizes["5"] <= 8
