"""Config dataclasses read from a mapping or a YAML file, with unknown keys named in the error."""

from __future__ import annotations

from dataclasses import Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml


class ConfigFile:
    """Mixin for a config dataclass: `from_dict` and `from_yaml`; overrides that are not None win.
    `_what` names the config in error messages."""

    _what = "config"

    if TYPE_CHECKING:
        # Mixed into dataclasses only (what `dataclasses.fields` needs to see).
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    @classmethod
    def from_dict(cls, raw: dict, *, where: str = "", **overrides):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{where}unknown {cls._what} keys {unknown} (known: {sorted(names)})")
        return cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides):
        """YAML (or JSON, which is YAML) mapping of the dataclass's fields."""
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the {cls._what} must be a mapping")
        return cls.from_dict(raw, where=f"{path}: ", **overrides)
