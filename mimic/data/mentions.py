"""Where a mention sits in its sentence, when a dataset gives only the mention text."""

from __future__ import annotations

import re


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
