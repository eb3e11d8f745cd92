"""Tests for mimic.data.formats: the official release, MELBench, JSONL, dispatch and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mimic.data import official
from mimic.data.formats import load_dataset
from mimic.data.jsonl import load_jsonl_dataset, write_jsonl_dataset
from mimic.data.melbench import load_melbench
from mimic.data.mentions import locate_mention
from mimic.data.official import load_official, write_official
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

MELBENCH_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


def _img(path: Path, colour=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", (4, 4), colour).save(path, fmt)
    return str(path)


def _dataset(src: Path) -> Dataset:
    """A small in-memory dataset with images (png and jpg), aliases, a dotted image name, no-image mentions."""
    ents = [
        Entity(
            "Q10",
            "Paris",
            "capital of France",
            aliases=["Paree"],
            images=[_img(src / "e" / "paris.png"), _img(src / "e" / "paris2.jpg")],
        ),
        Entity("Q2", "Paris Hilton", "media personality", images=[]),
        Entity("Q7", "Tom & Jerry 100%", "cartoon", images=[_img(src / "e" / "tj.png")]),
    ]
    m = [
        Mention("a.1", "Paris is lovely in spring", "Paris", "Q10", _img(src / "m" / "a.1.v2.png"), 0, 5),
        Mention("a/2", "A photo of paris hilton", "Paris Hilton", "Q2", None),
        Mention("a:2", "Tom & Jerry 100% forever", "Tom & Jerry 100%", "Q7", _img(src / "m" / "tj.jpg")),
        Mention("b1", "Nobody knows", "nobody", "Q2", _img(src / "m" / "a.1.v2.png")),  # shared image
    ]
    return Dataset(KnowledgeBase(ents), {"train": m[:2], "dev": m[2:3], "test": m[3:]}, name="tiny")


def _official_raw(
    root: Path, *, kb=None, qid2id=None, splits=None, prefix="WIKIMEL_", mention_dir="mention_image"
) -> Path:
    """Write an official-layout directory from raw records (so tests control every byte)."""
    root.mkdir(parents=True, exist_ok=True)
    if kb is None:
        kb = [
            {
                "id": 1,
                "type": "entity",
                "entity_name": "Tom%20Hanks",
                "attr": "actor",
                "image_list": ["th.png", "gone.png"],
            },
            {"id": 0, "type": "entity", "entity_name": "Paris", "attr": "city", "image_list": []},
        ]
    if qid2id is None:
        qid2id = {"Q90": 0, "Q2": 1}
    if splits is None:
        splits = {
            "train": [
                {
                    "id": "t0",
                    "mentions": "Tom%20Hanks",
                    "sentence": "tom hanks smiles",
                    "imgPath": "x.png",
                    "answer": "Q2",
                    "entities": "Tom Hanks",
                },
                {"mentions": "Paris", "sentence": "In Paris.", "imgPath": "", "answer": "Q90"},
                {"mentions": "who", "sentence": "who is it", "imgPath": "", "answer": "nil"},
            ],
            "dev": [{"mentions": "Paris", "sentence": "Paris again", "imgPath": "nothere.jpg", "answer": "Q90"}],
            "test": [{"mentions": "Paris", "sentence": "Paris", "imgPath": "", "answer": "NIL"}],
        }
    (root / "kb_entity.json").write_text(json.dumps(kb))
    (root / "qid2id.json").write_text(json.dumps(qid2id) + "\n")
    for split, rows in splits.items():
        (root / f"{prefix}{split}.json").write_text(json.dumps(rows))
    _img(root / "kb_image" / "th.png")
    _img(root / mention_dir / "x.jpg")  # the authors converted mention images to jpg
    return root


def _summary(ds: Dataset):
    """What a round trip must preserve."""
    kb = [(e.id, e.name, e.text, e.aliases, len(e.images)) for e in ds.kb]
    splits = {
        s: [(m.id, m.mention, m.sentence, m.answer, m.image is not None) for m in ms] for s, ms in ds.splits.items()
    }
    return kb, splits


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------
# Official release
# ------------------------------------------------------------------------------------------------


def test_official_round_trip(tmp_path):
    ds = _dataset(tmp_path / "src")
    root = write_official(ds, tmp_path / "out" / "WikiMEL", prefix="WIKIMEL")
    assert sorted(p.name for p in root.iterdir()) == [
        "WIKIMEL_dev.json",
        "WIKIMEL_test.json",
        "WIKIMEL_train.json",
        "kb_entity.json",
        "kb_image",
        "mention_image",
        "qid2id.json",
    ]
    assert len((root / "qid2id.json").read_text().strip().splitlines()) == 1
    kb = json.loads((root / "kb_entity.json").read_text())
    assert [r["id"] for r in kb] == [0, 1, 2] and all(r["type"] == "entity" for r in kb)
    assert kb[2]["entity_name"] == "Tom%20%26%20Jerry%20100%25"
    back = load_official(root)
    assert _summary(back) == _summary(ds)
    assert back.name == "WIKIMEL"
    assert back.stats["missing_mention_images"] == 0 and back.stats["missing_entity_images"] == 0
    # images are real copies with their format kept, and the shared mention image is copied once
    assert Path(back.kb[0].images[1]).suffix == ".jpg"
    assert back.splits["train"][0].image == back.splits["test"][0].image
    assert len(list((root / "mention_image").iterdir())) == 2
    assert back.splits["train"][0].start == 0 and back.splits["train"][1].start == 11  # case-insensitive


def test_official_round_trip_desc_and_synthetic(tmp_path, synthetic_dataset, synthetic_official):
    assert _summary(load_official(synthetic_official)) == _summary(synthetic_dataset)
    root = write_official(synthetic_dataset, tmp_path / "d", prefix="wiki_diverse", text_field="desc")
    assert "desc" in json.loads((root / "kb_entity.json").read_text())[0]
    back = load_official(root, text_field="desc")
    assert back.name == "wiki_diverse" and _summary(back) == _summary(synthetic_dataset)


def test_official_symlinked_images(tmp_path):
    ds = _dataset(tmp_path / "src")
    root = write_official(ds, tmp_path / "out", prefix="RichpediaMEL", copy_images=False)
    assert (root / "kb_image" / "0_0.png").is_symlink()
    assert _summary(load_official(root)) == _summary(ds)


def test_official_loader_details(tmp_path):
    ds = load_official(_official_raw(tmp_path / "o"))
    assert [e.id for e in ds.kb] == ["Q90", "Q2"]  # qid2id position order = kb sorted by id
    assert [e.name for e in ds.kb] == ["Paris", "Tom Hanks"]
    assert ds.kb[1].text == "actor" and len(ds.kb[1].images) == 1
    train = ds.splits["train"]
    assert [m.id for m in train] == ["t0", "train-1"]
    assert train[0].mention == "Tom Hanks" and train[0].image.endswith("x.jpg")
    assert (train[0].start, train[0].end) == (0, 9)
    assert ds.splits["test"] == []
    assert ds.stats["nil_dropped"] == {"train": 1, "test": 1}
    assert ds.stats["mentions"] == {"train": 2, "dev": 1, "test": 0}
    assert ds.stats["missing_entity_images"] == 1 and ds.stats["missing_mention_images"] == 1
    assert ds.splits["dev"][0].image is None


def test_mention_images_plural_folder(tmp_path):
    root = _official_raw(tmp_path / "r", prefix="RichpediaMEL_", mention_dir="mention_images")
    ds = load_official(root)
    assert ds.name == "RichpediaMEL" and ds.splits["train"][0].image.endswith("mention_images/x.jpg")
    # an explicit folder wins over auto-detection
    (root / "imgs").mkdir()
    assert load_official(root, mention_image_dir="imgs").splits["train"][0].image is None


def test_dotted_mention_image_names(tmp_path):
    rows = [
        {"mentions": "Paris", "sentence": "Paris", "imgPath": p, "answer": "Q90"}
        for p in ("lit.a.b.png", "dir/st.a.b.png", "cut.x.y.png", "absent.a.png")
    ]
    root = _official_raw(tmp_path / "d", splits={"test": rows})
    for name in ("lit.a.b.png", "st.a.b.jpg", "cut.jpg"):
        _img(root / "mention_image" / name)
    _img(root / "mention_image" / "st.jpg")  # the official first-dot cut would pick the wrong file
    images = [m.image and Path(m.image).name for m in load_official(root).splits["test"]]
    assert images == ["lit.a.b.png", "st.a.b.jpg", "cut.jpg", None]
    stats = load_official(root).stats
    assert stats["missing_mention_images"] == 1 and stats["mention_image_renamed"] == 2


def test_text_field_variants(tmp_path):
    kb = [{"id": 0, "type": "entity", "entity_name": "A", "desc": "d0", "image_list": []}]
    splits = {"train": [{"mentions": "A", "sentence": "A b", "imgPath": "", "answer": "Q1"}]}
    root = _official_raw(tmp_path / "t", kb=kb, qid2id={"Q1": 0}, splits=splits, prefix="WikiDiverse_")
    assert load_official(root).kb[0].text == "d0"
    with pytest.raises(DataFormatError, match=r"record 0, field 'attr'"):
        load_official(root, text_field="attr")


def test_prefix_ambiguity_and_explicit(tmp_path):
    root = _official_raw(tmp_path / "a")
    (root / "WikiDiverse_test.json").write_text("[]")
    with pytest.raises(DataFormatError, match="several split-file prefixes"):
        load_official(root)
    assert load_official(root, dataset="WikiDiverse").splits == {"test": []}
    assert set(load_official(root, dataset="WIKIMEL_").splits) == {"train", "dev", "test"}


# ------------------------------------------------------------------------------------------------
# Malformed files: each error names the file, the record and the field
# ------------------------------------------------------------------------------------------------


def _kb(**changes):
    rec = {"id": 0, "type": "entity", "entity_name": "Paris", "attr": "city", "image_list": []}
    rec.update(changes)
    return [{k: v for k, v in rec.items() if v is not ...}]


def _mentions(at=0, **changes):
    """Two valid mention records, the one at index `at` changed (a value of ... removes the field)."""
    rec = {"mentions": "Paris", "sentence": "Paris", "imgPath": "", "answer": "Q1"}
    bad = {k: v for k, v in {**rec, **changes}.items() if v is not ...}
    return [bad, rec] if at == 0 else [rec, bad]


OFFICIAL_CASES = {
    "missing_field": (
        dict(kb=_kb(entity_name=...)),
        "kb_entity.json",
        "record 0, field 'entity_name'",
        "missing required field",
    ),
    "wrong_type": (dict(kb=_kb(id="0")), "kb_entity.json", "record 0, field 'id'", "expected an integer"),
    "empty_name": (dict(kb=_kb(entity_name="%20")), "kb_entity.json", "record 0, field 'entity_name'", "empty"),
    "not_entity": (dict(kb=_kb(type="relation")), "kb_entity.json", "record 0, field 'type'", "relation"),
    "bad_image_list": (
        dict(kb=_kb(image_list="a.png")),
        "kb_entity.json",
        "record 0, field 'image_list'",
        "expected a list",
    ),
    "duplicate_id": (
        dict(kb=_kb() * 2, qid2id={"Q1": 0, "Q2": 1}),
        "kb_entity.json",
        "record 1, field 'id'",
        "duplicate entity id 0",
    ),
    "qid2id_mismatch": (dict(qid2id={"Q1": 1}), "qid2id.json", "", "Q1 -> 1 is outside 0..0"),
    "unknown_answer": (
        dict(splits={"train": _mentions(answer="Q404")}),
        "WIKIMEL_train.json",
        "record 0, field 'answer'",
        "unknown entity 'Q404'",
    ),
    "empty_sentence": (
        dict(splits={"dev": _mentions(sentence=" ")}),
        "WIKIMEL_dev.json",
        "record 0, field 'sentence'",
        "non-empty",
    ),
    "missing_mention": (
        dict(splits={"test": _mentions(at=1, mentions=...)}),
        "WIKIMEL_test.json",
        "record 1, field 'mentions'",
        "missing required field",
    ),
    "mention_wrong_type": (
        dict(splits={"test": _mentions(imgPath=3)}),
        "WIKIMEL_test.json",
        "record 0, field 'imgPath'",
        "expected a string",
    ),
    "record_not_object": (dict(splits={"test": ["oops"]}), "WIKIMEL_test.json", "record 0", "JSON object"),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_official_malformed(tmp_path, case):
    kw, file, where, message = OFFICIAL_CASES[case]
    kw = {"kb": _kb(), "qid2id": {"Q1": 0}, "splits": {"train": _mentions()}, **kw}
    root = _official_raw(tmp_path / case, **kw)
    with pytest.raises(DataFormatError) as err:
        load_official(root)
    text = str(err.value)
    assert file in text and where in text and message in text, text
    assert err.value.path.endswith(file)


def test_official_invalid_json_and_top_level(tmp_path):
    root = _official_raw(tmp_path / "j")
    (root / "WIKIMEL_dev.json").write_text('[{"mentions": "a",,]')
    with pytest.raises(DataFormatError, match=r"WIKIMEL_dev\.json: invalid JSON: .* line 1 column"):
        load_official(root)
    (root / "WIKIMEL_dev.json").write_text("[]")
    (root / "kb_entity.json").write_text('{"id": 0}')
    with pytest.raises(DataFormatError, match=r"kb_entity\.json: expected a JSON list of entities, got dict"):
        load_official(root)
    (root / "kb_entity.json").write_text("[]")
    (root / "qid2id.json").write_text('["Q1"]\n')
    with pytest.raises(DataFormatError, match=r"qid2id\.json: expected a JSON object"):
        load_official(root)


def test_jsonl_malformed(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    good = {"id": "Q1", "name": "A", "text": "t"}
    (root / "kb.jsonl").write_text(json.dumps(good) + "\n\n" + "{bad json\n")
    with pytest.raises(DataFormatError, match=r"kb\.jsonl, record line 3: invalid JSON"):
        load_jsonl_dataset(root)
    (root / "kb.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataFormatError, match=r"kb\.jsonl, record line 2, field 'id': duplicate entity id 'Q1'"):
        load_jsonl_dataset(root)
    (root / "kb.jsonl").write_text(json.dumps({"id": "Q1", "name": ""}) + "\n")
    with pytest.raises(DataFormatError, match=r"record line 1, field 'name': empty entity name"):
        load_jsonl_dataset(root)
    (root / "kb.jsonl").write_text(json.dumps(good) + "\n")
    cases = [
        ({"id": "m", "sentence": "s", "mention": "s", "answer": "Q9"}, "field 'answer': unknown entity 'Q9'"),
        ({"id": "m", "sentence": "", "mention": "s", "answer": "Q1"}, "field 'sentence'"),
        ({"id": "m", "sentence": "s", "answer": "Q1"}, "field 'mention': missing required field"),
        ({"id": "m", "sentence": "s", "mention": "s"}, "field 'answer': missing required field"),
        ({"id": "m", "sentence": "s", "mention": ["s"], "answer": "Q1"}, "field 'mention': expected a string"),
        ({"id": "m", "sentence": "s", "mention": "s", "start": 0, "end": 9, "answer": "Q1"}, "field 'start'"),
        ([1, 2], "record line 1: expected a JSON object"),
    ]
    for row, message in cases:
        (root / "dev.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(DataFormatError) as err:
            load_jsonl_dataset(root)
        assert "dev.jsonl, record line 1" in str(err.value) and message in str(err.value), str(err.value)


def test_melbench_malformed(tmp_path):
    path = tmp_path / "mel.json"
    ok = {"id": "1", "sentence": "s", "mentions": "s", "entities": "S", "answer": "Q1"}
    cases = [
        (
            {"1": {**ok, "mentions": ["a", "b"], "entities": ["A"], "answer": ["Q1", "Q2"]}},
            "mel.json, record 1, field 'mentions': parallel lists have different lengths",
        ),
        ({"1": {**ok, "id": " "}}, "record 1, field 'id': must be a non-empty id"),
        ({"1": {**ok, "id": 1.5}}, "record 1, field 'id': expected a string or an integer"),
        ({"1": {**ok, "sentence": ""}}, "record 1, field 'sentence'"),
        ({"1": {**ok, "entities": ""}}, "record 1, field 'entities': item 0: empty entity name"),
        ({"1": {k: v for k, v in ok.items() if k != "answer"}}, "record 1, field 'answer': missing required field"),
        (
            {"1": {**ok, "answer": ["Q1", 2], "mentions": ["a", "b"], "entities": ["A", "B"]}},
            "record 1, field 'answer': item 1 must be a string",
        ),
        ([ok], "mel.json: expected a JSON object keyed by sample id, got list"),
    ]
    for raw, message in cases:
        path.write_text(json.dumps(raw))
        with pytest.raises(DataFormatError) as err:
            load_melbench(path)
        assert message in str(err.value), str(err.value)
    path.write_text("{")
    with pytest.raises(DataFormatError, match=r"mel\.json: invalid JSON"):
        load_melbench(path)


# ------------------------------------------------------------------------------------------------
# MELBench
# ------------------------------------------------------------------------------------------------


def test_melbench_string_and_list_forms(tmp_path):
    raw = {
        "10": {
            "id": "10",
            "sentence": "Powers with Noel Harrison",
            "mentions": ["Noel Harrison", "Powers"],
            "entities": ["Noel Harrison", "Stefanie Powers"],
            "answer": ["Q532915", "Q256474"],
        },
        "17": {
            "id": 17,
            "sentence": "noel harrison sings",
            "mentions": "Noel Harrison",
            "entities": "Noel J. Harrison",
            "answer": "Q532915",
        },
        "28": {"id": "28", "sentence": "Someone", "mentions": "Someone", "entities": "x", "answer": "nil"},
        "39": {
            "id": "39",
            "sentence": "Q2 vs Q10",
            "mentions": ["Q10", "Q2"],
            "entities": ["Ten", "Two"],
            "answer": ["Q10", "Q2"],
        },
    }
    path = tmp_path / "Mini-MEL.json"
    path.write_text(json.dumps(raw))
    ds = load_melbench(path)
    assert ds.name == "Mini-MEL"
    assert {s: [m.id for m in ms] for s, ms in ds.splits.items()} == {
        "train": ["10-0", "10-1"],
        "dev": ["17-0"],
        "test": ["39-0", "39-1"],
    }
    assert [e.id for e in ds.kb] == ["Q2", "Q10", "Q256474", "Q532915"]  # numeric QID order
    harrison = ds.kb[ds.kb.position("Q532915")]
    assert harrison.name == "Noel Harrison" and harrison.aliases == ["Noel J. Harrison"] and harrison.text == ""
    dev = ds.splits["dev"][0]
    assert (dev.start, dev.end, dev.answer, dev.image) == (0, 13, "Q532915", None)
    assert ds.splits["train"][1].start == 0  # "Powers" found case-sensitively at 0
    assert ds.stats["nil_dropped"] == {"test": 1} and ds.stats["mentions"] == {"train": 2, "dev": 1, "test": 2}
    custom = load_melbench(path, split_rule=lambda i: "all")
    assert list(custom.splits) == ["all"] and len(custom.splits["all"]) == 5


def test_melbench_real_file():
    if not MELBENCH_FILE.is_file():
        pytest.skip(f"MELBench file not found at {MELBENCH_FILE} (see shared/data/melbench/README.md)")
    ds = load_dataset(MELBENCH_FILE)
    sizes = {s: len(ms) for s, ms in ds.splits.items()}
    assert sum(sizes.values()) == 25_846
    assert len(ds.kb) == 17_391
    assert set(sizes) == {"train", "dev", "test"}
    assert sizes == {"train": 18_091, "dev": 2_597, "test": 5_158}
    for m in ds.splits["dev"]:
        assert int(m.id.split("-")[0]) % 10 == 7


# ------------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    ds = _dataset(tmp_path / "src")
    ds.splits["train"].append(Mention("n1", "nil here", "nil", None))
    root = write_jsonl_dataset(ds, tmp_path / "jsonl")
    assert sorted(p.name for p in root.iterdir()) == ["dev.jsonl", "kb.jsonl", "test.jsonl", "train.jsonl"]
    first = json.loads((root / "kb.jsonl").read_text().splitlines()[0])
    assert Path(first["images"][0]).is_absolute()  # outside root: absolute, nothing copied
    back = load_jsonl_dataset(root)
    ds.splits["train"].pop()
    assert _summary(back) == _summary(ds)
    assert back.stats["nil_dropped"] == {"train": 1}
    assert [(m.start, m.end) for m in back.splits["train"]] == [(0, 5), (11, 23)]
    assert load_dataset(root).name == "jsonl"


def test_jsonl_relative_images_and_synonyms(tmp_path):
    root = tmp_path / "ds"
    img = _img(root / "img" / "e.png")
    (root / "kb.jsonl").write_text(
        json.dumps({"id": 5, "name": "E", "description": "about E", "images": ["img/e.png", "img/missing.png"]}) + "\n"
    )
    (root / "extra.jsonl").write_text(
        json.dumps({"id": 1, "sentence": "see E", "mention": "E", "image": img, "answer": "5"})
        + "\n"
        + json.dumps({"id": 2, "sentence": "x", "mention": "x", "answer": "nil"})
        + "\n"
    )
    ds = load_jsonl_dataset(root)
    assert ds.kb[0].id == "5" and ds.kb[0].text == "about E" and ds.kb[0].images == [img]
    assert ds.stats["missing_entity_images"] == 1 and ds.stats["nil_dropped"] == {"extra": 1}
    assert ds.splits["extra"][0].id == "1" and ds.splits["extra"][0].start == 4
    # rewrite in place: images inside root are written relative and survive the swap
    write_jsonl_dataset(ds, root, overwrite=True)
    assert json.loads((root / "kb.jsonl").read_text())["images"] == ["img/e.png"]
    assert _summary(load_jsonl_dataset(root)) == _summary(ds)
    assert _no_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# Dispatch, spans, atomic writes
# ------------------------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    assert load_dataset(_official_raw(tmp_path / "o")).name == "WIKIMEL"
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataFormatError, match="official split file"):
        load_dataset(tmp_path / "list.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="unrecognised dataset directory"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="format must be"):
        load_dataset(tmp_path / "o", format="xml")


def test_locate_mention():
    assert locate_mention("Paris", "In Paris, paris") == (3, 8)
    assert locate_mention("PARIS", "In Paris") == (3, 8)
    assert locate_mention("Lyon", "In Paris") == (None, None)
    assert locate_mention("", "x") == (None, None)


def test_atomic_write_failure_leaves_nothing(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "src")
    real = official.write_json

    def failing(path, obj, **kw):
        if path.name.endswith("_test.json"):
            raise OSError("disk full")
        real(path, obj, **kw)

    monkeypatch.setattr(official, "write_json", failing)
    with pytest.raises(OSError, match="disk full"):
        write_official(ds, tmp_path / "out" / "WikiMEL")
    assert not (tmp_path / "out" / "WikiMEL").exists() and _no_leftovers(tmp_path / "out") == []
    monkeypatch.undo()

    ds.kb[1].text = object()  # not JSON-serialisable, discovered mid-write
    with pytest.raises(TypeError):
        write_jsonl_dataset(ds, tmp_path / "j")
    assert not (tmp_path / "j").exists() and _no_leftovers(tmp_path) == []


def test_atomic_overwrite(tmp_path):
    ds = _dataset(tmp_path / "src")
    root = write_official(ds, tmp_path / "o")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_official(ds, root)
    ds.kb[0].text = "changed"
    ds.kb[1].text = object()
    with pytest.raises(TypeError):
        write_official(ds, root, overwrite=True)
    assert load_official(root).kb[0].text == "capital of France"  # old dataset intact
    ds.kb[1].text = "fine"
    write_official(ds, root, overwrite=True)
    assert load_official(root).kb[0].text == "changed"
    assert _no_leftovers(tmp_path) == []
