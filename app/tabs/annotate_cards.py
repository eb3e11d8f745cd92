"""The Annotate tab's card list: one queue item (the sentence with its mention and the other
mentions of that sentence, the mention image, then one card per candidate in ranking order with its
key, name, id, description, aliases, image and unit scores) rendered as HTML on the server, and the
JSON payload that carries the item on screen together with the prefetched ones.

Why the server renders and the browser only swaps: every piece of text here is user data (entity
names, descriptions, sentences), so it is escaped in one place, in Python, where tests can check it;
`app/static/keyboard.html` then swaps prefetched items in at a key press without a round trip and
sends the decision through a hidden event (`ACTIONS`, parsed by `parse_action`).
"""

from __future__ import annotations

import json
import math
from html import escape

from db.annotations import FLAGS

from ..common import AMBIGUOUS, NIL, UserError
from ..context import AppContext
from ..media import media_url

CARD_KEYS = [str(i) for i in range(1, 10)] + ["0"]  # 1-9 for candidates 1-9, 0 for the 10th
ACTIONS = ("decide", "skip", "add_span")
MAX_ACTION_CHARS = 20_000  # a decision with the longest comment (5,000 characters) fits easily
DESCRIPTION_CHARS = 320  # a card shows this much of a description (the whole text on hover)
KEY_HELP = [
    ("1 – 9, 0", "decide: candidate 1–9, 0 the 10th (the next item appears at once)"),
    ("N", "NIL: the entity is not in the list"),
    ("A", "ambiguous"),
    ("Enter", "accept the highlighted card (the model's top, a search result, or your earlier decision)"),
    ("S", "skip: the item comes back at the end of your queue"),
    ("Z", "undo your last decision"),
    ("← / →", "previous / next item of your history"),
    ("M", "add the text selected in the sentence as a new mention (one the corpus missed)"),
    ("C", "write a comment (Esc leaves the field; comment and flag go with the decision)"),
    ("F", "cycle the flag: " + ", ".join(FLAGS)),
    ("?", "show or hide this help"),
]


def card_key(i: int) -> str | None:
    """The key of the i-th candidate (0-based): 1-9, then 0 for the 10th, none after."""
    return CARD_KEYS[i] if i < len(CARD_KEYS) else None


def file_url(ctx: AppContext, path: str | None) -> str | None:
    """A relative, content-addressed browser URL for an image (app/media.py: no server path in the
    page), only for files the app may serve (DATA_DIR/images and assets/); None for anything else."""
    return media_url(path, ctx.config.data_dir)


def _score(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):.3f}"


def sentence_html(m, others: list) -> str:
    """The sentence with the mention (`mark.annot-mention`) and the other stored mentions of the same
    sentence (`mark.annot-co`, as context). Every text piece is one element whose `data-o` is its
    character offset in the sentence, so the browser can turn a selection into (start, end)."""
    spans = [(m.start, m.end, "annot-mention", m.id)]
    for o in others:
        if all(o.end <= a or o.start >= b for a, b, _, _ in spans):  # overlapping ones are left out
            spans.append((o.start, o.end, "annot-co", o.id))
    spans.sort()
    out, pos, s = [], 0, m.sentence
    for a, b, cls, mid in spans:
        if a > pos:
            out.append(f"<span data-o='{pos}'>{escape(s[pos:a])}</span>")
        title = "this mention" if cls == "annot-mention" else f"another mention of this sentence (#{mid})"
        out.append(f"<mark class='{cls}' data-o='{a}' title='{title}'>{escape(s[a:b])}</mark>")
        pos = b
    if pos < len(s):
        out.append(f"<span data-o='{pos}'>{escape(s[pos:])}</span>")
    return f"<p class='annot-sentence' data-len='{len(s)}'>{''.join(out)}</p>"


