"""``workbench cache|rank|probe|validate``: the analyses of a trace run, written into its run directory."""

from __future__ import annotations

import enum
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from workbench.cli.common import Threads, load, user_errors
from workbench.store.paths import RunPaths

Run = Annotated[Path, typer.Argument(help="A finished trace run directory (from `workbench traces` or `run`).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON.")]


def _ints(value: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} takes comma-separated integers, got {value!r}") from None


def show(report: dict[str, Any], as_json: bool) -> None:
    """A report as JSON or as an aligned two-column table."""
    if as_json:
        json.dump(report, sys.stdout, indent=2, default=str)
        typer.echo()
        return
    for key, value in report.items():
        if isinstance(value, float):
            value = "nan" if math.isnan(value) else f"{value:.4f}"
        elif isinstance(value, list | dict):
            value = json.dumps(value, default=str)
            value = value if len(value) <= 100 else value[:97] + "..."
        typer.echo(f"{key:40s} {value}")


class Backend(enum.StrEnum):
    auto = "auto"
    fast = "fast"
    bridge = "bridge"


def cache(
    run: Run,
    token_neurons: Annotated[Path | None, typer.Option(
        help="A NeuronSet file of the neurons to keep per token (default: the most variable ones).")] = None,
    top_variance: Annotated[int, typer.Option(min=1, help="How many of the most variable neurons to keep per token.")]
    = 512,
    layers: Annotated[str, typer.Option(help="Comma-separated layers to keep in full at every token (large).")] = "",
    early_k: Annotated[str, typer.Option(help="The k of the first-k-thinking-tokens spans.")] = "1,2,4,8,16,32,64",
    batch_size: Annotated[int, typer.Option(min=1, help="Traces per forward pass at most.")] = 16,
    max_tokens_per_batch: Annotated[int, typer.Option(
        min=1, help="Padded tokens per forward pass at most (a batch of long traces is split).")] = 16_384,
    chunk_tokens: Annotated[int, typer.Option(
        min=1, help="Positions per forward on the bridge backend (longer traces continue over the KV cache).")]
    = 512,
    backend: Annotated[Backend, typer.Option(
        help="bridge: TransformerLens's forward (the reference); fast: the engine's SDPA forward (Llama-family "
             "models; equal to float32 rounding); auto: fast where the architecture allows.")]
    = "bridge",
    shard_traces: Annotated[int, typer.Option(min=1, help="Traces per shard (the unit of resume).")] = 256,
    heads: Annotated[bool, typer.Option(
        "--heads", help="Also keep every attention head's residual write ||z_h W_O[h]|| per token (read on the "
                        "bridge; NeuReasoner's units=('neurons', 'heads') ranks them).")] = False,
    model: Annotated[str | None, typer.Option(
        help="The model that reads the traces (default: the run's own; another needs --off-policy).")] = None,
    off_policy: Annotated[bool, typer.Option(
        help="Read another model's traces on purpose (same tokenizer), as AdaRAS's off-policy setting.")] = False,
    as_json: AsJson = False,
    threads: Threads = 1,
) -> None:
    """Cache MLP neuron activations of a trace run into RUN/activations (resumable)."""
    from workbench.model import set_threads
    from workbench.store import CacheConfig, cache_activations

    set_threads(threads)
    reader = load(model, threads) if model is not None else None
    with user_errors(run):
        cfg = CacheConfig(token_neurons=str(token_neurons) if token_neurons else None, top_variance=top_variance,
                          layers=_ints(layers, "--layers"), early_k=_ints(early_k, "--early-k"),
                          batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch,
                          chunk_tokens=chunk_tokens, backend=str(backend), shard_traces=shard_traces, heads=heads)
        store = cache_activations(run, config=cfg, model=reader, progress=not as_json, off_policy=off_policy)
        root = store.root
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        show({"cache": str(root), "traces": len(store), "spans": list(store.spans),
              "token_neurons": len(store.token_neurons), "full_layers": list(cfg.layers),
              **({"token_heads": len(store.heads)} if store.has_heads else {}),
              "megabytes": round(size / 2**20, 2)}, as_json)


