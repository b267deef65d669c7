"""Typed reports: frozen result dataclasses whose JSON form is the flat dict users and scripts read.

An analysis returns a ``Report`` subclass; ``to_json()`` gives the flat dict written to the run directory
(the keys of ``validate.json``, ``probes/report.json``, ...), and ``from_json()`` reads it back, refusing an
unknown or a missing key by name. A field's JSON key is its name unless its metadata says ``key``; a field
marked ``optional`` (default None) is left out of the JSON while None. Reports that are several reports
merged (``validate.json``) keep each part as a field with metadata ``report`` (its class) and flatten it.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Hits(Report):
    ...     hit_rate: float = field(metadata={"key": "exit_within3"})
    ...     window: int = field(metadata={"key": "exit_window"})
    ...     note: str | None = field(default=None, metadata={"optional": True})
    >>> Hits(0.9, 3).to_json()
    {'exit_within3': 0.9, 'exit_window': 3}
    >>> Hits.from_json({"exit_within3": 0.9, "exit_window": 3}).hit_rate
    0.9
    >>> Hits.from_json({"exit_within3": 0.9})
    Traceback (most recent call last):
    ...
    ValueError: a Hits report without its 'exit_window' key: ...rerun the analysis that writes it
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, TypeVar

from workbench.atomic import atomic_write_text

R = TypeVar("R", bound="Report")


def _key(f: Field) -> str:
    return f.metadata.get("key", f.name)


def _plain(value: Any) -> Any:
    """JSON's form of a field value: tuples as lists, nested reports flattened by their owner."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Report:
    """Base of a typed report (a frozen dataclass); see the module docstring."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if isinstance(value, Report):
                out.update(value.to_json())
            else:
                out[_key(f)] = _plain(value)
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any], *, strict: bool = True) -> R:
        """The report of a flat dict; ``strict`` refuses keys this report does not know."""
        kwargs: dict[str, Any] = {}
        used: set[str] = set()
        for f in fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("report")
            if nested is not None:
                if not f.metadata.get("optional") or any(k in data for k in nested.keys()):
                    part = nested.from_json(data, strict=False)
                    kwargs[f.name] = part
                    used |= set(part.to_json())
                continue
            key = _key(f)
            if key in data:
                kwargs[f.name] = data[key]
                used.add(key)
            elif not f.metadata.get("optional"):
                raise ValueError(f"a {cls.__name__} report without its {key!r} key: it was written by another version "
                                 "of the workbench or edited; rerun the analysis that writes it")
        unknown = sorted(set(data) - used)
        if strict and unknown:
            raise ValueError(f"a {cls.__name__} report with unknown key(s) {', '.join(map(repr, unknown[:5]))}: it "
                             "was written by another version of the workbench; rerun the analysis that writes it")
        return cls(**kwargs)

    @classmethod
    def keys(cls) -> list[str]:
        """The JSON keys of this report's fields (nested reports' included)."""
        out = []
        for f in fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("report")
            out.extend(nested.keys() if nested is not None else [_key(f)])
        return out

    def save(self, path: str | Path) -> Path:
        """Writes ``to_json()`` atomically (NaN stays NaN, as Python's json writes it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_json(), indent=1, allow_nan=True, default=str))
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{path}: no {cls.__name__} here; run the analysis that writes it first") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it and rerun the analysis") from exc
        try:
            return cls.from_json(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
