"""``workbench app RUN_DIR``: the browser workbench (Streamlit) on a study folder, one task of it, or a trace run.

It replaces itself with ``streamlit run app.py -- RUN_DIR`` (``app.py`` of this checkout), so Ctrl-C
stops Streamlit directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import fail

APP = Path(__file__).resolve().parents[2] / "app.py"


def command(run: Path, port: int | None, headless: bool) -> list[str]:
    """The ``streamlit run`` command line (a list for ``os.execv``)."""
    options = ["--server.headless", "true"] if headless else []
    options += ["--server.port", str(port)] if port is not None else []
    return [sys.executable, "-m", "streamlit", "run", str(APP), *options, "--", str(run)]


def app(
    run: Annotated[Path, typer.Argument(help="A study folder (`workbench run --out DIR`), one task of it, or a "
                                             "trace run.")] = Path("runs/main"),
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to serve on (default: Streamlit's 8501).")]
    = None,
    headless: Annotated[bool, typer.Option(help="Do not open a browser window.")] = False,
) -> None:
    """Open the browser workbench: runs, traces, neuron pages, fluctuations, probes, interventions."""
    if not run.is_dir():
        fail(f"{run} is not a folder; make a study with `workbench run --out {run}` or a trace run with "
             f"`workbench traces --out {run}`")
    if not APP.is_file():
        fail(f"{APP} is missing: the app runs from a checkout of the repository (pip install -e .)")
    argv = command(run, port, headless)
    os.execv(argv[0], argv)
