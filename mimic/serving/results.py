"""What the linker returns: ranked candidates with their unit scores and explanations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


class LinkInputError(ValueError):
    """A query the linker cannot accept; the message names what is wrong."""


@dataclass
class Explanation:
    """What the Inspect view draws for one candidate.

    tglu_attention [Le][Lm]: entity-token × mention-token attention over real tokens only.
    cmfu_*_grid: text→patch attention reshaped to the patch grid (CLIP: CLS weight reported apart).
    """

    mention_tokens: list[str]
    entity_tokens: list[str]
    tglu_attention: list[list[float]]
    cmfu_mention_grid: list[list[float]] | None
    cmfu_entity_grid: list[list[float]] | None
    cmfu_mention_cls: float | None = None
    cmfu_entity_cls: float | None = None
    # "attention" (trained MIMIC units) or "similarity" (zero-shot: backbone token / region
    # cosine similarities, see mimic.serving.zeroshot); the UI titles the maps accordingly.
    kind: str = "attention"


@dataclass
class Candidate:
    entity_id: str
    name: str
    description: str
    images: list[str]
    S: float
    S_T: float | None  # None: the unit does not apply (zero-shot offline backbone has no S_C)
    S_V: float | None
    S_C: float | None
    rank: int
    margin: float | None  # S minus the next candidate's S (None for the last)
    retrievers: list[str]
    explanation: Explanation | None = None
    # the lexical unit's score (None: the model has no lexical unit); S = β·(S_T + S_V + S_C)/3 + S_L
    S_L: float | None = None


@dataclass
class LinkResult:
    sentence: str
    mention: str
    start: int | None
    end: int | None
    has_image: bool
    candidates: list[Candidate]
    nil: bool  # True when no candidate is confident enough
    nil_threshold: float | None
    shortlist_size: int
    timings_ms: dict = field(default_factory=dict)
    # "model": S is the trained model's score; "zero-shot": backbone similarities (mimic.serving.zeroshot)
    scoring: str = "model"
    # how the query was taken when it was not taken literally (normalised match, mention not found)
    warnings: list[str] = field(default_factory=list)

    @property
    def top(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def to_dict(self) -> dict:
        return asdict(self)
