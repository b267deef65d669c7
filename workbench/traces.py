"""Generating graded traces into a resumable run directory (``workbench traces``): the pipeline's first stage.

Everything is checked before anything is written: the settings, the task data, the model (loaded),
the prompt format and every prompt. Only then is the run directory created, or resumed when its
identity (config, weights as loaded, data, prompt format, interventions) matches.

Example:
    >>> import tempfile
    >>> cfg = TraceRunConfig(problems=2, samples=1)
    >>> run_traces(tempfile.mkdtemp() + "/run", config=cfg, progress=False).traces
    2
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.engine import Controller, Engine, EngineConfig, Finished, NeuronEdit, Request, SamplingConfig
from workbench.model import load_model, resolve, revision_of
from workbench.prompting import PromptFormat
from workbench.report import Report
from workbench.store import (
    ShardWriter,
    TraceStore,
    check_target,
    model_hash,
    package_versions,
    path_hash,
    trace_id,
)
from workbench.tasks import Task, TaskDataError, TaskProblem, get_task

if TYPE_CHECKING:
    from workbench.workers import TraceWorkers


@dataclass(frozen=True, kw_only=True)
class TraceRunConfig:
    """One trace run. Everything here is part of the run's identity; resuming needs the same values.

    Attributes:
        model: ``"organism"`` or a local HF folder.
        task: ``organism``, ``math`` or ``humaneval``; ``data`` is the file for ``math``.
        problems: how many problems (None: all the task has).
        samples: samples per problem.
        temperature, top_p, max_new_tokens: decoding.
        batch_size: rows decoded together.
        seed: picks problems and seeds every (problem, sample) sampler.
        flush_every: finished traces per shard written to disk.
        prompt: how questions become prompts, when sequences stop, where thinking is.
        allow_unsandboxed: let HumanEval run generated code without network isolation (see the sandbox).
        disjoint_from: ``(problems, seed)`` of another run of the same task (a study's evaluation run) whose
            problems this run never draws: its own are a ``seed``-ed draw from the rest (``run_problems``).
    """

    model: str = "organism"
    task: str = "organism"
    data: str | None = None
    problems: int | None = 100
    samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 160
    batch_size: int = 64
    seed: int = 0
    flush_every: int = 64
    prompt: PromptFormat = field(default_factory=PromptFormat)
    allow_unsandboxed: bool = False
    disjoint_from: tuple[int | None, int] | None = None

    def __post_init__(self) -> None:
        for name in ("samples", "batch_size", "flush_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.problems is not None and self.problems < 1:
            raise ValueError(f"problems must be >= 1 (or None for all), got {self.problems}")
        self.sampling()  # validates temperature, top_p and max_new_tokens

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              seed=self.seed)


def run_problems(task: Task, cfg: TraceRunConfig) -> list[TaskProblem]:
    """The problems of run ``cfg``: ``task.problems(cfg.problems, cfg.seed)``, or with ``cfg.disjoint_from`` a
    seeded draw from the problems the other run does not use (a clear error when too few are left).

    >>> from workbench.tasks import MathTask
    >>> task = MathTask.from_records([{"question": f"{i}?", "answer": f"#### {i}"} for i in range(6)], "inline")
    >>> evaluation = {p.id for p in run_problems(task, TraceRunConfig(task="math", problems=4, seed=1))}
    >>> analysis = run_problems(task, TraceRunConfig(task="math", problems=2, seed=9, disjoint_from=(4, 1)))
    >>> len(analysis), evaluation & {p.id for p in analysis}
    (2, set())
    """
    if cfg.disjoint_from is None:
        return task.problems(cfg.problems, cfg.seed)
    n_other, other_seed = cfg.disjoint_from
    taken = {p.id for p in task.problems(n_other, other_seed)}
    rest = [p for p in task.problems(None, cfg.seed) if p.id not in taken]
    n = len(rest) if cfg.problems is None else cfg.problems
    if n > len(rest) or n == 0:
        raise TaskDataError(f"task {task.name!r} has {len(rest) + len(taken)} problems; the evaluation takes "
                            f"{len(taken)}, which leaves {len(rest)} for the {n or 'any'} analysis problems asked for: "
                            "ask for fewer problems in [analysis] or [[tasks]], or set allow_overlap = true")
    return random.Random(cfg.seed).sample(sorted(rest, key=lambda p: p.id), n)


def run_config(run: str | Path) -> TraceRunConfig:
    """The ``TraceRunConfig`` a trace run was generated with (its manifest's ``identity.config``)."""
    from workbench.store.paths import RunPaths
    from workbench.store.rundir import read_manifest

    config = dict(read_manifest(Path(run)).get("identity", {}).get("config", {}))
    if not config:
        raise ValueError(f"{RunPaths(run).manifest} records no run config; it was not written by run_traces")
    prompt = {k: tuple(v) if isinstance(v, list) else v for k, v in (config.pop("prompt", None) or {}).items()}
    if config.get("disjoint_from") is not None:  # JSON gave a list
        config["disjoint_from"] = tuple(config["disjoint_from"])
    return TraceRunConfig(**config, prompt=PromptFormat(**prompt))


def config_task(cfg: TraceRunConfig) -> Task:
    """The task a run config names, resolved as the run resolved it (data file, the model's recipe)."""
    return get_task(cfg.task, cfg.data, model_dir=resolve(cfg.model))


def run_task(run: str | Path) -> Task:
    """The task of a trace run, from its manifest: what the methods ask for steps, labels and features.

    >>> import tempfile
    >>> run = tempfile.mkdtemp() + "/run"
    >>> _ = run_traces(run, config=TraceRunConfig(problems=1), progress=False)
    >>> run_task(run).text.step_ends
    (';', ',')
    """
    return config_task(run_config(run))


def build_record(
    tokenizer, fmt: PromptFormat, task: Task, problem: TaskProblem, sample: int, prompt: str, done: Finished,
) -> dict[str, Any]:
    """One row of ``traces.parquet``: spans from the prompt format, grade and labels from the task."""
    spans = fmt.spans(tokenizer, done.tokens, done.prompt_len)
    answer = "" if spans.answer_start is None else tokenizer.decode(done.tokens[spans.answer_start:],
                                                                     skip_special_tokens=True)
    grade = task.grade(problem, answer)
    labels = task.labels(problem, tokenizer.convert_ids_to_tokens(done.tokens))
    return {
        "trace_id": trace_id(problem.id, sample), "problem_id": problem.id, "sample_index": sample,
        "prompt": prompt, "token_ids": done.tokens, "prompt_len": done.prompt_len,
        "text": tokenizer.decode(done.generated, skip_special_tokens=True),
        "think_start": spans.think_start, "think_end": spans.think_end, "answer_start": spans.answer_start,
        "answer_reached": labels.get("answer_reached") if labels else None,
        "extracted": grade.extracted, "gold": problem.gold, "correct": grade.correct,
        "thinking_tokens": spans.thinking_tokens(len(done.tokens)), "finish_reason": done.finish_reason,
        "events": json.dumps([{"step": e.step, "kind": e.kind, "payload": e.payload} for e in done.events]),
        "labels": json.dumps(labels) if labels is not None else None,
    }


def intervention_specs(edits: Sequence[NeuronEdit], controllers: Sequence[Controller]) -> dict[str, Any]:
    """The edits and controllers of a run as plain data, part of its identity."""
    return {"edits": [asdict(e) for e in edits], "controllers": [c.spec() for c in controllers]}


@dataclass(frozen=True, kw_only=True)
class TracePlan:
    """What a trace run generates, resolved against a loaded model: problems, prompts and identity.

    Built the same way by ``run_traces`` and by every worker of ``workbench.workers``, so that a
    run's identity, its trace ids and their prompts do not depend on who computes them.

    Attributes:
        cfg, model, edits, controllers: as given to ``build``.
        task, problems: the task (sandbox flag applied) and its problems, in order.
        fmt: the resolved prompt format.
        prompts, ids: each problem's prompt text and token ids, by problem id.
        identity, provenance: what the run's manifest records (identity is compared on resume).

    Example:
        >>> from workbench.model import load_model
        >>> plan = TracePlan.build(TraceRunConfig(problems=2, samples=2), load_model("organism"))
        >>> len(plan.keys()), plan.keys()[1][1]
        (4, 1)
    """

    cfg: TraceRunConfig
    model: TransformerBridge
    edits: tuple[NeuronEdit, ...]
    controllers: tuple[Controller, ...]
    task: Task
    problems: tuple[TaskProblem, ...]
    fmt: PromptFormat
    prompts: dict[str, str]
    ids: dict[str, list[int]]
    identity: dict[str, Any]
    provenance: dict[str, Any]

    @classmethod
    def build(
        cls, cfg: TraceRunConfig, model: TransformerBridge | None = None, edits: Sequence[NeuronEdit] = (),
        controllers: Sequence[Controller] = (),
    ) -> TracePlan:
        """Checks the task data (and its sandbox, where it has one); loads the model when not given."""
        path = resolve(cfg.model)
        task = get_task(cfg.task, cfg.data, model_dir=path)
        if cfg.allow_unsandboxed and hasattr(task, "allow_unsandboxed"):
            task = dataclasses.replace(task, allow_unsandboxed=True)
        if hasattr(task, "check_ready"):  # e.g. a sandbox that must isolate generated code
            task.check_ready()
        problems = tuple(run_problems(task, cfg))
        model = model if model is not None else load_model(path)
        fmt, prompts, ids = _prompts(cfg, task, problems, model)
        identity = {
            "config": asdict(cfg),
            "model_sha256": model_hash(model),
            "model_revision": revision_of(path),  # the hub snapshot a hub id resolved to (None for a folder)
            "data_revision": (getattr(task, "source", None) or {}).get("revision"),  # a named benchmark's snapshot
            "data_sha256": path_hash(cfg.data),
            "prompt_format": fmt.record(),
            "interventions": intervention_specs(edits, controllers),
        }
        provenance = {
            "model": {"spec": cfg.model, "path": str(path)},
            "task": {"name": task.name, "data": cfg.data, "problems": len(problems),
                     "source": dict(getattr(task, "source", None) or {})},
            "seeds": {"problems": cfg.seed, "sampler": "sha256(seed:problem_id/sample_index)"},
            "versions": package_versions(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return cls(cfg=cfg, model=model, edits=tuple(edits), controllers=tuple(controllers), task=task,
                   problems=problems, fmt=fmt, prompts=prompts, ids=ids, identity=identity, provenance=provenance)

    def keys(self) -> list[tuple[str, int]]:
        """Every (problem id, sample index) of the run, in generation order."""
        return [(p.id, s) for p in self.problems for s in range(self.cfg.samples)]

    def generate(
        self, keys: Sequence[tuple[str, int]], writer: TraceStore | ShardWriter, progress: bool = True,
    ) -> dict[str, int]:
        """Generates and grades ``keys``, appending every ``cfg.flush_every`` finished traces to ``writer``.

        Returns ``{"traces", "correct", "tokens"}`` for this call. Finished traces not yet written are
        written on the way out, on Ctrl-C too; a ``kill -9`` loses only that unflushed tail.
        """
        by_id = {p.id: p for p in self.problems}
        unknown = [k for k in keys if k[0] not in by_id]
        if unknown:
            raise ValueError(f"problems {unknown[:3]} are not among this run's {len(by_id)} problems")
        requests = [Request(trace_id(pid, s), self.ids[pid]) for pid, s in keys]
        sample_of = {trace_id(pid, s): (by_id[pid], s) for pid, s in keys}
        engine = Engine(self.model, EngineConfig(sampling=self.cfg.sampling(), batch_size=self.cfg.batch_size,
                                                 stop_token_ids=self.fmt.stop_ids), self.edits, self.controllers)
        tok = self.model.tokenizer
        pending: list[dict[str, Any]] = []
        n_correct = n_done = 0
        t0 = time.time()
        bar = tqdm(total=len(requests), desc="traces", disable=not progress, unit="trace")
        try:
            for finished in engine.run(requests):
                p, s = sample_of[finished.key]
                record = build_record(tok, self.fmt, self.task, p, s, self.prompts[p.id], finished)
                pending.append(record)
                n_done += 1
                n_correct += record["correct"]
                bar.update(1)
                bar.set_postfix(tok_s=f"{engine.tokens_generated / max(time.time() - t0, 1e-9):.0f}",
                                acc=f"{n_correct / n_done:.3f}", refresh=False)
                if len(pending) >= self.cfg.flush_every:
                    writer.append(pending)
                    pending = []
        finally:
            writer.append(pending)
            bar.close()
        return {"traces": n_done, "correct": n_correct, "tokens": engine.tokens_generated}


def _prompts(
    cfg: TraceRunConfig, task: Task, problems: Sequence[TaskProblem], model: TransformerBridge,
) -> tuple[PromptFormat, dict[str, str], dict[str, list[int]]]:
    """The resolved prompt format, and each problem's prompt text and token ids (by problem id)."""
    tok = model.tokenizer
    fmt = cfg.prompt.resolve(tok, getattr(model.original_model, "generation_config", None))
    prompts = {p.id: fmt.render(tok, task.message(p, chat=fmt.style == "chat")) for p in problems}
    return fmt, prompts, {pid: fmt.tokenize(tok, text) for pid, text in prompts.items()}


def prompt_ids(cfg: TraceRunConfig, model: TransformerBridge) -> dict[str, list[int]]:
    """The prompt token ids ``run_traces(cfg, ..., model=model)`` feeds each trace, keyed by trace id.

    For what must be known before generation starts, e.g. a gate that reads the questions.

    >>> from workbench.model import load_model
    >>> ids = prompt_ids(TraceRunConfig(problems=2, samples=2), load_model("organism"))
    >>> len(ids), len({tuple(v) for v in ids.values()})   # two samples of each of two problems
    (4, 2)
    """
    task = config_task(cfg)
    problems = run_problems(task, cfg)
    _, _, ids = _prompts(cfg, task, problems, model)
    return {trace_id(p.id, s): ids[p.id] for p in problems for s in range(cfg.samples)}


@dataclass(frozen=True)
class RunSummary(Report):
    """What a trace run holds after a ``run_traces`` call, and what this call did (``..._this_call``)."""

    run: str
    traces: int
    resumed_from: int
    shards_set_aside: list[str]
    accuracy: float
    mean_thinking_tokens: float
    finish_reasons: dict[str, int]
    generated_tokens_this_call: int
    tokens_per_second_this_call: float
    seconds_this_call: float
    workers: int | None = field(default=None, metadata={"optional": True})  # with Ray: how many, which were lost
    workers_lost: list[int] | None = field(default=None, metadata={"optional": True})


def run_traces(
    run: str | Path, *, config: TraceRunConfig | None = None, model: TransformerBridge | None = None,
    edits: Sequence[NeuronEdit] = (), controllers: Sequence[Controller] = (), workers: TraceWorkers | None = None,
    progress: bool = True,
) -> RunSummary:
    """Generates and grades every (problem, sample) not yet in ``run``; returns a summary.

    ``config`` None resumes the run with the config its manifest records. ``model`` may be passed in
    (already loaded, e.g. from a notebook); it is identified by a hash of its weights either way. A Ctrl-C
    keeps every finished trace: the same call resumes. With ``workers`` (``workbench.workers.TraceWorkers``)
    the problems are shared among Ray actors that write into the same run; the traces and the run's identity
    are those of a single process.
    """
    check_target(run)
    cfg = config if config is not None else run_config(run)
    if workers is not None:
        return workers.run(cfg, run, progress=progress, model=model, edits=edits, controllers=controllers)
    plan = TracePlan.build(cfg, model, edits, controllers)
    with TraceStore.open(run, plan.identity, plan.provenance) as store:
        done_keys = store.done_keys()
        t0 = time.time()
        counts = plan.generate([k for k in plan.keys() if k not in done_keys], store, progress)
        store.finalize()
        return summarize(store, skipped=len(done_keys), seconds=time.time() - t0, tokens=counts["tokens"])


def summarize(store: TraceStore, skipped: int = 0, seconds: float = 0.0, tokens: int = 0) -> RunSummary:
    table = store.read()
    rows = table.select(["correct", "thinking_tokens", "finish_reason"]).to_pylist()
    n = len(rows)
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
    return RunSummary(
        run=str(store.root),
        traces=n,
        resumed_from=skipped,
        shards_set_aside=[str(p) for p in store.set_aside],
        accuracy=sum(r["correct"] for r in rows) / n if n else float("nan"),
        mean_thinking_tokens=sum(r["thinking_tokens"] for r in rows) / n if n else float("nan"),
        finish_reasons=reasons,
        generated_tokens_this_call=tokens,
        tokens_per_second_this_call=tokens / seconds if seconds else float("nan"),
        seconds_this_call=round(seconds, 2),
    )
