"""The two forward passes the engine can decode with, behind one small interface.

* ``BridgeBackend``: the TransformerBridge's own forward (any architecture TransformerLens
  supports), edits and reads through ``blocks.{L}.mlp.hook_post`` hooks that are attached for each
  forward pass only, an HF ``DynamicCache`` kept right-aligned.
* ``FastBackend``: ``FastDecoder`` (Llama-family models only) over the same weights, with a
  preallocated left-aligned cache; the same edits and reads at the same site; optionally its decode
  step replayed from CUDA graphs (``graphs.py``).

Rows are the engine's: live rows are ``0 .. n-1``. ``decode`` runs one token for each of them,
``prefill`` appends new prompts' rows after them, and ``keep`` reorders and drops rows when some
finish. Logits go into the engine's buffer (``out``).

Example:
    >>> from workbench import load_model
    >>> type(make_backend(load_model("organism"), "auto", None)).__name__
    'FastBackend'
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import DynamicCache

from workbench.engine import cache as kv
from workbench.engine.fast import FastDecoder, unsupported_reason
from workbench.engine.graphs import GraphedDecode
from workbench.model import weights_identity

log = logging.getLogger(__name__)

# hf model -> (weights' identity, FastDecoder): packing copies every weight, so runs share one decoder
# for as long as the model lives and its weights are untouched.
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_decoder(hf_model, dtype: torch.dtype | None = None, pack: bool | None = None) -> FastDecoder:
    """The ``FastDecoder`` of ``hf_model``, built once and reused while its weights stay as they are.

    A weight changed in place (training, a test perturbing norms) bumps its version counter, and a
    replaced weight has another address; either makes a new decoder.
    """
    ident = (dtype, pack, weights_identity(hf_model))
    cached = _DECODERS.get(hf_model)
    if cached is None or cached[0] != ident:
        cached = (ident, FastDecoder(hf_model, dtype=dtype, pack=pack))
        _DECODERS[hf_model] = cached
    return cached[1]


def _pad(prompts: Sequence[Sequence[int]], pad_id: int, left: bool) -> Int[Tensor, "n pos"]:
    """Prompts as one batch, padded on the left (right-aligned rows) or on the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        start = width - len(p) if left else 0
        ids[i, start : start + len(p)] = torch.tensor(list(p))
    return ids


class BridgeBackend:
    def __init__(self, model: TransformerBridge, hooks, compact_every: int = 32) -> None:
        self.bridge, self.hf, self.hooks = model, model.original_model, hooks
        self.device = next(self.hf.parameters()).device
        self.d_vocab = model.cfg.d_vocab
        self.compact_every = compact_every
        self.cache: DynamicCache | None = None

    def _forward(self, **kwargs):
        # Hooks on for this forward pass only: a paused or abandoned generation must leave the
        # (possibly shared) model exactly as it found it.
        with self.bridge.hooks(fwd_hooks=self.hooks.fwd_hooks()):
            return self.hf(**kwargs)

    def decode(self, ids: Int[Tensor, " rows"], positions: Int[Tensor, " rows"], width: int,
               out: Float[Tensor, "rows d_vocab"]) -> None:
        assert self.cache is not None
        mask = torch.cat([kv.right_aligned_mask(positions, kv.width(self.cache)), torch.ones_like(positions)[:, None]],
                         1)
        res = self._forward(input_ids=ids[:, None], attention_mask=mask, position_ids=positions[:, None],
                            past_key_values=self.cache, use_cache=True)
        out.copy_(res.logits[:, -1])

    def prefill(self, prompts: Sequence[Sequence[int]], start: int, pad_id: int,
                out: Float[Tensor, "rows d_vocab"]) -> None:
        ids = _pad(prompts, pad_id, left=True)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        mask = kv.right_aligned_mask(lens, ids.shape[1])
        new = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        res = self._forward(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                            past_key_values=new, use_cache=True)
        kv.check_supported(new)
        if self.cache is None:
            self.cache = new
        else:
            kv.append_rows(self.cache, new)
        out.copy_(res.logits[:, -1])

    def keep(self, order: list[int], lengths: list[int]) -> None:
        assert self.cache is not None
        if order != list(range(self.cache.layers[0].keys.shape[0])):
            kv.select_rows(self.cache, torch.tensor(order, device=self.device))
        unused = kv.width(self.cache) - max(lengths)
        if unused >= self.compact_every:
            kv.drop_left(self.cache, unused)

    def reset(self) -> None:
        self.cache = None


