"""A run directory's identity, lock and manifest: what makes resuming safe.

A run is identified by everything that decides its results: the config, a hash of the weights as
loaded, a hash of the task data, the resolved prompt format and the intervention specs. Resuming
compares that identity field by field and refuses a mismatch, so one run directory never holds two
models. One process at a time writes a run: ``RunLock`` holds an ``flock`` on ``.lock`` (released by
the kernel even after ``kill -9``), and a second writer gets a clear refusal.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()) / "run"
    >>> with RunLock.acquire(root):
    ...     RunLock.acquire(root)
    Traceback (most recent call last):
    ...
    workbench.store.rundir.RunDirError: ...another process (pid ...) is writing to this run...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench.store.paths import RunPaths


class RunDirError(ValueError):
    """A run directory that cannot be created, resumed or read as asked; the message says what to do."""


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


def path_hash(path: str | Path | None) -> str | None:
    """sha256 of a file, or of a folder's files (relative names and bytes); None for no path."""
    if path is None:
        return None
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            _update(h, f)
    elif path.is_file():
        _update(h, path)
    else:
        return None
    return h.hexdigest()


# hf model -> (weights' identity, digest): a study hashes its model once, not once per run it starts.
_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_hash(model) -> str:
    """sha256 of a loaded model's weights (names, dtypes, shapes, bytes) and its config.

    Hashing what was loaded, not the folder, also identifies a model passed in from Python or
    edited in memory. Where it was loaded from (the config's ``_name_or_path``) is left out: the same
    weights copied to another folder are the same model. Memoised per model object, as the engine's
    fast decoder is: a weight changed in place bumps its version counter, and a replaced weight has
    another address; either (or a changed config) hashes again.
    """
    import torch

    from workbench.model import weights_identity

    hf = getattr(model, "original_model", model)
    config = getattr(hf, "config", None)
    fields = None if config is None else json.dumps(
        {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}, sort_keys=True, default=str)
    ident = (fields, weights_identity(hf))
    cached = _HASHES.get(hf)
    if cached is not None and cached[0] == ident:
        return cached[1]
    h = hashlib.sha256()
    if fields is not None:
        h.update(fields.encode())
    for name, p in hf.named_parameters():
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    _HASHES[hf] = (ident, h.hexdigest())
    return h.hexdigest()


def identity_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the fields where two identities differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted({*old, *new}, key=str):
            out += identity_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def read_manifest(root: Path) -> dict[str, Any]:
    path = RunPaths(root).manifest
    if not path.exists():
        raise RunDirError(
            f"{root} is not a run directory (no {path.name}); make one with `workbench traces --out {root}`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is not valid JSON ({exc}); restore it or start a new run directory") from exc


def run_model_spec(root: str | Path) -> str:
    """The model a run was generated with (its manifest's ``identity.config.model``), as it was given."""
    spec = read_manifest(Path(root)).get("identity", {}).get("config", {}).get("model")
    if not spec:
        raise RunDirError(f"{RunPaths(root).manifest} names no model (identity.config.model); pass the model in "
                          "explicitly")
    return spec


def normalise(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so identities compare alike."""
    return json.loads(json.dumps(value, default=str))


def refuse_file(root: Path) -> None:
    """Refuses a run path that is an existing file."""
    if root.exists() and not root.is_dir():
        raise RunDirError(f"{root} exists and is not a directory; choose a folder for the run")


def make_dir(root: Path) -> None:
    """Creates ``root`` (and parents), turning OS refusals into a clear ``RunDirError``."""
    refuse_file(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the run directory {root}: {exc.strerror or exc}; choose a folder you can "
                          "write to") from exc


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``root/.lock``: one writer per run directory."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root, self._fd = root, fd

    @classmethod
    def acquire(cls, root: str | Path) -> RunLock:
        root = Path(root)
        make_dir(root)
        try:
            fd = os.open(RunPaths(root).lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunDirError(f"cannot write to the run directory {root}: {exc.strerror or exc}; choose a folder you "
                              "can write to") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"another process (pid {holder}) is writing to this run ({root}); wait for it to finish, or "
                "use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(root, fd)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
