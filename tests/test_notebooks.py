"""The notebooks in ``analyses/`` execute end to end, and the numbers they report agree with the library.

Each percent script is converted with jupytext and executed with nbclient in a fresh kernel of this
Python, its working folder a temporary directory (outputs go there, never into the repository), one
torch thread, jaxtyping + beartype checks on ``workbench`` as in the rest of the suite. A cell that
raises fails the test with the notebook, the cell and the error; a cell that runs past ``CELL_TIMEOUT``
fails it too (never a hang). Every notebook writes ``runs/notebooks/<name>.json`` with its key numbers;
the checks below recompute them from the run directories through the library.

The notebooks share one working folder, in ``NOTEBOOKS`` order: the first runs the notebooks' study
alone (its analysis run included), the others reuse it as they do for a user.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from workbench.evaluation import collect, load_study
from workbench.neureasoner import Detector, trace_inputs, window_features
from workbench.neurons import NeuronSet
from workbench.organism.task import TraceLabels
from workbench.store import ActivationStore, load_traces

REPO = Path(__file__).resolve().parents[1]
ANALYSES = REPO / "analyses"
# The first one runs alone (it runs the study's analysis); the quickstart then finds it done.
NOTEBOOKS = ("01_adaras.py", "00_quickstart.py", "02_neat.py", "03_neureasoner.py")
CELL_TIMEOUT = 300  # seconds; the slowest cell (a first study run, analysis included) takes about a minute
PRELUDE = f"""\
import sys
from pathlib import Path
assert sys.executable == {sys.executable!r}, f"the kernel runs {{sys.executable}}, not the test's Python"
from jaxtyping import install_import_hook
_typechecked = install_import_hook("workbench", "beartype.beartype")
import workbench
assert Path(workbench.__file__).resolve().is_relative_to({str(REPO)!r}), workbench.__file__
"""

pytestmark = pytest.mark.slow


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PLOTLY_RENDERER"] = "json"  # fig.show() emits the figure as JSON output: no browser, small outputs
    return env


def _failed_cell(nb) -> tuple[int, str]:
    """Number (1-based, markdown cells counted, the prelude not) and source of the cell that raised or never
    finished. The prelude is cell 0 of ``nb``, so a script's n-th cell is ``nb.cells[n]``."""
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, cell in code:
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i, cell.source
    for i, cell in code:
        if cell.get("execution_count") is None:
            return i, cell.source
    return 0, ""


def execute(script: Path, workdir: Path, timeout: int = CELL_TIMEOUT, prelude: str = PRELUDE) -> nbformat.NotebookNode:
    """Runs a percent script in ``workdir``; fails the test with the cell and the error if a cell raises or
    times out. The executed notebook is written to ``workdir/<name>.ipynb`` either way."""
    nb = jupytext.read(script)
    nb.cells.insert(0, nbformat.v4.new_code_cell(prelude))
    client = NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute(env=_kernel_env())
    except (CellExecutionError, CellTimeoutError) as exc:
        nbformat.write(nb, workdir / f"{script.stem}.ipynb")
        index, source = _failed_cell(nb)
        what = f"timed out after {timeout} s" if isinstance(exc, CellTimeoutError) else "raised"
        detail = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the kernel's traceback, without terminal colours
        pytest.fail(f"{script.name}: cell {index} {what}:\n{source}\n\n{detail}", pytrace=False)
    nbformat.write(nb, workdir / f"{script.stem}.ipynb")
    return nb


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def executed(workdir) -> dict[str, float]:
    """Seconds each notebook took, filled in as the tests below run them in ``NOTEBOOKS`` order."""
    return {}


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel counts once it has exited
    return usage.ru_utime + usage.ru_stime


