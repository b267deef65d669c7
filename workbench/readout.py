"""Teacher-forced reads of finished sequences: the one home of every pass over a trace's tokens.

A reader names the layers it wants and a function that sees each layer's ``blocks.{L}.mlp.hook_post``
(``read(layer, acts, start)``, ``acts`` of shape ``(batch, chunk, d_mlp)`` holding positions
``start .. start + chunk``); it gets exactly that and nothing of size ``pos x d_vocab``. It may also
(or only: ``read_heads``) ask for each attention head's write into the residual stream,
``||z_h @ W_O[h]||`` from ``blocks.{L}.attn.hook_z`` (``heads(layer, norms, start)``, ``norms`` of shape
``(batch, chunk, head_index)``; see ``workbench.heads`` for why the norm). A pass

* stops right after the last layer it reads: no unembedding, no later layers;
* takes as many sequences as its ``Budget`` allows (rows, and padded tokens per batch), so a batch of
  long traces is split by itself;
* on the bridge, runs long sequences a chunk of positions at a time over the KV cache, so the eager
  attention scores (``heads x chunk x pos``) grow with the length, not with its square;
* on the fast forward (``engine/fast.py``, Llama-family models, ``Budget(backend="fast")``) runs every
  position at once under SDPA's causal kernel, which never forms the ``pos x pos`` scores; it exposes
  MLP neurons only, so a read of heads runs on the bridge (``"auto"``) or is refused (``"fast"``);
* asked for ``p(token)`` (NEAT's p(end)), unembeds a few positions at a time, never the full
  ``batch x pos x d_vocab`` logits.

Sequences are right-padded, so every real token keeps its natural position and the causal mask keeps
padding out of what real tokens see. ``run_forced`` remains for passes that edit neurons and need the
next-token distribution (``next_token_probs``); ``prefix_cache`` serves NEAT's attribution, which runs
only the exit token with gradients over its prefix's keys and values.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> ids = model.tokenizer("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;").input_ids
    >>> window_means(model, [ids], starts=[8], length=4).shape
    torch.Size([1, 4, 512])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge

from workbench.heads import attn_z, head_norms, o_gram
from workbench.neurons import NeuronSet, layer_of, mlp_post

# (layer, its neurons at positions start .. start + chunk of every row of the batch, start)
Reader = Callable[[int, Float[Tensor, "batch chunk d_mlp"], int], None]
# (layer, each head's residual write ||z_h W_O[h]|| at positions start .. start + chunk, float32, start)
HeadReader = Callable[[int, Float[Tensor, "batch chunk head_index"], int], None]
BACKENDS = ("auto", "bridge", "fast")
# logits held at once when a read asks for p(token): 2**24 float32 values, 64 MB (under a hundred positions
# of a 152k vocabulary), so the unembedding never holds batch x pos x d_vocab
LOGITS_PER_STEP = 2**24


@dataclass(frozen=True)
class Budget:
    """How much one teacher-forced pass may hold.

    Attributes:
        batch_size: sequences per pass at most.
        max_tokens_per_batch: padded tokens per pass at most (sequences x the longest); a sequence
            longer than this runs alone.
        chunk_tokens: positions per forward on the bridge; longer batches continue over the KV cache.
            Its eager attention scores hold ``rows x heads x chunk x pos`` floats, at most
            ``max_tokens_per_batch x heads x chunk_tokens`` (512 MB per copy for 16 heads at the
            defaults).
        backend: ``"bridge"`` (TransformerLens's forward, eager attention a chunk at a time: the
            reference; a batch that fits one chunk is bit-identical to a plain forward of the bridge),
            ``"fast"`` (the engine's SDPA forward over the same weights, Llama-family models only; it
            agrees with the bridge to float32 rounding, about 1e-6, which can still move a discrete
            choice made downstream, such as which neurons make a top-k) or ``"auto"`` (fast where the
            architecture allows, else the bridge).

    >>> [list(r) for r in Budget(batch_size=3, max_tokens_per_batch=100).batches([10, 40, 30, 90, 5])]
    [[0, 1], [2], [3], [4]]
    """

    batch_size: int = 64
    max_tokens_per_batch: int = 16_384
    chunk_tokens: int = 512
    backend: str = "bridge"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_tokens_per_batch", "chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"Budget.backend must be one of {BACKENDS}, got {self.backend!r}")

    def batches(self, lengths: Sequence[int]) -> Iterator[range]:
        """Consecutive runs of sequences that fit one pass (order kept, so results keep their rows)."""
        start, width = 0, 0
        for i, n in enumerate(lengths):
            wider = max(width, n)
            if i > start and (i - start >= self.batch_size or (i - start + 1) * wider > self.max_tokens_per_batch):
                yield range(start, i)
                start, wider = i, n
            width = wider
        if start < len(lengths):
            yield range(start, len(lengths))


DEFAULT_BUDGET = Budget()


def device_of(model: TransformerBridge) -> torch.device:
    """Where the model's weights (and so its inputs) live."""
    return next(model.original_model.parameters()).device


