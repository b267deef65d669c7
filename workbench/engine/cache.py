"""Slot surgery on a Hugging Face ``DynamicCache`` so finished rows can be refilled mid-generation.

Invariant kept by the engine: each row's real tokens fill the *rightmost* ``n_cached[row]``
columns of every layer's keys and values; the attention mask is derived from that. New prompts'
rows are appended after the live rows (whichever side is shorter is left-padded), finished rows are
dropped by selecting the rows that stay, and columns that no live row uses any more are cut from the
left.

Example:
    >>> import torch
    >>> right_aligned_mask(torch.tensor([2, 3]), width=4).tolist()
    [[0, 0, 1, 1], [0, 1, 1, 1]]
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def right_aligned_mask(n_cached: Int[Tensor, " batch"], width: int) -> Int[Tensor, "batch width"]:
    cols = torch.arange(width, device=n_cached.device)
    return (cols[None, :] >= (width - n_cached)[:, None]).long()


def check_supported(cache: DynamicCache) -> None:
    for i, layer in enumerate(cache.layers):
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"the engine refills rows of full-attention caches only; layer {i} uses "
                f"{type(layer).__name__} (sliding-window or other cache types are not supported yet)"
            )


def width(cache: DynamicCache) -> int:
    return cache.layers[0].keys.shape[-2]


def _pad_left(x: Tensor, n: int) -> Tensor:
    if n <= 0:
        return x
    return torch.cat([x.new_zeros((*x.shape[:-2], n, x.shape[-1])), x], dim=-2)


def append_rows(main: DynamicCache, new: DynamicCache) -> None:
    """Appends ``new``'s rows after ``main``'s, both right-aligned to a common width."""
    check_supported(new)
    target = max(width(main), width(new))
    for dst, src in zip(main.layers, new.layers, strict=True):
        dst.keys = torch.cat([_pad_left(dst.keys, target - dst.keys.shape[-2]),
                              _pad_left(src.keys, target - src.keys.shape[-2])])
        dst.values = torch.cat([_pad_left(dst.values, target - dst.values.shape[-2]),
                                _pad_left(src.values, target - src.values.shape[-2])])


def drop_left(cache: DynamicCache, n: int) -> None:
    """Cuts the ``n`` leftmost columns (the caller checked that no live row uses them)."""
    if n <= 0:
        return
    for layer in cache.layers:
        layer.keys = layer.keys[..., n:, :].contiguous()
        layer.values = layer.values[..., n:, :].contiguous()


def select_rows(cache: DynamicCache, rows: Int[Tensor, " n_keep"]) -> None:
    for layer in cache.layers:
        layer.batch_select_indices(rows)
