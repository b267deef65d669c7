"""reasoning-neuron-workbench: find, read and steer the MLP neurons behind reasoning successes and failures.

The top level names what a notebook needs, each re-exported from its home (see ``docs/architecture.md``):

- models: ``load_model``, ``load_tokenizer``, ``set_threads``; tasks and prompts: ``get_task``, ``PromptFormat``
- trace runs and their stores: ``TraceRunConfig``, ``run_traces``, ``load_traces``, ``CacheConfig``,
  ``cache_activations``, ``ActivationStore``; where each file of a run or a study is: ``RunPaths``, ``StudyPaths``
- neurons and edits: ``NeuronSet``, ``NeuronEdit``
- the three papers' analyses: ``rank_rcn``, ``probe_report`` (AdaRAS), ``rank_exit``, ``exit_report`` (NEAT),
  ``rank_mon``, ``mon_report`` (NeuReasoner)
- studies: ``Study`` (``Study.build``, ``Study.from_toml``), its tables ``StudyAnalysis``, ``StudyTask``,
  ``StudyMethod``, ``run_study``, ``run_analysis``, ``collect``, ``markdown``, ``StudyError``
- figures: the ``figures`` namespace (``workbench.figures.forest_figure``, ...)

Everything is imported on first use: ``import workbench`` stays free of torch, so ``workbench --help`` is fast.

Example:
    >>> from workbench import load_model
    >>> model = load_model("organism")          # or a local Hugging Face folder, offline
    >>> model.cfg.n_layers
    4
    >>> import subprocess, sys
    >>> code = "import sys, workbench; print('torch' in sys.modules, 'workbench.model' in sys.modules)"
    >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    'False False\\n'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.errors import ModelLoadError

if TYPE_CHECKING:
    from workbench import figures
    from workbench.adaras import probe_report, rank_rcn
    from workbench.engine import NeuronEdit
    from workbench.evaluation import Study, StudyError, collect, markdown, run_analysis, run_study
    from workbench.model import load_model, load_tokenizer, set_threads
    from workbench.neat import exit_report, rank_exit
    from workbench.neureasoner import mon_report, rank_mon
    from workbench.neurons import NeuronSet
    from workbench.prompting import PromptFormat
    from workbench.store import ActivationStore, CacheConfig, cache_activations, load_traces
    from workbench.store.paths import RunPaths, StudyPaths
    from workbench.study import StudyAnalysis, StudyMethod, StudyTask
    from workbench.tasks import get_task
    from workbench.traces import TraceRunConfig, run_traces

__version__ = "0.1.0"

# Where each name lives. Importing workbench.model pulls in torch and TransformerLens (seconds); the command line
# imports this package for every `--help`, so every name is loaded on first use instead.
_HOMES = {
    "workbench.adaras": ("probe_report", "rank_rcn"),
    "workbench.engine": ("NeuronEdit",),
    "workbench.evaluation": ("Study", "StudyError", "collect", "markdown", "run_analysis", "run_study"),
    "workbench.model": ("load_model", "load_tokenizer", "set_threads"),
    "workbench.neat": ("exit_report", "rank_exit"),
    "workbench.neureasoner": ("mon_report", "rank_mon"),
    "workbench.neurons": ("NeuronSet",),
    "workbench.prompting": ("PromptFormat",),
    "workbench.store": ("ActivationStore", "CacheConfig", "cache_activations", "load_traces"),
    "workbench.store.paths": ("RunPaths", "StudyPaths"),
    "workbench.study": ("StudyAnalysis", "StudyMethod", "StudyTask"),
    "workbench.tasks": ("get_task",),
    "workbench.traces": ("TraceRunConfig", "run_traces"),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}
_MODULES = ("figures",)  # subpackages offered as namespaces

# Spelled out for readers and linters; tests/test_study_python.py checks it is _LAZY, _MODULES and ModelLoadError.
__all__ = [
    "ActivationStore", "CacheConfig", "ModelLoadError", "NeuronEdit", "NeuronSet", "PromptFormat", "RunPaths",
    "Study", "StudyAnalysis", "StudyError", "StudyMethod", "StudyPaths", "StudyTask", "TraceRunConfig",
    "cache_activations", "collect", "exit_report", "figures", "get_task", "load_model", "load_tokenizer",
    "load_traces", "markdown", "mon_report", "probe_report", "rank_exit", "rank_mon", "rank_rcn", "run_analysis",
    "run_study", "run_traces", "set_threads",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
