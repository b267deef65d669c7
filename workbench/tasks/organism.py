"""The organism's task behind the task protocol: exact-match grading, plus the organism's labels.

Example:
    >>> task = OrganismTask()
    >>> task.grade(task.problems(1, seed=0)[0], "carefully ... </think> 12").correct
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.organism.task import Problem, sample_problems
from workbench.tasks.base import Grade, TaskProblem, after_thinking


@dataclass(frozen=True)
class OrganismTask:
    """Held-out organism problems (never trained on); the answer is the number after ``</think>``."""

    name: str = "organism"
    held_out: bool = True

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        return [
            TaskProblem(p.id, p.prompt, str(p.answer), {"prompt": p.prompt})
            for p in sample_problems(n if n is not None else 500, seed, held_out=self.held_out)
        ]

    def prompt(self, problem: TaskProblem, tokenizer) -> str:
        return Problem.from_id(problem.id).prompt

    def grade(self, problem: TaskProblem, completion: str) -> Grade:
        words = after_thinking(completion).split()
        extracted = words[0] if words and words[0].isdigit() else None
        return Grade(extracted, extracted == problem.gold)
