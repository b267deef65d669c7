"""The task protocol: problems, the question to ask, how to grade an answer, and optional labels.

A task never sees prompt templates or token ids: the run's ``PromptFormat`` turns ``message`` into
the prompt, finds the thinking span in the generated tokens, and hands ``grade`` only the answer
(the text after the thinking span; empty when thinking never ended).

Example:
    >>> from workbench.tasks import get_task
    >>> task = get_task("organism")
    >>> p = task.problems(1, seed=0)[0]
    >>> task.grade(p, " " + p.gold).correct
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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

    def message(self, problem: TaskProblem, chat: bool) -> str:
        """What to ask: the user turn of a chat template (``chat``) or the text of a raw prompt."""
        ...

    def grade(self, problem: TaskProblem, answer: str) -> Grade:
        """Grades the answer: the generated text after the thinking span."""
        ...

    def labels(self, problem: TaskProblem, token_strs: Sequence[str]) -> dict[str, Any] | None:
        """Ground-truth labels read from a finished sequence's tokens, or None when the task has none.

        A label dict may carry ``answer_reached``: the position where the final answer first appears.
        """
        ...
