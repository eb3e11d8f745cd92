"""Command line: `python -m mimic <command> ...`.

  train            train a model from a YAML config (paper defaults in configs/mimic_paper.yaml)
  train-lexical    add the lexical unit S_L to a trained fixed-mode checkpoint (fit on the serving shortlist)
  evaluate         full-KB ranking of a split; prints JSON metrics; --scores-out FILE.npz
  import-official  convert an official MIMIC or M3EL Lightning checkpoint into this project's format
  reproduce        check an official release, evaluate full-KB, print/write the row beside the published one
  index            encode a knowledge base once for serving (resumable)
  link             link one mention (or a JSONL file of them) and print JSON
  calibrate-nil    choose the NIL threshold of an index on a dev split
  bench-link       serving latency / shortlist quality on a synthetic KB
  info             describe a checkpoint or a dataset
  retrain          corrections -> fine-tune -> evaluated model version -> promotion (one job at a time)
  analyze          error analysis of a run (labels, H@k, recall@K, per-unit accuracy, calibration, compare)

Errors that come from bad input (missing files, malformed data, wrong checkpoints) are printed as
one line `error: ...` with exit status 2, never as a traceback. `link --batch` reports bad lines
one by one and goes on: exit 0 when every line was linked, 1 when some line failed (each has an
error record naming its line), 2 when nothing could be done (no such file, model not loadable).
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
from mimic.data.kb_files import load_kb
from mimic.training.lexical_cli import add_train_lexical_parser

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
    if a.lexical_unit:
        overrides["lexical_unit"] = True
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
    overrides = {"cross_modal_eval": a.cross_modal_eval} if a.cross_modal_eval else None
    model = load_checkpoint(a.checkpoint, pick_device(a.device), overrides=overrides)
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
    from mimic.models.checkpoint import import_official, read_config

    out = import_official(
        a.checkpoint,
        a.backbone,
        a.output,
        mode=a.mode,
        trust_pickle=a.trust_pickle,
        model=a.model,
        cross_modal=a.cross_modal,
        cross_modal_eval=a.cross_modal_eval,
    )
    cfg = read_config(out)
    mc = cfg["model_config"]
    heads = {k: mc[k] for k in ("cross_modal", "cross_modal_eval") if k in mc}
    print(
        json.dumps(
            {
                "output": str(out),
                "model_type": cfg["model_type"],
                "mode": mc["mode"],
                **heads,
                "official": cfg["official"],
            },
            indent=2,
        )
    )


def cmd_reproduce(a):
    # lazy: torch-backed; `python -m mimic --help` must stay fast
    from mimic.analysis.reproduce import markdown, problems_text, reproduce

    report = reproduce(
        a.data,
        a.checkpoint,
        dataset=a.dataset,
        split=a.split,
        out=a.out,
        train_fraction=a.train_fraction,
        cross_modal_eval=a.cross_modal_eval,
        device=a.device,
        seed=a.seed,
        batch_size=a.batch_size,
        chunk_size=a.chunk_size,
        image_check=not a.no_image_check,
        progress=not a.no_progress,
    )
    if report["problems"]:
        print(problems_text(report["problems"]), file=sys.stderr)
    print(markdown(report))
    if report.get("written"):
        print(f"[mimic] wrote {', '.join(report['written'])}", file=sys.stderr)
    if a.strict and report["problems"]:
        raise ReproduceProblems(f"{len(report['problems'])} data problems (--strict)")


class ReproduceProblems(Exception):
    """`reproduce --strict` evaluated, but the release has problems (exit status 1)."""


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


class BatchLinkFailures(Exception):
    """`link --batch` finished, but some lines could not be linked (exit status 1)."""


def _batch_query(line: bytes) -> dict:
    """One line of a `link --batch` file as a query dict; ValueError names what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    sentence = obj.get("sentence")
    if sentence is not None and not isinstance(sentence, str):
        raise ValueError(f"'sentence' must be a string, got {type(sentence).__name__}")
    if not sentence or not sentence.strip():
        raise ValueError("missing or blank 'sentence'")
    if "span" in obj:
        span = obj["span"]
        if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)):
            raise ValueError("'span' must be two integers [start, end]")
        mention: object = tuple(span)
    else:
        mention = obj.get("mention")
        if mention is None:
            raise ValueError("missing 'mention' (or 'span')")
        if not isinstance(mention, str):
            raise ValueError(f"'mention' must be a string, got {type(mention).__name__}")
        if not mention.strip():
            raise ValueError("blank 'mention' (empty or whitespace only)")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"'image' must be a path string, got {type(image).__name__}")
    return {"sentence": sentence, "mention": mention, "image": image or None}


