"""An answer-consistency exit in the manner of Dynasor-CoT (hao-ai-lab/Dynasor).

Every ``every`` thinking tokens the controller asks for a trial answer with the side probe
(``probe_answer``: the sequence so far, the closing marker, a short greedy answer, nothing
committed) and exits (forces the closing marker, then the model writes its answer) once the last
``agree`` trial answers are the same. As in Dynasor-CoT, an answer that is empty or hesitates (holds
one of ``hesitation_words``) never counts as agreeing. Every probe's tokens are recorded
(``probe`` events with ``probe_tokens``): they are part of the method's token cost.

Example:
    >>> AnswerConsistency(every=8, agree=2).name
    'answer-consistency'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.baselines.probe_answer import ProbingController
from workbench.baselines.thinking import as_words, reflection_words, run_settings
from workbench.engine import Controller, NeuronEdit, StepView
from workbench.tasks.base import Task


@dataclass(frozen=True, kw_only=True)
class AnswerConsistency:
    """Probe every ``every`` thinking tokens; exit when the last ``agree`` answers agree.

    Attributes:
        name: the label of its rows in results tables.
        every: thinking tokens between probes (sized for the organism's short traces; real models
            think for thousands of tokens and want a larger interval).
        agree: how many consecutive trial answers must be equal (>= 2).
        probe_text: what is appended before the trial answer (None: the closing think marker; for a
            real model e.g. ``"\\n</think>\\n\\n**Final Answer**\\n\\\\boxed{"``).
        max_answer_tokens: the longest trial answer read.
        hesitation_words: an answer holding one of these never counts (None: the task's reflection words).
    """

    name: str = "answer-consistency"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    every: int = 8
    agree: int = 2
    probe_text: str | None = None
    max_answer_tokens: int = 16
    hesitation_words: tuple[str, ...] | list[str] | None = None

    def __post_init__(self) -> None:
        if self.hesitation_words is not None:
            object.__setattr__(self, "hesitation_words", as_words(self.hesitation_words,
                                                                 "AnswerConsistency.hesitation_words"))
        if self.every < 1 or self.agree < 2 or self.max_answer_tokens < 1:
            raise ValueError(f"AnswerConsistency needs every >= 1, agree >= 2 and max_answer_tokens >= 1; got "
                             f"every={self.every}, agree={self.agree}, max_answer_tokens={self.max_answer_tokens}")

    def build(self, ctx) -> tuple[list[NeuronEdit], list[Controller]]:
        think_open, think_close, task = run_settings(ctx)
        return [], [AnswerConsistencyController(self, ctx.model, think_open, think_close, task)]


class AnswerConsistencyController(ProbingController):
    def __init__(self, spec: AnswerConsistency, model, think_open: str, think_close: str, task: Task | None,
                 ) -> None:
        super().__init__(model, think_open, think_close, spec.probe_text, spec.max_answer_tokens)
        self.method = spec
        self.answers: dict[str, list[str]] = {}
        words = spec.hesitation_words if spec.hesitation_words is not None else reflection_words(task)
        self.hesitation = tuple(w.lower() for w in words)

    def spec(self) -> dict[str, Any]:
        return {"type": "answer_consistency", "method": asdict(self.method), "probe_ids": self.suffix,
                "close_ids": self.close_ids}

    def on_finish(self, key: str) -> None:
        super().on_finish(key)
        self.answers.pop(key, None)

    def step(self, view: StepView, rows: list[int]) -> None:
        due = []
        for row in rows:
            used = self.states[view.keys[row]].thinking_tokens(len(view.tokens[row]))
            if used > 0 and used % self.method.every == 0:
                due.append(row)
        for row, answer in zip(due, self.probe(view, due), strict=True):
            key = answer.key
            if not key or any(w in key.lower() for w in self.hesitation):
                key = ""  # never agrees with anything
            history = self.answers.setdefault(view.keys[row], [])
            history.append(key)
            last = history[-self.method.agree :]
            if len(last) == self.method.agree and last[0] and all(a == last[0] for a in last):
                self.exit(view, row, "consistency_exit", answer=last[0], probes=len(history))
