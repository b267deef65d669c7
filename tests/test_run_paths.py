"""One layout: only ``workbench/store/paths.py`` spells a file or folder name of a run directory or a study.

Two checks (issue #22):

- the source check: no code outside ``paths.py`` builds a path from a name of the layout (``run / "neurons"``,
  ``Path("probes/report.json")``, ``folder.glob("detector-*.joblib")``, a module constant ``OUT = "neureasoner"``);
  the names are read off ``RunPaths``, ``StorePaths`` and ``StudyPaths`` themselves;
- the round trip: a small study's writers put every file where ``RunPaths`` / ``StudyPaths`` say, the readers
  find them there, and no file lands outside the layout.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from workbench.store.paths import ANALYSIS_RUN, RunPaths, StorePaths, StudyPaths, gate_files

REPO = Path(__file__).resolve().parents[1]
HOLE = "\x00"  # stands for an argument (a set's name, a task, a shard) in a path the layout builds

# Files another helper is switching to RunPaths as part of its own rework (issue #22); checked once it lands.
# TODO(#22): empty this when neat/organism/validation switch to RunPaths.
PENDING: set[str] = set()


# -- the names of the layout, read off paths.py -------------------------------------------------------------------


def _paths_of(obj: object) -> list[Path]:
    """Every path ``obj`` (a RunPaths, StorePaths or StudyPaths) names: its properties, and its
    methods called with ``HOLE`` for each text argument. Methods without one (globs of what exists) are skipped."""
    out = []
    for name, attr in inspect.getmembers(type(obj)):
        if name.startswith("_"):
            continue
        if isinstance(attr, property):
            value = getattr(obj, name)
            if isinstance(value, StorePaths):
                out += _paths_of(value)
            elif isinstance(value, Path):
                out.append(value)
        elif inspect.isfunction(attr):
            params = [p for p in inspect.signature(attr).parameters.values() if p.name != "self"]
            needed = [p for p in params if p.default is inspect.Parameter.empty]
            if needed and all(p.annotation in ("str", str) for p in needed):
                out.append(getattr(obj, name)(*[HOLE] * len(needed)))
    return out


def layout_names() -> tuple[frozenset[str], frozenset[str]]:
    """(names, prefixes): each file or folder name of the layout (``neurons``, ``report.json``, ...), and the
    fixed start of each name that carries an argument (``mon-``, ``detector-``, ``part-``, ...)."""
    root = Path("/layout-root")
    paths = [*_paths_of(RunPaths(root)), *_paths_of(StudyPaths(root)), *gate_files(root)]
    names, prefixes = set(), set()
    for path in paths:
        for part in path.relative_to(root).parts:
            if HOLE not in part:
                names.add(part)
            elif part.index(HOLE) > 0:
                prefixes.add(part[: part.index(HOLE)])
    return frozenset(names), frozenset(prefixes)


NAMES, PREFIXES = layout_names()


def test_the_layout_names_are_read_off_paths_py():
    assert {"manifest.json", ".lock", "traces.parquet", "shards", "shards-corrupt", "evaluation.json",
            "activations", "index.parquet", "token_neurons.json", "neurons", "adaras", "rcn.json", "gate",
            "gate.json", "gate.safetensors", "probes", "report.json", "neat", "reference.json", "neureasoner",
            "results.json", "results.md", "results.parquet", "not_applied.json", ANALYSIS_RUN} <= NAMES
    assert {"mon-", "detector-", "heads-", "part-"} <= PREFIXES


# -- the source check --------------------------------------------------------------------------------------------


def _text(node: ast.AST) -> str | None:
    """A string literal's text, an f-string's with ``HOLE`` for each replacement field; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    return None


def _layout_part(text: str) -> str | None:
    """The part of a path-like text that is a layout name (or starts with a layout prefix), if any."""
    for part in text.replace("\\", "/").split("/"):
        if part in NAMES or any(part.startswith(p) for p in PREFIXES):
            return part
    return None


PATH_CALLS = {"Path", "PurePath", "PosixPath", "joinpath", "glob", "rglob", "with_name"}


def _call_name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if func.attr == "join" and isinstance(func.value, ast.Attribute) and func.value.attr == "path":
            return "os.path.join"
        return func.attr
    return None


