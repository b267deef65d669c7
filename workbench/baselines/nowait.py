"""NoWait (arXiv 2506.08343): ban the reflection words throughout thinking.

Every thinking step sets the logits of every single-token variant of the reflection words to -inf
(the paper bans "Wait", "Hmm", "Alternatively", ...; the organism's reflection word is ``wait``).
Nothing is read and nothing else changes, so the method costs no extra tokens. Each ban is an event.

Example:
    >>> NoWait(reflection_words=["wait", "hmm"]).reflection_words
    ('wait', 'hmm')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.baselines.thinking import ThinkingController, ThinkState, as_words, reflection_ids, run_settings
from workbench.engine import Controller, NeuronEdit, StepView
from workbench.tasks.base import Task


@dataclass(frozen=True, kw_only=True)
class NoWait:
    """Bans ``reflection_words`` (every single-token variant) at every thinking step.

    Attributes:
        name: the label of its rows in results tables.
        reflection_words: the words banned (None: the task's, ``Task.text.reflection_words``: "wait", "hmm",
            "alternatively" for free text, ``wait`` on the organism).
    """

    name: str = "nowait"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    reflection_words: tuple[str, ...] | list[str] | None = None

    def __post_init__(self) -> None:
        if self.reflection_words is not None:
            object.__setattr__(self, "reflection_words", as_words(self.reflection_words, "NoWait.reflection_words"))

    def build(self, ctx) -> tuple[list[NeuronEdit], list[Controller]]:
        think_open, think_close, task = run_settings(ctx)
        return [], [NoWaitController(self, ctx.model.tokenizer, think_open, think_close, task)]


class NoWaitController(ThinkingController):
    def __init__(self, spec: NoWait, tokenizer, think_open: str, think_close: str, task: Task | None) -> None:
        super().__init__(tokenizer, think_open, think_close)
        self.method, self.banned = spec, reflection_ids(tokenizer, spec.reflection_words, task)

    def spec(self) -> dict[str, Any]:
        return {"type": "nowait", "method": asdict(self.method), "banned_ids": self.banned}

    def act(self, view: StepView, row: int, state: ThinkState) -> None:
        view.ban(row, self.banned)
