"""The command line: help everywhere, the main job, JSON reports, clear errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["run"], ["organism"], ["organism", "train"], ["organism", "eval"]])
def test_help_everywhere(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_run_prints_accuracy_and_traces(organism):
    result = runner.invoke(app, ["run", "--problems", "6", "--samples", "2", "--show", "2"])
    assert result.exit_code == 0, result.output
    assert "greedy accuracy" in result.output and "<think>" in result.output


def test_eval_json_has_the_target_keys(organism):
    result = runner.invoke(app, ["organism", "eval", "--problems", "12", "--samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    for key in ("greedy_accuracy", "sampled_accuracy", "reflection_rate", "overthinking_rate",
                "oscillation_rate", "probe_auroc_early", "probe_auroc_baseline"):
        assert key in report


def test_missing_model_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", "--model", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
