"""MBPP: write a Python function from a one-line description; graded by the dataset's asserts in the sandbox.

The question shows the description and the first test, which gives the function's name and signature (as
EvalPlus's MBPP prompt does, which AdaRAS evaluates with; the MBPP paper showed all three: ``shown_tests``).
The answer's code is its last fenced code block, else the text before a closing fence, else the whole answer.
The program run is the dataset's test imports and setup code, that code, then every assert of ``test_list``; it
passes when the process exits cleanly. Generated code runs only in the sandbox, which refuses to run without
network isolation unless ``allow_unsandboxed`` is set (see ``workbench.tasks.sandbox``).

Example:
    >>> rec = {"id": 2, "question": "Write a function to add two numbers.",
    ...        "code": "def add(a, b):\\n    return a + b", "tests": ["assert add(1, 2) == 3"]}
    >>> task = MBPPTask.from_records([rec], source="inline")
    >>> print(program_for(task.problems(None, 0)[0], "```python\\ndef add(a, b):\\n    return a - b\\n```"))
    def add(a, b):
        return a - b
    <BLANKLINE>
    assert add(1, 2) == 3
    <BLANKLINE>
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workbench.tasks.base import TaskDefaults, TaskProblem
from workbench.tasks.math import TaskDataError
from workbench.tasks.sandbox import SandboxGraded

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL)


def code_of(answer: str) -> str:
    """The code in an answer: its last fenced block, else the text before a closing fence, else all of it.

    >>> code_of("Sure:\\n```python\\nx = 1\\n```\\nand\\n```py\\nx = 2\\n```"), code_of("x = 3\\n```\\nDone.")
    ('x = 2\\n', 'x = 3\\n')
    """
    blocks = _FENCE.findall(answer)
    if blocks:
        return blocks[-1]
    return answer.split("```", 1)[0]


def program_for(problem: TaskProblem, answer: str) -> str:
    """The program the sandbox runs: test imports and setup, the answer's code, then the asserts."""
    head = "\n".join([*problem.meta["imports"], problem.meta["setup"]]).strip()
    tests = "\n".join(problem.meta["tests"])
    return "\n\n".join(part for part in (head, code_of(answer).rstrip(), tests) if part) + "\n"


def _strings(value: Any, where: str, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TaskDataError(f"{where}: {name!r} should be a list of strings, got {type(value).__name__}")
    return [v for v in value if v.strip()]


@dataclass(frozen=True)
class MBPPTask(SandboxGraded, TaskDefaults):
    """MBPP problems; ``gold`` is the reference code. ``source`` says where they came from (a run records it)."""

    name: str
    items: tuple[TaskProblem, ...]
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    timeout: float = 10.0
    allow_unsandboxed: bool = False  # run even without network isolation (the CLI's --allow-unsandboxed)
    shown_tests: int = 1

    @classmethod
    def from_records(cls, records: Iterable, source: str, name: str = "mbpp",
                     origin: Mapping[str, Any] | None = None) -> MBPPTask:
        """Records with ``question``, ``code``, ``tests`` and optionally ``imports``, ``setup`` and ``id``;
        ``origin`` is recorded as the task's ``source`` (default: ``{"data": source}``)."""
        items, seen = [], set()
        for i, rec in enumerate(records):
            where, rec = rec if isinstance(rec, tuple) else (f"{source}:{i + 1}", rec)
            question, code = rec.get("question"), rec.get("code")
            if not isinstance(question, str) or not question.strip():
                raise TaskDataError(f"{where}: no task description ('prompt' or 'text')")
            tests = _strings(rec.get("tests"), where, "test_list")
            if not tests:
                raise TaskDataError(f"{where}: no asserts in 'test_list' to grade with")
            pid = str(rec["id"]) if rec.get("id") not in (None, "") else str(i)
            if pid in seen:
                raise TaskDataError(f"{where}: duplicate problem id {pid!r}")
            seen.add(pid)
            setup = rec.get("setup") if isinstance(rec.get("setup"), str) else ""
            meta = {"tests": tests, "imports": _strings(rec.get("imports"), where, "test_imports"), "setup": setup}
            items.append(TaskProblem(pid, question.strip(), code if isinstance(code, str) else "", meta))
        if not items:
            raise TaskDataError(f"{source}: no problems")
        return cls(name, tuple(items), dict(origin) if origin is not None else {"data": source})

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        items = list(self.items)
        return random.Random(seed).sample(items, n) if n is not None and n < len(items) else items

    def message(self, problem: TaskProblem, chat: bool) -> str:
        shown = problem.meta["tests"][: self.shown_tests]
        which = "this test" if len(shown) == 1 else "these tests"
        return (f"You are an expert Python programmer, and here is your task: {problem.question} Your code should "
                f"pass {which}:\n\n" + "\n".join(shown) + "\n\nReply with the function in a ```python``` block.")

    def program(self, problem: TaskProblem, answer: str) -> str:
        return program_for(problem, answer)
