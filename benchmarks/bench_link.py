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
import subprocess
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
            img = noisy_colour_image(hue_colour(i % 360, 360), image_size, rng, noise=12)  # rng advances either way
            if not p.exists():  # a rerun in a kept workdir (resume) does not rewrite 100,000 PNGs
                img.save(p)
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


def _memory() -> dict:
    """This process's memory from /proc/self/status, MiB: VmRSS (resident now), VmHWM (peak
    resident), RssAnon (heap: what the process itself holds), RssFile (mapped file pages that are
    resident: reclaimable page cache, here the token store and lexical arrays that were read)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key + "_mib"] = round(int(val.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def _load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _save_queries(path: Path, qs: list[Mention]) -> None:
    with path.open("w") as f:
        for m in qs:
            keys = ("id", "sentence", "mention", "answer", "image", "start", "end")
            f.write(json.dumps({k: getattr(m, k) for k in keys}) + "\n")


def _load_queries(path: Path) -> list[Mention]:
    return [Mention(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def prepare(
    tmp: Path,
    entities: int,
    backbone: str,
    queries: int,
    faiss_kind: str,
    train_mentions: int,
    epochs: int,
    image_fraction: float,
    seed: int,
    progress: bool,
    real_entities: int | None = None,
) -> dict:
    """Build phase, resumable in a kept work folder: KB + queries, trained model, index.

    Each step is skipped when its output is complete (queries.jsonl, run/best, index/index.json);
    an interrupted index build resumes from its chunk manifest."""
    torch.manual_seed(seed)
    info: dict = {}
    index_dir = tmp / "index"
    kb = None
    t = time.perf_counter()
    if not (tmp / "queries.jsonl").exists() or not (index_dir / "index.json").exists():
        kb = make_clustered_kb(tmp, entities, image_fraction=image_fraction, seed=seed)
        if not (tmp / "queries.jsonl").exists():
            _save_queries(tmp / "queries.jsonl", make_queries(kb, queries, tmp, seed=seed + 1))
    info["data_seconds"] = round(time.perf_counter() - t, 2)
    if not (tmp / "run" / "best").exists():
        if kb is None:
            kb = make_clustered_kb(tmp, entities, image_fraction=image_fraction, seed=seed)
        backbone_path = str(build_tiny_clip(tmp / "tiny_clip")) if backbone == "tiny-clip" else backbone
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
        info["train_seconds"] = round(time.perf_counter() - t, 2)
    if not (index_dir / "index.json").exists():
        model = load_checkpoint(tmp / "run" / "best")
        assert kb is not None
        t = time.perf_counter()
        resumed = (tmp / ".index.building").exists()
        if real_entities is not None and real_entities < len(kb):
            info["synthetic_features"] = synthesize_rows(model, kb, tmp, real_entities, faiss_kind, progress, seed)
        KBIndex.build(model, kb, index_dir, progress=progress, faiss_kind=faiss_kind, batch_size=256, overwrite=True)
        info["build_seconds_this_run"] = round(time.perf_counter() - t, 2)
        info["build_resumed"] = resumed
        if "synthetic_features" in info:
            mf = json.loads((index_dir / "index.json").read_text())
            write_json_atomic(index_dir / "index.json", {**mf, "synthetic_features": info["synthetic_features"]})
    return info


def synthesize_rows(model, kb: KnowledgeBase, tmp: Path, real: int, faiss_kind: str, progress: bool, seed: int):
    """Encode the first `real` entities with the model, then fill rows real..N-1 of the index being
    built with copies of an encoded row of the same name cluster (row i % clusters) plus Gaussian
    noise (5 % of each field's spread) on the vectors that decide retrieval and re-ranking (t_cls,
    g2l_cls, z, text/image global); the retrieval vector is recomputed from the noisy fields. The
    entity records (names, texts: the lexical retriever) stay the real ones. Why: on a loaded 2-core
    machine encoding a million entities takes over an hour; this measures the index itself (disk,
    RAM, latency, faiss, agreement) at a million rows. KBIndex.build then resumes and finishes."""
    from mimic.serving import index as mi

    building = tmp / ".index.building"
    seg = building / "seg-0000"
    building.mkdir(parents=True, exist_ok=True)
    fp = mi.model_fingerprint(model)
    if not (building / "build.json").exists():
        write_json_atomic(building / "build.json", {"fingerprint": fp, "faiss": faiss_kind})
    clusters = max(1, len(kb) // 25)  # make_clustered_kb's default
    real = max(real, clusters)
    t = time.perf_counter()
    mi._encode_segment(model, kb.entities, seg, 256, progress, mi.ImageLoadStats(), stop=real)
    t_real = time.perf_counter() - t
    prog = json.loads((seg / "progress.json").read_text())
    done = int(prog["done"])
    ent = np.load(seg / "entities.npy", mmap_mode="r+")
    glob = np.load(seg / "globals.npy", mmap_mode="r+")
    rng = np.random.default_rng(seed)
    spread = {f: float(np.asarray(ent[f][:clusters], np.float32).std()) for f in ("t_cls", "g2l_cls", "z")}
    spread |= {f: float(np.asarray(glob[f][:clusters], np.float32).std()) for f in ("text_global", "image_global")}
    t = time.perf_counter()
    step = 20000
    for s in range(done, len(kb), step):
        e = min(len(kb), s + step)
        src = np.arange(s, e) % clusters
        rec, g = ent[src], glob[src]
        for f in ("t_cls", "g2l_cls", "z"):
            rec[f] = rec[f] + (0.05 * spread[f] * rng.standard_normal(rec[f].shape)).astype(np.float16)
        for f in ("text_global", "image_global"):
            g[f] = g[f] + (0.05 * spread[f] * rng.standard_normal(g[f].shape)).astype(np.float16)
        g["retrieval"] = np.concatenate(
            [np.asarray(rec["t_cls"], np.float32) / 6, np.asarray(rec["z"], np.float32) / 3], 1
        ).astype(np.float16)  # = heads.retrieval_vector(cache, "entity")
        ent[s:e], glob[s:e] = rec, g
        ent.flush()
        glob.flush()
        mark = {"done": e, "chunks_done": -(-e // 256), "synthetic_from": done}
        write_json_atomic(seg / "progress.json", {**prog, **mark})
        if progress:
            print(f"[bench-link] synthetic rows {e:,} / {len(kb):,}", file=sys.stderr)
    return {
        "real_rows": done,
        "synthetic_rows": len(kb) - done,
        "source_row": "i % clusters",
        "noise": 0.05,
        "real_encode_seconds_this_run": round(t_real, 1),
        "synthesize_seconds": round(time.perf_counter() - t, 1),
    }


def serve(
    tmp: Path,
    shortlist: int,
    exhaustive_queries: int,
    compare_faiss: bool,
    exhaustive_chunk: int = 2048,
    keep_model: int | None = None,
) -> dict:
    """Serving phase (run in a fresh process, so its memory is the server's): load, link, measure."""
    mem0 = _memory()
    t = time.perf_counter()
    model = load_checkpoint(tmp / "run" / "best")
    index = KBIndex(tmp / "index")
    load_seconds = time.perf_counter() - t
    mem_loaded = _memory()
    qs = _load_queries(tmp / "queries.jsonl")
    linker = Linker(model, index, shortlist=shortlist, keep_model=keep_model)
    lat: dict[str, list[float]] = {"encode": [], "retrieve": [], "rerank": [], "total": []}
    linker.link(qs[0].sentence, qs[0].mention, qs[0].image, explain=False)  # warm-up
    hits = 0
    sizes: list[int] = []
    load_before = _load_average()
    for m in qs:
        t0 = time.perf_counter()
        r = linker.link(m.sentence, (m.start, m.end), m.image, top_k=10, explain=False)
        total = (time.perf_counter() - t0) * 1000
        for k in ("encode", "retrieve", "rerank"):
            lat[k].append(r.timings_ms[k])
        sizes.append(r.shortlist_size)
        lat["total"].append(total)
        hits += r.top is not None and r.top.entity_id == m.answer
    mem_served = _memory()
    load_after = _load_average()
    res: dict = {
        "entities": len(index),
        "faiss": index.manifest.get("faiss"),
        "shortlist": shortlist,
        "keep_model": linker.keep_model,
        "shortlist_size_p50": _pct(sizes, 50),
        "queries": len(qs),
        "index_format_version": index.manifest.get("version"),
        "index_encode_seconds": index.manifest.get("encode_seconds"),
        "index_build_seconds": index.manifest.get("build_seconds"),
        "index_load_seconds": round(load_seconds, 2),
        "index_bytes_disk": index.disk_bytes(),
        "feature_bytes_fp16_on_disk": index.feature_bytes(),
        "faiss_bytes_ram": index.faiss_bytes(),
        "lexical_bytes_mapped": index.lexical.nbytes(),
        "memory_mib": {"start": mem0, "after_load": mem_loaded, "after_queries": mem_served},
        "latency_ms": {k: {"p50": _pct(v, 50), "p95": _pct(v, 95)} for k, v in lat.items()},
        "retrieve_plus_rerank_ms_p50": _pct([a + b for a, b in zip(lat["retrieve"], lat["rerank"])], 50),
        "retrieve_plus_rerank_ms_p95": _pct([a + b for a, b in zip(lat["retrieve"], lat["rerank"])], 95),
        "load_average_during_queries": {"before": load_before, "after": load_after},
        "top1_accuracy_vs_gold": round(hits / len(qs), 4),
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(tmp / "serve_partial.json", res)  # a long exhaustive pass may be cut short
    if exhaustive_queries:
        res.update(_agreement(linker, qs[:exhaustive_queries], shortlist, exhaustive_chunk, tmp / "serve_partial.json"))
        res["memory_mib"]["after_exhaustive"] = _memory()
    if compare_faiss:
        res["faiss_comparison"] = compare_faiss_kinds(linker, qs, shortlist)
    res["load_average_end"] = _load_average()
    return res


def _agreement(
    linker: Linker, sub: list[Mention], shortlist: int, chunk: int, partial: Path | None = None, per_pass: int = 10
) -> dict:
    """Exhaustive MIMIC S of the queries against every entity, `per_pass` queries per pass over the
    token store, vs the served shortlist's top-1 / top-10. Each pass logs its tally (stderr), so a
    long run at a million entities leaves partial figures."""
    agree, recall, ex_seconds = 0, [], 0.0
    for b in range(0, len(sub), per_pass):
        part = sub[b : b + per_pass]
        t0 = time.perf_counter()
        tops = _exhaustive_top(linker, part, chunk)
        ex_seconds += time.perf_counter() - t0
        for m, ex_top in zip(part, tops):
            r = linker.link(m.sentence, (m.start, m.end), m.image, top_k=shortlist, explain=False)
            got = [linker.index.position[c.entity_id] for c in r.candidates]
            agree += bool(got) and got[0] == ex_top[0]
            recall.append(len(set(got) & set(ex_top)) / len(ex_top))
        tally = {"exhaustive_done": len(recall), "agree": agree, "s": round(ex_seconds, 1), "load": _load_average()}
        print(json.dumps(tally), file=sys.stderr)
        if partial is not None:
            write_json_atomic(partial, {**json.loads(partial.read_text()), "exhaustive_partial": tally})
    return {
        "exhaustive_queries": len(sub),
        "exhaustive_seconds_all_queries": round(ex_seconds, 2),
        "top1_agreement": round(agree / max(len(sub), 1), 4),
        "top1_agreements": agree,
        "recall_at_k": {"k": 10, "value": round(float(np.mean(recall)), 4) if recall else None},
    }


@torch.no_grad()
def _exhaustive_top(linker: Linker, sub: list[Mention], chunk: int, k: int = 10) -> list[list[int]]:
    """Top-k index rows by MIMIC's S over the whole KB for each query (one pass over the store)."""
    index, heads = linker.index, linker.model.heads
    mc, *_ = linker._encode([linker._query(m.sentence, (m.start, m.end), m.image) for m in sub])
    fixed = bool(linker.model.config.fixed)
    if fixed:
        mc = _trim(mc, ("k", "v"))
    best_s = torch.full((len(sub), k), -float("inf"))
    best_r = torch.zeros((len(sub), k), dtype=torch.long)
    for s in range(0, len(index), chunk):
        ec = index.cache[s : s + chunk].apply(lambda t: t.float() if t.is_floating_point() else t)
        S = heads.score(mc, _trim(ec, ("q",)) if fixed else ec).S  # [Q, chunk]
        cat_s = torch.cat([best_s, S], 1)
        cat_r = torch.cat([best_r, torch.arange(s, s + S.shape[1]).expand(len(sub), -1)], 1)
        # ties: the lower row first, as argsort(stable) over the whole KB would order them
        order = torch.from_numpy(np.lexsort((cat_r.numpy(), -cat_s.numpy()), axis=1)[:, :k].copy())
        best_s, best_r = torch.gather(cat_s, 1, order), torch.gather(cat_r, 1, order)
    return best_r.tolist()


def _trim(cache, token_fields: tuple[str, ...]):
    """Drop the token positions that are padding in every row (t_mask false), when padding is at the
    end. Exact in fixed mode: there padded mention tokens are masked out of the softmax and padded
    entity tokens have zero pooling weight; most of the 40 positions are padding, so the exhaustive
    pass costs several times less."""
    L = int(cache.t_mask.sum(1).max()) if len(cache.t_mask) else 0
    if L == 0 or bool(cache.t_mask[:, L:].any()) or not bool(cache.t_mask[:, :1].all()):
        return cache
    parts = cache.tensors()
    parts["t_mask"] = parts["t_mask"][:, :L]
    for f in token_fields:
        parts[f] = parts[f][:, :L]
    return type(cache)(**parts)


def compare_faiss_kinds(linker: Linker, qs: list[Mention], k: int) -> dict:
    """The "model" retriever's vectors in each faiss kind: recall@k against flat, RAM, build and query time."""
    from mimic.serving.vector_index import KINDS, build_index, index_bytes, recall_at_k

    index = linker.index
    queries = [linker._query(m.sentence, (m.start, m.end), m.image) for m in qs]
    mc, *_ = linker._encode(queries)
    q = np.ascontiguousarray(linker.model.heads.retrieval_vector(mc, "mention").cpu().numpy(), dtype=np.float32)
    d = int(index.globals._empty("retrieval").shape[1])

    def rows(s, e):
        return np.asarray(index.globals.read_range(s, e, ["retrieval"])["retrieval"], dtype=np.float32)

    out, exact = {}, None
    for kind in KINDS:
        if kind == "fp16":
            continue
        t = time.perf_counter()
        idx = build_index(len(index), d, rows, kind)
        build_s = time.perf_counter() - t
        idx.search(q[:1], k)
        ms = []
        found = []
        for v in q:
            t = time.perf_counter()
            found.append(idx.search(v[None], k)[1][0])
            ms.append((time.perf_counter() - t) * 1000)
        found = np.stack(found)
        exact = found if kind == "flat" else exact
        assert exact is not None
        out[kind] = {
            "recall_at_k_vs_flat": round(recall_at_k(exact, found), 4),
            "k": k,
            "ram_mib": round(index_bytes(idx) / 2**20, 1),
            "build_seconds": round(build_s, 1),
            "query_ms_p50": _pct(ms, 50),
            "load_average": _load_average(),
        }
        del idx
    return out


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
    compare_faiss: bool = False,
    progress: bool = False,
    threads: int | None = None,
    real_entities: int | None = None,
    keep_model: int | None = None,
) -> dict:
    """Build (in this process), then serve and measure in a fresh process, whose memory is what a
    server holding this index needs. A kept `workdir` makes the build resumable and reusable."""
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bench-link-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        info = prepare(
            tmp,
            entities,
            backbone,
            queries,
            faiss_kind,
            train_mentions,
            epochs,
            image_fraction,
            seed,
            progress,
            real_entities,
        )
        cmd = [sys.executable, __file__, "--serve-from", str(tmp), "--shortlist", str(shortlist)]
        cmd += ["--exhaustive-queries", str(exhaustive_queries)] + (["--compare-faiss"] if compare_faiss else [])
        cmd += ["--threads", str(threads)] if threads else []
        cmd += ["--keep-model", str(keep_model)] if keep_model is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"serving phase failed:\n{proc.stderr[-4000:]}")
        res = json.loads(proc.stdout)
        return {
            "backbone": backbone,
            "images_fraction": image_fraction,
            "train_mentions": train_mentions,
            "train_epochs": epochs,
            **info,
            **res,
        }
    finally:
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)


