"""Serving latency and shortlist quality on a synthetic clustered KB.

`python benchmarks/bench_link.py` (also `python -m mimic bench-link`).

Steps: write a KB of N entities in clusters of about 25 that share a name (so names are ambiguous
within a cluster, and members differ by attribute words and image); train
the MIMIC heads for a few epochs on a few thousand mentions of it (frozen backbone: an untrained
head would make "agreement with exhaustive scoring" meaningless); build the index; link Q queries
and time each stage; score a subset of the queries against the whole KB to measure how often the
shortlist keeps the exhaustive top-1 (top1_agreement) and the exhaustive top-k (recall_at_k).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mimic.atomic import write_json_atomic
from mimic.data.schema import Dataset, Entity, KnowledgeBase, Mention
from mimic.models.checkpoint import load_checkpoint
from mimic.serving.index import KBIndex
from mimic.serving.linker import Linker
from mimic.testing.synthetic import ATTRS, FILLER, NAMES, hue_colour, noisy_colour_image
from mimic.testing.tiny_clip import build_tiny_clip
from mimic.training.trainer import TrainConfig, train


def make_clustered_kb(
    root: Path, n: int, n_clusters: int | None = None, image_fraction: float = 0.1, image_size: int = 32, seed: int = 0
) -> KnowledgeBase:
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    n_clusters = n_clusters or max(1, n // 25)
    (root / "kb_img").mkdir(parents=True, exist_ok=True)
    ents = []
    for i in range(n):
        c = i % n_clusters
        # Each cluster has its own base name (the cluster number keeps names distinct once the
        # word pairs run out), shared by its ~25 members: ambiguity lives inside clusters.
        base = f"{NAMES[c % len(NAMES)]} {NAMES[(c // len(NAMES)) % len(NAMES)]} {c}"
        attrs = pyrng.sample(ATTRS, 2)
        name = f"{base} {attrs[0]}"
        text = " ".join([attrs[1], *pyrng.sample(FILLER, 3), str(c % 97), str(i % 89)])
        images = []
        if pyrng.random() < image_fraction:
            p = root / "kb_img" / f"{i}.png"
            noisy_colour_image(hue_colour(i % 360, 360), image_size, rng, noise=12).save(p)
            images = [str(p)]
        ents.append(Entity(id=f"Q{i}", name=name, text=text, aliases=[base] if i % 3 == 0 else [], images=images))
    return KnowledgeBase(ents)


def make_queries(kb: KnowledgeBase, count: int, root: Path, seed: int = 1) -> list[Mention]:
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    (root / "q_img").mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        e = kb[pyrng.randrange(len(kb))]
        words = e.name.split()
        mention = " ".join(words[:3])  # the cluster's name: ambiguous among its ~25 members
        ctx = pyrng.sample(e.text.split()[:4], 2) + pyrng.sample(FILLER, 2)
        sentence = " ".join([mention, *ctx])
        img = None
        if e.images:
            p = root / "q_img" / f"{k}.png"
            noisy_colour_image(hue_colour(int(e.id[1:]) % 360, 360), 32, rng, noise=25).save(p)
            img = str(p)
        out.append(
            Mention(id=f"q{k}", sentence=sentence, mention=mention, answer=e.id, image=img, start=0, end=len(mention))
        )
    return out


def _pct(xs, q):
    return round(float(np.percentile(np.asarray(xs), q)), 3) if xs else None


def run(
    entities: int,
    backbone: str = "tiny-clip",
    queries: int = 200,
    exhaustive_queries: int = 30,
    shortlist: int = 64,
    faiss_kind: str = "flat",
    train_mentions: int = 10000,
    epochs: int = 8,
    image_fraction: float = 0.1,
    workdir: str | None = None,
    seed: int = 0,
) -> dict:
    torch.manual_seed(seed)
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-link-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        kb = make_clustered_kb(tmp, entities, image_fraction=image_fraction, seed=seed)
        qs = make_queries(kb, queries, tmp, seed=seed + 1)
        t_data = time.perf_counter() - t
        if backbone == "tiny-clip":
            backbone_path = str(build_tiny_clip(tmp / "tiny_clip"))
        else:
            backbone_path = backbone
        # Train the heads on mentions of a subset of the KB (the KB positions only matter for golds).
        train_q = make_queries(kb, train_mentions, tmp / "train", seed=seed + 2)
        sub_ids = sorted({m.answer for m in train_q}, key=lambda x: int(x[1:]))
        sub_kb = KnowledgeBase([kb[kb.position(i)] for i in sub_ids])
        cfg = TrainConfig(
            output=str(tmp / "run"),
            backbone=backbone_path,
            freeze_backbone=True,
            lr=3e-3,
            epochs=epochs,
            batch_size=64,
            progress=False,
            test_after=False,
            seed=seed,
            adam_eps=1e-8,
            no_decay="standard",
        )
        t = time.perf_counter()
        train(cfg, Dataset(sub_kb, {"train": train_q}))
        t_train = time.perf_counter() - t
        model = load_checkpoint(tmp / "run" / "best")
        t = time.perf_counter()
        index = KBIndex.build(model, kb, tmp / "index", progress=False, faiss_kind=faiss_kind, overwrite=True)
        build_seconds = time.perf_counter() - t
        linker = Linker(model, index, shortlist=shortlist)
        lat = {"encode": [], "retrieve": [], "rerank": [], "total": []}
        linker.link(qs[0].sentence, qs[0].mention, qs[0].image, explain=False)  # warm-up
        hits = 0
        for m in qs:
            t0 = time.perf_counter()
            r = linker.link(m.sentence, (m.start, m.end), m.image, top_k=10, explain=False)
            total = (time.perf_counter() - t0) * 1000
            for k in ("encode", "retrieve", "rerank"):
                lat[k].append(r.timings_ms[k])
            lat["total"].append(total)
            hits += r.top is not None and r.top.entity_id == m.answer
        agree, recall, ex_ms = 0, [], []
        sub = qs[:exhaustive_queries]
        for m in sub:
            t0 = time.perf_counter()
            S = linker.exhaustive_scores(m.sentence, (m.start, m.end), m.image)
            ex_ms.append((time.perf_counter() - t0) * 1000)
            ex_top = torch.argsort(-S, stable=True)[:10].tolist()
            r = linker.link(m.sentence, (m.start, m.end), m.image, top_k=shortlist, explain=False)
            got = [index.position[c.entity_id] for c in r.candidates]
            agree += bool(got) and got[0] == ex_top[0]
            recall.append(len(set(got) & set(ex_top)) / len(ex_top))
        fp16 = index.feature_bytes()
        res = {
            "entities": entities,
            "backbone": backbone,
            "faiss": faiss_kind,
            "shortlist": shortlist,
            "queries": len(qs),
            "images_fraction": image_fraction,
            "train_mentions": train_mentions,
            "train_epochs": epochs,
            "build_seconds": round(build_seconds, 2),
            "train_seconds": round(t_train, 2),
            "data_seconds": round(t_data, 2),
            "index_bytes_ram": index.ram_bytes(),
            "index_bytes_disk": index.disk_bytes(),
            "feature_bytes_fp16": fp16,
            "ram_over_fp16_features": round(index.ram_bytes() / fp16, 3),
            "latency_ms": {k: {"p50": _pct(v, 50), "p95": _pct(v, 95)} for k, v in lat.items()},
            "retrieve_plus_rerank_ms_p50": _pct([a + b for a, b in zip(lat["retrieve"], lat["rerank"])], 50),
            "exhaustive_ms_p50": _pct(ex_ms, 50),
            "top1_agreement": round(agree / max(len(sub), 1), 4),
            "recall_at_k": {
                "k": 10,
                "value": round(float(np.mean(recall)), 4) if recall else None,
                "queries": len(sub),
            },
            "top1_accuracy_vs_gold": round(hits / len(qs), 4),
            "torch_threads": torch.get_num_threads(),
        }
        return res
    finally:
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)


def main(a) -> dict:
    res = run(
        a.entities,
        backbone=a.backbone,
        queries=a.queries,
        exhaustive_queries=a.exhaustive_queries,
        shortlist=a.shortlist,
        faiss_kind=a.faiss,
        image_fraction=a.image_fraction,
        epochs=a.epochs,
        train_mentions=a.train_mentions,
    )
    if a.json:
        write_json_atomic(a.json, res)
    print(json.dumps(res, indent=2))
    return res


def build_parser() -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(
        prog="python benchmarks/bench_link.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--entities", type=int, default=10000)
    b.add_argument("--backbone", default="tiny-clip", help="tiny-clip | offline | a CLIP folder")
    b.add_argument("--queries", type=int, default=200)
    b.add_argument("--exhaustive-queries", type=int, default=30)
    b.add_argument("--shortlist", type=int, default=64)
    b.add_argument("--faiss", choices=["flat", "fp16", "hnsw", "ivf"], default="flat")
    b.add_argument("--image-fraction", type=float, default=0.1)
    b.add_argument("--epochs", type=int, default=8, help="training epochs of the benchmark's model")
    b.add_argument("--train-mentions", type=int, default=10000)
    b.add_argument("--json")
    return b


if __name__ == "__main__":
    main(build_parser().parse_args())
