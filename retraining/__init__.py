"""Retraining from the annotators' accepted corrections: `python -m mimic retrain`, the one place that
joins the model library (`mimic`) and the annotation store (`db`); the app only starts and watches it.

One run, in order (each step is logged to DATA_DIR/runs/<run_id>/log.txt and reported in
DATA_DIR/runs/<run_id>/progress.json):

 1. lock      Take the job lock DATA_DIR/runs/retrain.lock (`JobLock`: an flock the kernel drops
              when its holder dies). Refused -> `RetrainBusy` naming the holder, or wait if asked.
              Holding it, mark runs left "running" by a dead process as failed (`recover_stale_runs`).
 2. record    Create (or take the queued) training run in the store and mark it running.
 3. export    `store.build_training_dataset` with the fractions (1 - holdout, 0, holdout), in memory
              (labels by the store's one gold rule, `resolved`): its "test" split IS the held-out slice. The
              split is `db.export.split_of(mention uid)`, a SHA-256 of the uid compared with the
              cumulative fractions, so a mention always falls on the same side, adding mentions never
              moves old ones, and with the default 20 % the held-out slice is exactly the dev + test
              part of the store's ordinary 80/10/10 export. The ids of every annotation used (trained
              on or held out) are attached to the run; split.json records which uid went where.
 4. base      Optionally load a base dataset (any supported format): its train split joins the
              training set, its dev split is the second judge. Nothing that is judged is trained on:
              training mentions with the (sentence, mention) of a held-out correction or of a base
              dev mention are dropped. Base entities missing from the store are appended to the KB.
 5. train     Fine-tune the serving model (`mimic.training.trainer.train` with `init_checkpoint`) into
              runs/<id>/train/; a zero-shot serving model has no trained units to start from, so the
              candidate is then a fresh MIMIC model on the same backbone. Frozen backbone on the CPU.
              No epoch selection on the judging sets: the last epoch is the candidate.
 6. evaluate  Serving model and candidate on the SAME sets (held-out corrections, base dev) against
              the full KB; a zero-shot serving model is ranked by `mimic.serving.zeroshot.zero_shot_ranks`,
              the rule it serves with.
 7. version   Copy the candidate into models_dir/<version>/ (temporary folder, then rename; the
              serving checkpoint folder is only ever read), register the version with every number
              and the decision, link it to the run.
 8. promote   `store.promote(version)` only when `decide_promotion` says so (default: held-out MRR
              not lower, base dev H@1 not lower by more than 0.5 points, at most 2 % of the held-out
              labels ranked beyond 1,000 by the serving model). The held-out slice comes from the
              corrections, so wrong corrections poison it too: the base dev split is the trusted
              judge, and without one the candidate is not promoted; the label check refuses a batch
              of implausible labels that does no measurable harm (promotion.py).
 9. finish    Run marked succeeded. Any exception on the way: run marked failed (cancelled on
              SIGTERM / Ctrl-C) with the error, and the log stays.

Crash safety: the only write that changes what is served is `promote` (one transaction, the last
step before finishing); everything else is new rows and new folders renamed into place. So a run
that fails or is killed before `promote` leaves the serving checkpoint, the promoted version, the
annotations and every earlier version exactly as they were; one that dies after it has promoted a
candidate that passed the rule. A killed run cannot record its own end: its row stays "running"
until the next run (or `recover_stale_runs`, which the app may call) finds the lock free and marks
it failed. At worst a killed run also leaves an unreferenced models_dir/<version>/ (killed between
the copy and the registration) or a registered, unpromoted version.

Scheduling (`should_retrain`): retrain after N new accepted annotations and/or every T hours since
the last successful run; "new" = accepted annotations not attached to that run. The job always
runs in its own process (`start_retrain_process`, or `python -m mimic retrain --if-due` from cron);
the app follows it with `read_progress` / `read_log`.

Modules: config (RetrainConfig), lock (JobLock), progress (progress and log files), serving (what
serves now), policy (when to start), process (the job's own process), recovery (dead runs),
pipeline (the steps), evaluation (both models on shared KB features), promotion (the rule),
run (run_retrain: the run recorded around the steps), cli.
"""

from .config import RetrainConfig
from .errors import RetrainBusy, RetrainCancelled, RetrainFailed
from .lock import JobLock
from .policy import accepted_annotation_ids, maybe_start_retrain, should_retrain
from .process import start_retrain_process
from .progress import read_log, read_progress
from .promotion import decide_promotion
from .recovery import recover_stale_runs

# run_retrain (and the pipeline) load torch and the trainer: import them from retraining.run, so
# that the app and `python -m retraining --help` do not pay for them (see cli.py).
__all__ = [
    "RetrainConfig",
    "RetrainBusy",
    "RetrainCancelled",
    "RetrainFailed",
    "JobLock",
    "accepted_annotation_ids",
    "maybe_start_retrain",
    "should_retrain",
    "start_retrain_process",
    "read_log",
    "read_progress",
    "decide_promotion",
    "recover_stale_runs",
]
