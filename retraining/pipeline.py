"""The steps of one run, in order: corrections -> base data -> serving model -> train -> evaluate
-> version -> promote (see the package docstring for what each guarantees). `run_steps` calls
them; run.py records the run around it."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from mimic.atomic import write_dir_atomic, write_json_atomic
from mimic.backbones import backbone_label, load_backbone
from mimic.data.formats import load_dataset
from mimic.data.schema import Dataset, KnowledgeBase
from mimic.models.checkpoint import load_checkpoint, read_config, save_checkpoint
from mimic.serving.zeroshot import zero_shot_model
from mimic.training.text_memo import shared_memo
from mimic.training.trainer import TrainConfig, pick_device, train

from .config import RetrainConfig
from .evaluation import evaluate_models, has_unit, heads_only
from .lexical import fit_candidate_unit, keep_serving_unit, lexical_plan, selection_split
from .progress import EpochWatcher, Progress
from .promotion import decide_promotion, implausible_share
from .serving import Serving

log = logging.getLogger("mimic.retrain")

# db.export.split_of's default seed: with it the held-out slice agrees with the store's ordinary export.
HOLDOUT_SEED = ""


@dataclass
class RunData:
    """What a run trains on and is judged on."""

    kb: KnowledgeBase
    train: list  # corrections trained on
    heldout: list  # corrections held out (judged on)
    annotation_ids: list[int]  # every annotation used, trained on or held out
    conflicts: int
    not_entity: int
    base_train: list = field(default_factory=list)
    base_dev: list = field(default_factory=list)
    base_entities_added: int = 0
    excluded_uids: list[str] = field(default_factory=list)  # corrections identical to a judged mention
    select: list = field(default_factory=list)  # training corrections that choose the lexical unit's epoch and β


@dataclass
class StartModel:
    """The serving model, and how the candidate is trained from it."""

    model: torch.nn.Module
    device: torch.device
    freeze: bool
    lr: float
    model_type: str
    mode: str
    resave_backbone: bool  # serving carried fine-tuned backbone weights that this run freezes
    backbone_label: str


def _key(m) -> tuple[str, str]:
    return (m.sentence.strip(), m.mention.strip())


def load_corrections(cfg: RetrainConfig, store, rid: int, prog: Progress) -> RunData:
    """The store's gold entity links, in memory, split by uid hash: the "test" part is held out."""
    prog("export", 0.02, "reading the accepted annotations")
    dataset, used, conflicts, not_entity = store.build_training_dataset(
        fractions=(1 - cfg.holdout, 0.0, cfg.holdout), seed=HOLDOUT_SEED, name="corrections"
    )
    store.attach_annotations(rid, used)
    data = RunData(dataset.kb, list(dataset.split("train")), list(dataset.split("test")), used, conflicts, not_entity)
    prog(
        "export",
        0.05,
        f"{len(used)} annotations: {len(data.train)} corrections to train on, "
        f"{len(data.heldout)} held out; {conflicts} conflicting and {not_entity} NIL/ambiguous "
        "mentions left out",
    )
    return data


def add_base_dataset(cfg: RetrainConfig, data: RunData, prog: Progress) -> None:
    """The base dataset's train split joins training, its dev split judges; nothing judged is trained
    on, whichever source it comes from. Base entities missing from the store are appended to the KB."""
    assert cfg.base_data is not None  # called only when a base dataset is configured
    base = load_dataset(cfg.base_data)
    data.base_dev = list(base.splits.get("dev", []))
    judged = {_key(m) for m in data.heldout + data.base_dev}
    all_train = list(base.splits.get("train", []))
    data.base_train = [m for m in all_train if _key(m) not in judged]
    data.excluded_uids = [m.id for m in data.train if _key(m) in judged]
    data.train = [m for m in data.train if _key(m) not in judged]
    prog(
        "base",
        0.07,
        f"base dataset {cfg.base_data}: {len(data.base_train)} train mentions, {len(data.base_dev)} "
        f"dev mentions; {len(all_train) - len(data.base_train)} base train mentions and "
        f"{len(data.excluded_uids)} corrections identical to a judged mention left out of training",
    )
    # store positions do not move: the base entities the store lacks go after them
    extra = [e for e in base.kb.entities if e.id not in data.kb]
    if extra:
        log.warning("%d base-dataset entities are not in the store's KB; they are appended to the KB", len(extra))
        data.kb, data.base_entities_added = KnowledgeBase(data.kb.entities + extra), len(extra)


