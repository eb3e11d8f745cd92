"""Exports: accepted links as JSONL / CSV, the gold mentions, and a training set that
`python -m mimic train` reads (`ExportsMixin`, one of the store's mixins).

The gold label of a mention is `AnnotationStore.resolved` (reports.py), the store's only rule:
the training export, the retraining job and the app's Analysis tab all read it through
`gold_mentions` / `build_training_dataset`, so a model is judged on the labels it is trained on.

The training set is built as a `mimic.data.schema.Dataset` and written by the core library's own
writers (`write_official` for the official MIMIC layout — kb_entity.json, qid2id.json,
<PREFIX>_train/dev/test.json, kb_image/, mention_image/ — or `write_jsonl_dataset`), so whatever
the loaders accept is by construction what we produce. Every write is atomic (temporary file or
folder renamed into place).

Link exports (JSONL / CSV / `export_links_zip`) name a mention image by a path relative to the
export's folder, `mention_image/<sha256><ext>`, never by a server path; the zip holds those files.
CSV cells a spreadsheet would run as formulas get a leading "'" unless raw_cells=True.

`export_label_studio` writes the same decisions as Label Studio tasks (a zip: tasks.json, the
labeling config, the images), one task per mention with every annotator's decision as an
annotation and the model's ranking as a prediction; see its docstring and docs/store.md.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import secrets
import shutil
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from mimic.data import write_jsonl_dataset, write_official
from mimic.data.jsonl import write_jsonl_dataset_with_images
from mimic.data.schema import Dataset, KnowledgeBase
from mimic.data.schema import Mention as CoreMention

from ._base import StoreBase
from .errors import InvalidInput
from .models import Image, KbEntity, Mention, ModelVersion, Prediction, PredictionCandidate, resolves
from .projects import DEFAULT_PROJECT
from .records import ProjectRecord, TrainingExport
from .reports import Resolution

log = logging.getLogger("mimic.db")

LINK_COLUMNS = [
    "annotation_id",
    "request_id",
    "mention_uid",
    "source",
    "sentence",
    "mention",
    "start",
    "end",
    "image",
    "decision",
    "entity_id",
    "entity_name",
    "entity_version",
    "annotator",
    "role",
    "seconds_spent",
    "comment",
    "created_at",
    "model_version",
    "predicted_entity_id",
    "predicted_score",
    "corrected",
]


MENTION_IMAGE_DIR = "mention_image"  # link exports name images relative to the export's folder
# Label Studio tasks: the zip's folder, and the labeling config their results are written for. The
# candidate entities are dynamic choices (`value="$candidates"`: each task lists its own).
LABEL_STUDIO_DIR = "label-studio"
LABEL_STUDIO_NIL, LABEL_STUDIO_AMBIGUOUS = "NIL", "AMBIGUOUS"
LABEL_STUDIO_CONFIG = """<View>
  <Header value="Link the marked mention to an entity of the knowledge base"/>
  <Image name="image" value="$image"/>
  <Labels name="mention" toName="text">
    <Label value="Mention" background="orange"/>
  </Labels>
  <Text name="text" value="$text"/>
  <Header value="Entity (NIL: not in the list; AMBIGUOUS: the context does not decide)"/>
  <Choices name="entity" toName="text" choice="single" value="$candidates"/>
  <TextArea name="comment" toName="text" placeholder="comment" maxSubmissions="1" editable="true"/>
</View>
"""
LABEL_STUDIO_README = """# MIMIC Studio decisions as Label Studio tasks

tasks.json          one task per mention: data (text, image, candidates, the decisions in plain form),
                    annotations (one per annotator's current decision), predictions (the model's ranking)
