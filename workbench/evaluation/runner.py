"""Running a study: per task, the analysis run and its analyses, then every method on the same problems.

Layout of the output folder::

    DIR/<task>/analysis/      # trace run the neurons are found on, with its analyses (RUN/neurons, ...)
    DIR/<task>/<method>/      # one trace run per method; all share the task's TraceRunConfig
    DIR/results.parquet, results.json, results.md

Every method of a task runs ``run_traces`` with the same ``TraceRunConfig``: the same problems, and
the same sampler seed for each (problem, sample), so rows pair by ``trace_id``. The model is loaded
once. A study is resumable at every level: a trace run resumes from its shards, an analysis stage or
a method that finished is skipped by what its run directory records (``evaluation.json``, with the
identity it ran under: a changed setting is refused, never silently mixed with old results).

A stage or a method that cannot apply to this model or task (a ``ValueError`` from it: e.g. NEAT on a model
that never closes a thinking span) does not stop the study: its one-line reason is recorded in its run
directory's ``evaluation.json`` (``not_applied``), printed as a warning, listed in ``not_applied.json`` and
under the results table, and every other stage and method still runs.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> text = '[[tasks]]\\ntask = "organism"\\nproblems = 2\\n[[methods]]\\ntype = "vanilla"\\n'
    >>> _ = (folder / "s.toml").write_text(text)
    >>> rows = run_study(folder / "out", study=load_study(folder / "s.toml"), progress=False)
    >>> [(r["method"], r["traces"]) for r in rows]
    [('vanilla', 2)]
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from workbench.atomic import atomic_write_text
from workbench.evaluation.methods import MethodContext
from workbench.evaluation.results import collect, write_results
from workbench.evaluation.stages import get_stage
from workbench.evaluation.study import MethodSpec, Study, StudyError, TaskSpec, load_study
from workbench.store import model_hash
from workbench.store.paths import RunPaths, StudyPaths
from workbench.store.rundir import normalise
from workbench.traces import run_traces

__all__ = ["load_study", "run_analysis", "run_method", "run_study"]
log = logging.getLogger(__name__)


def _reason(exc: Exception) -> str:
    """An exception's message on one line (a results table cell)."""
    return " ".join(str(exc).split())


def _read_record(run_dir: Path) -> dict[str, Any]:
    path = RunPaths(run_dir).record
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StudyError(f"{path} is not valid JSON ({exc}); delete it: the run resumes from its traces") from exc


def _check_identity(run_dir: Path, record: dict[str, Any], identity: dict[str, Any], what: str) -> None:
    if record and record.get("identity") != identity:
        from workbench.store.rundir import identity_diff

        diff = identity_diff(record.get("identity"), identity)
        raise StudyError(f"{run_dir} holds {what} run with other settings (they differ in: {', '.join(diff)}); use "
                         "a new --out folder, give the method a new name, or delete that folder")


def run_analysis(
    folder: str | Path, *, task: TaskSpec, model, model_sha: str | None = None, progress: bool = True,
) -> Path | None:
    """The task's analysis run (``folder/analysis``) and the analyses the study asks for, each skipped when
    already done; ``model_sha`` (the loaded model's ``model_hash``) is computed when not given.

    Returns the analysis run directory, or None when the study runs no analysis for this task.
    """
    if not task.analysis.stages:
        return None
    folder = Path(folder)
    run_dir = StudyPaths(folder.parent).analysis(folder.name)
    model_sha = model_sha if model_sha is not None else model_hash(model)
    identity = normalise({"config": asdict(task.analysis.run), "model_sha256": model_sha})
    record = _read_record(run_dir)
    _check_identity(run_dir, record, identity, "an analysis")
    if not record:
        run_traces(run_dir, config=task.analysis.run, model=model, progress=progress)
        record = {"identity": identity, "stages": {}}
        atomic_write_text(RunPaths(run_dir).record, json.dumps(record, indent=1))
    for stage in task.analysis.stages:
        cfg, version = task.analysis.configs[stage], get_stage(stage).version
        recorded = record.get("stage_versions", {}).get(stage, 1)  # records from before versions: 1
        done = record["stages"].get(stage)
        if done is not None:
            if done != normalise(asdict(cfg)):
                raise StudyError(f"{run_dir}: the {stage!r} analysis ran with other settings ({done}); use a new "
                                 "--out folder or delete that analysis run")
            if recorded != version:  # its outputs mean something else now; methods built on them would mix both
                raise StudyError(f"{run_dir}: the {stage!r} analysis ran with version {recorded} of that stage, and "
                                 f"this workbench runs version {version} ({get_stage(stage).changes}); use a new "
                                 "--out folder or delete that analysis run and the method runs beside it")
            continue
        skipped = record.get("not_applied", {}).get(stage)
        if skipped is not None and skipped["config"] == normalise(asdict(cfg)) and recorded == version:
            continue  # the same settings cannot apply again: its reason stays recorded
        try:
            get_stage(stage).run(run_dir, config=cfg, model=model, progress=progress)
        except ValueError as exc:
            reason = _reason(exc)
            log.warning("task %r: the %r analysis cannot apply to %s: %s", task.name, stage, run_dir, reason)
            record.setdefault("not_applied", {})[stage] = {"config": normalise(asdict(cfg)), "reason": reason}
        else:
            record.get("not_applied", {}).pop(stage, None)
            record["stages"][stage] = normalise(asdict(cfg))
        record.setdefault("stage_versions", {})[stage] = version
        atomic_write_text(RunPaths(run_dir).record, json.dumps(record, indent=1))
    return run_dir