def card_html(ctx: AppContext, i: int, c, entity: dict | None, selected: bool) -> str:
    """One candidate card. `c` is a stored CandidateRecord, `entity` its KB record (or None)."""
    key = card_key(i)
    name = (entity or {}).get("name") or c.entity_name or c.entity_id
    text = ((entity or {}).get("text") or "").strip()
    short = text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 1].rstrip() + "…"
    aliases = [a for a in (entity or {}).get("aliases") or [] if a and a != name]
    img = next((u for u in (file_url(ctx, p) for p in (entity or {}).get("images") or []) if u), None)
    scores = " ".join(
        f"<span class='annot-score' title='{t}'>{k} {_score(v)}</span>"
        for k, v, t in (
            ("S", c.s, "the model's score (mean of the units)"),
            ("S_T", c.s_t, "text unit (TGLU)"),
            ("S_V", c.s_v, "image unit (VDLU)"),
            ("S_C", c.s_c, "cross-modal unit (CMFU)"),
        )
    )
    return (
        f"<div class='annot-card{' selected' if selected else ''}' data-choice='{escape(c.entity_id)}'"
        + (f" data-key='{key}'" if key else "")
        + ">"
        + f"<div class='annot-key'>{key or '·'}</div>"
        + (f"<img class='annot-thumb' src='{escape(img)}' alt='' loading='lazy'>" if img else "")
        + "<div class='annot-body'>"
        + f"<div class='annot-name'>{i + 1}. {escape(name)} <code>{escape(c.entity_id)}</code></div>"
        + (f"<div class='annot-aliases'>also: {escape(', '.join(aliases))}</div>" if aliases else "")
        + f"<div class='annot-desc' title='{escape(text)}'>{escape(short) or '<i>no description</i>'}</div>"
        + f"<div class='annot-scores'>{scores}</div></div></div>"
    )


def _extra_card(key: str, value: str, title: str, text: str, selected: bool) -> str:
    return (
        f"<div class='annot-card annot-extra{' selected' if selected else ''}' data-choice='{value}' data-key='{key}'>"
        f"<div class='annot-key'>{key.upper()}</div><div class='annot-body'><div class='annot-name'>{title}</div>"
        f"<div class='annot-desc'>{text}</div></div></div>"
    )


def item_view(
    ctx: AppContext,
    m,
    pred,
    *,
    others: list | None = None,
    selected: str | None = None,
    prior: str | None = None,
    hist: int = -1,
) -> dict:
    """What the browser needs for one item: its HTML and the values its keys decide.

    `selected`: the choice highlighted at first (the annotator's earlier decision, else the model's
    top candidate); `prior`: a line saying it was decided before."""
    cands = list(pred.candidates) if pred else []
    if selected is None and cands:
        selected = cands[0].entity_id
    cards = []
    for i, c in enumerate(cands):
        entity = ctx.service.entity(c.entity_id)
        if entity is None:  # no longer served (deleted or edited away): the store's record
            try:
                e = ctx.store.get_entity(c.entity_id)
                entity = {"name": e.name, "text": e.text, "aliases": e.aliases, "images": e.images}
            except Exception:
                entity = None
        cards.append(card_html(ctx, i, c, entity, c.entity_id == selected))
    cards.append(_extra_card("n", NIL, "NIL", "the entity is not in the list", selected == NIL))
    cards.append(_extra_card("a", AMBIGUOUS, "Ambiguous", "several entities fit; say why", selected == AMBIGUOUS))
    img = file_url(ctx, m.image_path)
    flags = "".join(f"<option value='{f}'>{f}</option>" for f in FLAGS)
    margin = f" · margin {m.margin:.4f}" if m.margin is not None else ""
    html = (
        f"<div class='annot-item mention-item' data-mention-id='{m.id}' data-hist='{hist}'>"
        "<div class='annot-head'>"
        + (f"<img class='annot-mention-image' src='{escape(img)}' alt='mention image'>" if img else "")
        + "<div class='annot-text'>"
        + sentence_html(m, others or [])
        + f"<p class='annot-meta'><small>mention #{m.id} · {escape(m.source or '')}{margin}"
        + (f" · {len(others)} other mention(s) of this sentence shown as context" if others else "")
        + (f" · history item {hist + 1}" if hist >= 0 else "")
        + "</small></p>"
        + (f"<p class='annot-prior'>{escape(prior)}</p>" if prior else "")
        + "</div></div>"
        + f"<div class='annot-cards'>{''.join(cards)}</div>"
        + "<div class='annot-found' hidden></div>"
        + "<div class='annot-extras'>"
        + "<textarea class='annot-comment' rows='1' maxlength='5000' "
        + "placeholder='Comment (C), sent with the decision'></textarea>"
        + "<select class='annot-flag' title='Flag for the reviewers (F)'>"
        + f"<option value=''>no flag</option>{flags}</select>"
        + "<button type='button' class='annot-add-span' title='select text in the sentence, then M'>"
        + "Add selection as a mention (M)</button></div></div>"
    )
    choices = [{"key": card_key(i), "value": c.entity_id} for i, c in enumerate(cands) if card_key(i)]
    choices += [{"key": "n", "value": NIL}, {"key": "a", "value": AMBIGUOUS}]
    return {"mention_id": m.id, "hist": hist, "html": html, "choices": choices, "selected": selected}


