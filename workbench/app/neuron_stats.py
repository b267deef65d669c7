"""What a neuron page shows about one neuron during reasoning, as arrays and tables (no plotting here).

* its activation over each trace's thinking, resampled onto a normalised position (0 = first thinking
  token, 1 = last), so traces of different lengths average together (``trajectory``);
* the token contexts where it fires hardest (``top_contexts``);
* the tokens it pushes up or down directly through the unembedding, ``W_out[L, i] @ W_U``
  (``logit_effects``; the final norm's scale is left out, as in Neuronpedia's logit lists).

Example:
    >>> import numpy as np
    >>> series = [np.arange(10.0), np.ones(4)]
    >>> t = trajectory("L0.1", series, [(0, 10), (0, 4)], [True, False], bins=2)
    >>> t.mean["correct"], t.mean["incorrect"], t.n["correct"]
    ((2.0, 7.0), (1.0, 1.0), (1, 1))
    >>> [(c.row, c.pos, c.value) for c in top_contexts(series, k=2)]     # one per trace by default
    [(0, 9, 9.0), (1, 0, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

from workbench.figures.neurons import Span
from workbench.figures.neurons import trajectory as trajectory  # re-exported for the neuron page
from workbench.prompting import ThinkSpans


def thinking_span(row: dict) -> Span:
    """A trace's thinking tokens ``[think_start + 1, think_end)`` (to the end when thinking never closed).

    >>> thinking_span({"think_start": 3, "think_end": 9, "prompt_len": 4, "token_ids": list(range(12))})
    (4, 9)
    """
    return ThinkSpans.of(row).bounds(row["prompt_len"], len(row["token_ids"]))


@dataclass(frozen=True)
class Context:
    """One token where a neuron fired: trace ``row``, position ``pos``, the activation ``value``."""

    row: int
    pos: int
    value: float


def top_contexts(
    series: Sequence[Float[np.ndarray, " _pos"]], k: int = 10, spans: Sequence[Span] | None = None,
    largest: bool = True, per_trace: int = 1,
) -> list[Context]:
    """The ``k`` highest (or lowest) activations over all traces, at most ``per_trace`` from one trace.

    ``spans`` restricts each trace to its own ``[start, end)`` (e.g. the thinking tokens).
    """
    found: list[Context] = []
    for r, values in enumerate(series):
        lo, hi = spans[r] if spans is not None else (0, len(values))
        seg = np.asarray(values, np.float64)[lo:hi]
        if not len(seg):
            continue
        order = np.argsort(-seg if largest else seg, kind="stable")[:per_trace]
        found += [Context(r, lo + int(i), float(seg[i])) for i in order]
    found.sort(key=lambda c: -c.value if largest else c.value)
    return found[:k]


@dataclass(frozen=True)
class LogitEffects:
    """Tokens a neuron promotes (largest ``W_out @ W_U``) and suppresses (smallest), with the values."""

    promoted: list[tuple[str, float]]
    suppressed: list[tuple[str, float]]


@torch.no_grad()
def logit_effects(model, layer: int, index: int, k: int = 10) -> LogitEffects:
    """Direct effect of neuron ``index`` of ``layer`` on the logits, per unit of activation.

    Uses TransformerLens's ``W_out`` (n_layers, d_mlp, d_model) and ``W_U`` (d_model, d_vocab).
    """
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise ValueError(f"neuron {layer}.{index} is outside this model ({n_layers} layers x {d_mlp} neurons)")
    effect = (model.W_out[layer, index].float() @ model.W_U.float()).cpu()  # (d_vocab,)
    k = min(k, effect.shape[0])
    pieces = model.tokenizer.convert_ids_to_tokens(list(range(effect.shape[0])))
    top, bottom = torch.topk(effect, k), torch.topk(-effect, k)
    return LogitEffects([(pieces[i], float(effect[i])) for i in top.indices.tolist()],
                        [(pieces[i], float(effect[i])) for i in bottom.indices.tolist()])
