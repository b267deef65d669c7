"""Per-token activations of chosen neurons over a run's traces: from the activation store when it kept
them, else by a teacher-forced pass of the model the run was generated with.

The store keeps every token only for its ``token_neurons`` (the most variable ones by default); a
neuron outside them, or custom text, is read by replaying the tokens
(``readout.neuron_activations``: hooks on the neurons' layers alone, the pass stopping after the last).

Example:
    >>> from workbench import load_model
    >>> from workbench.readout import neuron_activations
    >>> from workbench.neurons import NeuronSet
    >>> model = load_model("organism")
    >>> ids = model.tokenizer("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;").input_ids
    >>> [a.shape for a in neuron_activations(model, [ids, ids[:4]], NeuronSet.from_pairs([(3, 7), (0, 2)]))]
    [(20, 2), (4, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from workbench.neurons import NeuronSet
from workbench.readout import Budget, neuron_activations


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
    return neuron_activations(model, token_ids, neurons, Budget(batch_size=16))
