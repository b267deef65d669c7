"""The traces NEAT reads: those whose thinking closed, with their exit and answer points.

A trace's **exit point** is ``think_end - 1``, the position whose next token is the closing
marker's first token (``end_id``). Its **answer point** is where the signal should peak: the task's
``answer_reached`` label when it has one (the organism: where the final answer first appears in
thinking), else the exit point. Problems, not traces, are split between fitting and measuring, so
no problem's samples sit on both sides.

Example:
    >>> t = ExitTrace("p/0", "p", (5, 6, 7, 8, 9, 17, 3), think_start=1, think_end=5, answer_point=3)
    >>> t.end_id, t.span, t.exit_positions((1, 2, 9))
    (17, (2, 5), [4, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.model import load_model
from workbench.readout import DEFAULT_BUDGET, Budget, read_mlp
from workbench.store import load_traces
from workbench.store.rundir import run_model_spec


@dataclass(frozen=True)
class ExitTrace:
    """One trace whose thinking closed; positions index ``tokens`` (prompt included)."""

    trace_id: str
    problem_id: str
    tokens: tuple[int, ...]
    think_start: int
    think_end: int
    answer_point: int

    @property
    def end_id(self) -> int:
        """The closing marker's first token, as this trace wrote it."""
        return self.tokens[self.think_end]

    @property
    def span(self) -> tuple[int, int]:
        """The thinking span ``[think_start + 1, think_end)``: its last position is the exit point."""
        return self.think_start + 1, self.think_end

    def exit_positions(self, offsets: Sequence[int]) -> list[int]:
        """``think_end - k`` for each offset ``k`` that still lies inside the thinking span."""
        return [self.think_end - k for k in offsets if self.think_end - k >= self.think_start + 1]


def _exit_id(run_dir: Path, exit_token: str) -> int:
    """The id of ``exit_token`` in the run's tokenizer; a clear error when it is not one token."""
    from workbench.model import load_tokenizer

    tok = load_tokenizer(run_model_spec(run_dir))
    tid = tok.convert_tokens_to_ids(exit_token)
    if tid is None or (tok.unk_token_id is not None and tid == tok.unk_token_id):
        raise ValueError(f"NeatConfig.exit_token {exit_token!r} is not a token of {run_model_spec(run_dir)}'s "
                         f"tokenizer; give one it has, e.g. its end-of-turn token {tok.eos_token!r}")
    return int(tid)


def load_exit_traces(run_dir: str | Path, exit_token: str | None = None) -> list[ExitTrace]:
    """The run's traces with a closed, non-empty thinking span; a clear error when there are none.

    With ``exit_token`` the span ends at that token's first occurrence in the generation instead (and starts
    after the prompt when the trace opened no thinking span).
    """
    run_dir = Path(run_dir)
    table = load_traces(run_dir)
    if table.num_rows == 0:
        raise ValueError(f"{run_dir} holds no traces yet; generate them first with `workbench traces --out {run_dir}`")
    cols = ["trace_id", "problem_id", "token_ids", "prompt_len", "think_start", "think_end", "answer_reached"]
    exit_id = _exit_id(run_dir, exit_token) if exit_token is not None else None
    out = []
    for r in table.select(cols).to_pylist():
        start, end = r["think_start"], r["think_end"]
        if exit_id is not None:
            start = start if start is not None else r["prompt_len"] - 1
            end = next((i for i in range(start + 1, len(r["token_ids"])) if r["token_ids"][i] == exit_id), None)
        if start is None or end is None or end - 1 < start + 1:
            continue
        answer = r["answer_reached"]
        point = answer if answer is not None and start + 1 <= answer < end else end - 1
        out.append(ExitTrace(r["trace_id"], r["problem_id"], tuple(r["token_ids"]), start, end, point))
    if not out:
        if exit_id is not None:
            raise ValueError(f"{run_dir}: {exit_token!r} follows the prompt in 0 of its {table.num_rows} traces; "
                             "NEAT needs traces that write the exit token (a larger max_new_tokens, or another "
                             "NeatConfig.exit_token)")
        closed = sum(e is not None for e in table.column("think_end").to_pylist())
        marker = _think_close(run_dir)
        raise ValueError(
            f"{marker} in {closed} of {table.num_rows} traces (none with thinking before it): NEAT calibrates on "
            "the position before the end of thinking, so it needs a reasoning model that closes its thinking "
            "(or a larger max_new_tokens), or NeatConfig.exit_token = another token to exit on (e.g. the "
            "end-of-turn token)")
    return out


def _think_close(run_dir: Path) -> str:
    try:
        from workbench.traces import run_config

        return run_config(run_dir).prompt.think_close
    except (ValueError, TypeError):
        return "the closing think marker"


def calibration_set(traces: Sequence[ExitTrace], n: int | None, seed: int) -> list[ExitTrace]:
    """``n`` traces spread evenly over problems (each problem's first sample before any second), seeded."""
    order = np.random.default_rng(seed).permutation(len(traces))
    seen: dict[str, int] = {}
    rank = {}
    for i in order:
        pid = traces[i].problem_id
        rank[i] = seen.get(pid, 0)
        seen[pid] = rank[i] + 1
    picked = sorted(order, key=lambda i: rank[i])  # stable: the seeded order within each round
    return [traces[i] for i in picked[:n]]


def run_model(run_dir: str | Path) -> TransformerBridge:
    """The model a run was generated with (its manifest's ``config.model``)."""
    return load_model(run_model_spec(run_dir))


def forced_pass(
    model: TransformerBridge,
    sequences: Sequence[Sequence[int]],
    on_layer: Callable[[int, torch.Tensor, int], None],
    layers: Sequence[int] | None = None,
    p_of: Sequence[int] | None = None,
    budget: Budget = DEFAULT_BUDGET,
) -> torch.Tensor | None:
    """One teacher-forced pass (one batch, right-padded); ``on_layer(L, act, start)`` sees layer L's
    ``hook_post`` at positions ``start ..`` as float32 ``(batch, chunk, d_mlp)`` on the CPU. With
    ``p_of`` (a token id per sequence: the closing marker) returns ``p(that token)`` at every position,
    the model's own p(end), without ever forming the full-vocabulary logits; without it the pass
    stops after the last layer read."""
    layers = range(model.cfg.n_layers) if layers is None else layers

    def grab(layer: int, act: torch.Tensor, start: int) -> None:
        on_layer(layer, act.detach().float().cpu(), start)

    return read_mlp(model, sequences, layers, grab, budget, p_of=p_of)
