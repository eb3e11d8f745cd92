"""KB search latency on a large synthetic KB (the Knowledge base tab's search). Prints JSON.

    python benchmarks/bench_kb_search.py --entities 100000 --runs 5
    python benchmarks/bench_kb_search.py --url postgresql+psycopg://user@host/db   # PostgreSQL

A store in a temporary DATA_DIR (or the database at --url, which must be empty) gets `--entities`
synthetic entities through `import_kb` (names of two made-up words, one alias, descriptions of 12–40
words drawn from a 5,000-word vocabulary with Zipf-like frequencies); one entity, "Cheetah", has
"the fastest land animal" in its description. Then each query runs `--runs` times as the tab runs
it (`search_entities`, one page of 50 + 1 rows, descriptions cut to 200 characters; page 2 as well
for the commonest word) and the milliseconds are reported (min / median / max) with the number of
rows on the page, the machine's load average (os.getloadavg) before and after, the SQLite version,
and the import time. Target: ≤ 200 ms per search.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import write_json  # noqa: E402

PAGE, TEXT_CHARS = 50, 200  # as app/tabs/knowledge_base.py: PAGE, TABLE_TEXT_CHARS


def _words(rng: np.random.Generator, n: int) -> list[str]:
    syll = ["ka", "lo", "mi", "ren", "to", "sa", "vi", "dor", "pe", "lun", "gra", "bi", "ne", "os", "tul", "ham"]
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(syll, size=int(rng.integers(2, 5)))))
    return sorted(out)


def synthetic_kb(n: int, seed: int = 0):
    from mimic.data.schema import Entity

    rng = np.random.default_rng(seed)
    vocab = _words(rng, 5000)
    p = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like: a few words in many descriptions
    p /= p.sum()
    names = _words(np.random.default_rng(seed + 1), 3000)
    for i in range(n):
        k = int(rng.integers(12, 41))
        text = " ".join(vocab[j] for j in rng.choice(len(vocab), size=k, p=p)).capitalize() + "."
        name = f"{names[i % len(names)].capitalize()} {names[(i * 7 + 3) % len(names)].capitalize()}"
        if i == n // 2:
            name, text = "Cheetah", "A large spotted cat of Africa, the fastest land animal. " + text
        yield Entity(f"S{i:07d}", name, text, [f"{name} ({i})"], [])
    return vocab


def timed(fn, runs: int) -> dict:
    ms, rows = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        rows = len(fn())
        ms.append((time.perf_counter() - t) * 1000)
    return {"min_ms": round(min(ms), 1), "median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1)} | {
        "rows": rows
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--url", help="a database URL (default: SQLite in a temporary DATA_DIR)")
    ap.add_argument("--json", help="also write the JSON here")
    a = ap.parse_args(argv)

    import sqlite3

    from db import open_store
    from db.kb import FTS_TABLE, RANK_MAX

    load_before = os.getloadavg()
    data = Path(tempfile.mkdtemp(prefix="bench-kb-search-"))
    store = open_store(data, url=a.url)
    t = time.perf_counter()
    store.import_kb(synthetic_kb(a.entities), chunk_size=5000)
    import_s = time.perf_counter() - t
    # the commonest and a rare word of the descriptions, and a name to search by prefix / inside
    vocab = _words(np.random.default_rng(0), 5000)
    sample = store.get_entity(f"S{a.entities // 3:07d}")
    # the word whose expected number of descriptions is just under RANK_MAX (ranked: the costliest)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    expected = a.entities * (1 - (1 - p) ** 26)
    near_cap = vocab[int(np.argmin(np.abs(expected - 0.9 * RANK_MAX)))]  # just under the cap: ranked
    queries = {
        "phrase in one description ('fastest land animal')": "fastest land animal",
        "commonest description word": vocab[0],
        f"a word in about {int(0.9 * RANK_MAX):,} descriptions (ranked)": near_cap,
        "rare description word": vocab[-1],
        "two description words": f"{vocab[3]} {vocab[40]}",
        "name prefix": sample.name.split()[0][:4],
        "whole name": sample.name,
        "id": sample.id,
        "no match": "zzyzx",
    }
    results = {}
    for label, q in queries.items():
        results[label] = {"query": q} | timed(
            lambda q=q: store.search_entities(q, limit=PAGE + 1, text_chars=TEXT_CHARS), a.runs
        )
    results["commonest description word, page 2"] = {"query": vocab[0]} | timed(
        lambda: store.search_entities(vocab[0], limit=PAGE + 1, offset=PAGE, text_chars=TEXT_CHARS), a.runs
    )
    results["browse (empty query), page 1"] = {"query": ""} | timed(
        lambda: store.list_entities(0, PAGE + 1, text_chars=TEXT_CHARS), a.runs
    )
    if store.full_text_backend() == "fts5":  # how many entities each query's words are in
        with store.engine.connect() as c:
            for r in results.values():
                words = " ".join(f'"{w}"' for w in r["query"].lower().split() if w.isalnum())
                if words:
                    n = c.exec_driver_sql(f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?", (words,))
                    r["word_matches"] = n.scalar()
    found = [e.name for e in store.search_entities("fastest land animal", limit=PAGE + 1)]
    out = {
        "entities": store.count_entities(),
        "database": store.engine.dialect.name,
        "full_text": store.full_text_backend(),
        "sqlite_version": sqlite3.sqlite_version,
        "import_seconds": round(import_s, 1),
        "runs": a.runs,
        "queries": results,
        "cheetah_found_first": bool(found) and found[0] == "Cheetah",
        "max_median_ms": max(r["median_ms"] for r in results.values()),
        "target_ms": 200,
        "rank_max": RANK_MAX,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    store.close()
    print(write_json(out, a.json))
    return out


if __name__ == "__main__":
    main()
