"""Benchmarks by name: the registry, loading from a fabricated ``datasets`` cache (offline), grading, no network."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from datasets.exceptions import DatasetNotFoundError
from datasets.naming import camelcase_to_snakecase, filenames_for_dataset_split

from workbench.tasks import TASKS, TaskDataError, benchmarks, get_task, sandbox
from workbench.tasks.benchmarks import BENCHMARKS, Benchmark, fetch_command, load_benchmark
from workbench.tasks.gpqa import GPQATask
from workbench.tasks.mbpp import MBPPTask
from workbench.tasks.sandbox import SandboxUnavailableError, isolation_unavailable_reason

ISOLATED = isolation_unavailable_reason() is None
REVISION = "0123456789abcdef0123456789abcdef01234567"

# Rows with each dataset's own column names and value types, as the Hub serves them.
ROWS = {
    "gsm8k": [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
              {"question": "What is 10 times 10?", "answer": "10*10 = 100\n#### 100"}],
    "math500": [{"problem": "Simplify 28/6.", "solution": "It is $\\boxed{\\frac{14}{3}}$.",
                 "answer": "\\frac{14}{3}", "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"}],
    "aime24": [{"id": 60, "problem": "Find x.", "solution": "x is 204.", "answer": "204", "url": "u", "year": "2024"}],
    "aime25": [{"id": 0, "problem": "Find y.", "answer": "70", "solution": "", "url": "u", "year": 2025}],
    "amc23": [{"id": 0, "question": "How many?", "answer": 27.0, "url": "u"}],
    "gpqa-diamond": [
        {"Record ID": f"rec{i}", "Question": f"Question {i}?", "Correct Answer": f"right {i}",
         "Incorrect Answer 1": f"wrong {i}a", "Incorrect Answer 2": f"wrong {i}b", "Incorrect Answer 3": f"wrong {i}c",
         "Subdomain": "Physics"} for i in range(12)],
    "mbpp": [
        {"source_file": "f.py", "task_id": 2, "prompt": "Write a function to find the shared elements of two lists.",
         "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
         "test_imports": [], "test_list": ["assert set(similar_elements((3, 4, 5), (5, 7, 4))) == {4, 5}",
                                           "assert similar_elements((1,), (2,)) == ()"]},
        {"source_file": "f.py", "task_id": 82, "prompt": "Write a function to find the volume of a sphere.",
         "code": "import math\ndef volume_sphere(r):\n    return 4 / 3 * math.pi * r ** 3",
         "test_imports": ["import math"],
         "test_list": ["assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)"]}],
}


def fabricate(cache: Path, b: Benchmark, rows: list[dict], config: str | None = None) -> Path:
    """Writes ``rows`` where ``datasets`` keeps a downloaded Hub split: <ns>___<name>/<config>/<version>/<commit>."""
    namespace, name = b.dataset.split("/")
    config = config or b.config or "default"
    folder = cache / f"{namespace}___{camelcase_to_snakecase(name)}" / config / "0.0.0" / REVISION
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    [arrow] = filenames_for_dataset_split(folder, dataset_name=camelcase_to_snakecase(name), split=b.split,
                                          filetype_suffix="arrow")
    with pa.OSFile(arrow, "wb") as sink, pa.ipc.new_stream(sink, ds.data.table.schema) as writer:
        writer.write_table(ds.data.table)
    split = datasets.SplitInfo(name=b.split, num_examples=len(rows), dataset_name=camelcase_to_snakecase(name))
    datasets.DatasetInfo(config_name=config, dataset_name=camelcase_to_snakecase(name), features=ds.features,
                         splits=datasets.SplitDict({b.split: split})).write_to_directory(folder)
    return cache


@pytest.fixture
def cached(tmp_path):
    """Loads benchmark ``name`` offline from a fabricated cache holding ``ROWS[name]``."""

    def load(name: str, **kwargs):
        return load_benchmark(name, cache_dir=fabricate(tmp_path / name, BENCHMARKS[name], ROWS[name]), **kwargs)

    return load


@pytest.fixture
def hub_rows(monkeypatch):
    """Replaces the Hub loader with ``ROWS``, recording each call's arguments."""
    calls = []

    def fake(b, download, cache_dir):
        calls.append((b.name, download))
        return ROWS[b.name], REVISION

    monkeypatch.setattr(benchmarks, "_hub_rows", fake)
    return calls