def _slowest(nb, n: int = 3) -> str:
    """The ``n`` slowest cells of an executed notebook, from nbclient's timing metadata."""
    times = []
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            start, end = (datetime.fromisoformat(t[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            times.append(((end - start).total_seconds(), i))
    return ", ".join(f"cell {i}: {s:.0f} s" for s, i in sorted(times, reverse=True)[:n])


def _run(name: str, workdir: Path, executed: dict[str, float]) -> dict:
    t0, cpu0 = time.perf_counter(), _cpu_children()
    nb = execute(ANALYSES / name, workdir)
    executed[name] = time.perf_counter() - t0
    print(f"\n{name}: {executed[name]:.0f} s wall, {_cpu_children() - cpu0:.0f} s CPU; slowest {_slowest(nb)}")
    return json.loads((workdir / "runs" / "notebooks" / f"{Path(name).stem.split('_', 1)[1]}.json").read_text())


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _in_ci(value: float, ci: list[float]) -> bool:
    return any(math.isnan(x) for x in (value, *ci)) or ci[0] - 1e-9 <= value <= ci[1] + 1e-9


def _rows(workdir: Path, study: str) -> dict[str, dict]:
    """The result rows of a notebook's study, recomputed from its run directories."""
    path = workdir / "runs" / "notebooks" / f"{study}.toml"
    return {r["method"]: r for r in collect(load_study(path), path.parent)}


def test_notebooks_in_the_order_listed():
    assert sorted(NOTEBOOKS) == sorted(p.name for p in ANALYSES.glob("[0-9][0-9]_*.py"))


class TestHarness:
    """A failing or hanging cell fails the test with that cell and the error, and never hangs it."""

    def test_a_raising_cell_is_named_with_its_error(self, tmp_path):
        script = tmp_path / "bad.py"
        script.write_text("# %%\nx = 1\n\n# %% [markdown]\n# text\n\n# %%\nraise ValueError(f'boom {x}')\n")
        with pytest.raises(pytest.fail.Exception) as failed:
            execute(script, tmp_path, prelude="")
        message = str(failed.value)
        assert "bad.py: cell 3 raised" in message and "raise ValueError" in message and "boom 1" in message
        assert (tmp_path / "bad.ipynb").exists()

    def test_a_hanging_cell_times_out(self, tmp_path):
        script = tmp_path / "slow.py"
        script.write_text("# %%\nimport time\n\n# %%\ntime.sleep(600)\n")
        t0 = time.perf_counter()
        with pytest.raises(pytest.fail.Exception, match=r"slow.py: cell 2 timed out after 3 s:\ntime.sleep\(600\)"):
            execute(script, tmp_path, timeout=3, prelude="")
        assert time.perf_counter() - t0 < 120


def _events(run: Path) -> dict[str, list[dict]]:
    return {r["trace_id"]: json.loads(r["events"] or "[]") for r in load_traces(run).to_pylist()}


class TestAdaras:
    """RCNs beside their controls, probes and the gate as the run directory holds them, the alpha sweep."""

    def test_executes_and_agrees_with_the_run(self, workdir, executed):
        nums = _run("01_adaras.py", workdir, executed)
        analysis = workdir / nums["analysis"]
        probes = json.loads((analysis / "probes" / "report.json").read_text())
        for key in ("probe_auroc_early", "probe_auroc_baseline", "probe_auroc_tokens", "gate_auroc",
                    "gate_auroc_logistic"):
            assert _close(nums[key], probes[key]), key
            assert 0.0 <= nums[key] <= 1.0, key
        assert _in_ci(nums["probe_auroc_early"], nums["probe_auroc_early_ci"])

        # The polarity filter: every RCN is on in one class and off in the other; without the filter the
        # top |S| can only be larger, neuron for neuron.
        sets = {s["set"]: s for s in nums["sets"]}
        rcn = NeuronSet.load(analysis / "neurons" / "rcn.json")
        unfiltered = NeuronSet.load(analysis / "neurons" / "rcn-unfiltered.json")
        means = dict(rcn.group_means)
        assert (np.array(means["correct"]) * np.array(means["incorrect"]) < 0).all()
        assert sets["rcn"]["opposite polarity"] == 1.0 and sets["rcn"]["overlap with rcn"] == len(rcn) == 50
        assert (np.sort(np.abs(unfiltered.scores)) >= np.sort(np.abs(rcn.scores)) - 1e-12).all()
        assert sets["rcn-unfiltered"]["mean |S|"] >= sets["rcn"]["mean |S|"]

        rows = _rows(workdir, "adaras")
        assert [s["alpha"] for s in nums["sweep"]] == [0.3, 1.0, 2.0, 5.0]
        for point in nums["sweep"]:
            for kind in ("adaras", "random-steering"):
                row = rows[f"{kind}-a{point['alpha']!r}"]
                assert _close(point[f"{kind}_delta_vs_vanilla"], row["delta_vs_vanilla"])
                assert point[f"{kind}_delta_ci"] == pytest.approx(row["delta_ci"])
                assert _in_ci(row["delta_vs_vanilla"], row["delta_ci"])

        # The gate's decisions: a steered trace has its edit switched on; one left alone is vanilla, token
        # for token (same problems, same sampler seeds).
        gated_run = workdir / "runs" / "notebooks" / "organism" / "adaras-gated-a2.0"
        gated = {r["trace_id"]: r for r in load_traces(gated_run).to_pylist()}
        vanilla = {r["trace_id"]: r for r in load_traces(gated_run.parent / "vanilla").to_pylist()}
        steer = {k: next(e for e in json.loads(r["events"]) if e["kind"] == "gate")["payload"]["steer"]
                 for k, r in gated.items()}
        assert nums["gate_eval"]["steered_share"] == pytest.approx(np.mean(list(steer.values())))
        for key, row in gated.items():
            switched = any(e["kind"] == "edit_on" for e in json.loads(row["events"]))
            assert switched == steer[key], key
            if not steer[key]:
                assert row["token_ids"] == vanilla[key]["token_ids"], key


class TestQuickstart:
    """The trace run, its cache, and the tiny study, reusing what the notebook before it ran."""

    def test_executes_and_agrees_with_the_run(self, workdir, executed):
        nums = _run("00_quickstart.py", workdir, executed)
        traces = load_traces(workdir / nums["run"])
        assert nums["traces"] == traces.num_rows == 64
        assert nums["accuracy"] == pytest.approx(np.mean(traces["correct"].to_pylist()))
        assert nums["behaviour"]["accuracy"] == pytest.approx(nums["accuracy"])
        assert nums["store_traces"] == 64 and nums["token_neurons"] == 64

        rows = _rows(workdir, "quickstart")
        assert [r["method"] for r in nums["rows"]] == list(rows)
        for r in nums["rows"]:
            assert _close(r["accuracy"], rows[r["method"]]["accuracy"])
            assert _close(r["delta_vs_vanilla"], rows[r["method"]]["delta_vs_vanilla"])
            assert _in_ci(r["delta_vs_vanilla"], r["delta_ci"]) and _in_ci(r["accuracy"], r["accuracy_ci"])
        assert rows["vanilla"]["delta_vs_vanilla"] == 0.0
        if executed.get("01_adaras.py"):  # the study's runs were reused, not generated again
            study = workdir / "runs" / "notebooks" / "organism"
            for method in ("vanilla", "adaras-a2.0", "random-steering-a2.0"):
                assert len(json.loads((study / method / "evaluation.json").read_text())["calls"]) == 1, method


class TestNeat:
    """Exit neurons that passed the vote, exit_within3 as reported, budgets matched on token cost."""

    def test_executes_and_agrees_with_the_run(self, workdir, executed):
        nums = _run("02_neat.py", workdir, executed)
        analysis = workdir / nums["analysis"]
        study = load_study(workdir / nums["study"])
        cfg = study.tasks[0].analysis.configs["exit"]
        exit_set = NeuronSet.load(analysis / "neurons" / "exit.json")
        assert len(nums["exit_neurons"]) == len(exit_set) >= 1
        for neuron in nums["exit_neurons"]:
            assert neuron["consistency"] >= cfg.tau_cons and neuron["centre of mass"] >= cfg.tau_com

        report = json.loads((analysis / "neat" / "report.json").read_text())
        for key, value in nums["exit_report"].items():
            assert _close(value, report[key]) if isinstance(value, float) else value == report[key], key
        # The teacher-forced replay reads what the controller read while generating.
        timeline = nums["timeline"]
        assert all(-1 - 1e-9 <= x <= 1 + 1e-9 for x in timeline["rho"]) and min(timeline["phi"]) >= 0
        assert timeline["exited_at"] is not None, "the neat-tau0.9 run exited on no trace"
        assert timeline["recorded_rho"] > timeline["tau_sim"]
        assert timeline["replayed_rho"] == pytest.approx(timeline["recorded_rho"], abs=1e-3)

        rows = _rows(workdir, "neat")
        for name, cap in nums["matched_budget"].items():
            target = rows[name]["total_tokens"]
            assert rows[f"budget-{cap}"]["total_tokens"] >= target, name
            assert cap == 1 or rows[f"budget-{cap - 1}"]["total_tokens"] < target, name
            run = workdir / "runs" / "notebooks" / "organism" / f"budget-{cap}"
            assert max(load_traces(run)["thinking_tokens"].to_pylist()) <= cap
        for r in nums["versus"]:
            assert _close(r["delta"], rows[r["method"]]["delta_vs_vanilla"])
            assert _close(r["token reduction %"], rows[r["method"]]["token_reduction"])


class TestNeuReasoner:
    """Episodes from the labels, detectors as reported, the remedy's token saving from the traces themselves."""

    def test_executes_and_agrees_with_the_run(self, workdir, executed):
        nums = _run("03_neureasoner.py", workdir, executed)
        analysis = workdir / nums["analysis"]
        labels = [TraceLabels.from_dict(json.loads(x)) for x in load_traces(analysis)["labels"].to_pylist()]
        episodes = {e["type"]: e for e in nums["episodes"]}
        assert episodes["slip"]["traces with one"] == sum(bool(x.slips) for x in labels)
        assert episodes["oscillation"]["episodes"] == sum(len(x.repeats) for x in labels)
        assert episodes["overthinking"]["traces with one"] == sum(x.overthinking is not None for x in labels)

        study = load_study(workdir / nums["study"])
        assert set(nums["key_neurons"].values()) == {study.tasks[0].analysis.configs["mon"].top_k}
        mon = json.loads((analysis / "neureasoner" / "report.json").read_text())
        suffix = {"key neurons": "", "random neurons": "_random", "token ids only": "_tokens"}
        for d in nums["detectors"]:
            for column, key in (("window AUROC", "mon_auroc"), ("event recall", "mon_event_recall")):
                assert _close(d[column], mon[f"{key}_{d['type']}{suffix[d['input']]}"]), (d, column)

        # The overthinking detector's window scores, recomputed from the store and the saved detector.
        store = ActivationStore(analysis)
        row = store.index["trace_id"].to_pylist().index(nums["trace"]["trace_id"])
        mon_cfg = study.tasks[0].analysis.configs["mon"]
        detector = Detector.load(analysis / "neureasoner" / "detector-overthinking.joblib")
        columns = store.token_neurons.flat(store.d_mlp)
        lo, hi = trace_inputs(store, mon_cfg)[row].think
        acts = store.token_acts(row)[lo:hi][:, [columns.index(f) for f in detector.neurons.flat(store.d_mlp)]]
        feats = window_features(acts, mon_cfg)
        assert nums["trace"]["held_out"]
        assert nums["trace"]["scores"]["overthinking"] == pytest.approx(
            detector.score(feats.reshape(len(feats), -1)).tolist(), abs=1e-9)

        # The token saving, recomputed from the two trace stores (the remedy spends no probe tokens).
        organism = workdir / "runs" / "notebooks" / "organism"
        remedy, vanilla = (load_traces(organism / m).to_pylist() for m in ("neureasoner-overthinking", "vanilla"))
        generated = {m: np.mean([len(r["token_ids"]) - r["prompt_len"] for r in rs])
                     for m, rs in (("remedy", remedy), ("vanilla", vanilla))}
        assert nums["remedy"]["total_tokens"] == pytest.approx(generated["remedy"])
        saving = 100 * (1 - generated["remedy"] / generated["vanilla"])
        assert nums["remedy"]["token_reduction"] == pytest.approx(saving)
        assert _in_ci(nums["remedy"]["token_reduction"], nums["remedy"]["token_reduction_ci"])
        alarms = sum(e["kind"] == "neureasoner_overthinking" for r in remedy for e in json.loads(r["events"]))
        where = nums["where"]
        assert where["alarms"] == alarms and where["inside vanilla's overthinking span"] <= alarms
        assert where["of them caught"] <= where["vanilla traces that overthought"]
        print("notebooks:", {k: round(v) for k, v in executed.items()}, f"total {sum(executed.values()):.0f} s")
