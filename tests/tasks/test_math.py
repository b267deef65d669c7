"""Math tasks: every file format, GSM8K and boxed answers, Math-Verify grading, clear errors."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.tasks import TaskDataError, get_task
from workbench.tasks.math import MathTask, last_boxed

RECORDS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"problem": "Compute $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "unique_id": "m1"},
    {"problem": "AIME: find n.", "answer": "204", "id": "aime-1"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class TestFormats:
    """JSONL, Parquet and a datasets.save_to_disk folder give the same problems."""

    def test_jsonl(self, tmp_path):
        task = get_task("math", write_jsonl(tmp_path / "d.jsonl", RECORDS))
        assert [(p.id, p.gold) for p in task.problems(None, 0)] == [("0", "7"), ("m1", "\\frac{1}{2}"),
                                                                     ("aime-1", "204")]

    def test_parquet(self, tmp_path):
        rows = [{"question": r.get("question") or r["problem"], "answer": r.get("answer") or "\\frac{1}{2}"}
                for r in RECORDS]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
        assert [p.gold for p in get_task("math", tmp_path / "d.parquet").problems(None, 0)] == ["7", "\\frac{1}{2}",
                                                                                                "204"]

    def test_save_to_disk_folder(self, tmp_path):
        import datasets  # a dev dependency: the reader itself needs only pyarrow

        rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
        assert [p.gold for p in get_task("math", tmp_path / "ds").problems(None, 0)] == ["2", "4"]

    def test_sampling_problems_is_reproducible(self, tmp_path):
        task = get_task("math", write_jsonl(tmp_path / "d.jsonl", RECORDS))
        assert [p.id for p in task.problems(2, seed=3)] == [p.id for p in task.problems(2, seed=3)]
        assert len(task.problems(2, seed=3)) == 2


class TestGrading:
    """The answer (the text after the thinking span) is graded with Math-Verify, gold first."""

    @pytest.fixture
    def task(self, tmp_path):
        return get_task("math", write_jsonl(tmp_path / "d.jsonl", RECORDS))

    def test_last_box_wins(self, task):
        frac = task.problems(None, 0)[1]
        assert task.grade(frac, "maybe \\boxed{3}. So \\boxed{0.5}.").correct
        assert not task.grade(frac, "\\boxed{1/2}, no: So \\boxed{3}.").correct

    def test_gsm8k_falls_back_to_the_last_number(self, task):
        gsm = task.problems(None, 0)[0]
        assert task.grade(gsm, "3+4: the answer is 7.").correct
        assert task.grade(gsm, "</think> so 1,007 no wait 7").extracted == "7"
        assert not task.grade(gsm, "</think> no idea").correct

    def test_boxed_tasks_need_a_box(self, task):
        aime = task.problems(None, 0)[2]
        assert not task.grade(aime, "</think> 204").correct
        assert task.grade(aime, "</think> \\boxed{204}").correct

    def test_an_empty_box_is_no_answer(self, task):
        # Models copy the instruction's empty \\boxed{}: the answer is the last non-empty box, else the last number.
        gsm, frac, aime = task.problems(None, 0)
        assert task.grade(gsm, "</think> I put it in \\boxed{}: the answer is 7.").extracted == "7"
        assert task.grade(gsm, "</think> \\boxed{ } 7").correct
        assert task.grade(aime, "</think> Final answer in \\boxed{}.\n\n204").correct
        assert task.grade(frac, "</think> \\boxed{\\frac{1}{2}} (put within \\boxed{})").extracted == "\\frac{1}{2}"
        assert task.grade(aime, "</think> \\boxed{204} \\boxed{} 5").extracted == "204"  # a real box wins
        assert task.grade(aime, "</think> \\boxed{}").extracted is None

    def test_grading_from_another_thread(self, task):
        # Math-Verify's signal-based timeouts only work in the main thread (Streamlit, Ray actors run elsewhere).
        frac = task.problems(None, 0)[1]
        results, errors = [], []

        def grade() -> None:
            try:
                results.append(task.grade(frac, "</think> \\boxed{0.5}").correct)
            except Exception as exc:
                errors.append(exc)

        thread = threading.Thread(target=grade)
        thread.start()
        thread.join(timeout=60)
        assert errors == [] and results == [True]

    def test_last_boxed_balances_braces(self):
        assert last_boxed("x \\boxed{\\frac{a}{b}} y") == "\\frac{a}{b}"
        assert last_boxed("\\boxed{1} and \\boxed{2}") == "2"
        assert last_boxed("none") is None
        assert last_boxed("\\boxed{5} then \\boxed{} and \\boxed {  }") == "5"
        assert last_boxed("\\boxed{\\boxed{3}}") == "3"

    def test_prompt_uses_the_chat_template_when_there_is_one(self, task, tiny_model):
        from workbench.prompting import PromptFormat

        tok = tiny_model.tokenizer
        p = task.problems(None, 0)[0]
        fmt = PromptFormat().resolve(tok)  # the organism tokenizer has no template
        assert fmt.render(tok, task.message(p, chat=fmt.style == "chat")).startswith(p.question)
        tok.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<assistant>"
        try:
            fmt = PromptFormat().resolve(tok)
            assert fmt.render(tok, task.message(p, chat=fmt.style == "chat")).startswith("<user>" + p.question)
        finally:
            tok.chat_template = None


class TestErrors:
    """Bad files name the file, the line and the field."""

    def test_bad_json_line(self, tmp_path):
        path = tmp_path / "d.jsonl"
        path.write_text(json.dumps(RECORDS[0]) + "\n{oops\n")
        with pytest.raises(TaskDataError, match=r"d\.jsonl:2: not valid JSON"):
            MathTask.from_file(path)

    def test_missing_question(self, tmp_path):
        with pytest.raises(TaskDataError, match=r"d\.jsonl:1: no question field"):
            MathTask.from_file(write_jsonl(tmp_path / "d.jsonl", [{"answer": "#### 3"}]))

    def test_missing_answer(self, tmp_path):
        with pytest.raises(TaskDataError, match=r"d\.jsonl:2: no gold answer"):
            MathTask.from_file(write_jsonl(tmp_path / "d.jsonl", [RECORDS[0], {"question": "q", "solution": "none"}]))

    def test_missing_file_and_unknown_format(self, tmp_path):
        with pytest.raises(TaskDataError, match="does not exist"):
            get_task("math", tmp_path / "nope.jsonl")
        (tmp_path / "d.csv").write_text("a,b")
        with pytest.raises(TaskDataError, match="unsupported file type"):
            get_task("math", tmp_path / "d.csv")
        with pytest.raises(TaskDataError, match="needs --data"):
            get_task("math")
        with pytest.raises(TaskDataError, match="unknown task"):
            get_task("chess")
