"""Training: in-batch negatives, validation by full-KB MRR, best checkpoint, early stopping, resume.

Plain PyTorch (no Lightning). One process per device; under `torchrun` (WORLD_SIZE > 1) each rank
takes its shard of every epoch's permutation and gradients are averaged by DDP; rank 0 validates
and writes checkpoints.

With `freeze_backbone` the backbone runs once over every training mention and KB entity and its
outputs are cached (fp16 on the CPU), so an epoch only trains the heads: the CPU-sized setting.
Checkpoints are written atomically; `last/` (with optimizer state) is rewritten after each epoch,
`best/` only when validation MRR improves, so a crash leaves the last good checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from mimic.analysis.ranking import evaluate
from mimic.atomic import write_json_atomic
from mimic.backbones import load_backbone
from mimic.config_file import ConfigFile
from mimic.data.formats import load_dataset
from mimic.data.schema import Dataset, Entity, KnowledgeBase
from mimic.models.checkpoint import load_checkpoint, save_checkpoint
from mimic.models.linking_model import LinkingModel, entity_text, load_images, mention_text
from mimic.training.feature_store import FeatureStore, entity_cache_from_store
from mimic.training.input_cache import InputCache
from mimic.training.text_memo import shared_memo

log = logging.getLogger("mimic")


@dataclass
class TrainConfig(ConfigFile):
    """Defaults are the paper's (configs/mimic_paper.yaml)."""

    data: str = ""
    data_format: str = "auto"
    text_field: str = "auto"
    output: str = "runs/mimic"
    backbone: str = "auto"
    init_checkpoint: str | None = None  # start from an existing checkpoint (fine-tuning)
    model: str = "mimic"  # model family: "mimic" or "m3el"
    cross_modal: str | None = None  # M3EL only: "t2v" (published default) or "bidirectional"
    mode: str = "fixed"
    text_max_length: int = 40
    lr: float = 1e-5
    head_lr: float | None = None  # None: one LR for everything, as the paper
    weight_decay: float = 1e-4
    adam_eps: float = 1e-4  # the official value (unusually large); kept for fidelity
    no_decay: str = "official"  # "official": only biases escape decay; "standard": biases + norms
    batch_size: int = 128
    epochs: int = 20
    val_every: int = 2
    patience: int = 3
    seed: int = 43
    train_fraction: float = 1.0
    freeze_backbone: bool = False
    eval_batch_size: int = 32
    eval_chunk_size: int = 1024
    val_max_mentions: int | None = None  # validate on the first K dev mentions (None: all)
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only
    check_every: int | None = (
        None  # read the non-finite-loss flag every N steps (and before saving); None: 1 on the CPU, 25 on CUDA
    )
    input_cache_gib: float = 16.0  # trainable backbone: decode + resize images once up to this size (0: per batch)
    grad_clip: float | None = None
    progress: bool = True
    test_after: bool = True
    # fixed mode: after the heads, fit the lexical unit S_L on the served shortlist
    # (mimic.training.lexical_unit_fit) and write OUTPUT/fused (+ OUTPUT/fused-index, fused-work)
    lexical_unit: bool = False


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def param_groups(model: nn.Module, cfg: TrainConfig):
    """AdamW groups. 'official' no_decay rule: substring match on bias/LayerNorm.bias/LayerNorm.weight,
    which with HF CLIP and MIMIC's names exempts only biases."""
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (False, True): [],
        (False, False): [],
        (True, True): [],
        (True, False): [],
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cfg.no_decay == "official":
            decayed = not any(s in name for s in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
        else:
            decayed = not (
                name.endswith("bias") or p.ndim <= 1 or "norm" in name.lower() or "embedding" in name.lower()
            )
        separate_head = bool(cfg.head_lr) and name.startswith("heads.")
        buckets[(separate_head, decayed)].append(p)
    groups = [
        {"params": buckets[(False, True)], "weight_decay": cfg.weight_decay},
        {"params": buckets[(False, False)], "weight_decay": 0.0},
    ]
    if cfg.head_lr:
        groups += [
            {"params": buckets[(True, True)], "weight_decay": cfg.weight_decay, "lr": cfg.head_lr},
            {"params": buckets[(True, False)], "weight_decay": 0.0, "lr": cfg.head_lr},
        ]
    return [g for g in groups if g["params"]]


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
class _LossModule(nn.Module):
    """What DDP wraps: a batch in, the loss out. The backbone runs inside (unless its features come
    from the frozen cache) so DDP sees and synchronises every gradient."""

    def __init__(self, model: LinkingModel, mode: str, bf16: bool):
        super().__init__()
        self.model = model
        self.fixed = mode == "fixed"
        self.bf16 = bf16

    def forward(self, batch: dict):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            if "m_feats" in batch:
                (m_text, m_img), (e_text, e_img) = batch["m_feats"], batch["e_feats"]
            elif "m_inputs" in batch:
                m_text, m_img = self.model.features_from_inputs(*batch["m_inputs"])
                e_text, e_img = self.model.features_from_inputs(*batch["e_inputs"])
            else:
                m_text, m_img = self.model.backbone_features(batch["m_texts"], batch["m_images"])
                e_text, e_img = self.model.backbone_features(batch["e_texts"], batch["e_images"])
            return self.model.heads.training_loss(m_text, m_img, e_text, e_img, batch["gold"])


def _check_finite(bad: torch.Tensor, parts, epoch: int, last_dir: Path) -> None:
    if bool(bad):
        terms = {k: round(float(v), 4) for k, v in (parts or {}).items()}
        raise FloatingPointError(
            f"non-finite training loss in epoch {epoch + 1} (last step: {terms}); "
            f"the last good checkpoint in {last_dir} is untouched"
        )


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


@dataclass
class _Run:
    """What the steps of one training run share."""

    cfg: TrainConfig
    device: torch.device
    world: int
    rank: int
    out_dir: Path
    kb: KnowledgeBase
    train_m: list
    dev_m: list
    model: LinkingModel
    gold_pos: torch.Tensor  # KB position of each training mention's gold entity
    m_store: FeatureStore | None = None  # frozen backbone: cached mention features
    e_store: FeatureStore | None = None  # frozen backbone: cached KB features
    inputs: InputCache | None = None  # trainable backbone: prepared inputs
    gold_row: torch.Tensor | None = None  # gold entity's row in `inputs`
    ddp: nn.Module | None = None
    opt: torch.optim.Optimizer | None = None
    start_epoch: int = 0
    best_mrr: float = -1.0
    bad_checks: int = 0
    history: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best"


def _setup_device(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """-> (world size, rank, device); under torchrun also joins the process group."""
    world, rank, local_rank = _dist_info()
    device = pick_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def _load_data(cfg: TrainConfig, dataset: Dataset | None) -> tuple[Dataset, list, list]:
    """The dataset (read from cfg.data unless given in memory) -> (dataset, train mentions, dev mentions)."""
    if dataset is None:
        kw = {"text_field": cfg.text_field} if cfg.text_field != "auto" else {}
        dataset = load_dataset(cfg.data, format=cfg.data_format, **kw)
    train_m = list(dataset.split("train"))
    if not 0 < cfg.train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")
    if cfg.train_fraction < 1:  # the paper's low-resource setting: the FIRST k% in file order
        train_m = train_m[: max(1, int(len(train_m) * cfg.train_fraction))]
    dev_m = list(dataset.splits.get("dev", []))
    if cfg.val_max_mentions:
        dev_m = dev_m[: cfg.val_max_mentions]
    if len(train_m) < 2:
        raise ValueError("need at least 2 training mentions for in-batch negatives")
    return dataset, train_m, dev_m


def _build_model(cfg: TrainConfig, device, last_dir: Path) -> tuple[LinkingModel, dict | None]:
    """Resume from last/, else start from cfg.init_checkpoint, else a fresh head on a backbone.
    -> (model, the saved training state when resuming)."""
    resume_state = None
    if (last_dir / "config.json").exists() and (last_dir / "training_state.pt").exists():
        model = load_checkpoint(last_dir, device)
        resume_state = torch.load(last_dir / "training_state.pt", map_location="cpu", weights_only=False)
        log.warning("resuming from %s (epoch %d)", last_dir, resume_state["epoch"])
    elif cfg.init_checkpoint:
        model = load_checkpoint(cfg.init_checkpoint, device)
        if model.config.mode != cfg.mode:
            log.warning("init checkpoint mode %s kept (config asked %s)", model.config.mode, cfg.mode)
    else:
        extra = {"cross_modal": cfg.cross_modal} if (cfg.model == "m3el" and cfg.cross_modal) else {}
        model = LinkingModel.build(
            load_backbone(cfg.backbone),
            model_type=cfg.model,
            mode=cfg.mode,
            text_max_length=cfg.text_max_length,
            **extra,
        ).to(device)
    if cfg.freeze_backbone:
        model.backbone.requires_grad_(False)
        model.backbone.eval()
    return model, resume_state


def _cache_features(run: _Run) -> float:
    """Frozen backbone: encode every training mention and KB entity once. -> seconds."""
    t0 = time.perf_counter()
    if run.cfg.freeze_backbone:
        model, kb, show = run.model, run.kb, run.cfg.progress and run.is_main
        model.backbone.to(run.device)
        run.m_store = FeatureStore(
            model, [mention_text(m) for m in run.train_m], [m.image for m in run.train_m], 256, show, "cache mentions"
        )
        run.e_store = FeatureStore(
            model,
            [entity_text(e) for e in kb.entities],
            [e.images[0] if e.images else None for e in kb.entities],
            256,
            show,
            "cache KB",
        )
    return time.perf_counter() - t0


def _cache_inputs(run: _Run) -> dict | None:
    """Trainable backbone: its inputs (tokens, decoded and resized images) are prepared once, so a
    GPU step does not wait on JPEG decoding. Only the gold entities are ever encoded in training.
    -> what the cache holds, or None without one."""
    cfg = run.cfg
    if cfg.freeze_backbone or cfg.input_cache_gib <= 0:
        return None
    t0 = time.perf_counter()
    golds = sorted(set(run.gold_pos.tolist()))
    try:
        run.inputs = InputCache(
            run.model, run.train_m, [run.kb[p] for p in golds], run.device, int(cfg.input_cache_gib * 2**30)
        )
    except MemoryError as exc:
        log.warning("%s; images are decoded per batch instead", exc)
        return None
    row_of = {p: i for i, p in enumerate(golds)}
    run.gold_row = torch.tensor([row_of[p] for p in run.gold_pos.tolist()])
    pixels = run.inputs.pixels
    info = {
        "images": len(pixels.paths),
        "bytes": pixels.nbytes,
        "on_device": pixels.on_device,
        "seconds": round(time.perf_counter() - t0, 2),
        "image_stats": run.inputs.image_stats,
    }
    log.info("input cache: %s", info)
    return info


def _setup_optimisation(run: _Run, resume_state: dict | None) -> None:
    """The loss module (DDP-wrapped under torchrun), AdamW, and the state to resume from."""
    cfg, device = run.cfg, run.device
    loss_mod = _LossModule(run.model, run.model.config.mode, cfg.bf16 and device.type == "cuda").to(device)
    run.ddp = loss_mod
    if run.world > 1:
        # Some parameters never get a gradient: the official unused CMFU context_layer_norm, CLIP's
        # logit_scale, and the visual units on text-only data.
        run.ddp = DDP(
            loss_mod, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    # fused: one kernel for the whole update on CUDA instead of several per parameter tensor.
    run.opt = torch.optim.AdamW(
        param_groups(run.model, cfg), lr=cfg.lr, betas=(0.9, 0.999), eps=cfg.adam_eps, fused=device.type == "cuda"
    )
    if resume_state:
        run.opt.load_state_dict(resume_state["optimizer"])
        run.start_epoch, run.best_mrr = resume_state["epoch"], resume_state["best_mrr"]
        run.bad_checks, run.history = resume_state["bad_checks"], resume_state["history"]
        torch.set_rng_state(resume_state["torch_rng"])
        random.setstate(resume_state["py_rng"])
        np.random.set_state(resume_state["np_rng"])


def _make_batch(run: _Run, b: torch.Tensor, pyrng: random.Random) -> dict:
    """The inputs of one batch of training-mention indices `b`, from whichever cache there is."""
    gold, kb, model = run.gold_pos[b], run.kb, run.model
    batch: dict[str, Any]
    if run.m_store is not None:
        assert run.e_store is not None  # both stores are built together (_cache_features)
        batch = {"m_feats": run.m_store.gather(b, run.device), "e_feats": run.e_store.gather(gold, run.device)}
    elif run.inputs is not None:
        assert run.gold_row is not None  # set with `inputs` (_cache_inputs)
        # The same random image per entity as below (one draw per entity, same generator).
        choice = [pyrng.choice(range(len(kb[i].images))) if kb[i].images else 0 for i in gold.tolist()]
        batch = {
            "m_inputs": run.inputs.mention_inputs(b, model.backbone),
            "e_inputs": run.inputs.entity_inputs(run.gold_row[b], choice, model.backbone),
        }
    else:
        ms = [run.train_m[i] for i in b.tolist()]
        es: list[Entity] = [kb[i] for i in gold.tolist()]
        # Training sees a random image of each entity, as the official collator.
        batch = {
            "m_texts": [mention_text(m) for m in ms],
            "e_texts": [entity_text(e) for e in es],
            "m_images": load_images([m.image for m in ms], model.config.mode),
            "e_images": load_images([pyrng.choice(e.images) if e.images else None for e in es], model.config.mode),
        }
    batch["gold"] = gold.to(run.device, non_blocking=True)
    return batch


def _train_epoch(run: _Run, epoch: int, pyrng: random.Random, check_every: int) -> dict:
    """One pass over this rank's shard of the epoch's permutation. -> the epoch's record."""
    cfg, device = run.cfg, run.device
    ddp, opt = run.ddp, run.opt
    assert ddp is not None and opt is not None  # set by _setup_optimisation
    ddp.train()
    if cfg.freeze_backbone:
        run.model.backbone.eval()
    g = torch.Generator().manual_seed(cfg.seed + epoch)
    perm = torch.randperm(len(run.train_m), generator=g)[run.rank :: run.world]
    batches = [perm[s : s + cfg.batch_size] for s in range(0, len(perm), cfg.batch_size)]
    batches = [b for b in batches if len(b) > 1]
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch") if cfg.progress and run.is_main else None
    it = batches if bar is None else bar
    t_ep, seen, step = time.perf_counter(), 0, 0
    tot = torch.zeros((), device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    parts = None
    for b in it:
        loss, parts = ddp(_make_batch(run, b, pyrng))
        # A non-finite loss must never reach a checkpoint. On the CPU it is checked before every
        # optimizer step; on a GPU reading the loss would make the host wait for the device at
        # every step, so the flag stays on the device and is read every `check_every` steps and
        # always before anything is saved.
        bad = bad | ~torch.isfinite(loss.detach())
        tot = tot + loss.detach().float() * len(b)
        step += 1
        if step % check_every == 0:
            _check_finite(bad, parts, epoch, run.last_dir)
            if bar is not None:  # i.e. cfg.progress and run.is_main
                bar.set_postfix(loss=f"{float(loss):.3f}", sps=f"{(seen + len(b)) / (time.perf_counter() - t_ep):.0f}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        opt.step()
        seen += len(b)
    _check_finite(bad, parts, epoch, run.last_dir)
    ep_time = time.perf_counter() - t_ep
    return {
        "epoch": epoch + 1,
        "train_loss": float(tot) / max(seen, 1),
        "epoch_seconds": round(ep_time, 2),
        "samples_per_second": round(seen * run.world / ep_time, 1),
    }


def _validate(run: _Run, epoch: int, rec: dict) -> bool:
    """Full-KB MRR on the dev mentions (main rank); best/ when it improves. -> stop early?"""
    cfg, model = run.cfg, run.model
    ecache = (
        model.entity_cache(run.kb.entities, batch_size=256)
        if run.m_store is None or run.e_store is None  # built together: both or neither
        else entity_cache_from_store(model, run.e_store, run.device)
    )
    res = evaluate(
        model, run.kb, run.dev_m, batch_size=cfg.eval_batch_size, chunk_size=cfg.eval_chunk_size, entity_cache=ecache
    )
    rec["dev"] = {k: v for k, v in res.items() if k != "ranks"}
    if res["MRR"] > run.best_mrr:
        run.best_mrr, run.bad_checks = res["MRR"], 0
        save_checkpoint(
            model,
            run.best_dir,
            backbone_trained=not cfg.freeze_backbone,
            metrics={"dev": rec["dev"], "epoch": epoch + 1, "train_config": asdict(cfg)},
        )
    else:
        run.bad_checks += 1
    return run.bad_checks >= cfg.patience


def _save_last(run: _Run, epoch: int) -> None:
    """last/: the model with everything needed to resume after `epoch`."""
    assert run.opt is not None  # set by _setup_optimisation
    state = {
        "optimizer": run.opt.state_dict(),
        "epoch": epoch + 1,
        "best_mrr": run.best_mrr,
        "bad_checks": run.bad_checks,
        "history": run.history,
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state(),
    }
    save_checkpoint(
        run.model,
        run.last_dir,
        backbone_trained=not run.cfg.freeze_backbone,
        training_state=state,
        metrics={"history": run.history},
    )


def _agree_to_stop(run: _Run, stop: bool) -> bool:
    """Under torchrun every rank follows the main rank's early-stopping decision."""
    if run.world == 1:
        return stop
    flag = torch.tensor([1 if stop else 0], device=run.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())


def _test_best(run: _Run, dataset: Dataset) -> dict:
    """The best checkpoint on the test split; its metrics.json gets the result too."""
    cfg = run.cfg
    best = load_checkpoint(run.best_dir, run.device, backbone=run.model.backbone if cfg.freeze_backbone else None)
    res = evaluate(best, run.kb, dataset.split("test"), batch_size=cfg.eval_batch_size, chunk_size=cfg.eval_chunk_size)
    test = {k: v for k, v in res.items() if k != "ranks"}
    metrics = json.loads((run.best_dir / "metrics.json").read_text())
    write_json_atomic(run.best_dir / "metrics.json", {**metrics, "test": test})
    return test


def _fit_lexical_unit(run: _Run, dataset: Dataset) -> dict:
    """best/ + the lexical unit -> OUTPUT/fused; its served test metrics when `test_after`."""
    from mimic.training.lexical_unit_fit import train_lexical_unit  # lazy: imports the serving stack

    out = run.out_dir / "fused"
    report = train_lexical_unit(run.best_dir, dataset, out, progress=run.cfg.progress, log=log.warning)
    report.pop("epochs", None)
    if run.cfg.test_after and dataset.splits.get("test"):
        fused = load_checkpoint(out, run.device, backbone=run.model.backbone if run.cfg.freeze_backbone else None)
        t_test = time.perf_counter()
        res = evaluate(fused, run.kb, dataset.split("test"))
        report["test"] = {k: v for k, v in res.items() if k != "ranks"} | {
            "seconds": round(time.perf_counter() - t_test, 2)
        }
    report["checkpoint"] = str(out)
    return report


def _phases(summary: dict, total: float, memo) -> dict:
    """Wall seconds per phase of the run (the recipe's time budget is judged on these)."""
    hist = summary.get("history", [])
    lex = summary.get("lexical_unit") or {}
    out = {
        "feature_cache": summary.get("feature_cache_seconds"),
        "train_epochs": round(sum(r.get("epoch_seconds", 0.0) for r in hist), 1),
        "dev_validation": round(sum(r.get("dev_seconds", 0.0) for r in hist), 1),
        "heads_test": (summary.get("test") or {}).get("seconds"),
        "lexical_index": lex.get("index_seconds"),
        "lexical_shortlists": lex.get("collect_seconds"),
        "lexical_fit": lex.get("fit_seconds"),
        "fused_test": (lex.get("test") or {}).get("seconds"),
        "total": round(total, 1),
    }
    if memo is not None:
        out["text_memo"] = memo.stats()
    return {k: v for k, v in out.items() if v is not None}


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> dict:
    """Train a model on `dataset` (in memory) or, when None, on the dataset at cfg.data; returns a
    summary dict (best dev metrics, test metrics, paths, timings)."""
    world, rank, device = _setup_device(cfg)
    set_seed(cfg.seed)
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset, train_m, dev_m = _load_data(cfg, dataset)
    model, resume_state = _build_model(cfg, device, out_dir / "last")
    # frozen backbone: each text is encoded once for every phase below (mimic.training.text_memo)
    memo = shared_memo(model.backbone) if cfg.freeze_backbone else contextlib.nullcontext()
    t_start = time.perf_counter()
    with memo as text_memo:
        run = _Run(
            cfg,
            device,
            world,
            rank,
            out_dir,
            dataset.kb,
            train_m,
            dev_m,
            model,
            gold_pos=torch.empty(0, dtype=torch.long),
        )
        # gold_pos: the placeholder is replaced below, once the features are cached
        t_enc = _cache_features(run)
        run.gold_pos = torch.tensor([run.kb.position(m.answer) for m in train_m])
        input_cache_info = _cache_inputs(run)
        _setup_optimisation(run, resume_state)

        pyrng = random.Random(cfg.seed)
        check_every = cfg.check_every or (25 if device.type == "cuda" else 1)
        summary = {
            "train_mentions": len(train_m),
            "dev_mentions": len(dev_m),
            "entities": len(run.kb),
            "feature_cache_seconds": round(t_enc, 2),
            "device": str(device),
            "input_cache": input_cache_info,
        }
        for epoch in range(run.start_epoch, cfg.epochs):
            rec = _train_epoch(run, epoch, pyrng, check_every)
            stop = False
            if run.is_main and dev_m and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                t_val = time.perf_counter()
                stop = _validate(run, epoch, rec)
                rec["dev_seconds"] = round(time.perf_counter() - t_val, 2)
            run.history.append(rec)
            if run.is_main:
                log.warning("epoch %d: %s", epoch + 1, json.dumps(rec))
                _save_last(run, epoch)
            if _agree_to_stop(run, stop):
                break

        summary["history"] = run.history
        summary["best_dev_mrr"] = run.best_mrr
        if run.is_main and not dev_m:  # nothing to select on: the last model is the best one
            save_checkpoint(
                model, run.best_dir, backbone_trained=not cfg.freeze_backbone, metrics={"history": run.history}
            )
        if run.is_main and cfg.test_after and dataset.splits.get("test") and (run.best_dir / "config.json").exists():
            t_test = time.perf_counter()
            summary["test"] = _test_best(run, dataset) | {"seconds": round(time.perf_counter() - t_test, 2)}
        if run.is_main and cfg.lexical_unit and (run.best_dir / "config.json").exists():
            summary["lexical_unit"] = _fit_lexical_unit(run, dataset)
        summary["phases"] = _phases(summary, time.perf_counter() - t_start, text_memo)
        if run.is_main:
            log.warning("phases (seconds): %s", json.dumps(summary["phases"]))
            write_json_atomic(out_dir / "summary.json", summary)
        if world > 1:
            dist.destroy_process_group()
    summary["best_checkpoint"] = str(run.best_dir)
    return summary
