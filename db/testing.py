"""Small deterministic data for tests, demos and benchmarks of the annotation store."""

from __future__ import annotations

import io
import random

from PIL import Image
from sqlalchemy import select

from mimic.data.schema import Entity, KnowledgeBase

from .models import Mention
from .store import AnnotationStore


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)) -> bytes:
    """A valid PNG of one colour (different colours give different bytes, hence different hashes)."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def demo_kb(n: int = 20) -> KnowledgeBase:
    return KnowledgeBase(
        [
            Entity(
                id=f"Q{i + 1}",
                name=f"entity {i + 1}",
                text=f"description of entity {i + 1}",
                aliases=[f"alias {i + 1}"],
            )
            for i in range(n)
        ]
    )


def seed_store(
    store: AnnotationStore,
    *,
    entities: int = 20,
    mentions: int = 100,
    candidates: int = 3,
    model_version: str = "v0",
    seed: int = 0,
) -> list[int]:
    """Fill `store` with a KB and mentions that each have one prediction; return the mention ids.

    Mention i reads "sentence i mentions entity k here" with its uid "m{i}"; its candidates are
    random entities with random scores, so the queue's margin order is a shuffle of insertion order.
    """
    rng = random.Random(seed)
    store.import_kb(demo_kb(entities))
    records = []
    for i in range(mentions):
        ids = rng.sample(range(1, entities + 1), min(candidates, entities))
        sentence = f"sentence {i} mentions entity {ids[0]} here"
        records.append(
            {
                "uid": f"m{i}",
                "source": "demo",
                "sentence": sentence,
                "mention": f"entity {ids[0]}",
                "model_version": model_version,
                "candidates": [
                    {
                        "entity_id": f"Q{k}",
                        "S": round(rng.random(), 6),
                        "S_T": rng.random(),
                        "S_V": rng.random(),
                        "S_C": rng.random(),
                    }
                    for k in ids
                ],
            }
        )
    store.import_mentions(records)
    id_of = dict(
        store.read_transaction(
            lambda s: s.execute(select(Mention.uid, Mention.id).where(Mention.source == "demo")).all()
        )
    )
    return [id_of[f"m{i}"] for i in range(mentions)]
