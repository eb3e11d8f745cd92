"""The lexical unit S_L: a learned score of how a candidate's name covers the mention, fused into S.

MIMIC's three units compare encoder states. On a KB of bare names (MELBench Wikidata-MEL) the
decisive signal is surface form: which of "Robertson (Scottish footballer)", "Oscar Robertson", ...
a short mention "Robertson" names, given the rest of the sentence. Character n-grams and token
overlaps capture that directly, frozen encoder states only in part; a character n-gram TF-IDF alone
beats the trained three-unit model there (docs/results.md). This unit scores each candidate of the
serving shortlist from 19 cheap pair features (below; computed by `mimic.serving.pair_features`)
with a small MLP, and the linker ranks by

    S = mimic_weight · S_MIMIC + S_L          (S_MIMIC = (S_T + S_V + S_C) / 3, the paper's S)

The three MIMIC units are unchanged. S_L is trained listwise on the shortlist the linker serves
(the gold against the other shortlisted candidates: the retrievers' hard negatives), and
`mimic_weight` is chosen on dev (`mimic.training.lexical_unit_fit`). The features hold no entity
ids, priors or training frequencies, so nothing in the unit is specific to the training entities.

A fixed-mode extension: compat mode (the published model) has no lexical unit, and a checkpoint
that carries one refuses to load in compat mode. The unit sees only the shortlist, so a model with
a lexical unit ranks the shortlist, not the full KB (`mimic.analysis.served_ranking`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

#: The pair features, in column order (see `mimic.serving.pair_features` for how each is computed).
FEATURES: tuple[str, ...] = (
    "tfidf",  # char n-gram TF-IDF cosine, mention vs the candidate's best name/alias
    "dense_ctx",  # backbone text cosine, "mention [SEP] sentence" vs the entity text (the "text" retriever)
    "exact",  # normalised mention == name (a trailing parenthetical qualifier removed)
    "m_in_n",  # fraction of mention tokens found in the name
    "n_in_m",  # fraction of name tokens found in the mention
    "is_last",  # mention's last token == name's last token
    "is_first",  # mention's first token == name's first token
    "n_extra",  # log(1 + #name tokens missing from the mention)
    "ctx_overlap",  # fraction of the name's extra tokens (qualifier included) found in the rest of the sentence
    "other_overlap",  # the same, in the sentence's other mentions
    "has_paren",  # the name has a parenthetical qualifier
    "lex_rr",  # 1/(1+rank) in the lexical retriever's list (0 if absent)
    "text_rr",  # 1/(1+rank) in the backbone-text retriever's list (0 if absent)
    "model_rr",  # 1/(1+rank) in the model retriever's list (0 if absent)
    "name_in_sent_tfidf",  # TF-IDF cosine of the name vs the whole sentence
    "contig",  # the mention is a contiguous token run of the name
    "ambig",  # per mention: log(1 + #shortlisted names containing every mention token)
    "m_ntok",  # per mention: number of mention tokens
    "paren_ctx",  # the qualifier shares a token with the rest of the sentence
)


@dataclass
class LexicalUnitConfig:
    features: tuple[str, ...] = FEATURES
    hidden: int = 64  # 0: a linear unit
    mimic_weight: float = 1.0  # β in S = β·S_MIMIC + S_L (chosen on dev)
    # trained on what (recorded for readers of the checkpoint; not used by the code)
    trained_on: dict = field(default_factory=dict)

    def __post_init__(self):
        self.features = tuple(self.features)
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"unknown lexical features {unknown}; known: {list(FEATURES)}")
        if self.hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {self.hidden}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LexicalUnitConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def columns(self) -> list[int]:
        """Positions of the selected features among `FEATURES` (the featuriser computes all of them)."""
        return [FEATURES.index(f) for f in self.features]


class LexicalUnit(nn.Module):
    """Pair features [..., len(FEATURES)] -> S_L [...] (standardised, then linear or a 2-layer GELU MLP)."""

    columns: torch.Tensor  # [F'] positions of the selected features in FEATURES
    mean: torch.Tensor  # [F'] standardisation, fitted on the training shortlists
    std: torch.Tensor  # [F']

    def __init__(self, config: LexicalUnitConfig | None = None):
        super().__init__()
        self.config = config or LexicalUnitConfig()
        n = len(self.config.features)
        self.register_buffer("columns", torch.tensor(self.config.columns, dtype=torch.long), persistent=False)
        # feature standardisation, fitted on the training shortlists
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        h = self.config.hidden
        if h == 0:
            self.net: nn.Module = nn.Linear(n, 1)
        else:
            self.net = nn.Sequential(nn.Linear(n, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., len(FEATURES)] (every feature, in `FEATURES` order) -> S_L [...]."""
        x = features.index_select(-1, self.columns.to(features.device)).float()
        return self.net((x - self.mean) / self.std).squeeze(-1)

    def fuse(self, s_mimic: torch.Tensor, s_lexical: torch.Tensor) -> torch.Tensor:
        """The linker's S from MIMIC's S and S_L (same shape)."""
        return self.config.mimic_weight * s_mimic + s_lexical
