"""Serving model and candidate judged on the same sets against the full KB, the KB encoded once.

A trained model is ranked by `mimic.analysis.ranking.evaluate`; a zero-shot serving model by
`mimic.serving.zeroshot.zero_shot_ranks`, exactly as it ranks when serving; a model with a lexical
unit by `mimic.analysis.served_ranking` (the linker's shortlist re-ranked by S = β·S_MIMIC + S_L),
also as it ranks when serving. So promotion compares what users would get from each model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mimic.analysis.ranking import evaluate, metrics_from_ranks
from mimic.analysis.served_ranking import evaluate_served_sets
from mimic.models import linking_model
from mimic.models.linking_model import entity_text
from mimic.serving.zeroshot import BackboneVectors, zero_shot_ranks

KB_BATCH = 64


@torch.no_grad()
def kb_pass(groups: list[tuple[Any, list, bool]], kb, batch_size: int) -> list[tuple[list, BackboneVectors | None]]:
    """One pass over the KB for several encoders: each KB chunk's images are decoded once and fed to
    every (encoder, heads sharing that encoder's backbone, want zero-shot vectors) group. -> per
    group (its heads' `EntityCache`s, exactly what `LinkingModel.entity_cache` computes; the KB's
    `BackboneVectors` or None). Decoding KB images is the costly part of the pass on real data,
    so serving and candidate share it."""
    caches: list[list[list[Any]]] = [[[] for _ in heads_list] for _enc, heads_list, _want in groups]
    vectors: list[list[BackboneVectors]] = [[] for _ in groups]
    for s in range(0, len(kb), batch_size):
        chunk = kb.entities[s : s + batch_size]
        texts = [entity_text(e) for e in chunk]
        decoded: dict[str, list] = {}  # per mode: compat keeps non-RGB images out
        for g, (encoder, heads_list, want_vectors) in enumerate(groups):
            mode = encoder.config.mode
            if mode not in decoded:
                # looked up at call time so a test can count the decodes
                decoded[mode] = linking_model.load_images([e.images[0] if e.images else None for e in chunk], mode)
            text, image = encoder.backbone_features(texts, decoded[mode])
            for parts, heads in zip(caches[g], heads_list):
                parts.append(heads.entity_cache(heads.side_features(text, image)))
            if want_vectors:
                vectors[g].append(BackboneVectors.of(text, image))
    return [
        ([type(p[0]).cat(p) for p in caches[g]], BackboneVectors.cat(vectors[g]) if want else None)
        for g, (_enc, _heads, want) in enumerate(groups)
    ]


def _without_images(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "images"}


def has_unit(model) -> bool:
    return getattr(model, "lexical_unit", None) is not None


@contextmanager
def heads_only(model) -> Iterator[Any]:
    """`model` with its lexical unit set aside (restored on exit): ranked against the full KB by
    MIMIC's S alone, e.g. for the label check, which needs ranks beyond the served shortlist."""
    unit = getattr(model, "lexical_unit", None)
    model.lexical_unit = None
    try:
        yield model
    finally:
        model.lexical_unit = unit


def evaluate_models(
    models: dict[str, Any],
    zero_shot: set[str],
    kb,
    sets: dict[str, list],
    *,
    batch_size: int,
    chunk_size: int,
    indexes: dict[str, Any] | None = None,
    shortlist: int = 64,
) -> dict:
    """{name: {set: metrics}} for every model on every non-empty set; models sharing a backbone
    share one KB pass. Names in `zero_shot` are scored zero-shot (their ranks kept). A model with a
    lexical unit is ranked as served (K = `shortlist`), on `indexes[name]` (a `KBIndex` of `kb` for
    that model) or on an index built for it; its ranks are positions in the shortlist."""
    results: dict[str, dict] = {name: {} for name in models}
    if not any(sets.values()):
        return results
    served = [n for n, m in models.items() if n not in zero_shot and has_unit(m)]
    for name in served:
        res = evaluate_served_sets(
            models[name], kb, sets, index=(indexes or {}).get(name), shortlist=shortlist, batch_size=batch_size
        )
        results[name] = {s: {**_without_images(r), "scoring": "served"} for s, r in res.items()}
    by_backbone: dict[tuple, list[str]] = {}
    for name, m in models.items():
        if name in served:
            continue
        by_backbone.setdefault((id(m.backbone), m.config.mode, m.config.text_max_length), []).append(name)
    groups = list(by_backbone.values())
    passes = kb_pass(
        [
            (
                models[names[0]],
                [models[n].heads for n in names if n not in zero_shot],
                any(n in zero_shot for n in names),
            )
            for names in groups
        ],
        kb,
        KB_BATCH,
    )
    for names, (caches, kb_vectors) in zip(groups, passes):
        trained = [n for n in names if n not in zero_shot]
        for name, cache in zip(trained, caches):
            for set_name, mentions in sets.items():
                if mentions:
                    res = evaluate(
                        models[name], kb, mentions, batch_size=batch_size, chunk_size=chunk_size, entity_cache=cache
                    )
                    results[name][set_name] = {k: v for k, v in res.items() if k != "images"}
        for name in (n for n in names if n in zero_shot):
            for set_name, mentions in sets.items():
                if mentions:
                    assert kb_vectors is not None  # kb_pass computes them for a group with a zero-shot model
                    ranks = zero_shot_ranks(models[name], kb_vectors, kb, mentions, batch_size)
                    results[name][set_name] = {**metrics_from_ranks(ranks), "ranks": ranks, "scoring": "zero-shot"}
    return results
