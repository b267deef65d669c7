"""``workbench traces``: graded traces into a resumable run directory."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from workbench.cli.common import Download, ModelSpec, PromptStyle, Threads, fail, open_unit_interval, user_errors


def traces(
    out: Annotated[Path, typer.Option(help="Run directory (created, or resumed when its identity matches).")],
    model: ModelSpec = "organism",
    task: Annotated[str, typer.Option(
        help="organism (addition), organism-sub (subtraction), math (with --data), humaneval, or a benchmark by "
             "name: gsm8k, math500, aime24, aime25, amc23, gpqa-diamond, mbpp.")] = "organism",
    data: Annotated[Path | None, typer.Option(help="math task file: .jsonl, .parquet or save_to_disk dir.")] = None,
    problems: Annotated[int | None, typer.Option(min=1, help="Problems to use (default: all for file tasks).")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Samples per problem.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(callback=open_unit_interval, help="Nucleus mass, in (0, 1].")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 160,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    flush_every: Annotated[int, typer.Option(min=1, help="Finished traces per shard written to disk.")] = 64,
    prompt_style: Annotated[PromptStyle, typer.Option(
        help="auto: the chat template when the tokenizer has one; raw: --raw-template.")] = PromptStyle.auto,
    raw_template: Annotated[str, typer.Option(
        help="Raw prompt with {question}; \\n is a newline. E.g. 'Question: {question}\\nThinking process:'.",
    )] = "{question}",
    prompt_preset: Annotated[str | None, typer.Option(
        help="A model family's prompt: qwen3 (chat template, thinking on), r1-distill (its template opens <think>), "
             "adaras (the AdaRAS reference raw prompt), neat.")] = None,
    download: Download = False,
    allow_unsandboxed: Annotated[bool, typer.Option(
        help="HumanEval: run generated code even where the sandbox cannot cut the network off.")] = False,
    seed: int = 0,
    threads: Threads = 1,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Ray workers, each loading the model once and using --threads threads (one per GPU when there "
                    "are GPUs); >1 starts a local Ray cluster (pip install ray). Default: 1; with --ray-address, "
                    "one per GPU (else per --threads CPUs) of that cluster.",
    )] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="Join the running Ray cluster at this address (e.g. auto, or host:6379) instead of starting one.")] = None,
) -> None:
    """Generate graded traces into a resumable run directory (traces.parquet + manifest.json)."""
    from workbench.model import fetch_model, hub_id, resolve, set_threads
    from workbench.prompting import PromptFormat
    from workbench.store import check_target
    from workbench.tasks import get_task
    from workbench.traces import TraceRunConfig, run_traces

    set_threads(threads)
    if problems is None and task.startswith("organism"):
        problems = 100
    with user_errors(out):
        cfg = TraceRunConfig(
            model=model, task=task, data=str(data) if data else None, problems=problems, samples=samples,
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            flush_every=flush_every, prompt=PromptFormat(style=prompt_style.value, preset=prompt_preset,
                                                           raw_template=raw_template.replace("\\n", "\n")),
            allow_unsandboxed=allow_unsandboxed,
        )
        check_target(out)  # both before Ray's slow start
        if download and hub_id(model) is not None:
            fetch_model(model)
        if download:
            get_task(task, cfg.data, download=True)
        resolve(model)
        with _pool(workers, ray_address, threads) as pool:
            summary = run_traces(out, config=cfg, workers=pool)
    typer.echo(json.dumps(summary.to_json(), indent=2))


def _pool(workers: int | None, address: str | None, threads: int):
    """Nothing for one local process (no Ray needed), else a pool of Ray workers that closes on the way out."""
    if (workers or 1) == 1 and address is None:
        return contextlib.nullcontext()
    from workbench.workers import TraceWorkers

    try:
        return TraceWorkers.start(workers, address, threads)
    except ImportError as exc:
        fail(str(exc))
