"""Import of pre-annotated mentions, exports of accepted links (JSONL, CSV) and of a training set in
the official MIMIC layout that the core loader and `python -m mimic train` read directly."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from db import InvalidInput, UnknownEntity, open_store
from db.export import split_of
from db.testing import png_bytes
from mimic.data.formats import load_dataset


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    for q, name in [("Q1", "Paris"), ("Q2", "Paris Hilton"), ("Q3", "Paris, Texas")]:
        s.upsert_entity(q, name, f"about {name}")
    for n, role in [("ana", "annotator"), ("bob", "annotator"), ("rita", "reviewer")]:
        s.add_annotator(n, role)
    yield s
    s.close()


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_import_pre_annotated_mentions_with_candidates(store, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "eiffel.png").write_bytes(png_bytes((10, 20, 30)))
    src = _write_jsonl(
        tmp_path / "pre.jsonl",
        [
            {
                "id": "s1",
                "source": "news",
                "sentence": "Paris is lovely in spring.",
                "mention": "Paris",
                "image": "img/eiffel.png",
                "model_version": "clip-v1",
                "candidates": [
                    {"entity_id": "Q1", "S": 0.8, "S_T": 0.7, "S_V": 0.9, "S_C": 0.6},
                    {"entity_id": "Q2", "S": 0.75, "S_T": 0.8, "S_V": 0.1, "S_C": 0.2},
                ],
            },
            {"id": "s2", "sentence": "Paris Hilton arrived.", "mention": "Paris Hilton", "start": 0, "end": 12},
        ],
    )
    r = store.import_mentions(src)
    assert (r.created, r.existing, r.predictions, r.errors) == (2, 0, 1, [])
    m = store.get_mention("s1")
    assert m.source == "news" and (m.start, m.end) == (0, 5) and m.margin == pytest.approx(0.05)
    assert open(m.image_path, "rb").read() == png_bytes((10, 20, 30))
    p = store.predictions("s1")[0]
    assert (p.model_version, [c.entity_id for c in p.candidates], p.candidates[1].s_v) == ("clip-v1", ["Q1", "Q2"], 0.1)
    again = store.import_mentions(src)  # re-import: mentions found, new predictions added
    assert (again.created, again.existing, again.predictions) == (0, 2, 1)
    assert store.count_mentions() == 2


def test_import_checks_everything_before_writing(store, tmp_path):
    good = {
        "id": "ok",
        "sentence": "Paris again.",
        "mention": "Paris",
        "model_version": "v",
        "candidates": [{"entity_id": "Q1", "S": 1.0}],
    }
    bad = [
        {
            "id": "b1",
            "sentence": "Paris.",
            "mention": "Paris",
            "model_version": "v",
            "candidates": [{"entity_id": "Q404", "S": 1.0}],
        },
        {"id": "b2", "sentence": "short", "mention": "short", "start": 2, "end": 40},
        {"id": "b3", "sentence": "Paris.", "mention": "Paris", "candidates": [{"entity_id": "Q1", "S": 1}]},
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", [good] + bad)
    with open(path, "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(UnknownEntity, match=r"line 2\.candidates\[0\]\.entity_id"):
        store.import_mentions(path)
    assert store.count_mentions() == 0  # nothing written, not even the good line
    r = store.import_mentions(path, on_error="skip")
    assert r.created == 1 and len(r.errors) == 4
    assert any("line 3.end" in e for e in r.errors) and any("model_version" in e for e in r.errors)
    assert any("line 5" in e and "JSON" in e for e in r.errors)
    with pytest.raises(InvalidInput, match="on_error"):
        store.import_mentions(path, on_error="ignore")


def _annotate(store):
    ids = {}
    for i, (sent, men) in enumerate(
        [
            ("Paris is big.", "Paris"),
            ("I love Paris.", "Paris"),
            ("Paris Hilton sings.", "Paris Hilton"),
            ("Paris, Texas is a film.", "Paris"),
            ("Visit Paris now.", "Paris"),
            ("Where is Paris?", "Paris"),
        ]
    ):
        ids[i] = store.add_mention(sent, men, uid=f"u{i}", image=png_bytes((i * 30, 5, 5)) if i % 2 else None).id
        store.add_prediction(ids[i], "v0", [{"entity_id": "Q1", "S": 0.6}, {"entity_id": "Q2", "S": 0.5}])
    store.submit("ana", ids[0], entity_id="Q1", seconds_spent=3)
    store.submit("ana", ids[1], entity_id="Q1")
    store.submit("bob", ids[1], entity_id="Q2")  # tie between ana and bob ...
    store.submit("ana", ids[2], entity_id="Q2")
    store.submit("bob", ids[2], entity_id="Q2")
    store.submit("ana", ids[3], entity_id="Q1")
    store.submit("bob", ids[3], entity_id="Q1")
    store.submit("rita", ids[3], entity_id="Q3")  # ... a reviewer overrides the majority
    store.submit("ana", ids[4], "nil")  # not in the list: no training link
    store.skip("ana", ids[5])
    return ids


def test_links_export_jsonl_and_csv_verbatim(store, tmp_path):
    ids = _annotate(store)
    hostile = "He said \"Paris\", =cmd|' /C calc'!A0, <img src=x onerror=alert(1)>\nnew line"
    m = store.add_mention(hostile, "Paris", uid="hostile")
    store.submit("bob", m.id, entity_id="Q1", comment=hostile)
    n = store.export_links_jsonl(tmp_path / "out" / "links.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "out" / "links.jsonl").read_text(encoding="utf-8").splitlines()]
    assert n == len(rows) == 10  # current decisions; the skip is not a link
    by = {(r["mention_uid"], r["annotator"]): r for r in rows}
    first = by[("u0", "ana")]
    assert (first["entity_name"], first["decision"], first["predicted_entity_id"], first["corrected"]) == (
        "Paris",
        "entity",
        "Q1",
        False,
    )
    assert by[("u2", "bob")]["corrected"] is True and by[("u4", "ana")]["decision"] == "nil"
    assert by[("u1", "ana")]["image"].endswith(".png")
    assert by[("hostile", "bob")]["sentence"] == hostile and by[("hostile", "bob")]["comment"] == hostile
    assert store.export_links_csv(tmp_path / "out" / "links.csv") == 10
    df = pd.read_csv(tmp_path / "out" / "links.csv", keep_default_na=False, dtype=str)
    assert len(df) == 10 and df.loc[df.mention_uid == "hostile", "sentence"].item() == hostile
    assert list(df.columns)[:4] == ["annotation_id", "request_id", "mention_uid", "source"]
    assert ids


def test_training_set_in_the_official_layout_loads_with_the_core_loader(store, tmp_path):
    _annotate(store)
    out = tmp_path / "export"
    exp = store.export_training_set(out)
    assert exp.conflicts == 1 and exp.not_entity == 1  # u1 tied, u4 NIL
    assert sum(exp.splits.values()) == 3 and exp.entities == 3
    for f in ("kb_entity.json", "qid2id.json", "WIKIMEL_train.json", "WIKIMEL_dev.json", "WIKIMEL_test.json"):
        assert (out / f).is_file(), f
    ds = load_dataset(out)
    got = {m.id: m.answer for split in ds.splits.values() for m in split}
    assert got == {"u0": "Q1", "u2": "Q2", "u3": "Q3"}  # reviewer wins on u3
    assert [e.id for e in ds.kb] == ["Q1", "Q2", "Q3"] and ds.kb[0].name == "Paris"
    for split in ds.splits.values():
        for m in split:
            assert split_of(m.id, (0.8, 0.1, 0.1)) == [k for k, v in ds.splits.items() if m in v][0]
    # the annotations that went in: every supporting current decision
    used = {store.get_annotation(a).mention_uid for a in exp.annotation_ids}
    assert used == {"u0", "u2", "u3"}
    assert store.create_training_run(export_dir=str(out), annotation_ids=exp.annotation_ids).annotations == 4
    with pytest.raises(FileExistsError):
        store.export_training_set(out)
    jl = store.export_training_set(tmp_path / "jsonl", layout="jsonl")
    assert {m.id for s in load_dataset(jl.path).splits.values() for m in s} == {"u0", "u2", "u3"}


def test_export_then_train_with_python_m_mimic_train(tmp_path, synthetic_dataset, tiny_clip_dir):
    """The synthetic dataset goes through the store (KB import, mentions with images, one decision per
    mention), is exported, reloaded with the core loader (same links) and trained on by the CLI."""
    from mimic.cli import main

    s = open_store(tmp_path / "data")
    try:
        s.import_kb(synthetic_dataset.kb)
        s.add_annotator("ana")
        gold = {}
        records = []
        for split in synthetic_dataset.splits.values():
            for m in split:
                records.append(
                    {
                        "uid": m.id,
                        "sentence": m.sentence,
                        "mention": m.mention,
                        "start": m.start,
                        "end": m.end,
                        "image": m.image,
                    }
                )
                gold[m.id] = m.answer
        assert s.import_mentions(records).created == len(gold)
        s.submit_many(
            [{"annotator": "ana", "mention": uid, "entity_id": q, "seconds_spent": 2.0} for uid, q in gold.items()]
        )
        exp = s.export_training_set(tmp_path / "export", fractions=(0.7, 0.3, 0.0))
        ds = load_dataset(exp.path)
        assert {m.id: m.answer for sp in ds.splits.values() for m in sp} == gold
        with_image = {m.id for sp in synthetic_dataset.splits.values() for m in sp if m.image}
        assert {m.id for sp in ds.splits.values() for m in sp if m.image} == with_image
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a smoke run: one thread is robust on a busy 2-core machine
        try:
            rc = main(
                [
                    "train",
                    "--data",
                    exp.path,
                    "--output",
                    str(tmp_path / "run"),
                    "--backbone",
                    str(tiny_clip_dir),
                    "--freeze-backbone",
                    "--epochs",
                    "1",
                    "--batch-size",
                    "8",
                    "--no-progress",
                ]
            )
        finally:
            torch.set_num_threads(threads)
        assert rc in (0, None)
        assert (tmp_path / "run" / "best" / "config.json").is_file()
    finally:
        s.close()


def test_bulk_import_works_without_insert_returning(store, monkeypatch):
    """SQLite before 3.35 has no RETURNING: the import falls back to reading the new ids back."""
    monkeypatch.setattr(store.engine.dialect, "insert_executemany_returning", False)
    r = store.import_mentions(
        [
            {
                "uid": f"old{i}",
                "sentence": f"Paris {i}",
                "mention": "Paris",
                "model_version": "v",
                "candidates": [{"entity_id": "Q1", "S": 0.9}, {"entity_id": "Q2", "S": 0.1 * i}],
            }
            for i in range(5)
        ]
    )
    assert (r.created, r.predictions) == (5, 5)
    assert store.predictions("old3")[0].margin == pytest.approx(0.6)


# ------------------------------------------------------------------------------------------------
# Exports carry every image by a relative path (demo KB seeded as on the app's first start)
# ------------------------------------------------------------------------------------------------
def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.fixture
def demo_store(tmp_path):
    """The demo KB loaded as the app's first start does (`app.context._seed_kb`), the demo example
    mentions (with their query images) stored and each linked to its answer by one annotator."""
    from app.config import AppConfig
    from app.context import _load_examples, _seed_kb

    cfg = AppConfig(data_dir=tmp_path / "data")
    s = open_store(cfg.data_dir)
    _seed_kb(s, cfg)
    s.add_annotator("ana")
    examples = _load_examples(cfg)
    assert examples and any(m.image for m in examples)
    for m in examples:
        s.add_mention(m.sentence, m.mention, m.start, m.end, image=m.image, uid=m.id)
        s.submit("ana", m.id, entity_id=m.answer)
    yield s, examples
    s.close()


def test_demo_kb_training_export_carries_every_image(demo_store, tmp_path):
    from mimic.data.kb_files import load_kb
    from mimic.data.official import load_official

    s, examples = demo_store
    demo_kb, _ = load_kb(Path(__file__).resolve().parents[1] / "assets" / "demo_kb" / "kb.jsonl")
    kb = s.knowledge_base()
    with_images = [e.id for e in demo_kb if e.images]
    assert with_images  # the demo KB has entity images, and the store kept every one of them
    assert [e.id for e in kb if e.images] == sorted(with_images)
    n_images = sum(len(e.images) for e in kb)
    assert n_images == sum(len(e.images) for e in demo_kb)

    out = tmp_path / "export"
    exp = s.export_training_set(out)
    assert exp.entities == len(demo_kb) and sum(exp.splits.values()) == len(examples)
    assert len(list((out / "kb_image").iterdir())) == n_images  # one file per entity image
    ds = load_official(out)
    assert sum(len(e.images) for e in ds.kb) == n_images
    assert all(Path(p).is_file() and Path(p).is_relative_to(out) for e in ds.kb for p in e.images)
    mentions = [m for sp in ds.splits.values() for m in sp]
    assert sum(1 for m in mentions if m.image) == sum(1 for m in examples if m.image)
    assert all(Path(m.image).is_file() and Path(m.image).is_relative_to(out) for m in mentions if m.image)


def test_demo_kb_jsonl_training_export_carries_every_image_relatively(demo_store, tmp_path):
    """The project's JSONL training layout too: images copied beside kb.jsonl, named relatively
    (kb_image/, mention_image/), never by the store's paths; without copy_images it names the store's files."""
    s, examples = demo_store
    kb = s.knowledge_base()
    n_entity_images = len({p for e in kb for p in e.images})
    n_mention_images = len({open(m.image, "rb").read() for m in examples if m.image})
    out = tmp_path / "export-jsonl"
    exp = s.export_training_set(out, layout="jsonl")
    assert exp.entities == len(kb) and sum(exp.splits.values()) == len(examples)
    text = "".join(p.read_text(encoding="utf-8") for p in out.glob("*.jsonl"))
    assert str(s.settings.data_dir) not in text and str(tmp_path) not in text
    rows = [json.loads(x) for x in (out / "kb.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(len(r["images"]) for r in rows) == sum(len(e.images) for e in kb)
    assert all(p.startswith("kb_image/") for r in rows for p in r["images"])
    assert len(list((out / "kb_image").iterdir())) == n_entity_images
    assert len(list((out / "mention_image").iterdir())) == n_mention_images
    ds = load_dataset(out)
    assert sum(len(e.images) for e in ds.kb) == sum(len(e.images) for e in kb)
    assert all(Path(p).is_file() and Path(p).is_relative_to(out) for e in ds.kb for p in e.images)
    mentions = [m for sp in ds.splits.values() for m in sp]
    assert sum(1 for m in mentions if m.image) == sum(1 for m in examples if m.image)
    assert all(Path(m.image).is_file() and Path(m.image).is_relative_to(out) for m in mentions if m.image)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export-jsonl")] == []  # no temporary left
    with pytest.raises(FileExistsError):
        s.export_training_set(out, layout="jsonl")
    linked = s.export_training_set(tmp_path / "linked", layout="jsonl", copy_images=False)
    assert not (Path(linked.path) / "kb_image").exists()
    assert all(Path(p).is_file() for e in load_dataset(linked.path).kb for p in e.images)


def test_link_exports_name_images_relatively_never_by_server_path(demo_store, tmp_path):
    import zipfile

    s, examples = demo_store
    server_paths = (str(tmp_path), str(Path(__file__).resolve().parents[1]))
    n_images = len({open(m.image, "rb").read() for m in examples if m.image})

    def check(rows):
        assert len(rows) == len(examples)
        assert sum(1 for r in rows if r["image"]) == sum(1 for m in examples if m.image)
        for r in rows:
            for text in _strings(r):
                assert not Path(text).is_absolute() and not any(p in text for p in server_paths), text
            if r["image"]:
                assert r["image"].startswith("mention_image/")

    s.export_links_jsonl(tmp_path / "a" / "links.jsonl")
    check([json.loads(x) for x in (tmp_path / "a" / "links.jsonl").read_text(encoding="utf-8").splitlines()])
    assert not (tmp_path / "a" / "mention_image").exists()  # a single file unless asked
    s.export_links_csv(tmp_path / "a" / "links.csv", copy_images=True)
    df = pd.read_csv(tmp_path / "a" / "links.csv", keep_default_na=False, dtype=str)
    check([{k: v or None for k, v in r.items()} for r in df.to_dict("records")])
    for r in df.to_dict("records"):  # relative to the export's folder, which now holds the files
        assert not r["image"] or (tmp_path / "a" / r["image"]).is_file()
    assert len(list((tmp_path / "a" / "mention_image").iterdir())) == n_images

    for fmt in ("jsonl", "csv"):
        z = tmp_path / f"links-{fmt}.zip"
        assert s.export_links_zip(z, fmt=fmt) == len(examples)
        with zipfile.ZipFile(z) as zf:
            names = set(zf.namelist())
            assert f"links.{fmt}" in names and all(not Path(n).is_absolute() for n in names)
            if fmt == "jsonl":
                rows = [json.loads(x) for x in zf.read("links.jsonl").decode("utf-8").splitlines()]
            else:
                import io

                rows = pd.read_csv(io.BytesIO(zf.read("links.csv")), keep_default_na=False, dtype=str)
                rows = [{k: v or None for k, v in r.items()} for r in rows.to_dict("records")]
            check(rows)
            assert {r["image"] for r in rows if r["image"]} <= names  # self-contained
            assert len([n for n in names if n.startswith("mention_image/")]) == n_images
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mimic-export-")) == []


def test_label_studio_export_reads_back(demo_store, tmp_path):
    """The Label Studio zip read back as Label Studio reads it: every `$key` of the labeling config
    is in each task's data, every result names a control of the config with its type and targets
    its object, choices come from the task's own candidates, spans cut the mention out of the text,
    and the images the tasks name are in the zip."""
    import xml.etree.ElementTree as ET
    import zipfile

    s, examples = demo_store
    s.add_annotator("rita", role="reviewer")
    first, second = examples[0], examples[1]
    pred = s.add_prediction(first.id, "zero-shot-v1", [("D002", 0.61), (first.answer, 0.55), ("D003", 0.2)])
    # an entity outside the model's list (found by a KB search) becomes a choice of the task as well
    s.submit("rita", first.id, entity_id="D040", comment="the district, <b>not</b> the cat")
    s.submit("rita", second.id, decision="nil")
    z = tmp_path / "ls.zip"
    assert s.export_label_studio(z) == len(examples)
    with zipfile.ZipFile(z) as zf:
        names = set(zf.namelist())
        tasks = json.loads(zf.read("label-studio/tasks.json"))
        config = ET.fromstring(zf.read("label-studio/label_config.xml"))
    assert "label-studio/README.md" in names and all(not Path(n).is_absolute() for n in names)
    tags = {el.get("name"): el for el in config.iter() if el.get("name")}
    keys = {el.get("value")[1:] for el in config.iter() if (el.get("value") or "").startswith("$")}
    assert keys == {"image", "text", "candidates"}
    control_type = {"labels": "Labels", "choices": "Choices", "textarea": "TextArea"}
    by_uid = {t["data"]["mention_uid"]: t for t in tasks}
    assert set(by_uid) == {m.id for m in examples}
    for m in examples:
        t = by_uid[m.id]
        d = t["data"]
        assert keys <= set(d) and d["text"] == m.sentence and d["mention"] == m.mention
        assert set(t) == {"data", "annotations", "predictions"}
        if m.image:
            assert f"label-studio/{d['image_file']}" in names and d["image"].endswith(Path(d["image_file"]).name)
            assert d["image"].startswith("/data/local-files/?d=label-studio/images/")
        else:
            assert d["image"] == "" and d["image_file"] is None
        values = [c["value"] for c in d["candidates"]]
        assert values[-2:] == ["NIL", "AMBIGUOUS"] and len(values) == len(set(values))
        assert len(t["annotations"]) == len(d["decisions"])
        for ann, dec in zip(t["annotations"], d["decisions"]):
            assert ann["ground_truth"] == (dec["role"] in ("reviewer", "admin"))
            for r in ann["result"]:
                control = tags[r["from_name"]]
                assert control.tag == control_type[r["type"]] and control.get("toName") == r["to_name"] == "text"
                if r["type"] == "labels":
                    assert d["text"][r["value"]["start"] : r["value"]["end"]] == r["value"]["text"] == m.mention
                if r["type"] == "choices":
                    (choice,) = r["value"]["choices"]
                    assert choice in values
                    assert choice == {"entity": dec["entity_id"], "nil": "NIL"}.get(dec["decision"], "AMBIGUOUS")
    t = by_uid[first.id]
    assert [x["annotator"] for x in t["data"]["decisions"]] == ["ana", "rita"]
    assert [c["value"] for c in t["data"]["candidates"]] == ["D002", first.answer, "D003", "D040", "NIL", "AMBIGUOUS"]
    assert t["data"]["candidates"][3]["html"] == "<b>Shuttle</b> (D040)"
    assert t["annotations"][1]["result"][-1]["value"] == {"text": ["the district, <b>not</b> the cat"]}
    (p,) = t["predictions"]
    assert p["model_version"] == pred.model_version and p["score"] == pytest.approx(0.61)
    assert p["result"][0]["value"]["choices"] == ["D002"]
    assert by_uid[second.id]["annotations"][1]["result"][1]["value"]["choices"] == ["NIL"]
    assert by_uid[second.id]["predictions"] == []


def test_csv_export_neutralises_formula_cells_unless_raw(store, tmp_path):
    dangerous = ["=1+2", "+SUM(A1)", "-2+3", "@cmd", "\tTAB", "\rCR"]
    for i, text in enumerate(dangerous):
        m = store.add_mention(f"{text} Paris", "Paris", uid=f"f{i}")
        store.submit("ana", m.id, entity_id="Q1", comment=text)
    safe = store.add_mention("Paris - 2 = fine", "Paris", uid="safe")
    store.submit("ana", safe.id, entity_id="Q1", comment="a - b")

    assert store.export_links_csv(tmp_path / "safe.csv") == len(dangerous) + 1
    df = pd.read_csv(tmp_path / "safe.csv", keep_default_na=False, dtype=str).set_index("mention_uid")
    for i, text in enumerate(dangerous):
        assert df.loc[f"f{i}", "comment"] == "'" + text
        assert df.loc[f"f{i}", "sentence"] == f"'{text} Paris"
    assert df.loc["safe", "sentence"] == "Paris - 2 = fine" and df.loc["safe", "comment"] == "a - b"
    for col in df.columns:  # no cell of the safe export starts like a formula
        assert not any(str(v).startswith(("=", "+", "-", "@", "\t", "\r")) for v in df[col] if v), col

    store.export_links_csv(tmp_path / "raw.csv", raw_cells=True)
    raw = pd.read_csv(tmp_path / "raw.csv", keep_default_na=False, dtype=str).set_index("mention_uid")
    for i, text in enumerate(dangerous):
        assert raw.loc[f"f{i}", "comment"] == text
    # JSONL stays verbatim: it is data, not a spreadsheet
    store.export_links_jsonl(tmp_path / "l.jsonl")
    rows = {r["mention_uid"]: r for r in map(json.loads, (tmp_path / "l.jsonl").read_text().splitlines())}
    assert rows["f0"]["comment"] == "=1+2"