def _link_isolated(linker, good: list[tuple[int, dict]], top_k: int, explain: bool, batch_size: int) -> dict:
    """line -> LinkResult or the exception that refused it. An unexpected failure of a whole batch is
    retried line by line, so that it costs only the line(s) that cause it."""
    lines = [n for n, _ in good]
    try:
        return dict(zip(lines, linker.link_each([q for _, q in good], top_k, explain, batch_size)))
    except Exception as exc:  # noqa: BLE001 - retried one by one below
        if len(good) == 1:
            return {lines[0]: RuntimeError(f"linking failed: {type(exc).__name__}: {exc}")}
    out: dict = {}
    for item in good:
        out.update(_link_isolated(linker, [item], top_k, explain, 1))
    return out


def _link_batch_file(linker, path: Path, a) -> None:
    """Link every line of a JSONL file; bad lines become error records, never an abort.

    Output (stdout, one JSON object a line, in input order): the LinkResult of each good line with
    `"line": N` added, `{"line": N, "error": "..."}` for each bad one, and a final
    `{"summary": {"lines", "linked", "failed", "failed_lines"}}`. Blank lines are skipped, as by
    the dataset readers. Raises BatchLinkFailures (exit 1) when any line failed.
    """
    with open(path, "rb") as f:  # binary: one undecodable line must not stop the others
        raw_lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records: list[tuple[int, dict | None, str | None]] = []  # (line, query, error)
    for n, line in raw_lines:
        try:
            records.append((n, _batch_query(line), None))
        except ValueError as exc:
            records.append((n, None, str(exc)))
    failed: list[int] = []
    linked = 0
    chunk = max(1, a.batch_size)
    for b in range(0, len(records), chunk):
        part = records[b : b + chunk]
        good = [(n, q) for n, q, _ in part if q is not None]
        answers = _link_isolated(linker, good, a.top_k, not a.no_explain, chunk)
        for n, _, err in part:
            ans = answers.get(n)
            if err is None and ans is not None and not isinstance(ans, Exception):
                print(json.dumps({"line": n, **ans.to_dict()}), flush=True)
                linked += 1
                continue
            msg = err if err is not None else str(ans)
            failed.append(n)
            print(json.dumps({"line": n, "error": msg}), flush=True)
            print(f"[mimic] {path}, line {n}: {msg}", file=sys.stderr)
    summary = {"lines": len(records), "linked": linked, "failed": len(failed), "failed_lines": failed}
    print(json.dumps({"summary": summary}), flush=True)
    shown = ", ".join(map(str, failed[:20])) + (", ..." if len(failed) > 20 else "")
    print(
        f"[mimic] link --batch {path}: {len(records)} lines, {linked} linked, {len(failed)} failed"
        + (f" (lines {shown})" if failed else ""),
        file=sys.stderr,
    )
    if failed:
        raise BatchLinkFailures(f"{len(failed)} of {len(records)} lines failed")


