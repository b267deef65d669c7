"""A small batched sampler with a KV cache, run through the bridge so TransformerLens hooks fire.

Rows are left-padded; positions count real tokens only, so a prompt's continuation does not depend
on how much padding its batch needed. Each row draws from its own ``torch.Generator`` seeded by
(seed, row key), so a sample is reproducible whatever else shares its batch.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> out = generate(model, ["Q: 47 + 38 = ? <think>"], SamplingConfig(temperature=0.0))
    >>> out[0].finish_reason
    'eos'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge


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


@dataclass
class Generation:
    """One finished sequence: ``tokens`` holds the prompt then the generated ids (no padding)."""

    prompt_len: int
    tokens: list[int]
    finish_reason: str  # "eos" or "length"

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]


def row_generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def pick_tokens(
    logits: Float[Tensor, "batch d_vocab"], cfg: SamplingConfig, generators: Sequence[torch.Generator]
) -> Int[Tensor, " batch"]:
    """Greedy or temperature/top-p sampling, each row from its own generator."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = sorted_p.cumsum(-1) - sorted_p >= cfg.top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs.cpu()
    return torch.stack([
        torch.multinomial(probs[r], 1, generator=g)[0] for r, g in enumerate(generators)
    ]).to(logits.device)


@torch.no_grad()
def generate(
    model: TransformerBridge,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    keys: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Generation]:
    """Continues each prompt until ``<eos>`` or ``max_new_tokens``; returns results in prompt order.

    ``keys`` (default: the prompt's index) name each row for its random generator, e.g.
    ``f"{problem_id}/{sample_index}"``.
    """
    keys = list(keys) if keys is not None else [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise ValueError(f"got {len(keys)} keys for {len(prompts)} prompts")
    out: list[Generation] = []
    bar = tqdm(total=len(prompts), desc="generate", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        out.extend(_generate_batch(model, chunk, keys[start : start + batch_size], cfg))
        bar.update(len(chunk))
    bar.close()
    return out


def _generate_batch(
    model: TransformerBridge, prompts: list[str], keys: Sequence[str], cfg: SamplingConfig
) -> list[Generation]:
    tok = model.tokenizer
    hf = model.original_model
    device = next(hf.parameters()).device
    enc = tok(prompts, return_tensors="pt", padding=True)
    ids: Int[Tensor, "batch pos"] = enc.input_ids.to(device)
    mask: Int[Tensor, "batch pos"] = enc.attention_mask.to(device)
    prompt_lens = mask.sum(-1).tolist()
    generators = [row_generator(cfg.seed, k) for k in keys]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens: list[Int[Tensor, " batch"]] = []
    past = None
    step_ids, step_pos = ids, positions
    for _ in range(cfg.max_new_tokens):
        result = hf(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                    past_key_values=past, use_cache=True)
        past = result.past_key_values
        nxt = pick_tokens(result.logits[:, -1], cfg, generators)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_token_id), nxt)
        new_tokens.append(nxt)
        done |= nxt == tok.eos_token_id
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    gen = torch.stack(new_tokens, dim=1).tolist()
    results = []
    for r, row in enumerate(gen):
        eos = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else None
        body = row[:eos] if eos else row
        prompt = ids[r, ids.shape[1] - prompt_lens[r] :].tolist()
        results.append(Generation(len(prompt), prompt + body, "eos" if eos else "length"))
    return results
