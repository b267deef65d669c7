"""Studies in Python: the builders give the same validated ``Study`` as the file, with the file's errors; the
``workbench`` top level resolves every name it lists, without importing torch on ``import workbench``."""

from __future__ import annotations

import dataclasses
import importlib
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import workbench
from workbench import Study, StudyAnalysis, StudyError, StudyMethod, StudyTask
from workbench.study import tables, toml_text

ROOT = Path(__file__).resolve().parents[1]
ORGANISM = ROOT / "studies" / "organism.toml"


def organism_study() -> Study:
    """``studies/organism.toml``, written in Python."""
    task = {"problems": 100, "samples": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 160, "seed": 1}
    return Study.build(
        name="organism", model="organism", reference="vanilla", n_resamples=2000, seed=0,
        analysis=StudyAnalysis(problems=100, samples=8, seed=1004, stages=("cache", "rcn", "probe", "exit", "mon"),
                               cache={"top_variance": 2048}),
        tasks=[StudyTask("organism", name="organism", **task), StudyTask("organism-sub", name="organism-sub", **task)],
        methods=[
            StudyMethod("vanilla", name="vanilla"),
            StudyMethod("adaras", name="adaras", alpha=0.3, k=50, gate=True),
            StudyMethod("adaras", name="adaras-nogate", control_for="adaras", alpha=0.3, gate=False),
            StudyMethod("random-steering", name="random-steering", control_for="adaras", alpha=0.3),
            StudyMethod("adaras", name="adaras-a2", alpha=2.0, gate=False),
            StudyMethod("random-steering", name="random-steering-a2", control_for="adaras-a2", alpha=2.0),
            StudyMethod("adaras", name="adaras-a2-from-addition", control_for="adaras-a2", analysis_from="organism",
                        alpha=2.0, gate=False),
            StudyMethod("adaras", name="adaras-probe-a2", control_for="adaras-a2", neurons="rcn-probe", alpha=2.0,
                        gate=False),
            StudyMethod("adaras", name="adaras-unfiltered-a2", control_for="adaras-a2", neurons="rcn-unfiltered",
                        alpha=2.0, gate=False),
            StudyMethod("neat", name="neat", tau_sim=0.6, tau_mag=0.2, tau_sup=0.4),
            StudyMethod("neat", name="neat-exit-only", control_for="neat", mode="exit_only"),
            StudyMethod("neat", name="neat-suppress-only", control_for="neat", mode="suppress_only"),
            StudyMethod("neat", name="neat-tau0.9", tau_sim=0.9),
            StudyMethod("neureasoner", name="neureasoner-overthinking", types=["overthinking"]),
            StudyMethod("nowait", name="nowait", reflection_words=["wait"]),
            StudyMethod("budget", name="budget-26", control_for="neat", max_thinking=26),
            StudyMethod("budget", name="budget-20", control_for="neat-tau0.9", max_thinking=20),
            StudyMethod("answer-consistency", name="answer-consistency", every=8, agree=2),
            StudyMethod("deer", name="deer", threshold=0.95),
        ],
    )


def assert_same_study(a: Study, b: Study) -> None:
    """Equal specs, and equal in the fields a Study's equality leaves out (stage configs, method params)."""
    assert a == b
    for x, y in zip(a.tasks, b.tasks, strict=True):
        assert x.analysis.configs == y.analysis.configs, x.name
    for x, y in zip(a.methods, b.methods, strict=True):
        assert (x.params, repr(x.method)) == (y.params, repr(y.method)), x.name


@pytest.fixture(scope="module")
def from_toml() -> Study:
    return Study.from_toml(ORGANISM)


