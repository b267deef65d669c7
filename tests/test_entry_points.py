"""Entry points of one shape and the stage registry: f(run, *, config=None, model=None, progress=...)."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest

from workbench.adaras import probe_report, rank_rcn
from workbench.evaluation.stages import STAGES, Stage, get_stage, register_stage
from workbench.evaluation.study import Study, StudyError
from workbench.neat import exit_report, rank_exit
from workbench.neureasoner import mon_report, rank_mon
from workbench.store import cache_activations, load_traces
from workbench.traces import RunSummary, run_traces
from workbench.validation import validate

ENTRY_POINTS = (run_traces, cache_activations, rank_rcn, probe_report, rank_exit, exit_report, rank_mon, mon_report)


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__)
def test_every_entry_point_takes_the_run_then_keywords_only(entry) -> None:
    params = list(inspect.signature(entry).parameters.values())
    assert params[0].name == "run" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), entry.__name__
    assert {"config", "model", "progress"} <= {p.name for p in params}
    assert inspect.signature(entry).parameters["config"].default is None


def test_validate_takes_the_run_then_keywords_only() -> None:
    params = list(inspect.signature(validate).parameters.values())
    assert params[0].name == "run" and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])


def test_a_config_passed_where_the_model_was_is_refused(organism_run) -> None:
    from workbench.neat import NeatConfig

    with pytest.raises(TypeError):  # rank_exit(run, cfg) used to take the config as the model
        rank_exit(organism_run, NeatConfig())  # type: ignore[misc]


def test_the_registry_names_each_stage_once_in_run_order() -> None:
    assert list(STAGES) == ["cache", "rcn", "probe", "exit", "mon"]
    for stage in STAGES.values():
        entry = stage.entry.split(":")[1]
        assert entry in {f.__name__ for f in ENTRY_POINTS}
        assert stage.config_class()().__class__.__name__ == stage.config.split(":")[1]
    assert [s for s, st in STAGES.items() if st.needs_cache] == ["rcn", "probe", "mon"]
    with pytest.raises(KeyError, match="unknown analysis stage 'probes'; choose from cache, rcn"):
        get_stage("probes")
    with pytest.raises(ValueError, match="already registered"):
        register_stage(STAGES["rcn"])


def test_a_study_refuses_an_unknown_stage_and_reads_a_registered_one(monkeypatch) -> None:
    table = {"study": {"model": "organism"}, "analysis": {"stages": ["cache", "probes"]},
             "tasks": [{"task": "organism"}], "methods": [{"type": "vanilla"}]}
    with pytest.raises(StudyError, match="'probes'; choose from cache, rcn, probe, exit, mon"):
        Study.from_dict(table)
    extra = Stage("noop", "workbench.store:load_traces", "workbench.neat:NeatConfig", False, "nothing")
    monkeypatch.setitem(STAGES, "noop", extra)
    study = Study.from_dict({**table, "analysis": {"stages": ["noop"], "noop": {"window": 5}, "problems": 4,
                                                    "seed": 99}})
    assert study.tasks[0].analysis.configs["noop"].window == 5


def test_run_traces_without_a_config_resumes_the_run_it_names(organism, organism_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(organism_run, run)
    summary = run_traces(run, model=organism, progress=False)  # the manifest's config: nothing left to generate
    assert isinstance(summary, RunSummary) and summary.resumed_from == summary.traces == load_traces(run).num_rows
    assert RunSummary.from_json(summary.to_json()) == summary
    with pytest.raises(ValueError, match="manifest"):
        run_traces(tmp_path / "nowhere", progress=False)


def test_a_study_runs_its_stages_through_the_registry(organism, tmp_path: Path, monkeypatch) -> None:
    from workbench.evaluation import runner

    calls = []
    real = Stage.run

    def spy(self, run, *, config=None, model=None, progress=False):
        calls.append((self.name, Path(run).name, type(config).__name__))
        return real(self, run, config=config, model=model, progress=progress)

    monkeypatch.setattr(Stage, "run", spy)
    study = Study.from_dict({"study": {"model": "organism"},
                             "analysis": {"problems": 8, "samples": 2, "seed": 99, "stages": ["cache", "rcn"]},
                             "tasks": [{"task": "organism", "problems": 2, "samples": 1}],
                             "methods": [{"type": "vanilla"}]})
    runner.run_study(tmp_path / "out", study=study, model=organism, progress=False)
    assert calls == [("cache", "analysis", "CacheConfig"), ("rcn", "analysis", "AdarasConfig")]


def test_a_stage_that_ran_at_another_version_is_refused_on_resume(organism, tmp_path: Path, monkeypatch) -> None:
    import dataclasses
    import json

    from workbench.evaluation import runner
    from workbench.store import RunPaths, StudyPaths

    study = Study.from_dict({"study": {"model": "organism"},
                             "analysis": {"problems": 8, "samples": 2, "seed": 99, "stages": ["cache", "rcn"]},
                             "tasks": [{"task": "organism", "problems": 2, "samples": 1}],
                             "methods": [{"type": "vanilla"}]})
    runner.run_study(tmp_path / "out", study=study, model=organism, progress=False)
    record = RunPaths(StudyPaths(tmp_path / "out").analysis("organism")).record
    assert json.loads(record.read_text())["stage_versions"] == {"cache": 1, "rcn": 1}
    runner.run_study(tmp_path / "out", study=study, model=organism, progress=False)  # same versions: resumes
    monkeypatch.setitem(STAGES, "rcn", dataclasses.replace(STAGES["rcn"], version=2, changes="ranked differently"))
    with pytest.raises(StudyError, match=r"'rcn' analysis ran with version 1 .* version 2 \(ranked differently\)"):
        runner.run_study(tmp_path / "out", study=study, model=organism, progress=False)
    # a record written before stages had versions counts as version 1: the exit stage (version 2) is refused
    assert STAGES["exit"].version == 2 and "fitting half" in STAGES["exit"].changes
