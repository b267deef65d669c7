"""What every command shares: option types, and turning the library's clear errors into one red line."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from workbench.errors import ModelLoadError

Threads = Annotated[int, typer.Option(min=1, help="torch CPU threads (1 is fastest for the organism on 2 cores).")]
ModelSpec = Annotated[str, typer.Option(
    "--model", help="'organism', a local Hugging Face model folder, or a hub id ORG/NAME from the Hugging Face cache "
                    "(fetched only with --download or `workbench download`).")]
Download = Annotated[bool, typer.Option(
    help="Fetch a hub model or a named benchmark missing from the Hugging Face cache first (the only network use).")]


class PromptStyle(enum.StrEnum):
    auto = "auto"
    chat = "chat"
    raw = "raw"


def open_unit_interval(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value} is not in (0, 1]; 1 keeps every token")
    return value


def fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors(out: Path | None = None) -> Iterator[None]:
    """Turns the library's clear errors into one red line and exit code 2; Ctrl-C says how to resume."""
    from workbench.prompting import PromptFormatError
    from workbench.store import RunDirError
    from workbench.tasks import TaskDataError
    from workbench.tasks.sandbox import SandboxUnavailableError

    try:
        yield
    except (ModelLoadError, RunDirError, TaskDataError, PromptFormatError, SandboxUnavailableError,
            ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        saved = f"; every finished trace is saved in {out}" if out is not None else ""
        typer.secho(f"interrupted{saved}. Run the same command again to resume.", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130) from None


def load(spec: str, threads: int):
    from workbench.model import load_model, set_threads

    set_threads(threads)
    try:
        return load_model(spec)
    except ModelLoadError as exc:
        fail(str(exc))


