"""Tolerant mention location for serving (`find_mention`): exact, normalised, absent."""

from __future__ import annotations

import pytest

from mimic.data.mentions import find_mention

S = "Powers with Noel Harrison in The Girl from U.N.C.L.E."


@pytest.mark.parametrize(
    "mention, sentence, span_text, how",
    [
        ("Noel Harrison", S, "Noel Harrison", "exact"),
        ("noel harrison", S, "Noel Harrison", "exact"),  # case-insensitive is still an exact match
        ("UNCLE", S, "U.N.C.L.E", "normalised"),  # the dataset stripped the dots
        ("Girl from UNCLE", S, "Girl from U.N.C.L.E", "normalised"),
        ("Noel   Harrison", S, "Noel Harrison", "normalised"),  # extra spaces
        ("Noel\tHarrison", S, "Noel Harrison", "normalised"),
        ("Spider Man", "He saw Spider-Man twice", "Spider-Man", "normalised"),
        ("Spiderman", "He saw Spider-Man twice", "Spider-Man", "normalised"),
        ("ＦＵＬＬ", "a full width test", "full", "normalised"),  # NFKC: full-width letters
        ("Pelé", "le roi Pele\u0301 est là", "Pele\u0301", "normalised"),  # combining accent vs precomposed
        ("Oreilly", "Tim O'Reilly spoke", "O'Reilly", "normalised"),
    ],
)
def test_found(mention, sentence, span_text, how):
    start, end, got = find_mention(mention, sentence)
    assert got == how and start is not None and sentence[start:end] == span_text


@pytest.mark.parametrize("mention", ["Arsenal", "...", "U.N.C.L.E.S"])
def test_absent(mention):
    assert find_mention(mention, S) == (None, None, "absent")


@pytest.mark.parametrize(
    "mention, sentence, span_text",
    [
        ("Suleiman Magnificent", "Under Suleiman the Magnificent, the empire grew", "Suleiman the Magnificent"),
        ("Rob Nijs", "a song by Rob de Nijs in 1970", "Rob de Nijs"),
        ("Jan Hoeven", "Jan van der Hoeven", "Jan van der Hoeven"),
        ("4th Duke Rutland", "John Manners, 4th Duke of Rutland.", "4th Duke of Rutland"),
    ],
)
def test_found_with_dropped_words(mention, sentence, span_text):
    start, end, how = find_mention(mention, sentence)
    assert how == "gapped" and sentence[start:end] == span_text


def test_dropped_words_are_bounded_and_single_words_never_gap():
    assert find_mention("Jan Hoeven", "Jan a b c Hoeven")[2] == "absent"  # three words between: too far
    assert find_mention("Hoeven Jan", "Jan van der Hoeven")[2] == "absent"  # order matters
    start, end, how = find_mention("Ann Lee", "Ann met Ann Lee")  # the shortest window wins
    assert (start, end, how) == (8, 15, "exact")
    start, end, how = find_mention("Ann Lee", "Ann x Ann the Lee")
    assert how == "gapped" and (start, end) == (6, 17)


def test_span_offsets_stay_right_after_length_changing_characters():
    sentence = "ﬁne İstanbul trip to U.S.A. today"  # 'ﬁ' expands under NFKC, 'İ' under casefold
    start, end, how = find_mention("USA", sentence)
    assert how == "normalised" and sentence[start:end] == "U.S.A"
    start, end, how = find_mention("istanbul", sentence)
    assert start is not None and sentence[start:end] == "İstanbul"
