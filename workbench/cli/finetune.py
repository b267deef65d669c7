"""``workbench organism finetune``: NeuReasoner's remedy fine-tuning (trigger tokens and their fixes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ModelSpec, Threads, fail


def finetune(
    model: Annotated[str, typer.Option(
        "--model", help="The base: organism-v2 (the default; organism-neureasoner was fine-tuned from it, and the "
                        "recipe's traces are v2's), 'organism' or a local Hugging Face model folder.")] = "organism-v2",
    out: Annotated[Path | None, typer.Option(
        help="Folder for the fine-tuned model (resumes if it holds a state file); default: a new "
             "runs/organism-sft-YYYYmmdd-HHMMSS. The shipped data/organism is refused.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    slip_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of examples with a slip + <INTRA>.")] = 0.35,
    oscillation_share: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of examples with an oscillation + <INTER>.")] = 0.35,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters (needs peft) and merge them before saving.")] = False,
    seed: int = 0,
    threads: Threads = 1,
) -> None:
    """Fine-tune a model to follow NeuReasoner's trigger tokens: <INTRA> redoes the step, <INTER> moves on.

    The model then serves the `neureasoner` method of a study (its detectors insert the tokens).
    """
    from workbench.model import set_threads
    from workbench.neureasoner.sft import SftConfig
    from workbench.neureasoner.sft import finetune as run_finetune
    from workbench.organism.train import check_out

    if out is None:
        out = Path("runs") / f"organism-sft-{time.strftime('%Y%m%d-%H%M%S')}"
    set_threads(threads)
    try:
        cfg = SftConfig(steps=steps, batch_size=batch_size, lr=lr, slip_share=slip_share,
                        oscillation_share=oscillation_share, lora=lora, seed=seed)
        check_out(out)
        typer.echo(f"fine-tuning {model} into {out} (if interrupted, the same --out resumes it)", err=True)
        path = run_finetune(model, out, cfg)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"saved the fine-tuned model to {path}")


def follow(
    model: ModelSpec = "organism-neureasoner",
    problems: Annotated[int, typer.Option(min=1, help="Held-out problems to build the cases from.")] = 200,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rates as JSON.")] = False,
    threads: Threads = 1,
) -> None:
    """How a fine-tuned organism follows NeuReasoner's triggers, apart from any detector.

    Held-out traces get an error injected and are cut after its trigger; the model writes the rest
    (greedy). Beside each case: the same prefix without the trigger.
    """
    import json

    from workbench.cli.common import load
    from workbench.neureasoner.following import trigger_following

    rates = trigger_following(load(model, threads), problems=problems, seed=seed)
    if as_json:
        typer.echo(json.dumps(rates, indent=1))
        return
    typer.echo(f"{'case':<26}{'n':>5}{'followed':>10}{'correct':>9}{'correct w/o trigger':>21}")
    for case, r in rates.items():
        typer.echo(f"{case:<26}{r['n']:>5}{r['followed']:>10.3f}{r['correct']:>9.3f}{r['correct_without_trigger']:>21.3f}")
