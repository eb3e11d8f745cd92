"""The committed demo knowledge base (`assets/demo_kb`): loadable, ambiguous by name, decided by
images, and reproducible by `assets.demo_builder.build.build_demo_assets`."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assets.demo_builder.build import build_demo_assets, demo_kb_path, load_demo_kb
from assets.demo_builder.entities import ENTITIES, EXAMPLES, ambiguity_groups
from mimic.data.images import load_image
from mimic.data.jsonl import load_jsonl_dataset
from mimic.data.kb_files import load_kb

DEMO = demo_kb_path()


def _thumb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((16, 16), Image.BILINEAR), np.float64)


def _hist(path) -> np.ndarray:
    """64-bin colour histogram (4 levels per channel), normalised."""
    a = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR), np.int64) // 64
    h = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64).astype(np.float64)
    return h / h.sum()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def kb():
    kb, report = load_kb(DEMO / "kb.jsonl")
    assert report.rejected == [] and report.missing_images == [], report.summary()
    return kb


@pytest.fixture(scope="module")
def dataset():
    return load_jsonl_dataset(DEMO)


def test_kb_loads_with_every_image(kb):
    assert DEMO == Path(__file__).resolve().parents[1] / "assets" / "demo_kb"
    assert len(kb) >= 40
    kb2, report = load_demo_kb()
    assert [e.id for e in kb2] == [e.id for e in kb] and report.loaded == len(kb)
    for e in kb:
        assert e.name and e.text and e.images, e.id
        assert 1 <= e.text.count(". ") + 1 <= 3, e.id  # 1-3 sentences
        for p in e.images:
            img = load_image(p, allowed_dirs=[DEMO])
            assert img.mode == "RGB" and max(img.size) <= 320, p


def test_names_are_ambiguous(kb):
    groups: dict[str, list] = {}
    for e in kb:
        groups.setdefault(e.name, []).append(e)
    shared = {n: es for n, es in groups.items() if len(es) >= 2}
    assert len(shared) >= 8
    assert all(3 <= len(es) <= 5 for es in shared.values())
    assert sum(len(es) for es in shared.values()) == len(kb)  # every entity shares its name
    assert {n: [e.id for e in es] for n, es in shared.items()} == ambiguity_groups()


def test_images_differ_within_each_group(kb):
    by_name: dict[str, list] = {}
    for e in kb:
        by_name.setdefault(e.name, []).append(e)
    for name, es in by_name.items():
        for a, b in itertools.combinations(es, 2):
            d = np.abs(_thumb(a.images[0]) - _thumb(b.images[0])).mean()
            assert d > 20, f"{name}: {a.id} and {b.id} look alike (thumbnail distance {d:.1f})"


def test_examples_load_as_a_split(dataset, kb):
    mentions = dataset.split("examples")
    assert len(mentions) >= 20 and len(mentions) == len(EXAMPLES)
    assert dataset.stats["missing_mention_images"] == 0 and dataset.stats["spans_not_found"] == 0
    assert [e.id for e in dataset.kb] == [e.id for e in kb]
    with_image = 0
    for m in mentions:
        assert m.answer in kb
        assert m.sentence[m.start : m.end] == m.mention, m.id
        if m.image:
            with_image += 1
            load_image(m.image, allowed_dirs=[DEMO])
    assert with_image > len(mentions) / 2 and with_image < len(mentions)  # most, not all
    covered = {kb[kb.position(m.answer)].name for m in mentions}
    assert covered == set(ambiguity_groups())  # every group has examples
    raw = [json.loads(line) for line in (DEMO / "examples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"id", "sentence", "mention", "start", "end", "image", "answer"} for r in raw)


def test_query_image_picks_the_gold_within_its_group(dataset, kb):
    """The query images are other views of the gold image: a plain colour histogram already
    picks the gold entity among the entities sharing its name."""
    for m in dataset.split("examples"):
        if not m.image:
            continue
        gold = kb[kb.position(m.answer)]
        q = _hist(m.image)
        scores = {e.id: max(np.minimum(q, _hist(p)).sum() for p in e.images) for e in kb if e.name == gold.name}
        assert max(scores, key=scores.get) == m.answer, (m.id, scores)


def test_build_is_deterministic(tmp_path):
    for pkg in ("skimage", "sklearn"):  # (find_spec: importing sklearn alone takes seconds)
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is needed to regenerate the demo photos")
    out = build_demo_assets(tmp_path / "demo_kb")
    for name in ("kb.jsonl", "examples.jsonl", "README.md"):
        assert (out / name).read_bytes() == (DEMO / name).read_bytes(), name
    assert _files(out) == _files(DEMO)
    for rel in _files(DEMO):
        if rel.endswith((".png", ".jpg")):  # JPEG bytes may vary across libjpeg builds; pixels may not
            a = np.asarray(Image.open(out / rel).convert("RGB"), np.float64)
            b = np.asarray(Image.open(DEMO / rel).convert("RGB"), np.float64)
            assert a.shape == b.shape and np.abs(a - b).mean() < 2.0, rel
    with pytest.raises(FileExistsError):
        build_demo_assets(out)
    assert len(ENTITIES) == len(load_kb(out / "kb.jsonl")[0])
