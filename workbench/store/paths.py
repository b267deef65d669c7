"""The layout of a run directory and of a study's folder, named in one place.

Every writer and every reader (the analyses, the methods, the figures, the app, the CLI, the notebooks)
asks ``RunPaths`` or ``StudyPaths`` where a file lives; no other module spells a file name of the layout
(``tests/test_run_paths.py`` checks it). Both are frozen and cheap: build one wherever a path is needed.

A trace run::

    RUN/manifest.json  .lock  traces.parquet  shards/  shards-corrupt/     the trace store
    RUN/evaluation.json                       what the study harness recorded (identity, stages, not applied)
    RUN/validate.json                         ``workbench validate`` on an organism run
    RUN/activations/                          the activation store (manifest, shards, index, token neurons)
    RUN/neurons/<name>.json                   neuron sets: rcn, rcn-random, rcn-*, exit, mon-<type>
    RUN/adaras/rcn.json  RUN/adaras/gate/     AdaRAS's ranking summary and its failure gate
    RUN/probes/report.json                    the probe report (AdaRAS)
    RUN/neat/reference.json  report.json      NEAT's exit reference (mu_ref) and its report
    RUN/neureasoner/report.json  detector-<name>.joblib  heads-<type>.json

A study::

    DIR/results.{parquet,json,md}  DIR/not_applied.json
    DIR/<task>/analysis/   a trace run (RunPaths) with the task's analyses
    DIR/<task>/<method>/   one trace run per method

Example:
    >>> run = RunPaths("runs/t")
    >>> str(run.neuron_set("rcn")), str(run.probe_report), str(run.activations.index)
    ('runs/t/neurons/rcn.json', 'runs/t/probes/report.json', 'runs/t/activations/index.parquet')
    >>> study = StudyPaths("runs/s")
    >>> str(study.analysis("organism")), str(study.method("organism", "vanilla")), str(study.results_json)
    ('runs/s/organism/analysis', 'runs/s/organism/vanilla', 'runs/s/results.json')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ANALYSIS_RUN = "analysis"  # DIR/<task>/analysis: no method may take this name


@dataclass(frozen=True)
class StorePaths:
    """The files of a store folder: the trace store is a run's root, the activation store ``RUN/activations``.

    Shards are ``shards/part-<name>.parquet``; the activation store writes each shard's tensors beside it as
    ``part-<n>.safetensors`` (the parquet, which says which traces it holds, is written second).

    Example:
        >>> StorePaths(Path("r")).shard("w0-000001").name
        'part-w0-000001.parquet'
    """

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def corrupt(self) -> Path:
        """Where a shard that fails to parse is moved, so that a resume regenerates it."""
        return self.root / "shards-corrupt"

    def shard(self, name: str, suffix: str = ".parquet") -> Path:
        return self.shards / f"part-{name}{suffix}"

    def shard_files(self, suffix: str = ".parquet") -> list[Path]:
        return sorted(self.shards.glob(f"part-*{suffix}"))

    @property
    def index(self) -> Path:
        """The activation store's per-trace index, written last: a cache is complete when it exists."""
        return self.root / "index.parquet"

    @property
    def token_neurons(self) -> Path:
        """The neurons the activation store keeps per token."""
        return self.root / "token_neurons.json"


