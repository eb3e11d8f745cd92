"""Decision flags: an annotator's request for review is stored with the decision, journaled, rebuilt
from the journal and validated."""

from __future__ import annotations

import pytest

from db import open_store
from db.errors import InvalidInput
from db.testing import seed_store


def test_flag_is_stored_journaled_and_rebuilt(tmp_path):
    a = open_store(tmp_path / "a")
    try:
        seed_store(a, mentions=3)
        a.add_annotator("ann")
        r = a.submit("ann", "m0", entity_id="Q1", flag="unsure", comment="two people share this name")
        assert r.flag == "unsure" and r.comment == "two people share this name"
        assert a.get_annotation(r.id).flag == "unsure"
        # same decision with a new flag is a new current annotation (the old one superseded)
        r2 = a.submit("ann", "m0", entity_id="Q1", flag="kb-missing")
        assert not r2.duplicate and r2.flag == "kb-missing"
        assert a.get_annotation(r.id).status == "superseded"
        # the exact same submission again stores nothing
        assert a.submit("ann", "m0", entity_id="Q1", flag="kb-missing").duplicate
        plain = a.submit("ann", "m1", "nil")
        assert plain.flag is None
    finally:
        a.close()
    b = open_store(tmp_path / "b")
    try:
        b.reconcile(tmp_path / "a" / "journal" / "annotations.jsonl")
        flags = {(h.mention_uid, h.status): h.flag for h in b.history("m0")}
        assert flags == {("m0", "superseded"): "unsure", ("m0", "current"): "kb-missing"}
    finally:
        b.close()


def test_unknown_flag_is_refused_naming_the_field(tmp_path):
    s = open_store(tmp_path)
    try:
        seed_store(s, mentions=1)
        s.add_annotator("ann")
        with pytest.raises(InvalidInput) as e:
            s.submit("ann", "m0", entity_id="Q1", flag="<script>")
        assert "flag" in str(e.value)
        assert s.history("m0") == []
    finally:
        s.close()
