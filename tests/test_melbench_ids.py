"""The raw MELBench loader on every file shape of the release: integer and non-integer ids, single
strings and parallel lists, and a split rule that is the same in every process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from mimic.data.formats import load_dataset
from mimic.data.melbench import load_melbench, melbench_split, split_bucket


def _bucket_by_hash(sid: str) -> int:
    return int(hashlib.sha256(sid.encode("utf-8")).hexdigest()[:8], 16) % 10


def _split_of_bucket(b: int) -> str:
    return "train" if b <= 6 else "dev" if b == 7 else "test"


def test_split_rule_integer_ids_keep_mod10():
    for i in range(40):
        assert melbench_split(i) == melbench_split(str(i)) == _split_of_bucket(i % 10)
    assert split_bucket("46351") == 1 and split_bucket(46357) == 7 and split_bucket("0019") == 9


def test_split_rule_other_ids_use_a_stable_sha256_bucket():
    for sid in ["WD_123", "abc", "RP-9", "-3", "1.5", "WikiDiverse_0001", "é"]:
        assert split_bucket(sid) == _bucket_by_hash(sid)
        assert melbench_split(sid) == _split_of_bucket(_bucket_by_hash(sid))
    # pinned values: a change here changes every published figure on these files
    assert [split_bucket(s) for s in ("WD_123", "abc")] == [_bucket_by_hash("WD_123"), _bucket_by_hash("abc")]
    assert split_bucket("abc") == int("ba7816bf", 16) % 10  # sha256("abc") = ba7816bf...


def test_split_rule_is_the_same_in_another_process():
    ids = ["WD_123", "abc", "x" * 50, "RP_77", "42"]
    code = (
        "import json, sys; from mimic.data.melbench import melbench_split; "
        f"print(json.dumps([melbench_split(s) for s in {ids!r}]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == [melbench_split(s) for s in ids]


def _sample(sid, sentence, mentions, entities, answers):
    return {"id": sid, "sentence": sentence, "mentions": mentions, "entities": entities, "answer": answers}


@pytest.fixture
def mixed_file(tmp_path):
    """String ids and single strings (like the release's other files) next to integer ids and lists."""
    raw = {}
    expected: dict[str, int] = {}
    for i in range(30):  # integer ids with parallel lists (Wikidata-MEL shape), 2 mentions each
        sid = i if i % 2 else str(i)
        names, qids = [f"A{i}", f"B{i}"], [f"Q{i}", f"Q{100 + i}"]
        raw[str(i)] = _sample(sid, f"Ann{i} met Bob{i}", [f"Ann{i}", f"Bob{i}"], names, qids)
        split = _split_of_bucket(i % 10)
        expected[split] = expected.get(split, 0) + 2
    for i in range(30):  # string ids with single strings, 1 mention each
        sid = f"WD_{i}" if i % 3 else f"abc{i}"
        raw[sid] = _sample(sid, f"Carl{i} sings", f"Carl{i}", f"C{i}", f"Q{200 + i}")
        split = _split_of_bucket(_bucket_by_hash(sid))
        expected[split] = expected.get(split, 0) + 1
    raw["no-id-field"] = {"sentence": "Dora sings", "mentions": "Dora", "entities": "D", "answer": "Q999"}
    split = _split_of_bucket(_bucket_by_hash("no-id-field"))
    expected[split] = expected.get(split, 0) + 1
    path = tmp_path / "Mixed-MEL.json"
    path.write_text(json.dumps(raw))
    return path, expected


def test_loader_reads_string_ids_and_single_strings(mixed_file):
    path, expected = mixed_file
    ds = load_dataset(path)  # auto-detected as a MELBench file
    assert {s: len(ms) for s, ms in ds.splits.items()} == expected
    assert sum(len(ms) for ms in ds.splits.values()) == 30 * 2 + 30 + 1
    assert len(ds.kb) == 30 * 2 + 30 + 1
    by_id = {m.id: (s, m) for s, ms in ds.splits.items() for m in ms}
    s, m = by_id["WD_1-0"]
    assert s == melbench_split("WD_1") and (m.mention, m.answer, m.start, m.end) == ("Carl1", "Q201", 0, 5)
    s, m = by_id["17-1"]
    assert s == "dev" and (m.mention, m.answer) == ("Bob17", "Q117")
    assert by_id["no-id-field-0"][1].answer == "Q999"


def test_loader_split_is_identical_between_runs(mixed_file):
    path, _ = mixed_file
    first = load_melbench(path)
    second = load_melbench(path)
    assert {s: [m.id for m in ms] for s, ms in first.splits.items()} == {
        s: [m.id for m in ms] for s, ms in second.splits.items()
    }


def test_custom_split_rule_gets_the_id_string(mixed_file):
    path, _ = mixed_file
    seen = []

    def rule(sid: str) -> str:
        seen.append(sid)
        return "all"

    ds = load_melbench(path, split_rule=rule)
    assert list(ds.splits) == ["all"] and "WD_1" in seen and "17" in seen and all(isinstance(s, str) for s in seen)
