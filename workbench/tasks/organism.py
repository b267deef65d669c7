"""The organism's task behind the task protocol: exact-match grading, plus the organism's labels.

Example:
    >>> task = OrganismTask()
    >>> task.grade(task.problems(1, seed=0)[0], " 12").correct
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from workbench.organism.labeler import label_tokens
from workbench.organism.task import Problem, TraceRecipe, sample_problems
from workbench.tasks.base import Grade, TaskProblem


@dataclass(frozen=True)
class OrganismTask:
    """Held-out organism problems (never trained on); the answer is the first word after ``</think>``.

    ``recipe`` is the trace recipe the model was trained on (it defines a big carry for the labels);
    ``op`` picks the task family: ``"+"`` (``organism``) or ``"-"`` (``organism-sub``, subtraction).
    """

    name: str = "organism"
    held_out: bool = True
    recipe: TraceRecipe | None = None
    op: str = "+"

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        return [
            TaskProblem(p.id, p.prompt, str(p.answer))
            for p in sample_problems(n if n is not None else 500, seed, held_out=self.held_out, op=self.op)
        ]

    def message(self, problem: TaskProblem, chat: bool) -> str:
        return Problem.from_id(problem.id).prompt

    def grade(self, problem: TaskProblem, answer: str) -> Grade:
        words = answer.split()
        extracted = words[0] if words and words[0].isdigit() else None
        return Grade(extracted, extracted == problem.gold)

    def labels(self, problem: TaskProblem, token_strs: Sequence[str]) -> dict[str, Any]:
        return asdict(label_tokens(Problem.from_id(problem.id), token_strs, self.recipe))
