"""Training on the synthetic dataset written in the official layout: learning, checkpoints, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mimic.analysis.ranking import evaluate
from mimic.data.formats import load_dataset
from mimic.models.checkpoint import load_checkpoint, read_config
from mimic.training.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def official_ds(synthetic_official):
    return load_dataset(synthetic_official)


def test_frozen_backbone_training_rises_far_above_chance(official_ds, tiny_clip_dir, tmp_path):
    cfg = TrainConfig(
        output=str(tmp_path / "run"),
        backbone=str(tiny_clip_dir),
        freeze_backbone=True,
        lr=3e-3,
        epochs=8,
        batch_size=16,
        val_every=2,
        patience=5,
        progress=False,
        seed=0,
        adam_eps=1e-8,
        no_decay="standard",
    )
    s = train(cfg, official_ds)
    chance = 1 / len(official_ds.kb)
    dev_h1 = [h["dev"]["H@1"] for h in s["history"] if "dev" in h]
    assert dev_h1[-1] >= 0.6 > 5 * chance, dev_h1
    assert s["test"]["H@1"] >= 0.6
    # the losses went down
    assert s["history"][-1]["train_loss"] < s["history"][0]["train_loss"]
    best = load_checkpoint(tmp_path / "run" / "best")
    again = evaluate(best, official_ds.kb, official_ds.split("test"))
    assert again["H@1"] == pytest.approx(s["test"]["H@1"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_dev_mrr"] == pytest.approx(
        s["best_dev_mrr"]
    )


def test_resume_continues_where_it_stopped(official_ds, tiny_clip_dir, tmp_path):
    base = dict(
        output=str(tmp_path / "run"),
        backbone=str(tiny_clip_dir),
        freeze_backbone=True,
        lr=3e-3,
        batch_size=16,
        val_every=2,
        patience=5,
        progress=False,
        seed=0,
        test_after=False,
    )
    first = train(TrainConfig(epochs=2, **base), official_ds)
    resumed = train(TrainConfig(epochs=4, **base), official_ds)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert resumed["history"][:2] == first["history"]


def test_fine_tuning_compat_mode_and_train_fraction(official_ds, tiny_clip_dir, tmp_path):
    cfg = TrainConfig(
        output=str(tmp_path / "ft"),
        backbone=str(tiny_clip_dir),
        mode="compat",
        lr=1e-3,
        epochs=1,
        batch_size=16,
        val_every=1,
        progress=False,
        train_fraction=0.5,
        test_after=False,
    )
    s = train(cfg, official_ds)
    n = len(official_ds.split("train"))
    assert s["train_mentions"] == int(n * 0.5)
    conf = read_config(tmp_path / "ft" / "best")
    assert conf["backbone_trained"] and conf["model_config"]["mode"] == "compat"
    assert (tmp_path / "ft" / "best" / "backbone" / "config.json").exists()


@pytest.mark.slow
def test_cli_train_and_evaluate(synthetic_official, tiny_clip_dir, tmp_path):
    run = tmp_path / "cli"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "train",
            "--data",
            str(synthetic_official),
            "--backbone",
            str(tiny_clip_dir),
            "--freeze-backbone",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--output",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mimic",
            "evaluate",
            "--checkpoint",
            str(run / "best"),
            "--data",
            str(synthetic_official),
            "--split",
            "test",
            "--no-progress",
            "--scores-out",
            str(tmp_path / "s.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"H@1", "H@3", "H@5", "H@10", "H@20", "MRR", "MR", "count"} <= set(res)
    assert res["count"] == len(load_dataset(synthetic_official).split("test"))
    assert (tmp_path / "s.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["evaluate", "--checkpoint", "/nonexistent/ckpt", "--data", "/nonexistent/data"], "error:"),
        (["train", "--data", "/nonexistent/data.json", "--backbone", "offline"], "error:"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, needle):
    r = subprocess.run([sys.executable, "-m", "mimic", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_torchrun_ddp_two_processes(synthetic_official, tiny_clip_dir, tmp_path):
    """Multi-process training through torchrun (gloo on CPU): ranks shard the data, rank 0 reports."""
    import os

    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "-m",
            "mimic",
            "train",
            "--data",
            str(synthetic_official),
            "--backbone",
            str(tiny_clip_dir),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--output",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # exactly one JSON document: only rank 0 printed
    assert summary["epochs_run"] == 2 and (run / "best" / "config.json").exists()
    assert json.loads((run / "summary.json").read_text())["history"][0]["samples_per_second"] > 0
