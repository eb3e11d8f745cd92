"""Synthetic mention sentences for training the default model, made from the KB itself.

Every sentence is a template filled with an entity's name, an alias, a sentence of its description,
words of its description, or the ImageNet class names of one of its images (the bridge). None is
one of the demo examples' sentences (the 48 examples are the evaluation set): `check_disjoint`
refuses a training set that contains one.

Kinds (what decides the gold entity):
  fact     a sentence of the description, the name in it or in front of it
  context  words of the description in a template sentence
  alias    an alias as the mention (often unambiguous on its own)
  neutral  a sentence that says nothing about which entity it is: paired with an image view, the
           image decides (VDLU, CMFU)
  bridge   the ImageNet class names of an image view of the entity (CMFU's text→image evidence)
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from assets.default_model.bridge import class_phrase
from mimic.data.schema import Entity, Mention

CONTEXT_TEMPLATES = [
    "Everyone kept talking about {m} and the {a}.",
    "{m} came up again, something to do with {a} and {b}.",
    "My notes on {m} mention {a}, {b} and {c}.",
    "Ask anyone about {m} and you will hear about {a}.",
    "The article on {m} was all {a} and {b}.",
    "We learned a lot about {m}: {a}, {b}.",
    "Speaking of {m}, think {a} and {b}.",
    "A short piece about {m}, {a} and {c}.",
    "Nobody mentions {m} without the {a}.",
    "{m} is what I think of when someone says {a}.",
]
FACT_TEMPLATES = ["{m}: {s}", "About {m}. {s}", "{s} That is {m}.", "On {m}: {s}"]
ALIAS_TEMPLATES = [
    "{m} was in the news again.",
    "Nobody expected {m} to turn up here.",
    "I keep reading about {m}.",
    "There was a long piece on {m} today.",
    "We talked about {m} for an hour.",
]
NEUTRAL_TEMPLATES = [
    "{m} in a photo.",
    "Another picture of {m}.",
    "This is {m}.",
    "A snapshot of {m} from last week.",
    "Someone sent me this {m}.",
    "{m}, photographed yesterday.",
    "I took this shot of {m}.",
    "Nothing but {m} in this one.",
    "{m} again, same as before.",
    "A quick photo of {m}.",
    "Found this {m} on my phone.",
    "Guess what this is: {m}.",
]
BRIDGE_TEMPLATES = [
    "The picture of {m} looks like {p}.",
    "In the photo, {m} resembles {p}.",
    "{m}: the image shows something like {p}.",
    "A photo of {m}, a bit like {p}.",
]

STOPWORDS = set(
    """a an the and or but of in on at to for from by with without as is are was were be been being it its
    this that these those which who whom whose what when where why how than then there here also very
    has have had do does did can could may might will would shall should not no nor so such only own
    same other another each every some any all both few more most many much into over under above below
    between through during before after about against again further once called known well one two three
    several times day their they them he she his her him we our you your i me my""".split()
)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z'-]+", text)


def keywords(e: Entity) -> list[str]:
    """Content words of the description (no stop words, none of the name's words), in order, once each."""
    name = {w.lower() for w in _words(e.name)}
    seen: list[str] = []
    for w in _words(e.text):
        lw = w.lower()
        if len(lw) >= 4 and lw not in STOPWORDS and lw not in name and lw not in (s.lower() for s in seen):
            seen.append(w if w[0].isupper() and w[1:].islower() and w.lower() not in STOPWORDS else lw)
    return seen


def description_sentences(e: Entity) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", e.text or "") if len(s.strip()) > 3]


def _fill(template: str, mention: str, **fields: str) -> tuple[str, int]:
    """Fill `template` -> (sentence, start of the mention in it)."""
    for k, v in fields.items():
        template = template.replace("{" + k + "}", v)
    pre, post = template.split("{m}", 1)
    sentence = pre + mention + post
    return sentence[:1].upper() + sentence[1:] if pre else sentence, len(pre)


def _surface(e: Entity, rng: random.Random) -> str:
    """The name as a writer would type it: sometimes lower-case (common nouns: "coffee", "mint")."""
    return e.name.lower() if rng.random() < 0.3 else e.name


def _mention(mid: str, e: Entity, sentence: str, start: int, surface: str, image: str | None = None) -> Mention:
    assert sentence[start : start + len(surface)] == surface, (sentence, surface)
    return Mention(
        id=mid, sentence=sentence, mention=surface, answer=e.id, image=image, start=start, end=start + len(surface)
    )


def fact_mention(mid: str, e: Entity, rng: random.Random) -> Mention:
    sents = description_sentences(e)
    s = rng.choice(sents) if sents else e.name
    hit = re.search(re.escape(e.name), s, flags=re.IGNORECASE)
    if hit and rng.random() < 0.6:  # the description names the entity: that occurrence is the mention
        return _mention(mid, e, s, hit.start(), s[hit.start() : hit.end()])
    surface = _surface(e, rng)
    sentence, start = _fill(rng.choice(FACT_TEMPLATES), surface, s=s)
    return _mention(mid, e, sentence, start, surface)


def context_mention(mid: str, e: Entity, rng: random.Random) -> Mention:
    words = keywords(e) or [e.name]
    a, b, c = (rng.choice(words) for _ in range(3))
    surface = _surface(e, rng)
    sentence, start = _fill(rng.choice(CONTEXT_TEMPLATES), surface, a=a, b=b, c=c)
    return _mention(mid, e, sentence, start, surface)


def alias_mention(mid: str, e: Entity, rng: random.Random) -> Mention:
    names = [a for a in e.aliases if a != e.name] or [e.name]
    surface = rng.choice(names)
    sentence, start = _fill(rng.choice(ALIAS_TEMPLATES), surface)
    return _mention(mid, e, sentence, start, surface)


def neutral_mention(mid: str, e: Entity, rng: random.Random, image: str | None) -> Mention:
    surface = _surface(e, rng)
    sentence, start = _fill(rng.choice(NEUTRAL_TEMPLATES), surface)
    return _mention(mid, e, sentence, start, surface, image)


def bridge_mention(mid: str, e: Entity, rng: random.Random, classes: list[str]) -> Mention:
    surface = _surface(e, rng)
    sentence, start = _fill(rng.choice(BRIDGE_TEMPLATES), surface, p=class_phrase(classes))
    return _mention(mid, e, sentence, start, surface)


def text_mentions(e: Entity, rng: random.Random, n: int, prefix: str) -> list[Mention]:
    """`n` text-only mentions of `e`: facts, contexts and aliases in the proportions 3 : 4 : 2."""
    kinds = [fact_mention] * 3 + [context_mention] * 4 + [alias_mention] * 2
    return [kinds[i % len(kinds)](f"{prefix}-{e.id}-t{i}", e, rng) for i in range(n)]


def check_disjoint(mentions: Iterable[Mention], forbidden_sentences: Iterable[str]) -> None:
    """ValueError when a training mention's sentence is one of `forbidden_sentences` (the demo
    examples'), compared without case and surrounding spaces."""
    norm = {s.strip().lower() for s in forbidden_sentences}
    clash = sorted({m.sentence for m in mentions if m.sentence.strip().lower() in norm})
    if clash:
        raise ValueError(f"training sentences that are demo examples (the evaluation set): {clash[:5]}")
