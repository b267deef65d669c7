"""``workbench cache|rank|probe|validate`` end to end on a small organism run, through the run directory."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.neurons import NeuronSet
from workbench.validation import TARGETS

runner = CliRunner()


@pytest.fixture(scope="module")
def run(organism_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    shutil.copytree(organism_run, out)
    return out


def invoke(*args: str) -> str:
    result = runner.invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", ["cache", "rank", "probe", "validate"])
def test_help(command):
    assert "Usage" in invoke(command, "--help")


@pytest.mark.slow  # every analysis command end to end, validate included: about a minute
def test_cache_rank_probe_validate(run, organism):
    before = invoke("cache", str(run), "--top-variance", "2048", "--json")
    assert json.loads(before)["token_neurons"] == 2048
    for method, names in (("rcn", ["rcn"]), ("exit", ["exit"]), ("mon", ["mon-slip", "mon-oscillation",
                                                                         "mon-overthinking"])):
        report = json.loads(invoke("rank", str(run), "--method", method, "--json"))
        assert sorted(report) == sorted(names)
        for name in names:
            s = NeuronSet.load(run / "neurons" / f"{name}.json", model_shape=(4, 512))
            assert len(s) == report[name]["neurons"] > 0 and s.method
    assert (run / "neurons" / "rcn-random.json").exists() and (run / "neurons" / "rcn-unfiltered.json").exists()
    table = invoke("validate", str(run))  # runs the probes too, through the same library call as `probe`
    assert "targets:" in table and "exit_within3" in table
    report = json.loads((run / "validate.json").read_text())
    assert set(TARGETS) <= set(report["targets"])
    assert 0 <= report["probe_auroc_early"] <= 1
    assert report["probe_auroc_early_ci"][0] <= report["probe_auroc_early"] <= report["probe_auroc_early_ci"][1]
    for key in ("exit_within3_random", "exit_within3_all", "exit_within3_p_end", "probe_auroc_baseline",
                "probe_auroc_tokens", "mon_event_recall_slip_tokens"):
        assert key in report, key
    assert (run / "probes" / "report.json").exists()


def test_clear_errors(organism_run, tmp_path):
    result = runner.invoke(app, ["probe", str(organism_run)])
    assert result.exit_code == 2 and "workbench cache" in result.output
    result = runner.invoke(app, ["rank", str(tmp_path), "--method", "rcn"])
    assert result.exit_code == 2 and "activation cache" in result.output
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = runner.invoke(app, ["cache", str(organism_run), "--layers", "9"])
    assert result.exit_code == 2 and "outside the model" in result.output
