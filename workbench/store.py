"""The trace store: a run directory that survives crashes.

Layout::

    runs/NAME/
      manifest.json          # full config, seeds, package versions, model id and weight hash
      shards/part-000000.parquet, ...   # traces as they finish, each file written atomically
      traces.parquet         # all traces, (re)written atomically when a run completes

Every write goes to a temporary file that is renamed into place, so a ``kill -9`` leaves whole
shards only; a resumed run reads the shards, skips the (problem, sample) pairs they hold, and the
final ``traces.parquet`` has each pair exactly once.

Example:
    >>> import tempfile
    >>> store = TraceStore.create(tempfile.mkdtemp() + "/run", {"config": {"task": "organism"}})
    >>> store.done_keys()
    set()
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.atomic import atomic_write, atomic_write_text

SCHEMA = pa.schema([
    ("problem_id", pa.string()),
    ("sample_index", pa.int32()),
    ("prompt", pa.string()),
    ("token_ids", pa.list_(pa.int32())),
    ("prompt_len", pa.int32()),
    ("text", pa.string()),
    ("think_start", pa.int32()),
    ("think_end", pa.int32()),
    ("answer_reached", pa.int32()),
    ("extracted", pa.string()),
    ("gold", pa.string()),
    ("correct", pa.bool_()),
    ("thinking_tokens", pa.int32()),
    ("finish_reason", pa.string()),
    ("events", pa.string()),  # JSON list of {step, kind, payload}
    ("labels", pa.string()),  # JSON organism labels, null for other tasks
])
MANIFEST, TRACES, SHARDS = "manifest.json", "traces.parquet", "shards"


class RunDirError(ValueError):
    """A run directory that cannot be created or resumed as asked."""


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("reasoning-neuron-workbench", "torch", "transformers", "transformer-lens", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _update(h, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)


def file_hash(path: str | Path | None) -> str | None:
    """sha256 of a file, streamed; None when there is no such file (e.g. a save_to_disk folder)."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def weight_hash(model_dir: Path) -> str:
    """sha256 over the folder's weight files (names and bytes), streamed."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    for f in files:
        h.update(f.name.encode())
        _update(h, f)
    return h.hexdigest()


class TraceStore:
    """A run directory; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: str | Path, manifest: dict[str, Any]) -> TraceStore:
        """Starts a run, or resumes one whose manifest has the same ``config``; refuses any other."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise RunDirError(f"{root} exists and is not a directory")
        store = cls(root)
        existing = store.manifest() if (root / MANIFEST).exists() else None
        if existing is not None:
            if existing.get("config") != manifest.get("config"):
                diff = sorted(k for k in {*existing.get("config", {}), *manifest.get("config", {})}
                              if existing.get("config", {}).get(k) != manifest.get("config", {}).get(k))
                raise RunDirError(
                    f"{root} holds a run with another config (differs in: {', '.join(diff)}); "
                    "use a new --out folder or the same settings to resume it"
                )
            return store
        if root.exists() and any(root.iterdir()):
            raise RunDirError(f"{root} is not empty and has no {MANIFEST}; choose an empty or new folder")
        (root / SHARDS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, default=str))
        return store

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / MANIFEST).read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{self.root / MANIFEST} is not valid JSON: {exc}") from exc

    def _shards(self) -> list[Path]:
        return sorted((self.root / SHARDS).glob("part-*.parquet"))

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Writes ``rows`` as one new shard, atomically."""
        if not rows:
            return
        shards = self._shards()
        n = int(shards[-1].stem.split("-")[1]) + 1 if shards else 0
        table = pa.Table.from_pylist(list(rows), schema=SCHEMA)
        atomic_write(self.root / SHARDS / f"part-{n:06d}.parquet", lambda tmp: pq.write_table(table, tmp))

    def read(self) -> pa.Table:
        """Every trace written so far, each (problem, sample) once, sorted by them."""
        tables = [pq.read_table(s, schema=SCHEMA) for s in self._shards()]
        if not tables:
            return SCHEMA.empty_table()
        table = pa.concat_tables(tables)
        seen, keep = set(), []
        for i, key in enumerate(zip(table["problem_id"].to_pylist(), table["sample_index"].to_pylist(), strict=True)):
            if key not in seen:
                seen.add(key)
                keep.append(i)
        table = table.take(keep)
        return table.sort_by([("problem_id", "ascending"), ("sample_index", "ascending")])

    def done_keys(self) -> set[tuple[str, int]]:
        keys: set[tuple[str, int]] = set()
        for s in self._shards():
            t = pq.read_table(s, columns=["problem_id", "sample_index"])
            keys.update(zip(t["problem_id"].to_pylist(), t["sample_index"].to_pylist(), strict=True))
        return keys

    def finalize(self) -> Path:
        """Writes ``traces.parquet`` from the shards, atomically."""
        table = self.read()
        atomic_write(self.root / TRACES, lambda tmp: pq.write_table(table, tmp))
        return self.root / TRACES


def load_traces(run_dir: str | Path) -> pa.Table:
    """The traces of a run: ``traces.parquet`` when complete, else what the shards hold so far."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {MANIFEST})")
    if (run_dir / TRACES).exists():
        return pq.read_table(run_dir / TRACES, schema=SCHEMA)
    return TraceStore(run_dir).read()
