"""Runs untrusted generated Python in a separate process: time and memory limits, no network, temp dir.

The child gets its own empty temporary working directory, a minimal environment, CPU-time, address
space, file-size and process-count limits, and no network: it enters a fresh user and network
namespace (``unshare(CLONE_NEWUSER | CLONE_NEWNET)``), which leaves it only a loopback that is down.

Where the kernel refuses those namespaces (user namespaces disabled, container seccomp/AppArmor
policy) there is no network isolation, and ``run_python`` raises :class:`SandboxUnavailableError`
unless the caller opts in with ``allow_unisolated=True`` (the CLI's ``--allow-unsandboxed``) or
``WORKBENCH_ALLOW_UNSANDBOXED=1``; such runs keep the other limits and report ``isolated=False``.

What the limits do and don't guarantee:

* ``RLIMIT_NPROC`` is set to :data:`NPROC` tasks (threads count) after entering the new user
  namespace, where (Linux >= 5.14) it counts only the sandbox's own tasks. The kernel never enforces
  it for root (uid 0) or for holders of CAP_SYS_ADMIN/CAP_SYS_RESOURCE, so when the workbench runs
  as root a fork bomb is bounded only by the timeout. Without isolation it would count every task of
  the user, so it is set to the user's current task count plus :data:`NPROC`.
* The child leads its own session and process group; when it exits or times out the whole group is
  SIGKILLed. A descendant that leaves the group (its own ``setsid``/``setpgid``) escapes that kill.
* The code runs under the caller's uid: it can read and write what the caller can.

Example:
    >>> run_python("print(1 + 1)").stdout.strip()
    '2'
"""

from __future__ import annotations

import functools
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from workbench.tasks.base import Grade, TaskProblem

NPROC = 64
ALLOW_ENV = "WORKBENCH_ALLOW_UNSANDBOXED"
_NO_ISOLATION_EXIT = 86
_MARKER = "workbench-sandbox: unshare failed: "

# The program's first lines: unshare(CLONE_NEWUSER) needs a single-threaded process (so not the caller,
# which may run torch threads), and RLIMIT_NPROC must come after it to count only the new namespace's tasks.
_PRELUDE = """\
import ctypes as _ctypes, os as _os, resource as _resource
if {isolate} and _ctypes.CDLL(None, use_errno=True).unshare(0x10000000 | 0x40000000) != 0:  # NEWUSER | NEWNET
    _os.write(2, b"{marker}" + _os.strerror(_ctypes.get_errno()).encode())
    _os._exit({exit_code})
if {nproc} > 0:
    _resource.setrlimit(_resource.RLIMIT_NPROC, ({nproc}, {nproc}))
del _ctypes, _os, _resource
"""


class SandboxUnavailableError(RuntimeError):
    """Network isolation is unavailable here and the caller did not opt in to running without it."""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    isolated: bool  # False when it ran without network isolation (opted in)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _prelude(isolate: bool, nproc: int | None) -> str:
    return _PRELUDE.format(isolate=isolate, nproc=nproc or 0, marker=_MARKER, exit_code=_NO_ISOLATION_EXIT)


def isolation_unavailable_reason() -> str | None:
    """None when a child can take fresh user and network namespaces here, else why not (probed once).

    >>> isolation_unavailable_reason() is None or "unshare" in isolation_unavailable_reason()
    True
    """
    return _probe()