class FastBackend:
    def __init__(self, model: TransformerBridge, hooks, rows: int, dtype: torch.dtype | None = None,
                 cuda_graphs: bool = False, pack: bool | None = None) -> None:
        self.dec = fast_decoder(model.original_model, dtype=dtype, pack=pack)
        self.hooks, self.rows = hooks, rows
        self.device, self.d_vocab = self.dec.device, self.dec.d_vocab
        self.cache = self.dec.new_cache(rows, 256)
        # No hook call at all when nothing is edited or read (30 Python calls a step saved).
        self._hook = hooks.apply if hooks is not None and hooks.active else None
        self.graphs = GraphedDecode(self.dec, hooks, rows) if cuda_graphs else None

    def decode(self, ids: Int[Tensor, " rows"], positions: Int[Tensor, " rows"], width: int,
               out: Float[Tensor, "rows d_vocab"]) -> None:
        if self.graphs is not None:
            self.graphs(ids, positions, width, self.cache, out)
        else:
            self.dec.decode(ids, positions, width, self.cache, self._hook, out=out)

    def prefill(self, prompts: Sequence[Sequence[int]], start: int, pad_id: int,
                out: Float[Tensor, "rows d_vocab"]) -> None:
        ids = _pad(prompts, pad_id, left=False).to(self.device)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        self.dec.prefill(ids, lens, start, self.cache, self._hook, out=out)

    def keep(self, order: list[int], lengths: list[int]) -> None:
        moved = [i for i, r in enumerate(order) if r != i]
        if moved:
            self.cache.move_rows([order[i] for i in moved], moved, max(lengths[i] for i in moved))

    def reset(self) -> None:
        pass  # columns are overwritten on refill; nothing to clear


def make_backend(model: TransformerBridge, name: str, hooks, rows: int = 64, dtype: torch.dtype | None = None,
                 cuda_graphs: bool = False, compact_every: int = 32, pack: bool | None = None):
    """``"fast"``, ``"bridge"``, or ``"auto"`` (fast when the model supports it).

    ``dtype``, ``cuda_graphs`` and ``pack`` apply to the fast backend only; asking the bridge for the
    first two is an error (``pack=None`` just means "where possible").
    """
    if name not in ("auto", "fast", "bridge"):
        raise ValueError(f"backend must be 'auto', 'fast' or 'bridge', got {name!r}")
    reason = unsupported_reason(model.original_model.config)
    if name == "fast" and reason is not None:
        raise ValueError(f"the fast backend cannot run this model: {reason}; use backend='bridge'")
    if name == "bridge" or reason is not None:
        wanted = [f for f, on in (("dtype", dtype is not None), ("cuda_graphs", cuda_graphs), ("packed weights", pack))
                  if on]
        if wanted:
            why = "backend='bridge'" if name == "bridge" else f"the fast forward does not support this model: {reason}"
            raise ValueError(f"{', '.join(wanted)} need the fast backend, but {why}; load the model in the dtype "
                             "you want instead (workbench.load_model(..., dtype=...)) and leave cuda_graphs off")
        if name == "auto":
            log.warning("decoding with the slower TransformerBridge forward; the fast forward does not support "
                        "this model: %s", reason)
        return BridgeBackend(model, hooks, compact_every)
    return FastBackend(model, hooks, rows, dtype=dtype, cuda_graphs=cuda_graphs, pack=pack)
