"""The analysis stages a study can run on a task's analysis run, by name, like the method registry.

Each stage is an entry point of one shape, ``f(run, *, config=None, model=None, progress=False) -> result``, and
the config class it takes (the ``[analysis.<stage>]`` table of a study file). The study validates the stage
names and configs against ``STAGES``; the runner calls ``STAGES[name].run(...)``. Stages run in the order
``STAGES`` lists them.

Example:
    >>> list(STAGES)
    ['cache', 'rcn', 'probe', 'exit', 'mon']
    >>> STAGES["rcn"].config_class().__name__, STAGES["rcn"].needs_cache
    ('AdarasConfig', True)
    >>> get_stage("probes")
    Traceback (most recent call last):
    ...
    KeyError: "unknown analysis stage 'probes'; choose from cache, rcn, probe, exit, mon"
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """One analysis stage: its entry point and config class (``module:name``, imported on first use).

    Attributes:
        name: the stage's name in a study (``stages = [...]``, ``[analysis.<name>]``).
        entry: ``module:function``, called as ``f(run, *, config=..., model=..., progress=...)``.
        config: ``module:Class`` of its config (frozen dataclass; the study builds it from the stage's table).
        needs_cache: it reads the activation store, so the study refuses it without the ``cache`` stage.
        summary: what it writes, for ``workbench`` help and errors.
        version: raised when the same config comes to write different results; a study refuses to resume an
            analysis run whose stage ran at another version (methods built on it would mix both).
        changes: what the last version changed, for that refusal.
    """

    name: str
    entry: str
    config: str
    needs_cache: bool
    summary: str
    version: int = 1
    changes: str = ""

    def config_class(self) -> type:
        return _load(self.config)

    def run(self, run: str | Path, *, config: Any = None, model: Any = None, progress: bool = False) -> Any:
        return _load(self.entry)(run, config=config, model=model, progress=progress)


# stage name -> stage, in the order a study runs them.
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("cache", "workbench.store:cache_activations", "workbench.store:CacheConfig", False,
          "RUN/activations: span summaries and per-token activations"),
    Stage("rcn", "workbench.adaras:rank_rcn", "workbench.adaras:AdarasConfig", True,
          "RUN/neurons/rcn*.json, RUN/adaras/rcn.json: AdaRAS's reasoning-critical neurons and their controls"),
    Stage("probe", "workbench.adaras:probe_report", "workbench.adaras:ProbeReportConfig", True,
          "RUN/probes/report.json, RUN/adaras/gate/: correctness probes, the gate, the planted-label checks"),
    Stage("exit", "workbench.neat:rank_exit", "workbench.neat:NeatConfig", False,
          "RUN/neurons/exit.json, RUN/neat/: NEAT's exit neurons and reference pattern", version=2,
          changes="since issue #22 NEAT calibrates on the fitting half of the problems and records its fit"),
    Stage("mon", "workbench.neureasoner:mon_report", "workbench.neureasoner:NeuReasonerConfig", True,
          "RUN/neurons/mon-<type>.json, RUN/neureasoner/: NeuReasoner's key neurons and detectors"),
)}


def get_stage(name: str) -> Stage:
    """The stage called ``name``, refusing an unknown one with the list of known stages."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown analysis stage {name!r}; choose from {', '.join(STAGES)}") from None


def register_stage(stage: Stage) -> None:
    """Makes ``stage`` usable in study files (it runs after the built-in stages)."""
    if stage.name in STAGES:
        raise ValueError(f"analysis stage {stage.name!r} is already registered")
    STAGES[stage.name] = stage
