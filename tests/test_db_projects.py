"""Annotation projects in the store: create / edit / archive, corpus import in every format (with
an images zip and a per-row rejection report), per-project queue and overlap, progress, export with
the guidelines, pre-annotation, journal rebuild, and the command line."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from PIL import Image

from db import Conflict, InvalidInput, NotFound, open_store
from db.__main__ import main as db_main


def _png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    for q, name in (("Q1", "Paris"), ("Q2", "Paris Hilton"), ("Q3", "Berlin")):
        s.upsert_entity(q, name)
    for name, role in (("ana", "annotator"), ("bob", "annotator"), ("cid", "annotator"), ("rev", "reviewer")):
        s.add_annotator(name, role)
    yield s
    s.close()


def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_create_edit_archive_and_list(store):
    p = store.create_project("Pilot", guidelines="# Rules\nLink people.", annotators_per_mention=2, created_by="rev")
    assert (p.name, p.annotators_per_mention, p.kb, p.archived, p.created_by) == ("Pilot", 2, "default", False, "rev")
    with pytest.raises(Conflict, match="already exists"):
        store.create_project("Pilot")
    with pytest.raises(InvalidInput, match="built-in project"):
        store.create_project("default")
    with pytest.raises(InvalidInput, match="annotators_per_mention"):
        store.create_project("Other", annotators_per_mention=0)
    with pytest.raises(NotFound, match="created_by"):
        store.create_project("Other", created_by="nobody")
    q = store.update_project("Pilot", guidelines="New rules", annotators_per_mention=3)
    assert (q.guidelines, q.annotators_per_mention) == ("New rules", 3)
    assert store.get_project(p.id).guidelines == "New rules"  # by id too
    store.archive_project("Pilot")
    assert store.get_project("Pilot").archived
    assert [x.name for x in store.list_projects(include_archived=False)] == []
    assert [x.name for x in store.list_projects()] == ["Pilot"]
    with pytest.raises(NotFound, match="no project"):
        store.get_project("nope")


def test_jsonl_import_into_a_project_reports_each_bad_row(store, tmp_path):
    store.create_project("P")
    path = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "a", "sentence": "Paris is big.", "mention": "Paris"},
            {"id": "b", "sentence": "Berlin too.", "mention": "Rome"},  # not in the sentence
            "{broken",
            {
                "id": "d",
                "sentence": "Paris again.",
                "mention": "Paris",
                "candidates": [["Q9", 1.0]],
                "model_version": "m",
            },
            {
                "id": "e",
                "sentence": "Berlin wall.",
                "mention": "Berlin",
                "candidates": [["Q3", 0.9], ["Q1", 0.1]],
                "model_version": "m",
            },
        ],
    )
    with pytest.raises(InvalidInput, match="line 2"):
        store.import_mentions(path, project="P")  # the first bad row, nothing written
    assert store.project_progress("P")["mentions"] == 0
    r = store.import_mentions(path, project="P", on_error="skip")
    assert (r.created, r.predictions, r.project, r.format, r.rows) == (2, 1, "P", "jsonl", 5)
    rows = {x["row"]: x["problem"] for x in r.rejected}
    assert set(rows) == {"line 2", "line 3", "line 4"}
    assert "does not occur" in rows["line 2"] and "not valid JSON" in rows["line 3"] and "Q9" in rows["line 4"]
    assert store.get_mention("P/a").sentence == "Paris is big."  # uids carry the project
    again = store.import_mentions(path, project="P", on_error="skip")
    assert (again.created, again.existing) == (0, 2)
    # the same corpus may go into a second project; the default project is untouched
    store.create_project("Q")
    assert store.import_mentions(path, project="Q", on_error="skip").created == 2
    assert store.project_progress()["mentions"] == 0
    assert store.project_progress("Q")["mentions"] == 2


def test_csv_import_with_rejected_rows(store, tmp_path):
    store.create_project("P")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["uid", "sentence", "mention", "start", "end", "candidates", "model_version"])
    w.writerow(["c1", "Paris in spring.", "Paris", "0", "5", json.dumps([["Q1", 0.7], ["Q2", 0.2]]), "m1"])
    w.writerow(["c2", "Berlin", "Berlin", "x", "", "", ""])  # start not an integer
    w.writerow(["c3", "", "Paris", "", "", "", ""])  # empty sentence
    w.writerow(["c4", "Paris", "Paris", "", "", "[oops", ""])  # candidates not JSON
    w.writerow(["c5", "To Berlin.", "Berlin", "", "", "", ""])
    path = tmp_path / "c.csv"
    path.write_text(buf.getvalue(), encoding="utf-8")
    r = store.import_mentions(path, project="P", on_error="skip")
    assert (r.created, r.predictions, r.format) == (2, 1, "csv")
    problems = {x["row"]: x["problem"] for x in r.rejected}
    assert set(problems) == {"line 3", "line 4", "line 5"}
    assert "integer" in problems["line 3"] and "empty" in problems["line 4"] and "JSON" in problems["line 5"]
    assert store.get_mention("P/c5").start == 3


def _zip(path, entries: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_official_layout_with_an_images_zip(store, tmp_path):
    store.create_project("Off")
    split = [
        {"id": "o1", "sentence": "Paris at night.", "mentions": "Paris", "imgPath": "o1.png", "answer": "Q1"},
        {"id": "o2", "sentence": "Berlin%20city", "mentions": "Berlin", "imgPath": "sub/o2.png", "answer": "Q3"},
        {"id": "o3", "sentence": "Paris by day.", "mentions": "Paris", "imgPath": "missing.png", "answer": "Q1"},
        {"id": "o4", "sentence": "No image here", "mentions": "image", "answer": "nil"},
        "not an object",
    ]
    f = tmp_path / "WIKIMEL_test.json"
    f.write_text(json.dumps(split), encoding="utf-8")
    z = _zip(
        tmp_path / "img.zip",
        {
            "o1.png": _png(),
            "sub/o2.png": _png((0, 0, 255)),
            "../evil.png": _png(),  # path escape: refused
            "notes.txt": b"hello",  # not an image
            "bad.png": b"not really a png",  # extracted, but no row names it
        },
    )
    r = store.import_mentions(f, project="Off", images_zip=z, on_error="skip")
    assert (r.created, r.format, r.images_in_zip) == (3, "official", 3)  # bad.png: unpacked, never used
    skipped = {x["name"]: x["problem"] for x in r.zip_skipped}
    assert "'..'" in skipped["../evil.png"] and "not an image" in skipped["notes.txt"]
    problems = {x["row"]: x["problem"] for x in r.rejected}
    assert any("o3" in k and "not in the images zip" in v for k, v in problems.items())
    assert any("record 4" in k and "JSON object" in v for k, v in problems.items())
    m1 = store.get_mention("Off/o1")
    assert m1.image_sha256 and m1.image_path and m1.image_path.startswith(str(store.settings.images_dir))
    assert store.get_mention("Off/o4").image_sha256 is None
    assert not list(store.settings.data_dir.glob(".import-images-*"))  # the unpacked zip is gone


def test_images_outside_the_corpus_folder_are_refused(store, tmp_path):
    store.create_project("P")
    (tmp_path / "secret.png").write_bytes(_png())
    sub = tmp_path / "corpus"
    sub.mkdir()
    path = _jsonl(sub / "c.jsonl", [{"id": "x", "sentence": "Paris.", "mention": "Paris", "image": "../secret.png"}])
    r = store.import_mentions(path, project="P", on_error="skip")
    assert r.created == 0 and "outside" in r.rejected[0]["problem"]


def test_melbench_raw_json(store, tmp_path):
    store.create_project("MB")
    raw = {
        "46351": {
            "id": "46351",
            "sentence": "Powers with Noel Harrison in The Girl from U.N.C.L.E.",
            "mentions": ["Noel Harrison", "Powers"],
            "entities": ["Noel Harrison", "Stefanie Powers"],
            "answer": ["Q532915", "Q256474"],
        },
        "7": {"id": "7", "sentence": "Berlin at dawn", "mentions": "Berlin", "answer": "Q3"},
        "8": {"id": "8", "sentence": "Oslo", "mentions": []},
        "9": {"id": "9", "sentence": "Rome", "mentions": ["Madrid"]},
    }
    f = tmp_path / "Wikidata-MEL.json"
    f.write_text(json.dumps(raw), encoding="utf-8")
    r = store.import_mentions(f, project="MB", on_error="skip")
    assert (r.created, r.format) == (3, "melbench")
    assert store.get_mention("MB/46351-1").mention == "Powers"
    problems = {x["row"]: x["problem"] for x in r.rejected}
    assert set(problems) == {"sample 8", "sample 9"}


def _mentions(store, project, n, prefix="m"):
    rows = [{"id": f"{prefix}{i}", "sentence": f"Paris number {i}.", "mention": "Paris"} for i in range(n)]
    return store.import_mentions(rows, project=project)


def test_per_project_queue_and_overlap(store):
    store.create_project("Two", annotators_per_mention=2)
    _mentions(store, "Two", 2)
    store.add_mention("Berlin default.", "Berlin", uid="d1")  # the default project (overlap 1)
    assert store.queue_size("ana", project="Two") == 2
    assert store.queue_size("ana", project="default") == 1
    assert store.queue_size("ana") == 3
    a = store.next_item("ana", project="Two")
    b = store.next_item("bob", project="Two")
    assert a.mention.uid == b.mention.uid  # two annotators per mention in this project
    c = store.next_item("cid", project="Two")
    assert c.mention.uid != a.mention.uid  # both slots of the first mention are taken
    store.submit("ana", a.mention.id, "entity", "Q1")
    store.submit("bob", b.mention.id, "nil")
    assert store.queue_size("cid", project="Two") == 1  # the first one is complete
    # a lease held in one project's queue is not handed out from another's
    d = store.next_item("cid", project="default")
    assert d.mention.uid == "d1"
    assert store.next_item("cid", project="Two").mention.uid == c.mention.uid
    p = store.project_progress("Two")
    assert (p["mentions"], p["complete"], p["pending"], p["annotators_per_mention"]) == (2, 1, 1, 2)
    assert {x["annotator"]: x["decided"] for x in p["annotators"]} == {"ana": 1, "bob": 1}
    assert store.project_progress()["mentions"] == 1
    # an archived project leaves the all-projects queue, not its own
    assert store.queue_size("ana") == 1  # Two's second mention (cid holds one of its two slots)
    store.archive_project("Two")
    assert store.queue_size("ana") == 0 and store.queue_size("ana", project="Two") == 1
    with pytest.raises(Conflict, match="archived"):
        _mentions(store, "Two", 1, prefix="late")


def test_preannotate_stores_predictions_in_chunks_with_progress_and_cancel(store):
    store.create_project("P")
    _mentions(store, "P", 7)
    calls, seen = [], []

    def link(ms):
        calls.append(len(ms))
        return [ValueError("bad one") if m.uid == "P/m3" else [{"entity_id": "Q1", "S": 0.9}, ["Q2", 0.4]] for m in ms]

    rep = store.preannotate("P", link, "model-x", chunk=3, progress=lambda f, msg: seen.append(f))
    assert calls == [3, 3, 1] and rep["predicted"] == 6 and rep["mentions"] == 7
    assert rep["failed"] == [{"mention": "P/m3", "problem": "bad one"}]
    assert seen[-1] == pytest.approx(1.0) and store.project_progress("P")["predicted"] == 6
    assert store.predictions("P/m0")[0].model_version == "model-x"
    assert store.get_mention("P/m0").margin == pytest.approx(0.5)
    # a second run finds only the mention that failed; a cancel stops before the next chunk
    rep2 = store.preannotate("P", link, "model-x", cancel=lambda: True)
    assert rep2["cancelled"] and rep2["predicted"] == 0 and rep2["mentions"] == 1


def test_export_holds_guidelines_decisions_per_annotator_and_images(store, tmp_path):
    store.create_project("E", guidelines="# Guide\nPick the city.", annotators_per_mention=2)
    z = _zip(tmp_path / "i.zip", {"a.png": _png()})
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "sentence": "Paris!", "mention": "Paris", "image": "a.png"}])
    store.import_mentions(path, project="E", images_zip=z)
    store.add_mention("Elsewhere Paris", "Paris", uid="other")
    store.submit("ana", "E/a", "entity", "Q1")
    store.submit("bob", "E/a", "entity", "Q2")
    store.submit("ana", "other", "nil")  # the default project: not in E's export
    info = store.export_project("E", tmp_path / "out" / "e.zip")
    assert info["rows"] == 2 and info["progress"]["complete"] == 1
    with zipfile.ZipFile(tmp_path / "out" / "e.zip") as zf:
        names = set(zf.namelist())
        assert zf.read("guidelines.md").decode() == "# Guide\nPick the city."
        rows = [json.loads(x) for x in zf.read("links.jsonl").decode().splitlines()]
        meta = json.loads(zf.read("project.json"))
    assert {(r["annotator"], r["entity_id"]) for r in rows} == {("ana", "Q1"), ("bob", "Q2")}
    assert rows[0]["image"] in names and meta["annotators_per_mention"] == 2
    csv_info = store.export_project("E", tmp_path / "out" / "e_csv.zip", fmt="csv")
    assert csv_info["rows"] == 2


def test_projects_and_mention_projects_survive_a_journal_rebuild(store, tmp_path):
    store.create_project("J", guidelines="v1", annotators_per_mention=2, created_by="rev")
    _mentions(store, "J", 2)
    store.update_project("J", guidelines="v2")
    store.create_project("K")
    store.archive_project("K")
    store.submit("ana", "J/m1", "entity", "Q1")
    journal = store.settings.journal_path
    fresh = open_store(tmp_path / "rebuilt")
    try:
        fresh.reconcile(journal)
        j = fresh.get_project("J")
        assert (j.guidelines, j.annotators_per_mention, j.created_by) == ("v2", 2, "rev")
        assert fresh.get_project("K").archived
        assert fresh.project_progress("J")["mentions"] == 1  # the annotated mention, in its project
        assert fresh.project_progress("J")["annotators"][0]["annotator"] == "ana"
        # replaying again changes nothing
        assert fresh.reconcile(journal).events_reapplied == 0
    finally:
        fresh.close()
    # a lost journal is written again from the database, projects included
    store.close()
    journal.unlink()
    again = open_store(store.settings.data_dir)
    try:
        events = [json.loads(x) for x in journal.read_text().splitlines()]
        assert {e["name"] for e in events if e.get("type") == "project"} == {"J", "K"}
        ann = next(e for e in events if e.get("type") == "annotation")
        assert ann["mention"]["project"] == "J"
    finally:
        again.close()


def test_command_line_create_project_and_import(tmp_path, capsys):
    data = tmp_path / "cli"
    guide = tmp_path / "g.md"
    guide.write_text("# Be careful", encoding="utf-8")
    assert (
        db_main(
            [
                "--data-dir",
                str(data),
                "create-project",
                "C",
                "--guidelines",
                str(guide),
                "--annotators-per-mention",
                "2",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["guidelines"] == "# Be careful"
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "sentence": "Paris.", "mention": "Paris"}, "{bad"])
    assert db_main(["--data-dir", str(data), "import-mentions", str(path), "--project", "C", "--skip-errors"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["created"] == 1 and out["rejected"][0]["row"] == "line 2"
    assert db_main(["--data-dir", str(data), "projects"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["projects"][0]["progress"]["mentions"] == 1
    assert db_main(["--data-dir", str(data), "import-mentions", str(path), "--project", "nope"]) == 2


def _held_midway(store, start_job, hold_when):
    """Run `start_job(hook)` in a thread; `hook(fraction)` holds the job when `hold_when(fraction)`
    until an annotation has been submitted from this thread. -> (seconds that submit took, thread)."""
    import threading
    import time

    reached, release = threading.Event(), threading.Event()

    def hook(fraction, *_):
        if hold_when(fraction) and not reached.is_set():
            reached.set()
            release.wait(30)

    t = threading.Thread(target=start_job, args=(hook,))
    t.start()
    assert reached.wait(30), "the job never reached the point to hold it at"
    t0 = time.perf_counter()
    store.submit("ana", "d1", "nil")  # would wait for the job if it held the write lock here
    took = time.perf_counter() - t0
    assert t.is_alive()  # the job is still running: it is between two transactions
    release.set()
    t.join(30)
    return took


def test_annotations_go_in_between_the_batches_of_an_import_and_of_pre_annotation(store):
    store.create_project("Big")
    store.add_mention("Berlin default.", "Berlin", uid="d1")
    rows = [{"id": f"b{i}", "sentence": f"Paris number {i}.", "mention": "Paris"} for i in range(600)]
    took = _held_midway(
        store,
        lambda hook: store.import_mentions(rows, project="Big", batch_size=250, progress=lambda f, m: hook(f)),
        lambda f: 0.5 < f < 1.0,  # after the first batch of 250 was written, before the last
    )
    assert took < 5 and store.get_annotation(store.history("d1")[0].id).decision == "nil"
    assert store.project_progress("Big")["mentions"] == 600

    def run(hook):
        def link(ms):
            hook(0.5)  # the model runs outside any transaction: held here, mid-way
            return [[["Q1", 0.8], ["Q2", 0.1]] for _ in ms]

        store.preannotate("Big", link, "m", chunk=200)

    took = _held_midway(store, run, lambda f: True)
    assert took < 5 and store.project_progress("Big")["predicted"] == 600


def test_official_release_folder_finds_images_in_mention_image(store, tmp_path):
    store.create_project("Folder")
    root = tmp_path / "release"
    (root / "mention_image").mkdir(parents=True)
    (root / "mention_image" / "r1.jpg").write_bytes(_png())  # the release names .jpg files holding any format
    split = [{"id": "r1", "sentence": "Paris skyline.", "mentions": "Paris", "imgPath": "r1.png", "answer": "Q1"}]
    (root / "WIKIMEL_train.json").write_text(json.dumps(split), encoding="utf-8")
    (root / "WIKIMEL_dev.json").write_text(json.dumps([{"id": "r2", "sentence": "Berlin", "mentions": "Berlin"}]))
    (root / "kb_entity.json").write_text("[]", encoding="utf-8")  # not a split file: not read as mentions
    r = store.import_mentions(root, project="Folder", on_error="skip")
    assert (r.created, r.format, r.rejected) == (2, "official", [])
    assert store.get_mention("Folder/r1").image_sha256  # found by the release's alternative name


def test_zip_limits_and_symlinks(tmp_path):
    s = open_store(tmp_path / "small", max_image_bytes=200)
    try:
        s.create_project("Z")
        big = _png() + b"\0" * 300  # over the 200-byte image limit
        z = tmp_path / "z.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("ok.png", _png())
            zf.writestr("big.png", big)
            link = zipfile.ZipInfo("link.png")
            link.external_attr = 0o120777 << 16  # a symbolic link entry
            zf.writestr(link, "/etc/passwd")
        path = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "sentence": "Paris.", "mention": "Paris", "image": "ok.png"}])
        r = s.import_mentions(path, project="Z", images_zip=z)
        skipped = {x["name"]: x["problem"] for x in r.zip_skipped}
        assert (
            r.created == 1 and "over the image limit" in skipped["big.png"] and "symbolic link" in skipped["link.png"]
        )
        with pytest.raises(InvalidInput, match="inflates past"):
            s.import_mentions(path, project="Z", images_zip=z, max_zip_bytes=50)
    finally:
        s.close()
