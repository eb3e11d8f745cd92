"""What one KB-import segment costs the served index, at N entities: encode + commit. Prints JSON.

    nice -n 10 python benchmarks/bench_index_append.py --entities 100000 --append 500 --segments 3 \
        [--compare-code /path/to/an/older/checkout] [--json out.json]

1. An index of `--entities` synthetic entities (names, aliases, descriptions as
   benchmarks/bench_kb_search.py) for the app's default checkpoint: the first `--real` are encoded,
   the token and vector rows of the others are copies of those (row i % real), the records are the
   real synthetic ones (what the lexical index fits). Why copies: encoding 100,000 entities takes
   ~20 minutes here, and a commit's cost depends on the row count, not the rows' values.
2. `--segments` appends of `--append` new entities each (`KBIndex.upsert`: encode, then commit),
   timed apart (`prepare_segment` / `commit_segment`; an older checkout without them is timed as
   one upsert, its commit = upsert - the encode time measured here), each in a fresh process
   on its own copy of the index, with this checkout's code and, with `--compare-code`, another's
   (side by side in one run). The index load time is reported too. Load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build(root: Path, n: int, real: int, append: int, segments: int) -> None:
    import numpy as np
    from bench_kb_search import synthetic_kb

    from mimic.atomic import write_json_atomic
    from mimic.data.schema import KnowledgeBase
    from mimic.models.checkpoint import load_checkpoint
    from mimic.serving import index as mi

    model = load_checkpoint(REPO / "assets" / "models" / "default")
    ents = list(synthetic_kb(n + append * segments))
    kb, extra = KnowledgeBase(ents[:n]), ents[n:]
    (root.parent / "extra.json").write_text(json.dumps([mi.entity_record(e) for e in extra]))
    building = root.parent / f".{root.name}.building"
    seg = building / "seg-0000"
    building.mkdir(parents=True)
    write_json_atomic(building / "build.json", {"fingerprint": mi.model_fingerprint(model), "faiss": "flat"})
    mi._encode_segment(model, kb.entities, seg, 256, False, mi.ImageLoadStats(), stop=real)
    prog = json.loads((seg / "progress.json").read_text())
    done = int(prog["done"])
    for file in ("entities.npy", "globals.npy"):
        a = np.load(seg / file, mmap_mode="r+")
        for s in range(done, n, 20000):
            e = min(n, s + 20000)
            a[s:e] = a[np.arange(s, e) % done]
        a.flush()
        del a
    write_json_atomic(seg / "progress.json", {**prog, "done": n, "chunks_done": -(-n // 256)})
    mi.KBIndex.build(model, kb, root, batch_size=256, progress=False, overwrite=True)


def measure(root: Path, segments: int, append: int) -> dict:
    """In a fresh process, with whichever code sys.path holds first."""
    from mimic.data.schema import Entity
    from mimic.models.checkpoint import load_checkpoint
    from mimic.serving.index import KBIndex

    model = load_checkpoint(REPO / "assets" / "models" / "default")
    extra = [Entity(**r) for r in json.loads((root.parent / "extra.json").read_text())]
    t = time.perf_counter()
    idx = KBIndex(root)
    out: dict = {"load_s": round(time.perf_counter() - t, 2), "entities_before": len(idx), "segments": []}
    for i in range(segments):
        batch = extra[i * append : (i + 1) * append]
        t0 = time.perf_counter()
        if hasattr(idx, "prepare_segment"):
            prepared = idx.prepare_segment(model, batch)
            t1 = time.perf_counter()
            idx.commit_segment(prepared)
            t2 = time.perf_counter()
            out["segments"].append({"encode_s": round(t1 - t0, 2), "commit_s": round(t2 - t1, 2)})
        else:
            idx.upsert(model, batch)
            out["segments"].append({"upsert_s": round(time.perf_counter() - t0, 2)})
    out["entities_after"] = len(idx)
    out["appended_entities_served"] = all(e.id in idx.position for e in extra[: segments * append])
    return out


def run_measure(code: Path, root: Path, segments: int, append: int) -> dict:
    copy = root.parent / f"copy-{abs(hash(str(code))) % 10**6}" / "index"
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(root, copy)
    shutil.copy(root.parent / "extra.json", copy.parent / "extra.json")
    cmd = [sys.executable, __file__, "--measure", str(copy), str(segments), str(append), str(code)]
    load0 = _load()
    p = subprocess.run(cmd, cwd=code, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    got = json.loads(p.stdout.strip().splitlines()[-1])
    shutil.rmtree(copy.parent, ignore_errors=True)
    return got | {"code": str(code), "loadavg_before_after": [load0, _load()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=1024, help="entities actually encoded (the rest are copies)")
    ap.add_argument("--append", type=int, default=500, help="entities per appended segment")
    ap.add_argument("--segments", type=int, default=3)
    ap.add_argument("--compare-code", help="another checkout to time the same appends with")
    ap.add_argument("--json")
    ap.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        root, segments, append, code = a.measure
        sys.path[:0] = [code, str(Path(code) / "benchmarks")]
        print(json.dumps(measure(Path(root), int(segments), int(append))))
        return
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from bench_common import write_json

    tmp = Path(tempfile.mkdtemp(prefix="bench_index_append_"))
    result: dict = {"command": " ".join(["python"] + sys.argv), "cpus": os.cpu_count(), "loadavg_start": _load()}
    t = time.perf_counter()
    build(tmp / "index", a.entities, a.real, a.append, a.segments)
    result["build_s"] = round(time.perf_counter() - t, 1)
    result["this_code"] = run_measure(REPO, tmp / "index", a.segments, a.append)
    if a.compare_code:
        result["compare_code"] = run_measure(Path(a.compare_code).resolve(), tmp / "index", a.segments, a.append)
        enc = [s["encode_s"] for s in result["this_code"]["segments"]]
        for s, e in zip(result["compare_code"]["segments"], enc):
            s["commit_s (upsert - this code's encode)"] = round(s["upsert_s"] - e, 2)
    result["loadavg_end"] = _load()
    shutil.rmtree(tmp, ignore_errors=True)
    print(write_json(result, a.json))


if __name__ == "__main__":
    main()
