"""`python -m assets.default_model`: rebuild `assets/models/default/` (deterministic seeds)."""

from __future__ import annotations

import argparse
import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from assets.default_model.build import BuildConfig, build_default_model  # noqa: E402


def main(argv=None) -> None:
    d = BuildConfig()
    p = argparse.ArgumentParser(prog="python -m assets.default_model", description=__doc__)
    p.add_argument("--output", default=d.output, help="checkpoint folder (default: assets/models/default)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--work-dir", help="keep the generated views and the training run here (default: a temp folder)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = build_default_model(BuildConfig(output=a.output, seed=a.seed, epochs=a.epochs), work_dir=a.work_dir)
    print(
        json.dumps(
            {k: summary[k] for k in ("output", "best_epoch", "dev_synthetic", "training_data", "build_seconds")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
