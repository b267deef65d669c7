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
import re
from collections.abc import Mapping
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, TypeVar

from workbench.atomic import atomic_write_text

R = TypeVar("R", bound="Report")


def _key(f: Field, fill: str | None) -> str:
    key = f.metadata.get("key", f.name)
    return key.format(fill) if fill is not None and "{}" in key else key


def _fill(f: Field, fill: str | None) -> str | None:
    """What fills the ``{}`` of a nested report's keys: its field's ``fill`` template, filled in turn by ours."""
    template = f.metadata.get("fill", "{}")
    if fill is None:
        return None if "{}" in template else template
    return template.format(fill)


def _names(template: str, data: Mapping[str, Any]) -> list[str]:
    """The ``{}`` of ``template`` in every key of ``data`` it matches, in the data's order."""
    head, tail = template.split("{}")
    pattern = re.compile(f"^{re.escape(head)}(.+){re.escape(tail)}$")
    return [m.group(1) for k in data if (m := pattern.match(k))]


def _plain(value: Any) -> Any:
    """JSON's form of a field value: tuples as lists."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Report:
    """Base of a typed report (a frozen dataclass); see the module docstring.

    Field metadata: ``key`` (the JSON key; ``{}`` in it is filled by the owner, below), ``optional`` (left out
    while None), ``report`` (a nested ``Report`` class, flattened into this one; ``fill`` is the template its
    ``{}`` is filled with), ``each`` (a dict field flattened once per entry, its name filling the ``{}`` of
    ``key``, or of the nested report's keys).
    """

    def to_json(self, fill: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if f.metadata.get("each"):
                for name, item in value.items():
                    if isinstance(item, Report):
                        out.update(item.to_json(name))
                    else:
                        out[_key(f, name)] = _plain(item)
            elif isinstance(value, Report):
                out.update(value.to_json(_fill(f, fill)))
            else:
                out[_key(f, fill)] = _plain(value)
        return out

    @classmethod
    def from_json(cls: type[R], data: Mapping[str, Any], *, strict: bool = True, fill: str | None = None) -> R:
        """The report of a flat dict; ``strict`` refuses keys this report does not know."""
        kwargs: dict[str, Any] = {}
        used: set[str] = set()
        each = [f for f in fields(cls) if f.metadata.get("each")]  # type: ignore[arg-type]
        for f in fields(cls):  # type: ignore[arg-type]
            nested = f.metadata.get("report")
            if f.metadata.get("each"):
                continue
            if nested is not None:
                sub = _fill(f, fill)
                anchor = nested.anchor()
                if f.metadata.get("optional") and (anchor.format(sub) if sub is not None else anchor) not in data:
                    continue
                kwargs[f.name] = nested.from_json(data, strict=False, fill=sub)
                used |= set(kwargs[f.name].to_json(sub))
                continue
            key = _key(f, fill)
            if key in data:
                kwargs[f.name] = data[key]
                used.add(key)
            elif not f.metadata.get("optional"):
                raise ValueError(f"a {cls.__name__} report without its {key!r} key: it was written by another version "
                                 "of the workbench or edited; rerun the analysis that writes it")
        # Entries per name come from the keys no fixed field claimed: a fixed key never doubles as a name.
        free = {k: v for k, v in data.items() if k not in used}
        for f in each:
            nested = f.metadata.get("report")
            kwargs[f.name] = {}
            for name in _names(nested.anchor() if nested is not None else f.metadata["key"], free):
                if nested is None:
                    kwargs[f.name][name] = data[_key(f, name)]
                    used.add(_key(f, name))
                else:
                    kwargs[f.name][name] = item = nested.from_json(free, strict=False, fill=name)
                    used |= set(item.to_json(name))
        unknown = [k for k in data if k not in used]
        if strict and unknown:
            raise ValueError(f"a {cls.__name__} report with unknown key(s) {', '.join(map(repr, unknown[:5]))}: it "
                             "was written by another version of the workbench; rerun the analysis that writes it")
        return cls(**kwargs)

    @classmethod
    def anchor(cls) -> str:
        """The key of the first required plain field: present whenever this report is."""
        for f in fields(cls):  # type: ignore[arg-type]
            if not f.metadata.get("optional") and "report" not in f.metadata and not f.metadata.get("each"):
                return f.metadata.get("key", f.name)
        raise TypeError(f"{cls.__name__} has no required plain field")

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
