"""The ``workbench`` command line.

Example:
    $ workbench run                                # the main job on the bundled organism
    $ workbench organism eval --problems 300 --json
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from workbench.errors import ModelLoadError

app = typer.Typer(help="Find, read and steer the neurons behind reasoning successes and failures.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
organism_app = typer.Typer(help="Train and evaluate the bundled reasoning model organism.", no_args_is_help=True)
app.add_typer(organism_app, name="organism")



@app.callback()
def _main() -> None:
    # Library warnings (a fallback to the slower forward, a shard set aside) reach the terminal.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


Threads = Annotated[int, typer.Option(min=1, help="torch CPU threads (1 is fastest for the organism on 2 cores).")]
ModelSpec = Annotated[str, typer.Option("--model", help="'organism' or a local Hugging Face model folder.")]


class PromptStyle(enum.StrEnum):
    auto = "auto"
    chat = "chat"
    raw = "raw"


def _open_unit_interval(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value} is not in (0, 1]; 1 keeps every token")
    return value


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def _user_errors(out: Path | None = None) -> Iterator[None]:
    """Turns the library's clear errors into one red line and exit code 2; Ctrl-C says how to resume."""
    from workbench.prompting import PromptFormatError
    from workbench.store import RunDirError
    from workbench.tasks import TaskDataError
    from workbench.tasks.sandbox import SandboxUnavailableError

    try:
        yield
    except (ModelLoadError, RunDirError, TaskDataError, PromptFormatError, SandboxUnavailableError,
            ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        saved = f"; every finished trace is saved in {out}" if out is not None else ""
        typer.secho(f"interrupted{saved}. Run the same command again to resume.", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(130) from None


def _load(spec: str, threads: int):
    from workbench.model import load_model, set_threads

    set_threads(threads)
    try:
        return load_model(spec)
    except ModelLoadError as exc:
        _fail(str(exc))


@app.command()
def run(
    model: ModelSpec = "organism",
    out: Annotated[Path, typer.Option(
        help="Run directory: greedy/ and sampled/ trace runs (resumed when there).")] = Path("runs/main"),
    problems: Annotated[int, typer.Option(min=1, help="Held-out problems to sample.")] = 64,
    samples: Annotated[int, typer.Option(min=1, help="Sampled traces per problem.")] = 4,
    show: Annotated[int, typer.Option(min=0, help="Traces to print.")] = 4,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Main job: sample traces of the organism on held-out problems into a run directory, print accuracy and traces."""
    from workbench.organism.evaluate import EvalConfig, behaviour, generate_runs

    t0 = time.time()
    bridge = _load(model, threads)
    cfg = EvalConfig(model=model, problems=problems, samples=samples, seed=seed)
    with _user_errors(out):
        runs = generate_runs(cfg, out, bridge, progress=True)
    g, s = behaviour(runs["greedy"]), behaviour(runs["sampled"])
    typer.echo(f"\nmodel: {model}   held-out problems: {problems}   samples/problem: {samples} "
               f"(T={cfg.temperature})   traces in {out}/greedy and {out}/sampled")
    typer.echo(f"greedy accuracy  {g['accuracy']:.3f}")
    typer.echo(f"sampled accuracy {s['accuracy']:.3f}   (careful {s['accuracy_careful']:.3f}, "
               f"careless {s['accuracy_careless']:.3f}, careless share {s['careless_share']:.3f})")
    typer.echo(f"failure shares: reflection {s['reflection_rate']:.3f}   uncaught slip "
               f"{s['uncaught_slip_rate']:.3f}   oscillation/stagnation {s['oscillation_rate']:.3f}   "
               f"overthinking {s['overthinking_rate']:.3f}")
    tok = bridge.tokenizer
    sampled = runs["sampled"]
    for smp in sampled[:: max(1, len(sampled) // max(1, show))][:show]:
        text = tok.decode(smp.tokens, skip_special_tokens=True)
        mark = "correct" if smp.labels.correct else f"WRONG (gold {smp.problem.answer})"
        typer.echo(f"\n[{mark}] {text}")
    typer.echo(f"\ndone in {time.time() - t0:.1f}s")


@app.command()
def traces(
    out: Annotated[Path, typer.Option(help="Run directory (created, or resumed when its identity matches).")],
    model: ModelSpec = "organism",
    task: Annotated[str, typer.Option(
        help="organism (addition), organism-sub (subtraction), math or humaneval.")] = "organism",
    data: Annotated[Path | None, typer.Option(help="math task file: .jsonl, .parquet or save_to_disk dir.")] = None,
    problems: Annotated[int | None, typer.Option(min=1, help="Problems to use (default: all for file tasks).")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(callback=_open_unit_interval, help="Nucleus mass, in (0, 1].")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 160,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    flush_every: Annotated[int, typer.Option(min=1, help="Finished traces per shard written to disk.")] = 64,
    prompt_style: Annotated[PromptStyle, typer.Option(
        help="auto: the chat template when the tokenizer has one; raw: --raw-template.")] = PromptStyle.auto,
    raw_template: Annotated[str, typer.Option(
        help="Raw prompt with {question}; \\n is a newline. E.g. 'Question: {question}\\nThinking process:'.",
    )] = "{question}",
    allow_unsandboxed: Annotated[bool, typer.Option(
        help="HumanEval: run generated code even where the sandbox cannot cut the network off.")] = False,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Generate graded traces into a resumable run directory (traces.parquet + manifest.json)."""
    from workbench.model import set_threads
    from workbench.prompting import PromptFormat
    from workbench.traces import TraceRunConfig, run_traces

    set_threads(threads)
    if problems is None and task.startswith("organism"):
        problems = 100
    with _user_errors(out):
        cfg = TraceRunConfig(
            model=model, task=task, data=str(data) if data else None, problems=problems, samples=samples,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            flush_every=flush_every, prompt=PromptFormat(style=prompt_style.value,
                                                           raw_template=raw_template.replace("\\n", "\n")),
            allow_unsandboxed=allow_unsandboxed,
        )
        summary = run_traces(cfg, out)
    typer.echo(json.dumps(summary, indent=2))


@organism_app.command("train")
def organism_train(
    out: Annotated[Path | None, typer.Option(
        help="Folder for the checkpoint (resumes if it holds a state file); default: a new "
             "runs/organism-YYYYmmdd-HHMMSS. The shipped data/organism is refused.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the number of steps.")] = None,
    seed: int = 0,
    threads: Threads = 2,
) -> None:
    """Train the organism from scratch (seeded, resumable; the shipped weights used --threads 1)."""
    from workbench.model import set_threads
    from workbench.organism.train import TrainConfig, check_out, train

    if out is None:  # a new folder per run, so that a default never lands on earlier weights
        out = Path("runs") / f"organism-{time.strftime('%Y%m%d-%H%M%S')}"
    set_threads(threads)
    cfg = TrainConfig(seed=seed) if steps is None else TrainConfig(seed=seed, steps=steps)
    try:
        check_out(out)
        typer.echo(f"training into {out} (if interrupted, the same --out resumes it)", err=True)
        path = train(cfg, out)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"saved the organism to {path}")


@organism_app.command("eval")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    threads: Threads = 1,
) -> None:
    """Measure the organism's behaviour targets on held-out problems (traces through a run directory)."""
    from workbench.organism.evaluate import DEFAULT_TEMPERATURE, EvalConfig, evaluate

    if task not in ("organism", "organism-sub"):
        _fail(f"--task must be organism or organism-sub, got {task!r}")
    cfg = EvalConfig(model=model, problems=problems, samples=samples, seed=seed, task=task,
                     temperature=DEFAULT_TEMPERATURE if temperature is None else temperature)
    if out is None:
        out = Path("runs") / f"eval-{Path(model).name}-{task}-{problems}x{samples}-T{cfg.temperature:g}-seed{seed}"
    bridge = _load(model, threads)
    with _user_errors(out):
        report = evaluate(cfg, out, bridge, progress=not as_json)
    report["run_dir"] = str(out)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        typer.echo()
        return
    for key, value in report.items():
        if key != "config":
            shown = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else value
            typer.echo(f"{key:48s} {shown}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
