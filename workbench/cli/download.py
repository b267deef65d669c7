"""``workbench download``: the one command that uses the network, to put a hub model or a benchmark in the cache."""

from __future__ import annotations

from typing import Annotated

import typer

from workbench.cli.common import user_errors


def download(
    model: Annotated[str | None, typer.Argument(help="A hub model id, ORG/NAME (e.g. Qwen/Qwen3-1.7B).")] = None,
    task: Annotated[list[str] | None, typer.Option(
        help="A benchmark by name (gsm8k, math500, aime24, aime25, amc23, gpqa-diamond, mbpp); repeatable.")] = None,
    revision: Annotated[str | None, typer.Option(help="The model's branch, tag or commit (default: main).")] = None,
) -> None:
    """Fetch a hub model and/or named benchmarks into the Hugging Face cache; everything else then runs offline."""
    from workbench.model import fetch_model
    from workbench.tasks import get_task

    if model is None and not task:
        raise typer.BadParameter("name a model (ORG/NAME) or at least one --task")
    with user_errors():
        if model is not None:
            path = fetch_model(model, revision)
            typer.echo(f"{model}: {path}")
        for name in task or []:
            got = get_task(name, download=True)
            typer.echo(f"{name}: {len(got.problems(None, 0))} problems")
