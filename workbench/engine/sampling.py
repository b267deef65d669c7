"""Choosing the next token: greedy, temperature and top-p, each row from its own generator.

A row's generator is seeded by (seed, row key), e.g. ``"47+38/3"`` for sample 3 of a problem, so a
sample is reproducible whatever else shares its batch.

Example:
    >>> import torch
    >>> cfg = SamplingConfig(temperature=0.0)
    >>> pick_tokens(torch.tensor([[0.1, 2.0, 0.3]]), cfg, [row_generator(0, "a")]).tolist()
    [1]
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Decoding settings. ``temperature=0`` is greedy.

    Attributes:
        temperature: softmax temperature; 0 means argmax.
        top_p: nucleus mass kept before sampling (1.0 keeps all).
        max_new_tokens: hard cap per sequence.
        seed: combined with each row's key to seed that row's generator.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 160
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def row_generator(seed: int, key: str) -> random.Random:
    """The random stream of one sequence, seeded by (seed, key) alone."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def pick_tokens(
    logits: Float[Tensor, "batch d_vocab"], cfg: SamplingConfig, generators: Sequence[random.Random]
) -> Int[Tensor, " batch"]:
    """Greedy, or temperature/top-p sampling by inverse CDF with one uniform per row from its own stream.

    Drawing the uniforms per row (cheap Python floats) and inverting the CDF in one batched
    ``searchsorted`` keeps each row reproducible without a per-row sampling call.
    """
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.double().cumsum(-1)
    u = torch.tensor([g.random() for g in generators], dtype=torch.float64, device=cdf.device)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp(max=logits.shape[-1] - 1)


