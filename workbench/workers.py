"""Trace workers on Ray: one actor per GPU (or per CPU process) loads the model once and generates
a share of a trace run into the same run directory.

``workbench traces --workers N`` starts a local Ray cluster of N workers; ``--ray-address`` joins a
running one. Every worker builds the run's ``TracePlan`` from the same config; the driver (the
process calling ``run_traces``) checks that they agree (same weights as loaded, prompts and
identity), opens the run directory and holds its lock on behalf of all of them, and hands out
chunks of whole problems to whichever worker is free. Each worker writes its own shards,
``part-w<rank>.<id>-<n>.parquet``, into the run. A worker that dies loses only the traces it had
not flushed: the rest of its chunk goes back in the queue, and a rerun, with or without Ray,
finishes whatever is missing. Every (problem, sample) draws from its own seeded stream and the
engine's rows do not mix, so the traces equal a single process's.

Ray is imported here alone, and only when workers start; a single process never needs it.

Example:
    >>> chunks([("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0)], rows=3)
    [[('a', 0), ('a', 1), ('b', 0), ('b', 1)], [('c', 0)]]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from workbench.engine import Controller, NeuronEdit
from workbench.model import load_model, resolve, set_threads
from workbench.store import RunDirError, ShardWriter, TraceStore, check_target, model_hash
from workbench.store.rundir import identity_diff
from workbench.traces import RunSummary, TracePlan, TraceRunConfig, summarize

log = logging.getLogger(__name__)

INSTALL = "pip install ray  (or: pip install 'reasoning-neuron-workbench[ray]')"
CHUNKS_PER_WORKER = 4  # enough chunks to balance uneven workers, few enough that batches stay full
MAX_CHUNK_BATCHES = 16  # a chunk ends in a draining batch; cap its size so progress still moves


def import_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"more than one worker needs Ray, which is not installed: {INSTALL}") from exc
    return ray


def chunks(keys: Sequence[tuple[str, int]], rows: int) -> list[list[tuple[str, int]]]:
    """``keys`` in order, cut into chunks of whole problems holding at least ``rows`` keys (the last fewer)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    out: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    for key in keys:
        if len(current) >= rows and key[0] != current[-1][0]:
            out.append(current)
            current = []
        current.append(key)
    return [*out, current] if current else out


class TraceWorker:
    """One Ray actor: a model loaded once, the plan of the run in progress, shards under its own name.

    Subclass it to change how a worker writes (``writer``), e.g. to inject a fault in a test.
    """

    def __init__(self, rank: int, threads: int = 1) -> None:
        set_threads(threads)
        self.rank = rank
        self._spec: str | None = None
        self._model = None
        self._plan: TracePlan | None = None
        self._writer: ShardWriter | None = None

    def _load(self, spec: str):
        """The model for ``spec``, loaded once (onto this actor's GPU when Ray gave it one)."""
        if spec != self._spec:
            import ray

            self._model, self._plan = None, None  # free the old model first
            self._model = load_model(resolve(spec), device="cuda" if ray.get_gpu_ids() else "cpu")
            self._spec = spec
        return self._model

    def prepare(
        self, cfg: TraceRunConfig, edits: Sequence[NeuronEdit], controllers: Sequence[Controller],
        build: Callable[[Any], tuple[Sequence[NeuronEdit], Sequence[Controller]]] | None = None,
    ) -> dict:
        """Builds the run's plan; returns its identity, provenance and keys for the driver to compare.

        ``build(model)``, when given, makes the edits and controllers here, from this worker's model.
        """
        model = self._load(cfg.model)
        if build is not None:
            edits, controllers = build(model)
        self._plan = TracePlan.build(cfg, model, edits, controllers)
        self._writer = None
        return {"identity": self._plan.identity, "provenance": self._plan.provenance, "keys": self._plan.keys(),
                "host": platform.node()}

    def writer(self, run_dir: str) -> ShardWriter:
        """The shard writer of this worker for ``run_dir``: ``part-w<rank>.<random id>-<n>.parquet``."""
        return ShardWriter(run_dir, f"w{self.rank}")

    def generate(self, run_dir: str, keys: Sequence[tuple[str, int]]) -> dict[str, int]:
        """Generates ``keys`` of the prepared run into ``run_dir``; returns ``{"traces", "correct", "tokens"}``."""
        if self._plan is None:
            raise RuntimeError("call prepare() before generate()")
        if self._writer is None or self._writer.root != Path(run_dir):
            self._writer = self.writer(run_dir)  # one writer per run: its shards are numbered in order
        return self._plan.generate(keys, self._writer, progress=False)


