"""HumanEval: bundled problems, and generated code run only inside the sandbox."""

from __future__ import annotations

import socket

import pytest

from workbench.tasks import get_task
from workbench.tasks.sandbox import run_python


@pytest.fixture(scope="module")
def task():
    return get_task("humaneval")


def test_canonical_solutions_pass_and_wrong_ones_fail(task):
    problems = task.problems(3, seed=0)
    for p in problems:
        assert task.grade(p, p.gold).correct
        assert not task.grade(p, "    return None\n").correct


def test_fenced_whole_function_after_thinking(task):
    p = task.problems(1, seed=1)[0]
    answer = f"<think>let me write it</think>\n```python\n{p.meta['prompt']}{p.gold}```"
    assert task.grade(p, answer).correct


class TestSandbox:
    """Untrusted code gets no network, bounded time and memory, and a throwaway directory."""

    def test_no_network(self):
        # A server that is really listening on this machine's loopback: the sandbox must not reach it.
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            probe = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n"
            assert socket.create_connection(("127.0.0.1", port), timeout=2)  # reachable from outside the sandbox
            result = run_python(probe)
        assert not result.passed and "connected" not in result.stdout

    def test_timeout(self):
        assert run_python("while True:\n    pass\n", timeout=1.0).status == "timeout"

    def test_memory_limit(self):
        assert not run_python("x = bytearray(4 * 1024 ** 3)\n", memory_mb=512).passed

    def test_runs_in_a_temp_dir(self, tmp_path):
        result = run_python("import os\nprint(os.getcwd())\nopen('f.txt', 'w').write('x')\n")
        assert result.passed and "workbench-sandbox-" in result.stdout
