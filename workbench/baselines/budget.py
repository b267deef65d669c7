"""Budget forcing (s1 / TALE style): end thinking after a fixed number of thinking tokens.

When a sequence has written ``max_thinking`` thinking tokens (counted as the trace store counts
them: the tokens after the opening marker), the closing marker is forced and the model writes its
answer, so every trace has at most ``max_thinking`` thinking tokens. The harness's budget baseline
sets it to a compared method's mean thinking tokens (the same token cost).

Example:
    >>> Budget(max_thinking=24).name
    'budget'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.baselines.thinking import ThinkingController, ThinkState, run_settings
from workbench.engine import Controller, NeuronEdit, StepView


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Forces the end of thinking at ``max_thinking`` thinking tokens.

    Attributes:
        name: the label of its rows in results tables.
        max_thinking: the thinking-token budget (>= 0).
    """

    name: str = "budget"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    max_thinking: int = 64

    def __post_init__(self) -> None:
        if int(self.max_thinking) != self.max_thinking or self.max_thinking < 0:
            raise ValueError(f"Budget.max_thinking must be a whole number >= 0, got {self.max_thinking!r}")
        object.__setattr__(self, "max_thinking", int(self.max_thinking))

    def build(self, ctx) -> tuple[list[NeuronEdit], list[Controller]]:
        think_open, think_close, _ = run_settings(ctx)
        return [], [BudgetController(self, ctx.model.tokenizer, think_open, think_close)]


class BudgetController(ThinkingController):
    def __init__(self, spec: Budget, tokenizer, think_open: str, think_close: str) -> None:
        super().__init__(tokenizer, think_open, think_close)
        self.method = spec

    def spec(self) -> dict[str, Any]:
        return {"type": "budget", "method": asdict(self.method), "close_ids": self.close_ids}

    def act(self, view: StepView, row: int, state: ThinkState) -> None:
        used = state.thinking_tokens(len(view.tokens[row]))
        if used >= self.method.max_thinking:
            self.exit(view, row, "budget_exit", thinking_tokens=used)
