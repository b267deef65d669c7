"""The trace store: a run directory of graded traces that survives crashes and refuses to mix runs.

Layout::

    runs/NAME/
      manifest.json      # identity (compared on resume) and provenance (versions, paths, time)
      .lock              # held by the one process writing the run
      shards/part-<writer>-<n>.parquet   # traces as they finish, each file written atomically
      traces.parquet     # all traces, (re)written atomically when a run completes

Every trace has a stable ``trace_id`` (``problem_id/sample_index``) that later stores, such as the
activation store, join on. Shard names carry a per-writer tag, so writers never collide on a name:
the process holding the lock may hand ``ShardWriter``s to workers (``workbench.workers``), which then
write their shards into the same run on its behalf.
A ``kill -9`` leaves whole shards only; a shard that is nevertheless unreadable (a disk that filled
up, a copy cut short) is named, set aside into ``shards-corrupt/`` on resume and its traces are
recomputed.

Example:
    >>> import tempfile
    >>> with TraceStore.open(tempfile.mkdtemp() + "/run", {"config": {"task": "organism"}}) as store:
    ...     store.done_keys()
    set()
"""

from __future__ import annotations

import json
import logging
import platform
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.atomic import atomic_write, atomic_write_text
from workbench.store.paths import RunPaths, StorePaths
from workbench.store.rundir import (
    RunDirError,
    RunLock,
    identity_diff,
    make_dir,
    normalise,
    read_manifest,
    refuse_file,
)

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("trace_id", pa.string()),
    ("problem_id", pa.string()),
    ("sample_index", pa.int32()),
    ("prompt", pa.string()),
    ("token_ids", pa.list_(pa.int32())),
    ("prompt_len", pa.int32()),
    ("text", pa.string()),
    ("think_start", pa.int32()),
    ("think_end", pa.int32()),
    ("answer_start", pa.int32()),
    ("answer_reached", pa.int32()),
    ("extracted", pa.string()),
    ("gold", pa.string()),
    ("correct", pa.bool_()),
    ("thinking_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("events", pa.string()),  # JSON list of {step, kind, payload}
    ("labels", pa.string()),  # JSON labels from the task, null when it has none
])


def trace_id(problem_id: str, sample_index: int) -> str:
    return f"{problem_id}/{sample_index}"


def check_target(root: str | Path) -> None:
    """Refuses, before anything is written, a path that cannot become or resume a run directory."""
    root, paths = Path(root), RunPaths(root)
    refuse_file(root)
    if root.is_dir() and not paths.manifest.exists() and any(p.name != paths.lock.name for p in root.iterdir()):
        raise RunDirError(f"{root} is not empty and has no {paths.manifest.name}; choose an empty or new folder")


def _read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns, schema=SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        raise RunDirError(
            f"shard {path} is unreadable ({exc}); run the same `workbench traces` command again to resume: it "
            f"sets the shard aside into {StorePaths(path.parents[1]).corrupt}/ and recomputes its traces"
        ) from exc