def main(a) -> dict:
    if a.threads:
        import faiss

        torch.set_num_threads(a.threads)
        faiss.omp_set_num_threads(a.threads)
    if a.serve_from:
        res = serve(Path(a.serve_from), a.shortlist, a.exhaustive_queries, a.compare_faiss, keep_model=a.keep_model)
        print(json.dumps(res))
        return res
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
        workdir=a.workdir,
        compare_faiss=a.compare_faiss,
        progress=a.progress,
        threads=a.threads,
        real_entities=a.real_entities,
        keep_model=a.keep_model,
    )
    if a.json:
        write_json_atomic(a.json, res)
    print(json.dumps(res, indent=2))
    return res


def build_parser() -> argparse.ArgumentParser:
    from mimic.serving.vector_index import KINDS

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
    b.add_argument(
        "--keep-model",
        type=int,
        help="rows of the model retriever re-ranked beyond the fused cut (default: the linker's, shortlist/2)",
    )
    b.add_argument("--faiss", choices=KINDS, default="flat")
    b.add_argument("--image-fraction", type=float, default=0.1)
    b.add_argument("--epochs", type=int, default=8, help="training epochs of the benchmark's model")
    b.add_argument("--train-mentions", type=int, default=10000)
    b.add_argument("--workdir", help="keep the KB, model and index here; a rerun resumes or reuses them")
    b.add_argument("--compare-faiss", action="store_true", help="recall@k / RAM / time of each faiss kind")
    b.add_argument("--progress", action="store_true", help="progress bars and logs of the index build (stderr)")
    b.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's own choice)")
    b.add_argument(
        "--real-entities",
        type=int,
        help="encode only this many entities with the model; fill the rest with noisy copies (scale runs)",
    )
    b.add_argument("--serve-from", help=argparse.SUPPRESS)  # internal: the serving phase, in a fresh process
    b.add_argument("--json")
    return b


if __name__ == "__main__":
    args = build_parser().parse_args()
    if args.progress:
        import logging

        logging.basicConfig(level=logging.INFO, format="[bench-link] %(message)s")
    main(args)