class TestRegistry:
    """Each name maps to its Hub dataset, config, split, columns and grader."""

    @pytest.mark.parametrize(("name", "dataset", "config", "split", "grader"), [
        ("gsm8k", "openai/gsm8k", "main", "test", "math"),
        ("math500", "HuggingFaceH4/MATH-500", None, "test", "math"),
        ("aime24", "HuggingFaceH4/aime_2024", None, "train", "math"),
        ("aime25", "yentinglin/aime_2025", None, "train", "math"),
        ("amc23", "zwhe99/amc23", None, "test", "math"),
        ("gpqa-diamond", "Idavidrein/gpqa", "gpqa_diamond", "train", "gpqa"),
        ("mbpp", "google-research-datasets/mbpp", "sanitized", "test", "mbpp"),
    ])
    def test_names_resolve(self, name, dataset, config, split, grader):
        b = BENCHMARKS[name]
        assert (b.dataset, b.config, b.split, b.grader) == (dataset, config, split, grader)
        assert name in TASKS

    def test_field_mapping(self):
        assert BENCHMARKS["gsm8k"].columns("answer") == ("answer",)
        assert BENCHMARKS["math500"].columns("question")[0] == "problem"
        assert BENCHMARKS["math500"].columns("id") == ("id", "unique_id")
        gpqa = BENCHMARKS["gpqa-diamond"]
        assert [gpqa.columns(f)[0] for f in ("question", "correct", "incorrect_1", "incorrect_3", "id")] == [
            "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 3", "Record ID"]
        assert BENCHMARKS["mbpp"].columns("question") == ("prompt", "text")
        assert BENCHMARKS["mbpp"].columns("tests") == ("test_list",)
        assert gpqa.gated and not BENCHMARKS["gsm8k"].gated

    def test_fetch_command(self):
        assert fetch_command("gsm8k") == (
            "python -c \"import datasets; datasets.load_dataset('openai/gsm8k', 'main', split='test')\"")
        assert fetch_command("gpqa-diamond").startswith("hf auth login && ")

    def test_every_name_through_get_task(self, hub_rows):
        for name in BENCHMARKS:
            task = get_task(name)
            problems = task.problems(None, seed=0)
            assert task.name == name and len(problems) == len(ROWS[name])
            assert task.source["dataset"] == BENCHMARKS[name].dataset and task.source["revision"] == REVISION
        assert {download for _, download in hub_rows} == {False}
        get_task("gsm8k", download=True)
        assert hub_rows[-1] == ("gsm8k", True)


class TestOfflineCache:
    """Loading reads the local cache with the Hub switched off; what is missing says how to fetch it."""

    def test_gsm8k_from_the_cache(self, cached):
        task = cached("gsm8k")
        assert task.source == {"benchmark": "gsm8k", "dataset": "openai/gsm8k", "config": "main", "split": "test",
                               "revision": REVISION, "rows": 2}
        p = task.problems(None, seed=0)[0]
        assert (p.id, p.gold, p.meta["style"]) == ("0", "7", "gsm8k")
        assert "\\boxed{}" in task.message(p, chat=True)
        assert task.grade(p, "so \\boxed{7}").correct and task.grade(p, "the answer is 7.").correct
        assert not task.grade(p, "\\boxed{8}").correct

    @pytest.mark.parametrize(("name", "pid", "gold", "right", "wrong"), [
        ("math500", "test/algebra/1.json", "\\frac{14}{3}", "\\boxed{\\dfrac{14}{3}}", "\\boxed{4.6}"),
        ("aime24", "60", "204", "\\boxed{204}", "\\boxed{240}"),
        ("aime25", "0", "70", "\\boxed{070}", "the answer is 70"),  # boxed-style gold: a bare number is no answer
        ("amc23", "0", "27", "\\boxed{27}", "\\boxed{27.5}"),
    ])
    def test_boxed_benchmarks(self, cached, name, pid, gold, right, wrong):
        task = cached(name)
        p = task.problems(None, seed=0)[0]
        assert (task.name, p.id, p.gold) == (name, pid, gold)
        assert task.grade(p, right).correct and not task.grade(p, wrong).correct

    def test_not_cached_names_the_fetch_command(self, tmp_path):
        import datasets.config

        before = datasets.config.HF_HUB_OFFLINE
        with pytest.raises(TaskDataError) as info:
            load_benchmark("gsm8k", cache_dir=tmp_path)
        message = str(info.value)
        assert "'openai/gsm8k', config 'main', split 'test' is not in the local datasets cache" in message
        assert fetch_command("gsm8k") in message and "--download" in message
        assert isinstance(info.value.__cause__, ConnectionError)  # what datasets raises offline
        assert datasets.config.HF_HUB_OFFLINE == before  # the offline switch is put back

    def test_other_config_cached(self, tmp_path):
        fabricate(tmp_path, BENCHMARKS["gsm8k"], ROWS["gsm8k"], config="socratic")
        with pytest.raises(TaskDataError, match=r"(?s)not in the local datasets cache.*Couldn't find cache"):
            load_benchmark("gsm8k", cache_dir=tmp_path)

    def test_gated_dataset_says_to_log_in(self, tmp_path, monkeypatch):
        with pytest.raises(TaskDataError, match=r"(?s)Idavidrein/gpqa.*hf auth login.*accept its terms"):
            load_benchmark("gpqa-diamond", cache_dir=tmp_path)

        def refuse(*args, **kwargs):
            raise DatasetNotFoundError("Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub. You must be "
                                       "authenticated to access it.")

        monkeypatch.setattr(datasets, "load_dataset", refuse)
        with pytest.raises(TaskDataError, match=r"(?s)the Hub refused.*hf auth login.*huggingface.co/datasets/Idavid"):
            load_benchmark("gpqa-diamond", download=True)

    def test_only_download_goes_online(self, monkeypatch):
        import datasets.config

        seen = []

        def fake(path, name=None, split=None, cache_dir=None):
            seen.append(datasets.config.HF_HUB_OFFLINE)
            return datasets.Dataset.from_list(ROWS["gsm8k"])

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets, "load_dataset", fake)
        assert load_benchmark("gsm8k").source["revision"] is None  # an in-memory dataset has no cached snapshot
        load_benchmark("gsm8k", download=True)
        assert seen == [True, False]

    def test_missing_column(self, hub_rows, monkeypatch):
        monkeypatch.setitem(ROWS, "math500", [{"question_text": "?", "answer": "1"}])
        with pytest.raises(TaskDataError, match=r"no column for 'question' \(expected one of problem, question; "
                                                r"it has answer, question_text\)"):
            get_task("math500")

    def test_local_copy(self, tmp_path, hub_rows):
        path = tmp_path / "aime.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS["aime24"]))
        task = get_task("aime24", data=path)
        assert task.source["file"] == str(path) and task.problems(None, 0)[0].gold == "204"
        assert hub_rows == []  # the Hub loader never ran


