"""Where a mention sits in its sentence, when a dataset gives only the mention text."""

from __future__ import annotations

import re
import unicodedata


def locate_mention(mention: str, sentence: str) -> tuple[int | None, int | None]:
    """Character span of the first occurrence of `mention` in `sentence` (end exclusive).

    Case-sensitive first, then case-insensitive; (None, None) when absent. The case-insensitive
    search uses a regex rather than `lower().find` because lower-casing can change string lengths
    (e.g. 'İ'), which would shift the offsets.
    """
    if not mention:
        return None, None
    i = sentence.find(mention)
    if i >= 0:
        return i, i + len(mention)
    m = re.search(re.escape(mention), sentence, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else (None, None)


# -- tolerant location (serving) -------------------------------------------------------------------


def _clusters(text: str) -> list[tuple[int, int]]:
    """(start, end) of each base character with the combining marks that follow it."""
    out: list[tuple[int, int]] = []
    for i, ch in enumerate(text):
        if out and unicodedata.combining(ch):
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _normalise(text: str, *, keep_spaces: bool) -> tuple[str, list[int], list[int]]:
    """Normalised text and, per normalised character, the start and end of its source in `text`.

    NFKC per character cluster, then casefold; punctuation (Unicode category P*) and symbols that
    NFKC turns into nothing are dropped; whitespace runs become one space (or nothing, with
    `keep_spaces=False`), and leading/trailing spaces are dropped.
    """
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for s, e in _clusters(text):
        norm = unicodedata.normalize("NFKC", text[s:e]).casefold()
        for ch in norm:
            if ch.isspace():
                if keep_spaces and chars and chars[-1] != " ":
                    chars.append(" ")
                    starts.append(s)
                    ends.append(e)
                continue
            if unicodedata.category(ch).startswith("P"):
                continue
            chars.append(ch)
            starts.append(s)
            ends.append(e)
    if chars and chars[-1] == " ":
        chars.pop(), starts.pop(), ends.pop()
    return "".join(chars), starts, ends


def find_mention(mention: str, sentence: str) -> tuple[int | None, int | None, str]:
    """Locate `mention` in `sentence` tolerantly -> (start, end, how); end exclusive.

    `how` is "exact" (as `locate_mention`: case-sensitive, then case-insensitive), "normalised"
    (equal after NFKC, case folding, dropping punctuation and collapsing whitespace; then, failing
    that, dropping whitespace too: "UNCLE" finds "U.N.C.L.E.", "Spider Man" finds "Spider-Man")
    or "gapped" (the mention's words in order with at most MAX_GAP_WORDS dropped words between
    two of them: "Suleiman Magnificent" finds "Suleiman the Magnificent"), or "absent" with
    (None, None). A normalised match is mapped back to a real character span of
    `sentence`, from the first to the last source character of the match.
    """
    start, end = locate_mention(mention, sentence)
    if start is not None:
        return start, end, "exact"
    for keep_spaces in (True, False):
        m_norm, _, _ = _normalise(mention, keep_spaces=keep_spaces)
        if not m_norm:
            break  # nothing but punctuation/space: no normalised form to look for
        s_norm, starts, ends = _normalise(sentence, keep_spaces=keep_spaces)
        i = s_norm.find(m_norm)
        if i >= 0:
            return starts[i], ends[i + len(m_norm) - 1], "normalised"
    start, end = _gapped_match(mention, sentence)
    if start is not None:
        return start, end, "gapped"
    return None, None, "absent"


MAX_GAP_WORDS = 2


def _words(text: str) -> list[tuple[str, int, int]]:
    """Normalised words of `text` with their source spans (split on the spaces of `_normalise`)."""
    norm, starts, ends = _normalise(text, keep_spaces=True)
    out, i = [], 0
    for word in norm.split(" "):
        if word:
            out.append((word, starts[i], ends[i + len(word) - 1]))
        i += len(word) + 1
    return out


def _gapped_match(mention: str, sentence: str) -> tuple[int | None, int | None]:
    """The shortest sentence window holding the mention's (normalised) words in order, first and
    last adjacent to the window's ends, with at most MAX_GAP_WORDS other words between two of them:
    MELBench drops particles ("Suleiman Magnificent" for "Suleiman the Magnificent")."""
    m_words = [w for w, _, _ in _words(mention)]
    if len(m_words) < 2:
        return None, None
    s_words = _words(sentence)
    best: tuple[int, int, int] | None = None  # (word count, start char, end char)
    for i, (w, start, _) in enumerate(s_words):
        if w != m_words[0]:
            continue
        j, ok = i, True
        for target in m_words[1:]:
            nxt = next(
                (k for k in range(j + 1, min(len(s_words), j + 2 + MAX_GAP_WORDS)) if s_words[k][0] == target), None
            )
            if nxt is None:
                ok = False
                break
            j = nxt
        if ok and (best is None or j - i < best[0]):
            best = (j - i, start, s_words[j][2])
    return (best[1], best[2]) if best else (None, None)
