"""KB import vs annotations, and the memory of importing a large KB file. Prints JSON.

    python benchmarks/bench_import_contention.py --entities 20000 --rss-mb 50

1. contention: the app context (zero-shot, offline backbone, demo KB) in a temporary DATA_DIR; a
   synthetic JSONL KB of `--entities` entities without images is imported as the KB tab does it
   (`start_kb_import`: a background job, chunks of MIMIC_KB_IMPORT_CHUNK, each chunk stored and
   indexed); meanwhile an annotator submits a decision every `--every` seconds through the
   annotate API handler. Reported: the import's duration, the annotation latencies during it (p50,
   p95, max), the machine's load average (os.getloadavg) before and after.
   Before this job mechanism the import ran in the "db" queue (one at a time), so an annotation
   submitted during it waited for the whole import: its latency was the import's remaining time.
2. memory: a ~`--rss-mb` MB JSONL file imported into a fresh store in a child process, the old way
   (the file read whole into a KnowledgeBase, then stored) and the streamed way (`open_kb`, chunks);
   peak RSS of each child (VmHWM of /proc/self/status) and its RSS before the import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_kb(path: Path, n: int, text_chars: int = 60, prefix: str = "B") -> Path:
    filler = ("lorem ipsum dolor sit amet " * (text_chars // 27 + 1))[:text_chars]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            rec = {"id": f"{prefix}{i:07d}", "name": f"Bench entity {i}", "aliases": [f"be{i}"], "text": filler}
            f.write(json.dumps(rec) + "\n")
    return path


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in MB. Not ru_maxrss: Linux keeps
    that across fork/exec, so a child would report the parent's peak (the loaded model)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, kb_file: str, data_dir: str) -> None:
    """One import into a fresh store; prints {"mode", "seconds", "rss_before_mb", "peak_rss_mb"}."""
    from db import open_store
    from mimic.data.kb_files import load_kb, open_kb

    store = open_store(Path(data_dir))
    before = rss_mb()
    t = time.perf_counter()
    if mode == "old":
        kb, _ = load_kb(kb_file)
        counts = store.import_kb(kb)
    else:
        entities, _ = open_kb(kb_file)
        counts = store.import_kb(entities, chunk_size=500)
    out = {
        "mode": mode,
        "seconds": round(time.perf_counter() - t, 2),
        "created": counts["created"],
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(rss_mb("VmHWM"), 1),
    }
    store.close()
    print(json.dumps(out))


def contention(n: int, every: float, tmp: Path) -> dict:
    from app.config import AppConfig
    from app.context import AppContext
    from app.tabs import annotate as annotate_tab
    from app.tabs import knowledge_base as kb_tab

    cfg = AppConfig.from_env({"DATA_DIR": str(tmp / "data"), "MIMIC_USERS": "rev:rev-pw:reviewer,ana:ana-pw"})
    ctx = AppContext.start(cfg, progress=False)
    kb_file = write_kb(tmp / "contention.jsonl", n)
    mids = [ctx.store.get_mention(f"example:{m.id}").id for m in ctx.examples[:40]]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    job = kb_tab.start_kb_import(ctx, "rev", str(kb_file))
    started = time.perf_counter() - t0
    lat: list[float] = []
    i = 0
    while not job.finished and i < 100_000:
        t = time.perf_counter()
        annotate_tab.annotate_api(ctx, "ana", mids[i % len(mids)], "nil", "")
        lat.append(time.perf_counter() - t)
        i += 1
        time.sleep(every)
    job.wait(3600)
    duration = time.perf_counter() - t0
    load_after = os.getloadavg()
    v = job.snapshot()
    ctx.stop()
    ctx.store.close()
    lat.sort()
    return {
        "entities": n,
        "chunk": cfg.kb_import_chunk,
        "import_state": v["state"],
        "imported": (v["result"] or {}).get("imported"),
        "start_kb_import_returned_s": round(started, 4),
        "import_seconds": round(duration, 1),
        "annotations_during_import": len(lat),
        "annotation_latency_p50_s": round(statistics.median(lat), 4) if lat else None,
        "annotation_latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 4) if lat else None,
        "annotation_latency_max_s": round(lat[-1], 4) if lat else None,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
    }


def memory(mb: float, tmp: Path) -> dict:
    text_chars = 900
    n = int(mb * 2**20 / (text_chars + 90))
    kb_file = write_kb(tmp / "rss.jsonl", n, text_chars=text_chars, prefix="R")
    out: dict = {"file_mb": round(kb_file.stat().st_size / 2**20, 1), "entities": n}
    for mode in ("old", "streamed"):
        data = tmp / f"rss_{mode}"
        data.mkdir()
        r = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(kb_file), str(data)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        out[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=20_000)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between two annotations")
    ap.add_argument("--rss-mb", type=float, default=50.0, help="size of the memory test's file (0: skip)")
    ap.add_argument("--skip-contention", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "KB_FILE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench_import_") as d:
        tmp = Path(d)
        result: dict = {"command": " ".join([Path(sys.executable).name] + sys.argv)}
        if args.rss_mb > 0:
            result["memory"] = memory(args.rss_mb, tmp)
        if not args.skip_contention:
            result["contention"] = contention(args.entities, args.every, tmp)
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
