"""Loading a dataset in whichever of the three on-disk formats it is in: `load_dataset`.

* The official MIMIC "cleaned" release (`official.py`).
* The raw MELBench annotation file (`melbench.py`).
* The project's own JSONL layout (`jsonl.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mimic.data.jsonl import load_jsonl_dataset
from mimic.data.melbench import load_melbench
from mimic.data.official import load_official
from mimic.data.schema import DataFormatError, Dataset


def _top_level_char(path: Path) -> str:
    """First non-whitespace character of a file: enough to tell a dict from a list without parsing."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]
    return ""


def load_dataset(path: str | Path, *, format: str = "auto", **kw) -> Dataset:
    """Load a dataset in any supported format.

    `format` is "official", "jsonl", "melbench" or "auto": a directory with kb_entity.json is the
    official release, a directory with kb.jsonl the project's JSONL, a .json file holding a JSON
    object the raw MELBench file. Extra keyword arguments go to the chosen loader.
    """
    loaders: dict[str, Callable[..., Dataset]] = {
        "official": load_official,
        "jsonl": load_jsonl_dataset,
        "melbench": load_melbench,
    }
    path = Path(path)
    if format != "auto":
        if format not in loaders:
            raise ValueError(f"format must be 'auto' or one of {sorted(loaders)}, got {format!r}")
        return loaders[format](path, **kw)
    if not path.exists():
        raise FileNotFoundError(f"dataset path not found: {path}")
    if path.is_dir():
        if (path / "kb_entity.json").is_file():
            return load_official(path, **kw)
        if (path / "kb.jsonl").is_file():
            return load_jsonl_dataset(path, **kw)
        raise DataFormatError(
            path,
            "unrecognised dataset directory: expected kb_entity.json "
            "(official MIMIC release) or kb.jsonl (project JSONL)",
        )
    if path.suffix.lower() == ".json":
        first = _top_level_char(path)
        if first == "{":
            return load_melbench(path, **kw)
        if first == "[":
            raise DataFormatError(
                path,
                "a JSON list looks like one official split file: pass the "
                "dataset directory (with kb_entity.json) instead",
            )
    raise DataFormatError(
        path,
        "unrecognised dataset: expected a directory with kb_entity.json or "
        "kb.jsonl, or a MELBench .json file holding a JSON object",
    )
