"""The evaluation harness: study files, paired runs, statistics, resume, and the study on a tiny random model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from tests.conftest import save_tiny_model
from workbench.cli.evaluation import evaluate
from workbench.engine import Controller
from workbench.evaluation import METHODS, StudyError, compare, flips, load_study, mcnemar_exact, register, run_study
from workbench.evaluation.statistics import bootstrap_ci
from workbench.neurons import NeuronSet
from workbench.store import load_traces

ROOT = Path(__file__).resolve().parents[1]

STUDY = """
[study]
model = "{model}"
n_resamples = 500

[analysis]
stages = []

[[tasks]]
name = "sampled"
task = "organism"
problems = 8
samples = 2
max_new_tokens = {max_new}
seed = 3

[[methods]]
type = "vanilla"
name = "vanilla"
{extra}
"""


def write(folder: Path, text: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- test-only methods -------------------------------------------------------------------------------


class Ban(Controller):
    """Bans one token at every step of every sequence."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id

    def spec(self) -> dict:
        return {"type": "test-ban", "token_id": self.token_id}

    def on_step(self, view) -> None:
        for row in view.rows():
            view.ban(row, [self.token_id])


@dataclass(frozen=True)
class BanToken:
    """A test method: never emit ``token``."""

    name: str = "ban"
    token: str = "▁9"

    def build(self, ctx):
        return [], [Ban(ctx.model.tokenizer.convert_tokens_to_ids(self.token))]


FAILS = {"left": 0}


class FailOnce(Controller):
    """Raises after a few steps while ``FAILS['left']`` > 0: a study killed in the middle of a method."""

    def __init__(self) -> None:
        self.steps = 0

    def spec(self) -> dict:
        return {"type": "test-fail-once"}

    def on_step(self, view) -> None:
        self.steps += 1
        if FAILS["left"] and self.steps > 40:
            FAILS["left"] -= 1
            raise RuntimeError("killed")


@dataclass(frozen=True)
class Flaky:
    name: str = "flaky"

    def build(self, ctx):
        return [], [FailOnce()]


@dataclass(frozen=True)
class ReadsRcn:
    """A test method that needs the analysis run: a small push on the top RCNs it ranked."""

    name: str = "rcn-push"
    alpha: float = 0.1

    def build(self, ctx):
        from workbench.engine import NeuronEdit

        assert ctx.analysis_run is not None
        rcn = NeuronSet.load(ctx.analysis_run / "neurons" / "rcn.json").top(8)
        return [NeuronEdit(rcn, tuple(self.alpha * float(s) for s in rcn.signs), name="push")], []


for kind, cls in (("test-ban", BanToken), ("test-flaky", Flaky), ("test-rcn", ReadsRcn)):
    if kind not in METHODS:
        register(kind, lambda params, cls=cls: cls(**params))


# -- study files ----------------------------------------------------------------------------------


