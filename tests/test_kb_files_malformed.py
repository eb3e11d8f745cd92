"""Malformed KB files give the rejection report (or a whole-file DataFormatError), never a raw error;
the good rows of the same file still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mimic.data import kb_files
from mimic.data.kb_files import FIELD_MAX, load_kb, read_text_file
from mimic.data.schema import DataFormatError

GOOD = '{"id": "Q1", "name": "Alpha"}\n'
DEEP = "[" * 100_000 + "]" * 100_000


def _load(path: Path, data: bytes):
    path.write_bytes(data)
    kb, rep = load_kb(path)
    json.dumps(rep.to_dict())  # the report is always serialisable (no surrogates, no deep ids)
    return kb, rep


def _reasons(rep) -> dict[str, str]:
    return {r["row"]: r["reason"] for r in rep.rejected}


@pytest.mark.parametrize(
    "name,data",
    [
        ("bom.jsonl", b"\xef\xbb\xbf" + GOOD.encode()),
        ("bom.csv", b"\xef\xbb\xbfid,name\r\nQ1,Alpha\r\n"),
        ("u16.jsonl", GOOD.encode("utf-16")),  # BOM + UTF-16-LE
        ("u16be.csv", "\ufeffid,name\nQ1,Alpha\n".encode("utf-16-be")),
        ("u32.jsonl", GOOD.encode("utf-32")),
    ],
)
def test_byte_order_marks_are_accepted(tmp_path, name, data):
    kb, rep = _load(tmp_path / name, data)
    assert [e.id for e in kb] == ["Q1"] and kb.entities[0].name == "Alpha"
    assert rep.rejected == []


@pytest.mark.parametrize(
    "name,data,reason",
    [
        ("empty.jsonl", b"", "empty"),
        ("blank.csv", b"\n \r\n", "empty"),
        ("png.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
        ("zip.csv", b"PK\x03\x04\x14\x00\x00\x00", "ZIP archive"),
        ("nul.jsonl", GOOD.encode() + b"\x00\x01\x02", "binary file"),
        ("noise.csv", bytes(range(0x80, 0x100)) * 40, "binary file"),
        ("bad16.jsonl", b"\xff\xfe" + b"{\x00\x00\xd8", "save it as UTF-8"),  # lone UTF-16 surrogate
        ("hdr.csv", b"ident,title\nQ1,Alpha\n", "must contain 'id' and 'name'"),
        ("kb_entity.json", b'{"id": 1}', "expected a JSON list"),
        ("kb_entity.json", b'[{"id": 1, "entity_name": "A"}', "invalid JSON"),
    ],
)
def test_whole_file_problems_are_a_clear_reason(tmp_path, name, data, reason):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataFormatError, match=reason):
        load_kb(tmp_path / name)


def test_jsonl_bad_rows_are_rejected_by_line(tmp_path):
    lines = [
        GOOD.encode(),
        b'{"id": "Q2", "name": "B\xe9ta"}',  # Latin-1 byte
        b'{"id": "Q3", "name": "Gamma\\ud800"}',  # lone surrogate escape
        b'{"id": "Q4", "name": %s}' % DEEP.encode(),  # RecursionError in json
        b'{"id": "Q5", "name": "nul\\u0000"}',
        b'{"id": "Q6", "name": "Delta", "text": "%s"}' % (b"x" * (FIELD_MAX + 1)),
        b'{"id": %s, "name": "E"}' % DEEP.encode(),
        b"{not json",
        b'{"id": "Q9", "name": "Omega"}',
    ]
    data = b"\n".join(x.rstrip(b"\n") for x in lines) + b"\n"
    kb, rep = _load(tmp_path / "kb.jsonl", data)
    assert [e.id for e in kb] == ["Q1", "Q9"]
    why = _reasons(rep)
    assert set(why) == {f"line {n}" for n in range(2, 9)}
    assert "not UTF-8 (0xE9)" in why["line 2"]
    assert "lone surrogate (U+D800" in why["line 3"] and "'name'" in why["line 3"]
    assert "nested too deeply" in why["line 4"] and "nested too deeply" in why["line 7"]
    assert "NUL" in why["line 5"]
    assert f"limit is {FIELD_MAX:,}" in why["line 6"]
    assert "invalid JSON" in why["line 8"]
    assert {r["id"] for r in rep.rejected} >= {"Q3", "Q5", "Q6"}


def test_csv_bad_rows_are_rejected_by_line(tmp_path):
    data = (
        b"id,name,text\r\n"
        b"Q1,Alpha,first\r\n"
        b'Q2,"Multi\r\nline",second\r\n'  # a quoted newline: one record over lines 3-4
        b"Q3,B\xe9ta,x\r\n"
        b"Q4,Long," + b"y" * 200_000 + b"\r\n"  # over the csv module's 131,072 default: accepted
        b"Q5,Huge," + b"z" * (FIELD_MAX + 1) + b"\r\n"
        b",NoId,x\r\n"
        b"Q7,,x\r\n"
        b"Q8,Omega,last\r\n"
    )
    kb, rep = _load(tmp_path / "kb.csv", data)
    assert [e.id for e in kb] == ["Q1", "Q2", "Q4", "Q8"]
    assert kb.entities[1].name == "Multi\r\nline" and len(kb.entities[2].text) == 200_000
    why = _reasons(rep)
    assert "not UTF-8" in why["line 5"] and "'name'" in why["line 5"]
    assert f"limit is {FIELD_MAX:,}" in why["line 7"]
    assert why["line 8"] == "missing id" and why["line 9"] == "empty name"


def test_csv_field_over_the_parser_cap_rejects_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(kb_files, "CSV_FIELD_LIMIT", 1000)
    monkeypatch.setattr(kb_files, "FIELD_MAX", 500)
    data = b"id,name,text\nQ1,Alpha,a\nQ2,B," + b"y" * 5000 + b"\nQ3,C,c\n"
    kb, rep = _load(tmp_path / "kb.csv", data)
    assert [e.id for e in kb] == ["Q1", "Q3"]
    assert rep.rejected[0]["row"] == "line 3" and "field larger than field limit" in rep.rejected[0]["reason"]


def test_official_deep_or_broken_record_is_rejected_alone(tmp_path):
    (tmp_path / "kb_entity.json").write_text(
        '[{"id": 0, "entity_name": "A"},\n{"id": 1, "entity_name": ' + DEEP + "},\n"
        '{"id": 2, "entity_name": "C", "desc": "\\ud834"},\n'
        '{"id": 3, "entity_name": oops},\n'
        '{"id": 4, "entity_name": "E"}]'
    )
    (tmp_path / "qid2id.json").write_text(json.dumps({f"Q{i}": i for i in range(5)}))
    kb, rep = load_kb(tmp_path)
    assert [e.id for e in kb] == ["Q0", "Q4"]
    why = _reasons(rep)
    assert "nested too deeply" in why["record 1 (line 2)"]
    assert "lone surrogate" in why["record 2 (line 3)"] and "'desc'" in why["record 2 (line 3)"]
    assert "invalid JSON" in why["record 3 (line 4)"]


def test_official_bad_qid2id_is_a_clear_reason(tmp_path):
    (tmp_path / "kb_entity.json").write_text('[{"id": 0, "entity_name": "A"}]')
    (tmp_path / "qid2id.json").write_bytes(b"")
    with pytest.raises(DataFormatError, match="qid2id.json: the file is empty"):
        load_kb(tmp_path)


def test_dataset_folder_with_kb_jsonl(tmp_path):
    (tmp_path / "kb.jsonl").write_text(GOOD)
    kb, rep = load_kb(tmp_path)
    assert rep.format == "jsonl" and [e.id for e in kb] == ["Q1"]


def test_read_text_file_keeps_bad_bytes_as_surrogates(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"ok\n\xff\n")
    assert read_text_file(tmp_path / "f.txt") == "ok\n\udcff\n"
