"""What a figure reads, and the error that says which file is missing and which command writes it.

Figures read only what the pipeline already wrote into a run directory (see ARCHITECTURE.md).
When a piece is missing, ``MissingInput`` names it and the command that makes it, so the app, the
notebooks and ``workbench figures`` can all say so instead of failing with a traceback.

Example:
    >>> import tempfile
    >>> try:
    ...     read_json(RunPaths(tempfile.mkdtemp()).probe_report, "the probe report", "workbench probe RUN")
    ... except MissingInput as exc:
    ...     exc.command
    'workbench probe RUN'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from workbench.store.paths import RunPaths


class MissingInput(ValueError):
    """A figure's input is not there: ``what`` is missing (at ``path``), ``command`` writes it."""

    def __init__(self, what: str, command: str, path: Path | str | None = None) -> None:
        self.what, self.command, self.path = what, command, None if path is None else str(path)
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"{what} is missing{where}; make it with `{command}`")


def require(path: Path, what: str, command: str) -> Path:
    """``path`` if it exists, else ``MissingInput``."""
    if not Path(path).exists():
        raise MissingInput(what, command, path)
    return Path(path)


def read_json(path: Path, what: str, command: str) -> Any:
    """The JSON at ``path`` (NaN allowed), or ``MissingInput`` naming the command that writes it."""
    text = require(path, what, command).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MissingInput(f"{what} (unreadable: {exc})", command, path) from exc


def cache_command(run: Path) -> str:
    return f"workbench cache {run}"


def after_cache(run: Path | str, command: str) -> str:
    """``command``, preceded by ``workbench cache RUN`` when the run has no complete activation store yet."""
    return command if RunPaths(run).activations.index.exists() else f"{cache_command(run)} && {command}"


def open_store(run: Path):
    """The run's ``ActivationStore``, or ``MissingInput`` naming ``workbench cache``."""
    from workbench.store import ActivationStore, RunDirError

    try:
        return ActivationStore(run)
    except RunDirError as exc:
        cache = RunPaths(run).activations
        state = "incomplete" if cache.manifest.exists() else "none"
        raise MissingInput(f"the activation store ({state})", cache_command(run), cache.root) from exc
