"""What a neuron page shows about one neuron during reasoning, as arrays and tables (no plotting here).

* its activation over each trace's thinking, resampled onto a normalised position (0 = first thinking
  token, 1 = last), so traces of different lengths average together (``normalised_trajectories``);
* the token contexts where it fires hardest (``top_contexts``);
* the tokens it pushes up or down directly through the unembedding, ``W_out[L, i] @ W_U``
  (``logit_effects``; the final norm's scale is left out, as in Neuronpedia's logit lists).

Example:
    >>> import numpy as np
    >>> series = [np.arange(10.0), np.ones(4)]
    >>> normalised_trajectories(series, [(0, 10), (0, 4)], bins=2).tolist()
    [[2.0, 7.0], [1.0, 1.0]]
    >>> [(c.row, c.pos, c.value) for c in top_contexts(series, k=2)]
    [(0, 9, 9.0), (0, 8, 8.0)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float

Span = tuple[int, int]  # [start, end) token positions


def thinking_span(row: dict) -> Span:
    """A trace's thinking tokens ``[think_start + 1, think_end)`` (to the end when thinking never closed).

    >>> thinking_span({"think_start": 3, "think_end": 9, "prompt_len": 4, "token_ids": list(range(12))})
    (4, 9)
    """
    lo = row["think_start"] + 1 if row.get("think_start") is not None else row["prompt_len"]
    hi = row["think_end"] if row.get("think_end") is not None else len(row["token_ids"])
    return lo, max(hi, lo)


def normalised_trajectories(
    series: Sequence[Float[np.ndarray, " pos"]], spans: Sequence[Span], bins: int = 20,
) -> Float[np.ndarray, "trace bin"]:
    """Each trace's mean activation in ``bins`` equal slices of its span; NaN for an empty slice."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    out = np.full((len(series), bins), np.nan)
    for r, (values, (lo, hi)) in enumerate(zip(series, spans, strict=True)):
        seg = np.asarray(values, np.float64)[lo:hi]
        if not len(seg):
            continue
        which = np.minimum((np.arange(len(seg)) * bins) // len(seg), bins - 1)
        sums = np.bincount(which, seg, minlength=bins)
        counts = np.bincount(which, minlength=bins)
        with np.errstate(invalid="ignore"):
            out[r] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def group_mean(values: Float[np.ndarray, "trace bin"], groups: Sequence[bool]) -> dict[str, np.ndarray]:
    """Mean and standard error per bin of the ``True`` (``"correct"``) and ``False`` (``"incorrect"``) rows.

    >>> out = group_mean(np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]), [True, True, False])
    >>> out["correct_mean"].tolist(), out["incorrect_mean"].tolist()
    ([2.0, 3.0], [0.0, 0.0])
    """
    mask = np.asarray(groups, bool)
    out = {}
    for name, sel in (("correct", mask), ("incorrect", ~mask)):
        v = values[sel]
        n = np.sum(~np.isnan(v), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, np.nansum(v, axis=0) / np.maximum(n, 1), np.nan)
            sd = np.sqrt(np.nansum((v - mean) ** 2, axis=0) / np.maximum(n - 1, 1))
        out[f"{name}_mean"], out[f"{name}_sem"], out[f"{name}_n"] = mean, sd / np.sqrt(np.maximum(n, 1)), n
    return out


@dataclass(frozen=True)
class Context:
    """One token where a neuron fired: trace ``row``, position ``pos``, the activation ``value``."""

    row: int
    pos: int
    value: float


def top_contexts(
    series: Sequence[Float[np.ndarray, " pos"]], k: int = 10, spans: Sequence[Span] | None = None,
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
