"""Command line for operators: `python -m db <command>` (DATA_DIR / DATABASE_URL from the environment
or --data-dir / --url).

  info                          where the data lives, schema revision, counts, progress
  reconcile [--journal PATH]    make journal and database agree; with PATH, replay that journal
                                (rebuilds a lost database: point --data-dir at an empty folder)
  import-kb DATASET             load a dataset's knowledge base (any format mimic.data reads)
  import-mentions FILE.jsonl    pre-annotated mentions with candidates
  export-links FILE [--csv]     accepted links as JSONL (or CSV)
  export-training DIR           training set in the official MIMIC layout (`python -m mimic train --data DIR`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from typing import Any

from mimic.data.formats import load_dataset

from . import open_store
from .errors import StoreError
from .migrate import current_revision


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m db", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="default: $DATA_DIR or ./data")
    ap.add_argument("--url", help="database URL (default: $DATABASE_URL or SQLite in the data dir)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    r = sub.add_parser("reconcile")
    r.add_argument("--journal", help="replay this journal file (default: the data dir's own)")
    k = sub.add_parser("import-kb")
    k.add_argument("dataset")
    m = sub.add_parser("import-mentions")
    m.add_argument("file")
    m.add_argument("--model-version")
    m.add_argument("--skip-errors", action="store_true")
    e = sub.add_parser("export-links")
    e.add_argument("file")
    e.add_argument("--csv", action="store_true")
    t = sub.add_parser("export-training")
    t.add_argument("dir")
    t.add_argument("--layout", choices=["official", "jsonl"], default="official")
    t.add_argument("--prefix", default="WIKIMEL")
    t.add_argument("--overwrite", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        store = open_store(args.data_dir, args.url)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out: dict[str, Any]
        if args.cmd == "info":
            assert store.location is not None  # open_store sets it
            out = {
                "location": asdict(store.location),
                "revision": current_revision(store.engine),
                "overview": store.overview(),
                "progress": [p.to_dict() for p in store.progress()],
            }
        elif args.cmd == "reconcile":
            out = store.reconcile(args.journal).to_dict()
        elif args.cmd == "import-kb":
            out = store.import_kb(load_dataset(args.dataset).kb)
        elif args.cmd == "import-mentions":
            out = store.import_mentions(
                args.file, model_version=args.model_version, on_error="skip" if args.skip_errors else "raise"
            ).to_dict()
        elif args.cmd == "export-links":
            n = store.export_links_csv(args.file) if args.csv else store.export_links_jsonl(args.file)
            out = {"path": args.file, "links": n}
        else:
            exp = store.export_training_set(args.dir, layout=args.layout, prefix=args.prefix, overwrite=args.overwrite)
            out = {k: v for k, v in exp.to_dict().items() if k != "annotation_ids"} | {
                "annotations": len(exp.annotation_ids)
            }
        print(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        return 0
    except (StoreError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
