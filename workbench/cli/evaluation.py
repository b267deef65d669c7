"""``workbench eval``: a study (methods x tasks, paired) run into a folder, its results table printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Threads, load, user_errors


def evaluate(
    config: Annotated[Path, typer.Option("--config", help="The study file (TOML), e.g. studies/organism.toml.")],
    out: Annotated[Path, typer.Option(
        help="Output folder: a run per task x method, results.parquet/.json/.md (resumed when there).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json instead of the table.")] = False,
    threads: Threads = 1,
) -> None:
    """Run a study: analyses, then every method on the same problems and seeds; print the paired results table."""
    from workbench.evaluation import load_study, markdown, run_study

    with user_errors():
        study = load_study(config)  # checked whole before anything is written or loaded
    model = load(study.model, threads)
    with user_errors(out):
        rows = run_study(study, out, progress=not as_json, model=model)
    if as_json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        typer.echo()
    else:
        typer.echo(markdown(rows))
        typer.echo(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.parquet'}")
