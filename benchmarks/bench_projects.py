"""Projects: corpus import and pre-annotation speed, and annotation latency while they run. Prints JSON.

    python benchmarks/bench_projects.py --mentions 5000 --preannotate 500 [--json out.json]

The app context (the default checkpoint, the demo KB) starts in a temporary DATA_DIR. A reviewer
creates a project through the Projects tab's handler and imports a corpus of `--mentions` mentions
as the tab does (`start_import`: a background job, batches of 500 per transaction): the first
samples of the real MELBench file (../shared/data/melbench/Wikidata-MEL.json, raw MELBench format)
when it is there, else a synthetic JSONL corpus. Then a second project holding the first
`--preannotate` of those mentions is pre-annotated by the served model (`start_preannotate`:
chunks of 32, one short write each). During both jobs an annotator submits a decision every
`--every` seconds through the annotate API handler, on the example queue's mentions.

Reported: import seconds and mentions/s; pre-annotation seconds and mentions/s; the annotation
latencies during each job (n, p50, p95, max, in seconds); then `--queue-items` next item + submit
cycles on the 5,000-mention project's queue (seconds each); load averages before and after. The
pre-annotation links MELBench sentences against the 20-entity demo KB: the speed is the model's
per-mention cost (text encoder, no images in this corpus), the rankings themselves mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MELBENCH = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"


def write_corpus(folder: Path, n: int) -> tuple[Path, str]:
    """A corpus of about `n` mentions: MELBench samples (raw format) when available, else JSONL."""
    if MELBENCH.is_file():
        raw = json.loads(MELBENCH.read_text(encoding="utf-8"))
        subset, count = {}, 0
        for key, obj in raw.items():
            if count >= n:
                break
            mentions = obj["mentions"] if isinstance(obj["mentions"], list) else [obj["mentions"]]
            subset[key] = obj
            count += len(mentions)
        path = folder / "melbench_subset.json"
        path.write_text(json.dumps(subset), encoding="utf-8")
        return path, f"MELBench Wikidata-MEL, first {len(subset)} samples ({count} mentions)"
    path = folder / "synthetic.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"s{i}", "sentence": f"A visit to Chelsea number {i}.", "mention": "Chelsea"}))
            f.write("\n")
    return path, f"synthetic JSONL ({n} mentions)"


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {
        "n": len(s),
        "p50": round(statistics.median(s), 4),
        "p95": round(s[min(len(s) - 1, int(0.95 * len(s)))], 4),
        "max": round(s[-1], 4),
    }


def annotate_while(ctx, job, every: float) -> list[float]:
    """Submit a decision every `every` s until the job finishes; the latencies (s)."""
    from app.tabs import annotate as annotate_tab

    mids = [m.id for m in ctx.store.peek_queue("ana", 50, project="default")] or [
        ctx.store.add_mention("Chelsea won.", "Chelsea", uid="bench-extra").id
    ]
    out: list[float] = []
    i = 0
    while not job.finished:
        t0 = time.perf_counter()
        annotate_tab.annotate_api(ctx, "ana", str(mids[i % len(mids)]), "nil" if i % 2 else "ambiguous", "")
        out.append(time.perf_counter() - t0)
        i += 1
        time.sleep(every)
    return out


def run_job(ctx, start, every: float) -> tuple[dict, list[float]]:
    job = start()
    lat: list[float] = []
    t = threading.Thread(target=lambda: lat.extend(annotate_while(ctx, job, every)))
    t.start()
    job.wait()
    t.join()
    snap = job.snapshot()
    if snap["state"] != "done":
        raise SystemExit(f"job {snap['kind']} {snap['state']}: {snap['error']}")
    return snap, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mentions", type=int, default=5000)
    ap.add_argument("--preannotate", type=int, default=500)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between two annotations")
    ap.add_argument("--queue-items", type=int, default=50, help="next item + submit cycles timed on the project")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from app.config import AppConfig
    from app.context import AppContext
    from app.tabs import projects as P

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = AppConfig.from_env({"DATA_DIR": str(tmp / "data"), "MIMIC_USERS": "rev:rev-pw:reviewer,ana:ana-pw"})
        t0 = time.perf_counter()
        ctx = AppContext.start(cfg, progress=False)
        start_s = time.perf_counter() - t0
        corpus, described = write_corpus(tmp, args.mentions)
        P.save_project(ctx, "rev", "Bench", "# Bench guidelines", 1)
        snap, lat_import = run_job(ctx, lambda: P.start_import(ctx, "rev", "Bench", str(corpus), None), args.every)
        rep = snap["result"]
        imported = rep["created"]
        pre_rows = [
            {"id": m.uid, "sentence": m.sentence, "start": m.start, "end": m.end, "mention": m.mention}
            for m in ctx.store.mentions_without_prediction("Bench", limit=args.preannotate)[0]
        ]
        P.save_project(ctx, "rev", "BenchPre", "", 1)
        ctx.store.import_mentions(pre_rows, project="BenchPre")
        pre, lat_pre = run_job(ctx, lambda: P.start_preannotate(ctx, "rev", "BenchPre"), args.every)
        # the project queue with its 5,000 mentions: next item + submit, one after the other
        nxt, sub = [], []
        for _ in range(args.queue_items):
            t1 = time.perf_counter()
            item = ctx.store.next_item("ana", project="Bench")
            t2 = time.perf_counter()
            ctx.store.submit("ana", item.mention.id, "nil")
            nxt.append(t2 - t1)
            sub.append(time.perf_counter() - t2)
        problems: dict[str, int] = {}
        for r in rep["rejected"]:
            key = re.sub(r"'[^']*'|\"[^\"]*\"", "…", r["problem"].rsplit(": ", 1)[-1])
            problems[key] = problems.get(key, 0) + 1
        out = {
            "corpus": described,
            "app_start_seconds": round(start_s, 2),
            "model_version": ctx.service.served.version,
            "import": {
                "format": rep["format"],
                "rows": rep["rows"],
                "created": imported,
                "rejected": rep["rejected_count"],
                "rejected_by_problem": problems,
                "seconds": snap["seconds"],
                "mentions_per_second": round(imported / snap["seconds"], 1) if snap["seconds"] else None,
                "annotation_latency_s": summary(lat_import),
            },
            "preannotate": {
                "mentions": pre["result"]["mentions"],
                "predicted": pre["result"]["predicted"],
                "seconds": pre["result"]["seconds"],
                "mentions_per_second": pre["result"]["mentions_per_second"],
                "annotation_latency_s": summary(lat_pre),
            },
            "project_queue_latency_s": {"next_item": summary(nxt), "submit": summary(sub)},
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
        }
        ctx.stop()
        ctx.store.close()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