def payload_html(payload: dict) -> str:
    """The payload as the hidden `gr.HTML` carries it: JSON in an escaped data attribute."""
    return f"<div class='annot-payload' data-payload='{escape(json.dumps(payload), quote=True)}'></div>"


def help_html() -> str:
    rows = "".join(f"<tr><td><kbd>{escape(k)}</kbd></td><td>{escape(t)}</td></tr>" for k, t in KEY_HELP)
    return (
        "<div id='annot_help' class='annot-help' hidden><div class='annot-help-box'><b>Annotate keys</b> "
        "(ignored while typing in a field; ? or Esc closes)"
        f"<table>{rows}</table></div></div>"
    )


def parse_action(raw) -> dict:
    """The browser's action (a JSON object) checked: {"action": decide | skip | add_span,
    "mention_id": int, "seq": int, ...}; decide adds "choice", "comment", "flag", "seconds",
    "request_id"; add_span "start" and "end". Bad input -> UserError naming the field."""
    if not isinstance(raw, str) or not raw.strip():
        raise UserError("no action received")
    if len(raw) > MAX_ACTION_CHARS:
        raise UserError(f"action too long ({len(raw)} characters, at most {MAX_ACTION_CHARS})")
    try:
        a = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"action is not JSON ({exc.msg})") from None
    if not isinstance(a, dict):
        raise UserError("action must be a JSON object")
    if a.get("action") not in ACTIONS:
        raise UserError(f"action must be one of {', '.join(ACTIONS)} (got {a.get('action')!r:.40})")
    for k in ("mention_id", "seq") + (("start", "end") if a["action"] == "add_span" else ()):
        v = a.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise UserError(f"{k} must be a non-negative integer (got {v!r:.40})")
    hist = a.get("hist", -1)
    a["hist"] = hist if isinstance(hist, int) and not isinstance(hist, bool) and hist >= -1 else -1
    if a["action"] == "decide":
        if not isinstance(a.get("choice"), str) or not a["choice"]:
            raise UserError("choice must name a candidate, NIL or ambiguous")
        for k in ("comment", "flag", "request_id"):
            if a.get(k) is not None and not isinstance(a[k], str):
                raise UserError(f"{k} must be text")
        a["comment"] = (a.get("comment") or "").strip() or None
        a["flag"] = a.get("flag") or None
        sec = a.get("seconds")
        ok = isinstance(sec, (int, float)) and not isinstance(sec, bool) and math.isfinite(sec) and sec >= 0
        a["seconds"] = float(sec) if ok and sec is not None else None
    return a
