"""`python -m db import-kb FILE`: the app's KB import from the command line (same loader, image
confinement and content-addressed copy), a JSON report, exit 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from db import open_store
from db.testing import png_bytes

ROOT = Path(__file__).resolve().parents[1]


def _cli(data_dir: Path, *args: str, env_data_dir: bool = False) -> tuple[int, dict | None, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DATABASE_URL", None)
    cmd = [sys.executable, "-m", "db"]
    if env_data_dir:
        env["DATA_DIR"] = str(data_dir)
    else:
        cmd += ["--data-dir", str(data_dir)]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        out = None
    return r.returncode, out, r.stderr


@pytest.mark.slow
def test_jsonl_with_images_and_bad_rows(tmp_path):
    src = tmp_path / "kb"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes((10, 20, 30)))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes((1, 2, 3)))
    lines = [
        json.dumps({"id": "Q1", "name": "Alpha", "aliases": ["A"], "text": "first", "images": ["a.png"]}),
        json.dumps({"id": "Q2", "name": "Beta", "images": [str(secret)]}),  # outside the KB folder
        '{"id": "Q3", "name": "Gamma\\ud800"}',  # lone surrogate
        '{"id": "Q4", "name": ' + "[" * 100_000 + "]" * 100_000 + "}",  # deep JSON
        json.dumps({"id": "Q" * 300, "name": "Long id"}),  # over the store's id limit
        "{broken",
        json.dumps({"id": "Q7", "name": "Eta", "images": ["missing.png"]}),
    ]
    (src / "kb.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    data = tmp_path / "data"
    code, rep, err = _cli(data, "import-kb", str(src / "kb.jsonl"))
    assert code == 1, err
    assert rep is not None
    assert (rep["created"], rep["updated"], rep["unchanged"], rep["imported"]) == (2, 0, 0, 2)
    rows = {r["row"]: r["reason"] for r in rep["rejected"]}
    assert rep["rejected_rows"] == len(rep["rejected"]) == 5
    assert "outside the KB folder" in rows["line 2"] and "lone surrogate" in rows["line 3"]
    assert "nested too deeply" in rows["line 4"] and "invalid JSON" in rows["line 6"]
    assert any("limit is 200" in r["reason"] and r["id"].startswith("QQQ") for r in rep["rejected"])
    assert rep["missing_images"] and rep["missing_images"][0]["id"] == "Q7"

    s = open_store(data)
    try:
        q1 = s.get_entity("Q1")
        assert q1.aliases == ["A"] and q1.text == "first" and len(q1.images) == 1
        stored = s.resolve_data_path(q1.images[0])
        assert stored is not None and Path(stored).read_bytes() == (src / "a.png").read_bytes()
        assert str(data) in str(stored)  # a content-addressed copy inside DATA_DIR, not the source
        assert s.get_entity("Q7").images == []
        assert {e.id for e in s.knowledge_base()} == {"Q1", "Q7"}
    finally:
        s.close()

    # the same file again: nothing changes
    code, rep, _ = _cli(data, "import-kb", str(src / "kb.jsonl"))
    assert code == 1 and rep is not None and (rep["created"], rep["unchanged"]) == (0, 2)


@pytest.mark.slow
def test_official_folder_csv_author_and_exit_codes(tmp_path):
    off = tmp_path / "off"
    (off / "kb_image").mkdir(parents=True)
    (off / "kb_image" / "q1.png").write_bytes(png_bytes((50, 60, 70)))
    (off / "kb_entity.json").write_text(
        json.dumps([{"id": 0, "entity_name": "Alpha", "image_list": ["q1.png"]}, {"id": 1, "entity_name": "Beta"}])
    )
    (off / "qid2id.json").write_text(json.dumps({"Q1": 0, "Q2": 1}))
    data = tmp_path / "data"
    s = open_store(data)
    s.add_annotator("rita", role="reviewer")
    s.close()

    code, rep, err = _cli(data, "import-kb", str(off), "--author", "rita", env_data_dir=True)
    assert code == 0, err
    assert rep is not None and rep["format"] == "official" and rep["created"] == 2 and rep["rejected"] == []

    csv_file = tmp_path / "kb.csv"
    csv_file.write_bytes(b"\xef\xbb\xbfid,name,aliases\r\nQ1,Alpha prime,A|AP\r\nQ2,Beta,\r\n")
    code, rep, _ = _cli(data, "import-kb", str(csv_file), "--format", "csv", "--author", "rita")
    assert code == 0 and rep is not None and (rep["updated"], rep["unchanged"]) == (1, 1)
    s = open_store(data)
    try:
        q1 = s.get_entity("Q1")
        assert q1.name == "Alpha prime" and q1.version == 2 and q1.aliases == ["A", "AP"]
        assert q1.images == []  # an import replaces the entity's fields: this row names no image
    finally:
        s.close()

    # nothing readable: exit 2 and a reason, nothing written
    for name, content in [("bin.csv", b"\x89PNG\r\n\x1a\n\x00"), ("empty.jsonl", b""), ("h.csv", b"a,b\n1,2\n")]:
        (tmp_path / name).write_bytes(content)
        code, rep, _ = _cli(data, "import-kb", str(tmp_path / name))
        assert code == 2 and rep is not None and rep["imported"] == 0 and "cannot import" in rep["error"]
    code, rep, _ = _cli(data, "import-kb", str(tmp_path / "nope.jsonl"))
    assert code == 2 and rep is not None and "not found" in rep["error"]
    code, rep, err = _cli(data, "import-kb", str(csv_file), "--author", "nobody")
    assert code == 2 and "no annotator named 'nobody'" in err
