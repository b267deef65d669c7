"""Math word problems from local files: GSM8K (``####`` answers) and MATH-500/AIME/AMC (``\\boxed{}``).

Files are JSONL, Parquet, or a ``datasets.save_to_disk`` folder (read with pyarrow, no download).
The question is the first of ``problem``/``question``/``prompt``; the gold answer is ``answer`` (the
text after ``####`` when present, as in GSM8K) or else the last ``\\boxed{}`` of ``solution``.
Predictions are read after the thinking span: the last ``\\boxed{}``, or for GSM8K-style gold the
last number when nothing is boxed. Grading is Math-Verify as ``verify(gold, pred)``: the call is
asymmetric and gold goes first.

Example:
    >>> task = MathTask.from_records([{"question": "1+1?", "answer": "so #### 2"}], source="inline")
    >>> task.grade(task.problems(None, 0)[0], "<think>hmm</think> \\\\boxed{2}").correct
    True
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from workbench.tasks.base import Grade, TaskProblem

QUESTION_FIELDS = ("problem", "question", "prompt")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class TaskDataError(ValueError):
    """A task file that cannot be used; the message names the file, line and field."""


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _records(path: Path) -> Iterable[tuple[str, dict]]:
    """(where, record) pairs; ``where`` is ``file:line`` or ``file:row`` for error messages."""
    if path.is_dir():
        import pyarrow as pa

        state = path / "state.json"
        if not state.exists():
            raise TaskDataError(f"{path} is a folder but not a datasets.save_to_disk folder (no state.json)")
        files = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
        row = 0
        for f in files:
            with pa.memory_map(str(f)) as source:
                for rec in pa.ipc.open_stream(source).read_all().to_pylist():
                    yield f"{f}:row {row}", rec
                    row += 1
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row, rec in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}:row {row}", rec
    elif path.suffix in (".jsonl", ".json"):
        with path.open() as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskDataError(f"{path}:{line_no}: not valid JSON ({exc.msg}); one object per line") from exc
                if not isinstance(rec, dict):
                    raise TaskDataError(f"{path}:{line_no}: expected a JSON object, got {type(rec).__name__}")
                yield f"{path}:{line_no}", rec
    else:
        raise TaskDataError(f"{path}: unsupported file type; use .jsonl, .parquet or a save_to_disk folder")


def _problem(where: str, rec: dict, index: int) -> TaskProblem:
    question = next((rec[f] for f in QUESTION_FIELDS if isinstance(rec.get(f), str) and rec[f].strip()), None)
    if question is None:
        raise TaskDataError(f"{where}: no question field; expected one of {', '.join(QUESTION_FIELDS)}")
    answer, style = rec.get("answer"), "boxed"
    if isinstance(answer, (int, float)):
        answer = str(answer)
    if isinstance(answer, str) and "####" in answer:
        answer, style = answer.rsplit("####", 1)[1].strip(), "gsm8k"
    if not isinstance(answer, str) or not answer.strip():
        answer = last_boxed(rec["solution"]) if isinstance(rec.get("solution"), str) else None
    if not answer:
        raise TaskDataError(f"{where}: no gold answer; expected 'answer' or a 'solution' with \\boxed{{}}")
    pid = str(rec.get("unique_id") or rec.get("id") or rec.get("task_id") or index)
    return TaskProblem(pid, question, answer.strip(), {"style": style})


@dataclass(frozen=True)
class MathTask:
    name: str
    items: tuple[TaskProblem, ...]

    @classmethod
    def from_file(cls, path: str | Path) -> MathTask:
        path = Path(path)
        if not path.exists():
            raise TaskDataError(f"task data {path} does not exist")
        return cls.from_records(_records(path), source=str(path))

    @classmethod
    def from_records(cls, records: Iterable, source: str) -> MathTask:
        items, seen = [], set()
        for i, rec in enumerate(records):
            where, rec = rec if isinstance(rec, tuple) else (f"{source}:{i + 1}", rec)
            p = _problem(where, rec, i)
            if p.id in seen:
                raise TaskDataError(f"{where}: duplicate problem id {p.id!r}")
            seen.add(p.id)
            items.append(p)
        if not items:
            raise TaskDataError(f"{source}: no problems")
        return cls("math", tuple(items))

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        items = list(self.items)
        if n is not None and n < len(items):
            items = random.Random(seed).sample(items, n)
        return items

    def message(self, problem: TaskProblem, chat: bool) -> str:
        return f"{problem.question}\n{INSTRUCTION}"

    def labels(self, problem: TaskProblem, token_strs) -> None:
        return None

    def grade(self, problem: TaskProblem, completion: str) -> Grade:
        from math_verify import parse, verify

        tail = completion
        pred = last_boxed(tail)
        if pred is None and problem.meta.get("style") == "gsm8k":
            numbers = _NUMBER.findall(tail)
            pred = numbers[-1].replace(",", "") if numbers else None
        if pred is None:
            return Grade(None, False)
        gold_parsed, pred_parsed = parse(f"${problem.gold}$"), parse(f"${pred}$")
        return Grade(pred, bool(verify(gold_parsed, pred_parsed)))