@dataclass(frozen=True)
class RunPaths:
    """Every file and folder of a trace run directory (see the module docstring for the tree).

    Example:
        >>> RunPaths("r").detector("slip_random").name, RunPaths("r").heads("slip").name
        ('detector-slip_random.joblib', 'heads-slip.json')
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # -- the trace store ----------------------------------------------------------------------------------------
    @property
    def store(self) -> StorePaths:
        return StorePaths(self.root)

    @property
    def manifest(self) -> Path:
        return self.store.manifest

    @property
    def lock(self) -> Path:
        return self.store.lock

    @property
    def traces(self) -> Path:
        """The compacted trace table, written when the run completes."""
        return self.root / "traces.parquet"

    @property
    def record(self) -> Path:
        """What the study harness records in each run it ran (identity, stages done, what could not apply)."""
        return self.root / "evaluation.json"

    @property
    def validate(self) -> Path:
        return self.root / "validate.json"

    # -- the activation store -----------------------------------------------------------------------------------
    @property
    def activations(self) -> StorePaths:
        return StorePaths(self.root / "activations")

    # -- analyses -----------------------------------------------------------------------------------------------
    @property
    def neurons(self) -> Path:
        return self.root / "neurons"

    def neuron_set(self, name: str) -> Path:
        """``RUN/neurons/<name>.json``: ``rcn``, ``rcn-random``, ``exit``, ``mon-<type>``, ..."""
        return self.neurons / f"{name}.json"

    def mon_set(self, failure_type: str) -> Path:
        return self.neuron_set(f"mon-{failure_type}")

    @property
    def exit_set(self) -> Path:
        return self.neuron_set("exit")

    @property
    def adaras(self) -> Path:
        return self.root / "adaras"

    @property
    def rcn_summary(self) -> Path:
        return self.adaras / "rcn.json"

    @property
    def gate(self) -> Path:
        """The AdaRAS gate's folder (``Gate.save`` / ``Gate.load``)."""
        return self.adaras / "gate"

    @property
    def probes(self) -> Path:
        return self.root / "probes"

    @property
    def probe_report(self) -> Path:
        return self.probes / "report.json"

    @property
    def neat(self) -> Path:
        return self.root / "neat"

    @property
    def exit_reference(self) -> Path:
        return self.neat / "reference.json"

    @property
    def exit_report(self) -> Path:
        return self.neat / "report.json"

    @property
    def exit_fit(self) -> Path:
        """NEAT's fit on the fitting half (per-neuron exit means, the selection), read by ``exit_report``;
        its config and fitting problems are in ``exit_reference``."""
        return self.neat / "fit.safetensors"

    @property
    def neureasoner(self) -> Path:
        return self.root / "neureasoner"

    @property
    def mon_report(self) -> Path:
        return self.neureasoner / "report.json"

    def detector(self, name: str) -> Path:
        """``<type>``, ``<type>_tokens`` or ``<type>_random``."""
        return self.neureasoner / f"detector-{name}.joblib"

    def heads(self, failure_type: str) -> Path:
        return self.neureasoner / f"heads-{failure_type}.json"

    def head_sets(self) -> list[Path]:
        """The head sets a NeuReasoner analysis saved (a later analysis without heads removes them)."""
        return sorted(self.neureasoner.glob("heads-*.json"))

    def detectors(self) -> dict[str, Path]:
        """The detectors a NeuReasoner analysis saved, by name (the ``name`` of ``detector(name)``).

        Example:
            >>> run = RunPaths(__import__("tempfile").mkdtemp())
            >>> run.neureasoner.mkdir(); _ = run.detector("slip_random").write_bytes(b"")
            >>> list(run.detectors())
            ['slip_random']
        """
        return {p.stem.removeprefix("detector-"): p for p in sorted(self.neureasoner.glob("detector-*.joblib"))}


def gate_files(folder: str | Path) -> tuple[Path, Path]:
    """A saved gate's state dict and its config, inside its folder (``RunPaths.gate``)."""
    return Path(folder) / "gate.safetensors", Path(folder) / "gate.json"


@dataclass(frozen=True)
class StudyPaths:
    """The folder a study writes: per task its analysis run and one run per method, then the results."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def task(self, task: str) -> Path:
        return self.root / task

    def analysis(self, task: str) -> Path:
        return self.root / task / ANALYSIS_RUN

    def method(self, task: str, method: str) -> Path:
        return self.root / task / method

    def analyses(self) -> list[Path]:
        """Every task's analysis run found under the folder."""
        return sorted(p for p in self.root.glob(f"*/{ANALYSIS_RUN}") if p.is_dir())

    @property
    def results_parquet(self) -> Path:
        return self.root / "results.parquet"

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def not_applied(self) -> Path:
        return self.root / "not_applied.json"

    @property
    def figures(self) -> Path:
        """The study's figures (``workbench run``, ``workbench eval --figures``)."""
        return self.root / "figures"
