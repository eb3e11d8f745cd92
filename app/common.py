"""What the tabs share: the user-error rule, the signed-in name, status messages, the header, the
candidate list (table, decision choices, gallery), the visibility of UI-only events, and `Shared`,
the components and queues that more than one tab reads or writes.

Layer rule: the app wires UI to `mimic` and `db`; model and storage logic stays there.
"""

from __future__ import annotations

import html
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import gradio as gr
import pandas as pd

from db import StoreError
from mimic.serving.linker import LinkInputError, LinkResult

from .config import REPO
from .context import AppContext, WriteDenied, resolve_image


# UI-only events stay out of the API page and the client; `/link`, `/annotate` and `/export`
# (app/api.py) are the documented endpoints.
class _Visibility(TypedDict):
    api_visibility: Literal["public", "private", "undocumented"]


PRIVATE: _Visibility = {"api_visibility": "private"}
# Exports only read the store (one read transaction each), so they run in a queue of their own,
# never in the "db" write queue: an annotation is never held behind an export (issue 18 point 3).
EXPORT_QUEUE: dict = {"concurrency_id": "export", "concurrency_limit": 2}

# S_L: the lexical unit's score (blank when the served model has none, see mimic.models.lexical_unit)
CANDIDATE_COLUMNS = ["rank", "name", "id", "S", "S_T", "S_V", "S_C", "S_L", "margin", "found by"]
DECISIONS = ("entity", "nil", "ambiguous")
NIL, AMBIGUOUS = "__NIL__", "__AMBIGUOUS__"


class UserError(ValueError):
    """Bad input or a refused action; the message is shown to the user as it is."""


# -- server paths never reach a client -------------------------------------------------------------
_PRIVATE_ROOTS: set[str] = set()


def add_private_root(path: str | Path) -> None:
    """A folder whose absolute path must not be shown (app/ui.py adds DATA_DIR)."""
    _PRIVATE_ROOTS.add(str(Path(path)))
    _PRIVATE_ROOTS.add(str(Path(path).resolve()))


def _roots() -> list[str]:
    roots = {str(REPO), os.getcwd(), tempfile.gettempdir(), str(Path.home()), *_PRIVATE_ROOTS}
    roots |= {str(Path(r).resolve()) for r in list(roots)}
    return sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True)


def public_path(path: str | Path | None) -> str | None:
    """How a server path is shown: relative to the working folder or the repository when inside
    one, else only its name (`…/name`); never the absolute path."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    for base in (Path.cwd(), REPO):
        for q in (p, p.resolve()):
            try:
                return str(q.relative_to(base.resolve())) or "."
            except ValueError:
                pass
    return f"…/{p.name}"


def scrub_paths(text: str) -> str:
    """`text` with every absolute path under the repository, the working folder, the temp folder,
    the home folder or DATA_DIR shown by `public_path`."""
    if not text:
        return text
    for root in _roots():
        text = re.sub(
            re.escape(root) + r"(?:/[^\s'\"`,;:()\[\]<>]*)?(?![^\s'\"`,;:()\[\]<>/])",
            lambda m: str(public_path(m.group(0))),
            text,
        )
    return text


def user_errors(fn):
    """Turn the library's input, store and permission errors into `UserError` (shown as they are,
    less server paths)."""

    def wrapped(*a, **kw):
        try:
            return fn(*a, **kw)
        except (LinkInputError, StoreError, WriteDenied) as exc:
            raise UserError(scrub_paths(str(exc))) from None

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def rounded(v, nd=4):
    """A score for display: rounded, None for a missing or NaN one."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


@dataclass
class Shared:
    """What more than one tab uses; built by app/ui.py before the tabs."""

    demo: gr.Blocks
    header: gr.Markdown
    tabs: gr.Tabs
    link_state: gr.State  # last LinkResult as a dict (with explanations)
    link_image_state: gr.State  # the image path of that link
    candidate_picker: gr.Dropdown  # rendered in Inspect, filled by every link
    inference: dict  # queue of link/inspect events (MIMIC_INFERENCE_CONCURRENCY at once)
    db_queue: dict  # queue of writes (one at a time)
    browser_states: dict = field(default_factory=dict)  # `browser_states()`, made at the page's top level


