"""The app's default checkpoint against the zero-shot ranking on the 48 demo examples.

    python benchmarks/bench_default_model.py [--checkpoint assets/models/default] [--json out.json]

Both are measured the same way, through the serving path the app uses: a `LinkingService` on the
demo KB (index built in a temporary DATA_DIR), each example linked with its mention span and its
query image (if any), and the top candidate compared with the gold. Prints JSON: H@1 and MRR (over
the top 10; a gold outside it counts 0) overall, for the examples with a query image and for the
text-only ones, plus the examples each one gets wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from assets.default_model.build import DEFAULT_OUTPUT
from assets.demo_builder.build import demo_kb_path, load_demo_kb
from mimic.data.jsonl import load_jsonl_dataset
from mimic.serving.service import LinkingService


def _metrics(rows: list[dict]) -> dict:
    n = len(rows)
    hits = sum(r["rank"] == 1 for r in rows)
    return {
        "examples": n,
        "hits@1": hits,
        "H@1": round(hits / n, 4) if n else None,
        "MRR@10": round(sum(1 / r["rank"] for r in rows if r["rank"]) / n, 4) if n else None,
    }


def measure(service: LinkingService, examples) -> dict:
    """H@1 / MRR@10 of `service` on `examples` (all, with a query image, text only) and the misses."""
    queries = [{"sentence": m.sentence, "mention": (m.start, m.end), "image": m.image} for m in examples]
    t0 = time.perf_counter()
    results = service.link_batch(queries, top_k=10, explain=False)
    seconds = time.perf_counter() - t0
    rows = []
    for m, r in zip(examples, results):
        ids = [c.entity_id for c in r.candidates]
        rows.append(
            {
                "id": m.id,
                "has_image": m.image is not None,
                "rank": ids.index(m.answer) + 1 if m.answer in ids else 0,
                "top": ids[0] if ids else None,
                "gold": m.answer,
                "scoring": r.scoring,
            }
        )
    return {
        "scoring": sorted({r["scoring"] for r in rows}),
        "version": service.served.version,
        **_metrics(rows),
        "with_image": _metrics([r for r in rows if r["has_image"]]),
        "text_only": _metrics([r for r in rows if not r["has_image"]]),
        "misses": [{k: r[k] for k in ("id", "gold", "top", "rank", "has_image")} for r in rows if r["rank"] != 1],
        "link_ms_per_example": round(seconds * 1000 / max(len(rows), 1), 1),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_OUTPUT), help="trained checkpoint (default: the app's default)")
    p.add_argument("--json", help="also write the result here")
    a = p.parse_args(argv)
    kb, _ = load_demo_kb()
    examples = load_jsonl_dataset(demo_kb_path()).split("examples")
    ck = Path(a.checkpoint).resolve()
    shown = ck.relative_to(REPO).as_posix() if ck.is_relative_to(REPO) else str(ck)
    out: dict = {"kb_entities": len(kb), "examples": len(examples), "checkpoint": shown, "models": {}}
    for name, checkpoint in (("default", a.checkpoint), ("zero-shot", None)):
        with tempfile.TemporaryDirectory(prefix="bench-default-") as data:
            svc = LinkingService.start(data, kb, checkpoint=checkpoint, progress=False)
            out["models"][name] = measure(svc, examples)
    d, z = out["models"]["default"], out["models"]["zero-shot"]
    out["default_minus_zero_shot_hits@1"] = d["hits@1"] - z["hits@1"]
    text = json.dumps(out, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
