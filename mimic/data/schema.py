"""In-memory records shared by every data format, the model and the linker.

Every loader (official MIMIC release, raw MELBench, the project's JSONL) produces the same three
objects: a `KnowledgeBase` of `Entity`, and one `list[Mention]` per split, bundled in a `Dataset`.
Image fields hold absolute paths (or are empty): loaders resolve them so nothing downstream has to
know where a dataset lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


class DataFormatError(ValueError):
    """A data file is malformed. The message names the file, the record and the field."""

    def __init__(self, path, message: str, record=None, field_name: str | None = None):
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if field_name is not None:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.record = record
        self.field = field_name


@dataclass
class Entity:
    """One knowledge-base entry.

    `id` is the external identifier (a Wikidata QID such as "Q42"); `text` is what the model reads
    after the name (the official release's `attr` or `desc`); `images` are absolute file paths.
    """

    id: str
    name: str
    text: str = ""
    aliases: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


@dataclass
class Mention:
    """One mention to link: the surface string, its sentence, an optional image and its gold entity.

    `start`/`end` are character offsets of the mention in `sentence` when known (end exclusive).
    `answer` is the gold entity id, or None when unknown (serving) — NIL mentions are dropped by
    the loaders, as the official evaluation does.
    """

    id: str
    sentence: str
    mention: str
    answer: str | None = None
    image: str | None = None
    start: int | None = None
    end: int | None = None


class KnowledgeBase:
    """An ordered list of entities with an id → position map.

    The position order is the order in which entities are scored and in which `--scores-out`
    arrays are written.
    """

    def __init__(self, entities: list[Entity]):
        self.entities: list[Entity] = list(entities)
        self.index: dict[str, int] = {}
        for i, e in enumerate(self.entities):
            if e.id in self.index:
                raise ValueError(f"duplicate entity id {e.id!r} at positions {self.index[e.id]} and {i}")
            self.index[e.id] = i

    def __len__(self) -> int:
        return len(self.entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities)

    def __getitem__(self, i: int) -> Entity:
        return self.entities[i]

    def position(self, entity_id: str) -> int:
        return self.index[entity_id]

    def __contains__(self, entity_id: object) -> bool:
        return entity_id in self.index


@dataclass
class Dataset:
    """A knowledge base plus mention splits (usually "train", "dev", "test").

    `stats` carries what the loader counted and dropped (nil answers, missing images, …) so the
    CLI can report it instead of hiding it.
    """

    kb: KnowledgeBase
    splits: dict[str, list[Mention]]
    name: str = ""
    stats: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Mention]:
        if name not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {name!r} (has: {sorted(self.splits)})")
        return self.splits[name]
