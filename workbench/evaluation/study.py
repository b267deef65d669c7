"""A study file (TOML) as one frozen ``Study``: the model, the tasks, the analysis run, the methods.

A study says everything ``workbench eval`` runs, and is checked whole before anything is written:
every field's type and range, the task data, the model folder, each method's parameters (the method
is constructed), the analysis problems kept apart from the evaluation problems. An error names the
file, the table and the field::

    [study]
    model = "organism"            # or a local Hugging Face folder: the one line to change
    reference = "vanilla"         # the method every other one is paired with

    [analysis]                    # the trace run the neurons, gate and detectors are found on
    problems = 100
    samples = 8
    seed = 1000                   # its own problems: kept apart from the evaluation problems
    stages = ["cache", "rcn", "probe", "exit", "mon"]
    [analysis.cache]              # keyword arguments of that stage's config (CacheConfig here)
    top_variance = 2048

    [[tasks]]                     # the evaluation runs: TraceRunConfig's fields
    task = "organism"             # math needs data = "file.jsonl"
    problems = 100
    samples = 4

    [[methods]]
    type = "vanilla"              # a key of workbench.evaluation.METHODS
    name = "vanilla"              # labels its rows and names its run directory
    # control_for = "adaras"      # optional: the method this one is a control for (shown in the table)
    # analysis_from = "organism"  # optional: read another task's analysis run (cross-task transfer)

Relative paths (``data``, ``model``) are taken from the working directory, as on the command line.

The same study in Python is the same tables, built with ``StudyAnalysis``, ``StudyTask`` and ``StudyMethod``
(or plain mappings) and checked by the same code: ``Study.build`` assembles the document and
``Study.from_dict`` validates it, as ``Study.from_toml`` (alias ``load_study``) does a parsed file. An error
names the field as the file would, with ``<python>`` for the file name. ``study.save(path)`` writes the
study as a file that ``workbench eval --config`` runs::

    study = Study.build(
        model="organism",
        analysis=StudyAnalysis(problems=100, samples=8, seed=1000, stages=["cache", "rcn"],
                               cache={"top_variance": 2048}),
        tasks=[StudyTask("organism", problems=100, samples=4)],
        methods=[StudyMethod("vanilla"), StudyMethod("adaras", name="adaras-a2", alpha=2.0, gate=False)],
    )

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "study.toml"
    >>> _ = path.write_text('[[tasks]]\\ntask = "organism"\\n[[methods]]\\ntype = "vanilla"\\n')
    >>> study = Study.from_toml(path)
    >>> [t.name for t in study.tasks], [m.name for m in study.methods], study.tasks[0].analysis.stages
    (['organism'], ['vanilla'], ())
    >>> Study.build(tasks=[StudyTask("organism")], methods=[StudyMethod("vanilla")]) == study  # the same specs
    True
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ModelLoadError
from workbench.evaluation.methods import METHODS, Method
from workbench.evaluation.stages import STAGES
from workbench.prompting import PromptFormat
from workbench.store.paths import ANALYSIS_RUN as ANALYSIS_RUN  # DIR/<task>/analysis; no method may take this name
from workbench.store.paths import StudyPaths
from workbench.study import StudyAnalysis, StudyMethod, StudyTask, tables, toml_text
from workbench.tasks import TaskDataError, get_task
from workbench.traces import TraceRunConfig, run_problems

HARNESS_KEYS = ("type", "control_for", "analysis_from")  # method-table keys the harness reads itself
PYTHON = "<python>"  # stands for the file name in the errors of a study built in Python
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class StudyError(ValueError):
    """A study file that cannot be run; the message names the file, the table and the field."""


def _stage_configs() -> dict[str, type]:
    return {name: stage.config_class() for name, stage in STAGES.items()}


# -- the validated form: what the runner reads ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AnalysisSpec:
    """The analysis run of one task: its own problems and seed, and the analyses run on it.

    Attributes:
        run: the trace run the analyses read (the task's config with the analysis problems, samples, seed).
        stages: which of ``STAGES`` run, in that order; empty: no analysis run (methods get no analysis dir).
        configs: per stage, the config object its function is called with (``CacheConfig``, ``AdarasConfig``,
            ``ProbeReportConfig``, ``NeatConfig``, ``NeuReasonerConfig``).
        allow_overlap: accept analysis problems that are also evaluation problems (refused by default).
    """

    run: TraceRunConfig
    stages: tuple[str, ...] = ()
    configs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    allow_overlap: bool = False


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One task of a study: its label (the folder name under DIR), its evaluation run, its analysis."""

    name: str
    run: TraceRunConfig
    analysis: AnalysisSpec

    def analysis_dir(self, out: str | Path) -> Path | None:
        """Where ``run_study(out, study=study)`` runs this task's analysis; None when the study runs none for it.

        >>> spec = TaskSpec(name="organism", run=TraceRunConfig(), analysis=AnalysisSpec(run=TraceRunConfig(),
        ...                                                                            stages=("cache",)))
        >>> spec.analysis_dir("runs/study").as_posix()
        'runs/study/organism/analysis'
        """
        return StudyPaths(out).analysis(self.name) if self.analysis.stages else None


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    """One ``[[methods]]`` table: the constructed method and what the harness reads beside it.

    Attributes:
        method: the frozen method (``build`` gives its edits and controllers).
        type: its key in ``METHODS``.
        params: the table as written, less ``HARNESS_KEYS`` (the method's identity in run records).
        control_for: the name of the method this one is a control for, or None.
        analysis_from: the task whose analysis run the method reads (None: its own task's).
    """

    method: Any
    type: str
    params: dict[str, Any] = field(hash=False, compare=False)
    control_for: str | None = None
    analysis_from: str | None = None

    @property
    def name(self) -> str:
        return self.method.name


@dataclass(frozen=True, kw_only=True)
class Study:
    """A whole study, validated. ``methods`` keep the file's order (controls beside their methods).

    Made by ``Study.from_toml`` (a file), ``Study.build`` (Python) or ``Study.from_dict`` (a mapping shaped as the
    file); all three validate through ``from_dict``. Two studies are equal when they run the same thing, wherever
    they came from.

    Attributes:
        path: the study file (``<python>`` for a study built in Python and not saved); names the results table.
        model: ``"organism"`` or a local HF folder, shared by every task.
        reference: the name of the method every other one is paired with (usually vanilla).
        tasks: the tasks, each with its evaluation and analysis runs.
        methods: the methods, in the file's order.
        n_resamples: bootstrap resamples for every CI.
        seed: seeds the bootstrap.
        document: the tables it was validated from, in the file's shape (what ``save`` writes).
    """

    path: Path = field(compare=False)
    model: str
    reference: str
    tasks: tuple[TaskSpec, ...]
    methods: tuple[MethodSpec, ...]
    n_resamples: int = 2000
    seed: int = 0
    document: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)

    @classmethod
    def from_toml(cls, path: str | Path, download: bool = False) -> Study:
        """Reads and validates a study file; raises ``StudyError`` naming the file, table and field.

        With ``download`` (or ``download = true`` in ``[study]``) a hub model and named benchmarks missing from the
        Hugging Face cache are fetched first; otherwise nothing touches the network.
        """
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise StudyError(f"study file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise StudyError(f"cannot read the study file {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"{path} is not valid TOML: {exc}") from exc
        return cls.from_dict(doc, where=str(path), download=download)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = PYTHON, download: bool = False) -> Study:
        """Validates a study given as the file's tables (``{"study": {...}, "tasks": [...], "methods": [...]}``).

        The one check every study goes through; ``where`` stands for the file in errors and becomes ``path``.
        """
        return _validate(tables(doc), where, download)

    @classmethod
    def build(
        cls, *, tasks: Sequence[StudyTask | Mapping[str, Any]], methods: Sequence[StudyMethod | Mapping[str, Any]],
        analysis: StudyAnalysis | Mapping[str, Any] | None = None, model: str | Path | None = None,
        reference: str | None = None, n_resamples: int | None = None, seed: int | None = None,
        download: bool = False, name: str | None = None,
    ) -> Study:
        """A study from Python: the ``[study]`` fields as arguments (None: the file's default: model organism,
        reference vanilla, 2000 resamples, seed 0), ``[analysis]``, ``[[tasks]]`` and ``[[methods]]``."""
        head = {"model": model, "reference": reference, "n_resamples": n_resamples, "seed": seed,
                "download": download or None, "name": name}
        doc: dict[str, Any] = {"study": {k: v for k, v in head.items() if v is not None}}
        if analysis is not None:
            doc["analysis"] = analysis
        return cls.from_dict({**doc, "tasks": tasks, "methods": methods}, download=download)

    def with_methods(self, *methods: StudyMethod | Mapping[str, Any]) -> Study:
        """This study with ``methods`` appended, validated again as a whole (errors count them after its own).

        >>> base = Study.build(tasks=[StudyTask("organism", problems=2)], methods=[StudyMethod("vanilla")])
        >>> [m.name for m in base.with_methods(StudyMethod("budget", name="budget-8", max_thinking=8)).methods]
        ['vanilla', 'budget-8']
        """
        doc = {**self.document, "methods": [*self.document.get("methods", []), *methods]}
        return Study.from_dict(doc)

    def to_toml(self) -> str:
        """The study as a file: ``Study.from_toml`` of it gives an equal study.

        >>> print(Study.build(tasks=[StudyTask("organism", problems=2)], methods=[StudyMethod("vanilla")]).to_toml())
        [study]
        <BLANKLINE>
        [[tasks]]
        task = "organism"
        problems = 2
        <BLANKLINE>
        [[methods]]
        type = "vanilla"
        <BLANKLINE>
        """
        if not self.document:
            raise StudyError(f"{self.path}: this Study was built from specs, not tables; build it with Study.build "
                             "or Study.from_dict to write it")
        try:
            return toml_text(self.document)
        except ValueError as exc:
            raise StudyError(f"{self.path}: {exc}") from exc

    def save(self, path: str | Path) -> Study:
        """Writes the study to ``path`` (what ``workbench eval --config`` reads) and returns it with that path.

        Returns the same study, its ``path`` (the results table's title) now the file.
        """
        from workbench.atomic import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_toml())
        return dataclasses.replace(self, path=path)


