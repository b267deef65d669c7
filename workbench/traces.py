"""Generating graded traces into a resumable run directory (``workbench traces``).

Example:
    >>> import tempfile
    >>> cfg = TraceRunConfig(problems=2, samples=1)
    >>> run_traces(cfg, tempfile.mkdtemp() + "/run", progress=False)["traces"]
    2
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.engine import Engine, EngineConfig, Finished, Request, SamplingConfig
from workbench.model import load_model, resolve
from workbench.store import TraceStore, file_hash, package_versions, weight_hash
from workbench.tasks import Task, TaskProblem, get_task
from workbench.tasks.base import THINK_CLOSE, THINK_OPEN


@dataclass(frozen=True, kw_only=True)
class TraceRunConfig:
    """One trace run. Everything here goes into the manifest; resuming needs the same values.

    Attributes:
        model: ``"organism"`` or a local HF folder.
        task: ``organism``, ``math`` or ``humaneval``; ``data`` is the file for ``math``.
        problems: how many problems (None: all the task has).
        samples: samples per problem.
        temperature, top_p, max_new_tokens: decoding.
        batch_size: rows decoded together.
        seed: picks problems and seeds every (problem, sample) sampler.
        flush_every: finished traces per shard written to disk.
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

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              seed=self.seed)


def find_marker(token_strs: Sequence[str], marker: str, start: int = 0) -> int | None:
    """Position of the first token spelling ``marker`` (ignoring a leading space mark) from ``start``."""
    for i in range(start, len(token_strs)):
        if token_strs[i].lstrip("▁Ġ ") == marker:
            return i
    return None


def build_record(
    model: TransformerBridge, task: Task, problem: TaskProblem, sample: int, prompt: str, done: Finished,
) -> dict[str, Any]:
    """One row of ``traces.parquet``."""
    tok = model.tokenizer
    strs = tok.convert_ids_to_tokens(done.tokens)
    think_start = find_marker(strs, THINK_OPEN)
    think_end = find_marker(strs, THINK_CLOSE, (think_start or 0) + 1)
    text = tok.decode(done.generated, skip_special_tokens=True)
    grade = task.grade(problem, text)
    labels, answer_reached = None, None
    if task.name == "organism":
        from workbench.organism.labeler import label_tokens
        from workbench.organism.task import Problem

        lab = label_tokens(Problem.from_id(problem.id), strs)
        labels, answer_reached = json.dumps(asdict(lab)), lab.answer_reached
    if think_start is None:
        thinking = 0
    else:
        thinking = (think_end if think_end is not None else len(done.tokens)) - think_start - 1
    return {
        "problem_id": problem.id, "sample_index": sample, "prompt": prompt, "token_ids": done.tokens,
        "prompt_len": done.prompt_len, "text": text, "think_start": think_start, "think_end": think_end,
        "answer_reached": answer_reached, "extracted": grade.extracted, "gold": problem.gold,
        "correct": grade.correct, "thinking_tokens": thinking, "finish_reason": done.finish_reason,
        "events": json.dumps([{"step": e.step, "kind": e.kind, "payload": e.payload} for e in done.events]),
        "labels": labels,
    }


def run_traces(
    cfg: TraceRunConfig, out: str | Path, progress: bool = True, model: TransformerBridge | None = None,
    edits=(), controllers=(),
) -> dict[str, Any]:
    """Generates and grades every (problem, sample) not yet in ``out``; returns a summary."""
    task = get_task(cfg.task, cfg.data)
    problems = task.problems(cfg.problems, cfg.seed)
    path = resolve(cfg.model)
    manifest = {
        "config": asdict(cfg),
        "seeds": {"problems": cfg.seed, "sampler": "sha256(seed:problem_id/sample_index)"},
        "model": {"spec": cfg.model, "path": str(path), "weight_sha256": weight_hash(path)},
        "task": {"name": task.name, "data": cfg.data, "data_sha256": file_hash(cfg.data), "problems": len(problems)},
        "versions": package_versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store = TraceStore.create(out, manifest)
    done_keys = store.done_keys()
    model = model if model is not None else load_model(cfg.model)
    tok = model.tokenizer
    by_key: dict[str, tuple[TaskProblem, int, str]] = {}
    requests = []
    for p in problems:
        prompt = task.prompt(p, tok)
        ids = tok(prompt).input_ids
        for s in range(cfg.samples):
            if (p.id, s) not in done_keys:
                key = f"{p.id}/{s}"
                by_key[key] = (p, s, prompt)
                requests.append(Request(key, ids))
    engine = Engine(model, EngineConfig(sampling=cfg.sampling(), batch_size=cfg.batch_size), edits, controllers)
    pending: list[dict[str, Any]] = []
    n_correct = n_done = 0
    t0 = time.time()
    bar = tqdm(total=len(requests), desc="traces", disable=not progress, unit="trace")
    try:
        for finished in engine.run(requests):
            p, s, prompt = by_key[finished.key]
            record = build_record(model, task, p, s, prompt, finished)
            pending.append(record)
            n_done += 1
            n_correct += record["correct"]
            bar.update(1)
            bar.set_postfix(tok_s=f"{engine.tokens_generated / max(time.time() - t0, 1e-9):.0f}",
                            acc=f"{n_correct / n_done:.3f}", refresh=False)
            if len(pending) >= cfg.flush_every:
                store.append(pending)
                pending = []
    finally:
        store.append(pending)  # on Ctrl-C too; a kill -9 loses only this unflushed tail
        bar.close()
    store.finalize()
    return summarize(store, skipped=len(done_keys), seconds=time.time() - t0, tokens=engine.tokens_generated)


def summarize(store: TraceStore, skipped: int = 0, seconds: float = 0.0, tokens: int = 0) -> dict[str, Any]:
    table = store.read()
    rows = table.select(["correct", "thinking_tokens", "finish_reason"]).to_pylist()
    n = len(rows)
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
    return {
        "run": str(store.root),
        "traces": n,
        "resumed_from": skipped,
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "mean_thinking_tokens": sum(r["thinking_tokens"] for r in rows) / n if n else float("nan"),
        "finish_reasons": reasons,
        "generated_tokens_this_call": tokens,
        "tokens_per_second_this_call": tokens / seconds if seconds else float("nan"),
        "seconds_this_call": round(seconds, 2),
    }

