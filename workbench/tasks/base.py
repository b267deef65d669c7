"""The task protocol: problems, the question to ask, how to grade an answer, and what the methods read.

A task never sees prompt templates or token ids: the run's ``PromptFormat`` turns ``message`` into
the prompt, finds the thinking span in the generated tokens (its think markers are the model's, not
the task's), and hands ``grade`` only the answer (the text after the thinking span; the whole
generation when the model never opened one).

Besides grading, a task supplies everything the methods used to read off the organism, so that no
method imports it:

* ``text``: how its traces read as text (what ends a step, online and in decoded text; reflection words);
* ``labels``: ground truth read from a finished trace (None when the task has none);
* ``hand_features``: hand-computed features of a trace from its labels, as *named* columns (or None);
* ``failure_spans``: the task's own failure episodes per type (None: the automatic labeller reads the text),
  and ``failure_flags``: which failures a trace shows (the results table's failure columns);
* ``planted``: binary truths the task planted in its traces (the organism's regime), which checks may ask
  neurons to read.

``TaskDefaults`` gives a task without labels all of these (plain text, no features, no truth).

Example:
    >>> from workbench.tasks import get_task
    >>> task = get_task("organism")
    >>> p = task.problems(1, seed=0)[0]
    >>> task.grade(p, " " + p.gold).correct
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

FAILURE_TYPES = ("slip", "oscillation", "overthinking")  # NeuReasoner's intra-step, inter-step, instance-level
Span = tuple[int, int]  # [start, end) in token positions of the full sequence


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


@dataclass(frozen=True)
class TextConventions:
    """How a task's traces read as text.

    Attributes:
        step_ends: a generated token whose text contains one of these ends a reasoning step (what online
            controllers watch: NEAT's suppression, DEER's trial answers). A newline for free text, as in the
            NEAT reference code.
        step_pattern: the regular expression between steps of decoded text (the automatic labeller's).
        reflection_words: the words a model reflects with ("Wait"); NoWait bans them, DEER probes before them.
        word_pattern: a regular expression a text must *end* with to stop at a word boundary; the remedy
            waits for it before inserting a trigger token, so a trigger never lands inside a number.

    >>> TextConventions().step_ends, TextConventions(step_ends=(";",)).reflection_words[0]
    (('\\n',), 'wait')
    """

    step_ends: tuple[str, ...] = ("\n",)
    step_pattern: str = r"\n[ \t]*\n"
    reflection_words: tuple[str, ...] = ("wait", "hmm", "alternatively")
    word_pattern: str = r"(^|[\s.,;:!?)\]}])$"


@dataclass(frozen=True)
class PlantedLabel:
    """A binary truth a task planted in its traces, held by the hand feature ``feature`` (1.0: ``classes[1]``).

    Checks (the AdaRAS regime check) ask whether neurons read it; report keys use ``name``.
    """

    name: str
    feature: str
    classes: tuple[str, str]


class TaskDefaults:
    """What a task without ground truth supplies: plain-text conventions, no features, no truth, nothing planted."""

    text: ClassVar[TextConventions] = TextConventions()
    planted: ClassVar[tuple[PlantedLabel, ...]] = ()
    # A fixed list of problems (a file, a benchmark): a study splits it between analysis and evaluation.
    fixed_problems: ClassVar[bool] = True

    def labels(self, problem: TaskProblem, token_strs: Sequence[str]) -> dict[str, Any] | None:
        return None

    def hand_features(self, labels: Mapping[str, Any] | None) -> dict[str, float] | None:
        return None

    def failure_spans(self, labels: Mapping[str, Any] | None) -> dict[str, list[Span]] | None:
        return None

    def failure_flags(self, labels: Mapping[str, Any] | None) -> dict[str, bool] | None:
        return None


@runtime_checkable
class Task(Protocol):
    name: str
    text: TextConventions
    planted: tuple[PlantedLabel, ...]
    fixed_problems: bool  # a fixed list (split between a study's analysis and evaluation), or generated from seeds

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

    def hand_features(self, labels: Mapping[str, Any] | None) -> dict[str, float] | None:
        """Hand-computed features of one trace from its ``labels``, by name (the same names for every trace),
        or None when the task has none: the hand-feature baseline then reports that it cannot apply."""
        ...

    def failure_spans(self, labels: Mapping[str, Any] | None) -> dict[str, list[Span]] | None:
        """The trace's failure episodes per type in ``FAILURE_TYPES`` from the task's own truth, or None when
        the task has none (the automatic labeller then reads the decoded text)."""
        ...

    def failure_flags(self, labels: Mapping[str, Any] | None) -> dict[str, bool] | None:
        """Which failures the trace shows, by name (the same names for every trace; the results table's failure
        columns), or None when the task cannot tell."""
        ...
