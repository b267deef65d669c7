"""Run directories: identity, lock and manifest (``rundir``), the trace store (``trace_store``) and the
activation store (``activation_store``).

Example:
    >>> from workbench.store import TraceStore, load_traces
"""

from workbench.store.activation_store import ActivationStore, CacheConfig, cache_activations
from workbench.store.paths import ANALYSIS_RUN, RunPaths, StudyPaths
from workbench.store.rundir import (
    MANIFEST,
    RunDirError,
    RunLock,
    model_hash,
    package_versions,
    path_hash,
    run_model_spec,
)
from workbench.store.trace_store import (
    SCHEMA,
    TRACES,
    ShardWriter,
    TraceStore,
    check_target,
    load_traces,
    trace_id,
)

__all__ = [
    "ANALYSIS_RUN",
    "MANIFEST",
    "SCHEMA",
    "TRACES",
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
