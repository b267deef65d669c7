"""NEAT's attribution: how much each MLP neuron raises log p(end of thinking) at an exit position.

``Imp(v) = log p(end | with v's contribution) - log p(end | without)`` at position ``p`` (the token
before the closing marker), where ``end`` is the closing marker's first token as the trace wrote it
(``token_ids[think_end]``: a tokenizer may write ``</think>`` differently after a space, and the
trace says which it was). Two estimators of the same quantity:

* **ablation** (exact): the neuron's ``blocks.L.mlp.hook_post`` value at ``p`` is set to zero and
  the rest of the model re-run. Only position ``p`` changes, so the prefix is run once with a KV
  cache and each batch row ablates one neuron on the single token ``p``;
* **gradient** (first order): ``a_p * d log p(end) / d a_p``, one backward pass per batch of traces.

The reference code uses a third, cheaper reading (the neuron's direct path through the final norm
with its variance frozen); the two here include every downstream path at ``p``.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> ids = model.tokenizer("Q: 4 + 5 = ? <think> carefully 4 + 5 = 9 ; </think> 9").input_ids
    >>> imp = ablation_importance(model, [ids], [13], [ids[14]], layers=[3])
    >>> imp.shape, bool(np.isnan(imp[0, 0])), bool(np.isfinite(imp[0, 3 * 512]))
    ((1, 2048), True, True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats
from tqdm.auto import tqdm
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from workbench.neurons import layer_of, mlp_post
from workbench.readout import Budget, device_of, prefix_cache


def _check(sequences, positions, end_ids, n_layers: int, layers) -> list[int]:
    if not len(sequences) == len(positions) == len(end_ids):
        raise ValueError(f"got {len(sequences)} sequences, {len(positions)} positions and {len(end_ids)} end ids")
    for s, p in zip(sequences, positions, strict=True):
        if not 1 <= p < len(s):
            raise ValueError(f"exit position {p} lies outside its sequence of {len(s)} tokens (need 1 <= p < len)")
    layers = list(range(n_layers)) if layers is None else sorted(set(int(x) for x in layers))
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers {layers} outside the model's {n_layers} layers")
    return layers


def _logp_end(model: TransformerBridge, caches: dict, token: int, pos: int, end: int, rows: int,
              hooks=()) -> torch.Tensor:
    """log p(end) after ``token`` at ``pos`` for ``rows`` copies under ``hooks``, reusing the prefix's KV
    cache (``caches[1]``) expanded to ``rows`` copies once and cut back to the prefix after each use."""
    hf, dev = model.original_model, device_of(model)
    if rows not in caches:
        caches[rows] = copy.deepcopy(caches[1])
        caches[rows].batch_repeat_interleave(rows)
    cache = caches[rows]
    try:
        with model.hooks(fwd_hooks=list(hooks)):
            logits = hf(input_ids=torch.full((rows, 1), token, device=dev), past_key_values=cache,
                        position_ids=torch.full((rows, 1), pos, device=dev)).logits
    finally:
        cache.crop(-1)  # drop the token just appended: the cache holds the prefix again
    return torch.log_softmax(logits[:, -1].float(), -1)[:, end].cpu()


def _rows_within(model: TransformerBridge, prefix: int, rows: int, max_bytes: int) -> int:
    """How many copies of a ``prefix``-token KV cache (at most ``rows``) fit in ``max_bytes``."""
    cfg = model.original_model.config
    n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    per_row = 2 * cfg.num_hidden_layers * n_kv * head_dim * max(prefix, 1) * model.original_model.dtype.itemsize
    return max(1, min(rows, max_bytes // per_row))


@torch.no_grad()
def ablation_importance(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    end_ids: Sequence[int],
    layers: Sequence[int] | None = None,
    batch_size: int = 512,
    progress: bool = False,
    max_cache_bytes: int = 2**31,
) -> Float[np.ndarray, "trace n_neurons"]:
    """Exact Imp of every neuron of ``layers`` at ``positions[i]`` of each sequence; NaN elsewhere.

    Each forward ablates ``batch_size`` neurons at most, fewer where the prefix's KV cache copied to
    that many rows would pass ``max_cache_bytes`` (a long trace's cache is large: 1.8 GB per row for
    a Qwen3-1.7B shape at 8k tokens in float32), down to one neuron per forward."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    layers = _check(sequences, positions, end_ids, n_layers, layers)
    out = np.full((len(sequences), n_layers * d_mlp), np.nan, dtype=np.float32)
    for i in tqdm(range(len(sequences)), desc="ablation", disable=not progress, unit="trace"):
        seq, p, end = list(sequences[i]), int(positions[i]), int(end_ids[i])
        # the prefix's keys and values only, a chunk of positions at a time: its logits are never needed
        caches = {1: prefix_cache(model, [seq[:p]])[0]}
        base = float(_logp_end(model, caches, seq[p], p, end, 1)[0])
        step = _rows_within(model, p, batch_size, max_cache_bytes)
        for layer in layers:
            for lo in range(0, d_mlp, step):
                idx = torch.arange(lo, min(lo + step, d_mlp))

                def zero(act, hook: HookPoint, idx=idx):
                    act = act.clone()
                    act[torch.arange(len(idx)), -1, idx.to(act.device)] = 0
                    return act

                ablated = _logp_end(model, caches, seq[p], p, end, len(idx), [(mlp_post(layer), zero)])
                out[i, layer * d_mlp + lo : layer * d_mlp + lo + len(idx)] = (base - ablated).numpy()
    return out


