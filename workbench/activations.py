"""Teacher-forced passes over finished sequences: MLP neuron reads and position-targeted edits.

Sequences are right-padded, so every real token keeps its natural position and the causal mask
keeps padding out of what real tokens see; only the positions asked for are copied out, never
whole layers. A pass that reads activations alone (``run_forced(..., logits=False)``) stops right
after the last layer it reads: it never reaches the unembedding, so nothing of size
``pos x d_vocab`` is made, and layers past the last one read are not run.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> ids = model.tokenizer("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;").input_ids
    >>> window_means(model, [ids], starts=[8], length=4).shape
    torch.Size([1, 4, 512])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from workbench.neurons import NeuronSet, layer_of, mlp_post


def _padded(model: TransformerBridge, sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in sequences)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.tensor(list(s))
        mask[r, : len(s)] = 1
    return ids, mask


class _Read(Exception):
    """Raised by the last reading hook of a pass that needs no logits: everything asked for is read."""


@torch.no_grad()
def run_forced(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], fwd_hooks=(), logits: bool = True,
) -> Float[Tensor, "batch pos d_vocab"] | None:
    """Logits of a right-padded batch under TransformerLens ``fwd_hooks``; hooks are removed after.

    With ``logits=False`` the hooks are only read from, and the pass stops once the last of them has
    run (after the highest layer they name): no unembedding, no later layers; returns None.
    """
    ids, mask = _padded(model, sequences)
    device = next(model.original_model.parameters()).device
    hooks = list(fwd_hooks)
    if not logits:
        if not hooks:
            raise ValueError("a pass without logits must read something: pass fwd_hooks")
        last = max(layer_of(name) for name, _ in hooks)
        pending = sum(layer_of(name) == last for name, _ in hooks)
        count = [0]

        def stop_after(fn):
            def hook(act, hook):
                out = fn(act, hook=hook)
                count[0] += 1
                if count[0] == pending:
                    raise _Read
                return out
            return hook

        hooks = [(name, stop_after(fn) if layer_of(name) == last else fn) for name, fn in hooks]
    try:
        with model.hooks(fwd_hooks=hooks):
            out = model.original_model(input_ids=ids.to(device), attention_mask=mask.to(device))
    except _Read:
        return None
    if not logits:
        raise RuntimeError("the forward pass ended before its last reading hook ran")
    return out.logits


def window_means(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    length: int,
    batch_size: int = 64,
) -> Float[Tensor, "batch n_layers d_mlp"]:
    """Mean ``mlp.hook_post`` over ``length`` tokens from ``starts[i]`` in each sequence, all layers."""
    if len(starts) != len(sequences):
        raise ValueError(f"got {len(starts)} starts for {len(sequences)} sequences")
    out = []
    for b in range(0, len(sequences), batch_size):
        seqs, st = sequences[b : b + batch_size], starts[b : b + batch_size]
        idx = torch.stack([torch.arange(s, s + length) for s in st])  # (batch, length)
        if any(s + length > len(q) for s, q in zip(st, seqs, strict=True)):
            raise ValueError(f"a window of {length} tokens runs past the end of its sequence")
        got: dict[int, Tensor] = {}

        def grab(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint, idx=idx, got=got):
            rows = torch.arange(act.shape[0])[:, None]
            got[layer_of(hook.name)] = act[rows, idx.to(act.device)].mean(1).float().cpu()

        hooks = [(mlp_post(layer), grab) for layer in range(model.cfg.n_layers)]
        run_forced(model, seqs, hooks, logits=False)
        out.append(torch.stack([got[layer] for layer in range(model.cfg.n_layers)], dim=1))
    return torch.cat(out)


def gather_positions(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    batch_size: int = 64,
) -> Float[Tensor, "batch n_layers d_mlp"]:
    """``mlp.hook_post`` at one position per sequence, all layers."""
    return window_means(model, sequences, positions, length=1, batch_size=batch_size)


def next_token_probs(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    add: Float[Tensor, "n_layers d_mlp"] | None = None,
    batch_size: int = 64,
) -> Float[Tensor, "batch d_vocab"]:
    """Next-token distribution at ``positions[i]``, optionally adding ``add[L]`` to layer L's neurons there."""
    out = []
    for b in range(0, len(sequences), batch_size):
        seqs, pos = sequences[b : b + batch_size], torch.tensor(positions[b : b + batch_size])
        rows = torch.arange(len(seqs))
        hooks = []
        if add is not None:
            for layer in range(model.cfg.n_layers):

                def push(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint, vec=add[layer], rows=rows, pos=pos):
                    act = act.clone()
                    act[rows, pos.to(act.device)] += vec.to(act.device, act.dtype)
                    return act

                hooks.append((mlp_post(layer), push))
        logits = run_forced(model, seqs, hooks)
        out.append(torch.softmax(logits[rows, pos.to(logits.device)].float(), -1).cpu())
    return torch.cat(out)


def token_activations(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 64,
) -> Iterator[tuple[range, Float[Tensor, "batch pos n_neurons"]]]:
    """Every layer's ``mlp.hook_post`` at every position, a batch at a time: (rows, acts).

    ``acts[:, :, L * d_mlp + i]`` is neuron ``i`` of layer ``L``; positions past a sequence's end are
    padding. Memory grows with the batch, never with the number of sequences.
    """
    n_layers = model.cfg.n_layers
    for b in range(0, len(sequences), batch_size):
        seqs = sequences[b : b + batch_size]
        got: dict[int, Tensor] = {}

        def grab(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint, got=got):
            got[layer_of(hook.name)] = act.detach().float().cpu()

        run_forced(model, seqs, [(mlp_post(layer), grab) for layer in range(n_layers)], logits=False)
        yield range(b, b + len(seqs)), torch.cat([got[layer] for layer in range(n_layers)], dim=-1)


def neuron_activations(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], neurons: NeuronSet, batch_size: int = 64,
) -> list[Float[np.ndarray, "_pos neuron"]]:
    """Each sequence's activations of ``neurons`` (columns in set order) at every token, float32.

    Only the neurons' layers are hooked and only their columns copied; the pass stops after the last
    of those layers."""
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