def load_study(path: str | Path, download: bool = False) -> Study:
    """``Study.from_toml``: reads and validates a study file (see there)."""
    return Study.from_toml(path, download)


# -- validation: the one path every study takes --------------------------------------------------------------


def _tupled(value: Any) -> Any:
    """TOML arrays as tuples, so configs stay hashable."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _construct(cls: type, table: dict[str, Any], where: str) -> Any:
    """``cls(**table)`` with unknown fields and refused values turned into a ``StudyError`` naming ``where``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise StudyError(f"{where}: unknown field {unknown[0]!r}; {cls.__name__} takes {', '.join(sorted(fields))}")
    values = {}
    for k, v in table.items():
        f = fields[k]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        # a sub-table for a field that holds a config dataclass (e.g. [analysis.probe.gate]) builds that config
        nested = isinstance(v, dict) and dataclasses.is_dataclass(default)
        values[k] = _construct(type(default), v, f"{where}.{k}") if nested else _tupled(v)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{where}: {exc}") from exc


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str) -> Any:
    value = table.pop(key, default)
    wrong = value is not default and not isinstance(value, kind)
    if wrong or (isinstance(value, bool) and kind in (int, float)):  # TOML true is not a number here
        raise StudyError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise StudyError(f"{where}: [{key}] must be a table, got {value!r}")
    return dict(value)


