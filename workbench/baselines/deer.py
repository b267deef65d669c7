"""DEER (Dynamic Early Exit in Reasoning models; iie-ycx/DEER, BugSmith/DEER): exit when a trial
answer at a reflection point is confident.

At each reflection point the controller asks for a trial answer with the side probe
(``probe_answer``: the sequence so far, the closing marker, a short greedy answer, nothing
committed) and exits (forces the closing marker, then the model writes its answer) when the
answer's confidence passes ``threshold``. DEER's reference code stops at each "Wait" and scores the
answer induced by ``"\\n**Final Answer**\\n\\\\boxed"`` by the mean probability of its tokens
(``policy avg1``; ``min`` and the geometric mean are its options too), threshold 0.95, at most 10
attempts. Here a reflection point is a step boundary (the last token ends a step) or a step whose
most likely next token is a reflection word (the model is about to write "wait"). Every probe's
tokens are recorded (``probe`` events with ``probe_tokens``): they are part of the token cost.

Example:
    >>> Deer(threshold=0.9).policy
    'mean'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.baselines.probe_answer import POLICIES, ProbingController
from workbench.baselines.thinking import as_words, reflection_ids, run_settings, step_separators
from workbench.engine import Controller, NeuronEdit, StepView
from workbench.tasks.base import Task


@dataclass(frozen=True, kw_only=True)
class Deer:
    """Trial answers at reflection points; exit when one's confidence passes ``threshold``.

    Attributes:
        name: the label of its rows in results tables.
        threshold: exit when the trial answer's confidence exceeds this.
        policy: ``"mean"`` (DEER's default), ``"min"`` or ``"geometric"`` token probability.
        reflection_words: a step whose most likely next token is one of these is a reflection point (None: the
            task's).
        step_separators: what ends a reasoning step (None: the task's, ``Task.text.step_ends``: ``;`` and ``,``
            on the organism, a newline for free text).
        probe_text: appended before the trial answer (None: the closing think marker).
        max_answer_tokens: the longest trial answer read (DEER: 20).
        max_probes: at most this many trial answers per trace (DEER: 10; None: no limit).
    """

    name: str = "deer"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    threshold: float = 0.95
    policy: str = "mean"
    reflection_words: tuple[str, ...] | list[str] | None = None
    step_separators: tuple[str, ...] | list[str] | None = None
    probe_text: str | None = None
    max_answer_tokens: int = 20
    max_probes: int | None = 10

    def __post_init__(self) -> None:
        if self.reflection_words is not None:
            object.__setattr__(self, "reflection_words", as_words(self.reflection_words, "Deer.reflection_words"))
        if self.step_separators is not None:
            object.__setattr__(self, "step_separators", as_words(self.step_separators, "Deer.step_separators"))
        if self.policy not in POLICIES:
            raise ValueError(f"Deer.policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"Deer.threshold must lie in [0, 1], got {self.threshold}")
        if self.max_answer_tokens < 1 or (self.max_probes is not None and self.max_probes < 1):
            raise ValueError("Deer.max_answer_tokens and max_probes must be >= 1")

    def build(self, ctx) -> tuple[list[NeuronEdit], list[Controller]]:
        think_open, think_close, task = run_settings(ctx)
        return [], [DeerController(self, ctx.model, think_open, think_close, task)]


class DeerController(ProbingController):
    def __init__(self, spec: Deer, model, think_open: str, think_close: str, task: Task | None) -> None:
        super().__init__(model, think_open, think_close, spec.probe_text, spec.max_answer_tokens, spec.policy)
        self.method = spec
        self.reflection_ids = reflection_ids(model.tokenizer, spec.reflection_words, task)
        self.separators = spec.step_separators if spec.step_separators is not None else step_separators(task)
        self.probes: dict[str, int] = {}

    def spec(self) -> dict[str, Any]:
        return {"type": "deer", "method": asdict(self.method), "probe_ids": self.suffix, "close_ids": self.close_ids,
                "reflection_ids": self.reflection_ids, "separators": list(self.separators)}

    def on_finish(self, key: str) -> None:
        super().on_finish(key)
        self.probes.pop(key, None)

    def step(self, view: StepView, rows: list[int]) -> None:
        due, triggers = [], []
        limit = self.method.max_probes
        for row in rows:
            key = view.keys[row]
            if self.states[key].thinking_tokens(len(view.tokens[row])) == 0:
                continue
            if limit is not None and self.probes.get(key, 0) >= limit:
                continue
            if self.at_boundary(view, row, self.separators):
                trigger = "boundary"
            elif int(view.logits[row].argmax()) in self.reflection_ids:
                trigger = "reflection"
            else:
                continue
            due.append(row)
            triggers.append(trigger)
        answers = []
        for trigger in ("boundary", "reflection"):  # one batch per trigger keeps the event payloads exact
            rows_t = [r for r, t in zip(due, triggers, strict=True) if t == trigger]
            answers += list(zip(rows_t, self.probe(view, rows_t, trigger=trigger), strict=True))
        for row, answer in answers:
            key = view.keys[row]
            self.probes[key] = self.probes.get(key, 0) + 1
            confidence = answer.confidence(self.method.policy)
            if answer.key and confidence > self.method.threshold:
                self.exit(view, row, "deer_exit", answer=answer.key, confidence=round(confidence, 4))
