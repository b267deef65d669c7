"""What a folder given to the app holds: a study, one task of a study, or a single trace run.

The app accepts any of the three and shows what it finds::

    STUDY/results.json, STUDY/<task>/analysis/, STUDY/<task>/<method>/    (``workbench eval`` / ``run``)
    TASK/analysis/, TASK/<method>/                                         (one task of a study)
    RUN/traces.parquet (+ RUN/activations/, RUN/neurons/, ...)             (``workbench traces``)

A trace run is any folder with a ``manifest.json`` (``traces.parquet`` once finished). A piece a view
needs and the folder lacks is a ``Missing``: what is missing and the command that makes it, so the app
says so instead of failing.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for run in (StudyPaths(root).analysis("organism"), StudyPaths(root).method("organism", "vanilla")):
    ...     run.mkdir(parents=True)
    ...     _ = RunPaths(run).manifest.write_text("{}")
    >>> layout = find_layout(root)
    >>> layout.kind, list(layout.tasks), layout.tasks["organism"].analysis.name, list(layout.tasks["organism"].methods)
    ('study', ['organism'], 'analysis', ['vanilla'])
    >>> print(need_activations(StudyPaths(root).analysis("organism")))
    no activation cache in .../organism/analysis: run `workbench cache .../organism/analysis`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench.store.paths import ANALYSIS_RUN, RunPaths, StudyPaths


@dataclass(frozen=True)
class Missing:
    """A piece a view needs that a run directory lacks, and the command that makes it."""

    what: str
    command: str

    def __str__(self) -> str:
        return f"{self.what}: run `{self.command}`"


@dataclass(frozen=True)
class TaskRuns:
    """The trace runs of one task: the analysis run (neurons, probes, detectors) and one run per method."""

    name: str
    analysis: Path | None
    methods: dict[str, Path] = field(default_factory=dict)

    def runs(self) -> dict[str, Path]:
        """Every trace run of the task by name, the analysis run first."""
        if self.analysis is None or self.analysis in self.methods.values():
            return dict(self.methods)
        return {ANALYSIS_RUN: self.analysis} | self.methods


@dataclass(frozen=True)
class RunLayout:
    """What a folder holds: its kind, its tasks' trace runs, and the study's results file if any."""

    root: Path
    kind: Literal["study", "task", "run"]
    tasks: dict[str, TaskRuns]
    results: Path | None = None


class LayoutError(ValueError):
    """A folder that holds no trace run; ``missing`` says what to run."""

    def __init__(self, missing: Missing) -> None:
        super().__init__(str(missing))
        self.missing = missing


def is_trace_run(path: Path) -> bool:
    return RunPaths(path).manifest.is_file() or RunPaths(path).traces.is_file()


def _task(folder: Path) -> TaskRuns | None:
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and is_trace_run(p)) if folder.is_dir() else []
    if not runs:
        return None
    analysis_run = StudyPaths(folder.parent).analysis(folder.name)
    methods = {p.name: p for p in runs if p != analysis_run}
    analysis = analysis_run if analysis_run in runs else None
    return TaskRuns(folder.name, analysis, methods)


def find_layout(path: str | Path) -> RunLayout:
    """Reads what ``path`` holds; a ``Missing`` error (``LayoutError``) when it holds no trace run at all."""
    root = Path(path)
    if not root.is_dir():
        raise LayoutError(Missing(f"{root} is not a folder", "workbench run --out " + str(root)))
    if is_trace_run(root):
        # A single trace run is its own analysis run: views that need a cache or neurons say how to make them.
        return RunLayout(root, "run", {root.name: TaskRuns(root.name, root, {root.name: root})})
    direct = _task(root)
    if direct is not None:
        return RunLayout(root, "task", {root.name: direct})
    tasks = {t.name: t for t in (_task(p) for p in sorted(root.iterdir()) if p.is_dir()) if t is not None}
    if not tasks:
        raise LayoutError(Missing(f"no trace run under {root}", f"workbench run --out {root}"))
    results = StudyPaths(root).results_json
    return RunLayout(root, "study", tasks, results if results.is_file() else None)


def need_traces(run: Path) -> Missing | None:
    if RunPaths(run).traces.is_file():
        return None
    return Missing(f"no finished traces in {run}", f"workbench traces --out {run}")


def need_activations(run: Path) -> Missing | None:
    if RunPaths(run).activations.index.is_file():
        return None
    return Missing(f"no activation cache in {run}", f"workbench cache {run}")


def need_neurons(run: Path, name: str) -> Missing | None:
    """``RUN/neurons/<name>.json``; the ranking command depends on its family (rcn*, exit, mon-*)."""
    if RunPaths(run).neuron_set(name).is_file():
        return None
    family = "rcn" if name.startswith("rcn") else "mon" if name.startswith("mon") else "exit"
    cache = "" if need_activations(run) is None or family == "exit" else f"workbench cache {run} && "
    return Missing(f"no neuron set {name!r} in {run}", f"{cache}workbench rank --method {family} {run}")


def need_probes(run: Path) -> Missing | None:
    if RunPaths(run).probe_report.is_file():
        return None
    cache = "" if need_activations(run) is None else f"workbench cache {run} && "
    return Missing(f"no probe report in {run}", f"{cache}workbench probe {run}")


def need_results(layout: RunLayout) -> Missing | None:
    if layout.results is not None:
        return None
    return Missing(f"no study results in {layout.root}",
                   f"workbench eval --config STUDY.toml --out {layout.root}  (or `workbench run --out {layout.root}`)")


def neuron_sets(run: Path) -> list[str]:
    """The names of the neuron sets under ``RUN/neurons/`` (``rcn``, ``exit``, ``mon-slip``, ...), sorted."""
    folder = RunPaths(run).neurons
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def read_json(path: Path) -> dict[str, Any] | list[Any]:
    """A JSON file the analyses wrote (their reports allow NaN)."""
    return json.loads(path.read_text())