label_config.xml    the labeling config the results are written for (Text + Labels for the mention span,
                    Choices over each task's own candidates, TextArea for a comment, Image)
images/             the mention images, named by content (sha256)

Import: create a project with label_config.xml as its labeling interface, then import tasks.json.
The images are addressed as Label Studio local files (/data/local-files/?d=label-studio/images/...):
put this folder under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, start Label Studio with
LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and add a Local files storage for it; or rewrite
data.image (data.image_file holds the path relative to this folder).
"""
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula


def neutralize_cell(value):
    """A CSV cell a spreadsheet will not evaluate: text starting with one of FORMULA_STARTS gets a
    leading "'". Numbers and other values are returned as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def zip_folder(folder: Path, dest: Path, *, arc_root: str = "") -> None:
    """Every file under `folder` into the zip `dest`, named relative to `folder` (under `arc_root`)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file():
                rel = f.relative_to(folder).as_posix()
                z.write(f, f"{arc_root}/{rel}" if arc_root else rel)


def _atomic_file(path: Path):
    """A temporary sibling of `path` and a function that moves it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"

    def commit() -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    return tmp, commit


def _zip_folder_atomically(folder: Path, path: Path) -> None:
    """`folder` zipped into `path` all at once: a reader sees the old file or the whole new one."""
    tmp, commit = _atomic_file(path)
    try:
        zip_folder(folder, tmp)
        commit()
    finally:
        tmp.unlink(missing_ok=True)


def _html_choice(name: str | None, entity_id: str, description: str = "") -> str:
    """A Label Studio choice's label: the name, the id and the start of the description, escaped."""
    text = f"<b>{html.escape(name or entity_id)}</b> ({html.escape(entity_id)})"
    return text + (f" {html.escape(description)}" if description else "")


def split_of(uid: str, fractions: tuple[float, float, float], seed: str = "") -> str:
    """Deterministic split of a mention: the SHA-256 of seed + uid, as a number in [0, 1), against
    the cumulative train/dev/test fractions. Adding mentions never moves existing ones."""
    u = int(hashlib.sha256((seed + uid).encode("utf-8")).hexdigest()[:15], 16) / float(16**15)
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def _check_fractions(fractions) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InvalidInput(f"expected three non-negative numbers summing to 1, got {fractions}", "fractions")


@dataclass(frozen=True)
class GoldMention:
    """A mention with its gold label (`mention.answer`: the entity id, None for NIL)."""

    mention: CoreMention
    source: str
    annotation_ids: tuple[int, ...]  # the current decisions that support the label


class ExportsMixin(StoreBase):
    if TYPE_CHECKING:  # from the other mixins of AnnotationStore

        def accepted_links(self) -> list[dict]: ...  # ReportsMixin

        def resolved(self) -> tuple[dict[int, Resolution], int]: ...  # ReportsMixin

        def knowledge_base(self) -> KnowledgeBase: ...  # KbMixin

        def project_progress(self, project: int | str = ...) -> dict: ...  # ProjectsMixin

        def get_project(self, project: int | str) -> ProjectRecord: ...  # ProjectsMixin

        def project_mention_uids(self, project: int | str = ...) -> set[str]: ...  # ProjectsMixin

    def _link_rows(self, image_dir: Path | None, mention_uids: set[str] | None = None) -> list[dict]:
        """`accepted_links` with the image named by a path relative to the export's folder
        (`mention_image/<sha256><ext>`, the store's content name) instead of the server's absolute
        path; with `image_dir` the image files are copied there (once per content). With
        `mention_uids`, only those mentions' decisions (one project's)."""
        rows = []
        for r in self.accepted_links():
            if mention_uids is not None and r["mention_uid"] not in mention_uids:
                continue
            row = {k: r[k] for k in LINK_COLUMNS}
            src = r.get("image")
            if src:
                name = Path(src).name
                row["image"] = f"{MENTION_IMAGE_DIR}/{name}"
                if image_dir is not None and not (image_dir / name).exists() and os.path.isfile(src):
                    image_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, image_dir / name)
            rows.append(row)
        return rows

    def export_links_jsonl(
        self, path: str | Path, *, copy_images: bool = False, mention_uids: set[str] | None = None
    ) -> int:
        """Write every current decision as one JSON object per line (text verbatim, UTF-8). Returns the count.

        `image` is a relative path, `mention_image/<sha256><ext>` (never a server path); with
        copy_images=True the files are copied into mention_image/ beside `path`, so the folder is
        self-contained (`export_links_zip` packs both)."""
        path = Path(path)
        rows = self._link_rows(path.parent / MENTION_IMAGE_DIR if copy_images else None, mention_uids)
        tmp, commit = _atomic_file(path)
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            commit()
        finally:
            tmp.unlink(missing_ok=True)
        return len(rows)

    def export_links_csv(
        self,
        path: str | Path,
        *,
        copy_images: bool = False,
        raw_cells: bool = False,
        mention_uids: set[str] | None = None,
    ) -> int:
        """The same rows as `export_links_jsonl` as CSV (pandas quoting: commas, quotes and newlines safe).

        Formula injection: a text cell starting with "=", "+", "-", "@", a tab or a carriage return
        would be a formula to a spreadsheet program, so it is written with a leading "'" (the
        spreadsheet convention for "text"). raw_cells=True writes every cell verbatim (for programs
        that read the CSV as data; open such a file as text)."""
        # Imported here: pandas is 0.6 s of `import db`'s 1.3 s (python -X importtime, this machine)
        # and only this export needs it.
        import pandas as pd

        path = Path(path)
        rows = self._link_rows(path.parent / MENTION_IMAGE_DIR if copy_images else None, mention_uids)
        if not raw_cells:
            rows = [{k: neutralize_cell(v) for k, v in r.items()} for r in rows]
        tmp, commit = _atomic_file(path)
        try:
            # CRLF rows (RFC 4180): Python's csv writer then also quotes a cell holding a bare "\r",
            # which with "\n" rows it would leave unquoted, breaking the row for every CSV reader.
            pd.DataFrame(rows, columns=LINK_COLUMNS).to_csv(tmp, index=False, encoding="utf-8", lineterminator="\r\n")
            commit()
        finally:
            tmp.unlink(missing_ok=True)
        return len(rows)

    def export_links_zip(self, path: str | Path, *, fmt: str = "jsonl", raw_cells: bool = False) -> int:
        """A self-contained zip: links.jsonl (or links.csv) and the mention images it names under
        mention_image/ (the relative paths of its `image` column). Returns the number of rows."""
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"must be 'jsonl' or 'csv', got {fmt!r}", "fmt")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="mimic-export-", dir=path.parent))
        try:
            if fmt == "jsonl":
                n = self.export_links_jsonl(work / "links.jsonl", copy_images=True)
            else:
                n = self.export_links_csv(work / "links.csv", copy_images=True, raw_cells=raw_cells)
            _zip_folder_atomically(work, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return n

    def export_project(self, project: int | str, path: str | Path, *, fmt: str = "jsonl") -> dict:
        """One project's work as a self-contained zip: guidelines.md (the Markdown the annotators
        followed), project.json (settings and progress, with each annotator's counts), links.jsonl or
        links.csv (every annotator's current decision on the project's mentions, one row each) and
        mention_image/ (the images those rows name). Written atomically. Returns project.json."""
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"must be 'jsonl' or 'csv', got {fmt!r}", "fmt")
        progress = self.project_progress(project)
        name = progress["project"]
        info = {"project": name, "progress": progress}
        if name != DEFAULT_PROJECT:
            info |= {k: v for k, v in self.get_project(name).to_dict().items() if k not in ("guidelines", "name")}
            guidelines = self.get_project(name).guidelines
        else:
            guidelines = ""
        uids = self.project_mention_uids(name)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="mimic-export-", dir=path.parent))
        try:
            if fmt == "jsonl":
                info["rows"] = self.export_links_jsonl(work / "links.jsonl", copy_images=True, mention_uids=uids)
            else:
                info["rows"] = self.export_links_csv(work / "links.csv", copy_images=True, mention_uids=uids)
            (work / "guidelines.md").write_text(guidelines, encoding="utf-8")
            (work / "project.json").write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
            _zip_folder_atomically(work, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return info

    def _latest_candidates(self, uids: list[str]) -> dict[str, tuple[str, list[dict]]]:
        """mention uid -> (model version, ranked candidates {entity_id, name, text, s}) of its
        newest prediction, for the mentions that have one."""

        def fn(s) -> dict[str, tuple[str, list[dict]]]:
            newest: dict[str, tuple[int, str]] = {}
            for i in range(0, len(uids), 500):  # bounded IN lists (SQLite's variable limit)
                for pid, uid, version in s.execute(
                    select(Prediction.id, Mention.uid, ModelVersion.name)
                    .join(Mention, Mention.id == Prediction.mention_id)
                    .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                    .where(Mention.uid.in_(uids[i : i + 500]))
                ):
                    if uid not in newest or pid > newest[uid][0]:
                        newest[uid] = (pid, version)
            by_pred: dict[int, list[dict]] = defaultdict(list)
            pids = sorted(p for p, _ in newest.values())
            for i in range(0, len(pids), 500):
                for c, name, text in s.execute(
                    select(PredictionCandidate, KbEntity.name, KbEntity.text)
                    .join(KbEntity, KbEntity.id == PredictionCandidate.entity_id)
                    .where(PredictionCandidate.prediction_id.in_(pids[i : i + 500]))
                    .order_by(PredictionCandidate.prediction_id, PredictionCandidate.rank)
                ):
                    by_pred[c.prediction_id].append({"entity_id": c.entity_id, "name": name, "text": text, "s": c.s})
            return {uid: (version, by_pred[pid]) for uid, (pid, version) in newest.items()}

        return self.read_transaction(fn)

    def label_studio_tasks(self, image_url: str = f"/data/local-files/?d={LABEL_STUDIO_DIR}/images/") -> list[dict]:
        """Every mention with a current decision as a Label Studio task (the JSON import format), for
        LABEL_STUDIO_CONFIG:

        - data: text (the sentence), image (`image_url` + the image's content name; "" without an
          image), image_file (images/<sha256><ext>, relative), mention, mention_uid, source, start,
          end, candidates (the dynamic choices: the newest prediction's ranking, any entity an
          annotator chose outside it, then NIL and AMBIGUOUS; each {"value": entity id, "html"}),
          decisions (each annotator's decision in plain form: annotator, role, decision, entity_id,
          comment, seconds_spent, created_at; in the order of `annotations`).
        - annotations: one per current decision: the mention span (labels "Mention"), the choice
          (the entity id, NIL or AMBIGUOUS), the comment when there is one; lead_time = seconds
          spent, ground_truth = the annotator is a reviewer or admin.
        - predictions: the newest prediction's top entity with its score and model_version."""
        links = self.accepted_links()
        by_mention: dict[str, list[dict]] = {}
        for r in links:
            by_mention.setdefault(r["mention_uid"], []).append(r)
        cands = self._latest_candidates(list(by_mention))
        tasks = []
        for uid, rows in by_mention.items():
            m = rows[0]
            version, ranked = cands.get(uid, (None, []))
            choices, seen = [], set()
            for c in ranked:
                if c["entity_id"] not in seen:
                    seen.add(c["entity_id"])
                    desc = (c["text"] or "")[:160]
                    choices.append({"value": c["entity_id"], "html": _html_choice(c["name"], c["entity_id"], desc)})
            for r in rows:
                if r["decision"] == "entity" and r["entity_id"] not in seen:
                    seen.add(r["entity_id"])
                    choices.append({"value": r["entity_id"], "html": _html_choice(r["entity_name"], r["entity_id"])})
            choices += [
                {"value": LABEL_STUDIO_NIL, "html": "NIL: not in the list"},
                {"value": LABEL_STUDIO_AMBIGUOUS, "html": "AMBIGUOUS: the context does not decide"},
            ]
            image_file = f"images/{Path(m['image']).name}" if m["image"] else None
            span = {"start": m["start"], "end": m["end"], "text": m["sentence"][m["start"] : m["end"]]}
            annotations = []
            for r in rows:
                value = {"entity": r["entity_id"], "nil": LABEL_STUDIO_NIL}.get(r["decision"], LABEL_STUDIO_AMBIGUOUS)
                result = [
                    {
                        "id": "mention",
                        "from_name": "mention",
                        "to_name": "text",
                        "type": "labels",
                        "value": {**span, "labels": ["Mention"]},
                    },
                    {"from_name": "entity", "to_name": "text", "type": "choices", "value": {"choices": [value]}},
                ]
                if r["comment"]:
                    result.append(
                        {
                            "from_name": "comment",
                            "to_name": "text",
                            "type": "textarea",
                            "value": {"text": [r["comment"]]},
                        }
                    )
                annotations.append(
                    {
                        "result": result,
                        "was_cancelled": False,
                        "ground_truth": resolves(r["role"]),  # the role decided in (the gold rule's)
                        "lead_time": r["seconds_spent"],
                        "created_at": r["created_at"],
                    }
                )
            predictions = []
            if ranked:
                top = ranked[0]
                predictions.append(
                    {
                        "model_version": version,
                        "score": top["s"],
                        "result": [
                            {
                                "from_name": "entity",
                                "to_name": "text",
                                "type": "choices",
                                "value": {"choices": [top["entity_id"]]},
                            }
                        ],
                    }
                )
            data = {
                "text": m["sentence"],
                "image": f"{image_url}{Path(image_file).name}" if image_file else "",
                "image_file": image_file,
                "mention": m["mention"],
                "mention_uid": uid,
                "source": m["source"],
                "start": m["start"],
                "end": m["end"],
                "candidates": choices,
                "decisions": [
                    {k: r[k] for k in ("annotator", "role", "decision", "entity_id", "comment", "seconds_spent")}
                    | {"created_at": r["created_at"]}
                    for r in rows
                ],
            }
            tasks.append({"data": data, "annotations": annotations, "predictions": predictions, "_image": m["image"]})
        return tasks

    def export_label_studio(self, path: str | Path) -> int:
        """A zip for Label Studio: label-studio/tasks.json (`label_studio_tasks`), label_config.xml,
        README.md and images/ (the mention images the tasks name). Returns the number of tasks."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="mimic-export-", dir=path.parent))
        try:
            root = work / LABEL_STUDIO_DIR
            (root / "images").mkdir(parents=True)
            tasks = self.label_studio_tasks()
            for t in tasks:
                src = t.pop("_image")
                dest = root / (t["data"]["image_file"] or "")
                if src and not dest.exists() and os.path.isfile(src):
                    shutil.copyfile(src, dest)
            (root / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
            (root / "label_config.xml").write_text(LABEL_STUDIO_CONFIG, encoding="utf-8")
            (root / "README.md").write_text(LABEL_STUDIO_README, encoding="utf-8")
            _zip_folder_atomically(work, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return len(tasks)

    def gold_mentions(self, *, nil: bool = True) -> list[GoldMention]:
        """Every mention with a gold label under `resolved` (the store's one rule), in mention order:
        entity links, and NIL golds unless nil=False. Ambiguous and tied mentions have no gold."""
        resolutions, _ = self.resolved()
        return self._gold_of(resolutions, nil=nil)

    def _gold_of(self, resolutions: dict[int, Resolution], *, nil: bool) -> list[GoldMention]:
        keep = ("entity", "nil") if nil else ("entity",)
        chosen = {mid: r for mid, r in resolutions.items() if r.decision in keep}

        def fetch(s):
            rows, ids = [], sorted(chosen)
            for i in range(0, len(ids), 500):  # bounded IN lists (SQLite's variable limit)
                rows += s.execute(
                    select(Mention, Image.ext)
                    .outerjoin(Image, Image.sha256 == Mention.image_sha256)
                    .where(Mention.id.in_(ids[i : i + 500]))
                ).all()
            return rows

        out = []
        for m, ext in sorted(self.read_transaction(fetch), key=lambda t: t[0].id):
            r = chosen[m.id]
            image = self.image_path(m.image_sha256, ext=ext) if m.image_sha256 else None
            core = CoreMention(
                id=m.uid,
                sentence=m.sentence,
                mention=m.mention,
                answer=r.entity_id,
                image=image,
                start=m.start,
                end=m.end,
            )
            out.append(GoldMention(core, m.source or "", r.annotation_ids))
        return out

    def build_training_dataset(
        self, *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: str = "", name: str = "annotations"
    ) -> tuple[Dataset, list[int], int, int]:
        """The gold entity links as a core `Dataset` (KB = the entities table, splits by `split_of`),
        plus the ids of the annotations used, the number of conflicting (tied) mentions and of NIL /
        ambiguous ones (left out: not trainable links)."""
        _check_fractions(fractions)
        resolutions, conflicts = self.resolved()
        gold = self._gold_of(resolutions, nil=False)
        splits: dict[str, list[CoreMention]] = {"train": [], "dev": [], "test": []}
        for g in gold:
            splits[split_of(g.mention.id, fractions, seed)].append(g.mention)
        used = sorted(a for g in gold for a in g.annotation_ids)
        dataset = Dataset(self.knowledge_base(), splits, name=name, stats={"conflicts": conflicts})
        return dataset, used, conflicts, len(resolutions) - len(gold)

    def export_training_set(
        self,
        out_dir: str | Path,
        *,
        layout: str = "official",
        prefix: str = "WIKIMEL",
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: str = "",
        copy_images: bool = True,
        overwrite: bool = False,
    ) -> TrainingExport:
        """Write the gold entity links as a training set that `python -m mimic train --data out_dir`
        reads directly. layout="official" (default) or "jsonl" (the project's kb.jsonl + <split>.jsonl).
        With copy_images (default) every entity and mention image is copied into the folder
        (kb_image/, mention_image/) and named relative to it; without, the official layout links the
        store's files and the JSONL layout names them by their absolute paths.

        Labels follow `resolved` (see `build_training_dataset`). The returned `annotation_ids` are what
        `create_training_run(annotation_ids=...)` should record.
        """
        if layout not in ("official", "jsonl"):
            raise InvalidInput(f"must be 'official' or 'jsonl', got {layout!r}", "layout")
        dataset, used, conflicts, not_entity = self.build_training_dataset(fractions=fractions, seed=seed, name=prefix)
        if layout == "official":
            path = write_official(dataset, out_dir, prefix=prefix, copy_images=copy_images, overwrite=overwrite)
        elif copy_images:
            path = write_jsonl_dataset_with_images(dataset, out_dir, overwrite=overwrite)
        else:
            path = write_jsonl_dataset(dataset, out_dir, overwrite=overwrite)
        return TrainingExport(
            path=str(path),
            splits={k: len(v) for k, v in dataset.splits.items()},
            entities=len(dataset.kb),
            annotation_ids=used,
            conflicts=conflicts,
            not_entity=not_entity,
        )
