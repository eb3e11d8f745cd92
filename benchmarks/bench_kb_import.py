"""A 100,000-entity KB imported in the app, cut by a restart half-way and resumed. Prints JSON.

    nice -n 10 python benchmarks/bench_kb_import.py --entities 100000 --restart-at 0.5 --json out.json

1. The KB file (JSONL, in a temporary folder; the data is not copied into the repository): every
   entity of Wikidata-MEL (/work/shared/data/melbench: the QIDs its mentions link to, with their
   names; the dataset has no descriptions or images) and synthetic ones up to `--entities` (two
   made-up words as a name, an alias, a description of 12-40 words with Zipf-like frequencies, as
   benchmarks/bench_kb_search.py).
2. A worker process is the app's context as `python app.py` builds it (default checkpoint, demo KB,
   a fresh DATA_DIR, users rev (reviewer) and ana): it starts the import as the Knowledge base
   tab does (`start_kb_import`: a background job, chunks of MIMIC_KB_IMPORT_CHUNK, each stored
   and indexed), and while it runs ana submits an annotation every `--every` seconds through the
   annotate API handler (each one timed until acknowledged) and, after every `--link-every`-th, a
   user links a Wikidata-MEL mention (as the Link tab) and searches the KB (both timed). With
   `--restart-at F` the worker is killed (SIGKILL) once the import's manifest records F of the
   rows, and a second worker starts on the same DATA_DIR: `resume_kb_imports` continues the
   import from its last committed chunk (what app/launch.py does at start). The second worker (or
   the only one) then measures, after the import: Link (`ctx.service.link`, top 10 with the
   explanations of the top 3, as the Link tab) over Wikidata-MEL mentions, and KB search as the
   tab runs it (one page of 50 + 1, descriptions cut).
3. Memory: peak RSS (VmHWM) of each worker, its RSS before the import (the model loaded), and the
   largest RSS sampled during the import; and a ~`--rss-mb` MB JSONL file imported by the store
   alone, streamed, in a child (benchmarks/bench_import_contention.py's child).
Load average (os.getloadavg) before and after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MELBENCH = Path("/work/shared/data/melbench/Wikidata-MEL.json")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def mel_entities(path: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """({QID: name} of the entities Wikidata-MEL's mentions link to, [(sentence, mention)])."""
    data = json.loads(path.read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    mentions = []
    for rec in data.values():
        for m, name, qid in zip(rec["mentions"], rec["entities"], rec["answer"]):
            names.setdefault(qid, name)
            if m in rec["sentence"]:
                mentions.append((rec["sentence"], m))
    return names, mentions


def write_kb(path: Path, n: int) -> dict:
    from bench_kb_search import synthetic_kb

    names, _ = mel_entities(MELBENCH) if MELBENCH.is_file() else ({}, [])
    with path.open("w", encoding="utf-8") as f:
        for qid, name in list(names.items())[:n]:
            f.write(json.dumps({"id": qid, "name": name}) + "\n")
        for e in synthetic_kb(max(0, n - len(names))):
            f.write(json.dumps({"id": e.id, "name": e.name, "aliases": e.aliases, "text": e.text}) + "\n")
    return {
        "entities": n,
        "wikidata_mel": min(n, len(names)),
        "synthetic": max(0, n - len(names)),
        "file_mb": round(path.stat().st_size / 2**20, 1),
    }


# -- a worker: the app's context, the import, annotations during it -------------------------------------
def worker(data: str, kb_file: str, mode: str, every: float, chunk: int, out_path: str, link_every: int = 5) -> None:
    from app.config import AppConfig
    from app.context import AppContext
    from app.tabs import annotate as annotate_tab
    from app.tabs import knowledge_base as kb_tab

    t0 = time.perf_counter()
    cfg = AppConfig.from_env(
        {
            "DATA_DIR": data,
            "MIMIC_USERS": "rev:rev-pw:reviewer,ana:ana-pw",
            "MIMIC_KB_IMPORT_CHUNK": str(chunk),
            "MIMIC_WATCH_SECONDS": "0",
        }
    )
    ctx = AppContext.start(cfg, progress=False)
    out: dict = {"mode": mode, "app_start_s": round(time.perf_counter() - t0, 1), "rss_before_import_mb": rss_mb()}
    mids = [ctx.store.get_mention(f"example:{m.id}").id for m in ctx.examples[:40]]
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            peak[0] = max(peak[0], rss_mb())

    threading.Thread(target=sample, daemon=True).start()
    load0 = _load()
    t = time.perf_counter()
    if mode == "start":
        job = kb_tab.start_kb_import(ctx, "rev", kb_file)
    else:
        jobs = kb_tab.resume_kb_imports(ctx)
        assert len(jobs) == 1, f"expected one import to resume, found {len(jobs)}"
        job = jobs[0]
    lat: list[float] = []
    during: dict[str, list[float]] = {"link_ms": [], "search_ms": []}
    _, mel_mentions = mel_entities(MELBENCH) if MELBENCH.is_file() else ({}, [])
    mentions = mel_mentions[:: max(1, len(mel_mentions) // 200)] or [("Chelsea won 2-1", "Chelsea")]
    i = 0
    while not job.finished:
        a = time.perf_counter()
        annotate_tab.annotate_api(ctx, "ana", mids[i % len(mids)], "nil" if i % 2 else "ambiguous", "")
        lat.append(time.perf_counter() - a)
        if link_every and i % link_every == 0:  # a user linking (as the Link tab: explained top 3) and searching
            sentence, m = mentions[(i // link_every) % len(mentions)]
            a = time.perf_counter()
            ctx.service.link(sentence, m, None, top_k=10, explain=True)
            during["link_ms"].append((time.perf_counter() - a) * 1000)
            a = time.perf_counter()
            kb_tab.search_page(ctx, m[:6])
            during["search_ms"].append((time.perf_counter() - a) * 1000)
        i += 1
        if i % 20 == 0:  # a partial record, for a run stopped before its end
            part = sorted(lat)
            _dump(
                out_path,
                out
                | {
                    "progress": job.snapshot()["message"],
                    "seconds": round(time.perf_counter() - t, 1),
                    "annotations": len(lat),
                    "annotation_ack_p50_s": round(statistics.median(part), 3),
                    "annotation_ack_max_s": round(part[-1], 3),
                    "rss_peak_sampled_mb": round(peak[0], 1),
                    "during_import": _summary(during),
                    "loadavg_now": _load(),
                },
            )
        time.sleep(every)
    job.wait(None)
    stop.set()
    v = job.snapshot()
    r = v["result"] or {}
    lat.sort()
    out.update(
        {
            "import_state": v["state"],
            "import_error": v["error"],
            "import_s": round(time.perf_counter() - t, 1),
            "imported": r.get("imported"),
            "created": r.get("created"),
            "unchanged": r.get("unchanged"),
            "resumed_from_row": r.get("resumed_from_row"),
            "skipped": r.get("skipped"),
            "rows_read": r.get("rows_read"),
            "entities_in_store": ctx.store.count_entities(),
            "entities_in_index": len(ctx.service),
            "annotations_during_import": len(lat),
            "annotation_ack_p50_s": round(statistics.median(lat), 3) if lat else None,
            "annotation_ack_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
            "annotation_ack_max_s": round(lat[-1], 3) if lat else None,
            "rss_peak_sampled_during_import_mb": round(peak[0], 1),
            "rss_peak_vmhwm_mb": round(rss_mb("VmHWM"), 1),
            "loadavg_before_after_import": [load0, _load()],
            "during_import": _summary(during),
        }
    )
    out["after_import"] = after_import(ctx, kb_tab, mel_mentions)
    out["rss_before_import_mb"] = round(out["rss_before_import_mb"], 1)
    _dump(out_path, out)
    ctx.stop()
    ctx.store.close()


def after_import(ctx, kb_tab, mentions: list[tuple[str, str]], links: int = 30) -> dict:
    """Link and KB search timed once the import is over; `mentions`: Wikidata-MEL's (sentence, mention)."""
    mentions = mentions[:: max(1, len(mentions) // links)][:links] or [("Chelsea won 2-1", "Chelsea")]
    lat = []
    for sentence, m in mentions:
        t = time.perf_counter()
        ctx.service.link(sentence, m, None, top_k=10, explain=True)
        lat.append((time.perf_counter() - t) * 1000)
    queries = {
        "a Wikidata-MEL name": mentions[0][1],
        "a name prefix": mentions[1 % len(mentions)][1][:4],
        "a description word": "bibi",
        "an id": "Q17717",
        "no match": "zzyzx",
        "browse (empty query), page 1": "",
    }
    search = {}
    for label, q in queries.items():
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            kb_tab.search_page(ctx, q)
            ts.append((time.perf_counter() - t) * 1000)
        search[label] = {"query": q, "median_ms": round(statistics.median(ts), 1), "max_ms": round(max(ts), 1)}
    lat.sort()
    return {
        "link_calls": len(lat),
        "link_p50_ms": round(statistics.median(lat), 1),
        "link_p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1),
        "search": search,
        "loadavg": _load(),
    }


def _summary(during: dict[str, list[float]]) -> dict:
    """p50 / p95 / max (ms) and the count of each latency list measured while the import ran."""
    out = {}
    for k, v in during.items():
        v = sorted(v)
        if v:
            out[k] = {"n": len(v), "p50": round(statistics.median(v), 1), "p95": round(v[int(0.95 * (len(v) - 1))], 1)}
            out[k]["max"] = round(v[-1], 1)
    return out


def _dump(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(obj, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run_worker(data: Path, kb_file: Path, mode: str, a, tmp: Path, kill_at_rows: int | None) -> dict:
    out_path = tmp / f"worker_{mode}.json"
    args = [str(data), str(kb_file), mode, str(a.every), str(a.chunk), str(out_path), str(a.link_every)]
    cmd = [sys.executable, __file__, "--worker", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    killed = None
    while proc.poll() is None:
        time.sleep(1.0)
        if kill_at_rows is not None:
            manifests = list((data / "imports").glob("*.json"))
            rows = json.loads(manifests[0].read_text())["rows_done"] if manifests else 0
            if rows >= kill_at_rows:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = {"killed_at_rows_done": rows, "at": time.strftime("%H:%M:%S")}
    got = json.loads(out_path.read_text()) if out_path.exists() else {}
    if killed:
        got["killed"] = killed
    elif proc.returncode != 0:
        raise RuntimeError(f"worker {mode} exited with {proc.returncode}")
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--restart-at", type=float, default=0.5, help="kill + restart at this fraction (0: none)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between two annotations")
    ap.add_argument("--chunk", type=int, default=500, help="MIMIC_KB_IMPORT_CHUNK")
    ap.add_argument("--rss-mb", type=float, default=50.0, help="the memory test's file size (0: skip)")
    ap.add_argument("--json")
    ap.add_argument(
        "--link-every", type=int, default=5, help="a Link + a KB search after every N-th annotation (0: none)"
    )
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        w = a.worker
        worker(w[0], w[1], w[2], float(w[3]), int(w[4]), w[5], int(w[6]))
        return
    from bench_common import write_json

    tmp = Path(tempfile.mkdtemp(prefix="bench_kb_import_"))
    result: dict = {"command": " ".join(["python"] + sys.argv), "cpus": os.cpu_count(), "loadavg_start": _load()}
    kb_file = tmp / "kb100k.jsonl"
    result["kb_file"] = write_kb(kb_file, a.entities)
    data = tmp / "data"
    t = time.perf_counter()
    kill_rows = int(a.entities * a.restart_at) if a.restart_at > 0 else None
    result["first_worker"] = run_worker(data, kb_file, "start", a, tmp, kill_rows)
    if kill_rows is not None:
        result["second_worker (restarted, resumes)"] = run_worker(data, kb_file, "resume", a, tmp, None)
    result["wall_s (both workers, app starts included)"] = round(time.perf_counter() - t, 1)
    if a.rss_mb > 0:
        from bench_import_contention import memory

        mem = memory(a.rss_mb, tmp)
        result["memory_50mb_file (store only, streamed)"] = {k: mem[k] for k in ("file_mb", "entities", "streamed")}
    result["loadavg_end"] = _load()
    print(write_json(result, a.json))


if __name__ == "__main__":
    main()