def write_split_record(cfg: RetrainConfig, data: RunData, rdir: Path) -> None:
    """split.json: which uid went where (a record for people; training reads the data in memory)."""
    record = {
        "rule": f"db.export.split_of(uid, (1 - {cfg.holdout}, 0, {cfg.holdout}), seed={HOLDOUT_SEED!r}): "
        "SHA-256 of the mention uid; 'test' = held out",
        "train_uids": [m.id for m in data.train],
        "heldout_uids": [m.id for m in data.heldout],
        "annotation_ids": data.annotation_ids,
    }
    if data.excluded_uids:
        record["excluded_uids"] = data.excluded_uids
    if data.select:
        record["lexical_select_uids"] = [m.id for m in data.select]
        record["lexical_select_rule"] = (
            "training corrections kept out of the heads' training; they choose the lexical unit's epoch and β"
        )
    write_json_atomic(rdir / "split.json", record)


def load_start_model(cfg: RetrainConfig, serving: Serving) -> StartModel:
    """The serving model on the training device, and the learning setting its kind calls for: a
    zero-shot serving model has no trained units to start from, so the candidate is a fresh model
    on the same backbone."""
    device = pick_device(cfg.device)
    freeze = cfg.freeze_backbone if cfg.freeze_backbone is not None else device.type != "cuda"
    if device.type == "cpu" and not freeze:
        log.warning("freeze_backbone=False ignored on the CPU: fine-tuning the backbone there takes hours")
        freeze = True
    if serving.checkpoint:
        serving_cfg = read_config(serving.checkpoint)
        model = load_checkpoint(serving.checkpoint, device)
        model_type, mode = serving_cfg.get("model_type", "mimic"), serving_cfg["model_config"]["mode"]
        resave_backbone = freeze and bool(serving_cfg.get("backbone_trained"))
        lr = cfg.lr if cfg.lr is not None else (2e-4 if freeze else 1e-5)
    else:
        model = zero_shot_model(load_backbone(cfg.backbone), cfg.model).to(device)
        model_type, mode, resave_backbone = cfg.model, "fixed", False
        lr = cfg.lr if cfg.lr is not None else (1e-3 if freeze else 1e-5)
    model.eval()
    return StartModel(model, device, freeze, lr, model_type, mode, resave_backbone, backbone_label(model.backbone))


def train_candidate(
    cfg: RetrainConfig, serving: Serving, start: StartModel, data: RunData, train_dir: Path, prog: Progress
) -> tuple[torch.nn.Module, dict, float]:
    """Fine-tune into train_dir on the in-memory training set. -> (candidate, train summary, seconds)."""
    tc = TrainConfig(
        output=str(train_dir),
        backbone=cfg.backbone,
        init_checkpoint=serving.checkpoint,
        model=start.model_type,
        mode=start.mode,
        lr=start.lr,
        adam_eps=1e-8,
        no_decay="standard",
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        bf16=cfg.bf16,
        val_every=cfg.epochs + 1,
        patience=cfg.epochs + 1,
        seed=cfg.seed,
        freeze_backbone=start.freeze,
        device=str(start.device),
        eval_batch_size=cfg.eval_batch_size,
        eval_chunk_size=cfg.eval_chunk_size,
        progress=False,
        test_after=False,
    )
    watcher = EpochWatcher(prog, cfg.epochs, 0.1, 0.7)
    t0 = time.perf_counter()
    logging.getLogger("mimic").addHandler(watcher)
    try:
        # No dev split on purpose: the judging sets must not pick the epoch (that would bias the
        # comparison towards the candidate), so best/ is the last epoch.
        summary = train(tc, Dataset(data.kb, {"train": data.train + data.base_train}, name="retrain"))
    finally:
        logging.getLogger("mimic").removeHandler(watcher)
    seconds = round(time.perf_counter() - t0, 2)
    candidate = load_checkpoint(
        train_dir / "best", start.device, backbone=start.model.backbone if start.freeze else None
    )
    return candidate.eval(), summary, seconds


