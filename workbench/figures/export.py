"""Static export of a batch of figures: SVG, PDF or PNG through kaleido and a Chrome, or HTML without one.

Kaleido (>= 1.0) drives a Chrome-family browser; starting it costs seconds, so a batch is written in
one session. The session runs in a child process (``_kaleido_worker.py``) that reports each figure as
it is written: a browser that does not come up within ``startup_timeout_s``, or a figure that takes
longer than ``figure_timeout_s``, ends the child and the browser it started, with an error that says
so, never a hang. No browser at all is a ``BrowserMissing`` error before anything starts.

The browser is ``$BROWSER_PATH`` when set, else the first of ``BROWSER_NAMES`` on ``PATH`` (Debian:
``apt-get install chromium``). HTML needs no browser: plotly.js is written once beside the files.

Example:
    >>> import tempfile
    >>> import plotly.graph_objects as go
    >>> out = Path(tempfile.mkdtemp())
    >>> export_figures({"a": go.Figure(go.Bar(y=[1, 2]))}, out, "html").files[0].name
    'a.html'
    >>> export_figures({"a": go.Figure()}, out, "svg", browser="/nonexistent/chromium")
    Traceback (most recent call last):
    ...
    workbench.figures.export.BrowserMissing: browser /nonexistent/chromium is not an executable file; install ...
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from workbench.figures.style import SCREEN, FigureStyle

FORMATS = ("svg", "pdf", "png", "html")
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL = ("install a Chrome-family browser (Debian/Ubuntu: `apt-get install -y chromium`; or `kaleido_get_chrome`), "
           "or point BROWSER_PATH at one; `--format html` needs no browser")
WORKER = Path(__file__).with_name("_kaleido_worker.py")


class BrowserMissing(RuntimeError):
    """No Chrome-family browser to export static images with."""


class ExportError(RuntimeError):
    """The browser started but the export failed or timed out."""


def find_browser() -> str | None:
    """``$BROWSER_PATH`` (which must be an executable file), else the first of ``BROWSER_NAMES`` on ``PATH``."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise BrowserMissing(f"BROWSER_PATH={env} is not an executable file; {INSTALL}")
        return env
    return next((p for p in map(shutil.which, BROWSER_NAMES) if p), None)


@dataclass
class ExportResult:
    """What a batch wrote, and how long it took.

    Attributes:
        files: the files written, in the order given.
        fmt: their format.
        browser: the browser used (None for HTML).
        startup_s: seconds until the browser was ready (0 for HTML).
        seconds: per figure name, seconds to write it (browser start excluded).
        total_s: wall-clock seconds of the whole batch.
        errors: per figure name, why it was not written.
    """

    files: list[Path]
    fmt: str
    browser: str | None = None
    startup_s: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def per_figure_s(self) -> float:
        """Mean seconds per written figure, browser start included (the cost of a batch, per figure)."""
        return self.total_s / max(len(self.files), 1)


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux ``/proc``; empty elsewhere), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kills the worker and every process it started (the browser runs in a session of its own)."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def _size(fig: go.Figure, style: FigureStyle) -> tuple[int, int]:
    width, height = style.size
    return int(fig.layout.width or width), int(fig.layout.height or height)


def export_figures(
    figures: Mapping[str, go.Figure],
    out: str | Path,
    fmt: str = "svg",
    style: FigureStyle = SCREEN,
    browser: str | None = None,
    startup_timeout_s: float = 60.0,
    figure_timeout_s: float = 60.0,
) -> ExportResult:
    """Writes ``figures`` as ``OUT/<name>.<fmt>``, static formats in one browser session; see the module docstring."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    # Absolute: the browser's worker runs in a scratch folder, where a relative path names nothing.
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if fmt == "html":
        result = ExportResult([], fmt)
        for name, fig in figures.items():
            t = time.perf_counter()
            fig.write_html(out / f"{name}.html", include_plotlyjs="directory")  # plotly.min.js once, beside them
            result.files.append(out / f"{name}.html")
            result.seconds[name] = time.perf_counter() - t
        result.total_s = time.perf_counter() - t0
        return result
    if browser is not None and not (Path(browser).is_file() and os.access(browser, os.X_OK)):
        raise BrowserMissing(f"browser {browser} is not an executable file; {INSTALL}")
    browser = browser or find_browser()
    if browser is None:
        raise BrowserMissing(f"no Chrome-family browser found (looked for BROWSER_PATH and {', '.join(BROWSER_NAMES)} "
                             f"on PATH) to write {fmt.upper()} figures; {INSTALL}")
    names = list(figures)
    result = ExportResult([], fmt, browser=browser)
    if not names:
        return result
    items = []
    for name in names:
        width, height = _size(figures[name], style)
        items.append({"fig": json.loads(figures[name].to_json()), "path": str(out / f"{name}.{fmt}"),
                      "opts": {"format": fmt, "width": width, "height": height, "scale": 1}})
    with tempfile.TemporaryDirectory(prefix="workbench-figures-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"browser": browser, "timeout": figure_timeout_s, "items": items}))
        proc = subprocess.Popen([sys.executable, "-I", str(WORKER), str(spec)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        stage, deadline = "start", time.monotonic() + startup_timeout_s
        try:
            while True:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    _kill_tree(proc)
                    what = (f"the browser {browser} did not start within {startup_timeout_s:g} s" if stage == "start"
                            else f"figure {names[len(result.seconds) + len(result.errors)]!r} took longer than "
                                 f"{figure_timeout_s:g} s")
                    raise ExportError(f"{what}; export stopped. Check that it runs headless (`{browser} --headless "
                                      f"--dump-dom about:blank`), or {INSTALL}") from None
                if line is None:
                    break
                word, *rest = line.split(maxsplit=2)
                if word == "ready":
                    result.startup_s, stage = float(rest[0]), "figures"
                elif word == "wrote":
                    name = names[int(rest[0])]
                    result.seconds[name] = float(rest[1])
                    result.files.append(out / f"{name}.{fmt}")
                elif word == "error":
                    result.errors[names[int(rest[0])]] = rest[1].strip() if len(rest) > 1 else "unknown error"
                deadline = time.monotonic() + figure_timeout_s
            proc.wait(timeout=figure_timeout_s)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
        stderr = proc.stderr.read() if proc.stderr is not None else ""
    if proc.returncode != 0 and len(result.files) + len(result.errors) < len(names):
        tail = stderr.strip().splitlines()[-3:]
        if "ChromeNotFoundError" in stderr or "BrowserFailedError" in stderr:
            raise BrowserMissing(f"the browser {browser} could not be started ({' '.join(tail)[-300:]}); {INSTALL}")
        raise ExportError(f"the export of {fmt.upper()} figures failed: {' '.join(tail)[-500:]}")
    result.total_s = time.perf_counter() - t0
    return result
