"""`python -m retraining` (also `python -m mimic retrain`): one retraining job."""

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retraining.cli import main

sys.exit(main())
