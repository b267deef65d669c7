"""``workbench organism train|eval|finetune|follow``: the bundled model organism."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ModelSpec, Threads, fail, load, user_errors
from workbench.cli.finetune import organism_finetune, organism_follow

app = typer.Typer(help="Train and evaluate the bundled reasoning model organism.", no_args_is_help=True)


@app.command("train")
def organism_train(
    out: Annotated[Path | None, typer.Option(
        help="Folder for the checkpoint (resumes if it holds a state file); default: a new "
             "runs/organism-YYYYmmdd-HHMMSS. The shipped data/organism is refused.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of steps.")] = None,
    seed: int = 0,
    like: Annotated[str | None, typer.Option(
        help="Train with the config recorded by a saved organism (e.g. organism-v2 or organism-v1, or a "
             "folder); default: the shipped organism's (v4, CONFIG_V4).")] = None,
    threads: Threads = 2,
) -> None:
    """Train the organism from scratch (seeded, resumable; the shipped weights used --threads 1)."""
    import dataclasses

    from workbench.model import resolve, set_threads
    from workbench.organism.train import CONFIG_V4, check_out, config_of, train

    if out is None:  # a new folder per run, so that a default never lands on earlier weights
        out = Path("runs") / f"organism-{time.strftime('%Y%m%d-%H%M%S')}"
    set_threads(threads)
    try:
        cfg = CONFIG_V4 if like is None else config_of(resolve(like))
        cfg = dataclasses.replace(cfg, seed=seed, **({} if steps is None else {"steps": steps}))
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    try:
        check_out(out)
        typer.echo(f"training into {out} (if interrupted, the same --out resumes it)", err=True)
        path = train(cfg, out)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"saved the organism to {path}")


@app.command("eval")
def organism_eval(
    model: ModelSpec = "organism",
    out: Annotated[Path | None, typer.Option(
        help="Run directory for the greedy/ and sampled/ traces (resumed when there); default: "
             "runs/eval-<model>-<problems>x<samples>-T<temperature>-seed<seed>.")] = None,
    problems: Annotated[int, typer.Option(min=10, help="Held-out problems.")] = 300,
    samples: Annotated[int, typer.Option(min=1, help="Sampled traces per problem.")] = 8,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Sampling temperature.")] = None,
    seed: int = 1234,
    task: Annotated[str, typer.Option(help="organism (addition) or organism-sub (subtraction).")] = "organism",
    validate: Annotated[bool, typer.Option(
        help="Run `workbench validate` on the sampled run (or read its validate.json) and carry its probe and "
             "NEAT figures; --no-validate: behaviour and the teacher-forced checks only.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    threads: Threads = 1,
) -> None:
    """Measure the organism's behaviour targets on held-out problems (traces through a run directory).

    Steering while sampling is measured by the study harness (`workbench run`), the analyses by
    `workbench validate`, which this command runs on its sampled run."""
    from workbench.organism.evaluate import DEFAULT_TEMPERATURE, EvalConfig, evaluate

    if task not in ("organism", "organism-sub"):
        fail(f"--task must be organism or organism-sub, got {task!r}")
    cfg = EvalConfig(model=model, problems=problems, samples=samples, seed=seed, task=task, validate=validate,
                     temperature=DEFAULT_TEMPERATURE if temperature is None else temperature)
    if out is None:
        out = Path("runs") / f"eval-{Path(model).name}-{task}-{problems}x{samples}-T{cfg.temperature:g}-seed{seed}"
    bridge = load(model, threads)
    with user_errors(out):
        report = evaluate(cfg, out, bridge, progress=not as_json)
    report["run_dir"] = str(out)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        typer.echo()
        return
    for key, value in report.items():
        if key not in ("config", "trace_digests"):  # both in --json; the digests are for the tests
            shown = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else value
            typer.echo(f"{key:48s} {shown}")


app.command("finetune")(organism_finetune)
app.command("follow")(organism_follow)
