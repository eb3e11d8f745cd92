"""The learning-curve benchmark (`benchmarks/bench_learning_curve.py`) end to end on tiny data: the
synthetic dataset as the corpus, the tiny random CLIP as the frozen backbone, N = 0 and 8 corrections
by the simulated annotators through the store, one retraining run, the poison run. Mechanics only
(the figures are measured on MELBench, docs/retraining.md#learning-curve)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mimic.data.jsonl import write_jsonl_dataset
from mimic.testing.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_learning_curve", REPO / "benchmarks" / "bench_learning_curve.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def test_learning_curve_mechanics(bench, tmp_path, tiny_clip_dir, capsys):
    ds = make_synthetic(tmp_path / "synth", n_names=6, per_name=3, mentions_per_entity=8, seed=3)
    data = write_jsonl_dataset(ds, tmp_path / "data")
    out = bench.main(
        [
            "--data", str(data),
            "--n", "12,0",
            "--poison", "6",
            "--backbone", str(tiny_clip_dir),
            "--epochs", "1",
            "--batch-size", "4",
            "--eval-max-mentions", "10",
            "--work", str(tmp_path / "work"),
            "--json", str(tmp_path / "curve.jsonl"),
        ]
    )  # fmt: skip
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x.get("n") for x in lines[:2]] == [0, 12] and "poison" in lines[2] and "summary" in lines[3]
    assert lines == [json.loads(x) for x in (tmp_path / "curve.jsonl").read_text().splitlines()]
    zero, twelve = out["lines"]
    assert zero["model"].startswith("zero-shot") and zero["gold_labels"] == 0
    assert twelve["gold_labels"] == 12 and twelve["agree_with_dataset"]
    assert twelve["train_corrections"] + twelve["heldout_corrections"] == 12 and twelve["epochs"] == 1
    for row in (zero, twelve):
        for split in ("dev", "test"):
            assert row[split]["count"] == 10 and 0.0 <= row[split]["H@1"] <= 1.0
    # the job's own zero-shot judge equals the benchmark's zero-shot evaluation on the same dev mentions
    assert twelve["start_dev_in_job"] == zero["dev"]
    p = out["poison"]
    assert p["poison"] == 6 and p["promoted"] is not p["refused"]
    if p["refused"]:  # what serves stays exactly as it was
        assert p["promoted_version_unchanged"] and p["serving_checkpoint_unchanged"]
        assert p["reason"].startswith("not promoted")
    s = out["summary"]
    assert [c["n"] for c in s["curve"]] == [0, 12] and s["kb_entities"] == len(ds.kb)
    assert s["setup"]["mentions_imported"] == len(ds.splits["train"]) and s["setup"]["mentions_refused"] == 0
    assert s["text_memo"]["hits"] > 0  # the frozen tower's outputs were reused across runs
    assert len(s["load_avg_end"]) == 3


def test_learning_curve_from_a_base_model(bench, tmp_path, tiny_clip_dir):
    """--start base: a disjoint part of train trains the start model, which the job fine-tunes; the
    frozen backbone's outputs go to --feature-cache and a second run reads them back."""
    ds = make_synthetic(tmp_path / "synth", n_names=6, per_name=3, mentions_per_entity=8, seed=4)
    data = write_jsonl_dataset(ds, tmp_path / "data")
    cache = tmp_path / "features.pt"
    common = ["--data", str(data), "--n", "0,10", "--poison", "0", "--backbone", str(tiny_clip_dir)]
    common += ["--epochs", "1", "--batch-size", "4", "--eval-max-mentions", "10", "--feature-cache", str(cache)]
    out = bench.main([*common, "--start", "base", "--base-train-epochs", "1", "--work", str(tmp_path / "w1")])
    zero, ten = out["lines"]
    base = out["summary"]["setup"]["base_model"]
    assert zero["model"].startswith("base model") and base["epochs"] == 1
    assert base["train_mentions"] + out["summary"]["setup"]["mentions_imported"] == len(ds.splits["train"])
    assert "fine-tuned from the base model" in ten["model"] and ten["start_dev_in_job"] == zero["dev"]
    assert out["poison"] is None and cache.is_file()
    again = bench.main([*common, "--work", str(tmp_path / "w2")])
    assert again["summary"]["setup"]["feature_cache_rows_loaded"] == out["summary"]["text_memo"]["rows"]
    assert again["summary"]["text_memo"]["misses"] == 0  # the same mentions and KB: nothing re-encoded


def test_epochs_auto(bench):
    a = bench.parse_args(["--epochs", "auto", "--min-steps", "200", "--batch-size", "64"])
    assert bench._epochs_for(200, a) == 40  # 4 steps an epoch: capped at --max-epochs
    assert bench._epochs_for(800, a) == 16
    assert bench._epochs_for(3200, a) == 4  # 50 steps an epoch: the job's default
    assert bench._epochs_for(200, bench.parse_args(["--epochs", "3"])) == 3
