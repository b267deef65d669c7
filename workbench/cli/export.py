"""``workbench export-steering RUN --out FILE.gguf|.safetensors``: AdaRAS steering as a control vector for serving.

The edit is built by ``AdarasSteering.edit``, as a study builds it, but ungated: a control vector is
on for every sequence (see ``workbench.control_vector`` and docs/control_vectors.md).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from workbench.cli.analyses import AsJson, show
from workbench.cli.common import Threads, fail, load, user_errors
from workbench.store.paths import RunPaths

UNCONDITIONAL = ("unconditional: AdaRAS's gate steers only the questions it predicts will fail; this vector "
                 "steers every sequence")
EVERY_POSITION = ("every position: llama.cpp and repeng add it at every token, the prompt included; the "
                  "workbench engine pushes from the last prompt token on")


class Scale(enum.StrEnum):
    raw = "raw"
    max = "max"


def export_steering(
    run: Annotated[Path, typer.Argument(help="A ranked run directory (RUN/neurons/<set>.json, from "
                                             "`workbench rank --method rcn RUN`).")],
    out: Annotated[Path, typer.Option(help="The file to write: FILE.gguf (llama.cpp --control-vector, repeng) or "
                                           "FILE.safetensors (blocks.{L}.hook_resid_post vectors).")],
    k: Annotated[int, typer.Option(min=1, help="How many of the set's neurons, best first (paper K = 50).")] = 50,
    alpha: Annotated[float, typer.Option(help="Steering strength (reference 0.3).")] = 0.3,
    neurons: Annotated[str, typer.Option(help="The set under RUN/neurons/: rcn, rcn-random, rcn-probe or "
                                              "rcn-unfiltered.")] = "rcn",
    scale: Annotated[Scale, typer.Option(help="S' = S (raw, reference code) or S / max|S| (max).")] = Scale.raw,
    seed: Annotated[int, typer.Option(help="Draws rcn-random's signs.")] = 0,
    model: Annotated[str | None, typer.Option(help="The model whose W_out maps neurons to the residual stream "
                                                   "(default: the run's own).")] = None,
    model_hint: Annotated[str | None, typer.Option(help="GGUF controlvector.model_hint (default: the model's "
                                                        "HF model_type).")] = None,
    skip_layer0: Annotated[bool, typer.Option("--skip-layer0", help="GGUF only: leave out layer 0's vector, "
                                                                    "which llama.cpp cannot apply.")] = False,
    as_json: AsJson = False,
    threads: Threads = 1,
) -> None:
    """Export AdaRAS steering (alpha * S' on the top-k neurons) as a per-layer residual control vector."""
    from workbench.adaras.steering import AdarasSteering
    from workbench.control_vector import FORMATS, from_edits
    from workbench.evaluation.methods import MethodContext
    from workbench.store.rundir import path_hash, run_model_spec

    if out.suffix not in FORMATS:
        fail(f"--out {out}: write {' or '.join(f'FILE{s}' for s in FORMATS)} (got suffix {out.suffix!r})")
    if skip_layer0 and out.suffix != ".gguf":
        fail("--skip-layer0 applies to .gguf only (safetensors keeps every layer)")
    with user_errors():
        spec = model if model is not None else run_model_spec(run)
    bridge = load(spec, threads)
    with user_errors():
        steering = AdarasSteering(neurons=neurons, k=k, alpha=alpha, scale=scale.value, gate=False, seed=seed)
        edit = steering.edit(MethodContext(bridge, run, None))
        source = RunPaths(run).neuron_set(neurons)
        vector = from_edits(bridge, [edit], {
            "method": "adaras", "run": str(run), "neurons": {"set": neurons, "k": k, "sha256": path_hash(source)},
            "alpha": alpha, "scale": scale.value, "seed": seed, "model": spec, "gated": False,
            "run_has_gate": RunPaths(run).gate.is_dir(), "applies": f"{UNCONDITIONAL}; {EVERY_POSITION}"})
        written = vector.save(out, **({"model_hint": model_hint, "skip_layer0": skip_layer0}
                                      if out.suffix == ".gguf" else {}))
    norms = {str(layer): round(float(np.linalg.norm(vector.directions[layer])), 6) for layer in vector.layers}
    show({"file": str(written), "format": out.suffix[1:], "model": spec, "neurons": f"{neurons} top {k}",
          "alpha": alpha, "scale": scale.value, "layer_norms": norms,
          "skipped_layer0": bool(skip_layer0 and vector.directions[0].any()),
          "unconditional": UNCONDITIONAL, "positions": EVERY_POSITION}, as_json)
