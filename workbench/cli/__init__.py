"""The ``workbench`` command line: thin Typer commands over the library, one module per group.

Example:
    $ workbench run                                # the whole pipeline on the bundled organism
    $ workbench organism eval --problems 300 --json
    $ workbench cache runs/main/sampled && workbench rank --method rcn runs/main/sampled
    $ workbench finetune runs/math --out runs/math-sft --lora && workbench follow runs/math-2 --model runs/math-sft
    $ workbench figures runs/main --out runs/main/figures --format pdf --paper
    $ workbench app runs/main                      # the browser workbench on a finished study
"""

from __future__ import annotations

import logging

import typer

from workbench.cli import analyses, download, evaluation, figures, finetune, organism, traces
from workbench.cli import app as app_command
from workbench.cli import export as export_command

app = typer.Typer(help="Find, read and steer the neurons behind reasoning successes and failures.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _main() -> None:
    # Library warnings (a fallback to the slower forward, a shard set aside) reach the terminal.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


app.command()(evaluation.run)
app.command()(traces.traces)
app.command()(download.download)
app.add_typer(organism.app, name="organism")
app.command()(finetune.finetune)
app.command()(finetune.follow)
for command in (analyses.cache, analyses.rank, analyses.probe, analyses.validate):
    app.command()(command)
app.command(name="eval")(evaluation.evaluate)
app.command()(figures.figures)
app.command(name="app")(app_command.app)
app.command(name="export-steering")(export_command.export_steering)


def main() -> None:  # pragma: no cover
    app()
