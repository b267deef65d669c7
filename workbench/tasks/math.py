"""Math word problems from local files: GSM8K (``####`` answers) and MATH-500/AIME/AMC (``\\boxed{}``).

Files are JSONL, Parquet, or a ``datasets.save_to_disk`` folder (read with pyarrow, no download).
The question is the first of ``problem``/``question``/``prompt``; the gold answer is ``answer`` (the
text after ``####`` when present, as in GSM8K) or else the last ``\\boxed{}`` of ``solution``.
Predictions are read from the answer (the text after the thinking span, which the run's prompt
format finds): the last non-empty ``\\boxed{}``. Without one, the
last number is the answer when the gold is GSM8K-style, or when the text has only empty boxes (a
model that copies the instruction's ``\\boxed{}`` and writes the answer beside it); a boxed-style
task whose answer has no box at all gets no answer, as the instruction asked for one.
Grading is Math-Verify as ``verify(gold, pred)``: the call is asymmetric and gold goes first. It is
safe from any thread: Math-Verify's timeouts (signal.alarm) apply in the main thread only.

Example:
    >>> task = MathTask.from_records([{"question": "1+1?", "answer": "so #### 2"}], source="inline")
    >>> task.grade(task.problems(None, 0)[0], "so \\\\boxed{2}").correct
    True
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.tasks.base import Grade, TaskDefaults, TaskProblem

QUESTION_FIELDS = ("problem", "question", "prompt")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class TaskDataError(ValueError):
    """A task file that cannot be used; the message names the file, line and field."""


def _braced(text: str, i: int) -> str | None:
    """The balanced ``{...}`` content starting at ``text[i]`` (after spaces), or None."""
    while i < len(text) and text[i].isspace():
        i += 1
    if not text.startswith("{", i):
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _boxes(text: str) -> Iterator[str]:
    """The stripped contents of the closed ``\\boxed{...}`` in ``text``, last first (empty ones included)."""
    end = len(text)
    while (start := text.rfind("\\boxed", 0, end)) >= 0:
        end = start
        content = _braced(text, start + len("\\boxed"))
        if content is not None:
            yield content.strip()


def last_boxed(text: str) -> str | None:
    r"""The content of the last non-empty ``\boxed{...}`` (braces balanced), or None.

    An empty box is no answer: models often copy the instruction's ``\boxed{}``.

    >>> last_boxed("\\boxed{\\frac{1}{2}}, put it in \\boxed{ }")
    '\\frac{1}{2}'
    >>> last_boxed("put it in \\boxed{}") is None
    True
    """
    return next((b for b in _boxes(text) if b), None)


def _last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    # Math-Verify's default timeouts use signal.alarm, which Python allows only in the main thread: elsewhere
    # (Streamlit, Ray actors, thread pools) parse/verify would raise. There we switch them off, as Math-Verify
    # advises; the input is one short extracted answer, so the remaining risk is a pathological expression.
    main = threading.current_thread() is threading.main_thread()
    seconds = 5 if main else None
    return bool(verify(parse(f"${gold}$", parsing_timeout=seconds), parse(f"${pred}$", parsing_timeout=seconds),
                       timeout_seconds=seconds))


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
    # An id of 0 is an id (AIME copies number from 0), not a missing one.
    pid = str(next((rec[k] for k in ("unique_id", "id", "task_id") if rec.get(k) not in (None, "")), index))
    return TaskProblem(pid, question, answer.strip(), {"style": style})


@dataclass(frozen=True)
class MathTask(TaskDefaults):
    """Math problems graded by Math-Verify; ``source`` says where they came from (a run records it)."""

    name: str
    items: tuple[TaskProblem, ...]
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_file(cls, path: str | Path) -> MathTask:
        path = Path(path)
        if not path.exists():
            raise TaskDataError(f"task data {path} does not exist")
        return cls.from_records(_records(path), source=str(path))

    @classmethod
    def from_records(cls, records: Iterable, source: str, name: str = "math",
                     origin: Mapping[str, Any] | None = None) -> MathTask:
        """``source`` names the records in error messages; ``origin`` is recorded as the task's ``source``
        (default: ``{"data": source}``)."""
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
        return cls(name, tuple(items), dict(origin) if origin is not None else {"data": source})

    def problems(self, n: int | None, seed: int) -> list[TaskProblem]:
        items = list(self.items)
        if n is not None and n < len(items):
            items = random.Random(seed).sample(items, n)
        return items

    def message(self, problem: TaskProblem, chat: bool) -> str:
        return f"{problem.question}\n{INSTRUCTION}"

    def grade(self, problem: TaskProblem, answer: str) -> Grade:
        tail = answer
        boxes = list(_boxes(tail))
        pred = next((b for b in boxes if b), None)
        if pred is None and (boxes or problem.meta.get("style") == "gsm8k"):  # only empty boxes, or GSM8K gold
            pred = _last_number(tail)
        if pred is None:
            return Grade(None, False)
        return Grade(pred, _verify(problem.gold, pred))
