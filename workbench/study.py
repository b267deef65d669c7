"""A study's tables in Python, and written back as a file: the form ``Study.build`` and ``Study.save`` use.

A study file is four kinds of table: ``[study]``, ``[analysis]``, ``[[tasks]]`` and ``[[methods]]``. Here
``StudyAnalysis``, ``StudyTask`` and ``StudyMethod`` are those tables in Python: each only collects its
keyword arguments as the table's fields. Nothing here checks a field: every study, file or Python, is
validated by one function, ``workbench.evaluation.Study.from_dict`` (``evaluation/study.py``), so a typo is
reported as the file would report it (``<python>: [[tasks]] #1: unknown field 'temprature'``), not as a
Python ``TypeError`` worded another way. This module imports no torch.

The names say what they are beside the protocols they are not: ``StudyTask`` names a task of
``workbench.tasks`` (whose ``Task`` is the task protocol), ``StudyMethod`` a type of
``workbench.evaluation.METHODS`` (whose ``Method`` is the method protocol).

Example:
    >>> tables({"tasks": [StudyTask("organism", problems=24)], "methods": (StudyMethod("vanilla"),)})
    {'tasks': [{'task': 'organism', 'problems': 24}], 'methods': [{'type': 'vanilla'}]}
    >>> print(toml_text({"study": {"model": "organism"}, "methods": [{"type": "vanilla", "types": ["a"]}]}))
    [study]
    model = "organism"
    <BLANKLINE>
    [[methods]]
    type = "vanilla"
    types = ["a"]
    <BLANKLINE>
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StudyAnalysis", "StudyMethod", "StudyTask", "tables", "toml_text"]
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, init=False)
class StudyAnalysis:
    """The ``[analysis]`` table (or a task's own ``analysis``): its keyword arguments are the table's fields.

    Attributes:
        fields: ``problems``, ``samples``, ``seed``, ..., ``stages``, ``allow_overlap``, and per stage a mapping of
            its config's fields (``cache={"top_variance": 256}``, ``probe={"gate": {"epochs": 30}}``).

    >>> StudyAnalysis(problems=32, stages=("cache", "rcn")).table()
    {'problems': 32, 'stages': ['cache', 'rcn']}
    """

    fields: dict[str, Any] = field(hash=False)

    def __init__(self, **fields: Any) -> None:
        object.__setattr__(self, "fields", fields)

    def table(self) -> dict[str, Any]:
        return tables(self.fields)


@dataclass(frozen=True, init=False)
class StudyTask:
    """One ``[[tasks]]`` table: the task's name in ``workbench.tasks`` and ``TraceRunConfig``'s fields.

    Not the ``workbench.tasks.Task`` protocol: this says which task a study runs and how, by name.

    Attributes:
        task: ``"organism"``, ``"math"`` (with ``data=``), a benchmark name, ...
        analysis: fields that override the study's ``[analysis]`` for this task, or None.
        fields: ``name`` (its folder under the study's output; default ``task``), ``problems``, ``samples``,
            ``seed``, ``temperature``, ``max_new_tokens``, ``data``, ``prompt`` (a mapping of ``PromptFormat``'s).

    >>> StudyTask("organism", problems=24, analysis=StudyAnalysis(seed=9)).table()
    {'task': 'organism', 'problems': 24, 'analysis': {'seed': 9}}
    """

    task: str
    analysis: StudyAnalysis | Mapping[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict, hash=False)

    def __init__(self, task: str = "organism", /, *, analysis: StudyAnalysis | Mapping[str, Any] | None = None,
                 **fields: Any) -> None:
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "analysis", analysis)
        object.__setattr__(self, "fields", fields)

    def table(self) -> dict[str, Any]:
        extra = {} if self.analysis is None else {"analysis": self.analysis}
        return tables({"task": self.task, **self.fields, **extra})


@dataclass(frozen=True, init=False)
class StudyMethod:
    """One ``[[methods]]`` table: a ``type`` of ``workbench.evaluation.METHODS`` and its parameters.

    Not the ``workbench.evaluation.Method`` protocol: this names a method and its settings; the study constructs it.

    Attributes:
        type: its key in ``METHODS`` (``"vanilla"``, ``"adaras"``, ``"neat"``, ``"budget"``, ...).
        params: ``name`` (labels its rows, names its run folder), ``control_for``, ``analysis_from`` and the
            method's own parameters (``alpha``, ``gate``, ``tau_sim``, ...).

    >>> StudyMethod("adaras", name="adaras-a2", alpha=2.0, gate=False).table()
    {'type': 'adaras', 'name': 'adaras-a2', 'alpha': 2.0, 'gate': False}
    """

    type: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def __init__(self, type: str, /, **params: Any) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "params", params)

    def table(self) -> dict[str, Any]:
        return tables({"type": self.type, **self.params})


def tables(value: Any) -> Any:
    """A study document in the shape ``tomllib`` gives: dicts, lists and scalars (builders and tuples from Python
    become tables and arrays, paths strings); a fresh copy, so the caller's objects are never shared."""
    if isinstance(value, StudyAnalysis | StudyTask | StudyMethod):
        return value.table()
    if isinstance(value, Mapping):
        return {k: tables(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tables(v) for v in value]
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def toml_text(doc: Mapping[str, Any]) -> str:
    """A study's tables (``tables``' shape) as a TOML file; ``tomllib.loads`` of it gives ``doc`` back.

    Raises ``ValueError`` naming the field for a value TOML cannot hold (None, an object).
    """
    return "\n".join(_toml_lines(doc, ""))[1:] + "\n"  # [1:]: the blank line before the first table


def _toml_lines(table: Mapping[str, Any], prefix: str) -> list[str]:
    """``table`` as TOML lines: its values, then its sub-tables ``[a.b]`` and arrays of tables ``[[a]]``."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)

    lines = []
    for k, v in table.items():
        if not isinstance(v, Mapping) and not is_tables(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v, f'{prefix}.{k}'.lstrip('.'))}")
    for k, v in table.items():
        name = f"{prefix}.{_toml_key(k)}".lstrip(".")
        if isinstance(v, Mapping):
            lines += ["", f"[{name}]", *_toml_lines(v, name)]
        elif is_tables(v):
            for item in v:
                lines += ["", f"[[{name}]]", *_toml_lines(item, name)]
    return lines


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")  # repr: 1e-05 is TOML
    if isinstance(value, str):  # JSON's escapes are TOML's; DEL must be escaped in TOML, not in JSON
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):  # a table inside an array
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v, where)}" for k, v in value.items()) + "}"
    what = "None: TOML has no null, leave the field out" if value is None else f"a {type(value).__name__}"
    raise ValueError(f"field {where!r} is {what}; a study file holds strings, numbers, booleans, arrays and tables")
