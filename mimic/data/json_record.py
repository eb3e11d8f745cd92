"""Typed access to one JSON object of a dataset file, and the per-split bookkeeping of the loaders.

A loader wraps each object in a `JsonRecord`, so a wrong or missing field is reported with the
file, the record and the field instead of a bare KeyError/TypeError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload

from mimic.data.schema import DataFormatError

STANDARD_SPLITS = ("train", "dev", "test")


def is_nil(answer: Any) -> bool:
    """True for the NIL marker ('nil' in any case) and, where allowed, JSON null."""
    return answer is None or (isinstance(answer, str) and answer.strip().lower() == "nil")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _describe(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


class JsonRecord:
    """Typed access to one JSON object, raising DataFormatError with file/record/field context."""

    def __init__(self, obj: Any, path: Path, record: Any):
        self.path, self.record = path, record
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", record=record)
        self.obj = obj

    def error(self, message: str, field_name: str | None = None) -> DataFormatError:
        return DataFormatError(self.path, message, record=self.record, field_name=field_name)

    def has(self, key: str) -> bool:
        return key in self.obj

    def get(
        self, key: str, types: tuple[type, ...], *, required: bool = True, default: Any = None, allow_null: bool = False
    ) -> Any:
        """The value of `key`, checked against `types` (bool is never accepted as int)."""
        if key not in self.obj:
            if required:
                raise self.error("missing required field", key)
            return default
        value = self.obj[key]
        if value is None and allow_null:
            return None
        if isinstance(value, bool) or not isinstance(value, types):
            raise self.error(f"expected {_describe(types)}, got {type(value).__name__} {value!r:.60}", key)
        return value

    @overload
    def string(
        self,
        key: str,
        *,
        required: Literal[True] = ...,
        default: str | None = ...,
        non_empty: bool = ...,
        allow_null: Literal[False] = ...,
    ) -> str: ...
    @overload
    def string(
        self,
        key: str,
        *,
        required: bool = ...,
        default: str | None = ...,
        non_empty: bool = ...,
        allow_null: bool = ...,
    ) -> str | None: ...
    def string(
        self,
        key: str,
        *,
        required: bool = True,
        default: str | None = None,
        non_empty: bool = False,
        allow_null: bool = False,
    ) -> str | None:
        value = self.get(key, (str,), required=required, default=default, allow_null=allow_null)
        if non_empty and (value is None or not value.strip()):
            raise self.error("must be a non-empty string", key)
        return value

    @overload
    def ident(self, key: str, *, required: Literal[True] = ...) -> str: ...
    @overload
    def ident(self, key: str, *, required: bool = ...) -> str | None: ...
    def ident(self, key: str, *, required: bool = True) -> str | None:
        """An identifier given as a string or an integer, returned as a string."""
        value = self.get(key, (str, int), required=required)
        return None if value is None else str(value)

    def str_list(self, key: str, *, required: bool = False) -> list[str]:
        value = self.get(key, (list,), required=required, default=[], allow_null=True) or []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"item {i} must be a string, got {type(item).__name__}", key)
        return list(value)


def count_per_split(stats: dict, key: str, split: str, n: int = 1) -> None:
    stats.setdefault(key, {}).setdefault(split, 0)
    stats[key][split] += n


def split_order(names) -> list[str]:
    """train/dev/test first (in that order), then any other split alphabetically."""
    names = set(names)
    return [s for s in STANDARD_SPLITS if s in names] + sorted(names - set(STANDARD_SPLITS))
