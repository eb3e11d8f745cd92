"""Reading and writing the JSON and JSONL files of the dataset formats.

Every read failure becomes a `DataFormatError` naming the file (and, for JSONL, the line), never a
bare JSONDecodeError or UnicodeDecodeError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mimic.data.schema import DataFormatError


def read_json(path: Path) -> Any:
    """Parse a whole JSON file, turning every failure into a DataFormatError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text: {e}") from e


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; each line must be a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue  # tolerate blank lines (e.g. a trailing newline added by an editor)
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(
                        path, f"invalid JSON: {e.msg} at column {e.colno}", record=f"line {lineno}"
                    ) from e
                if not isinstance(obj, dict):
                    raise DataFormatError(
                        path, f"expected a JSON object, got {type(obj).__name__}", record=f"line {lineno}"
                    )
                yield lineno, obj
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text: {e}") from e


def write_json(path: Path, obj: Any, *, one_line: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None if one_line else 1)
        f.write("\n")


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
