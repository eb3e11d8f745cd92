"""MIMIC vs M3EL on the same synthetic multimodal task (tiny random CLIP, frozen, same recipe).

Prints, per family: test H@1, MRR, training seconds and full-KB evaluation throughput.

  python benchmarks/compare_families.py [--entities-per-name 3 --names 12 --epochs 8 --json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimic.analysis.ranking import evaluate
from mimic.models.checkpoint import load_checkpoint
from mimic.testing.synthetic import make_synthetic
from mimic.testing.tiny_clip import build_tiny_clip
from mimic.training.trainer import TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=12)
    ap.add_argument("--entities-per-name", type=int, default=3)
    ap.add_argument("--mentions-per-entity", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="compare-"))
    ds = make_synthetic(
        tmp / "data", n_names=a.names, per_name=a.entities_per_name, mentions_per_entity=a.mentions_per_entity
    )
    clip = build_tiny_clip(tmp / "clip")
    rows = []
    for label, model, extra in [
        ("MIMIC", "mimic", {}),
        ("M3EL t2v", "m3el", {"cross_modal": "t2v"}),
        ("M3EL bidirectional", "m3el", {"cross_modal": "bidirectional"}),
    ]:
        cfg = TrainConfig(
            output=str(tmp / label.replace(" ", "_")),
            model=model,
            backbone=str(clip),
            freeze_backbone=True,
            lr=3e-3,
            epochs=a.epochs,
            batch_size=16,
            val_every=2,
            patience=10,
            progress=False,
            test_after=False,
            seed=0,
            adam_eps=1e-8,
            no_decay="standard",
            **extra,
        )
        t = time.perf_counter()
        train(cfg, ds)
        t_train = time.perf_counter() - t
        m = load_checkpoint(Path(cfg.output) / "best")
        res = evaluate(m, ds.kb, ds.split("test"))
        rows.append(
            {
                "model": label,
                "entities": len(ds.kb),
                "test_mentions": res["count"],
                "H@1": round(res["H@1"], 4),
                "MRR": round(res["MRR"], 4),
                "train_seconds": round(t_train, 1),
                "eval_mentions_per_second": res["mentions_per_second"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