def judge(
    cfg: RetrainConfig,
    serving: Serving,
    start: StartModel,
    candidate,
    data: RunData,
    rdir: Path,
    prog: Progress,
    candidate_index=None,
) -> tuple[dict, float]:
    """Serving and candidate on the SAME sets (held-out corrections, base dev), each ranked as it
    serves: against the full KB, or over the served shortlist when it has a lexical unit (the
    candidate's on `candidate_index`). A served serving model's held-out labels are also ranked
    against the full KB by its heads ("label_ranks", for the label check: served ranks stop at
    K + 1). Ranks go to evaluation.json. -> ({"serving"|"candidate": {set: metrics}}, seconds)."""
    prog(
        "evaluate",
        0.72,
        f"evaluating serving and candidate on {len(data.heldout)} held-out corrections"
        + (f" and {len(data.base_dev)} base dev mentions" if data.base_dev else "")
        + f" against {len(data.kb)} entities",
    )
    sets = {"heldout": data.heldout}
    if data.base_dev:
        sets["base_dev"] = data.base_dev
    t0 = time.perf_counter()
    res = evaluate_models(
        {"serving": start.model, "candidate": candidate},
        set() if serving.checkpoint else {"serving"},
        data.kb,
        sets,
        batch_size=cfg.eval_batch_size,
        chunk_size=cfg.eval_chunk_size,
        indexes={"candidate": candidate_index},
        shortlist=cfg.lexical_shortlist,
    )
    if has_unit(start.model) and data.heldout:
        with heads_only(start.model) as heads:
            full = evaluate_models(
                {"serving": heads},
                set(),
                data.kb,
                {"heldout": data.heldout},
                batch_size=cfg.eval_batch_size,
                chunk_size=cfg.eval_chunk_size,
            )
        res["serving"]["heldout"]["label_ranks"] = full["serving"]["heldout"]["ranks"]
    seconds = round(time.perf_counter() - t0, 2)
    write_json_atomic(
        rdir / "evaluation.json",
        {
            name: {
                s: {
                    "ranks": m.get("ranks"),
                    "scoring": m.get("scoring", "model"),
                    "mention_ids": [x.id for x in sets[s]],
                    **({"label_ranks": m["label_ranks"]} if "label_ranks" in m else {}),
                }
                for s, m in r.items()
            }
            for name, r in res.items()
        },
    )
    return res, seconds


def _strip_ranks(res: dict) -> dict:
    return {s: {k: v for k, v in m.items() if k not in ("ranks", "label_ranks")} for s, m in res.items()}


def _delta(res: dict, set_name: str, metric: str) -> float | None:
    if set_name not in res["candidate"]:
        return None
    return res["candidate"][set_name][metric] - res["serving"][set_name][metric]


def _scoring(model, zero_shot: bool) -> str:
    return "zero-shot" if zero_shot else ("served" if has_unit(model) else "model")


def _implausible(res: dict, cfg: RetrainConfig) -> dict | None:
    share = implausible_share(res["serving"], cfg)
    return None if share is None else {"count": share[0], "of": share[1], "beyond_rank": cfg.implausible_rank}