def not_applied(folder: Path, study: Study) -> list[dict[str, str]]:
    """Every analysis stage and method of the study in ``folder`` that could not apply, with its reason.

    Rows: ``task``, ``what`` (``"analysis"`` or ``"method"``), ``name`` (the stage or method) and ``reason``.
    """
    out, paths = [], StudyPaths(folder)
    for task in study.tasks:
        analysis = _read_record(paths.analysis(task.name))
        for stage, entry in analysis.get("not_applied", {}).items():
            out.append({"task": task.name, "what": "analysis", "name": stage, "reason": entry["reason"]})
        for spec in study.methods:
            reason = _read_record(paths.method(task.name, spec.name)).get("not_applied")
            if reason:
                out.append({"task": task.name, "what": "method", "name": spec.name, "reason": reason})
    return out


def method_identity(spec: MethodSpec, task: TaskSpec, model_sha: str) -> dict[str, Any]:
    """What a method's run depends on besides the engine's own identity: recorded, compared on resume."""
    return normalise({"config": asdict(task.run), "model_sha256": model_sha, "type": spec.type,
                      "method": repr(spec.method), "analysis_from": spec.analysis_from})


def run_method(
    spec: MethodSpec, task: TaskSpec, folder: Path, analysis_run: Path | None, model, model_sha: str,
    progress: bool = True,
) -> dict[str, Any]:
    """One method on one task: build its edits and controllers, generate; skipped when already complete."""
    run_dir = StudyPaths(folder.parent).method(folder.name, spec.name)
    identity = method_identity(spec, task, model_sha)
    record = _read_record(run_dir)
    _check_identity(run_dir, record, identity, f"the {spec.name!r}")
    if record.get("complete"):
        return record
    t0 = time.perf_counter()
    try:
        edits, controllers = spec.method.build(MethodContext(model, analysis_run, task.run))
    except ValueError as exc:
        reason = _reason(exc)
        skipped = _read_record(analysis_run).get("not_applied", {}) if analysis_run is not None else {}
        skipped = {k: v for k, v in skipped.items() if k in getattr(spec.method, "analyses", ())}
        if skipped:  # the likelier cause: an analysis it reads could not apply
            reason += " (the analysis could not apply: " + "; ".join(
                f"{stage}: {entry['reason']}" for stage, entry in skipped.items()) + ")"
        log.warning("task %r: method %r cannot apply: %s", task.name, spec.name, reason)
        record = {"identity": identity, "complete": False, "not_applied": reason}
        atomic_write_text(RunPaths(run_dir).record, json.dumps(record, indent=1))
        return record
    built = time.perf_counter() - t0
    summary = run_traces(run_dir, config=task.run, model=model, edits=edits, controllers=controllers,
                         progress=progress)
    calls = [*record.get("calls", []), {"seconds": summary.seconds_this_call, "build_seconds": round(built, 3),
                                        "tokens": summary.generated_tokens_this_call,
                                        "resumed_from": summary.resumed_from}]
    record = {"identity": identity, "complete": True, "calls": calls, "summary": summary.to_json()}
    atomic_write_text(RunPaths(run_dir).record, json.dumps(record, indent=1, default=str))
    return record


def run_study(out: str | Path, *, study: Study, model=None, progress: bool = True) -> list[dict[str, Any]]:
    """Runs every analysis and method of ``study`` into ``out`` (resuming), then writes the results.

    Returns the result rows (one per task x method, in table order), as written to ``results.json``.
    """
    from workbench.model import load_model, resolve

    out, paths = Path(out), StudyPaths(out)
    model = model if model is not None else load_model(resolve(study.model))
    model_sha = model_hash(model)
    analyses = {t.name: run_analysis(paths.task(t.name), task=t, model=model, model_sha=model_sha, progress=progress)
                for t in study.tasks}
    bar = tqdm(total=len(study.tasks) * len(study.methods), desc="methods", unit="method", disable=not progress)
    try:
        for task in study.tasks:
            for spec in study.methods:
                bar.set_postfix_str(f"{task.name}/{spec.name}")
                record = run_method(spec, task, paths.task(task.name), analyses[spec.analysis_from or task.name], model,
                                    model_sha, progress)
                if spec.name == study.reference and not record.get("complete"):
                    raise StudyError(f"task {task.name!r}: the reference method {spec.name!r}, which every other "
                                     f"method is paired with, cannot apply: {record.get('not_applied')}")
                bar.update()
    finally:
        bar.close()
    rows = collect(study, out)
    write_results(rows, study, out, not_applied(out, study))
    return rows
