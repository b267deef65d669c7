"""``workbench organism finetune``: NeuReasoner's remedy fine-tuning (trigger tokens and their fixes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import ModelSpec, Threads, fail


def finetune(
    model: ModelSpec = "organism",
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
