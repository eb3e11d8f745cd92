"""The lexical unit S_L in a retraining run: fitted on the corrections, kept when it cannot be.

Why: on a KB of names the served model's quality comes from S_L (`mimic.models.lexical_unit`;
MELBench test H@1 0.8705 with it against 0.776 for the frozen MiniLM cosine), and a run that trains
only MIMIC's heads cannot beat the zero-shot cosine (docs/retraining.md#learning-curve). So, after
the heads are trained, the run fits a unit on the candidate's own served shortlists:

* whether: `RetrainConfig.lexical_unit` (None: on when the KB has at least `lexical_min_entities`
  entities, where surface form starts to matter), never in compat mode (the unit is a fixed-mode
  extension), and only with at least `lexical_min_corrections` training corrections;
* on what: a slice of the TRAINING corrections (`lexical_select`, by uid hash) is kept out of the
  heads' training and chooses the unit's epoch and β in S = β·S_MIMIC + S_L; the unit is trained on
  the rest. The held-out corrections and the base dev split judge the candidate, so they choose
  nothing; and MIMIC's scores on mentions its heads were trained on are over-confident, so β is
  chosen where they are honest (as `train-lexical` chooses it on dev);
* when no unit can be fitted and the serving model has one, the candidate keeps the serving unit:
  dropping it would hand users a worse ranking than the one they have.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path

from mimic.serving.index import KBIndex
from mimic.serving.linker import Linker
from mimic.training.lexical_unit_fit import FitConfig, collect_shortlists, fit_lexical_unit

from .config import RetrainConfig

log = logging.getLogger("mimic.retrain")

SELECT_SEED = "lexical-select"


def lexical_plan(cfg: RetrainConfig, mode: str, kb_size: int, n_train: int) -> tuple[bool, str]:
    """(fit a unit in this run?, why) from the config, the model's mode, the KB size and the number
    of training corrections."""
    if mode != "fixed":
        return False, f"not fitted: {mode} mode (the lexical unit is a fixed-mode extension)"
    if cfg.lexical_unit is False:
        return False, "not fitted: lexical_unit is off"
    if cfg.lexical_unit is None and kb_size < cfg.lexical_min_entities:
        return False, (
            f"not fitted: the KB has {kb_size} entities, fewer than lexical_min_entities = "
            f"{cfg.lexical_min_entities} (set lexical_unit: true to fit it anyway)"
        )
    if n_train < cfg.lexical_min_corrections:
        return False, (
            f"not fitted: {n_train} training corrections, fewer than lexical_min_corrections = "
            f"{cfg.lexical_min_corrections}"
        )
    return True, "fitted"


def _select_share(uid: str) -> float:
    h = hashlib.sha256(f"{SELECT_SEED}:{uid}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def selection_split(train: list, fraction: float) -> tuple[list, list]:
    """-> (fit part, selection part) of the training corrections, by uid hash (stable across runs:
    a correction keeps its side as more arrive). Both parts are non-empty when len(train) >= 2."""
    select = [m for m in train if _select_share(m.id) < fraction]
    fit = [m for m in train if _select_share(m.id) >= fraction]
    if not select and len(fit) > 1:
        select, fit = fit[-1:], fit[:-1]
    elif not fit and len(select) > 1:
        fit, select = select[:-1], select[-1:]
    return fit, select


def fit_candidate_unit(
    cfg: RetrainConfig, candidate, kb, fit_part: list, select_part: list, index_dir: Path, prog
) -> tuple[KBIndex, dict]:
    """Index the KB with the candidate, collect its served shortlists for the fit and selection
    corrections, fit S_L (epoch and β chosen on the selection part) and attach it to the candidate.
    -> (the candidate's index, which the judge reuses; report)."""
    t0 = time.perf_counter()
    candidate.attach_lexical_unit(None)  # a unit inherited from the serving checkpoint is replaced
    prog("lexical", 0.7, f"lexical unit: indexing {len(kb)} entities with the candidate")
    index = KBIndex.build(candidate, kb, index_dir, batch_size=64, progress=False, overwrite=True)
    t_index = time.perf_counter() - t0
    linker = Linker(candidate, index, shortlist=cfg.lexical_shortlist, absent_mention="warn", explain_top=0)
    prog(
        "lexical",
        0.705,
        f"lexical unit: shortlists of {len(fit_part)} training corrections and {len(select_part)} "
        "kept to choose its epoch and β",
    )
    fit_sl = collect_shortlists(linker, fit_part, batch_size=cfg.eval_batch_size, progress=False)
    select_sl = collect_shortlists(linker, select_part, batch_size=cfg.eval_batch_size, progress=False)
    t_collect = time.perf_counter() - t0 - t_index
    unit, report = fit_lexical_unit(
        fit_sl, select_sl, FitConfig(epochs=cfg.lexical_epochs, seed=cfg.seed), log=lambda s: log.info("%s", s)
    )
    unit.config.trained_on = {
        "data": "corrections",
        "split": "train",
        "chosen_on": f"{len(select_part)} training corrections kept out of the heads' training",
        "shortlist": cfg.lexical_shortlist,
    }
    candidate.attach_lexical_unit(unit)
    report = {k: v for k, v in report.items() if k != "epochs"}  # the per-epoch curve stays in the log
    report.update(
        {
            "fit_corrections": len(fit_part),
            "select_corrections": len(select_part),
            "index_seconds": round(t_index, 1),
            "collect_seconds": round(t_collect, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    prog(
        "lexical",
        0.715,
        f"lexical unit fitted: epoch {report['best_epoch']}, β = {report['mimic_weight']:g}, on the "
        f"selection slice H@1 {report['dev']['H@1']:.4f} MRR {report['dev']['MRR']:.4f}",
    )
    return index, report


def keep_serving_unit(start_model, candidate) -> bool:
    """The candidate carries the serving model's unit (True) when the serving model has one: a
    candidate trained from the serving checkpoint already inherits it; otherwise it gets a copy."""
    unit = getattr(start_model, "lexical_unit", None)
    if unit is None or candidate.config.mode != "fixed":
        return False
    if candidate.lexical_unit is None:
        candidate.attach_lexical_unit(copy.deepcopy(unit))
    return True
