"""Build the app's default checkpoint (`assets/models/default/`): MIMIC (`fixed` mode) heads on the
frozen offline backbone (MiniLM + EfficientNet-Lite0), trained on the demo KB.

Training data, all made from the demo KB's entities (names, aliases, descriptions, photos and
drawings) and never from the 48 demo examples, which are the evaluation set:

  text mentions    synthetic sentences from the names, aliases and descriptions (`texts`), no image
  image mentions   augmented views of the entities' images (`augment`) with a neutral or an
                   informative sentence: VDLU learns to match a view to its entity's image
  bridge mentions  the EfficientNet's own ImageNet class names for a view of the entity's image
                   (`bridge`), no image: CMFU learns text→image evidence without CLIP

A second, smaller synthetic set (other seeds) is the dev split that picks the best epoch. Training
is `mimic.training.trainer.train` with the backbone frozen (features cached once, heads trained).
Afterwards VDLU's no-image score is calibrated on the dev split (`calibrate_no_image_score`), so
that an entity added without an image is not ranked below every entity with one.

    python -m assets.default_model                  # rebuild assets/models/default/
    python -m assets.default_model --output /tmp/m  # somewhere else
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from assets.default_model.augment import augmented_view
from assets.default_model.bridge import image_class_probs, imagenet_labels, top_classes
from assets.default_model.texts import (
    alias_mention,
    bridge_mention,
    check_disjoint,
    context_mention,
    fact_mention,
    neutral_mention,
    text_mentions,
)
from assets.demo_builder.build import demo_kb_path, load_demo_kb
from mimic.data import images as imaging
from mimic.data.jsonl import load_jsonl_dataset
from mimic.data.schema import Dataset, Entity, KnowledgeBase, Mention
from mimic.models.checkpoint import load_checkpoint, save_checkpoint
from mimic.training.trainer import TrainConfig, train

log = logging.getLogger("assets.default_model")

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "models" / "default"
COMMAND = "python -m assets.default_model"


@dataclass
class BuildConfig:
    output: str = str(DEFAULT_OUTPUT)
    seed: int = 17
    # per entity, training split
    text_mentions: int = 24
    image_views: int = 12  # spread over the entity's images
    bridge_mentions: int = 6  # the first from the image itself, the rest from views
    neutral_share: float = 0.6  # image mentions whose sentence says nothing (the image decides)
    # per entity, dev split (picks the better of the validated epochs)
    dev_text_mentions: int = 3
    dev_image_views: int = 2
    dev_bridge_mentions: int = 1
    # training (mimic.training.trainer.TrainConfig); validation re-encodes the dev mentions with
    # the backbone, so it runs every `val_every` epochs only
    epochs: int = 6
    val_every: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    bridge_top_k: int = 3
    bridge_min_prob: float = 0.05


def _open(path: str):
    return imaging.load_image(path, convert_rgb=True)


def make_split(
    kb: KnowledgeBase,
    split: str,
    rng: random.Random,
    view_dir: Path,
    backbone,
    labels: list[str],
    *,
    n_text: int,
    n_views: int,
    n_bridge: int,
    neutral_share: float,
    top_k: int = 3,
    min_prob: float = 0.05,
) -> tuple[list[Mention], dict]:
    """One split's synthetic mentions for every entity of `kb`; image views are written under
    `view_dir` (JPEG). -> (mentions, counts)."""
    view_dir.mkdir(parents=True, exist_ok=True)
    informative = [fact_mention, context_mention, alias_mention]
    mentions: list[Mention] = []
    bridge_src: list[tuple[Entity, int]] = []
    bridge_imgs: list = []
    counts = {"text": 0, "image": 0, "image_neutral": 0, "bridge": 0}
    for e in kb.entities:
        mentions += text_mentions(e, rng, n_text, split)
        counts["text"] += n_text
        if not e.images:
            continue
        originals = [_open(p) for p in e.images]
        for j in range(n_views):
            view = augmented_view(originals[j % len(originals)], rng)
            path = view_dir / f"{e.id}-{j:02d}.jpg"
            view.save(path, "JPEG", quality=85)
            mid = f"{split}-{e.id}-v{j}"
            if rng.random() < neutral_share:
                m = neutral_mention(mid, e, rng, str(path))
                counts["image_neutral"] += 1
            else:
                m = replace(rng.choice(informative)(mid, e, rng), image=str(path))
            mentions.append(m)
            counts["image"] += 1
        for j in range(n_bridge):
            src = originals[j % len(originals)]
            bridge_imgs.append(src if j < len(originals) else augmented_view(src, rng))
            bridge_src.append((e, j))
    probs = image_class_probs(backbone, bridge_imgs)
    for (e, j), p in zip(bridge_src, probs):
        mentions.append(bridge_mention(f"{split}-{e.id}-b{j}", e, rng, top_classes(p, labels, top_k, min_prob)))
        counts["bridge"] += 1
    return mentions, counts


@torch.no_grad()
def calibrate_no_image_score(model, kb: KnowledgeBase, mentions: list[Mention]) -> dict:
    """Set fixed mode's learned no-image VDLU score to the mean S_V of the non-gold (mention view,
    entity) pairs of `mentions` (those with an image). -> {"trained", "calibrated", "pairs"}.

    Every demo entity has an image, so in training the constant only ever stood in for a whole row
    (text-only mentions), where it shifts every candidate alike and gets no gradient: it stays near
    its initial 0, far below the S_V of real image pairs, and an entity added without an image would
    then rank below every entity with one whenever the query has an image. Calibrated, a missing
    image counts like an average non-matching one. The demo figures do not move: with every entity
    imaged, the constant only shifts text-only queries' candidates all alike."""
    ms = [m for m in mentions if m.image]
    out = model.heads.score(model.mention_cache(ms), model.entity_cache(kb.entities))
    gold = torch.tensor([kb.position(str(m.answer)) for m in ms])
    non_gold = torch.ones_like(out.S_V, dtype=torch.bool)
    non_gold[torch.arange(len(ms)), gold] = False
    trained = float(model.heads.no_image_score)
    value = float(out.S_V[non_gold].mean())
    model.heads.no_image_score.fill_(value)
    return {"trained": trained, "calibrated": value, "pairs": int(non_gold.sum())}