class TestStudyFile:
    """A study is checked whole, and an error names the file, the table and the field."""

    def test_shipped_study_loads_and_takes_one_line_for_a_real_model(self, tmp_path):
        study = load_study(ROOT / "studies" / "organism.toml")
        assert study.methods[0].name == "vanilla" and study.reference == "vanilla"
        task = study.tasks[0]
        assert task.analysis.run.seed != task.run.seed and task.analysis.stages[0] == "cache"
        assert task.analysis.configs["cache"].top_variance == 2048
        folder = save_tiny_model(tmp_path / "hf", "qwen3")
        text = (ROOT / "studies" / "organism.toml").read_text().replace('model = "organism"', f'model = "{folder}"')
        assert load_study(write(tmp_path, text)).model == str(folder)

    @pytest.mark.parametrize(("edit", "expected"), [
        (("[[tasks]]", "[[tasks]]\ntemprature = 1.0"), "[[tasks]] #1: unknown field 'temprature'"),
        (('type = "vanilla"', 'type = "adarass"'), "[[methods]] #1 (type 'adarass'): unknown method type"),
        (('name = "vanilla"', 'name = "vanilla"\nalpha = 0.3'),
         "#1 (type 'vanilla'): got an unexpected keyword argument 'alpha'; method type 'vanilla' takes name"),
        (("problems = 8", "problems = 0"), "[[tasks]] #1: problems must be >= 1"),
        (("stages = []", 'stages = ["rcn"]'), "[analysis]: stages ['rcn'] read the activation cache"),
        (("stages = []", 'stages = ["cache", "rcn"]'), "analysis problems are also evaluation problems"),
        (("stages = []", 'stages = ["cache"]\n[analysis.cache]\ntop_varience = 3'),
         "[analysis].cache: unknown field 'top_varience'"),
        (('task = "organism"', 'task = "math"'), "the math task needs --data"),
        (("n_resamples = 500", 'n_resamples = 500\nreference = "base"'), "field 'reference' = 'base' names no method"),
        (('model = "organism"', 'model = "/no/such/model"'), "[study]: field 'model'"),
        (("[analysis]", "[analysis\n"), "is not valid TOML"),
    ])
    def test_errors_name_the_file_table_and_field(self, tmp_path, edit, expected):
        path = write(tmp_path, STUDY.format(model="organism", max_new=40, extra="").replace(*edit))
        with pytest.raises(StudyError) as err:
            load_study(path)
        assert str(path) in str(err.value) and expected in str(err.value)

    def test_duplicate_names_and_unknown_control(self, tmp_path):
        dup = STUDY.format(model="organism", max_new=40, extra='[[methods]]\ntype = "vanilla"\nname = "vanilla"')
        with pytest.raises(StudyError, match=r"#2: the name 'vanilla' is taken"):
            load_study(write(tmp_path, dup))
        ctl = STUDY.format(model="organism", max_new=40, extra='[[methods]]\ntype = "test-ban"\ncontrol_for = "x"')
        with pytest.raises(StudyError, match=r"#2: field 'control_for' = 'x' names no method"):
            load_study(write(tmp_path, ctl))

    def test_cli_refuses_a_bad_study_before_writing(self, tmp_path):
        path = write(tmp_path, STUDY.format(model="organism", max_new=40, extra="").replace("seed = 3", "seed = -"))
        app = typer.Typer()
        app.command(name="eval")(evaluate)
        app.command(name="other")(lambda: None)
        res = CliRunner().invoke(app, ["eval", "--config", str(path), "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and "is not valid TOML" in res.output
        assert not (tmp_path / "out").exists()

    def test_a_problem_file_gives_the_analysis_the_problems_the_evaluation_leaves(self, tmp_path):
        from workbench.tasks import get_task
        from workbench.traces import run_problems

        data = tmp_path / "p.jsonl"
        data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                                for i in range(10)))
        text = STUDY.format(model="organism", max_new=40, extra="").replace(
            'task = "organism"', f'task = "math"\ndata = "{data}"').replace("problems = 8", "problems = 6").replace(
            "stages = []", 'problems = 4\nseed = 3\nstages = ["cache"]')  # the same seed as the evaluation's
        study = load_study(write(tmp_path, text))
        task = study.tasks[0]
        assert task.analysis.run.disjoint_from == (6, 3)  # recorded in the analysis run's identity (its config)
        math = get_task("math", str(data))
        evaluation = {p.id for p in run_problems(math, task.run)}
        analysis = {p.id for p in run_problems(math, task.analysis.run)}
        assert len(evaluation) == 6 and len(analysis) == 4 and not evaluation & analysis
        with pytest.raises(StudyError, match=r"the evaluation takes 6, which leaves 4 for the 5 analysis problems"):
            load_study(write(tmp_path, text.replace("problems = 4", "problems = 5")))
        allowed = text.replace("seed = 3\nstages", "seed = 3\nallow_overlap = true\nstages")
        overlap = load_study(write(tmp_path, allowed))
        assert overlap.tasks[0].analysis.run.disjoint_from is None
        organism = load_study(ROOT / "studies" / "organism.toml")  # a generated task keeps its own seeds, as before
        assert all(t.analysis.run.disjoint_from is None for t in organism.tasks)


# -- statistics -----------------------------------------------------------------------------------


