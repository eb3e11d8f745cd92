"""Shared pieces of the MELBench fusion study: paths and options, data loading, the feature list,
the re-ranker network, the full-KB rank rule and the results log.

Every script takes `--data` (the MELBench Wikidata-MEL file) and `--cache` (where intermediate arrays,
models and `results.jsonl` go); the defaults are `<repo>/../shared/data/melbench/Wikidata-MEL.json`
and `benchmarks/melbench_fusion/cache/` (git-ignored). Imported by the numbered scripts after they have
put the repository root on sys.path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mimic.analysis.ranking import metrics_from_ranks
from mimic.data.melbench import load_melbench

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "melbench" / "Wikidata-MEL.json"
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"
SPLITS = ("train", "dev", "test")
K = 64  # shortlist size, as the serving Linker retrieves

# The 19 per-(mention, candidate) features written by 03_features.py, in column order.
FEATS = [
    "tfidf",  # char n-gram TF-IDF cosine, mention vs name
    "dense_ctx",  # MiniLM cosine, "mention [SEP] sentence" vs name
    "dense_mention",  # MiniLM cosine, mention alone vs name
    "exact",  # normalised mention == name (parenthetical qualifier removed)
    "m_in_n",  # fraction of mention tokens found in the name
    "n_in_m",  # fraction of name tokens found in the mention
    "is_last",  # mention's last token == name's last token
    "is_first",  # mention's first token == name's first token
    "n_extra",  # log(1 + #name tokens missing from the mention)
    "ctx_overlap",  # fraction of the name's extra tokens (incl. qualifier) found in the rest of the sentence
    "other_overlap",  # same, in the other mentions of the sentence
    "has_paren",  # the name has a parenthetical qualifier
    "lex_rr",  # 1/(1+rank) in the lexical top-64 (0 if absent)
    "den_rr",  # 1/(1+rank) in the dense top-64 (0 if absent)
    "name_in_sent_tfidf",  # TF-IDF cosine of the name vs the whole sentence
    "contig",  # the mention is a contiguous token sub-sequence of the name
    "ambig",  # mention-level: log(1 + #shortlisted names containing all mention tokens)
    "m_ntok",  # mention-level: number of mention tokens
    "paren_ctx",  # the qualifier shares a token with the rest of the sentence
]


def parser(doc: str) -> argparse.ArgumentParser:
    """Argument parser with the options every step shares (`--data`, `--cache`, `--threads`)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MELBench Wikidata-MEL.json")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="intermediate arrays, models, results.jsonl")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the measurements used 2)")
    return ap


def setup(a: argparse.Namespace) -> None:
    """Check the data file, create the cache folder, set the torch thread count."""
    if not a.data.exists():
        sys.exit(f"MELBench file not found at {a.data} (pass --data)")
    a.cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)


def load(data: Path):
    """The dataset, the KB's entity names, the mentions per split and their gold KB positions."""
    ds = load_melbench(data)
    names = [e.name for e in ds.kb]
    ms = {s: ds.split(s) for s in SPLITS}
    gold = {s: np.array([ds.kb.position(m.answer) for m in ms[s]]) for s in SPLITS}
    return ds, names, ms, gold


def sentence_id(m) -> str:
    """Mention ids are `<sentence id>-<n>`; mentions of one sentence share the prefix."""
    return m.id.rsplit("-", 1)[0]


def by_sentence(ms: dict) -> dict:
    """All mentions (every split) grouped by sentence id."""
    d: dict = {}
    for split in ms.values():
        for m in split:
            d.setdefault(sentence_id(m), []).append(m)
    return d


def other_mentions(m, sentences: dict) -> list[str]:
    """The surface strings of the other mentions in the same sentence."""
    return [x.mention for x in sentences[sentence_id(m)] if x.id != m.id]


def ranks_dense(S: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """1-based rank of the gold column in each row of S [B, N]; ties broken by KB position
    (the earlier entity wins), the same rule as `mimic evaluate`."""
    g = S[np.arange(len(gold)), gold][:, None]
    pos = np.arange(S.shape[1])[None]
    return (S > g).sum(1) + ((S == g) & (pos < gold[:, None])).sum(1) + 1


def rerank_ranks(S: np.ndarray, gold_in: np.ndarray, r_sum: np.ndarray) -> np.ndarray:
    """Full-KB rank of a re-ranker: the gold's position in the re-ranked shortlist when the shortlist
    holds it, else max(65, its rank under the TF-IDF + MiniLM sum) — a miss for H@1..H@64."""
    order = np.argsort(-S, axis=1, kind="stable")
    rows, cols = np.where(gold_in[np.arange(len(gold_in))[:, None], order])
    r = np.maximum(K + 1, r_sum).astype(np.int64)
    r[rows] = cols + 1
    return r


def fmt(ranks) -> dict:
    """H@1, H@5 and MRR rounded to 4 places."""
    m = metrics_from_ranks(ranks)
    return {k: round(m[k], 4) for k in ("H@1", "H@5", "MRR")}


def build_net(n_in: int, model: str, hidden: int = 64) -> torch.nn.Module:
    """The re-ranker's scoring function of one candidate's features: linear, or an MLP with two
    GELU hidden layers."""
    if model == "linear":
        return torch.nn.Linear(n_in, 1)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, 1),
    )


def load_features(cache: Path, split: str, sel: list[int], extra: str = ""):
    """Selected feature columns X [M, 64, F] (plus the learned head's score when `extra` names it:
    `head` or `headcf`), the gold-in-shortlist mask [M, 64] and the zero-shot sum's full-KB rank."""
    d = np.load(cache / f"feat_{split}.npz")
    X = d["X"][:, :, sel]
    if extra:
        X = np.concatenate([X, np.load(cache / f"{extra}_{split}.npz")["X"]], -1)
    return X, d["gold_in"], np.load(cache / f"short_{split}.npz")["r_sum"]


def record(cache: Path, out: dict) -> None:
    """Print one result as JSON and append it to `<cache>/results.jsonl`."""
    line = json.dumps(out)
    print(line, flush=True)
    with open(cache / "results.jsonl", "a") as f:
        f.write(line + "\n")


def load_model(cache: Path, tag: str):
    """The re-ranker saved by 04_fuse.py as fuse_{tag}.pt, and its checkpoint (standardisation `mu`/`sd`,
    feature columns `sel`, learned-head score `extra`, `model`, `hidden`)."""
    ck = torch.load(cache / f"fuse_{tag}.pt")
    net = build_net(len(ck["mu"]), ck["model"], ck["hidden"])
    net.load_state_dict(ck["state"])
    return net.eval(), ck


def model_scores(net: torch.nn.Module, ck: dict, X: np.ndarray) -> np.ndarray:
    """Re-ranker scores [M, 64] of features X [M, 64, F]."""
    with torch.no_grad():
        return net((torch.from_numpy(X) - ck["mu"]) / ck["sd"]).squeeze(-1).numpy()