# What a browser keeps in its localStorage (storage key -> default value).
BROWSER_STATES: dict = {
    "mimic_annotate_position": {"mention_id": None, "hist": -1},  # the Annotate item shown
    "mimic_annotate_project": None,  # the Annotate picker's project
    "mimic_projects_project": None,  # the Projects tab's picker
}


def browser_states() -> dict:
    """Every BrowserState of the app, made at the page's top level (app/ui.py, outside the tabs):
    one inside a tab is read from localStorage only when that tab is first opened, after the page
    load's events have already run with its default."""
    return {k: gr.BrowserState(d, storage_key=k) for k, d in BROWSER_STATES.items()}


def browser_state(shared, key: str) -> gr.BrowserState:
    """The page's BrowserState `key` (a tab built alone, as tests do, gets its own)."""
    made = getattr(shared, "browser_states", None) or {}
    return made[key] if key in made else gr.BrowserState(BROWSER_STATES[key], storage_key=key)


def username_of(request: gr.Request | None) -> str | None:
    """The signed-in name: basic auth (`launch(auth=...)`) or Hugging Face OAuth."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return request.username
    try:
        info = request.session.get("oauth_info") or {}
        return (info.get("userinfo") or {}).get("preferred_username")
    except (AssertionError, AttributeError, RuntimeError):  # no session middleware: OAuth is off
        return None


def progress_bar_html(fraction: float | None, text: str) -> str:
    """The one progress bar of the app (Annotate's counts, a project job, a retraining run): the
    fraction done (clamped to 0..1) and a line of plain text, escaped here (it holds user data)."""
    f = float(fraction or 0)
    pct = 0.0 if math.isnan(f) else 100 * min(1.0, max(0.0, f))
    return (
        f"<div class='annot-progress'><div class='bar'><div class='fill' style='width:{round(pct, 1):g}%'></div>"
        f"</div><div class='counts'>{html.escape(text)}</div></div>"
    )


def message(text: str, kind: str = "info") -> str:
    label = {"info": "", "ok": "**OK** · ", "error": "**Error:** "}[kind]
    return f"{label}{text}"


def upload_path(file) -> str | None:
    """The server path of a gr.File value (a path, or a file object with `.name`)."""
    return file if isinstance(file, str) else getattr(file, "name", None)


def header_markdown(ctx: AppContext) -> str:
    loc = ctx.store.location
    assert loc is not None, "the store's StorageReport is set by db.open_store"
    if not ctx.ready:  # a background start: the page serves before the model (app/context.py)
        d = {"scoring": "loading"}
        parts = [f"**MIMIC Studio** · the model is loading… · data in `{public_path(loc.data_dir)}`"]
    else:
        d = ctx.service.describe()
        parts = [
            f"**MIMIC Studio** · model **{d['version']}** ({d['model_type']}) · backbone {d['backbone']} · "
            f"{d['entities']} entities · data in `{public_path(loc.data_dir)}`"
        ]
    if d["scoring"] == "zero-shot":
        parts.append(
            "> **Zero-shot ranking.** No trained checkpoint is loaded: candidates are ranked by the "
            "backbone's own similarities (text cosine, image cosine), not by trained MIMIC units. "
            "S_T/S_V/S_C below are those similarities; maps in Inspect are similarities, not attention. "
            "For MIMIC's scores and attention, leave `MIMIC_CHECKPOINT` unset (the default checkpoint, "
            "offline backbone) or point it at a trained checkpoint."
        )
    if loc.ephemeral or loc.warnings:
        warn = " ".join(loc.warnings or ["this location does not survive a restart"])
        parts.append("> ⚠️ **Storage:** " + scrub_paths(warn))
    return "\n\n".join(parts)


HEADER_SECONDS = 2.0  # how often an open page re-reads the header (model version, entity count)


def header_update(ctx: AppContext, shown: str | None):
    """The header's refresh (a timer every HEADER_SECONDS): the new text when something in it
    changed (another session's KB edit or import, a new model version), else no update at all, so
    a tick costs one cheap count and sends nothing."""
    now = header_markdown(ctx)
    return gr.update() if now == shown else now


# -- the candidate list (Link and Annotate) --------------------------------------------------------
def candidates_table(result: LinkResult | dict | None) -> pd.DataFrame:
    if result is None:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    cands = result["candidates"] if isinstance(result, dict) else [asdict(c) for c in result.candidates]
    rows = [
        [
            c["rank"],
            c["name"],
            c["entity_id"],
            rounded(c["S"]),
            rounded(c["S_T"]),
            rounded(c["S_V"]),
            rounded(c["S_C"]),
            rounded(c.get("S_L")),
            rounded(c["margin"]),
            ", ".join(c["retrievers"]),
        ]
        for c in cands
    ]
    return pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)


# Columns a model (or a stored prediction) may leave empty for every candidate, and why. A list that
# has such a column hides it and says why beneath the table (`candidates_view`).
EMPTY_COLUMN_REASONS = {
    "S_T": "S_T (text): not computed for this list",
    "S_V": "S_V (image): the mention or the candidates have no image",
    "S_C": "S_C (cross-modal): not computed by this model or backbone (zero-shot, only a CLIP backbone has "
    "a joint text–image space)",
    "S_L": "S_L (lexical): the served model has no lexical unit",
    "margin": "margin: a single candidate",
    "found by": "found by: the retrievers that found a candidate are not kept with a stored prediction",
}


def candidates_view(result: LinkResult | dict | None) -> tuple[pd.DataFrame, str]:
    """The candidate table without the columns that are empty for every candidate, and a one-line
    note beneath it naming them and why ("" when nothing is hidden or there are no candidates)."""
    df = candidates_table(result)
    if df.empty:
        return df, ""
    empty = [
        c
        for c in EMPTY_COLUMN_REASONS
        if df[c].isna().all() or (c == "found by" and (df[c].fillna("").astype(str).str.strip() == "").all())
    ]
    if not empty:
        return df, ""
    note = "_Not shown, empty for every candidate:_ " + "; ".join(EMPTY_COLUMN_REASONS[c] for c in empty) + "."
    return df.drop(columns=empty), note


def choice_value(decision: str, entity_id: str | None = None) -> str:
    return {"nil": NIL, "ambiguous": AMBIGUOUS}.get(decision, entity_id or "")


def parse_choice(choice: str | None) -> tuple[str, str | None]:
    """Radio value -> (decision, entity_id)."""
    if not choice:
        raise UserError("pick a candidate, NIL (not in the list) or ambiguous first")
    if choice == NIL:
        return "nil", None
    if choice == AMBIGUOUS:
        return "ambiguous", None
    return "entity", choice


def candidate_label(i: int, c: dict) -> str:
    key = f"{i + 1} · " if i < 9 else ""  # keys 1-9 pick a candidate (static/keyboard.html)
    return f"{key}{c['name']} ({c['entity_id']}) S={c['S']:.3f}"


def decision_choices(cands: list[dict]) -> list[tuple[str, str]]:
    """The decision radio's choices: the candidates, then NIL and ambiguous."""
    ch = [(candidate_label(i, c), c["entity_id"]) for i, c in enumerate(cands)]
    return ch + [("0 / N · NIL: not in the list", NIL), ("A · ambiguous", AMBIGUOUS)]


def candidate_gallery(ctx: AppContext, cands: list[dict]) -> list[tuple[str, str]]:
    """(image, caption) of each candidate's first image that may be served; the others are dropped."""
    out = []
    for c in cands:
        img = resolve_image((c.get("images") or [None])[0], ctx.config.data_dir)  # None: not servable, dropped
        if img:
            out.append((img, f"{c['rank']}. {c['name']} ({c['entity_id']})"))
    return out
