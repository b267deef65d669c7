"""One line per trace run for the Runs view: its settings (from the manifest) and what it produced.

Example:
    >>> import tempfile
    >>> from workbench.traces import TraceRunConfig, run_traces
    >>> run = Path(tempfile.mkdtemp()) / "run"
    >>> _ = run_traces(run, config=TraceRunConfig(problems=2, samples=1, seed=3), progress=False)
    >>> s = run_summary(run)
    >>> s["model"], s["task"], s["traces"], s["interventions"]
    ('organism', 'organism', 2, 'none')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from workbench.store import load_traces
from workbench.store.paths import RunPaths
from workbench.store.rundir import read_manifest

SETTINGS = ("model", "task", "problems", "samples", "temperature", "top_p", "max_new_tokens", "seed")


def _interventions(identity: dict[str, Any]) -> str:
    specs = identity.get("interventions") or {}
    names = [e.get("name", "edit") for e in specs.get("edits", [])]
    names += [str(c.get("type", "controller")).rsplit(".", 1)[-1] for c in specs.get("controllers", [])]
    return ", ".join(names) or "none"


def run_summary(run: str | Path) -> dict[str, Any]:
    """The run's settings and its traces' accuracy, mean thinking and generated tokens, finish reasons.

    A run still being written (no ``traces.parquet`` yet) is summarised from its shards.
    """
    run = Path(run)
    manifest = read_manifest(run)
    identity = manifest.get("identity", {})
    config = identity.get("config", {})
    out: dict[str, Any] = {"run": run.name, "path": str(run)}
    out |= {k: config.get(k) for k in SETTINGS}
    out["interventions"] = _interventions(identity)
    out["created"] = manifest.get("provenance", {}).get("created")
    table = load_traces(run).select(["correct", "thinking_tokens", "token_ids", "prompt_len", "finish_reason"])
    rows = table.to_pydict()
    n = table.num_rows
    out["traces"] = n
    out["finished"] = RunPaths(run).traces.is_file()
    out["accuracy"] = float(np.mean(rows["correct"])) if n else float("nan")
    out["thinking_tokens"] = float(np.mean(rows["thinking_tokens"])) if n else float("nan")
    generated = [len(t) - p for t, p in zip(rows["token_ids"], rows["prompt_len"], strict=True)]
    out["generated_tokens"] = float(np.mean(generated)) if n else float("nan")
    reasons: dict[str, int] = {}
    for r in rows["finish_reason"]:
        reasons[r] = reasons.get(r, 0) + 1
    out["finish_reasons"] = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
    return out