def _padded(model: TransformerBridge, sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded ids and their attention mask, on the model's device."""
    width = max(len(s) for s in sequences)
    pad = model.tokenizer.pad_token_id
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(sequences):
        ids[r, : len(s)] = torch.tensor(list(s))
        mask[r, : len(s)] = 1
    return ids.to(device_of(model)), mask.to(device_of(model))


class _Read(Exception):
    """Raised by the last reading hook of a pass that needs no logits: everything asked for is read."""


def backend_of(model: TransformerBridge, budget: Budget, heads: bool = False) -> str:
    """The backend ``budget`` gets on ``model``: ``"auto"`` is the fast forward wherever it applies (never
    for a read of attention heads, which the fast forward does not expose)."""
    from workbench.engine.fast import unsupported_reason

    if heads and budget.backend == "fast":
        raise ValueError("Budget.backend='fast' cannot read attention heads (blocks.{L}.attn.hook_z): the fast "
                         "forward exposes MLP neurons only; use 'bridge' or 'auto' (which reads heads on the bridge)")
    if heads:
        return "bridge"
    if budget.backend != "auto":
        if budget.backend == "fast" and (why := unsupported_reason(model.original_model.config)):
            raise ValueError(f"Budget.backend='fast' cannot read this model: {why}; use 'bridge' or 'auto'")
        return budget.backend
    return "fast" if unsupported_reason(model.original_model.config) is None else "bridge"


@torch.no_grad()
def read_mlp(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    read: Reader | None,
    budget: Budget = DEFAULT_BUDGET,
    p_of: Sequence[int] | None = None,
    heads: HeadReader | None = None,
) -> Float[Tensor, "batch pos"] | None:
    """One teacher-forced pass over ``sequences`` (one batch: see ``Budget.batches``) reading ``layers``.

    ``read(layer, acts, start)`` gets each layer's ``mlp.hook_post`` (positions ``start ..``, padding
    included), in the model's dtype and on its device, once per chunk of positions. Without ``p_of``
    the pass stops after the highest layer in ``layers`` and returns None. With ``p_of`` (a token id
    per sequence) every layer runs and the result is ``p(p_of[r])`` as the next token at every
    position of row ``r`` (float32, CPU), from the final norm and the unembedding a few positions at a
    time: the full ``batch x pos x d_vocab`` logits never exist. With ``heads``, the same pass hands
    ``heads(layer, norms, start)`` each of those layers' per-head residual writes (``read_heads``);
    ``read`` may then be None. Heads are read on the bridge only (``backend_of``).
    """
    if not layers and p_of is None:
        raise ValueError("a read must name at least one layer or ask for p_of")
    if p_of is not None and len(p_of) != len(sequences):
        raise ValueError(f"got {len(p_of)} token ids in p_of for {len(sequences)} sequences")
    if read is None and heads is None and layers:
        raise ValueError("a read of layers needs a reader: pass read (MLP neurons), heads, or both")
    wanted = set(layers)
    last = model.cfg.n_layers - 1 if p_of is not None else max(wanted)
    ids, mask = _padded(model, sequences)
    targets = None if p_of is None else torch.tensor(list(p_of), device=ids.device)
    if backend_of(model, budget, heads=heads is not None) == "fast":
        from workbench.engine.backends import fast_decoder

        # Over the weights as they are, never a packed copy: reads are tall matmuls that BLAS runs well, a
        # second copy of a 1.7B model's weights would be 7 GB, and a read gives the same bits in every process.
        dec = fast_decoder(model.original_model, pack=False)
        hidden = dec.read(ids, last, lambda layer, act: read(layer, act, 0) if layer in wanted and read else None)
        if targets is None:
            return None
        return _token_probs(dec.final_norm(hidden), dec.lm_head, targets, model.cfg.d_vocab)
    width, chunk = ids.shape[1], budget.chunk_tokens
    start = [0]

    def hook(act: Float[Tensor, "batch chunk d_mlp"], hook: HookPoint) -> None:
        layer = layer_of(hook.name)
        if layer in wanted and read is not None:
            read(layer, act, start[0])
        if layer == last and targets is None:
            raise _Read

    # hook_z fires before its block's MLP, so the pass still stops at the last layer's mlp.hook_post
    grams = {} if heads is None else {layer: o_gram(model.blocks[layer].attn.W_O) for layer in wanted}

    def z_hook(z: Float[Tensor, "batch chunk head_index d_head"], hook: HookPoint) -> None:
        layer = layer_of(hook.name)
        heads(layer, head_norms(z, grams[layer]), start[0])

    fwd_hooks = [(mlp_post(layer), hook) for layer in sorted(wanted | {last})]
    fwd_hooks += [(attn_z(layer), z_hook) for layer in sorted(grams)]

    cache = None
    if width > chunk:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.original_model.config)
    decoder, probs = model.original_model.get_decoder(), []
    with model.hooks(fwd_hooks=fwd_hooks):
        for lo in range(0, width, chunk):
            start[0] = lo
            hi = min(lo + chunk, width)
            try:
                out = decoder(input_ids=ids[:, lo:hi], attention_mask=mask[:, :hi], past_key_values=cache,
                              use_cache=cache is not None)
            except _Read:
                continue
            if targets is None:
                raise RuntimeError("the forward pass ended before its last reading hook ran")
            probs.append(_token_probs(out.last_hidden_state, model.original_model.get_output_embeddings(), targets,
                                      model.cfg.d_vocab))
    return None if targets is None else torch.cat(probs, dim=1)


