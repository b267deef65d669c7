"""Run directories: identity, lock and manifest (``rundir``), the trace store (``trace_store``), the
activation store (``activation_store``) and the layout of a run directory (``paths``).

Every name is imported on first use, so ``workbench.store.paths`` (the layout) stays free of torch and pyarrow.

Example:
    >>> from workbench.store import TraceStore, load_traces
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.store.activation_store import ActivationStore, CacheConfig, cache_activations
    from workbench.store.paths import ANALYSIS_RUN, RunPaths, StudyPaths
    from workbench.store.rundir import RunDirError, RunLock, model_hash, package_versions, path_hash, run_model_spec
    from workbench.store.trace_store import SCHEMA, ShardWriter, TraceStore, check_target, load_traces, trace_id

_HOMES = {
    "workbench.store.activation_store": ("ActivationStore", "CacheConfig", "cache_activations"),
    "workbench.store.paths": ("ANALYSIS_RUN", "RunPaths", "StudyPaths"),
    "workbench.store.rundir": ("RunDirError", "RunLock", "model_hash", "package_versions", "path_hash",
                               "run_model_spec"),
    "workbench.store.trace_store": ("SCHEMA", "ShardWriter", "TraceStore", "check_target", "load_traces", "trace_id"),
}
_LAZY = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ANALYSIS_RUN",
    "SCHEMA",
    "ActivationStore",
    "CacheConfig",
    "RunDirError",
    "RunLock",
    "RunPaths",
    "ShardWriter",
    "StudyPaths",
    "TraceStore",
    "cache_activations",
    "check_target",
    "load_traces",
    "model_hash",
    "package_versions",
    "path_hash",
    "run_model_spec",
    "trace_id",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
