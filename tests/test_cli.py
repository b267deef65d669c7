"""The command line: help everywhere, the main job, JSON reports, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from workbench.cli import app
from workbench.model import DATA_DIR, organism_dir

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


# --- start-up cost, argument errors, and the organism's output folder -------------------------------------------

HEAVY = ("torch", "transformer_lens", "transformers")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["--help"], ["traces", "--help"], ["traces", "--threads", "0", "--out", "x"]])
def test_help_and_argument_errors_import_nothing_heavy(args):
    # Timings belong in benchmarks; what keeps `--help` fast is that these libraries stay unimported.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbench.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2), proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert "typer" in imported  # the parse above really saw -X importtime output
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("args", [["run"], ["traces", "--out", "x"], ["organism", "train"], ["organism", "eval"]])
def test_threads_below_one_is_an_argument_error(args, value):
    result = runner.invoke(app, [*args, "--threads", value])
    assert result.exit_code == 2, result.output
    assert "--threads" in result.output


@pytest.fixture
def no_training(monkeypatch):
    """Makes a training step fail loudly, so that a broken refusal cannot overwrite the shipped weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(torch.optim.AdamW, "step", refuse)


def test_train_refuses_the_shipped_organism(no_training, monkeypatch):
    weights = organism_dir() / "model.safetensors"
    before = weights.stat().st_mtime_ns
    monkeypatch.chdir(DATA_DIR.parent)
    for out in (str(organism_dir()), "./data/organism/"):
        result = runner.invoke(app, ["organism", "train", "--out", out, "--steps", "1"])
        assert result.exit_code == 2, result.output
        assert "shipped organism" in result.output and "--out" in result.output
    assert weights.stat().st_mtime_ns == before


def test_train_defaults_to_a_new_run_folder(monkeypatch, tmp_path):
    import workbench.organism.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, out: seen.append(Path(out)) or Path(out))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["organism", "train", "--steps", "1"])
    assert result.exit_code == 0, result.output
    (out,) = seen
    assert out.parent == Path("runs") and out.name.startswith("organism-")
    assert out.resolve() != organism_dir().resolve()
    assert "runs/organism-" in runner.invoke(app, ["organism", "train", "--help"]).output
