"""The whole retraining job (`retraining.run.run_retrain`) on a synthetic store: throughput of the real
training loop with a trainable CLIP ViT-B/32-sized backbone, and the full-KB evaluation inside the job.

    python benchmarks/bench_retrain_gpu.py                      # CUDA, ViT-B/32 sizes, batch 128, bf16 and fp32
    python benchmarks/bench_retrain_gpu.py --size tiny --device cpu --entities 60 --corrections 80 \\
        --batch-size 16 --epochs 1 --precisions fp32          # smoke test

What it builds (in a temporary folder): a random CLIP of the chosen size (see bench_train_gpu.py), a KB
of --entities entities (name, description, one --image-px square JPEG each, default 256: a tinted crop of a scikit-image
sample photo), and --corrections accepted annotations by one annotator in an SQLite store, each mention
a sentence naming its entity with another crop of the entity's photo. Then, per precision, one
retraining run from the zero-shot serving model: export, hold-out, training (input cache: images decoded
once, see mimic/input_cache.py), evaluation of serving and candidate on the held-out corrections against
the full KB, version written and registered. Prints one JSON object with the job's own figures
(samples/s per epoch from the training loop, seconds per phase) and the peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

WORDS = (
    "amber basalt cedar delta ember fjord garnet harbor indigo juniper kestrel lagoon marble nectar "
    "onyx prairie quartz raven saffron tundra umber violet willow xenon yarrow zephyr atlas beacon "
    "cobalt dune"
).split()
FILLER = "the a of in at near with about from seen photo picture today yesterday visit".split()


def make_corpus(root: Path, n_entities: int, n_mentions: int, seed: int = 0, px: int = 256):
    """-> (KnowledgeBase, list of mention dicts for Store.import_mentions, {uid: entity id})."""
    from concurrent.futures import ThreadPoolExecutor

    from bench_common import random_square_crop, sample_photos
    from PIL import Image

    from mimic.data.schema import Entity, KnowledgeBase

    rng = np.random.default_rng(seed)
    photos = sample_photos()
    (root / "kb").mkdir(parents=True)
    (root / "mentions").mkdir(parents=True)
    tints = rng.integers(0, 256, (n_entities, 3))
    photo_of = rng.integers(0, len(photos), n_entities)

    def picture(e: int, path: Path, r: np.random.Generator) -> None:
        img = random_square_crop(photos[photo_of[e]], r, px)
        tint = Image.new("RGB", img.size, tuple(int(c) for c in tints[e]))
        Image.blend(img, tint, 0.45).save(path, quality=90)

    names = []
    for e in range(n_entities):
        a, b = rng.choice(len(WORDS), 2, replace=False)
        names.append(f"{WORDS[a]} {WORDS[b]} {e}")
    ents = [
        Entity(
            id=f"Q{e}",
            name=names[e],
            text=" ".join(rng.choice(WORDS, 8)) + f" entity {e}",
            images=[str(root / "kb" / f"e{e}.jpg")],
        )
        for e in range(n_entities)
    ]
    gold = rng.integers(0, n_entities, n_mentions)
    mentions = []
    for i in range(n_mentions):
        words = list(rng.choice(FILLER, 5))
        pos = int(rng.integers(0, len(words) + 1))
        left = " ".join(words[:pos])
        name = names[gold[i]]
        sentence = " ".join([*words[:pos], name, *words[pos:]])
        start = len(left) + (1 if left else 0)
        mentions.append(
            {
                "uid": f"m{i}",
                "sentence": sentence,
                "start": start,
                "end": start + len(name),
                "mention": name,
                "image": str(root / "mentions" / f"m{i}.jpg"),
            }
        )
    jobs = [(e, root / "kb" / f"e{e}.jpg") for e in range(n_entities)]
    jobs += [(int(gold[i]), root / "mentions" / f"m{i}.jpg") for i in range(n_mentions)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(lambda j: picture(j[0], j[1], np.random.default_rng([seed, zlib.crc32(str(j[1]).encode())])), jobs)
        )
    return KnowledgeBase(ents), mentions, {f"m{i}": f"Q{int(gold[i])}" for i in range(n_mentions)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["vit-b-32", "tiny"], default="vit-b-32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--entities", type=int, default=4000)
    ap.add_argument("--corrections", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--image-px", type=int, default=256, help="side of the JPEGs written (real KB photos are larger)")
    ap.add_argument("--json")
    a = ap.parse_args()
    from bench_train_gpu import build_clip

    from db import open_store
    from retraining import RetrainConfig
    from retraining.run import run_retrain

    device = torch.device(a.device)
    out: dict = {
        "size": a.size,
        "device": str(device),
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }

    from bench_common import write_json

    def dump():
        return write_json(out, a.json)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        kb, mentions, gold = make_corpus(tmp / "corpus", a.entities, a.corrections, px=a.image_px)
        store = open_store(tmp / "data")
        store.import_kb(kb)
        store.add_annotator("ana")
        store.import_mentions(mentions)
        store.submit_many([{"annotator": "ana", "mention": uid, "entity_id": eid} for uid, eid in gold.items()])
        store.close()
        out["corpus"] = {
            "entities": a.entities,
            "corrections": a.corrections,
            "image_px": a.image_px,
            "build_s": round(time.perf_counter() - t0, 1),
        }
        clip_dir = build_clip(tmp / "clip", a.size)
        for prec in [p.strip() for p in a.precisions.split(",") if p.strip()]:
            cfg = RetrainConfig(
                data_dir=str(tmp / "data"),
                backbone=str(clip_dir),
                epochs=a.epochs,
                batch_size=a.batch_size,
                device=str(device),
                bf16=(prec == "bf16"),
                freeze_backbone=False,
                prefer_promoted=False,
                eval_batch_size=128,
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            res = run_retrain(cfg)
            wall = time.perf_counter() - t0
            m = res["metrics"]
            out[prec] = {
                "job_seconds": round(wall, 1),
                "train": m["train"],
                "evaluate_seconds": m["evaluate_seconds"],
                "data": m["data"],
                "heldout": {
                    "serving_zero_shot": {k: m["serving"]["heldout"][k] for k in ("H@1", "H@5", "MRR")},
                    "candidate": {k: m["candidate"]["heldout"][k] for k in ("H@1", "H@5", "MRR")},
                },
                "promoted": res["promoted"],
            }
            if device.type == "cuda":
                out[prec]["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            print(f"{prec}: {json.dumps(out[prec])}", flush=True)
            dump()
        if "bf16" in out and "fp32" in out:

            def steady(p):  # the epochs after the first (which carries the warm-up)
                sps = out[p]["train"]["samples_per_second"]
                return float(np.mean(sps[1:] or sps))

            out["bf16_speedup_train"] = round(steady("bf16") / steady("fp32"), 2)
    print(dump())


if __name__ == "__main__":
    main()
