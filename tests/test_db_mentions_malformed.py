"""Malformed corpus (mention) files: a reason per line or for the whole file, never a raw error."""

from __future__ import annotations

import json

import pytest

from db import InvalidInput, open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "data")
    yield s
    s.close()


def _rec(uid: str) -> bytes:
    return json.dumps({"id": uid, "sentence": f"Paris {uid}.", "mention": "Paris"}).encode()


def test_bad_lines_are_reported_and_good_ones_imported(store, tmp_path):
    lines = [
        _rec("m1"),
        b'{"id": "m2", "sentence": "Caf\xe9 Paris.", "mention": "Paris"}',  # not UTF-8
        b'{"id": "m3", "sentence": "Paris \\ud800.", "mention": "Paris"}',  # lone surrogate
        b'{"id": "m4", "sentence": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep JSON
        b"{nope",
        _rec("m6"),
    ]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # UTF-8 with a byte-order mark
    with pytest.raises(InvalidInput, match="line 2"):
        store.import_mentions(path)
    r = store.import_mentions(path, on_error="skip")
    assert r.created == 2
    errs = "\n".join(r.errors)
    assert len(r.errors) == 4
    assert "line 2" in errs and "not UTF-8 (0xE9" in errs
    assert "line 3" in errs and "lone surrogate" in errs
    assert "line 4" in errs and "nested too deeply" in errs
    assert "line 5" in errs and "not valid JSON" in errs


def test_utf16_file_is_read(store, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes((_rec("m1").decode() + "\n" + _rec("m2").decode() + "\n").encode("utf-16"))
    assert store.import_mentions(path).created == 2


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG image"), (b"ab\x00cd\n", "binary")],
)
def test_whole_file_problems_raise_a_clear_invalid_input(store, tmp_path, content, reason):
    path = tmp_path / "m.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidInput, match=reason):
        store.import_mentions(path, on_error="skip")
    assert store.count_mentions() == 0