class TestPythonForm:
    """The builders, ``Study.build`` and ``Study.from_dict`` give what the file gives, through the same checks."""

    def test_the_organism_study_in_python_is_the_file(self, from_toml):
        study = organism_study()
        assert_same_study(study, from_toml)
        assert study.path == Path("<python>") and from_toml.path == ORGANISM
        assert [t.analysis.run for t in study.tasks] == [t.analysis.run for t in from_toml.tasks]
        assert study.tasks[1].analysis.configs["cache"].top_variance == 2048

    def test_from_dict_is_the_file_parsed(self, from_toml):
        doc = tomllib.loads(ORGANISM.read_text())
        assert_same_study(Study.from_dict(doc, where=str(ORGANISM)), from_toml)
        assert from_toml.document == doc

    def test_save_writes_a_file_that_reads_back_the_same(self, tmp_path, from_toml):
        saved = organism_study().save(tmp_path / "organism.toml")
        assert saved.path == tmp_path / "organism.toml"
        assert_same_study(Study.from_toml(saved.path), from_toml)
        assert tomllib.loads(saved.path.read_text()) == saved.document

    def test_toml_text_reads_back_what_it_wrote(self):
        doc = {"study": {"name": 'a "quoted"\tname\n', "seed": 3}, "analysis": {"probe": {"gate": {"lr": 1e-05}}},
               "tasks": [{"task": "math", "data": "ü/\x7f.jsonl", "prompt": {"extra_stops": ["\\", "x y"]}}],
               "methods": [{"type": "t", "a.b": float("inf"), "nan": float("nan"), "list": [], "flag": False}]}
        back = tomllib.loads(toml_text(doc))
        assert math.isnan(back["methods"][0].pop("nan"))
        doc["methods"][0].pop("nan")
        assert back == doc

    def test_with_methods_appends_and_checks_again(self):
        base = Study.build(tasks=[StudyTask("organism", problems=2)], methods=[StudyMethod("vanilla")])
        study = base.with_methods(StudyMethod("budget", name="budget-8", control_for="vanilla", max_thinking=8))
        assert [m.name for m in study.methods] == ["vanilla", "budget-8"] and len(base.methods) == 1
        assert study.method("budget-8").control_for == "vanilla" and study.method("budget-8").params == {
            "name": "budget-8", "max_thinking": 8}
        with pytest.raises(StudyError, match=r"\[\[methods\]\] #2: the name 'vanilla' is taken"):
            base.with_methods(StudyMethod("vanilla"))

    def test_python_values_become_the_files(self, tmp_path):
        data = tmp_path / "p.jsonl"
        data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n' * 1)
        task = StudyTask("math", data=data, problems=1, prompt={"style": "raw"}, analysis=StudyAnalysis(stages=()))
        study = Study.build(tasks=(task,), methods=(StudyMethod("nowait", reflection_words=("wait",)),),
                            reference="nowait")
        assert study.tasks[0].run.data == str(data) and study.tasks[0].run.prompt.style == "raw"
        assert study.method("nowait").method.reflection_words == ("wait",)  # arrays become tuples, as from a file
        assert study.document["tasks"][0]["data"] == str(data)
        assert tables(task) == {"task": "math", "data": str(data), "problems": 1, "prompt": {"style": "raw"},
                                "analysis": {"stages": []}}

    def test_builders_are_frozen_and_compare_by_value(self):
        method = StudyMethod("adaras", alpha=2.0)
        assert method == StudyMethod("adaras", alpha=2.0) != StudyMethod("adaras", alpha=1.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            method.type = "neat"  # type: ignore[misc]


class TestErrors:
    """A study built in Python is refused as its file would be: the table and field, ``<python>`` for the file."""

    @pytest.mark.parametrize(("change", "expected"), [
        ({"tasks": [StudyTask("organism", temprature=1.0)]}, "<python>: [[tasks]] #1: unknown field 'temprature'"),
        ({"tasks": [StudyTask("organism", problems=0)]}, "<python>: [[tasks]] #1: problems must be >= 1"),
        ({"methods": [StudyMethod("adarass")]}, "<python>: [[methods]] #1 (type 'adarass'): unknown method type"),
        ({"methods": [StudyMethod("vanilla", alpha=0.3)]},
         "#1 (type 'vanilla'): got an unexpected keyword argument 'alpha'; method type 'vanilla' takes name"),
        ({"analysis": StudyAnalysis(stages=["rcn"])}, "<python>: [analysis]: stages ['rcn'] read the activation cache"),
        ({"analysis": StudyAnalysis(stages=["cache"], cache={"top_varience": 3})},
         "<python>: [analysis].cache: unknown field 'top_varience'"),
        ({"tasks": [StudyTask("organism", analysis=StudyAnalysis(stages=["cache", "mon"]))]},
         "analysis problems are also evaluation problems"),
        ({"reference": "base"}, "<python>: [study] field 'reference' = 'base' names no method"),
        ({"n_resamples": 10}, "<python>: [study]: field 'n_resamples' = 10 is too few"),
        ({"model": "/no/such/model"}, "<python>: [study]: field 'model'"),
        ({"tasks": []}, "<python>: no [[tasks]]"),
    ])
    def test_errors_name_the_table_and_field(self, change, expected):
        args = {"tasks": [StudyTask("organism", problems=2)], "methods": [StudyMethod("vanilla")], **change}
        with pytest.raises(StudyError) as err:
            Study.build(**args)
        assert expected in str(err.value)

    def test_from_dict_names_an_unknown_table(self):
        with pytest.raises(StudyError, match=r"<python>: unknown table \[task\]; a study has \[study\]"):
            Study.from_dict({"task": {}, "tasks": [{"task": "organism"}], "methods": [{"type": "vanilla"}]})

    def test_a_value_toml_cannot_hold_is_named(self):
        with pytest.raises(ValueError, match=r"field 'methods.alpha' is None: TOML has no null"):
            toml_text({"methods": [{"type": "adaras", "alpha": None}]})
        with pytest.raises(StudyError, match="built from specs, not tables"):
            dataclasses.replace(organism_study(), document={}).to_toml()


class TestTopLevel:
    """``workbench`` re-exports what a notebook needs, each name from its home, all on first use."""

    def test_every_listed_name_resolves_to_its_home(self):
        assert workbench.__all__ == sorted(workbench.__all__)
        assert set(workbench.__all__) == {*workbench._LAZY, *workbench._MODULES, "ModelLoadError"}
        for name in workbench.__all__:
            value = getattr(workbench, name)
            home = workbench._LAZY.get(name)
            if home is not None:
                assert value is getattr(importlib.import_module(home), name), name
        assert workbench.figures.forest_figure is importlib.import_module("workbench.figures").forest_figure
        with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
            workbench.no_such_name  # noqa: B018

    def test_import_and_the_study_tables_stay_free_of_torch(self):
        code = ("import sys, workbench; from workbench import StudyTask, StudyMethod, StudyAnalysis; "
                "print(sorted(m for m in ('torch', 'transformer_lens', 'workbench.model') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        assert out.stdout.strip() == "[]"
