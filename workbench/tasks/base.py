"""The task protocol: problems, how to prompt for them, and how to grade a completion.

Example:
    >>> from workbench.tasks import get_task
    >>> task = get_task("organism")
    >>> p = task.problems(1, seed=0)[0]
    >>> task.grade(p, p.meta["prompt"] + " carefully x </think> " + p.gold).correct
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class TaskProblem:
    """One problem: ``id`` is unique within its task; ``gold`` is the reference answer as text."""

    id: str
    question: str
    gold: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Grade:
    extracted: str | None
    correct: bool


@runtime_checkable
class Task(Protocol):
    name: str

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        """Up to ``n`` problems (all when ``None``), chosen reproducibly from ``seed``."""
        ...

    def prompt(self, problem: TaskProblem, tokenizer) -> str:
        """The text the model continues."""
        ...

    def grade(self, problem: TaskProblem, completion: str) -> Grade:
        """Grades the generated text (what follows the prompt)."""
        ...


def after_thinking(text: str) -> str:
    """The part of a completion after its thinking span (all of it when there is none)."""
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text


def chat_prompt(tokenizer, question: str) -> str:
    """The question in the tokenizer's chat template when it has one, else as it is."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True,
            enable_thinking=True,
        )
    return question
