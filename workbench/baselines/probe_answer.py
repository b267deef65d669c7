"""The side probe of output-based exits: what would the model answer if thinking ended now?

DEER and Dynasor-CoT both ask the model for a trial answer mid-thought without keeping it. On this
engine a probe that does not commit runs beside the generation: the sequence so far, then a probe
string (by default the closing think marker), then a short greedy continuation with the model's
own weights and no hooks, reading each answer token and its probability. The generation's cache,
sampler and edits are untouched, so a probe changes nothing but what the controller decides.

Its tokens are real cost (``PAPERS.md`` §5: count them): ``ProbeAnswer.probe_tokens`` is the probe
string plus every greedy token, and controllers record it in ``note`` events as ``probe_tokens``.
Dynasor-CoT keeps the probe prefix cached on its server; here each probe re-reads the sequence
(one forward over it per probe batch), which is simple and exact but slow on long real traces.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")
    >>> tok = model.tokenizer
    >>> seq = tok("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;").input_ids
    >>> [a] = probe_answers(model, [seq], tok(" </think>", add_special_tokens=False).input_ids)
    >>> a.text.strip(), a.probe_tokens, a.confidence("mean") > 0.9
    ('85', 4, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.baselines.thinking import ThinkingController
from workbench.engine import StepView
from workbench.prompting import model_stop_ids
from workbench.tasks.math import last_boxed

POLICIES = ("mean", "min", "geometric")


@dataclass(frozen=True)
class ProbeAnswer:
    """A trial answer: greedy ``tokens`` (up to a stop) and each one's probability.

    ``probe_tokens`` counts the probe string and every token the probe generated, its stop included.
    """

    tokens: tuple[int, ...]
    probs: tuple[float, ...]
    text: str
    probe_tokens: int

    def confidence(self, policy: str = "mean") -> float:
        """How sure the model is of the answer: the mean (DEER's default ``avg1``), minimum or
        geometric mean of its tokens' probabilities; 0 for an empty answer.

        >>> ProbeAnswer((5, 6), (0.9, 0.5), "x", 3).confidence("min")
        0.5
        """
        if policy not in POLICIES:
            raise ValueError(f"confidence policy must be one of {POLICIES}, got {policy!r}")
        if not self.probs:
            return 0.0
        if policy == "mean":
            return sum(self.probs) / len(self.probs)
        if policy == "min":
            return min(self.probs)
        return math.exp(sum(math.log(max(p, 1e-12)) for p in self.probs) / len(self.probs))

    @property
    def key(self) -> str:
        """The answer as compared between probes (see ``answer_key``)."""
        return answer_key(self.text)


def answer_key(text: str) -> str:
    """An answer normalised for comparison: the last ``\\boxed{}`` when there is one, else the text
    with its whitespace collapsed.

    >>> answer_key("  154 "), answer_key("so \\\\boxed{ 3/4 } done")
    ('154', '3/4')
    """
    boxed = last_boxed(text) if "\\boxed" in text else None
    return " ".join((boxed if boxed is not None else text).split())


@torch.no_grad()
def probe_answers(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    suffix: Sequence[int],
    max_tokens: int = 16,
    stop_ids: Sequence[int] | None = None,
    stop_texts: Sequence[str] = ("\n",),
) -> list[ProbeAnswer]:
    """Greedy trial answers of ``model`` to each of ``sequences`` followed by ``suffix``.

    One batch: rows left-padded, positions counting real tokens, a KV cache for the answer tokens.
    A row stops at one of ``stop_ids`` (default: the model's stop ids), at a token whose text holds
    one of ``stop_texts``, or after ``max_tokens``.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not sequences:
        return []
    tok = model.tokenizer
    hf = model.original_model
    device = next(hf.parameters()).device
    stops = frozenset(model_stop_ids(model) if stop_ids is None else stop_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [list(s) + list(suffix) for s in sequences]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    next_pos = positions[:, -1] + 1
    answers: list[list[int]] = [[] for _ in rows]
    probs: list[list[float]] = [[] for _ in rows]
    used = [len(suffix)] * len(rows)
    live = [True] * len(rows)
    for _ in range(max_tokens):
        p = torch.softmax(logits.float(), -1)
        best = p.argmax(-1)
        picked = best.tolist()
        for i, t in enumerate(picked):
            if not live[i]:
                continue
            used[i] += 1
            text = tok.decode([t])
            if t in stops or any(s in text for s in stop_texts):
                live[i] = False
                continue
            answers[i].append(t)
            probs[i].append(float(p[i, t]))
        if not any(live):
            break
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=device)], -1)
        out = hf(input_ids=best[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                 past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_pos = next_pos + 1
    return [ProbeAnswer(tuple(a), tuple(pr), tok.decode(a, skip_special_tokens=True), u)
            for a, pr, u in zip(answers, probs, used, strict=True)]


class ProbingController(ThinkingController):
    """A thinking controller that can ask for trial answers; each probe is a ``probe`` note event
    with its ``probe_tokens``, the answer (as compared) and its confidence."""

    def __init__(
        self, model: TransformerBridge, think_open: str, think_close: str, probe_text: str | None,
        max_answer_tokens: int, policy: str = "mean",
    ) -> None:
        super().__init__(model.tokenizer, think_open, think_close)
        self.model, self.max_answer_tokens, self.policy = model, max_answer_tokens, policy
        self.suffix = (list(self.close_ids) if probe_text is None
                       else list(model.tokenizer(probe_text, add_special_tokens=False).input_ids))
        if not self.suffix:
            raise ValueError(f"probe_text {probe_text!r} encodes to no tokens")

    def probe(self, view: StepView, rows: list[int], **payload: Any) -> list[ProbeAnswer]:
        """Trial answers for ``rows`` (one batch), each recorded as a ``probe`` event."""
        if not rows:
            return []
        answers = probe_answers(self.model, [view.tokens[r] for r in rows], self.suffix, self.max_answer_tokens)
        for row, a in zip(rows, answers, strict=True):
            view.note(row, "probe", probe_tokens=a.probe_tokens, answer=a.key,
                      confidence=round(a.confidence(self.policy), 4), **payload)
        return answers