@functools.cache
def _probe() -> str | None:
    try:
        probe = subprocess.run([sys.executable, "-I", "-c", _prelude(True, None)], capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the isolation probe could not run: {exc}"
    if probe.returncode == 0:
        return None
    if _MARKER in probe.stderr:
        return _refused(probe.stderr)
    return f"the isolation probe exited {probe.returncode}: {probe.stderr.strip()[-500:]}"


def _refused(stderr: str) -> str:
    return "the kernel refused user namespaces: unshare(CLONE_NEWUSER | CLONE_NEWNET) failed: " + (
        stderr.split(_MARKER, 1)[1].strip())


def _refusal(reason: str) -> str:
    return (f"network isolation is unavailable on this machine ({reason}), so "
            "generated code could reach the network and local services; refusing to run it. To run it anyway "
            "without network isolation (time, memory and process limits still apply), pass allow_unisolated=True "
            f"to run_python (HumanEvalTask(allow_unsandboxed=True), the workbench CLI's --allow-unsandboxed) or set "
            f"{ALLOW_ENV}=1. To get isolation, allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
            "kernel.apparmor_restrict_unprivileged_userns, or the container's seccomp profile).")


def _user_tasks() -> int | None:
    """Tasks (threads) of this user visible in /proc, which RLIMIT_NPROC counts; None without /proc."""
    uid, count = os.getuid(), 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:  # it exited meanwhile
            pass
    return count


def _nproc_limit(isolate: bool) -> int | None:
    if isolate:
        limit = NPROC
    else:
        tasks = _user_tasks()
        if tasks is None:
            return None
        limit = tasks + NPROC
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


def _limits(memory_mb: int, cpu_seconds: int):
    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024,) * 2)

    return apply


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Waits up to ``timeout`` s for ``pid`` to exit, leaving it unreaped so its pid (the group id) is not reused."""
    deadline, delay = time.monotonic() + timeout, 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.01)
    return True


def _tail(path: str, chars: int = 4000) -> str:
    with open(path, "rb") as fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4 * chars))
        return fh.read().decode(errors="replace")[-chars:]


def require_isolation(allow_unisolated: bool = False) -> bool:
    """Whether generated code will run network-isolated; raises when it cannot and nobody opted in.

    Callers check this before a long run, so a refusal comes before any model is loaded.
    """
    reason = isolation_unavailable_reason()
    if reason is not None and not (allow_unisolated or os.environ.get(ALLOW_ENV) == "1"):
        raise SandboxUnavailableError(_refusal(reason))
    return reason is None


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024,
               allow_unisolated: bool = False) -> SandboxResult:
    """Executes ``code`` with ``python -I`` in a fresh temp dir; never raises for the code's own errors.

    Raises :class:`SandboxUnavailableError` when network isolation is unavailable, unless ``allow_unisolated``
    or ``WORKBENCH_ALLOW_UNSANDBOXED=1``. Output goes to files (not pipes), so a descendant that keeps them
    open cannot stall the caller, and ``RLIMIT_FSIZE`` bounds it.
    """
    isolate = require_isolation(allow_unisolated)
    with tempfile.TemporaryDirectory(prefix="workbench-sandbox-", ignore_cleanup_errors=True) as tmp:
        work, script = os.path.join(tmp, "work"), os.path.join(tmp, "program.py")
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        os.mkdir(work)
        with open(script, "w") as fh:
            fh.write(_prelude(isolate, _nproc_limit(isolate)) + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "PYTHONDONTWRITEBYTECODE": "1"}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", script], cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=_limits(memory_mb, int(timeout) + 1),
            )
        try:
            finished = _wait_unreaped(proc.pid, timeout)
        finally:  # also on KeyboardInterrupt: no descendant may outlive the call
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        stdout, stderr = _tail(out_path), _tail(err_path)
    if isolate and proc.returncode == _NO_ISOLATION_EXIT and _MARKER in stderr:
        _probe.cache_clear()  # the probe passed earlier; the kernel refuses now
        raise SandboxUnavailableError(_refusal(_refused(stderr)))
    if not finished:
        return SandboxResult("timeout", None, stdout, stderr, isolate)
    return SandboxResult("passed" if proc.returncode == 0 else "failed", proc.returncode, stdout, stderr, isolate)


class SandboxGraded:
    """A code task graded by running ``program(problem, answer)`` in the sandbox (HumanEval, MBPP).

    A mixin for a frozen dataclass task with ``timeout`` and ``allow_unsandboxed`` fields.
    """

    timeout: float
    allow_unsandboxed: bool

    def program(self, problem: TaskProblem, answer: str) -> str:
        """The program whose run grades ``answer`` (the task's tests appended)."""
        raise NotImplementedError

    def check_ready(self) -> None:
        """Refuses, before a run starts, to grade where generated code could reach the network."""
        require_isolation(self.allow_unsandboxed)

    def grade(self, problem: TaskProblem, answer: str) -> Grade:
        result = run_python(self.program(problem, answer), timeout=self.timeout,
                            allow_unisolated=self.allow_unsandboxed)
        return Grade(result.status, result.passed)
