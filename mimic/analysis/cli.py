"""The `analyze` command: `python -m mimic analyze ...` (or `python -m mimic.analysis.cli ...`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mimic.analysis.records import MentionAnalysis, load_records, save_records
from mimic.analysis.score_dump import analyze_score_arrays, load_score_dump
from mimic.analysis.summary import compare, summarize
from mimic.atomic import write_json_atomic
from mimic.data.formats import load_dataset
from mimic.data.schema import Mention


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `analyze` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "analyze",
        help="error analysis of a run (labels, H@k, recall@K, per-unit accuracy, calibration)",
        description="Error analysis of one run. Input: --records FILE.jsonl (analysed before), or "
        "--scores FILE.npz --data DATA --split SPLIT (an `evaluate --scores-out` dump), or "
        "--checkpoint CKPT --index INDEX --data DATA --split SPLIT (runs the linker). "
        "Prints the summary as JSON.",
    )
    p.add_argument("--records", help="records JSONL written by --out-records")
    p.add_argument("--scores", help="full-KB score dump (.npz) from `evaluate --scores-out`")
    p.add_argument("--checkpoint", help="checkpoint folder (with --index: analyse the linker)")
    p.add_argument("--index", help="KB index folder built for the checkpoint")
    p.add_argument("--data", help="dataset the scores/linker ran on (any supported format)")
    p.add_argument("--split", default="test")
    p.add_argument("--dataset-name", help="dataset label of the records (default: the dataset's name)")
    p.add_argument("--model-version", help="tag of this run (default: dump file name / index fingerprint)")
    p.add_argument(
        "--nil-threshold",
        type=float,
        help="answer NIL when the top S is below this (--scores; --checkpoint: overrides the index's)",
    )
    p.add_argument("--shortlist", type=int, default=64, help="linker shortlist size (--checkpoint)")
    p.add_argument("--top-k", type=int, default=10, help="candidates kept per record")
    p.add_argument("--bins", type=int, default=10, help="reliability diagram bins")
    p.add_argument(
        "--compare",
        metavar="BASELINE.jsonl",
        help="records of an earlier version: fixed = wrong there, right in this run",
    )
    p.add_argument("--compare-csv", help="write the side-by-side comparison table here")
    p.add_argument("--out-records", help="write this run's records (JSONL) here")
    p.add_argument("--csv", help="write the per-mention table (CSV) here")
    p.add_argument("--json", help="also write the summary JSON here")
    p.set_defaults(func=cmd_analyze)
    return p


def cmd_analyze(args) -> dict:
    """Run the analysis the arguments ask for, print the summary JSON and return it."""
    # lazy: `python -m mimic --help` builds this parser; pandas costs 0.3 s (python -X importtime)
    from mimic.analysis.tables import comparison_table, records_table, to_csv

    records = _records_from_args(args)
    if args.model_version and args.records:
        for r in records:
            r.model_version = args.model_version
    out = summarize(records, n_bins=args.bins)
    if args.compare:
        cmp = compare(load_records(args.compare), records)
        out["comparison"] = {"version_a": cmp["version_a"], "version_b": cmp["version_b"], **cmp["counts"]}
        if args.compare_csv:
            to_csv(comparison_table(cmp), args.compare_csv)
    elif args.compare_csv:
        raise ValueError("--compare-csv needs --compare BASELINE.jsonl")
    if args.out_records:
        save_records(records, args.out_records)
    if args.csv:
        to_csv(records_table(records), args.csv)
    if args.json:
        write_json_atomic(args.json, out)
    print(json.dumps(out, indent=2))
    return out


def _records_from_args(a) -> list[MentionAnalysis]:
    sources = [
        name
        for name, given in (("--records", a.records), ("--scores", a.scores), ("--checkpoint", a.checkpoint))
        if given
    ]
    if len(sources) != 1:
        raise ValueError(
            "give exactly one input: --records FILE.jsonl, --scores FILE.npz --data DATA, or "
            f"--checkpoint CKPT --index INDEX --data DATA (got {', '.join(sources) or 'none'})"
        )
    if a.records:
        return load_records(a.records)
    if not a.data:
        raise ValueError(f"{sources[0]} needs --data DATA (and --split) for the mentions")
    ds = load_dataset(a.data)
    mentions = ds.split(a.split)
    name = a.dataset_name or ds.name
    if a.scores:
        return _records_from_dump(a, ds, mentions, name)
    if not a.index:
        raise ValueError("--checkpoint needs --index INDEX (build one with `python -m mimic index`)")
    # lazy: the linker pulls in torch, 1.4 s of `python -m mimic --help` (python -X importtime)
    from mimic.analysis.error_analysis import analyze_linker
    from mimic.serving.linker import Linker

    kw = {"shortlist": a.shortlist}
    if a.nil_threshold is not None:
        kw["nil_threshold"] = a.nil_threshold
    linker = Linker.from_paths(a.checkpoint, a.index, **kw)
    return analyze_linker(linker, mentions, dataset=name, model_version=a.model_version or "", top_k=a.top_k)


def _records_from_dump(a, ds, mentions: list[Mention], name: str) -> list[MentionAnalysis]:
    arrays = load_score_dump(a.scores)
    S, gold = arrays["S"], np.asarray(arrays["gold"], dtype=np.int64)
    M, N = S.shape
    if N != len(ds.kb):
        raise ValueError(f"{a.scores}: {N} entity columns but the KB of {a.data} has {len(ds.kb)} entities")
    # `evaluate --limit N` dumps the first N mentions of the split
    if M > len(mentions):
        raise ValueError(f"{a.scores}: {M} mention rows but split {a.split!r} of {a.data} has {len(mentions)} mentions")
    mentions = mentions[:M]
    expected = np.array([ds.kb.position(m.answer) for m in mentions], dtype=np.int64)
    if not np.array_equal(expected, gold):
        i = int(np.flatnonzero(expected != gold)[0])
        raise ValueError(
            f"{a.scores} does not match split {a.split!r} of {a.data}: mention {mentions[i].id!r} "
            f"(row {i}) has gold position {int(gold[i])} in the dump, {int(expected[i])} in the data"
        )
    return analyze_score_arrays(
        S,
        arrays.get("S_T"),
        arrays.get("S_V"),
        arrays.get("S_C"),
        gold,
        [e.id for e in ds.kb],
        kb_names=[e.name for e in ds.kb],
        mentions=mentions,
        dataset=name,
        model_version=a.model_version or Path(a.scores).stem,
        nil_threshold=a.nil_threshold,
        top_k=a.top_k,
    )


if __name__ == "__main__":  # pragma: no cover - convenience: python -m mimic.analysis.cli ...
    _ap = argparse.ArgumentParser(prog="python -m mimic.analysis.cli")
    add_analyze_parser(_ap.add_subparsers(dest="command", required=True))
    _args = _ap.parse_args()
    try:
        _args.func(_args)
    except (ValueError, FileNotFoundError) as _exc:
        print(f"error: {_exc}", file=sys.stderr)
        sys.exit(2)