def demo_example_sentences() -> list[str]:
    """The sentences of the 48 demo examples (the evaluation set, never trained on)."""
    return [m.sentence for m in load_jsonl_dataset(demo_kb_path()).split("examples")]


def make_dataset(cfg: BuildConfig, work: Path, backbone, kb: KnowledgeBase | None = None) -> tuple[Dataset, dict]:
    """The training dataset (train + dev splits, demo KB) -> (dataset, counts per split)."""
    kb = kb if kb is not None else load_demo_kb()[0]
    labels = imagenet_labels()
    splits, counts = {}, {}
    for split, seed_offset, n_text, n_views, n_bridge in (
        ("train", 0, cfg.text_mentions, cfg.image_views, cfg.bridge_mentions),
        ("dev", 1000, cfg.dev_text_mentions, cfg.dev_image_views, cfg.dev_bridge_mentions),
    ):
        splits[split], counts[split] = make_split(
            kb,
            split,
            random.Random(cfg.seed + seed_offset),
            work / "views" / split,
            backbone,
            labels,
            n_text=n_text,
            n_views=n_views,
            n_bridge=n_bridge,
            neutral_share=cfg.neutral_share,
            top_k=cfg.bridge_top_k,
            min_prob=cfg.bridge_min_prob,
        )
    forbidden = demo_example_sentences()
    for ms in splits.values():
        check_disjoint(ms, forbidden)
    return Dataset(kb, splits, name="default-model-synthetic"), counts


def build_default_model(cfg: BuildConfig | None = None, work_dir: str | Path | None = None) -> dict:
    """Build the checkpoint at cfg.output (written atomically). -> summary (counts, epochs, dev
    metrics of the chosen epoch, seconds)."""
    from mimic.backbones import load_backbone

    cfg = cfg or BuildConfig()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="default-model-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        backbone = load_backbone("offline").eval()
        with torch.no_grad():
            dataset, counts = make_dataset(cfg, work, backbone)
        del backbone
        t_data = time.perf_counter() - t0
        log.info("training data: %s (%.1f s)", json.dumps(counts), t_data)
        tc = TrainConfig(
            output=str(work / "run"),
            backbone="offline",
            model="mimic",
            mode="fixed",
            lr=cfg.lr,
            adam_eps=1e-8,
            no_decay="standard",
            batch_size=cfg.batch_size,
            epochs=cfg.epochs,
            val_every=cfg.val_every,
            patience=cfg.epochs + 1,
            seed=cfg.seed,
            freeze_backbone=True,
            device="cpu",
            eval_batch_size=64,
            progress=False,
            test_after=False,
        )
        summary = train(tc, dataset)
        best = load_checkpoint(work / "run" / "best")
        no_image = calibrate_no_image_score(best, dataset.kb, dataset.split("dev"))
        chosen = json.loads((work / "run" / "best" / "metrics.json").read_text())
        seconds = round(time.perf_counter() - t0, 1)
        metrics = {
            "built_by": COMMAND,
            "build_config": asdict(cfg) | {"output": None},
            "training_data": counts,
            "trained_on": "synthetic mentions of the demo KB's entities (assets/default_model); "
            "not the 48 demo examples",
            "best_epoch": chosen.get("epoch"),
            "dev_synthetic": chosen.get("dev"),
            "no_image_score": {
                **no_image,
                "rule": "mean S_V of the non-gold (view, entity) pairs of the synthetic dev split",
            },
            "history": summary.get("history"),
            "feature_cache_seconds": summary.get("feature_cache_seconds"),
            "build_seconds": seconds,
        }
        extra = {"default_model": {"command": COMMAND, "seed": cfg.seed, "kb": "assets/demo_kb"}}
        out = save_checkpoint(best, cfg.output, backbone_trained=False, metrics=metrics, extra=extra)
    return {"output": str(out), **metrics}
