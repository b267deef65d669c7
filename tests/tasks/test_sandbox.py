"""The sandbox: no network (or a clear refusal), bounded time, memory and processes, a throwaway directory."""

from __future__ import annotations

import os
import resource
import signal
import socket
import time

import pytest

from workbench.tasks import sandbox
from workbench.tasks.sandbox import NPROC, SandboxUnavailableError, isolation_unavailable_reason, run_python

ISOLATED = isolation_unavailable_reason() is None
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="no user/network namespaces on this machine")


def run(code: str, **kwargs) -> sandbox.SandboxResult:
    """``run_python`` for tests of the limits, which hold with or without network isolation."""
    return run_python(code, allow_unisolated=True, **kwargs)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie that nobody reaps (pid 1 in some containers) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# Forks a grandchild that records its pid and would live for 30 s; it closes stdout/stderr so that a
# sandbox waiting on pipes is not what keeps the test from finishing.
GRANDCHILD = """
import os, time
if os.fork() == 0:
    os.close(1)
    os.close(2)
    with open({path!r} + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename({path!r} + ".tmp", {path!r})
    time.sleep(30)
    os._exit(0)
while not os.path.exists({path!r}):
    time.sleep(0.01)
{then}
"""


class TestNetwork:
    @needs_isolation
    def test_no_network(self):
        # A server that is really listening on this machine's loopback: the sandbox must not reach it,
        # neither through socket nor through the C module under it.
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2):  # reachable from outside the sandbox
                pass
            for probe in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
                          f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"):
                result = run_python(probe + "print('connected')\n")
                assert result.isolated and not result.passed and "connected" not in result.stdout

    @pytest.fixture
    def no_isolation(self, monkeypatch):
        monkeypatch.setattr(sandbox, "isolation_unavailable_reason", lambda: "the kernel refused user namespaces")
        monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)

    def test_refuses_without_isolation(self, no_isolation):
        refusal = (r"(?s)network isolation is unavailable on this machine \(the kernel refused user namespaces\)"
                   r".*allow_unisolated=True.*--allow-unsandboxed.*WORKBENCH_ALLOW_UNSANDBOXED=1")
        with pytest.raises(SandboxUnavailableError, match=refusal):
            run_python("print('ran')")

    def test_opt_in_runs_without_isolation_and_says_so(self, no_isolation, monkeypatch):
        result = run_python("print('ran')", allow_unisolated=True)
        assert result.passed and result.stdout == "ran\n" and result.isolated is False
        monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
        assert run_python("print('ran')").isolated is False

    def test_unshare_refused_in_the_child(self, monkeypatch):
        # Flags the kernel rejects stand in for a kernel that refuses namespaces: probe and run both report it.
        monkeypatch.setattr(sandbox, "_PRELUDE", sandbox._PRELUDE.replace("0x10000000 | 0x40000000", "-1"))
        assert sandbox._probe.__wrapped__().endswith("unshare(CLONE_NEWUSER | CLONE_NEWNET) failed: Invalid argument")
        monkeypatch.setattr(sandbox, "isolation_unavailable_reason", lambda: None)  # as if the probe had passed
        with pytest.raises(SandboxUnavailableError, match="Invalid argument"):
            run_python("print('ran')")


class TestLimits:
    def test_timeout(self):
        assert run("while True:\n    pass\n", timeout=1.0).status == "timeout"

    def test_memory_limit(self):
        assert not run("x = bytearray(4 * 1024 ** 3)\n", memory_mb=512).passed

    def test_process_count_limit(self):
        result = run("import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n")
        limit = int(result.stdout)
        assert limit == NPROC if result.isolated else NPROC <= limit != resource.RLIM_INFINITY

    @pytest.mark.parametrize("then", ["time.sleep(30)", "print('done')"], ids=["timeout", "normal-exit"])
    def test_no_descendant_survives(self, tmp_path, then):
        pid_file = tmp_path / "grandchild.pid"
        started = time.monotonic()
        result = run(GRANDCHILD.format(path=str(pid_file), then=then), timeout=2.0)
        assert time.monotonic() - started < 10
        assert result.status == ("timeout" if "sleep" in then else "passed")
        pid = int(pid_file.read_text())
        try:
            deadline = time.monotonic() + 5  # SIGKILL is delivered asynchronously
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(pid)
        finally:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def test_runs_in_a_temp_dir(self):
        result = run("import os\nprint(os.getcwd())\nopen('f.txt', 'w').write('x')\n")
        assert result.passed and "workbench-sandbox-" in result.stdout
