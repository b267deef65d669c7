"""``workbench figures RUN --out DIR``: every figure a study folder or run directory gives, written in one batch."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Threads, fail


class Format(enum.StrEnum):
    svg = "svg"
    pdf = "pdf"
    png = "png"
    html = "html"


def figures(
    run: Annotated[Path, typer.Argument(help="A study folder (from `workbench eval` / `workbench run`) or one run "
                                             "directory (e.g. OUT/<task>/analysis).")],
    out: Annotated[Path, typer.Option(help="Folder the figure files are written to.")],
    fmt: Annotated[Format, typer.Option("--format", help="svg, pdf and png need a Chrome-family browser "
                                                         "(chromium); html does not.")] = Format.svg,
    paper: Annotated[bool, typer.Option("--paper", help="Paper style: larger fonts, the colour-blind-safe "
                                                        "Okabe-Ito palette, no titles.")] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="Seconds the browser may take to start, and each figure "
                                                         "to render, before the export stops.")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    threads: Threads = 1,
) -> None:
    """Write every figure whose inputs exist; for each missing one, say what is missing and the command that
    makes it."""
    from workbench.figures.catalogue import write_figures
    from workbench.figures.export import BrowserMissing, ExportError
    from workbench.model import set_threads

    if not run.exists():
        fail(f"{run} does not exist; pass a study folder (`workbench eval --out`) or a run directory")
    set_threads(threads)
    try:
        report = write_figures(run, out, fmt.value, paper=paper, startup_timeout_s=timeout, figure_timeout_s=timeout)
    except (BrowserMissing, ExportError) as exc:
        fail(str(exc))
    if as_json:
        json.dump(report.to_dict(), sys.stdout, indent=1)
        typer.echo()
    else:
        for line in report.lines():
            typer.echo(line)
    if report.none_written:
        fail(f"the browser ran and wrote none of the {len(report.catalogue.figures)} figures (above: why)")
