"""Per-token activations of chosen neurons over a run's traces: from the activation store when it kept
them, else by a teacher-forced pass of the model the run was generated with.

The store keeps every token only for its ``token_neurons`` (the most variable ones by default); a
neuron outside them, or custom text, is read by replaying the tokens (``activations.run_forced``,
hooks on the neurons' layers alone, removed after the pass, which stops after the last of those layers).

Example:
    >>> from workbench import load_model
    >>> from workbench.neurons import NeuronSet
    >>> model = load_model("organism")
    >>> ids = model.tokenizer("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;").input_ids
    >>> [a.shape for a in forced_acts(model, [ids, ids[:4]], NeuronSet.from_pairs([(3, 7), (0, 2)]))]
    [(20, 2), (4, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from workbench.activations import run_forced
from workbench.neurons import NeuronSet, layer_of, mlp_post


def forced_acts(
    model, sequences: Sequence[Sequence[int]], neurons: NeuronSet, batch_size: int = 16,
) -> list[Float[np.ndarray, "_pos neuron"]]:
    """Each sequence's activations of ``neurons`` (columns in set order) at every token, float32."""
    by_layer = neurons.by_layer()  # layer -> (columns in the set, d_mlp indices)
    out: list[np.ndarray] = []
    for b in range(0, len(sequences), batch_size):
        seqs = sequences[b : b + batch_size]
        width = max(len(s) for s in seqs)
        acts = torch.zeros(len(seqs), width, len(neurons))

        def grab(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint, acts=acts) -> None:
            columns, index = by_layer[layer_of(hook.name)]
            acts[:, :, list(columns)] = act[:, :, torch.tensor(index, device=act.device)].float().cpu()

        run_forced(model, seqs, [(mlp_post(layer), grab) for layer in by_layer], logits=False)
        out += [acts[r, : len(s)].numpy() for r, s in enumerate(seqs)]
    return out


def store_columns(store, neurons: NeuronSet) -> list[int] | None:
    """Where ``neurons`` sit among the store's per-token columns, or None when any of them is not kept."""
    d_mlp = store.d_mlp
    where = {f: c for c, f in enumerate(store.token_neurons.flat(d_mlp))}
    flat = neurons.flat(d_mlp)
    return [where[f] for f in flat] if all(f in where for f in flat) else None


def run_acts(
    store, rows: Sequence[int], neurons: NeuronSet, token_ids: Sequence[Sequence[int]], model=None,
) -> list[Float[np.ndarray, "_pos neuron"]]:
    """Per-token activations of ``neurons`` for ``rows`` of a cached run (``token_ids`` are those rows' tokens).

    Read from ``store`` when it kept every one of them; otherwise ``model`` replays the tokens (a clear
    ValueError when no model is given).
    """
    if store is not None:
        cols = store_columns(store, neurons)
        if cols is not None:
            return [store.token_acts(r)[:, cols] for r in rows]
    if model is None:
        raise ValueError("these neurons were not kept per token in the activation cache; load the run's model "
                         "to read them by a teacher-forced pass")
    return forced_acts(model, token_ids, neurons)