def layout_violations(source: str, filename: str) -> list[str]:
    """``file:line: ...`` for each place that builds a path from a layout name (see the module docstring).

    Text that is not a path stays allowed: a method type ``"neat"`` in a dict, a set name ``"mon-slip"`` passed to
    ``RunPaths.neuron_set``, prose in docstrings and messages.
    """
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []

    def check(node: ast.AST, how: str) -> None:
        text = _text(node)
        part = _layout_part(text) if text is not None else None
        if part is not None:
            found.append((node.lineno, f"{how} {part.replace(HOLE, '{}')!r}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                check(side, "a path joined with")
        elif isinstance(node, ast.Call) and _call_name(node.func) in PATH_CALLS | {"os.path.join"}:
            for arg in node.args:
                check(arg, f"{_call_name(node.func)}() of")
    for stmt in tree.body:  # module constants: NEURONS = "neurons", ACTIVATIONS, INDEX = "activations", ...
        pairs: list[tuple[ast.AST, ast.AST]] = []
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple):
                    pairs += zip(target.elts, stmt.value.elts, strict=False)
                else:
                    pairs.append((target, stmt.value))
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            pairs.append((stmt.target, stmt.value))
        for target, value in pairs:
            text = _text(value)
            if isinstance(target, ast.Name) and text is not None and _layout_part(text) is not None:
                found.append((value.lineno, f"module constant {target.id} = {text!r}"))
    return [f"{filename}:{line}: {what}; ask RunPaths/StudyPaths (workbench/store/paths.py)"
            for line, what in sorted(set(found))]


def checked_files() -> list[Path]:
    files = [*sorted((REPO / "workbench").rglob("*.py")), REPO / "app.py", *sorted((REPO / "app_pages").glob("*.py")),
             *sorted((REPO / "analyses").glob("*.py"))]
    return [f for f in files if f != REPO / "workbench" / "store" / "paths.py"]


def test_no_code_outside_paths_py_spells_the_layout():
    problems = []
    for file in checked_files():
        name = file.relative_to(REPO).as_posix()
        if name not in PENDING:
            problems += layout_violations(file.read_text(), name)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_each_way_of_spelling_the_layout():
    planted = '''
from pathlib import Path
NEURONS = "neurons"
OUT, KEEP = "neureasoner", "fine"
def f(run, name, kind):
    a = run / "probes" / "report.json"
    b = Path(run) / NEURONS / f"{name}.json"
    c = run / f"mon-{kind}.json"
    d = Path("runs/x/activations/index.parquet")
    e = sorted((run / "shards").glob("part-*.parquet"))
    g = run.joinpath("neat")
    h = run / f"{name}" / f"detector-{kind}.joblib"
'''
    lines = layout_violations(planted, "planted.py")
    assert [int(x.split(":")[1]) for x in lines] == [3, 4, 6, 6, 8, 9, 10, 10, 11, 12], "\n".join(lines)
    assert all(x.startswith("planted.py:") and "RunPaths" in x for x in lines)


def test_the_checker_leaves_text_that_is_not_a_path_alone():
    fine = '''
"""Writes RUN/neurons/rcn.json and RUN/probes/report.json."""
from pathlib import Path
METHODS = {"neat": 1, "adaras": 2}
UNITS = ("neurons", "heads")
SFT = "sft.json"
def f(run, paths, cfg, spec):
    if "neurons" in cfg.units and spec.type == "neat":
        paths.neuron_set("mon-slip")
    x = {"gate": True, "neurons": 3}
    raise ValueError(f"no probe report in {run}: run `workbench probe {run}` (RUN/probes/report.json)")
    return Path(run) / "adaras.json", run / cfg.name / "config.json"
'''
    assert layout_violations(fine, "fine.py") == []


def test_pending_files_exist():
    """A renamed or removed file must leave PENDING too."""
    assert all((REPO / name).is_file() for name in PENDING)


# -- the round trip: writers write where readers look ------------------------------------------------------------


def named_files(run: Path) -> set[Path]:
    """Every file of a trace run that the layout names, given what its globbing readers see."""
    paths = RunPaths(run)
    out = {p for p in _paths_of(paths) if HOLE not in str(p)}
    out |= {paths.neuron_set(p.stem) for p in paths.neurons.glob("*.json")}
    out |= {*paths.detectors().values(), *paths.head_sets(), *gate_files(paths.gate)}
    for store in (paths.store, paths.activations):
        out |= {*store.shard_files(), *store.shard_files(".safetensors")}
    return out


def test_a_study_writes_where_the_readers_look(organism_study):
    from workbench.adaras.gate import Gate
    from workbench.app.layout import find_layout
    from workbench.evaluation.runner import not_applied
    from workbench.figures.neurons import load_neuron_sets
    from workbench.figures.probes import load_probe_report
    from workbench.figures.study import load_results
    from workbench.neureasoner.detectors import Detector
    from workbench.store import ActivationStore, load_traces

    study = StudyPaths(organism_study)
    for path in (study.results_json, study.results_md, study.results_parquet, study.not_applied):
        assert path.is_file(), path
    layout = find_layout(study.root)
    analysis = study.analysis("organism")
    assert layout.kind == "study" and layout.results == study.results_json
    assert layout.tasks["organism"].analysis == analysis and study.analyses() == [analysis]
    rows = load_results(study.root)
    assert {r["method"] for r in rows} <= set(layout.tasks["organism"].methods)
    for method in layout.tasks["organism"].methods:
        run = RunPaths(study.method("organism", method))
        assert run.manifest.is_file() and run.traces.is_file() and run.record.is_file(), run.root
        assert load_traces(run.root).num_rows == 24
        on_disk = {p for p in run.root.rglob("*") if p.is_file()}
        assert on_disk <= named_files(run.root), sorted(on_disk - named_files(run.root))

    run = RunPaths(analysis)
    on_disk = {p for p in analysis.rglob("*") if p.is_file()}
    assert not on_disk - named_files(analysis), f"files outside the layout: {sorted(on_disk - named_files(analysis))}"
    expected = [run.manifest, run.lock, run.traces, run.record, run.activations.manifest, run.activations.index,
                run.activations.token_neurons, run.neuron_set("rcn"), run.neuron_set("rcn-random"), run.exit_set,
                run.mon_set("overthinking"), run.rcn_summary, *gate_files(run.gate), run.probe_report,
                run.exit_reference, run.mon_report, run.detector("overthinking"), run.detector("overthinking_random")]
    assert [p for p in expected if not p.is_file()] == []
    assert run.store.shard_files() and run.activations.shard_files(".safetensors")

    store = ActivationStore(analysis)  # the readers find each piece where the writers put it
    assert len(store) == load_traces(analysis).num_rows == 96 and len(store.token_neurons) == 256
    assert load_probe_report(analysis)["traces"] == 96
    sets = load_neuron_sets(analysis, ["rcn", "exit", "mon-overthinking"])
    assert Gate.load(run.gate).neurons and Detector.load(run.detector("overthinking")).neurons == sets[
        "mon-overthinking"]
    assert set(run.detectors()) >= {"overthinking", "overthinking_random"}
    assert not_applied(study.root, _study()) == []


def _study():
    from workbench.evaluation import load_study

    return load_study(REPO / "tests" / "data" / "study-small.toml")
