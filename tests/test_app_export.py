"""The app's export handler (`app.tabs.models.export`): temporary folders are removed once handed
over, the training export's unzipped folder at once; formats with images are self-contained zips."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.tabs import models as models_tab
from db import open_store
from db.testing import png_bytes


@pytest.fixture
def ctx(tmp_path):
    s = open_store(tmp_path / "data")
    s.upsert_entity("Q1", "Paris", "the capital")
    s.add_annotator("ana")
    img = tmp_path / "m.png"
    img.write_bytes(png_bytes((1, 2, 3)))
    for i in range(6):
        m = s.add_mention(f"=cmd {i} in Paris", "Paris", image=str(img) if i % 2 else None, uid=f"u{i}")
        s.submit("ana", m.id, entity_id="Q1")
    yield SimpleNamespace(store=s, require=lambda perm, user: user or "ana")
    s.close()


def test_export_folders_are_removed_after_handover(ctx, monkeypatch):
    monkeypatch.setattr(models_tab, "_export_dirs", [])
    first = Path(models_tab.export(ctx, "training", "ana"))
    assert first.is_file() and first.suffix == ".zip"
    # the training layout folder was zipped and removed: only the zip is left
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    with zipfile.ZipFile(first) as z:
        names = z.namelist()
    assert any("/kb_entity.json" in n for n in names) and any("/mention_image/" in n for n in names)

    monkeypatch.setattr(models_tab, "EXPORT_KEEP_SECONDS", 3600.0)
    second = Path(models_tab.export(ctx, "jsonl", "ana"))
    assert first.exists() and second.exists()  # too recent: gradio may still be copying it

    monkeypatch.setattr(models_tab, "EXPORT_KEEP_SECONDS", 0.0)
    third = Path(models_tab.export(ctx, "csv", "ana"))
    assert not first.parent.exists() and not second.parent.exists() and third.exists()
    assert "'=cmd" in third.read_text(encoding="utf-8")  # the app writes the safe CSV
    models_tab._clean_exports(everything=True)  # what runs at exit
    assert not third.parent.exists() and models_tab._export_dirs == []


def test_zip_formats_carry_their_images(ctx, monkeypatch):
    monkeypatch.setattr(models_tab, "_export_dirs", [])
    p = Path(models_tab.export(ctx, "jsonl.zip", "ana"))
    with zipfile.ZipFile(p) as z:
        names = set(z.namelist())
        rows = [json.loads(x) for x in z.read("links.jsonl").decode().splitlines()]
    images = {r["image"] for r in rows if r["image"]}
    assert len(images) == 1 and images <= names
    plain = Path(models_tab.export(ctx, "jsonl", "ana")).read_text()
    assert str(ctx.store.settings.data_dir) not in plain and '"mention_image/' in plain
    ls = Path(models_tab.export(ctx, "label-studio", "ana"))
    with zipfile.ZipFile(ls) as z:
        names = set(z.namelist())
        tasks = json.loads(z.read("label-studio/tasks.json"))
    assert len(tasks) == 6 and {"label-studio/label_config.xml", "label-studio/README.md"} <= names
    images = {f"label-studio/{t['data']['image_file']}" for t in tasks if t["data"]["image_file"]}
    assert len(images) == 1 and images <= names
    assert str(ctx.store.settings.data_dir) not in json.dumps(tasks)
    assert set(models_tab.EXPORT_FORMATS) == set(models_tab.EXPORT_LABELS)
    models_tab._clean_exports(everything=True)


def test_exports_run_outside_the_write_queue_and_can_be_cancelled(studio):
    """An export only reads the store, so it runs in its own queue: an annotation (the "db" write
    queue, one at a time) is never held behind it (issue 18 point 3); each tab's Cancel export
    button cancels it."""
    demo = studio.demo
    ids = {b.elem_id: b._id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    deps = demo.config["dependencies"]
    fns = demo.fns

    def events_of(elem_id: str) -> list[int]:
        return [i for i, f in fns.items() if (ids[elem_id], "click") in [tuple(t) for t in f.targets]]

    assert any(f.concurrency_id == "db" for f in fns.values())  # the write queue exists
    for button, cancel in (("models_export", "models_export_cancel"), ("projects_export", "projects_export_cancel")):
        (export,) = events_of(button)
        assert fns[export].concurrency_id == "export" and fns[export].concurrency_limit == 2
        assert any(export in d["cancels"] for d in deps if d["id"] in events_of(cancel))
