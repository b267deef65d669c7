"""The two forward passes the engine can decode with, behind one small interface.

* ``BridgeBackend``: the TransformerBridge's own forward (any architecture TransformerLens
  supports), edits and reads through ``blocks.{L}.mlp.hook_post`` hooks that are attached for each
  forward pass only, an HF ``DynamicCache`` kept right-aligned so rows can be refilled.
* ``FastBackend``: ``FastDecoder`` (Llama-family models only) over the same weights, with a
  preallocated left-aligned cache; the same edits and reads at the same site.

Both take (slot rows, tokens) and return next-token logits; the engine keeps every other state.

Example:
    >>> from workbench import load_model
    >>> type(make_backend(load_model("organism"), "auto", None)).__name__
    'FastBackend'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

from workbench.engine import cache as kv
from workbench.engine.fast import FastDecoder, unsupported_reason

log = logging.getLogger(__name__)


def _pad(prompts: Sequence[Sequence[int]], pad_id: int, left: bool) -> Int[Tensor, "n pos"]:
    """Prompts as one batch, padded on the left (right-aligned rows) or on the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        start = width - len(p) if left else 0
        ids[i, start : start + len(p)] = torch.tensor(list(p))
    return ids


class BridgeBackend:
    def __init__(self, model: TransformerBridge, hooks) -> None:
        self.bridge, self.hf, self.hooks = model, model.original_model, hooks
        self.device = next(self.hf.parameters()).device
        self.cache: DynamicCache | None = None

    def _forward(self, **kwargs):
        # Hooks on for this forward pass only: a paused or abandoned generation must leave the
        # (possibly shared) model exactly as it found it.
        with self.bridge.hooks(fwd_hooks=self.hooks.fwd_hooks()):
            return self.hf(**kwargs)

    def decode(
        self, next_input: Int[Tensor, " batch"], n_cached: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch d_vocab"]:
        assert self.cache is not None
        width = kv.width(self.cache)
        mask = torch.cat([kv.right_aligned_mask(n_cached, width), torch.ones_like(n_cached)[:, None]], 1)
        self.hooks.rows = torch.arange(len(next_input))
        out = self._forward(input_ids=next_input[:, None], attention_mask=mask, position_ids=n_cached[:, None],
                            past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()

    def prefill(self, slots: Int[Tensor, " n"], prompts: Sequence[Sequence[int]], batch: int, pad_id: int) -> Tensor:
        ids = _pad(prompts, pad_id, left=True)
        width = ids.shape[1]
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        mask = kv.right_aligned_mask(lens, width)
        self.hooks.rows = slots
        new = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                            past_key_values=new, use_cache=True)
        kv.check_supported(new)
        if self.cache is None:
            self.cache = new
            extra = batch - len(prompts)
            for layer in new.layers:  # rows for the slots this first prefill left empty
                layer.keys = torch.cat([layer.keys, layer.keys.new_zeros((extra, *layer.keys.shape[1:]))])
                layer.values = torch.cat([layer.values, layer.values.new_zeros((extra, *layer.values.shape[1:]))])
        else:
            kv.merge_rows(self.cache, new, slots.to(self.device))
        return out.logits[:, -1].float()

    def reset(self) -> None:
        self.cache = None

    def compact(self, n_cached: Tensor, live: Tensor, every: int) -> None:
        assert self.cache is not None
        unused = kv.width(self.cache) - int(n_cached[live].max())
        if unused >= every:
            kv.drop_left(self.cache, unused)

    def select(self, keep: Tensor) -> None:
        assert self.cache is not None
        kv.select_rows(self.cache, keep)


class FastBackend:
    def __init__(self, model: TransformerBridge, hooks) -> None:
        self.dec = FastDecoder(model.original_model)
        self.hooks = hooks
        self.device = self.dec.device
        self.cache = None

    def _hook(self, layer: int, act: Tensor) -> Tensor:
        return self.hooks.apply(layer, act)

    def decode(
        self, next_input: Int[Tensor, " batch"], n_cached: Int[Tensor, " batch"]
    ) -> Float[Tensor, "batch d_vocab"]:
        assert self.cache is not None
        rows = torch.arange(len(next_input), device=self.device)
        self.hooks.rows = rows.cpu()
        return self.dec.forward(next_input[:, None], n_cached[:, None], torch.ones_like(n_cached), rows,
                                self.cache, self._hook)

    def prefill(self, slots: Int[Tensor, " n"], prompts: Sequence[Sequence[int]], batch: int, pad_id: int) -> Tensor:
        ids = _pad(prompts, pad_id, left=False)
        width = ids.shape[1]
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        positions = torch.arange(width, device=self.device)[None].expand(len(prompts), width)
        positions = torch.minimum(positions, (lens - 1)[:, None])  # padding repeats the last position
        if self.cache is None:
            self.cache = self.dec.new_cache(batch, max(256, 2 * width))
        self.hooks.rows = slots
        return self.dec.forward(ids.to(self.device), positions, lens, slots.to(self.device), self.cache, self._hook)

    def reset(self) -> None:
        pass  # columns are overwritten on refill; nothing to clear

    def compact(self, n_cached: Tensor, live: Tensor, every: int) -> None:
        pass  # left-aligned rows never leave unused columns behind

    def select(self, keep: Tensor) -> None:
        assert self.cache is not None
        self.cache.select(keep)


def make_backend(model: TransformerBridge, name: str, hooks):
    """``"fast"``, ``"bridge"``, or ``"auto"`` (fast when the model supports it)."""
    if name not in ("auto", "fast", "bridge"):
        raise ValueError(f"backend must be 'auto', 'fast' or 'bridge', got {name!r}")
    reason = unsupported_reason(model.original_model.config)
    if name == "fast" and reason is not None:
        raise ValueError(f"the fast backend cannot run this model: {reason}; use backend='bridge'")
    if name == "bridge" or reason is not None:
        if name == "auto":
            log.warning("decoding with the slower TransformerBridge forward; the fast forward does not support "
                        "this model: %s", reason)
        return BridgeBackend(model, hooks)
    return FastBackend(model, hooks)