def cmd_link(a):
    if a.batch:
        batch = Path(a.batch)
        if not batch.is_file():  # before loading the model: nothing can be done
            raise FileNotFoundError(f"batch file not found: {batch}")
    elif a.sentence is None:
        raise ValueError("give --sentence (and --mention or --span), or --batch FILE.jsonl")
    elif not a.span and a.mention is None:
        raise ValueError("give --mention TEXT or --span START END")
    # lazy: torch-backed, 1.4 s by python -X importtime; `python -m mimic --help` must stay fast
    from mimic.serving.linker import Linker

    linker = Linker.from_paths(
        a.checkpoint,
        a.index,
        shortlist=a.shortlist,
        keep_model=a.keep_model,
        allowed_image_dirs=a.allowed_image_dir or None,
        absent_mention=a.absent_mention,
    )
    if a.batch:
        _link_batch_file(linker, Path(a.batch), a)
        return
    mention = tuple(a.span) if a.span else a.mention
    r = linker.link(a.sentence, mention, a.image, top_k=a.top_k, explain=not a.no_explain)
    for w in r.warnings:
        print(f"[mimic] warning: {w}", file=sys.stderr)
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
    t.add_argument(
        "--lexical-unit", action="store_true", help="then fit the lexical unit S_L (fixed mode): OUTPUT/fused"
    )
    t.add_argument("--val-max-mentions", type=int)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    add_train_lexical_parser(sub)

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
    e.add_argument(
        "--cross-modal-eval",
        choices=["t2v", "bidirectional"],
        help="M3EL: cross-modal head that scores (default: the checkpoint's; see docs/reproducing.md)",
    )
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("import-official", help="convert an official MIMIC or M3EL checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("--backbone", required=True, help="folder of the CLIP the checkpoint was trained from")
    i.add_argument("--output", required=True)
    i.add_argument("--mode", choices=["compat", "fixed"], default="compat")
    i.add_argument("--model", choices=["mimic", "m3el"], help="model family (default: detected from the keys)")
    i.add_argument(
        "--cross-modal",
        choices=["t2v", "bidirectional"],
        help="M3EL: head the model was trained with (default: from its hyper-parameters; cmmb for WikiDiverse)",
    )
    i.add_argument(
        "--cross-modal-eval",
        choices=["t2v", "bidirectional"],
        help="M3EL: head that scores (default: t2v in compat mode, as the official test_step; "
        "the trained head in fixed mode)",
    )
    i.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the file (only for files you trust)",
    )
    i.set_defaults(func=cmd_import_official)

    r = sub.add_parser("reproduce", help="check an official release, evaluate full-KB, compare with the published row")
    r.add_argument("--data", required=True, help="official 'cleaned' release folder (WikiMEL, RichpediaMEL, ...)")
    r.add_argument("--checkpoint", required=True, help="checkpoint folder (e.g. from import-official)")
    r.add_argument("--dataset", choices=["wikimel", "richpediamel", "wikidiverse"], help="default: from file names")
    r.add_argument("--split", default="test")
    r.add_argument("--out", help="write reproduce.json and reproduce.md here")
    r.add_argument(
        "--train-fraction", type=float, help="the checkpoint was trained on this first fraction (low-resource)"
    )
    r.add_argument(
        "--cross-modal-eval",
        choices=["t2v", "bidirectional"],
        help="M3EL: scoring head (default: the checkpoint's; t2v = the official evaluation)",
    )
    r.add_argument("--device", default="auto")
    r.add_argument("--seed", type=int, default=43)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--chunk-size", type=int, default=1024)
    r.add_argument("--no-image-check", action="store_true", help="skip decoding every image before evaluating")
    r.add_argument("--strict", action="store_true", help="exit 1 when the data check found problems")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_reproduce)

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
    k.add_argument(
        "--batch",
        help="JSONL file: one {sentence, mention | span, image} per line; a bad line gets an error record "
        "naming its line, the others are linked, a final summary record follows (exit 1 if any line failed)",
    )
    k.add_argument("--batch-size", type=int, default=32, help="--batch: lines encoded together")
    k.add_argument(
        "--absent-mention",
        choices=["warn", "error"],
        default="warn",
        help="a mention found nowhere in its sentence, even after normalising case, punctuation and spaces: "
        "link its text alone with a warning (default) or refuse it",
    )
    k.add_argument("--top-k", type=int, default=10)
    k.add_argument("--shortlist", type=int, default=64)
    k.add_argument(
        "--keep-model",
        type=int,
        help="rows of the model retriever re-ranked even when fusion cuts them (default: shortlist/2; "
        "a million-entity KB needed 224 for 0.98 top-1 agreement with exhaustive ranking, docs/serving.md)",
    )
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
    except (BatchLinkFailures, ReproduceProblems) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
