"""Dataset records (`schema`) and on-disk formats (`formats`): official MIMIC, MELBench, JSONL."""
from mimic.data.formats import (OFFICIAL_PREFIXES, load_dataset, load_jsonl_dataset, load_melbench, load_official,
                      locate_mention, melbench_split, write_jsonl_dataset, write_official)
from mimic.data.schema import DataFormatError, Dataset, Entity, KnowledgeBase, Mention

__all__ = [
    "DataFormatError", "Dataset", "Entity", "KnowledgeBase", "Mention",
    "OFFICIAL_PREFIXES", "load_dataset", "load_jsonl_dataset", "load_melbench", "load_official",
    "locate_mention", "melbench_split", "write_jsonl_dataset", "write_official",
]
