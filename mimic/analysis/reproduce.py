"""`python -m mimic reproduce`: check an official MIMIC "cleaned" release, evaluate a checkpoint with
the full-KB protocol, and put the row beside the published one (JSON + Markdown report).

Published figures and dataset statistics come from the project spec (shared/spec/models.md): MIMIC's
Table 1 (MIMIC README, §4), M3EL's final test metrics from its official `logs/*_baseline.logs` (§2.5),
KB sizes from the official YAMLs' `num_entity` (§1.4), test sizes from the M3EL logs, train/dev sizes
as the ranges implied by the logs' progress bars (batches × batch size, §2.5).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy
import PIL
import torch
import transformers

from mimic.analysis.ranking import evaluate
from mimic.atomic import write_text_atomic
from mimic.data.official import load_official
from mimic.models.checkpoint import code_version, load_checkpoint, read_config
from mimic.models.linking_model import load_one_image
from mimic.training.trainer import pick_device

DATASETS = ("wikimel", "richpediamel", "wikidiverse")
METRICS = ("H@1", "H@3", "H@5", "MRR", "MR")

SOURCE_MIMIC = "MIMIC README Table 1 (pengfei-luo/MIMIC); spec shared/spec/models.md §4"
SOURCE_M3EL = "official logs/*_baseline.logs, best Val/mrr checkpoint, desc variant; spec §2.5"

#: (model, dataset) -> published test row (percent; MR in ranks) and its source. Full-KB protocol.
PUBLISHED: dict[tuple[str, str], dict] = {
    ("mimic", "wikimel"): {"H@1": 87.98, "H@3": 95.07, "H@5": 96.37, "MRR": 91.82, "MR": 11.02, "source": SOURCE_MIMIC},
    ("mimic", "richpediamel"): {
        "H@1": 81.02, "H@3": 91.77, "H@5": 94.38, "MRR": 86.95, "MR": 55.11, "source": SOURCE_MIMIC,
    },
    ("mimic", "wikidiverse"): {
        "H@1": 63.51, "H@3": 81.04, "H@5": 86.43, "MRR": 73.44, "MR": 227.08, "source": SOURCE_MIMIC,
    },
    ("m3el", "wikimel"): {
        "H@1": 88.84, "H@3": 95.20, "H@5": 96.71, "H@10": 98.08, "H@20": 98.74, "MRR": 92.30, "MR": 14.66,
        "source": SOURCE_M3EL,
    },
    ("m3el", "richpediamel"): {
        "H@1": 82.82, "H@3": 92.73, "H@5": 95.34, "H@10": 97.05, "H@20": 98.15, "MRR": 88.26, "MR": 96.23,
        "source": SOURCE_M3EL,
    },
    ("m3el", "wikidiverse"): {
        "H@1": 74.06, "H@3": 86.57, "H@5": 90.04, "H@10": 93.55, "H@20": 95.62, "MRR": 81.29, "MR": 155.87,
        "source": SOURCE_M3EL,
    },
}  # fmt: skip

#: Published dataset statistics: exact counts, or (low, high) ranges inferred from progress bars
#: (M3EL logs: steps of 128 training mentions, batches of 20 dev mentions).
PUBLISHED_STATS: dict[str, dict] = {
    "wikimel": {
        "entities": 109_976, "train": (141 * 128 + 1, 142 * 128), "dev": (129 * 20 + 1, 130 * 20), "test": 5_169,
    },
    "richpediamel": {
        "entities": 160_933, "train": (97 * 128 + 1, 98 * 128), "dev": (88 * 20 + 1, 89 * 20), "test": 3_562,
    },
    "wikidiverse": {
        "entities": 132_460, "train": (88 * 128 + 1, 89 * 128), "dev": (83 * 20 + 1, 84 * 20), "test": 2_078,
    },
}  # fmt: skip
STATS_SOURCE = (
    "KB size: official YAML num_entity (spec §1.4); test: M3EL logs (spec §2.5); train/dev: ranges implied "
    "by the M3EL logs' progress bars (spec §2.5)"
)

#: Split-file prefix -> dataset, and the mention-image folder each official config expects.
PREFIX_DATASET = {
    "WIKIMEL": "wikimel",
    "RichpediaMEL": "richpediamel",
    "wiki_diverse": "wikidiverse",
    "WikiDiverse": "wikidiverse",
}
EXPECTED_MENTION_IMAGE_DIR = {
    "wikimel": "mention_image",
    "richpediamel": "mention_images",
    "wikidiverse": "mention_image",
}
#: The KB text each paper's published run used.
EXPECTED_TEXT_FIELD = {"mimic": "attr", "m3el": "desc"}


def _within(n: int, want) -> bool:
    return want[0] <= n <= want[1] if isinstance(want, tuple) else n == want


def _fmt_want(want) -> str:
    return f"{want[0]:,}–{want[1]:,}" if isinstance(want, tuple) else f"{want:,}"


def _text_field(root: Path) -> str:
    """attr / desc / unknown, from the first record of kb_entity.json (read as the loader does)."""
    try:
        with open(root / "kb_entity.json", encoding="utf-8") as f:
            head = f.read(65536)
        for key in ("attr", "desc"):
            if f'"{key}"' in head:
                return key
    except OSError:
        pass
    return "unknown"


def _check_image(path: str | None, mode: str) -> str:

    return load_one_image(path, mode)[1]


def check_images(ds, mode: str, workers: int = 8) -> dict:
    """Decode every image evaluation reads (each mention's, each entity's first), as the model's
    mode does -> {split or "kb": {loaded, absent, unreadable, non_rgb_zeroed}}."""
    out: dict[str, dict] = {}
    groups = {s: [m.image for m in ms] for s, ms in ds.splits.items()}
    groups["kb"] = [e.images[0] if e.images else None for e in ds.kb.entities]
    with ThreadPoolExecutor(workers) as pool:
        for name, paths in groups.items():
            counts: dict[str, int] = {}
            for outcome in pool.map(lambda p: _check_image(p, mode), paths):
                counts[outcome] = counts.get(outcome, 0) + 1
            out[name] = counts
    return out


def check_release(
    root: Path, dataset: str, ds, model_type: str, mode: str, image_check: bool
) -> tuple[dict, list[str]]:
    """-> (data summary, problems): counts against the published statistics, image folders, missing
    and unreadable images per split, KB text field."""
    problems: list[str] = []
    st = ds.stats
    want = PUBLISHED_STATS[dataset]
    counts = {"entities": len(ds.kb), **{s: len(ms) for s, ms in ds.splits.items()}}
    comparison = {}
    for key in ("entities", "train", "dev", "test"):
        have = counts.get(key)
        ok = have is not None and _within(have, want[key])
        comparison[key] = {"found": have, "published": _fmt_want(want[key]), "matches": ok}
        if not ok:
            what = "KB entities" if key == "entities" else f"{key} mentions"
            problems.append(
                f"{what}: {have if have is not None else 'no split file'} found, published {_fmt_want(want[key])}"
                " (does not match the published statistics)"
            )
    mention_dir = Path(st.get("mention_image_dir", ""))
    expected = EXPECTED_MENTION_IMAGE_DIR[dataset]
    if not mention_dir.is_dir():
        problems.append(
            f"no mention image folder: neither mention_image/ nor mention_images/ in {root}"
            " (every mention is image-less)"
        )
    elif mention_dir.name != expected:
        problems.append(
            f"mention images are in {mention_dir.name}/, but the official {dataset} config expects {expected}/: read "
            f"here as found; the official code would find none and silently use zero images for every mention"
        )
    if not Path(st.get("kb_image_dir", "")).is_dir():
        problems.append(f"no kb_image/ folder in {root} (every entity is image-less)")
    missing_m = st.get("missing_mention_images_by_split", {})
    for split, n in missing_m.items():
        total = counts.get(split, 0)
        problems.append(
            f"{split}: {n} of {total} mention images missing (the official loader silently uses black/zero images)"
        )
    if st.get("missing_entity_images"):
        problems.append(
            f"kb: {st['missing_entity_images']} entity image files listed in kb_entity.json are missing"
            " (the official loader silently uses zero images)"
        )
    images = check_images(ds, mode) if image_check else None
    for name, c in (images or {}).items():
        bad = c.get("unreadable", 0)
        if bad:
            problems.append(f"{name}: {bad} images cannot be decoded (the official loader silently uses zero images)")
        if c.get("non_rgb_zeroed", 0):
            problems.append(
                f"{name}: {c['non_rgb_zeroed']} images are not RGB: compat mode zeroes them as the official code did "
                "under transformers 4.18 (fixed mode converts them)"
            )
    field = _text_field(root)
    if field != EXPECTED_TEXT_FIELD[model_type]:
        problems.append(
            f"KB text is '{field}', but the published {model_type.upper()} figures use "
            f"'{EXPECTED_TEXT_FIELD[model_type]}'"
        )
    summary = {
        "dataset": dataset,
        "folder": str(root),
        "counts": counts,
        "published_statistics": comparison,
        "statistics_source": STATS_SOURCE,
        "nil_dropped": st.get("nil_dropped", {}),
        "kb_text_field": field,
        "mention_image_dir": str(mention_dir),
        "missing_mention_images": missing_m,
        "missing_entity_images": st.get("missing_entity_images", 0),
        "image_check": images,
    }
    return summary, problems


def environment(device: str, seed: int) -> dict:

    hw = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": device}
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        hw["gpu"] = torch.cuda.get_device_name(0)
    return {
        "seed": seed,
        "versions": {
            "mimic": code_version(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
        },
        "hardware": hw,
    }


def detect_dataset(prefix: str) -> str | None:
    return PREFIX_DATASET.get(prefix.rstrip("_"))


def _row(metrics: dict) -> dict:
    return {k: (round(100 * metrics[k], 2) if k != "MR" else round(metrics[k], 2)) for k in METRICS if k in metrics}


def markdown(report: dict) -> str:
    r = report
    lines = [
        f"# Reproduction: {r['model_type'].upper()} on {r['dataset']} ({r['split']})",
        "",
        f"Checkpoint `{r['checkpoint']}`, mode `{r['mode']}`"
        + (f", cross-modal head `{r['cross_modal_eval']}`" if r.get("cross_modal_eval") else "")
        + f". Data `{r['data']['folder']}`.",
        "",
        "| row | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
        "| this run | " + " | ".join(f"{r['row'].get(k, '')}" for k in METRICS) + " |",
    ]
    pub = r.get("published")
    if pub:
        lines.append("| published | " + " | ".join(f"{pub.get(k, '')}" for k in METRICS) + " |")
        lines.append("| difference | " + " | ".join(f"{r['difference'].get(k, ''):+.2f}" for k in METRICS) + " |")
        lines += ["", f"Published: {pub['source']}."]
    else:
        lines += ["", f"No published row: {r['published_note']}"]
    if r.get("comparable_notes"):
        lines += ["", "Not the published protocol:"] + [f"- {n}" for n in r["comparable_notes"]]
    lines += ["", "## Data check", ""]
    lines += ["| | found | published | |", "|---|---|---|---|"]
    for k, c in r["data"]["published_statistics"].items():
        lines.append(f"| {k} | {c['found']} | {c['published']} | {'ok' if c['matches'] else 'MISMATCH'} |")
    lines += [""] + ([f"- {p}" for p in r["problems"]] if r["problems"] else ["No problem found."])
    env = r["environment"]
    lines += [
        "",
        "## Run",
        "",
        f"Seed {env['seed']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "Hardware: " + ", ".join(f"{k} {v}" for k, v in env["hardware"].items()) + ".",
        f"Evaluation: {r['metrics']['count']} mentions against {r['metrics']['entities']} entities in "
        f"{r['metrics']['rank_seconds'] + r['metrics']['kb_encode_seconds']:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


def reproduce(
    data: str | Path,
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    split: str = "test",
    out: str | Path | None = None,
    train_fraction: float | None = None,
    cross_modal_eval: str | None = None,
    device: str = "auto",
    seed: int = 43,
    batch_size: int = 32,
    chunk_size: int = 1024,
    image_check: bool = True,
    progress: bool = False,
) -> dict:
    """Check the release, evaluate, compare. Raises ValueError/FileNotFoundError for what cannot be
    evaluated at all (no such folder, malformed files, a split missing); data problems that still
    allow an evaluation are listed in report["problems"]."""

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"official dataset folder not found: {root}")
    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    cfg = read_config(checkpoint)
    model_type = cfg.get("model_type", "mimic")
    mode = cfg["model_config"].get("mode", "fixed")
    ds = load_official(root)
    detected = detect_dataset(ds.stats["prefix"])
    if dataset is None:
        if detected is None:
            raise ValueError(
                f"{root}: cannot tell the dataset from the split files ({ds.stats['prefix']}*.json): pass --dataset"
            )
        dataset = detected
    if split not in ds.splits:
        raise ValueError(f"{root}: no {split} split (found {', '.join(ds.splits) or 'none'})")
    summary, problems = check_release(root, dataset, ds, model_type, mode, image_check)
    if detected is not None and detected != dataset:
        problems.append(
            f"split files are named like {detected}'s ({ds.stats['prefix']}*.json), --dataset says {dataset}"
        )

    torch.manual_seed(seed)
    dev = pick_device(device)
    overrides = {"cross_modal_eval": cross_modal_eval} if cross_modal_eval else None
    model = load_checkpoint(checkpoint, dev, overrides=overrides)
    t0 = time.time()
    metrics = evaluate(model, ds.kb, ds.split(split), batch_size=batch_size, chunk_size=chunk_size, progress=progress)
    metrics.pop("ranks")
    mc = model.heads.config
    eval_head = getattr(mc, "eval_head", None)
    notes: list[str] = []
    if mode != "compat":
        notes.append("fixed mode: deliberate deviations from the official code (docs/models.md), expect other figures")
    if model_type == "m3el" and eval_head != "t2v":
        notes.append(
            "scored with the trained bidirectional head; the official evaluation (and its published figures) used cmm"
        )
    if split != "test":
        notes.append(f"split {split}: the published figures are test figures")
    frac = train_fraction if train_fraction is not None else cfg.get("train_fraction")
    row = _row(metrics)
    report: dict = {
        "model_type": model_type,
        "dataset": dataset,
        "split": split,
        "checkpoint": str(checkpoint),
        "mode": mode,
        "cross_modal": getattr(mc, "cross_modal", None),
        "cross_modal_eval": eval_head,
        "train_fraction": frac,
        "row": row,
        "metrics": metrics,
        "data": summary,
        "problems": problems,
        "comparable_notes": notes,
        "environment": environment(str(dev), seed),
        "wall_seconds": round(time.time() - t0, 2),
    }
    published = PUBLISHED.get((model_type, dataset))
    if frac is not None and float(frac) < 1:
        published = None
        report["published_note"] = (
            f"low-resource run (train fraction {frac}): the spec holds no published figures for this setting"
        )
    elif published is None:
        report["published_note"] = f"no published {model_type} figures for {dataset}"
    if published:
        report["published"] = published
        report["difference"] = {k: round(row[k] - published[k], 2) for k in METRICS if k in row and k in published}
    if out:
        outp = Path(out)
        outp.mkdir(parents=True, exist_ok=True)
        write_text_atomic(outp / "reproduce.json", json.dumps(report, indent=2, default=str) + "\n")
        write_text_atomic(outp / "reproduce.md", markdown(report))
        report["written"] = [str(outp / "reproduce.json"), str(outp / "reproduce.md")]
    return report


def problems_text(problems: Sequence[str]) -> str:
    return "\n".join(f"[mimic] data problem: {p}" for p in problems)