def read_heads(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[int],
    read: HeadReader,
    budget: Budget = DEFAULT_BUDGET,
) -> None:
    """One teacher-forced pass (on the bridge) handing ``read(layer, norms, start)`` each of ``layers``'
    per-head residual writes ``||z_h @ W_O[h]||``, ``norms`` of shape ``(batch, chunk, head_index)``
    (float32, positions ``start ..``, padding included); the pass stops after the highest layer.

    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> got = []
    >>> read_heads(model, [[2, 5, 7, 9]], [1], lambda layer, norms, start: got.append((layer, norms.shape)))
    >>> got
    [(1, torch.Size([1, 4, 4]))]
    """
    read_mlp(model, sequences, layers, None, budget, heads=read)


@torch.no_grad()
def prefix_cache(
    model: TransformerBridge, prefixes: Sequence[Sequence[int]], budget: Budget = DEFAULT_BUDGET,
) -> tuple[object, Tensor]:
    """The KV cache of right-padded ``prefixes`` (a chunk of positions at a time; no logits) and their
    attention mask, ready for one more token per row at position ``len(prefix)`` (pass that position
    as ``position_ids`` and the mask with a column of ones appended)."""
    from transformers import DynamicCache

    ids, mask = _padded(model, prefixes)
    cache, decoder = DynamicCache(config=model.original_model.config), model.original_model.get_decoder()
    for lo in range(0, ids.shape[1], budget.chunk_tokens):
        hi = min(lo + budget.chunk_tokens, ids.shape[1])
        decoder(input_ids=ids[:, lo:hi], attention_mask=mask[:, :hi], past_key_values=cache, use_cache=True)
    return cache, mask