def version_metrics(
    cfg: RetrainConfig,
    rid: int,
    version: str,
    version_dir: Path,
    serving: Serving,
    start: StartModel,
    data: RunData,
    res: dict,
    decision: tuple[bool, str],
    tsum: dict,
    seconds: dict,
    candidate=None,
    lexical: dict | None = None,
) -> dict:
    """Everything recorded on the version and the run: both models' numbers, the decision, the data,
    the lexical unit (fitted, kept from the serving model, or none, and why)."""
    history = tsum.get("history", [])
    return {
        "run_id": rid,
        "version": version,
        "serving": {
            "version": serving.version,
            "checkpoint": serving.checkpoint,
            "scoring": _scoring(start.model, not serving.checkpoint),
            **_strip_ranks(res["serving"]),
        },
        "candidate": {
            "checkpoint": str(version_dir),
            "scoring": _scoring(candidate, False) if candidate is not None else "model",
            **_strip_ranks(res["candidate"]),
        },
        "delta": {
            "heldout_MRR": _delta(res, "heldout", "MRR") if data.heldout else None,
            "base_dev_H@1": _delta(res, "base_dev", "H@1") if data.base_dev else None,
        },
        "implausible_heldout": _implausible(res, cfg),
        "decision": {
            "promote": decision[0],
            "reason": decision[1],
            "rule": {
                "min_mrr_delta": cfg.min_mrr_delta,
                "heldout_slack_mentions": cfg.heldout_slack_mentions,
                "max_dev_h1_drop": cfg.max_dev_h1_drop,
                "min_heldout": cfg.min_heldout,
                "implausible_rank": cfg.implausible_rank,
                "max_implausible": cfg.max_implausible,
            },
        },
        "data": {
            "annotations": len(data.annotation_ids),
            "train_corrections": len(data.train),
            "lexical_select_corrections": len(data.select),
            "heldout_corrections": len(data.heldout),
            "base_train": len(data.base_train),
            "base_dev": len(data.base_dev),
            "entities": len(data.kb),
            "base_entities_added": data.base_entities_added,
            "holdout": cfg.holdout,
            "conflicts": data.conflicts,
            "not_entity": data.not_entity,
        },
        "train": {
            "epochs": len(history),
            "final_loss": (history or [{}])[-1].get("train_loss"),
            "lr": start.lr,
            "freeze_backbone": start.freeze,
            "device": str(start.device),
            "backbone": start.backbone_label,
            "feature_cache_seconds": tsum.get("feature_cache_seconds"),
            "input_cache": tsum.get("input_cache"),
            "bf16": bool(cfg.bf16 and start.device.type == "cuda"),
            "samples_per_second": [h.get("samples_per_second") for h in history],
            "seconds": seconds["train"],
        },
        "lexical_unit": lexical or {"status": "none"},
        "evaluate_seconds": seconds["evaluate"],
    }


def write_version(best_dir: Path, version_dir: Path, candidate, *, resave_backbone: bool, metrics: dict) -> Path:
    """models_dir/<version>/ from the candidate, atomically (temporary sibling, then rename; an
    existing folder is never replaced). Normally a copy of train/best; when the serving checkpoint
    carried fine-tuned backbone weights and this run froze them, best/ only describes the backbone,
    so the version is re-saved with the weights to stay self-contained; a candidate with a lexical
    unit is re-saved too (best/ holds the heads only, the unit is fitted after them)."""
    if resave_backbone or has_unit(candidate):
        old = json.loads((best_dir / "metrics.json").read_text())
        trained = resave_backbone or bool(read_config(best_dir).get("backbone_trained"))
        return save_checkpoint(candidate, version_dir, backbone_trained=trained, metrics={**old, "retrain": metrics})

    def fill(tmp: Path) -> None:
        for p in best_dir.iterdir():
            if p.name == "training_state.pt":
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        m = json.loads((tmp / "metrics.json").read_text()) if (tmp / "metrics.json").exists() else {}
        (tmp / "metrics.json").write_text(json.dumps({**m, "retrain": metrics}, indent=2) + "\n")

    return write_dir_atomic(version_dir, fill, overwrite=False)


def new_version_dir(cfg: RetrainConfig, rid: int, serving: Serving) -> tuple[str, Path]:
    version = f"r{rid}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    version_dir = cfg.models_path / version
    if serving.checkpoint and Path(serving.checkpoint).resolve() in (
        version_dir.resolve(),
        *version_dir.resolve().parents,
    ):
        raise ValueError(f"refusing to write {version_dir}: it is (inside) the serving checkpoint")
    return version, version_dir


