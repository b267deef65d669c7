"""NeuReasoner's remedy fine-tuning (trigger tokens and their fixes) and how a model follows the triggers.

``workbench finetune RUN`` and ``workbench follow RUN`` work on any trace run; ``workbench organism
finetune|follow`` are the organism's data recipe and cases on the same trainer and measurement.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ModelSpec, Threads, fail, user_errors

Lora = Annotated[bool, typer.Option(help="Train LoRA adapters (needs peft) and merge them before saving.")]
Steps = Annotated[int, typer.Option(min=1, help="Optimiser steps.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Examples per step.")]
LearningRate = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")]
SlipShare = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of examples with a slip + <INTRA>.")]
OscillationShare = Annotated[float, typer.Option(min=0.0, max=1.0,
                                                 help="Share of examples with a repeat + <INTER>.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the rates as JSON.")]


def _train(model: str, out: Path, data, cfg) -> Path:
    from workbench.neureasoner.trainer import check_out
    from workbench.neureasoner.trainer import finetune as run_finetune
    from workbench.organism.train import ORGANISM_FILE

    check_out(out)
    typer.echo(f"fine-tuning {model} into {out} (if interrupted, the same --out resumes it)", err=True)
    # organism.json: the organism's trace recipe, which its evaluation reads (absent elsewhere: not copied)
    return run_finetune(model, out, data, cfg, keep_files=(ORGANISM_FILE,))


def finetune(
    run: Annotated[Path, typer.Argument(help="A trace run (`workbench traces`) whose traces the examples are "
                                             "made of: correct ones, with errors injected.")],
    out: Annotated[Path, typer.Option(help="Folder for the fine-tuned model (resumes if it holds a state file).")],
    model: Annotated[str | None, typer.Option(
        "--model", help="The base to fine-tune; default: the run's model.")] = None,
    steps: Steps = 300,
    batch_size: BatchSize = 8,
    lr: LearningRate = 1e-4,
    slip_share: SlipShare = 0.35,
    oscillation_share: OscillationShare = 0.35,
    lora: Lora = False,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Fine-tune a model on a trace run to follow NeuReasoner's triggers: <INTRA> redoes the step, <INTER> moves on.

    The model then serves the `neureasoner` method of a study on that task (its detectors insert the tokens).
    """
    from workbench.model import set_threads
    from workbench.neureasoner.sft import TraceRunData
    from workbench.neureasoner.trainer import SftConfig
    from workbench.traces import run_config

    set_threads(threads)
    with user_errors():
        base = model if model is not None else run_config(run).model
        cfg = SftConfig(steps=steps, batch_size=batch_size, lr=lr, lora=lora, seed=seed)
        data = TraceRunData(run=str(run), slip_share=slip_share, oscillation_share=oscillation_share)
        path = _train(base, out, data, cfg)
    typer.echo(f"saved the fine-tuned model to {path}")


def follow(
    run: Annotated[Path, typer.Argument(help="A trace run of the task whose traces the cases are made of "
                                             "(best one the model was not fine-tuned on).")],
    model: Annotated[str, typer.Option("--model", help="The fine-tuned model (a folder).")],
    traces: Annotated[int, typer.Option(min=1, help="Traces of the run to build cases from.")] = 100,
    max_new_tokens: Annotated[int | None, typer.Option(
        min=1, help="Tokens to write after each prefix; default: the run's max_new_tokens.")] = None,
    seed: int = 0,
    as_json: AsJson = False,
    threads: Threads = 1,
) -> None:
    """How a fine-tuned model follows NeuReasoner's triggers on any task, apart from any detector.

    The run's traces get an error injected and are cut after its trigger; the model writes the rest
    (greedy). Beside each case: the same prefix without the trigger.
    """
    from workbench.cli.common import load
    from workbench.neureasoner.following import RunJudge, run_cases, trigger_following
    from workbench.traces import run_config

    bridge = load(model, threads)
    with user_errors():
        cfg = run_config(run)
        stops = cfg.prompt.resolve(bridge.tokenizer).stop_ids
        cases = run_cases(run, bridge.tokenizer, traces=traces, seed=seed)
        rates = trigger_following(bridge, cases, RunJudge(run, bridge.tokenizer),
                                  max_new_tokens=max_new_tokens or cfg.max_new_tokens, stop_ids=stops)
    _show(rates, as_json)


def organism_finetune(
    model: Annotated[str, typer.Option(
        "--model", help="The base: organism-v2 (the default; organism-neureasoner was fine-tuned from it, and the "
                        "recipe's traces are v2's), 'organism' or a local Hugging Face model folder.")] = "organism-v2",
    out: Annotated[Path | None, typer.Option(
        help="Folder for the fine-tuned model (resumes if it holds a state file); default: a new "
             "runs/organism-sft-YYYYmmdd-HHMMSS. The shipped data/organism is refused.")] = None,
    steps: Steps = 2000,
    batch_size: BatchSize = 32,
    lr: LearningRate = 1e-3,
    slip_share: SlipShare = 0.35,
    oscillation_share: OscillationShare = 0.35,
    lora: Lora = False,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Fine-tune the organism to follow NeuReasoner's trigger tokens: <INTRA> redoes the step, <INTER> moves on.

    The organism's own traces with its planted failures injected (how data/organism-neureasoner was made);
    the model then serves the `neureasoner` method of a study (its detectors insert the tokens).
    """
    from workbench.model import set_threads
    from workbench.neureasoner.trainer import SftConfig
    from workbench.organism.sft_data import OrganismData

    if out is None:
        out = Path("runs") / f"organism-sft-{time.strftime('%Y%m%d-%H%M%S')}"
    set_threads(threads)
    try:
        cfg = SftConfig(steps=steps, batch_size=batch_size, lr=lr, lora=lora, seed=seed)
        data = OrganismData(slip_share=slip_share, oscillation_share=oscillation_share)
        path = _train(model, out, data, cfg)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"saved the fine-tuned model to {path}")


def organism_follow(
    model: ModelSpec = "organism-neureasoner",
    problems: Annotated[int, typer.Option(min=1, help="Held-out problems to build the cases from.")] = 200,
    seed: int = 0,
    as_json: AsJson = False,
    threads: Threads = 1,
) -> None:
    """How a fine-tuned organism follows NeuReasoner's triggers, apart from any detector.

    Held-out traces get an error injected and are cut after its trigger; the model writes the rest
    (greedy). Beside each case: the same prefix without the trigger.
    """
    from workbench.cli.common import load
    from workbench.organism.sft_data import following

    _show(following(load(model, threads), problems=problems, seed=seed), as_json)


def _show(rates: dict, as_json: bool) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(rates, indent=1))
        return
    typer.echo(f"{'case':<26}{'n':>5}{'followed':>10}{'correct':>9}{'correct w/o trigger':>21}")
    for case, r in rates.items():
        typer.echo(f"{case:<26}{r['n']:>5}{r['followed']:>10.3f}{r['correct']:>9.3f}{r['correct_without_trigger']:>21.3f}")