class TestStatistics:
    """Known answers: flips counted by hand, McNemar as the exact binomial, CIs that cover."""

    def test_flips_and_mcnemar_on_a_hand_made_table(self):
        ref = np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 1, 0]], bool)
        new = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1]], bool)
        f = flips(ref, new)
        # fixed: (1,0) (1,1) (4,2); broken: (0,2) (3,1). Majority (2 of 3): problem 1 unsolved -> solved,
        # problem 3 solved -> unsolved; problem 0 stays solved (3 -> 2 correct).
        assert (f.fixed_samples, f.broken_samples, f.fixed_problems, f.broken_problems) == (3, 2, 1, 1)
        # 15 fixed against 5 broken: the two-sided exact p is 2 * P(X <= 5), X ~ Binomial(20, 1/2).
        expected = 2 * sum(math.comb(20, k) for k in range(6)) / 2**20
        assert mcnemar_exact(15, 5) == pytest.approx(expected) == pytest.approx(stats.binomtest(15, 20).pvalue)
        assert mcnemar_exact(0, 0) == 1.0

    def test_compare_reports_the_paired_figures(self):
        rng = np.random.default_rng(0)
        ref = rng.random((60, 4)) < 0.5
        new = ref.copy()
        new[:20] = True  # the method fixes every sample of the first 20 problems, breaks none
        cost = np.full((60, 4), 100.0)
        r = compare(new, cost * 0.8, ref, cost, n_resamples=1000)
        gain = (1 - ref[:20]).sum() / ref.size
        assert r["delta_vs_reference"] == pytest.approx(gain)
        assert r["delta_ci"][0] > 0 and r["delta_ci"][0] <= gain <= r["delta_ci"][1]
        assert r["broken_samples"] == 0 and r["fixed_samples"] == int((~ref[:20]).sum())
        assert r["p_value"] == pytest.approx(0.5 ** (r["fixed_samples"] - 1))
        assert r["token_reduction"] == pytest.approx(20.0) and r["token_reduction_ci"] == pytest.approx([20, 20])
        same = compare(ref, cost, ref, cost, n_resamples=1000)
        assert same["delta_ci"] == [0.0, 0.0] and same["p_value"] == 1.0

    def test_bootstrap_ci_covers_the_true_accuracy(self):
        rng = np.random.default_rng(1)
        covered = 0
        for rep in range(100):
            per_problem = (rng.random((80, 4)) < 0.7).mean(1)
            lo, hi = bootstrap_ci(np.mean, per_problem, n_resamples=1000, seed=rep)
            covered += lo <= 0.7 <= hi
        assert 88 <= covered <= 99  # nominal 95%

    def test_a_model_that_is_always_wrong_gets_a_point_interval(self):
        wrong = np.zeros((10, 2), bool)
        r = compare(wrong, np.ones((10, 2)), wrong, np.ones((10, 2)), n_resamples=200)
        assert r["accuracy"] == 0.0 and r["accuracy_ci"] == [0.0, 0.0]


# -- runs on the organism -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paired(tmp_path_factory, organism):
    """One study on the organism: two vanillas and the token ban, sampled (T=1) and greedy."""
    extra = """
[[methods]]
type = "vanilla"
name = "vanilla-again"
control_for = "vanilla"

[[methods]]
type = "test-ban"
name = "ban-9"

[[tasks]]
name = "greedy"
task = "organism"
problems = 16
samples = 1
temperature = 0.0
max_new_tokens = 60
seed = 1
"""
    folder = tmp_path_factory.mktemp("paired")
    study = load_study(write(folder, STUDY.format(model="organism", max_new=60, extra=extra)))
    return study, folder / "out", run_study(folder / "out", study=study, progress=False, model=organism)


def _traces(run_dir: Path) -> dict[str, list[int]]:
    """trace id -> the generated token ids (the prompts are the same in every method's run)."""
    rows = load_traces(run_dir).select(["trace_id", "token_ids", "prompt_len"]).to_pylist()
    return {r["trace_id"]: r["token_ids"][r["prompt_len"]:] for r in rows}


