"""`python -m mimic reproduce` on tiny official-layout releases built here: the row beside the published
one (JSON + Markdown), counts flagged against the published statistics, and a broken release (missing
and unreadable images, the other mention-image folder name, wrong counts) reported without a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from test_import_m3el import official_m3el_checkpoint

from mimic.analysis.reproduce import PUBLISHED, PUBLISHED_STATS
from mimic.data.official import write_official
from mimic.models.checkpoint import import_official


@pytest.fixture(scope="module")
def release(tmp_path_factory, synthetic_dataset, tiny_clip_dir):
    root = tmp_path_factory.mktemp("repro")
    write_official(synthetic_dataset, root / "WikiDiverse", prefix="wiki_diverse", text_field="desc")
    hp = {"data": {"kb_img_folder": "../data/WikiDiverse/kb_image"}}
    ckpt, *_ = official_m3el_checkpoint(tiny_clip_dir, root / "epoch=15.ckpt", hyper_parameters=hp)
    import_official(ckpt, tiny_clip_dir, root / "imported")
    return root


def _reproduce(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mimic", "reproduce", "--no-progress", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )


def test_published_table_has_every_model_and_dataset():
    for model in ("mimic", "m3el"):
        for ds in PUBLISHED_STATS:
            row = PUBLISHED[(model, ds)]
            assert {"H@1", "H@3", "H@5", "MRR", "MR", "source"} <= set(row)
    assert PUBLISHED[("m3el", "wikidiverse")]["H@1"] == 74.06 and PUBLISHED[("mimic", "wikimel")]["H@1"] == 87.98


@pytest.mark.slow
def test_reproduce_reports_its_row_beside_the_published_one(release, tmp_path):
    r = _reproduce("--data", release / "WikiDiverse", "--checkpoint", release / "imported", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| this run |" in r.stdout and "| published | 74.06 | 86.57 | 90.04 | 81.29 | 155.87 |" in r.stdout
    rep = json.loads((tmp_path / "reproduce.json").read_text())
    assert (tmp_path / "reproduce.md").read_text().startswith("# Reproduction: M3EL on wikidiverse")
    assert rep["dataset"] == "wikidiverse" and rep["model_type"] == "m3el" and rep["cross_modal_eval"] == "t2v"
    assert (
        set(rep["row"]) == {"H@1", "H@3", "H@5", "MRR", "MR"}
        and rep["metrics"]["count"] == rep["data"]["counts"]["test"]
    )
    assert rep["environment"]["seed"] == 43 and "torch" in rep["environment"]["versions"]
    # a tiny release cannot match the published statistics: every count is flagged, nothing else
    assert all(not c["matches"] for c in rep["data"]["published_statistics"].values())
    assert len(rep["problems"]) == 4 and all("does not match the published statistics" in p for p in rep["problems"])
    # the trained bidirectional head on request, labelled as not the published protocol
    r = _reproduce(
        "--data", release / "WikiDiverse", "--checkpoint", release / "imported", "--out", tmp_path / "bi",
        "--cross-modal-eval", "bidirectional", "--train-fraction", "0.1",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "bi" / "reproduce.json").read_text())
    assert rep["cross_modal_eval"] == "bidirectional" and any(
        "trained bidirectional" in n for n in rep["comparable_notes"]
    )
    assert "published" not in rep and "no published figures" in rep["published_note"]
    assert "No published row" in r.stdout


@pytest.mark.slow
def test_broken_release_reports_each_problem(release, tmp_path):
    root = tmp_path / "WikiDiverse"
    shutil.copytree(release / "WikiDiverse", root)
    test_split = json.loads((root / "wiki_diverse_test.json").read_text())
    with_image = [m["imgPath"] for m in test_split if m["imgPath"]]
    (root / "mention_image").rename(root / "mention_images")  # the RichpediaMEL tar's name
    os.remove(root / "mention_images" / with_image[0])  # a missing image
    (root / "mention_images" / with_image[1]).write_bytes(b"not an image")  # an unreadable one
    r = _reproduce("--data", root, "--checkpoint", release / "imported", "--dataset", "wikidiverse", "--strict")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr
    assert "mention images are in mention_images/, but the official wikidiverse config expects mention_image/" in err
    assert "test: 1 of 29 mention images missing" in err.replace(str(len(test_split)), "29")
    assert "test: 1 images cannot be decoded" in err
    assert "test mentions: " in err and "does not match the published statistics" in err
    assert "| this run |" in r.stdout  # still evaluated
    # not a release at all: one error line
    r = _reproduce("--data", tmp_path / "nowhere", "--checkpoint", release / "imported")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    (root / "kb_entity.json").write_text("[{")
    r = _reproduce("--data", root, "--checkpoint", release / "imported")
    assert r.returncode == 2 and "kb_entity.json" in r.stderr and "Traceback" not in r.stderr
