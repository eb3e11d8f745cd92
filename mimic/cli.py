"""Command line: `python -m mimic <command> ...`.

  train            train a model from a YAML config (paper defaults in configs/mimic_paper.yaml)
  evaluate         full-KB ranking of a split; prints JSON metrics; --scores-out FILE.npz
  import-official  convert an official MIMIC Lightning checkpoint into this project's format
  info             describe a checkpoint or a dataset

Errors that come from bad input (missing files, malformed data, wrong checkpoints) are printed as
one line `error: ...` with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _json_out(obj, path: str | None):
    text = json.dumps(obj, indent=2)
    if path:
        from .atomic import write_text_atomic
        write_text_atomic(path, text + "\n")
    print(text)


def cmd_train(a):
    from .training import TrainConfig, train
    overrides = {"data": a.data, "output": a.output, "backbone": a.backbone, "mode": a.mode,
                 "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "device": a.device,
                 "train_fraction": a.train_fraction, "init_checkpoint": a.init_checkpoint,
                 "val_max_mentions": a.val_max_mentions}
    if a.freeze_backbone:
        overrides["freeze_backbone"] = True
    if a.no_progress:
        overrides["progress"] = False
    cfg = TrainConfig.from_yaml(a.config, **overrides) if a.config else TrainConfig(
        **{k: v for k, v in overrides.items() if v is not None})
    if not cfg.data:
        raise ValueError("no data: give --data or 'data:' in the config")
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun only rank 0 reports
        return
    _json_out({k: v for k, v in summary.items() if k != "history"} | {"epochs_run": len(summary["history"])}, None)


def cmd_evaluate(a):
    from .checkpoint import load_checkpoint
    from .data.formats import load_dataset
    from .evaluation import evaluate
    from .training import pick_device
    ds = load_dataset(a.data)
    model = load_checkpoint(a.checkpoint, pick_device(a.device))
    mentions = ds.split(a.split)
    if a.limit:
        mentions = mentions[:a.limit]
    res = evaluate(model, ds.kb, mentions, batch_size=a.batch_size, chunk_size=a.chunk_size,
                   strategy=a.strategy, scores_out=a.scores_out, progress=not a.no_progress)
    res.pop("ranks")
    res.update({"split": a.split, "checkpoint": a.checkpoint, "mode": model.config.mode,
                "tie_breaking": "stable: equal scores ranked by KB position"})
    _json_out(res, a.json)


def cmd_import_official(a):
    from .checkpoint import import_official
    out = import_official(a.checkpoint, a.backbone, a.output, mode=a.mode, trust_pickle=a.trust_pickle)
    print(json.dumps({"output": str(out)}))


def cmd_info(a):
    from pathlib import Path
    p = Path(a.path)
    if (p / "config.json").exists():
        from .checkpoint import read_config, read_metrics
        print(json.dumps({"checkpoint": read_config(p), "metrics": read_metrics(p)}, indent=2))
        return
    from .data.formats import load_dataset
    ds = load_dataset(p)
    print(json.dumps({"dataset": ds.name, "entities": len(ds.kb),
                      "splits": {k: len(v) for k, v in ds.splits.items()}, "stats": ds.stats}, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mimic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--data", help="dataset: official folder, JSONL folder or MELBench .json")
    t.add_argument("--output", help="run folder (best/, last/, summary.json)")
    t.add_argument("--backbone", help="auto | clip | offline | hub id | local CLIP folder")
    t.add_argument("--mode", choices=["fixed", "compat"])
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device")
    t.add_argument("--train-fraction", type=float, help="low-resource setting: keep the first fraction")
    t.add_argument("--freeze-backbone", action="store_true", help="cache backbone features, train heads only")
    t.add_argument("--init-checkpoint", help="start from this checkpoint")
    t.add_argument("--val-max-mentions", type=int)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="full-KB evaluation")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--chunk-size", type=int, default=4096)
    e.add_argument("--strategy", choices=["precomputed", "official"], default="precomputed")
    e.add_argument("--scores-out", help="write S, S_T, S_V, S_C [mentions, entities], gold, rank to this .npz")
    e.add_argument("--limit", type=int, help="first N mentions only")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", help="also write the metrics JSON here")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("import-official", help="convert an official MIMIC checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("--backbone", required=True, help="folder of the CLIP the checkpoint was trained from")
    i.add_argument("--output", required=True)
    i.add_argument("--mode", choices=["compat", "fixed"], default="compat")
    i.add_argument("--trust-pickle", action="store_true",
                   help="allow arbitrary pickled objects in the file (only for files you trust)")
    i.set_defaults(func=cmd_import_official)

    n = sub.add_parser("info", help="describe a checkpoint folder or a dataset")
    n.add_argument("path")
    n.set_defaults(func=cmd_info)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="[mimic] %(message)s")
    try:
        a.func(a)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0