def _run_config(table: dict[str, Any], model: str, where: str) -> TraceRunConfig:
    table = dict(table)
    if "model" in table:
        raise StudyError(f"{where}: field 'model' belongs in [study] (one model per study)")
    prompt = table.pop("prompt", {})
    if not isinstance(prompt, dict):
        raise StudyError(f"{where}: 'prompt' must be a table ([tasks.prompt]), got {prompt!r}")
    table["prompt"] = _construct(PromptFormat, prompt, f"{where}.prompt")
    return _construct(TraceRunConfig, {**table, "model": model}, where)


def _analysis(table: dict[str, Any], run: TraceRunConfig, where: str) -> AnalysisSpec:
    table = dict(table)
    stages = _tupled(_take(table, "stages", list, [], where))
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise StudyError(f"{where}: field 'stages' has {bad[0]!r}; choose from {', '.join(STAGES)}")
    if len(set(stages)) != len(stages):
        raise StudyError(f"{where}: field 'stages' names a stage twice: {list(stages)}")
    if "cache" not in stages and any(STAGES[s].needs_cache for s in stages):
        raise StudyError(f"{where}: stages {[s for s in stages if STAGES[s].needs_cache]} read the activation cache; "
                         "add 'cache' to 'stages'")
    allow_overlap = _take(table, "allow_overlap", bool, False, where)
    configs = {}
    for name, cls in _stage_configs().items():
        sub = table.pop(name, None)
        if sub is None:
            configs[name] = cls()
            continue
        if not isinstance(sub, dict):
            raise StudyError(f"{where}: '{name}' must be a table ([analysis.{name}]), got {sub!r}")
        configs[name] = _construct(cls, sub, f"{where}.{name}")
    run_fields = ("problems", "samples", "seed", "temperature", "top_p", "max_new_tokens", "batch_size")
    unknown = sorted(set(table) - set(run_fields))
    if unknown:
        raise StudyError(f"{where}: unknown field {unknown[0]!r}; [analysis] takes stages, allow_overlap, "
                         f"{', '.join(run_fields)} and the tables {', '.join(STAGES)}")
    try:
        analysis_run = dataclasses.replace(run, **table)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{where}: {exc}") from exc
    return AnalysisSpec(run=analysis_run, stages=stages,
                        configs={k: v for k, v in configs.items() if k in stages}, allow_overlap=allow_overlap)