class TraceWorkers:
    """A pool of ``TraceWorker`` actors on a Ray cluster, used by ``run_traces(..., workers=pool)``.

    ``start`` it, use it for any number of runs (each worker keeps its model between runs of the
    same model), and ``close`` it, or use it as a context manager: closing stops the actors and, for
    a local cluster it started, Ray itself.
    """

    def __init__(self, actors: dict[int, Any], owns_ray: bool, gpus: bool) -> None:
        self.actors = actors
        self.owns_ray = owns_ray
        self.gpus = gpus

    @classmethod
    def start(
        cls, workers: int | None = None, address: str | None = None, threads: int = 1, worker: type = TraceWorker,
    ) -> TraceWorkers:
        """Starts ``workers`` actors on a local Ray cluster, or on the one at ``address``.

        ``workers=None`` means one on a local cluster, and on a joined one a worker per GPU (per
        ``threads`` CPUs where it has none). Each worker takes one GPU when the cluster has any. A
        Ray session this process has already opened is used as it is (``address`` is then ignored)
        and left open by ``close``.
        """
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        ray = import_ray()
        owns = not ray.is_initialized()
        if owns:
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if address is None:
                ray.init(num_cpus=(workers or 1) * threads, **kwargs)
            else:
                try:
                    ray.init(address=address, **kwargs)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ValueError(f"cannot join the Ray cluster at {address!r} ({exc}); start one with "
                                     "`ray start --head` and pass the address it prints") from exc
        try:
            resources = ray.cluster_resources()
            gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
            n = workers or (1 if address is None else gpus or max(cpus // threads, 1))
            if gpus and n > gpus:
                raise ValueError(f"{n} workers asked for, but the Ray cluster has {gpus} GPUs and each worker takes "
                                 f"one; use --workers {gpus} or fewer")
            if not gpus and n * threads > cpus:
                raise ValueError(f"{n} workers x {threads} threads asked for, but the Ray cluster has {cpus} CPUs; "
                                 "use fewer workers or threads")
            remote = ray.remote(worker).options(num_cpus=threads, num_gpus=1 if gpus else 0, max_restarts=0)
            actors = {rank: remote.remote(rank, threads) for rank in range(n)}
        except BaseException:
            if owns:
                ray.shutdown()
            raise
        return cls(actors, owns, bool(gpus))

    def __enter__(self) -> TraceWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        ray = import_ray()
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors = {}
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()

    def _get(self, refs: list) -> list:
        """``ray.get``, re-raising a worker's own error (a bad model folder, a bad task file) as itself."""
        ray = import_ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def run(
        self, cfg: TraceRunConfig, out: str | Path, progress: bool = True, model=None,
        edits: Sequence[NeuronEdit] = (), controllers: Sequence[Controller] = (),
        build: Callable[[Any], tuple[Sequence[NeuronEdit], Sequence[Controller]]] | None = None,
    ) -> RunSummary:
        """``run_traces`` across the pool: the same run directory, identity and traces as one process.

        Edits and controllers are pickled to every worker. One that cannot be (e.g. it holds the
        model) is made on each worker instead by ``build(model)``: a picklable function of the
        worker's model returning ``(edits, controllers)``.
        """
        ray = import_ray()
        if not self.actors:
            raise RunDirError("this pool has no workers left (they were stopped or died); start new ones")
        if build is not None and (edits or controllers):
            raise ValueError("pass edits and controllers, or a build function that makes them, not both")
        check_target(out)
        args = [ray.put(x) for x in (tuple(edits), tuple(controllers), build)]
        ranks = sorted(self.actors)
        plans = dict(zip(ranks, self._get([self.actors[r].prepare.remote(cfg, *args) for r in ranks]), strict=True))
        first = plans[ranks[0]]
        for rank in ranks[1:]:
            diff = identity_diff(first["identity"], plans[rank]["identity"])
            if diff:
                raise RunDirError(f"worker {rank} on {plans[rank]['host']} resolved another run than worker "
                                  f"{ranks[0]} on {first['host']} (it differs in: {', '.join(diff)}); every worker "
                                  "must see the same model folder, task data and code")
        if model is not None and model_hash(model) != first["identity"]["model_sha256"]:
            raise ValueError(f"the model passed in is not the one the workers loaded from {cfg.model!r} (the weights "
                             "differ); workers load the model from disk, so save an edited model to a folder first")
        provenance = {**first["provenance"], "workers": {"count": len(ranks), "gpus": self.gpus,
                                                         "hosts": sorted({p["host"] for p in plans.values()})}}
        with TraceStore.open(out, first["identity"], provenance) as store:
            t0 = time.time()  # as in one process: generation only, not the workers' model loading
            done = store.done_keys()
            pending = [tuple(k) for k in first["keys"] if tuple(k) not in done]
            rows = math.ceil(len(pending) / (CHUNKS_PER_WORKER * len(ranks))) if pending else 1
            queue = deque(chunks(pending, max(min(rows, MAX_CHUNK_BATCHES * cfg.batch_size), 1)))
            totals, lost = self._dispatch(store, queue, len(pending), progress)
            store.finalize()
            summary = summarize(store, skipped=len(done), seconds=time.time() - t0, tokens=totals["tokens"])
        return dataclasses.replace(summary, workers=len(ranks), workers_lost=lost)

    def _dispatch(
        self, store: TraceStore, queue: deque, total: int, progress: bool,
    ) -> tuple[dict[str, int], list[int]]:
        """Keeps every worker busy with a chunk until the queue is empty; requeues the chunks of dead workers."""
        ray = import_ray()
        idle = sorted(self.actors)
        in_flight: dict[Any, tuple[int, list]] = {}  # object ref -> (rank, chunk)
        totals = {"traces": 0, "correct": 0, "tokens": 0}
        lost: list[int] = []
        t0 = time.time()
        bar = tqdm(total=total, desc=f"traces ({len(idle)} workers)", disable=not progress, unit="trace")
        finished = False
        try:
            while queue or in_flight:
                while queue and idle:
                    rank = idle.pop(0)
                    chunk = queue.popleft()
                    in_flight[self.actors[rank].generate.remote(str(store.root), chunk)] = (rank, chunk)
                if not in_flight:
                    raise RunDirError(f"every worker died (ranks {lost}); the traces they finished are saved in "
                                      f"{store.root}: run the same command again to resume, with or without Ray")
                [ref], _ = ray.wait(list(in_flight), num_returns=1)
                rank, chunk = in_flight.pop(ref)
                try:
                    result = self._get([ref])[0]
                except ray.exceptions.RayActorError as exc:
                    ray.kill(self.actors.pop(rank))  # should it come back, it must not write any more
                    lost.append(rank)
                    done = store.done_keys()
                    rest = [k for k in chunk if k not in done]
                    log.warning("worker %d died (%s); %d of its %d traces were saved, the rest go to the others",
                                rank, type(exc).__name__, len(chunk) - len(rest), len(chunk))
                    bar.update(len(chunk) - len(rest))
                    if rest:
                        queue.appendleft(rest)
                    continue
                idle.append(rank)
                for k in totals:
                    totals[k] += result[k]
                bar.update(result["traces"])
                bar.set_postfix(tok_s=f"{totals['tokens'] / max(time.time() - t0, 1e-9):.0f}",
                                acc=f"{totals['correct'] / max(totals['traces'], 1):.3f}", refresh=False)
            finished = True
        finally:
            bar.close()
            if not finished:
                self._stop(in_flight)
        return totals, lost

    def _stop(self, in_flight: dict[Any, tuple[int, list]]) -> None:
        """Kills the workers still generating, and waits for them, before the run's lock is released."""
        ray = import_ray()
        for rank, _ in in_flight.values():
            ray.kill(self.actors.pop(rank))
        if in_flight:
            ray.wait(list(in_flight), num_returns=len(in_flight), timeout=60)
