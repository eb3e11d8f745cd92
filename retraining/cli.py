"""`python -m retraining` (and `python -m mimic retrain`): arguments, `cmd_retrain`, `main`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence

import retraining
from db import open_store
from mimic.atomic import write_text_atomic

from .config import RetrainConfig
from .errors import RetrainBusy, RetrainCancelled, RetrainFailed
from .policy import should_retrain

log = logging.getLogger("mimic.retrain")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="YAML/JSON file of RetrainConfig fields (environment: DATA_DIR, "
        "MIMIC_CHECKPOINT, MIMIC_BACKBONE, MIMIC_RETRAIN_<FIELD>; flags win)",
    )
    p.add_argument("--data-dir", help="the app's DATA_DIR (store, runs/, models/)")
    p.add_argument("--base-data", help="base dataset to train with (train split) and judge on (dev split)")
    p.add_argument("--checkpoint", help="serving checkpoint when no version is promoted (default: zero-shot)")
    p.add_argument(
        "--ignore-promoted", action="store_true", help="start from --checkpoint even if a version is promoted"
    )
    p.add_argument("--backbone", help="backbone of the zero-shot serving model (offline | clip | a CLIP folder)")
    p.add_argument("--models-dir", help="where versions are written (default DATA_DIR/models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--holdout", type=float, help="fraction of corrections held out (default 0.2)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast when training on CUDA (default on)",
    )
    p.add_argument(
        "--freeze-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the heads only (always on the CPU)",
    )
    p.add_argument("--min-mrr-delta", type=float, help="promotion: held-out MRR gain required (default 0)")
    p.add_argument("--max-dev-h1-drop", type=float, help="promotion: base dev H@1 drop allowed (default 0.005)")
    p.add_argument(
        "--heldout-slack-mentions",
        type=float,
        help="promotion: held-out MRR may fall by this many mentions' worth / n (default 0.5; 0: strict)",
    )
    p.add_argument(
        "--max-implausible",
        type=float,
        help="promotion: share of held-out labels the serving model ranks beyond --implausible-rank "
        "allowed (default 0.02; 1 turns the label check off)",
    )
    p.add_argument("--implausible-rank", type=int, help="promotion: see --max-implausible (default 1000)")
    p.add_argument(
        "--lexical-unit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fit the lexical unit S_L on the corrections (default: when the KB has >= "
        "--lexical-min-entities entities; never in compat mode)",
    )
    p.add_argument("--lexical-min-entities", type=int, help="lexical unit: KB size for the default (1000)")
    p.add_argument("--lexical-min-corrections", type=int, help="lexical unit: training corrections needed (100)")
    p.add_argument("--min-new-annotations", type=int, help="policy: N new accepted annotations")
    p.add_argument("--every-hours", type=float, help="policy: T hours since the last successful run")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="wait for a running job instead of refusing (default: refuse)",
    )
    p.add_argument("--wait-timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--if-due", action="store_true", help="run only if the policy says a run is due")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="the summary JSON is always printed; with PATH also written there",
    )
    p.add_argument("--run-id", type=int, help=argparse.SUPPRESS)  # a run queued by start_retrain_process


def add_retrain_parser(subparsers) -> argparse.ArgumentParser:
    """Register `retrain` on `python -m mimic`'s subparsers."""
    p = subparsers.add_parser(
        "retrain",
        help="fine-tune on accepted annotations, evaluate, maybe promote",
        description=retraining.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_retrain)
    return p


def config_from_args(a) -> RetrainConfig:
    over = {
        "data_dir": a.data_dir,
        "base_data": a.base_data,
        "checkpoint": a.checkpoint,
        "backbone": a.backbone,
        "models_dir": a.models_dir,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "holdout": a.holdout,
        "device": a.device,
        "freeze_backbone": a.freeze_backbone,
        "bf16": a.bf16,
        "min_mrr_delta": a.min_mrr_delta,
        "max_dev_h1_drop": a.max_dev_h1_drop,
        "heldout_slack_mentions": a.heldout_slack_mentions,
        "max_implausible": a.max_implausible,
        "implausible_rank": a.implausible_rank,
        "lexical_unit": a.lexical_unit,
        "lexical_min_entities": a.lexical_min_entities,
        "lexical_min_corrections": a.lexical_min_corrections,
        "min_new_annotations": a.min_new_annotations,
        "every_hours": a.every_hours,
    }
    if a.ignore_promoted:
        over["prefer_promoted"] = False
    if a.config:
        return RetrainConfig.from_yaml(a.config, **over)
    return RetrainConfig.from_env(**over)


def _print_json(obj, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path and path != "-":
        write_text_atomic(path, text + "\n")
    print(text, flush=True)


def cmd_retrain(a) -> None:
    """`python -m mimic retrain`. Exit status: 0 done (promoted or not) or not due; 1 the run
    failed (recorded, see its log); 3 refused, another run holds the lock; 143 stopped by SIGTERM
    (recorded as cancelled)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="[mimic] %(message)s")
    cfg = config_from_args(a)

    def on_term(signum, frame):
        raise RetrainCancelled(f"stopped by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, on_term)  # a stop from the app records the run as cancelled
    except ValueError:
        previous = None  # not the main thread: leave signals alone
    try:
        _retrain_command(a, cfg)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _retrain_command(a, cfg: RetrainConfig) -> None:
    if a.if_due:
        with open_store(cfg.data_path) as store:
            due, reason = should_retrain(store, cfg)
        if not due:
            _print_json({"ran": False, "reason": reason}, a.json)
            return
        log.warning("retraining is due: %s", reason)
    # Imported here: the run pulls in torch and the trainer, 1.7-3.4 s on top of `import retraining`
    # (time.perf_counter, this shared machine), which --help and an --if-due check that finds
    # nothing due never need.
    from .run import run_retrain

    wait = (a.wait_timeout if a.wait_timeout is not None else True) if a.wait else False
    try:
        summary = run_retrain(cfg, wait=wait, run_id=a.run_id)
    except RetrainBusy as busy:
        print(f"error: {busy}", file=sys.stderr)
        _print_json({"ran": False, "status": "refused", "reason": str(busy)}, a.json)
        raise SystemExit(3) from None
    except RetrainCancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        _print_json({"ran": True, "status": "cancelled", "reason": str(exc)}, a.json)
        raise SystemExit(128 + signal.SIGTERM) from None
    except RetrainFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        _print_json(
            {"ran": True, "status": "failed", "run_id": exc.run_id, "log": exc.log_path, "error": str(exc)}, a.json
        )
        raise SystemExit(1) from None
    _print_json({"ran": True, **summary}, a.json)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m retraining",
        description=retraining.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(ap)
    a = ap.parse_args(argv)
    try:
        cmd_retrain(a)
    except SystemExit as exc:
        return int(exc.code or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