def gradient_importance(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    end_ids: Sequence[int],
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[np.ndarray, "trace n_neurons"]:
    """First-order Imp, ``a_p * d log p(end at p) / d a_p``, of every neuron of ``layers``; NaN elsewhere.

    Gradients reach the activations through a zero tensor added at each hook, so no parameter's
    ``.grad`` is touched and every downstream path (later neurons included) is counted.
    """
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    layers = _check(sequences, positions, end_ids, n_layers, layers)
    hf = model.original_model
    out = np.full((len(sequences), n_layers * d_mlp), np.nan, dtype=np.float32)
    budget = Budget(batch_size=batch_size)
    for batch in tqdm(list(budget.batches([int(p) for p in positions])), desc="gradient", disable=not progress,
                      unit="batch"):
        prefixes = [list(sequences[i][: int(positions[i])]) for i in batch]
        cache, mask = prefix_cache(model, prefixes, budget)
        dev = mask.device
        pos = torch.tensor([int(positions[i]) for i in batch], device=dev)
        token = torch.tensor([[int(sequences[i][int(positions[i])])] for i in batch], device=dev)
        ends = torch.tensor([int(end_ids[i]) for i in batch], device=dev)
        rows = torch.arange(len(batch), device=dev)
        deltas: dict[int, torch.Tensor] = {}
        acts: dict[int, torch.Tensor] = {}

        def probe(act, hook: HookPoint, deltas=deltas, acts=acts):
            layer = layer_of(hook.name)
            delta = torch.zeros_like(act, requires_grad=True)
            deltas[layer], acts[layer] = delta, act.detach()[:, -1]
            return act + delta

        # Only the exit token runs with gradients, over the prefix's cached keys and values: the graph
        # holds one position, and the unembedding is applied to that position alone.
        with torch.enable_grad(), model.hooks(fwd_hooks=[(mlp_post(layer), probe) for layer in layers]):
            step_mask = torch.cat([mask, mask.new_ones(len(batch), 1)], 1)
            hidden = hf.get_decoder()(input_ids=token, attention_mask=step_mask, position_ids=pos[:, None],
                                      past_key_values=cache).last_hidden_state
            logits = hf.get_output_embeddings()(hidden[:, -1])
            logp = torch.log_softmax(logits.float(), -1)[rows, ends].sum()
            grads = torch.autograd.grad(logp, [deltas[layer] for layer in layers])
        for layer, g in zip(layers, grads, strict=True):
            imp = (acts[layer].float() * g[:, -1].float()).cpu().numpy()
            out[list(batch), layer * d_mlp : (layer + 1) * d_mlp] = imp
    return out


def importance(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    end_ids: Sequence[int],
    estimator: str,
    layers: Sequence[int] | None = None,
    ablation_batch: int = 512,
    batch_size: int = 16,
    progress: bool = False,
) -> Float[np.ndarray, "trace n_neurons"]:
    """Imp by ``estimator`` (``"ablation"`` or ``"gradient"``)."""
    if estimator == "ablation":
        return ablation_importance(model, sequences, positions, end_ids, layers, ablation_batch, progress)
    if estimator == "gradient":
        return gradient_importance(model, sequences, positions, end_ids, layers, batch_size, progress)
    raise ValueError(f"estimator must be 'ablation' or 'gradient', got {estimator!r}")


def agreement(
    exact: Float[np.ndarray, "trace n_neurons"], approx: Float[np.ndarray, "trace n_neurons"], top: int = 50,
) -> dict[str, float]:
    """How well two Imp estimates agree over neurons (NaN columns ignored).

    ``attribution_spearman``: Spearman correlation of the per-neuron mean Imp over traces;
    ``attribution_spearman_per_trace``: the mean of per-trace correlations;
    ``attribution_top_overlap``: the share of the ``top`` neurons by mean Imp that both pick.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(3, 100))
    >>> agreement(x, 2 * x + 0.01 * rng.normal(size=x.shape))["attribution_spearman"] > 0.99
    True
    """
    keep = ~(np.isnan(exact).any(0) | np.isnan(approx).any(0))
    a, b = exact[:, keep].astype(np.float64), approx[:, keep].astype(np.float64)
    if a.shape[1] < 3:
        return {"attribution_spearman": float("nan"), "attribution_spearman_per_trace": float("nan"),
                "attribution_top_overlap": float("nan")}
    ma, mb = a.mean(0), b.mean(0)
    per = [stats.spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    k = min(top, a.shape[1])
    overlap = len(set(np.argsort(-ma)[:k].tolist()) & set(np.argsort(-mb)[:k].tolist())) / k
    return {"attribution_spearman": float(stats.spearmanr(ma, mb).statistic),
            "attribution_spearman_per_trace": float(np.nanmean(per)), "attribution_top_overlap": overlap}
