"""The linker (`Linker`: retrieve a shortlist, re-rank it with MIMIC, explain; `mimic.serving.linking`)
and what it returns (`LinkResult`, `Candidate`, `Explanation`, `LinkInputError`: `mimic.serving.results`).

    from mimic.serving.linker import Linker, LinkResult

Why this module is a thin front: the app's pages import the result types and `LinkInputError` from
here while the server starts, and those must not import torch (about 9 s of a restart on a loaded
2-core machine, measured with `python -X importtime`, before the page could serve; the model loads
afterwards, in the background). `Linker` and the engine's other names are looked up in
`mimic.serving.linking` on first use (PEP 562), which imports torch then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mimic.serving.results import Candidate, Explanation, LinkInputError, LinkResult

if TYPE_CHECKING:
    from mimic.serving.linking import (
        MAX_IMAGE_PIXELS,
        MAX_SENTENCE_CHARS,
        Linker,
        Shortlist,
        entity_from_record,
        token_strings,
    )

__all__ = [
    "MAX_IMAGE_PIXELS",
    "MAX_SENTENCE_CHARS",
    "Candidate",
    "Explanation",
    "LinkInputError",
    "LinkResult",
    "Linker",
    "Shortlist",
    "entity_from_record",
    "token_strings",
]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    from mimic.serving import linking

    try:
        return getattr(linking, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
