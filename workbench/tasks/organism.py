"""The organism's task behind the task protocol: exact-match grading, plus the organism's labels.

Everything the methods read off the organism comes through here: its labels (``label_tokens``), its
hand features and failure episodes from them, its step separators (``;`` and ``,``), its reflection
word (``wait``) and the regime it plants (``careless``, read from the first cue word).

Example:
    >>> task = OrganismTask()
    >>> task.grade(task.problems(1, seed=0)[0], " 12").correct
    False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.organism.labeler import failure_flags, failure_spans, hand_features, label_tokens
from workbench.organism.task import REFLECTION_WORD, STEP_ENDS, Problem, TraceLabels, TraceRecipe, sample_problems
from workbench.tasks.base import Grade, PlantedLabel, Span, TaskProblem, TextConventions


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

    text: ClassVar[TextConventions] = TextConventions(
        step_ends=STEP_ENDS, step_pattern=r"\s*[;,]\s*", reflection_words=(REFLECTION_WORD,))
    planted: ClassVar[tuple[PlantedLabel, ...]] = (PlantedLabel("regime", "careless", ("careful", "careless")),)
    fixed_problems: ClassVar[bool] = False  # generated from a seed: analysis and evaluation seeds keep them apart

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

    def hand_features(self, labels: Mapping[str, Any] | None) -> dict[str, float] | None:
        return hand_features(TraceLabels.from_dict(labels)) if labels else None

    def failure_spans(self, labels: Mapping[str, Any] | None) -> dict[str, list[Span]] | None:
        return failure_spans(TraceLabels.from_dict(labels)) if labels else None

    def failure_flags(self, labels: Mapping[str, Any] | None) -> dict[str, bool] | None:
        return failure_flags(TraceLabels.from_dict(labels)) if labels else None
