"""Run directories: identity, lock and manifest (``rundir``), and the trace store (``trace_store``).

Example:
    >>> from workbench.store import TraceStore, load_traces
"""

from workbench.store.rundir import MANIFEST, RunDirError, RunLock, model_hash, package_versions, path_hash
from workbench.store.trace_store import SCHEMA, TRACES, TraceStore, check_target, load_traces, trace_id

__all__ = [
    "MANIFEST", "SCHEMA", "TRACES", "RunDirError", "RunLock", "TraceStore", "check_target", "load_traces",
    "model_hash", "package_versions", "path_hash", "trace_id",
]
