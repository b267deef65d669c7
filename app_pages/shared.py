"""What every view shares: the run folder chosen in the sidebar, cached loads, and 'missing' notices.

Models and stores are cached with ``st.cache_resource`` (one per run or model spec, shared by every
session; nothing here attaches hooks to them), tables and arrays with ``st.cache_data`` keyed on the
run path and the modification time of the file they come from, so a re-run analysis shows up.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from workbench.app.layout import LayoutError, Missing, RunLayout, TaskRuns, find_layout
from workbench.store.paths import RunPaths

DEFAULT_RUN = "runs/main"
RUN_KEY, TASK_KEY, STYLE_KEY = "run_dir", "task", "figure_style"


def default_run_dir() -> str:
    """``streamlit run app.py -- RUN_DIR`` (what ``workbench app RUN_DIR`` runs), else ``$WORKBENCH_RUN``."""
    if len(sys.argv) > 1 and Path(sys.argv[0]).name == "app.py" and not sys.argv[1].startswith("-"):
        return sys.argv[1]
    return os.environ.get("WORKBENCH_RUN", DEFAULT_RUN)


def sidebar() -> None:
    """The run folder (and task, for a study of several) every view reads."""
    if RUN_KEY not in st.session_state:
        st.session_state[RUN_KEY] = default_run_dir()
    st.sidebar.text_input("Run directory", key=RUN_KEY,
                          help="A study folder (`workbench run --out DIR`), one task of it, or one trace run")
    try:
        layout = find_layout(st.session_state[RUN_KEY])
    except LayoutError:
        return  # each view says what is missing
    if len(layout.tasks) > 1:
        st.sidebar.selectbox("Task", list(layout.tasks), key=TASK_KEY)
    runs = sum(len(t.runs()) for t in layout.tasks.values())
    st.sidebar.caption(f"{layout.kind} · {len(layout.tasks)} task(s) · {runs} trace run(s)")
    st.sidebar.radio("Figure style", ["screen", "paper"], key=STYLE_KEY, horizontal=True,
                     help="paper: larger fonts, a colour-blind-safe palette, no titles (as `workbench figures` "
                          "exports them)")


def show_missing(missing: Missing) -> None:
    st.warning(f"Missing: {missing.what}. Make it with:")
    st.code(missing.command, language="bash")


def require(missing: Missing | None) -> None:
    """Stops the view with the message and the command when something it needs is missing."""
    if missing is not None:
        show_missing(missing)
        st.stop()


def current() -> tuple[RunLayout, TaskRuns]:
    """The chosen folder's layout and task; stops the view with what to run when it holds no trace run."""
    path = st.session_state.get(RUN_KEY) or default_run_dir()
    try:
        layout = find_layout(path)
    except LayoutError as exc:
        show_missing(exc.missing)
        st.stop()
    task = st.session_state.get(TASK_KEY)
    return layout, layout.tasks[task if task in layout.tasks else next(iter(layout.tasks))]


def style():
    """The figure style chosen in the sidebar (``workbench.figures.SCREEN`` or ``PAPER``)."""
    from workbench.figures import PAPER, SCREEN

    return PAPER if st.session_state.get(STYLE_KEY) == "paper" else SCREEN


def figure(fig) -> None:
    st.plotly_chart(fig, width="stretch")


def stamp(path: Path) -> float:
    """Modification time, part of cache keys so a rewritten file is read again."""
    return path.stat().st_mtime if path.exists() else 0.0


def pick_run(task: TaskRuns, label: str = "Trace run", key: str | None = None, prefer: str = "vanilla") -> Path:
    runs = task.runs()
    names = list(runs)
    index = names.index(prefer) if prefer in names else 0
    return runs[st.selectbox(label, names, index=index, key=key)]


# -- cached loads ------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="loading the model")
def model(spec: str):
    from workbench.model import load_model

    return load_model(spec)


@st.cache_resource(show_spinner=False)
def tokenizer(spec: str):
    from workbench.model import load_tokenizer

    return load_tokenizer(spec)


def run_spec(run: Path) -> str:
    from workbench.store import run_model_spec

    return run_model_spec(run)


def run_model(run: Path):
    return model(run_spec(run))


@st.cache_resource(show_spinner=False)
def _run_task(run: str, mtime: float):
    from workbench.traces import run_task as resolve_task

    return resolve_task(run)


def run_task(run: Path):
    """The run's task (its truth, features and text conventions), resolved from the run's manifest."""
    return _run_task(str(run), stamp(RunPaths(run).manifest))


@st.cache_data(show_spinner="reading traces")
def _traces(run: str, mtime: float) -> list[dict[str, Any]]:
    from workbench.store import load_traces

    return load_traces(run).to_pylist()


def traces(run: Path) -> list[dict[str, Any]]:
    """A run's trace rows (``traces.parquet`` as dicts)."""
    return _traces(str(run), stamp(RunPaths(run).traces))


@st.cache_resource(show_spinner="opening the activation cache")
def _store(run: str, mtime: float):
    from workbench.store import ActivationStore

    return ActivationStore(run)


def store(run: Path):
    """The run's ``ActivationStore`` (call only after ``need_activations`` found it)."""
    return _store(str(run), stamp(RunPaths(run).activations.index))


@st.cache_data(show_spinner="reading span means")
def _summary(run: str, mtime: float, span: str) -> np.ndarray:
    return _store(run, mtime).summary(span)


def summary(run: Path, span: str) -> np.ndarray:
    return _summary(str(run), stamp(RunPaths(run).activations.index), span)


@st.cache_data(show_spinner=False)
def _json(path: str, mtime: float) -> Any:
    return json.loads(Path(path).read_text())


def read_json(path: Path) -> Any:
    return _json(str(path), stamp(path))


def neuron_set(run: Path, name: str):
    from workbench.neurons import NeuronSet

    path = RunPaths(run).neuron_set(name)
    return NeuronSet.from_dict(read_json(path), source=str(path))


def pieces(run: Path, token_ids: list[int]) -> list[str]:
    from workbench.app.tokens import pieces as decode

    return decode(tokenizer(run_spec(run)), token_ids)


@st.cache_data(show_spinner="reading activations")
def _acts(run: str, mtime: float, rows: tuple[int, ...], pairs: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    from workbench.app.layout import need_activations
    from workbench.app.readout import run_acts, store_columns
    from workbench.neurons import NeuronSet

    path = Path(run)
    neurons = NeuronSet.from_pairs(pairs)
    cached = _store(run, stamp(RunPaths(path).activations.index)) if need_activations(path) is None else None
    all_rows = _traces(run, mtime)
    ids = [all_rows[r]["token_ids"] for r in rows]
    if cached is not None and store_columns(cached, neurons) is not None:
        return run_acts(cached, rows, neurons, ids)
    return run_acts(None, rows, neurons, ids, model=run_model(path))


def acts(run: Path, rows: list[int], neurons) -> list[np.ndarray]:
    """Per-token activations of ``neurons`` for trace ``rows`` of ``run``: from its activation cache when it
    kept them, else a teacher-forced pass of the run's model (a clean readout: no intervention)."""
    pairs = tuple(zip(neurons.layers, neurons.indices, strict=True))
    return _acts(str(run), stamp(RunPaths(run).traces), tuple(rows), pairs)
