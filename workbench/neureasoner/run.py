"""Run-directory entry points: the mixture-of-neurons analysis of a cached trace run.

``rank_mon(RUN)`` writes the key neurons of each failure type to ``RUN/neurons/mon-<type>.json``;
``mon_report(RUN)`` also fits the detectors and their controls, saves them under
``RUN/neureasoner/`` (``detector-<type>[_tokens|_random].joblib``, ``report.json``) and returns the
held-out figures (keys ``mon_<figure>_<type>[_tokens|_random]``; see ``analysis``).

Per-token activations come from the activation store (``workbench cache RUN``): the analysis ranks
the neurons the store keeps per token (``store.token_neurons``), so cache every neuron per token
(``CacheConfig(top_variance=n_layers * d_mlp)``) for a full ranking. Episodes come from the task's
labels (``labeller="truth"``: ``Task.failure_spans``, e.g. the organism's ground truth; a task without
truth falls back to the automatic labeller, and the report says so) or from the decoded text
(``labeller="auto"``; see ``labels.auto_events``).

Example, on a cached run::

    from workbench.neureasoner import mon_report
    mon_report("runs/main/sampled").types["slip"].key.event_recall   # "mon_event_recall_slip" in the JSON

Both entry points have the one shape ``f(run, *, config=None, model=None, progress=False)``; neither runs a
model (``model`` is accepted for that shape and unused).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from workbench.neureasoner.analysis import TraceInput, analyse, rank_key_neurons
from workbench.neureasoner.config import DEFAULT, NeuReasonerConfig
from workbench.neureasoner.labels import FailureEvents, trace_events
from workbench.neureasoner.results import MonReport
from workbench.neurons import NeuronSet
from workbench.prompting import ThinkSpans
from workbench.splits import fit_half
from workbench.store.paths import RunPaths

log = logging.getLogger(__name__)


def _tokenizer(run_dir: Path):
    from workbench.model import load_tokenizer
    from workbench.store.rundir import run_model_spec

    return load_tokenizer(run_model_spec(run_dir))


def trace_inputs(store, cfg: NeuReasonerConfig) -> list[TraceInput]:
    """The store's traces with their episodes, in ``store.index`` order."""
    return labelled_inputs(store, cfg)[0]


def labelled_inputs(store, cfg: NeuReasonerConfig) -> tuple[list[TraceInput], str]:
    """``trace_inputs`` and which labeller gave the episodes: ``"truth"``, or ``"auto"`` (asked for, or because
    the task has no truth for every trace)."""
    from workbench.traces import run_task

    rows = store.traces().to_pylist()
    task = run_task(store.run_dir)
    spans = [task.failure_spans(json.loads(r["labels"])) if cfg.labeller == "truth" and r.get("labels") else None
             for r in rows]
    truth = bool(rows) and all(s is not None for s in spans)
    tok = None if truth else _tokenizer(store.run_dir)
    pattern = None if cfg.step_pattern == DEFAULT.step_pattern else cfg.step_pattern  # None: the task's
    out = []
    for r, truth_spans in zip(rows, spans, strict=True):
        ids = np.asarray(r["token_ids"], np.int64)
        if truth:
            events = FailureEvents.from_spans(truth_spans)
        else:
            events, _ = trace_events(r, task, [tok.decode([int(i)]) for i in ids], pattern, truth=False)
        out.append(TraceInput(str(r["problem_id"]), ids, ThinkSpans.of(r).bounds(r["prompt_len"], len(ids)), events))
    used = "truth" if truth else "auto"
    if used != cfg.labeller:
        log.warning("%s: task %r has no failure truth for every trace; the automatic labeller reads them",
                    store.run_dir, task.name)
    return out, used


def _open(run_dir: str | Path):
    from workbench.store.activation_store import ActivationStore

    return ActivationStore(run_dir)


def rank_mon(
    run: str | Path, *, config: NeuReasonerConfig | None = None, model=None, progress: bool = False,
) -> dict[str, NeuronSet]:
    """Key neurons per failure type from the fitting half of the problems; saved as ``RUN/neurons/mon-<type>.json``."""
    run_dir, cfg = Path(run), config if config is not None else DEFAULT
    store = _open(run_dir)
    traces = trace_inputs(store, cfg)
    fit_ids = fit_half([t.problem for t in traces], cfg.seed)
    rows = [i for i, t in enumerate(traces) if t.problem in fit_ids]
    if "heads" not in cfg.units:
        sets = rank_key_neurons([traces[i] for i in rows], lambda j: store.token_acts(rows[j]), store.token_neurons,
                                (store.n_layers, store.d_mlp), cfg, str(run_dir), progress)
    else:  # attention heads too: their sets go to RUN/neureasoner/heads-<type>.json
        from workbench.neureasoner.analysis import rank_key_units, save_heads, store_units

        load, columns, heads = store_units(store, cfg)
        sets, head_sets = rank_key_units([traces[i] for i in rows], lambda j: load(rows[j]), columns,
                                         (store.n_layers, store.d_mlp), cfg, str(run_dir), progress, heads)
        save_heads(run_dir, head_sets)
    for t, s in sets.items():
        s.save(RunPaths(run_dir).mon_set(t))
    return sets


def mon_report(
    run: str | Path, *, config: NeuReasonerConfig | None = None, model=None, progress: bool = False,
) -> MonReport:
    """Key neurons, detectors and controls fitted on one half of the problems and scored on the other.

    Writes the neuron sets (as ``rank_mon``), the detectors and ``RUN/neureasoner/report.json``
    (``MonReport.to_json()``).
    """
    from workbench.neureasoner.analysis import save_heads, store_units

    run_dir, cfg = Path(run), config if config is not None else DEFAULT
    store = _open(run_dir)
    traces, labeller = labelled_inputs(store, cfg)
    load, columns, heads = store_units(store, cfg)  # store.token_acts and its neurons unless cfg.units has heads
    result = analyse(traces, load, columns, (store.n_layers, store.d_mlp), cfg, str(run_dir), progress, heads)
    paths = RunPaths(run_dir)
    for t, s in result.sets.items():
        s.save(paths.mon_set(t))
    save_heads(run_dir, result.heads)
    for name, det in result.detectors.items():
        det.save(paths.detector(name))
    report = MonReport.from_json({**result.report, "mon_token_neurons": len(store.token_neurons),
                                  "mon_labeller": labeller,
                                  **({"mon_token_heads": len(heads)} if heads is not None else {})})
    report.save(paths.mon_report)
    return report