class TestPairing:
    """Methods run the same problems and seeds: rows pair by trace id."""

    def test_two_vanillas_give_identical_traces(self, paired):
        _, out, rows = paired
        for task in ("sampled", "greedy"):
            assert _traces(out / task / "vanilla") == _traces(out / task / "vanilla-again")
        again = next(r for r in rows if r["method"] == "vanilla-again" and r["task"] == "sampled")
        assert (again["delta_vs_vanilla"], again["fixed_samples"], again["broken_samples"]) == (0.0, 0, 0)
        assert again["p_value"] == 1.0 and again["control_for"] == "vanilla"

    def test_a_token_ban_changes_only_the_traces_that_had_the_token(self, paired, organism):
        _, out, rows = paired
        banned = organism.tokenizer.convert_tokens_to_ids("▁9")
        vanilla, ban = _traces(out / "greedy" / "vanilla"), _traces(out / "greedy" / "ban-9")
        had = {k for k, ids in vanilla.items() if banned in ids}
        assert 0 < len(had) < len(vanilla)
        assert {k for k in vanilla if vanilla[k] != ban[k]} == had
        assert all(banned not in ids for ids in ban.values())
        for k in had:  # the same tokens up to the first place the banned one was chosen
            first = vanilla[k].index(banned)
            assert ban[k][:first] == vanilla[k][:first]
        row = next(r for r in rows if r["method"] == "ban-9" and r["task"] == "greedy")
        assert row["interventions"]["ban"] > 0 and row["intervened_share"] == 1.0
        assert row["fixed_samples"] + row["broken_samples"] <= len(had)

    def test_results_files_hold_one_row_per_method_and_task(self, paired):
        _, out, rows = paired
        data = json.loads((out / "results.json").read_text())
        assert [(r["task"], r["method"]) for r in data] == [
            (t, m) for t in ("sampled", "greedy") for m in ("vanilla", "vanilla-again", "ban-9")]
        for key in ("method", "task", "accuracy", "accuracy_ci", "delta_vs_vanilla", "delta_ci", "thinking_tokens",
                    "token_reduction", "p_value", "tokens_per_second", "wall_seconds", "interventions"):
            assert key in data[0]
        table = pq.read_table(out / "results.parquet")
        assert table.num_rows == 6 and table["accuracy"].to_pylist() == [r["accuracy"] for r in rows]
        md = (out / "results.md").read_text()
        assert md.index("| vanilla |") < md.index("| vanilla-again | vanilla |") < md.index("| ban-9 |")
        assert all(r["traces"] == 16 for r in rows)  # 8 problems x 2 samples, 16 x 1
        assert all(r["tokens_per_second"] > 0 for r in rows)

    def test_failure_rates_recount_the_traces_labels(self, paired):
        from workbench.organism.evaluate import load_samples

        _, out, rows = paired
        for r in rows:
            samples = load_samples(out / r["task"] / r["method"])
            uncaught = np.mean([any(not s.caught for s in x.labels.slips) for x in samples])
            overthinking = np.mean([x.labels.overthinking is not None for x in samples])
            assert r["failure_rates"]["uncaught_slip"] == pytest.approx(uncaught)
            assert r["failure_rates"]["overthinking"] == pytest.approx(overthinking)
            if r["method"] == "vanilla-again":  # identical traces: no difference, a point interval
                assert all(d == [0.0, 0.0, 0.0] for d in r["failure_deltas"].values())
        sampled = [r for r in rows if r["task"] == "sampled"]
        assert max(r["failure_rates"]["uncaught_slip"] for r in sampled) > 0  # T=1 traces slip: it could fail
        assert "Planted failures" in (out / "results.md").read_text()


class TestResume:
    """A study killed in the middle of a method resumes to the same results."""

    def test_rerun_after_an_exception_gives_the_same_results(self, tmp_path, organism):
        extra = '[[methods]]\ntype = "test-flaky"\nname = "flaky"\n'
        text = STUDY.format(model="organism", max_new=60, extra=extra).replace("samples = 2", "samples = 2\n"
                                                                                "flush_every = 2\nbatch_size = 4")
        study = load_study(write(tmp_path, text))
        FAILS["left"] = 1
        with pytest.raises(RuntimeError, match="killed"):
            run_study(tmp_path / "killed", study=study, progress=False, model=organism)
        assert FAILS["left"] == 0 and not (tmp_path / "killed" / "results.json").exists()
        partial = load_traces(tmp_path / "killed" / "sampled" / "flaky").num_rows
        assert 0 < partial < 16
        resumed = run_study(tmp_path / "killed", study=study, progress=False, model=organism)
        fresh = run_study(tmp_path / "fresh", study=study, progress=False, model=organism)
        assert _traces(tmp_path / "killed" / "sampled" / "flaky") == _traces(tmp_path / "fresh" / "sampled" / "flaky")
        skip = ("wall_seconds", "build_seconds", "tokens_per_second", "resumed", "run")
        assert [{k: v for k, v in r.items() if k not in skip} for r in resumed] == \
               [{k: v for k, v in r.items() if k not in skip} for r in fresh]
        assert next(r for r in resumed if r["method"] == "flaky")["resumed"]
        # a finished study re-run skips every method; a changed method is refused, not mixed in
        record = (tmp_path / "fresh" / "sampled" / "flaky" / "evaluation.json").read_text()
        run_study(tmp_path / "fresh", study=study, progress=False, model=organism)
        assert (tmp_path / "fresh" / "sampled" / "flaky" / "evaluation.json").read_text() == record
        changed = load_study(write(tmp_path, text.replace('name = "flaky"', 'name = "vanilla-x"').replace(
            'type = "vanilla"\nname = "vanilla"', 'type = "test-ban"\nname = "vanilla"'), "changed.toml"))
        with pytest.raises(StudyError, match="holds the 'vanilla' run with other settings"):
            run_study(tmp_path / "fresh", study=changed, progress=False, model=organism)


