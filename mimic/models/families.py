"""Model families (head types) by name: "mimic" (KDD 2023) and "m3el" (KDD 2025).

Every family provides a config dataclass (with `for_backbone`, `to_dict`, `from_dict`, `mode`) and
a heads module with the same interface (`side_features`, `entity_cache`, `mention_cache`, `score`,
`retrieval_vector`, `training_loss`), so training, evaluation, the index and the linker are shared.
"""

from __future__ import annotations

from mimic.models.modeling_m3el import M3ELConfig, M3ELEntityCache, M3ELHeads
from mimic.models.modeling_mimic import EntityCache, MimicConfig, MimicHeads

FAMILIES = {  # name -> (config class, heads class, entity-cache class)
    "mimic": (MimicConfig, MimicHeads, EntityCache),
    "m3el": (M3ELConfig, M3ELHeads, M3ELEntityCache),
}


def family(model_type: str):
    """-> (config class, heads class, entity-cache class) for a model type."""
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model type {model_type!r} (known: {sorted(FAMILIES)})")
    return FAMILIES[model_type]


def model_type_of(heads) -> str:
    return getattr(type(heads.config), "model_type", "mimic")


def build_heads(model_type: str, dims, **config):
    cfg_cls, heads_cls, _ = family(model_type)
    return heads_cls(cfg_cls.for_backbone(dims, **config))
