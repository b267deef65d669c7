"""Tasks behind one protocol (problems, prompt, grade): the organism, math files, HumanEval and the benchmarks
by name (GSM8K, MATH-500, AIME 24/25, AMC23, GPQA-Diamond, MBPP; see ``workbench.tasks.benchmarks``).

Example:
    >>> get_task("organism").name
    'organism'
    >>> "gpqa-diamond" in TASKS
    True
"""

from __future__ import annotations

from pathlib import Path

from workbench.tasks.base import Grade, Task, TaskProblem
from workbench.tasks.benchmarks import BENCHMARKS, load_benchmark
from workbench.tasks.math import MathTask, TaskDataError

TASKS = ("organism", "organism-sub", "math", "humaneval", *BENCHMARKS)


def get_task(name: str, data: str | Path | None = None, model_dir: str | Path | None = None,
             download: bool = False) -> Task:
    """The task called ``name``; ``math`` needs ``data`` (a .jsonl, .parquet or save_to_disk folder).

    ``model_dir`` lets the organism task label traces by the recipe that model was trained on. A benchmark
    (``BENCHMARKS``) reads its Hub dataset from the local ``datasets`` cache, downloading it only with
    ``download``; its ``data``, when given, is a local copy of the split read instead. Every file or Hub task
    records where its problems came from in ``task.source``.
    """
    if name in ("organism", "organism-sub"):
        from workbench.organism.train import recipe_of
        from workbench.tasks.organism import OrganismTask

        recipe = recipe_of(Path(model_dir)) if model_dir is not None else None
        return OrganismTask(name=name, recipe=recipe, op="-" if name == "organism-sub" else "+")
    if name == "math":
        if data is None:
            raise TaskDataError("the math task needs --data FILE (.jsonl, .parquet or a save_to_disk folder)")
        return MathTask.from_file(data)
    if name == "humaneval":
        from workbench.tasks.humaneval import HumanEvalTask

        return HumanEvalTask.load()
    if name in BENCHMARKS:
        return load_benchmark(name, download=download, data=data)
    raise TaskDataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")


__all__ = ["BENCHMARKS", "TASKS", "Grade", "MathTask", "Task", "TaskDataError", "TaskProblem", "get_task"]
