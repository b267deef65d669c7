"""The command line: help everywhere, the main job, JSON reports, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.model import DATA_DIR, organism_dir

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["run"], ["organism"], ["organism", "train"], ["organism", "eval"]])
def test_help_everywhere(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


SMALL_STUDY = """
[study]
name = "small"
model = "organism"
[analysis]
problems = 16
samples = 4
seed = 1004
stages = ["cache", "rcn", "exit"]
[analysis.cache]
top_variance = 64
[[tasks]]
name = "organism"
task = "organism"
problems = 6
samples = 2
seed = 1
[[methods]]
type = "vanilla"
name = "vanilla"
[[methods]]
type = "neat"
name = "neat"
[[methods]]
type = "budget"
name = "budget-8"
control_for = "neat"
max_thinking = 8
"""


@pytest.mark.slow  # a study from scratch through the command line, then resumed: about 30 s
def test_run_is_the_whole_pipeline_through_the_run_directory(organism, tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(SMALL_STUDY)
    args = ["run", "--config", str(study), "--out", str(tmp_path / "out"), "--show", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for needle in ("| vanilla |", "| budget-8 | neat |", "<think>", "make app"):
        assert needle in result.stdout, needle
    analysis = tmp_path / "out" / "organism" / "analysis"
    assert (analysis / "activations" / "index.parquet").exists() and (analysis / "neurons" / "exit.json").exists()
    assert (tmp_path / "out" / "results.json").exists()
    again = runner.invoke(app, args)  # resumed: read back from the run directories, not resampled

    def table(out: str) -> str:
        return out[out.index("| method"):out.index("results:")]

    assert table(again.stdout) == table(result.stdout)


STUDY_SMALL = Path(__file__).parent / "data" / "study-small.toml"


def test_run_resumes_the_study_and_writes_its_figures_to_a_relative_out(organism_study, tmp_path, monkeypatch):
    """`workbench run` on the shared small study, copied to a relative folder with a space in its name: every
    stage is read back from the run directories (nothing resampled), and the figures land in OUT/figures."""
    import shutil

    from workbench.figures.catalogue import collect_figures
    from workbench.figures.export import find_browser

    shutil.copytree(organism_study, tmp_path / "my runs" / "small")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "--config", str(STUDY_SMALL), "--out", "my runs/small", "--show", "2"])
    assert result.exit_code == 0, result.output
    for needle in ("| vanilla |", "| budget-20 | neat-tau0.9 |", "<think>", "make app"):
        assert needle in result.stdout, needle
    table = result.stdout[result.stdout.index("| method"):result.stdout.index("results:")].strip()
    assert table in (organism_study / "results.md").read_text()  # read back, not resampled
    figures = Path("my runs/small/figures")
    fmt = "svg" if find_browser() else "html"  # without a browser the pipeline falls back to HTML, and says so
    written = {p.stem for p in figures.glob(f"*.{fmt}")}
    assert written and written == set(collect_figures(organism_study).figures)
    assert f"figures: wrote {len(written)} figures ({fmt}) to" in result.output
    assert "not written" not in result.output


@pytest.mark.slow  # the whole organism evaluation, small: about 15 s
def test_eval_json_has_the_target_keys(organism, tmp_path):
    result = runner.invoke(app, ["organism", "eval", "--problems", "12", "--samples", "2", "--json",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    for key in ("greedy_accuracy", "sampled_accuracy", "reflection_rate", "overthinking_rate",
                "oscillation_rate", "probe_auroc_early", "probe_auroc_baseline"):
        assert key in report
    assert report["run_dir"] == str(tmp_path) and (tmp_path / "sampled" / "manifest.json").exists()


def test_bad_top_p_fails_before_any_folder_exists(tmp_path):
    result = runner.invoke(app, ["traces", "--out", str(tmp_path / "run"), "--top-p", "0"])
    assert result.exit_code == 2 and "top-p" in result.output
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_the_same_command_resumes(monkeypatch, tmp_path):
    import workbench.traces

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workbench.traces, "run_traces", interrupted)
    result = runner.invoke(app, ["traces", "--out", str(tmp_path / "run"), "--problems", "2"])
    assert result.exit_code == 130
    assert "Run the same command again to resume" in result.output and str(tmp_path / "run") in result.output


def test_refused_resume_is_one_clear_line(organism, tmp_path):
    args = ["traces", "--out", str(tmp_path / "run"), "--problems", "2", "--max-new-tokens", "20"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--samples", "2"])
    assert result.exit_code == 2 and "differs in: config.samples" in result.output
    assert "Traceback" not in result.output


def test_missing_model_is_a_clear_error(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text(SMALL_STUDY.replace('model = "organism"', f'model = "{tmp_path / "none"}"'))
    result = runner.invoke(app, ["run", "--config", str(study), "--out", str(tmp_path / "out")])
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


def test_train_like_takes_a_bundled_models_config(monkeypatch, tmp_path):
    import dataclasses

    import workbench.organism.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, out: seen.append(cfg) or Path(out))
    result = runner.invoke(app, ["organism", "train", "--like", "organism-v3", "--steps", "3", "--seed", "5",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert seen == [dataclasses.replace(train_module.CONFIG_V3, steps=3, seed=5)]
    result = runner.invoke(app, ["organism", "train", "--steps", "3", "--out", str(tmp_path / "m")])
    assert result.exit_code == 0 and seen[-1] == dataclasses.replace(train_module.CONFIG_V4, steps=3), result.output
    result = runner.invoke(app, ["organism", "train", "--like", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "no config.json" in result.output, result.output
    (tmp_path / "config.json").write_text("{}")  # a model folder, but not an organism
    result = runner.invoke(app, ["organism", "train", "--like", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "organism.json missing" in result.output, result.output
