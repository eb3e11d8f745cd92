"""The matching heads and the model around them.

modeling_mimic.py   MIMIC (KDD 2023): TGLU, VDLU, CMFU, entity/mention caches, in-batch loss
modeling_m3el.py    M3EL (KDD 2025): config, caches, heads, weighted contrastive loss, official weights
m3el_units.py       M3EL units: image intra-modal matching, cross-modal matching, multi-head pooling, fusion
families.py         the model families by name ("mimic", "m3el")
linking_model.py    LinkingModel: a backbone plus one family's heads, input templates, images
checkpoint.py       checkpoint folders; import of official checkpoints
"""
