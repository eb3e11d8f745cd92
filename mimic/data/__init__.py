"""Dataset records (`schema`) and their on-disk formats: the official MIMIC release (`official`),
raw MELBench (`melbench`), the project's JSONL (`jsonl`); `formats.load_dataset` picks the loader."""

from mimic.data.formats import load_dataset
from mimic.data.jsonl import load_jsonl_dataset, write_jsonl_dataset
from mimic.data.melbench import load_melbench, melbench_split
from mimic.data.mentions import locate_mention
from mimic.data.official import OFFICIAL_PREFIXES, load_official, write_official
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

__all__ = [
    "DataFormatError",
    "Dataset",
    "Entity",
    "KnowledgeBase",
    "Mention",
    "OFFICIAL_PREFIXES",
    "load_dataset",
    "load_jsonl_dataset",
    "load_melbench",
    "load_official",
    "locate_mention",
    "melbench_split",
    "write_jsonl_dataset",
    "write_official",
]
