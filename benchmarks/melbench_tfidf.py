"""The MELBench README's reference baseline, measured on this project's split.

Character n-gram TF-IDF of entity names against the mention string (analyzer char_wb, n = 2..4,
sublinear tf), cosine ranking over the 17,391-entity text KB. Prints H@1/5, MRR on all mentions
(the README's figure) and on the dev and test splits, with the same tie rule as `mimic evaluate`.

  python benchmarks/melbench_tfidf.py [--data ../shared/data/melbench/Wikidata-MEL.json] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mimic.analysis.ranking import metrics_from_ranks, ranks_from_scores
from mimic.data.melbench import load_melbench

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "melbench" / "Wikidata-MEL.json"


def tfidf_ranks(ds, mentions) -> list[int]:
    """Full-KB ranks of `mentions` under the TF-IDF of the mention against entity names (fitted on the KB names)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
    E = vec.fit_transform([e.name for e in ds.kb])
    ranks: list[int] = []
    for s in range(0, len(mentions), 512):
        batch = mentions[s : s + 512]
        S = torch.from_numpy((vec.transform([m.mention for m in batch]) @ E.T).toarray().astype(np.float32))
        gold = torch.tensor([ds.kb.position(m.answer) for m in batch])
        ranks += ranks_from_scores(S, gold).tolist()
    return ranks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--json")
    a = ap.parse_args()
    if not Path(a.data).exists():
        sys.exit(f"MELBench file not found at {a.data}")
    ds = load_melbench(a.data)
    out = {}
    for split in ("all", "dev", "test"):
        ms = [m for s in ds.splits.values() for m in s] if split == "all" else ds.split(split)
        out[split] = metrics_from_ranks(tfidf_ranks(ds, ms))
        print(split, json.dumps({k: round(v, 4) for k, v in out[split].items()}), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