def _check_task(spec: TaskSpec, where: str, download: bool = False) -> TaskSpec:
    """The task and its data load (fetched first with ``download``), and no analysis problem is an evaluation
    problem unless ``allow_overlap``: a task with a fixed list of problems (a file, a benchmark) draws its
    analysis problems from the ones the evaluation leaves (``TraceRunConfig.disjoint_from``); a generated task
    (the organism) draws them from the analysis seed and refuses an overlap."""
    from workbench.model import resolve

    try:
        task = get_task(spec.run.task, spec.run.data, model_dir=resolve(spec.run.model), download=download)
    except (TaskDataError, ModelLoadError) as exc:
        raise StudyError(f"{where}: {exc}") from exc
    if not spec.analysis.stages or spec.analysis.allow_overlap:
        return spec
    if getattr(task, "fixed_problems", False):
        run = dataclasses.replace(spec.analysis.run, disjoint_from=(spec.run.problems, spec.run.seed))
        try:
            run_problems(task, run)
        except TaskDataError as exc:
            raise StudyError(f"{where}: {exc}") from exc
        return dataclasses.replace(spec, analysis=dataclasses.replace(spec.analysis, run=run))
    evaluation = {p.id for p in run_problems(task, spec.run)}
    analysis = {p.id for p in run_problems(task, spec.analysis.run)}
    shared = evaluation & analysis
    if shared:
        raise StudyError(
            f"{where}: {len(shared)} of the {len(analysis)} analysis problems are also evaluation problems (e.g. "
            f"{sorted(shared)[0]!r}); choose another [analysis] seed or fewer problems, or set "
            "allow_overlap = true in [analysis] to accept it")
    return spec


def _method(table: Any, i: int, task_names: set[str], where: str) -> MethodSpec:
    where = f"{where}: [[methods]] #{i + 1}"
    if not isinstance(table, dict):
        raise StudyError(f"{where} must be a table, got {table!r}")
    params = dict(table)
    kind = _take(params, "type", str, None, where)
    if kind is None:
        raise StudyError(f"{where}: field 'type' is missing; choose one of {', '.join(sorted(METHODS))}")
    where = f"{where} (type {kind!r})"
    if kind not in METHODS:
        raise StudyError(f"{where}: unknown method type; choose one of {', '.join(sorted(METHODS))} (a new type "
                         "is added with workbench.evaluation.register)")
    control_for = _take(params, "control_for", str, None, where)
    analysis_from = _take(params, "analysis_from", str, None, where)
    if analysis_from is not None and analysis_from not in task_names:
        raise StudyError(f"{where}: field 'analysis_from' = {analysis_from!r} is not a task of this study "
                         f"({', '.join(sorted(task_names))})")
    try:
        method = METHODS[kind](_tupled_params(params))
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{where}: {exc}{_parameters_hint(kind)}") from exc
    if not isinstance(method, Method):
        raise StudyError(f"{where}: the constructor gave {method!r}, which has no name and build()")
    name = method.name
    if not isinstance(name, str) or not _NAME.match(name) or name == ANALYSIS_RUN:
        raise StudyError(f"{where}: field 'name' = {name!r} must be a folder name (letters, digits, . _ + -) other "
                         f"than {ANALYSIS_RUN!r}")
    return MethodSpec(method=method, type=kind, params=params, control_for=control_for, analysis_from=analysis_from)


