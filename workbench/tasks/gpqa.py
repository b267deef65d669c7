"""GPQA: four-option questions, the options shuffled per question, graded by the chosen letter.

The dataset lists the correct answer first; shown in that order a model could learn to answer "A". Each
question's options are therefore shuffled by a generator seeded with the task's ``shuffle_seed`` and the
question's id, so a question always shows the same order (whichever problems a run draws, in whatever order)
and a run can record how: the seed sits in ``source``, the order in each problem's ``meta``.

The question reads as simple-evals asks it (the last line ``Answer: $LETTER``). The answer's letter is
whichever comes last of ``Answer: X`` (simple-evals' pattern, stopped at a word boundary so that "Answer:
Because" is no "B") and ``\\boxed{X}`` (how models trained on boxed math answers reply); simple-evals takes
the first ``Answer:``, we take the last, as the math grader takes the last box: a model may restate.

Example:
    >>> rec = {"id": "q1", "question": "2+2?", "correct": "4", "incorrect_1": "3", "incorrect_2": "5",
    ...        "incorrect_3": "22"}
    >>> task = GPQATask.from_records([rec], source="inline")
    >>> p = task.problems(None, seed=0)[0]
    >>> p.meta["options"][ord(p.gold) - ord("A")]
    '4'
    >>> task.grade(p, f"Answer: {p.gold}").correct, task.grade(p, "\\\\boxed{E}").extracted
    (True, None)
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.tasks.base import Grade, TaskDefaults, TaskProblem
from workbench.tasks.math import TaskDataError

LETTERS = "ABCD"
QUERY = ("Answer the following multiple choice question. The last line of your response should be of the "
         "following format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step "
         "before answering.\n\n{question}\n\n{options}")
_ANSWER = re.compile(r"(?i:answer)[ \t]*[:：][ \t*]*\$?\(?([A-D])\)?\$?(?![A-Za-z])")
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?([A-D])\)?\s*\}?\s*\}")


@dataclass(frozen=True)
class GPQAQuestion:
    """One question as the dataset gives it: the correct option and the three others."""

    id: str
    question: str
    correct: str
    incorrect: tuple[str, str, str]


def answer_letter(answer: str) -> str | None:
    r"""The letter of the last ``Answer: X`` or ``\boxed{X}`` in ``answer`` (A to D), or None.

    >>> answer_letter("Answer: B. Wait, no. Answer: (C)"), answer_letter("so \\boxed{\\text{D}}")
    ('C', 'D')
    >>> answer_letter("Answer: Because it is") is None
    True
    """
    found = [(m.start(), m.group(1)) for pattern in (_ANSWER, _BOXED) for m in pattern.finditer(answer)]
    return max(found)[1] if found else None


@dataclass(frozen=True)
class GPQATask(TaskDefaults):
    """GPQA questions; ``shuffle_seed`` fixes every question's option order (recorded in ``source``)."""

    name: str
    questions: tuple[GPQAQuestion, ...]
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    shuffle_seed: int = 0

    @classmethod
    def from_records(cls, records: Iterable, source: str, name: str = "gpqa",
                     origin: Mapping[str, Any] | None = None, shuffle_seed: int = 0) -> GPQATask:
        """Records with ``question``, ``correct``, ``incorrect_1..3`` and optionally ``id`` (else the row number);
        ``origin`` is recorded as the task's ``source``, with the shuffle seed added."""
        questions, seen = [], set()
        for i, rec in enumerate(records):
            where, rec = rec if isinstance(rec, tuple) else (f"{source}:{i + 1}", rec)
            keys = ("question", "correct", "incorrect_1", "incorrect_2", "incorrect_3")
            missing = [k for k in keys if not isinstance(rec.get(k), str) or not rec[k].strip()]
            if missing:
                raise TaskDataError(f"{where}: no text for {', '.join(missing)}")
            qid = str(rec["id"]) if rec.get("id") not in (None, "") else str(i)
            if qid in seen:
                raise TaskDataError(f"{where}: duplicate question id {qid!r}")
            seen.add(qid)
            questions.append(GPQAQuestion(qid, rec["question"].strip(), rec["correct"].strip(),
                                          tuple(rec[f"incorrect_{k}"].strip() for k in (1, 2, 3))))
        if not questions:
            raise TaskDataError(f"{source}: no questions")
        recorded = {**(origin if origin is not None else {"data": source}), "shuffle_seed": shuffle_seed}
        return cls(name, tuple(questions), recorded, shuffle_seed)

    def problem(self, q: GPQAQuestion) -> TaskProblem:
        """The question with its options in this task's order for it; ``gold`` is the correct letter."""
        # A string seed is hashed with SHA-512 (not Python's salted hash): the same order in every process.
        order = random.Random(f"{self.shuffle_seed}:{q.id}").sample(range(4), 4)
        given = (q.correct, *q.incorrect)
        options = [given[i] for i in order]
        return TaskProblem(q.id, q.question, LETTERS[order.index(0)],
                           {"options": options, "order": order, "shuffle_seed": self.shuffle_seed})

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        questions = list(self.questions)
        if n is not None and n < len(questions):
            questions = random.Random(seed).sample(questions, n)
        return [self.problem(q) for q in questions]

    def message(self, problem: TaskProblem, chat: bool) -> str:
        options = "\n".join(f"{letter}) {text}" for letter, text in zip(LETTERS, problem.meta["options"], strict=True))
        return QUERY.format(question=problem.question, options=options)

    def grade(self, problem: TaskProblem, answer: str) -> Grade:
        letter = answer_letter(answer)
        return Grade(letter, letter == problem.gold)
