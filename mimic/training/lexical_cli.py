"""`python -m mimic train-lexical`: fit the lexical unit S_L of a trained fixed-mode checkpoint.

Kept apart from `lexical_unit_fit` so that building the command line imports no torch.
"""

from __future__ import annotations

import argparse
import json


def cmd_train_lexical(a) -> None:
    # lazy: torch-backed; `python -m mimic --help` must stay fast
    from mimic.training.lexical_unit_fit import FitConfig, train_lexical_unit

    fit = FitConfig(hidden=a.hidden, epochs=a.epochs, seed=a.seed)
    report = train_lexical_unit(
        a.checkpoint, a.data, a.output, index=a.index, work=a.work, fit=fit, progress=not a.no_progress
    )
    print(json.dumps({k: v for k, v in report.items() if k != "epochs"}, indent=2))


def add_train_lexical_parser(sub: argparse._SubParsersAction) -> None:
    tl = sub.add_parser("train-lexical", help="fit the lexical unit S_L of a trained fixed-mode checkpoint")
    tl.add_argument("--checkpoint", required=True, help="trained checkpoint folder (its heads stay as they are)")
    tl.add_argument("--data", required=True, help="dataset with train and dev splits")
    tl.add_argument("--output", required=True, help="checkpoint folder to write (heads + lexical unit)")
    tl.add_argument(
        "--index", help="KB index of the dataset for this checkpoint (built when absent; default OUTPUT-index)"
    )
    tl.add_argument("--work", help="cache of the train/dev shortlist features (default OUTPUT-work)")
    tl.add_argument("--hidden", type=int, default=64, help="MLP width (0: linear)")
    tl.add_argument("--epochs", type=int, default=15)
    tl.add_argument("--seed", type=int, default=0)
    tl.add_argument("--no-progress", action="store_true")
    tl.set_defaults(func=cmd_train_lexical)