def _parameters_hint(kind: str) -> str:
    """``"; it takes a, b"`` when the type's default instance is a dataclass, else nothing."""
    try:
        default = METHODS[kind]({})
    except (TypeError, ValueError):  # a method whose every parameter is required: no hint
        return ""
    if not dataclasses.is_dataclass(default):
        return ""
    return f"; method type {kind!r} takes {', '.join(f.name for f in dataclasses.fields(default))}"


def _tupled_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: _tupled(v) for k, v in params.items()}


def _validate(doc: dict[str, Any], path: str, download: bool) -> Study:
    """``Study.from_dict``'s body: ``doc`` in ``tomllib``'s shape, ``path`` the file (or ``<python>``) in errors."""
    unknown = sorted(set(doc) - {"study", "analysis", "tasks", "methods"})
    if unknown:
        raise StudyError(f"{path}: unknown table [{unknown[0]}]; a study has [study], [analysis], [[tasks]] and "
                         "[[methods]]")
    head = _table(doc, "study", path)
    where = f"{path}: [study]"
    model = _take(head, "model", str, "organism", where)
    reference = _take(head, "reference", str, "vanilla", where)
    n_resamples = _take(head, "n_resamples", int, 2000, where)
    seed = _take(head, "seed", int, 0, where)
    download = _take(head, "download", bool, False, where) or download
    head.pop("name", None)  # a label only
    if head:
        raise StudyError(f"{where}: unknown field {sorted(head)[0]!r}; [study] takes model, reference, n_resamples, "
                         "seed, download, name")
    if n_resamples < 100:
        raise StudyError(f"{where}: field 'n_resamples' = {n_resamples} is too few for a 95% CI; use >= 100")
    from workbench.model import fetch_model, hub_id, resolve

    try:
        if download and hub_id(model) is not None:
            fetch_model(model)
        resolve(model)
    except ModelLoadError as exc:
        raise StudyError(f"{where}: field 'model': {exc}") from exc

    task_tables = doc.get("tasks")
    if not isinstance(task_tables, list) or not task_tables:
        raise StudyError(f"{path}: no [[tasks]]; add at least one, e.g. [[tasks]] task = \"organism\"")
    analysis_table = _table(doc, "analysis", path)
    tasks: list[TaskSpec] = []
    for i, table in enumerate(task_tables):
        where = f"{path}: [[tasks]] #{i + 1}"
        if not isinstance(table, dict):
            raise StudyError(f"{where} must be a table, got {table!r}")
        table = dict(table)
        name = _take(table, "name", str, table.get("task", "organism"), where)
        if not _NAME.match(name):
            raise StudyError(f"{where}: field 'name' = {name!r} must be a folder name (letters, digits, . _ + -)")
        override = table.pop("analysis", {})
        if not isinstance(override, dict):
            raise StudyError(f"{where}: 'analysis' must be a table ([tasks.analysis]), got {override!r}")
        run = _run_config(table, model, where)
        analysis = _analysis({**analysis_table, **override}, run,
                             f"{where}: [tasks.analysis]" if override else f"{path}: [analysis]")
        spec = _check_task(TaskSpec(name=name, run=run, analysis=analysis), where, download)
        tasks.append(spec)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: two [[tasks]] share the name {next(n for n in names if names.count(n) > 1)!r}; "
                         "give each a distinct 'name'")

    method_tables = doc.get("methods")
    if not isinstance(method_tables, list) or not method_tables:
        raise StudyError(f"{path}: no [[methods]]; add at least [[methods]] type = \"vanilla\"")
    methods = [_method(t, i, set(names), path) for i, t in enumerate(method_tables)]
    seen: set[str] = set()
    for i, m in enumerate(methods):
        if m.name in seen:
            raise StudyError(f"{path}: [[methods]] #{i + 1}: the name {m.name!r} is taken; give each method a "
                             "distinct 'name'")
        seen.add(m.name)
    for i, m in enumerate(methods):
        if m.control_for is not None and m.control_for not in seen:
            raise StudyError(f"{path}: [[methods]] #{i + 1}: field 'control_for' = {m.control_for!r} names no method")
    if reference not in seen:
        raise StudyError(f"{path}: [study] field 'reference' = {reference!r} names no method; add [[methods]] type = "
                         f"\"vanilla\" or set reference to one of {', '.join(sorted(seen))}")
    return Study(path=Path(path), model=model, reference=reference, tasks=tuple(tasks), methods=tuple(methods),
                 n_resamples=n_resamples, seed=seed, document=doc)