def run_steps(cfg: RetrainConfig, store, rid: int, rdir: Path, serving: Serving, prog: Progress) -> dict:
    """Every step of one run; the caller holds the lock and records the run's end."""
    data = load_corrections(cfg, store, rid, prog)
    if cfg.base_data:
        add_base_dataset(cfg, data, prog)
    write_split_record(cfg, data, rdir)
    if len(data.train) + len(data.base_train) < 2:
        raise ValueError(
            f"only {len(data.train) + len(data.base_train)} training mention(s) (after holding out "
            f"{len(data.heldout)}): need at least 2 accepted corrections or a base dataset"
        )

    start = load_start_model(cfg, serving)
    # A frozen backbone encodes each text once for the whole run: the heads' feature cache, the
    # lexical unit's index and shortlists, and the judge's KB pass (mimic.training.text_memo).
    with shared_memo(start.model.backbone) if start.freeze else contextlib.nullcontext():
        fit_unit, why = lexical_plan(cfg, start.mode, len(data.kb), len(data.train))
        if fit_unit:
            data.train, data.select = selection_split(data.train, cfg.lexical_select)
            write_split_record(cfg, data, rdir)
        prog(
            "train",
            0.1,
            f"serving: {serving.version}"
            + (f" (checkpoint {serving.checkpoint})" if serving.checkpoint else "")
            + f"; training {len(data.train) + len(data.base_train)} mentions, {cfg.epochs} epoch(s), "
            + (f"{len(data.select)} corrections kept to choose the lexical unit's epoch and β, " if data.select else "")
            + f"lr {start.lr:g}, {'frozen' if start.freeze else 'trainable'} backbone, on {start.device}",
        )
        train_dir = rdir / "train"
        candidate, tsum, t_train = train_candidate(cfg, serving, start, data, train_dir, prog)

        index_dir, index = rdir / "candidate-index", None
        lexical: dict = {"status": "none", "reason": why}
        if fit_unit:
            index, report = fit_candidate_unit(cfg, candidate, data.kb, data.train, data.select, index_dir, prog)
            lexical = {"status": "fitted", "report": report}
        elif keep_serving_unit(start.model, candidate):
            lexical = {"status": "kept from the serving model", "reason": why}
        try:
            res, t_eval = judge(cfg, serving, start, candidate, data, rdir, prog, candidate_index=index)
        finally:
            shutil.rmtree(index_dir, ignore_errors=True)  # the app indexes a promoted version itself
        promote, reason = decide_promotion(res["serving"], res["candidate"], cfg)
        prog("evaluate", 0.9, reason)

        version, version_dir = new_version_dir(cfg, rid, serving)
        metrics = version_metrics(
            cfg,
            rid,
            version,
            version_dir,
            serving,
            start,
            data,
            res,
            (promote, reason),
            tsum,
            {"train": t_train, "evaluate": t_eval},
            candidate,
            lexical,
        )
        prog("version", 0.93, f"writing {version_dir}")
        write_version(
            train_dir / "best", version_dir, candidate, resave_backbone=start.resave_backbone, metrics=metrics
        )
        # train/last only serves to resume a run, which a retraining run never does; it holds the
        # optimizer state (twice the trained weights), so it goes. train/best stays for provenance.
        shutil.rmtree(train_dir / "last", ignore_errors=True)
        store.register_model_version(
            version, checkpoint=str(version_dir), backbone=start.backbone_label, metrics=metrics
        )
        store.update_training_run(rid, metrics=metrics, output_model_version=version)

        if promote:
            store.promote(version)
            prog("promote", 0.97, f"{version} promoted (was {serving.version})")
        else:
            prog("promote", 0.97, f"{version} registered, not promoted; {serving.version} keeps serving")
    return {
        "run_id": rid,
        "version": version,
        "promoted": promote,
        "reason": reason,
        "metrics": metrics,
        "serving": serving.version,
        "paths": {
            "run_dir": str(rdir),
            "log": str(rdir / "log.txt"),
            "progress": str(rdir / "progress.json"),
            "split": str(rdir / "split.json"),
            "train": str(train_dir),
            "checkpoint": str(version_dir),
        },
    }