class TestGPQA:
    """Options shuffled per question from a recorded seed; graded by the letter."""

    def test_shuffle_is_deterministic_and_recorded(self, cached):
        task = cached("gpqa-diamond")
        assert isinstance(task, GPQATask) and task.source["shuffle_seed"] == 0
        every = {p.id: p for p in task.problems(None, seed=0)}
        again = {p.id: p for p in cached("gpqa-diamond").problems(3, seed=5)}  # another load, another draw
        for pid, p in again.items():  # a question shows the same order whichever problems a run draws
            assert (p.meta["options"], p.gold) == (every[pid].meta["options"], every[pid].gold)
        for p in every.values():
            i = int(p.id.removeprefix("rec"))
            assert p.meta["options"][ord(p.gold) - ord("A")] == f"right {i}"
            assert sorted(p.meta["options"]) == sorted([f"right {i}", f"wrong {i}a", f"wrong {i}b", f"wrong {i}c"])
            assert p.meta["shuffle_seed"] == 0
        assert len({p.gold for p in every.values()}) > 1  # the correct answer is not always in one place
        reseeded = {p.id: p.meta["order"] for p in dataclasses.replace(task, shuffle_seed=1).problems(None, 0)}
        assert reseeded != {pid: p.meta["order"] for pid, p in every.items()}

    def test_message_and_grading(self, cached):
        task = cached("gpqa-diamond")
        p = task.problems(None, seed=0)[0]
        message = task.message(p, chat=True)
        assert "'Answer: $LETTER'" in message and "Question 0?" in message
        for letter, option in zip("ABCD", p.meta["options"], strict=True):
            assert f"\n{letter}) {option}" in message
        wrong = next(letter for letter in "ABCD" if letter != p.gold)
        assert task.grade(p, f"Reasoning...\nAnswer: {p.gold}").correct
        assert task.grade(p, f"The answer is \\boxed{{{p.gold}}}").correct
        assert task.grade(p, f"Answer: {wrong}\nOn reflection, Answer: {p.gold}").correct  # the last one counts
        assert task.grade(p, f"Answer: {wrong}").extracted == wrong and not task.grade(p, f"Answer: {wrong}").correct
        assert task.grade(p, "I cannot tell.").extracted is None


class TestMBPP:
    """The dataset's asserts, run in the sandbox (opting out of isolation only where the machine has none)."""

    @pytest.fixture
    def task(self, cached):
        return dataclasses.replace(cached("mbpp"), allow_unsandboxed=not ISOLATED)

    def test_message_shows_the_first_test(self, task):
        p = task.problems(None, seed=0)[0]
        message = task.message(p, chat=True)
        assert p.question in message and p.meta["tests"][0] in message and p.meta["tests"][1] not in message
        assert "```python```" in message

    def test_reference_passes_and_wrong_code_fails(self, task):
        for p in task.problems(None, seed=0):
            assert task.grade(p, f"Here:\n```python\n{p.gold}\n```").correct, p.id
        sphere = next(p for p in task.problems(None, 0) if p.id == "82")
        # test_imports supply `math` to the asserts even when the answer does not import it.
        assert task.grade(sphere, "def volume_sphere(r):\n    return 4 / 3 * 3.141592653589793 * r ** 3").correct
        graded = task.grade(sphere, "```python\ndef volume_sphere(r):\n    return r\n```")
        assert (graded.extracted, graded.correct) == ("failed", False)

    def test_without_isolation_grading_refuses_unless_allowed(self, task, monkeypatch):
        monkeypatch.setattr(sandbox, "isolation_unavailable_reason", lambda: "the kernel refused user namespaces")
        monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
        p = task.problems(1, seed=0)[0]
        strict = dataclasses.replace(task, allow_unsandboxed=False)
        with pytest.raises(SandboxUnavailableError, match="allow_unsandboxed=True"):
            strict.check_ready()
        with pytest.raises(SandboxUnavailableError):
            strict.grade(p, p.gold)
        assert isinstance(task, MBPPTask) and dataclasses.replace(task, allow_unsandboxed=True).grade(p, p.gold).correct