def _token_probs(
    hidden: Float[Tensor, "batch pos d_model"], unembed: Callable[[Tensor], Tensor], targets: Tensor, d_vocab: int,
) -> Float[Tensor, "batch pos"]:
    """Softmax probability of ``targets[r]`` at every position of row r from the final-normed residual,
    unembedding at most ``LOGITS_PER_STEP`` logits at a time (one position of every row at least)."""
    rows, width, _ = hidden.shape
    step = max(1, LOGITS_PER_STEP // (rows * d_vocab))
    ar = torch.arange(rows, device=hidden.device)
    out = []
    for lo in range(0, width, step):
        logits = unembed(hidden[:, lo : lo + step]).float()
        out.append(torch.softmax(logits, -1)[ar, :, targets[ar]].cpu())
    return torch.cat(out, dim=1)


@torch.no_grad()
def run_forced(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], fwd_hooks=(),
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a right-padded batch under TransformerLens ``fwd_hooks`` (reads or edits); hooks removed after.

    The one pass that computes the unembedding: use ``read_mlp`` to read activations alone.
    """
    ids, mask = _padded(model, sequences)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        return model.original_model(input_ids=ids, attention_mask=mask).logits


def window_means(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    length: int,
    budget: Budget = DEFAULT_BUDGET,
) -> Float[Tensor, "batch n_layers d_mlp"]:
    """Mean ``mlp.hook_post`` over ``length`` tokens from ``starts[i]`` in each sequence, all layers."""
    if len(starts) != len(sequences):
        raise ValueError(f"got {len(starts)} starts for {len(sequences)} sequences")
    if any(s + length > len(q) for s, q in zip(starts, sequences, strict=True)):
        raise ValueError(f"a window of {length} tokens runs past the end of its sequence")
    n_layers, out = model.cfg.n_layers, []
    for rows in budget.batches([len(s) for s in sequences]):
        idx = torch.stack([torch.arange(starts[r], starts[r] + length) for r in rows])  # (batch, length)
        window = torch.zeros(len(rows), n_layers, length, model.cfg.d_mlp)

        def grab(layer: int, act: Float[Tensor, "batch chunk d_mlp"], start: int, idx=idx, window=window) -> None:
            inside = (idx >= start) & (idx < start + act.shape[1])
            r, j = torch.nonzero(inside, as_tuple=True)
            window[r, layer, j] = act[r.to(act.device), (idx[r, j] - start).to(act.device)].float().cpu()

        read_mlp(model, [sequences[r] for r in rows], range(n_layers), grab, budget)
        out.append(window.mean(2))
    return torch.cat(out)


def gather_positions(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    budget: Budget = DEFAULT_BUDGET,
) -> Float[Tensor, "batch n_layers d_mlp"]:
    """``mlp.hook_post`` at one position per sequence, all layers."""
    return window_means(model, sequences, positions, length=1, budget=budget)


def next_token_probs(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[int],
    add: Float[Tensor, "n_layers d_mlp"] | None = None,
    budget: Budget = DEFAULT_BUDGET,
) -> Float[Tensor, "batch d_vocab"]:
    """Next-token distribution at ``positions[i]``, optionally adding ``add[L]`` to layer L's neurons there."""
    out = []
    for rows in budget.batches([len(s) for s in sequences]):
        seqs, pos = [sequences[r] for r in rows], torch.tensor([positions[r] for r in rows])
        ar = torch.arange(len(seqs))
        hooks = []
        if add is not None:
            for layer in range(model.cfg.n_layers):

                def push(act: Float[Tensor, "batch pos d_mlp"], hook: HookPoint, vec=add[layer], ar=ar, pos=pos):
                    act = act.clone()
                    act[ar, pos.to(act.device)] += vec.to(act.device, act.dtype)
                    return act

                hooks.append((mlp_post(layer), push))
        logits = run_forced(model, seqs, hooks)
        out.append(torch.softmax(logits[ar, pos.to(logits.device)].float(), -1).cpu())
    return torch.cat(out)


def token_activations(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    budget: Budget = DEFAULT_BUDGET,
) -> Iterator[tuple[range, Float[Tensor, "batch pos n_neurons"]]]:
    """Every layer's ``mlp.hook_post`` at every position, a batch at a time: (rows, acts).

    ``acts[:, :, L * d_mlp + i]`` is neuron ``i`` of layer ``L``; positions past a sequence's end are
    padding. Memory grows with the batch, never with the number of sequences.
    """
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    for rows in budget.batches([len(s) for s in sequences]):
        seqs = [sequences[r] for r in rows]
        acts = torch.zeros(len(seqs), max(len(s) for s in seqs), n_layers * d_mlp)

        def grab(layer: int, act: Float[Tensor, "batch chunk d_mlp"], start: int, acts=acts) -> None:
            acts[:, start : start + act.shape[1], layer * d_mlp : (layer + 1) * d_mlp] = act.float().cpu()

        read_mlp(model, seqs, range(n_layers), grab, budget)
        yield rows, acts


def neuron_activations(
    model: TransformerBridge, sequences: Sequence[Sequence[int]], neurons: NeuronSet, budget: Budget = DEFAULT_BUDGET,
) -> list[Float[np.ndarray, "_pos neuron"]]:
    """Each sequence's activations of ``neurons`` (columns in set order) at every token, float32.

    Only the neurons' layers are read and only their columns copied; the pass stops after the last
    of those layers."""
    by_layer = neurons.by_layer()  # layer -> (columns in the set, d_mlp indices)
    out: list[np.ndarray] = []
    for rows in budget.batches([len(s) for s in sequences]):
        seqs = [sequences[r] for r in rows]
        acts = torch.zeros(len(seqs), max(len(s) for s in seqs), len(neurons))

        def grab(layer: int, act: Float[Tensor, "batch chunk d_mlp"], start: int, acts=acts) -> None:
            columns, index = by_layer[layer]
            at = slice(start, start + act.shape[1])
            acts[:, at, list(columns)] = act[:, :, torch.tensor(index, device=act.device)].float().cpu()

        read_mlp(model, seqs, list(by_layer), grab, budget)
        out += [acts[r, : len(s)].numpy() for r, s in enumerate(seqs)]
    return out