class ShardWriter:
    """Writes one writer's shards, ``part-<name>-<n>.parquet``, into an existing run directory.

    Takes no lock: it writes on behalf of the process that holds the run's lock (a ``TraceStore``
    opened for writing, or the driver of ``workbench.workers``). ``name`` gets a random suffix, so
    a writer restarted under the same name never replaces an earlier shard.

    Example:
        >>> import tempfile
        >>> with TraceStore.open(tempfile.mkdtemp() + "/run", {"config": {}}) as store:
        ...     ShardWriter(store.root, "w1").name.startswith("w1.")
        True
    """

    def __init__(self, root: str | Path, name: str | None = None) -> None:
        self.root, self.store = Path(root), StorePaths(Path(root))
        if not self.store.shards.is_dir():
            raise RunDirError(f"{self.root} has no {self.store.shards.name}/ folder on host {platform.node()}: a shard "
                              "writer writes into a run opened with TraceStore.open, on storage that every worker can "
                              "reach")
        if name is not None and ("-" in name or "/" in name):
            raise ValueError(f"writer name {name!r} must not contain '-' or '/' (they delimit shard names)")
        suffix = uuid.uuid4().hex[:8]
        self.name = suffix if name is None else f"{name}.{suffix}"
        self.written = 0

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Writes ``rows`` as one new shard, atomically."""
        if not rows:
            return
        table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
        shard = self.store.shard(f"{self.name}-{self.written:06d}")
        atomic_write(shard, lambda tmp: pq.write_table(table, tmp))
        self.written += 1


class TraceStore:
    """A run directory; see the module docstring. ``open`` it to write, construct it to read."""

    def __init__(self, root: str | Path, lock: RunLock | None = None) -> None:
        self.root = Path(root)
        self.paths = RunPaths(root)
        self._lock = lock
        self._writer: ShardWriter | None = None
        self.set_aside: list[Path] = []

    @classmethod
    def open(cls, root: str | Path, identity: dict[str, Any], provenance: dict[str, Any] | None = None) -> TraceStore:
        """Starts a run, or resumes the run with the same ``identity``; holds the run's lock until ``close``."""
        root, paths = Path(root), RunPaths(root)
        check_target(root)
        identity = normalise(identity)
        existing = read_manifest(root) if paths.manifest.exists() else None
        if existing is not None:
            diff = identity_diff(existing.get("identity"), identity)
            if diff:
                raise RunDirError(
                    f"{root} holds another run (it differs in: {', '.join(diff)}); use a new --out folder, or the "
                    "same model, data, settings and interventions to resume it"
                )
        make_dir(root)
        lock = RunLock.acquire(root)
        try:
            store = cls(root, lock)
            if existing is None:
                paths.store.shards.mkdir(exist_ok=True)
                manifest = {"identity": identity, "provenance": normalise(provenance or {})}
                atomic_write_text(paths.manifest, json.dumps(manifest, indent=2))
            store._recover()
        except BaseException:
            lock.release()
            raise
        return store

    def _recover(self) -> None:
        """Clears what a killed writer left: temporary files, and shards that cannot be read."""
        for tmp in self.paths.store.shards.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for shard in self._shards():
            try:
                _read_shard(shard, ["trace_id"])
            except RunDirError:
                self.paths.store.corrupt.mkdir(exist_ok=True)
                target = self.paths.store.corrupt / shard.name
                shard.replace(target)
                self.set_aside.append(target)
                log.warning("shard %s is unreadable; moved it to %s, its traces will be recomputed", shard, target)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.root)

    def _shards(self) -> list[Path]:
        return self.paths.store.shard_files()

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Writes ``rows`` as one new shard, atomically."""
        if not rows:
            return
        if self._lock is None:
            raise RunDirError(f"{self.root} was opened for reading; use TraceStore.open to write")
        if self._writer is None:
            self._writer = ShardWriter(self.root)
        self._writer.append(rows)

    def read(self) -> pa.Table:
        """Every trace written so far, each ``trace_id`` once, sorted by (problem, sample)."""
        tables = [_read_shard(s) for s in self._shards()]
        if not tables:
            return SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        seen, keep = set(), []
        for i, key in enumerate(table["trace_id"].to_pylist()):
            if key not in seen:
                seen.add(key)
                keep.append(i)
        table = table.take(keep)
        return table.sort_by([("problem_id", "ascending"), ("sample_index", "ascending")])

    def done_keys(self) -> set[tuple[str, int]]:
        keys: set[tuple[str, int]] = set()
        for s in self._shards():
            t = _read_shard(s, ["problem_id", "sample_index"])
            keys.update(zip(t["problem_id"].to_pylist(), t["sample_index"].to_pylist(), strict=True))
        return keys

    def finalize(self) -> Path:
        """Writes ``traces.parquet`` from the shards, atomically."""
        table = self.read()
        atomic_write(self.paths.traces, lambda tmp: pq.write_table(table, tmp))
        return self.paths.traces


def load_traces(run_dir: str | Path) -> pa.Table:
    """The traces of a run: ``traces.parquet`` when complete, else what the shards hold so far."""
    run_dir, traces = Path(run_dir), RunPaths(run_dir).traces
    read_manifest(run_dir)
    if traces.exists():
        try:
            return pq.read_table(traces, schema=SCHEMA)
        except (pa.ArrowException, OSError) as exc:
            raise RunDirError(f"{traces} is unreadable ({exc}); delete it and run the same "
                              "`workbench traces` command to rebuild it from the shards") from exc
    return TraceStore(run_dir).read()
