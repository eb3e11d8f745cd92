"""Command line for operators: `python -m db <command>` (DATA_DIR / DATABASE_URL from the environment
or --data-dir / --url).

  info                          where the data lives, schema revision, counts, progress
  reconcile [--journal PATH]    make journal and database agree; with PATH, replay that journal
                                (rebuilds a lost database: point --data-dir at an empty folder)
  import-kb FILE [--format auto|official|jsonl|csv] [--author NAME]
                                import a KB file (official folder or kb_entity.json, JSONL, CSV,
                                or a JSONL dataset folder with kb.jsonl) as the app's Knowledge base
                                tab does: lenient loader, images confined to the file's folder and
                                copied in by content; prints the report. Exit 0 all rows imported,
                                1 some rows rejected, 2 nothing could be read
  create-project NAME [--guidelines FILE.md] [--annotators-per-mention N] [--kb NAME] [--created-by NAME]
                                a new annotation project (db/projects.py)
  import-mentions FILE [--project NAME] [--images ZIP] [--format auto|jsonl|csv|official|melbench]
                                a corpus (pre-annotated or not), into a project when named; rejected
                                rows are reported with their row and problem (--skip-errors imports
                                the rest; without it the first bad row stops the import before any write)
  projects                      every project with its progress
  export-project NAME FILE.zip [--csv]
                                one project's decisions, guidelines and images as a zip
  export-links FILE [--csv]     accepted links as JSONL (or CSV)
  export-label-studio FILE.zip  every mention's decisions as Label Studio tasks, with the labeling
                                config and the images (db/export.py `export_label_studio`)
  rebuild-search                re-index the KB's words for full-text search (SQLite FTS5; after a
                                manual VACUUM, or to repair)
  export-training DIR           training set in the official MIMIC layout (`python -m mimic train --data DIR`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mimic.data.kb_files import load_kb
from mimic.data.schema import KnowledgeBase

from . import AnnotationStore, open_store
from ._base import MAX_NAME, MAX_SENTENCE, check_text
from .errors import InvalidInput, StoreError
from .migrate import current_revision


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m db", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", help="default: $DATA_DIR or ./data")
    ap.add_argument("--url", help="database URL (default: $DATABASE_URL or SQLite in the data dir)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info")
    r = sub.add_parser("reconcile")
    r.add_argument("--journal", help="replay this journal file (default: the data dir's own)")
    k = sub.add_parser("import-kb", help="import a KB file; exit 0 all imported, 1 rows rejected, 2 unreadable")
    k.add_argument("file", help="official folder or kb_entity.json, .jsonl, .csv (or a folder with kb.jsonl)")
    k.add_argument("--format", choices=["auto", "official", "jsonl", "csv"], default="auto")
    k.add_argument("--author", help="annotator recorded as the author of new entity versions")
    cp = sub.add_parser("create-project")
    cp.add_argument("name")
    cp.add_argument("--guidelines", help="a Markdown file with the annotation guidelines")
    cp.add_argument("--annotators-per-mention", type=int, default=1)
    cp.add_argument("--kb", default="default")
    cp.add_argument("--created-by", help="annotator recorded as the project's creator")
    m = sub.add_parser("import-mentions")
    m.add_argument("file", help="a .jsonl, .csv, official split file or folder, or MELBench .json")
    m.add_argument("--project", help="the project the mentions join (default: the built-in default project)")
    m.add_argument("--images", help="a zip of the mention images the rows name")
    m.add_argument("--format", choices=["auto", "jsonl", "csv", "official", "melbench"], default="auto")
    m.add_argument("--model-version")
    m.add_argument("--skip-errors", action="store_true")
    sub.add_parser("projects")
    ep = sub.add_parser("export-project")
    ep.add_argument("name")
    ep.add_argument("file")
    ep.add_argument("--csv", action="store_true")
    e = sub.add_parser("export-links")
    e.add_argument("file")
    e.add_argument("--csv", action="store_true")
    ls = sub.add_parser("export-label-studio")
    ls.add_argument("file")
    sub.add_parser("rebuild-search")
    t = sub.add_parser("export-training")
    t.add_argument("dir")
    t.add_argument("--layout", choices=["official", "jsonl"], default="official")
    t.add_argument("--prefix", default="WIKIMEL")
    t.add_argument("--overwrite", action="store_true")
    return ap


def import_kb_file(store: AnnotationStore, path: str, fmt: str = "auto", author: str | None = None) -> tuple[dict, int]:
    """What the app's Knowledge base tab does on import (app/tabs/knowledge_base.py import_kb_file),
    without the in-process index: the same lenient loader with images confined to the file's folder,
    the store's content-addressed image copy and its validation. -> (report, exit code: 0 every row
    imported, 1 some rows rejected, 2 nothing could be read)."""
    if author is not None:
        store.get_annotator(author)  # NotFound before any image is copied
    try:
        kb, report = load_kb(path, format=fmt)
    except (ValueError, OSError) as exc:  # unreadable file, unknown format: nothing was imported
        return {"path": path, "error": f"cannot import {path}: {exc}", "imported": 0}, 2
    # rows the store's own validation would refuse (an id over MAX_NAME characters ...) are rejected
    # here one by one, so that they do not fail the whole import
    good = []
    for e in kb:
        try:
            check_text(e.id, "id", max_len=MAX_NAME)
            check_text(e.name, "name", max_len=MAX_SENTENCE)
        except InvalidInput as exc:
            report.rejected.append({"row": None, "id": e.id[:MAX_NAME], "reason": str(exc)})
            continue
        good.append(e)
    report.loaded = len(good)
    image_errors: list[dict] = []
    counts = store.import_kb(KnowledgeBase(good), author=author, image_errors=image_errors)
    out: dict[str, Any] = {"path": report.path, "format": report.format, **counts}
    out["imported"] = len(good)
    out["rejected_rows"] = len(report.rejected)
    out |= {k: v for k, v in report.to_dict().items() if k not in ("path", "format")}
    out["rejected_images"] = image_errors
    return out, (1 if report.rejected else 0)


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
        code = 0
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
            out, code = import_kb_file(store, args.file, args.format, args.author)
        elif args.cmd == "create-project":
            guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else ""
            out = store.create_project(
                args.name,
                guidelines=guidelines,
                annotators_per_mention=args.annotators_per_mention,
                kb=args.kb,
                created_by=args.created_by,
            ).to_dict()
        elif args.cmd == "import-mentions":
            out = store.import_mentions(
                args.file,
                model_version=args.model_version,
                on_error="skip" if args.skip_errors else "raise",
                project=args.project,
                images_zip=args.images,
                format=args.format,
            ).to_dict()
            code = 1 if out["rejected"] else 0
        elif args.cmd == "projects":
            out = {
                "projects": [p.to_dict() | {"progress": store.project_progress(p.name)} for p in store.list_projects()],
                "default": store.project_progress(),
            }
        elif args.cmd == "export-project":
            out = store.export_project(args.name, args.file, fmt="csv" if args.csv else "jsonl")
        elif args.cmd == "export-links":
            n = store.export_links_csv(args.file) if args.csv else store.export_links_jsonl(args.file)
            out = {"path": args.file, "links": n}
        elif args.cmd == "export-label-studio":
            out = {"path": args.file, "tasks": store.export_label_studio(args.file)}
        elif args.cmd == "rebuild-search":
            out = {"entities": store.rebuild_search_index(), "full_text": store.full_text_backend()}
        else:
            exp = store.export_training_set(args.dir, layout=args.layout, prefix=args.prefix, overwrite=args.overwrite)
            out = {k: v for k, v in exp.to_dict().items() if k != "annotation_ids"} | {
                "annotations": len(exp.annotation_ids)
            }
        print(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        return code
    except (StoreError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