class TestAnalysisStage:
    """The analysis run is its own problems; its stages run once and feed the methods."""

    def test_rcn_from_the_analysis_run_reaches_a_method(self, tmp_path, organism):
        extra = '[[methods]]\ntype = "test-rcn"\nname = "rcn-push"\n'
        text = STUDY.format(model="organism", max_new=60, extra=extra).replace(
            "stages = []", 'problems = 24\nsamples = 4\nseed = 7\nstages = ["cache", "rcn"]\n'
                           "[analysis.cache]\ntop_variance = 256")
        study = load_study(write(tmp_path, text))
        rows = run_study(tmp_path / "out", study=study, progress=False, model=organism)
        analysis = tmp_path / "out" / "sampled" / "analysis"
        assert (analysis / "neurons" / "rcn.json").exists() and load_traces(analysis).num_rows == 96
        assert set(_traces(analysis)).isdisjoint(_traces(tmp_path / "out" / "sampled" / "vanilla"))
        manifest = json.loads((tmp_path / "out" / "sampled" / "rcn-push" / "manifest.json").read_text())
        assert manifest["identity"]["interventions"]["edits"][0]["name"] == "push"
        assert [r["method"] for r in rows] == ["vanilla", "rcn-push"]
        stamp = (analysis / "neurons" / "rcn.json").stat().st_mtime_ns
        run_study(tmp_path / "out", study=study, progress=False, model=organism)
        assert (analysis / "neurons" / "rcn.json").stat().st_mtime_ns == stamp  # done stages are skipped


# -- a tiny random model ---------------------------------------------------------------------------


class TestTinyModel:
    """The same study on a local HF folder: one changed line."""

    def test_study_end_to_end_without_analysis(self, tmp_path, tiny_dir):
        path = write(tmp_path, STUDY.format(model=tiny_dir, max_new=12, extra=""))
        app = typer.Typer()
        app.command(name="eval")(evaluate)
        app.command(name="other")(lambda: None)
        res = CliRunner().invoke(app, ["eval", "--config", str(path), "--out", str(tmp_path / "out"), "--json",
                                       "--no-figures"])  # figures: tests/test_figures.py
        assert res.exit_code == 0, res.output
        rows = json.loads(res.stdout)
        assert len(rows) == 1 and rows[0]["traces"] == 16 and 0.0 <= rows[0]["accuracy"] <= 1.0
        assert (tmp_path / "out" / "results.md").exists()

    def test_an_analysis_the_traces_cannot_support_is_recorded_and_the_study_goes_on(self, tmp_path, tiny_dir):
        text = STUDY.format(model=tiny_dir, max_new=12, extra="").replace(
            "stages = []", 'problems = 8\nsamples = 2\nseed = 11\nallow_overlap = true\nstages = ["cache", "probe"]')
        study = load_study(write(tmp_path, text))
        rows = run_study(tmp_path / "out", study=study, progress=False)  # a random model is never right: no probe
        assert [r["method"] for r in rows] == ["vanilla"]
        skipped = json.loads((tmp_path / "out" / "not_applied.json").read_text())
        assert [(x["what"], x["name"]) for x in skipped] == [("analysis", "probe")]
        assert "every trace is incorrect" in skipped[0]["reason"] and "\n" not in skipped[0]["reason"]
        record = json.loads((tmp_path / "out" / "sampled" / "analysis" / "evaluation.json").read_text())
        assert list(record["stages"]) == ["cache"] and "probe" in record["not_applied"]
        assert "analysis `probe`: " + skipped[0]["reason"] in (tmp_path / "out" / "results.md").read_text()
