"""Command line: `python -m mimic <command> ...`.

  train            train a model from a YAML config (paper defaults in configs/mimic_paper.yaml)
  evaluate         full-KB ranking of a split; prints JSON metrics; --scores-out FILE.npz
  import-official  convert an official MIMIC Lightning checkpoint into this project's format
  index            encode a knowledge base once for serving (resumable)
  link             link one mention (or a JSONL file of them) and print JSON
  calibrate-nil    choose the NIL threshold of an index on a dev split
  bench-link       serving latency / shortlist quality on a synthetic KB
  info             describe a checkpoint or a dataset
  retrain          corrections -> fine-tune -> evaluated model version -> promotion (one job at a time)
  analyze          error analysis of a run (labels, H@k, recall@K, per-unit accuracy, calibration, compare)

Errors that come from bad input (missing files, malformed data, wrong checkpoints) are printed as
one line `error: ...` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from mimic.analysis.cli import add_analyze_parser
from mimic.atomic import write_text_atomic
from mimic.data.formats import load_dataset
from mimic.data.json_files import read_jsonl
from mimic.data.kb_files import load_kb

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _json_out(obj, path: str | None):
    text = json.dumps(obj, indent=2)
    if path:
        write_text_atomic(path, text + "\n")
    print(text)


def cmd_train(a):
    # lazy: torch-backed, 1.6 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.training.trainer import TrainConfig, train

    overrides = {
        "data": a.data,
        "output": a.output,
        "backbone": a.backbone,
        "mode": a.mode,
        "model": a.model,
        "cross_modal": a.cross_modal,
        "text_field": a.text_field,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "lr": a.lr,
        "device": a.device,
        "train_fraction": a.train_fraction,
        "init_checkpoint": a.init_checkpoint,
        "val_max_mentions": a.val_max_mentions,
    }
    if a.freeze_backbone:
        overrides["freeze_backbone"] = True
    if a.no_progress:
        overrides["progress"] = False
    cfg = (
        TrainConfig.from_yaml(a.config, **overrides)
        if a.config
        else TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    )
    if not cfg.data:
        raise ValueError("no data: give --data or 'data:' in the config")
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    _json_out({k: v for k, v in summary.items() if k != "history"} | {"epochs_run": len(summary["history"])}, None)


def cmd_evaluate(a):
    # lazy: torch-backed, 1.6 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.analysis.ranking import evaluate
    from mimic.models.checkpoint import load_checkpoint
    from mimic.training.trainer import pick_device

    ds = load_dataset(a.data)
    model = load_checkpoint(a.checkpoint, pick_device(a.device))
    mentions = ds.split(a.split)
    if a.limit:
        mentions = mentions[: a.limit]
    res = evaluate(
        model,
        ds.kb,
        mentions,
        batch_size=a.batch_size,
        chunk_size=a.chunk_size,
        strategy=a.strategy,
        scores_out=a.scores_out,
        progress=not a.no_progress,
    )
    res.pop("ranks")
    res.update(
        {
            "split": a.split,
            "checkpoint": a.checkpoint,
            "mode": model.config.mode,
            "tie_breaking": "stable: equal scores ranked by KB position",
        }
    )
    _json_out(res, a.json)


def cmd_import_official(a):
    # lazy: torch-backed, 1.2 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.models.checkpoint import import_official

    out = import_official(a.checkpoint, a.backbone, a.output, mode=a.mode, trust_pickle=a.trust_pickle)
    print(json.dumps({"output": str(out)}))


def cmd_index(a):
    # lazy: torch-backed, 1.6 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.models.checkpoint import load_checkpoint
    from mimic.serving.index import KBIndex
    from mimic.training.trainer import pick_device

    kb, report = load_kb(a.kb)
    print(f"[mimic] {report.summary()}", file=sys.stderr)
    for r in report.rejected[:20]:
        print(f"[mimic]   rejected {r['row']}: {r['reason']}", file=sys.stderr)
    if len(kb) == 0:
        raise ValueError(f"{a.kb}: no usable entity")
    model = load_checkpoint(a.checkpoint, pick_device(a.device))
    idx = KBIndex.build(
        model,
        kb,
        a.output,
        batch_size=a.batch_size,
        progress=not a.no_progress,
        faiss_kind=a.faiss,
        overwrite=a.overwrite,
    )
    print(
        json.dumps(
            {
                "output": str(idx.root),
                "entities": len(idx),
                "fingerprint": idx.fingerprint,
                "build_seconds": idx.manifest["build_seconds"],
                "index_bytes_disk": idx.disk_bytes(),
                "kb_report": report.to_dict(),
            },
            indent=2,
        )
    )


def cmd_link(a):
    # lazy: torch-backed, 1.4 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.serving.linker import Linker

    linker = Linker.from_paths(
        a.checkpoint, a.index, shortlist=a.shortlist, allowed_image_dirs=a.allowed_image_dir or None
    )
    if a.batch:
        queries = []
        for _, q in read_jsonl(Path(a.batch)):
            if "span" in q:
                q["mention"] = tuple(q.pop("span"))
            queries.append(q)
        results = linker.link_batch(queries, top_k=a.top_k, explain=not a.no_explain)
        for r in results:
            print(json.dumps(r.to_dict()))
        return
    if a.sentence is None:
        raise ValueError("give --sentence (and --mention or --span), or --batch FILE.jsonl")
    mention = tuple(a.span) if a.span else a.mention
    if mention is None:
        raise ValueError("give --mention TEXT or --span START END")
    r = linker.link(a.sentence, mention, a.image, top_k=a.top_k, explain=not a.no_explain)
    print(json.dumps(r.to_dict(), indent=2))


def cmd_calibrate_nil(a):
    # lazy: torch-backed, 1.4 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.serving.linker import Linker

    linker = Linker.from_paths(a.checkpoint, a.index)
    mentions = load_dataset(a.data).split(a.split)
    known = [m for m in mentions if m.answer in linker.index.position]
    print(json.dumps(linker.calibrate_nil(known[: a.limit] if a.limit else known), indent=2))


def cmd_info(a):
    p = Path(a.path)
    if (p / "config.json").exists():
        # lazy: torch-backed, 1.2 s by python -X importtime; not needed to describe a dataset
        from mimic.models.checkpoint import read_config, read_metrics

        print(json.dumps({"checkpoint": read_config(p), "metrics": read_metrics(p)}, indent=2))
        return
    ds = load_dataset(p)
    print(
        json.dumps(
            {
                "dataset": ds.name,
                "entities": len(ds.kb),
                "splits": {k: len(v) for k, v in ds.splits.items()},
                "stats": ds.stats,
            },
            indent=2,
            default=str,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m mimic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--config", help="YAML config (see configs/)")
    t.add_argument("--data", help="dataset: official folder, JSONL folder or MELBench .json")
    t.add_argument("--output", help="run folder (best/, last/, summary.json)")
    t.add_argument("--backbone", help="auto | clip | offline | hub id | local CLIP folder")
    t.add_argument("--model", choices=["mimic", "m3el"], help="model family (default mimic)")
    t.add_argument("--cross-modal", choices=["t2v", "bidirectional"], help="M3EL cross-modal head")
    t.add_argument("--text-field", choices=["auto", "attr", "desc"], help="official KB text field")
    t.add_argument("--mode", choices=["fixed", "compat"])
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device")
    t.add_argument("--train-fraction", type=float, help="low-resource setting: keep the first fraction")
    t.add_argument("--freeze-backbone", action="store_true", help="cache backbone features, train heads only")
    t.add_argument("--init-checkpoint", help="start from this checkpoint")
    t.add_argument("--val-max-mentions", type=int)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="full-KB evaluation")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--chunk-size", type=int, default=1024)
    e.add_argument("--strategy", choices=["precomputed", "official"], default="precomputed")
    e.add_argument("--scores-out", help="write S, S_T, S_V, S_C [mentions, entities], gold, rank to this .npz")
    e.add_argument("--limit", type=int, help="first N mentions only")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", help="also write the metrics JSON here")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("import-official", help="convert an official MIMIC checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("--backbone", required=True, help="folder of the CLIP the checkpoint was trained from")
    i.add_argument("--output", required=True)
    i.add_argument("--mode", choices=["compat", "fixed"], default="compat")
    i.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the file (only for files you trust)",
    )
    i.set_defaults(func=cmd_import_official)

    x = sub.add_parser("index", help="build a KB index for serving")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--kb", required=True, help="official folder / kb_entity.json, .jsonl or .csv")
    x.add_argument("--output", required=True)
    x.add_argument("--faiss", choices=["flat", "fp16", "hnsw", "ivf"], default="flat")
    x.add_argument("--batch-size", type=int, default=64)
    x.add_argument("--overwrite", action="store_true")
    x.add_argument("--device", default="auto")
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(func=cmd_index)

    k = sub.add_parser("link", help="link a mention; prints JSON")
    k.add_argument("--checkpoint", required=True)
    k.add_argument("--index", required=True)
    k.add_argument("--sentence")
    k.add_argument("--mention")
    k.add_argument("--span", type=int, nargs=2, metavar=("START", "END"))
    k.add_argument("--image")
    k.add_argument("--batch", help="JSONL file: one {sentence, mention | span, image} per line")
    k.add_argument("--top-k", type=int, default=10)
    k.add_argument("--shortlist", type=int, default=64)
    k.add_argument("--allowed-image-dir", action="append", help="only read images under these folders")
    k.add_argument("--no-explain", action="store_true")
    k.set_defaults(func=cmd_link)

    c = sub.add_parser("calibrate-nil", help="choose and store the NIL threshold of an index")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--index", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--split", default="dev")
    c.add_argument("--limit", type=int)
    c.set_defaults(func=cmd_calibrate_nil)

    n = sub.add_parser("info", help="describe a checkpoint folder or a dataset")
    n.add_argument("path")
    n.set_defaults(func=cmd_info)

    add_analyze_parser(sub)
    for name, (_, help_text) in FORWARDED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return ap


def _index_errors():
    # lazy: the index module pulls in torch and faiss, 1.4 s by python -X importtime, for --help too
    from mimic.serving.index import IndexFileError

    return IndexFileError


# Commands that live above the library and run as their own process, so that `mimic` never imports
# them: `retrain` joins the library with the annotation store (package `retraining`), `bench-link`
# is a benchmark script of the source checkout. Their arguments pass through unchanged.
_CHECKOUT = Path(__file__).resolve().parents[1]
FORWARDED = {
    "retrain": (
        ["-m", "retraining"],
        "corrections -> fine-tune -> evaluated model version -> promotion (python -m retraining)",
    ),
    "bench-link": (
        [str(_CHECKOUT / "benchmarks" / "bench_link.py")],
        "serving benchmark on a synthetic clustered KB (benchmarks/bench_link.py)",
    ),
}


def _forward(name: str, args: list[str]) -> int:
    target = FORWARDED[name][0]
    if not target[0].startswith("-") and not Path(target[0]).is_file():
        print(f"error: `{name}` needs a source checkout ({target[0]} not found)", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, *target, *args])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return _forward(argv[0], argv[1:])
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="[mimic] %(message)s")
    try:
        a.func(a)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        KeyError,
        PermissionError,
        FloatingPointError,
        _index_errors(),
    ) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0