class Method(enum.StrEnum):
    rcn = "rcn"
    exit = "exit"
    mon = "mon"


def rank(
    run: Run,
    method: Annotated[Method, typer.Option(help="rcn: AdaRAS; exit: NEAT; mon: NeuReasoner (one set per failure).")],
    k: Annotated[int | None, typer.Option(min=1, help="Neurons to keep (default: the method's own).")] = None,
    labeller: Annotated[str, typer.Option(
        help="mon: 'truth' reads the task's own failure labels (a task without them falls back to 'auto'); "
             "'auto' labels the decoded text (steps at blank lines, repeats, thinking after the answer).")] = "truth",
    exit_token: Annotated[str | None, typer.Option(
        help="exit: the token the exit neurons raise (default: the closing think marker); e.g. '<|im_end|>' for a "
             "model that never thinks in a marked span.")] = None,
    units: Annotated[str, typer.Option(
        help="mon: the units ranked, comma-separated: 'neurons' (MLP), 'heads' (attention heads; the cache needs "
             "--heads), or both; chosen heads go to RUN/neureasoner/heads-<type>.json.")] = "neurons",
    as_json: AsJson = False,
    threads: Threads = 1,
) -> None:
    """Rank neurons of a cached run by one paper's method; writes RUN/neurons/<set>.json beside its controls."""
    from dataclasses import replace

    from workbench.model import set_threads

    set_threads(threads)
    heads: dict[str, Any] = {}  # mon with heads: the head sets beside the neuron sets
    with user_errors(run):
        if method is Method.rcn:
            from workbench.adaras import AdarasConfig, rank_rcn

            sets = {"rcn": rank_rcn(run, config=AdarasConfig() if k is None else AdarasConfig(k=k),
                                    progress=not as_json)}
        elif method is Method.exit:
            from workbench.neat import NeatConfig, rank_exit

            cfg = NeatConfig(exit_token=exit_token)
            cfg = cfg if k is None else replace(cfg, max_neurons=k)
            sets = {"exit": rank_exit(run, config=cfg, progress=not as_json)}
        else:
            from workbench.neureasoner import NeuReasonerConfig, rank_mon

            cfg = NeuReasonerConfig(labeller=labeller)
            cfg = cfg if k is None else replace(cfg, top_k=k)
            cfg = replace(cfg, units=tuple(u.strip() for u in units.split(",") if u.strip()))
            sets = {f"mon-{t}": s for t, s in rank_mon(run, config=cfg, progress=not as_json).items()}
            if "heads" in cfg.units:
                from workbench.heads import HeadSet

                for t in cfg.types:
                    path = RunPaths(run).heads(t)
                    heads[f"heads-{t}"] = {"file": str(path), "heads": HeadSet.load(path).names()}
    show({name: {"file": str(RunPaths(run).neuron_set(name)), "neurons": len(s),
                 "layers": {str(layer): n for layer, n in s.layer_counts().items()}}
          for name, s in sets.items()} | heads, as_json)


def probe(run: Run, as_json: AsJson = False, threads: Threads = 1) -> None:
    """Correctness probes of a cached run (AUROC with CIs, the early curve, the AdaRAS gate, controls)."""
    from workbench.adaras import probe_report
    from workbench.model import set_threads

    set_threads(threads)
    with user_errors(run):
        report = probe_report(run, progress=not as_json).to_json()
    show(report, as_json)


def validate(run: Run, as_json: AsJson = False, threads: Threads = 1) -> None:
    """Every analysis of an organism run checked against its planted truth and controls (RUN/validate.json)."""
    from workbench.model import set_threads
    from workbench.validation import validate as run_validation

    set_threads(threads)
    with user_errors(run):
        report = run_validation(run, progress=not as_json).to_json()
    if as_json:
        show(report, True)
        return
    show({k: v for k, v in report.items() if k != "targets"}, False)
    typer.echo("\ntargets:")
    for key, t in report["targets"].items():
        mark = "met   " if t["met"] else "MISSED"
        value = t["value"] if not isinstance(t["value"], float) else f"{t['value']:.4f}"
        typer.echo(f"  {mark} {key:36s} {value}  (target {t['target']})")
