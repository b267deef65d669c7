"""``workbench run`` (the whole pipeline on the bundled organism) and ``workbench eval`` (any study)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Download, Threads, fail, load, user_errors
from workbench.store.paths import StudyPaths

DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "studies" / "organism.toml"


Figures = Annotated[bool, typer.Option(
    help="Write the study's figures into OUT/figures (SVG; HTML when no Chromium is installed).")]


def _run_study(config: Path, out: Path, as_json: bool, threads: int, figures: bool = True, download: bool = False,
               ) -> list[dict]:
    from workbench.evaluation import load_study, markdown, run_study

    with user_errors():
        study = load_study(config, download=download)  # checked whole before anything is written or loaded
    for task in study.tasks:
        if task.analysis.run.disjoint_from is not None:
            typer.echo(f"{task.name}: {task.analysis.run.problems or 'all the'} analysis problems drawn (seed "
                       f"{task.analysis.run.seed}) from the problems the {task.run.problems or 'all'} evaluation "
                       "problems leave", err=True)
    model = load(study.model, threads)
    with user_errors(out):
        rows = run_study(out, study=study, progress=not as_json, model=model)
    if as_json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        typer.echo()
    else:
        paths = StudyPaths(out)
        typer.echo(markdown(rows, json.loads(paths.not_applied.read_text())))
        typer.echo(f"results: {paths.results_md}, {paths.results_json}, {paths.results_parquet}")
    if figures:
        from workbench.figures.catalogue import write_study_figures

        report = write_study_figures(out, "svg", model=model)  # figures are a by-product: only a bug raises
        for line in report.lines():
            typer.echo(f"figures: {line}", err=as_json)  # --json keeps stdout for the JSON alone
        if report.none_written:
            fail(f"figures: a browser ran ({report.export.browser}) and wrote none of the study's "
                 f"{len(report.catalogue.figures)} figures (above: why); the results stand in {out}; retry with "
                 f"`workbench figures {out} --out {report.out}`")
    return rows


def run(
    config: Annotated[Path, typer.Option(help="The study to run (TOML).")] = DEFAULT_STUDY,
    out: Annotated[Path, typer.Option(help="Output folder (resumed when there).")] = Path("runs/main"),
    show: Annotated[int, typer.Option(min=0, help="Reference traces to print.")] = 3,
    threads: Threads = 1,
    figures: Figures = True,
) -> None:
    """Main job: the whole pipeline on the organism. Traces, activation store, RCN / exit / MoN neurons,
    then every intervention and baseline on the same problems and seeds, and the paired results table."""
    import time

    from workbench.evaluation import load_study
    from workbench.store import load_traces

    t0 = time.time()
    _run_study(config, out, as_json=False, threads=threads, figures=figures)
    study = load_study(config)
    task = study.tasks[0]
    traces = load_traces(out / task.name / study.reference).to_pylist()
    for row in traces[:: max(1, len(traces) // max(1, show))][:show]:
        mark = "correct" if row["correct"] else f"WRONG (gold {row['gold']})"
        typer.echo(f"\n[{task.name} / {study.reference}, {mark}] {row['prompt']}{row['text']}")
    typer.echo(f"\nanalysis runs (neurons, probes, gate, detectors): {out}/<task>/analysis; one trace run per "
               f"method: {out}/<task>/<method>")
    if figures:
        typer.echo(f"figures: {StudyPaths(out).figures}")
    typer.echo(f"done in {time.time() - t0:.0f}s. Explore it: workbench app {out} (or make app)")


def evaluate(
    config: Annotated[Path, typer.Option("--config", help="The study file (TOML), e.g. studies/organism.toml.")],
    out: Annotated[Path, typer.Option(
        help="Output folder: a run per task x method, results.parquet/.json/.md (resumed when there).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json instead of the table.")] = False,
    threads: Threads = 1,
    figures: Figures = True,
    download: Download = False,
) -> None:
    """Run a study: analyses, then every method on the same problems and seeds; print the paired results table."""
    _run_study(config, out, as_json, threads, figures, download)
