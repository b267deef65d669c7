"""HumanEval: bundled problems, and generated code run only inside the sandbox (see test_sandbox.py)."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.tasks import get_task, sandbox
from workbench.tasks.sandbox import SandboxUnavailableError, isolation_unavailable_reason

ISOLATED = isolation_unavailable_reason() is None


@pytest.fixture(scope="module")
def task():
    # Where the machine offers no network isolation the tests opt in, as a user of the CLI would.
    return dataclasses.replace(get_task("humaneval"), allow_unsandboxed=not ISOLATED)


def test_canonical_solutions_pass_and_wrong_ones_fail(task):
    problems = task.problems(3, seed=0)
    for p in problems:
        assert task.grade(p, p.gold).correct
        assert not task.grade(p, "    return None\n").correct


def test_fenced_whole_function(task):
    p = task.problems(1, seed=1)[0]
    answer = f"Here it is:\n```python\n{p.meta['prompt']}{p.gold}```"
    assert task.grade(p, answer).correct


def test_without_isolation_grading_refuses_unless_allowed(task, monkeypatch):
    monkeypatch.setattr(sandbox, "isolation_unavailable_reason", lambda: "the kernel refused user namespaces")
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    p = task.problems(1, seed=0)[0]
    with pytest.raises(SandboxUnavailableError, match="allow_unsandboxed=True"):
        dataclasses.replace(task, allow_unsandboxed=False).grade(p, p.gold)
    assert dataclasses.replace(task, allow_unsandboxed=True).grade(p, p.gold).correct
