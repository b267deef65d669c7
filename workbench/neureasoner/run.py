"""Run-directory entry points: the mixture-of-neurons analysis of a cached trace run.

``rank_mon(RUN)`` writes the key neurons of each failure type to ``RUN/neurons/mon-<type>.json``;
``mon_report(RUN)`` also fits the detectors and their controls, saves them under
``RUN/neureasoner/`` (``detector-<type>[_tokens|_random].joblib``, ``report.json``) and returns the
held-out figures (keys ``mon_<figure>_<type>[_tokens|_random]``; see ``analysis``).

Per-token activations come from the activation store (``workbench cache RUN``): the analysis ranks
the neurons the store keeps per token (``store.token_neurons``), so cache every neuron per token
(``CacheConfig(top_variance=n_layers * d_mlp)``) for a full ranking. Episodes come from the task's
labels (``labeller="truth"``: the organism's ground truth) or from the decoded text
(``labeller="auto"``; see ``labels.auto_events``).

Example, on a cached run::

    from workbench.neureasoner import mon_report
    mon_report("runs/main/sampled")["mon_event_recall_slip"]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workbench.atomic import atomic_write_text
from workbench.neureasoner.analysis import TraceInput, analyse, rank_key_neurons
from workbench.neureasoner.config import DEFAULT, NeuReasonerConfig
from workbench.neureasoner.labels import auto_events, organism_events
from workbench.neurons import NeuronSet
from workbench.splits import fit_half

OUT = "neureasoner"


def _tokenizer(run_dir: Path, store):
    from transformers import AutoTokenizer

    from workbench.model import resolve
    from workbench.store.rundir import run_model_spec

    return AutoTokenizer.from_pretrained(str(resolve(run_model_spec(run_dir))))


def trace_inputs(store, cfg: NeuReasonerConfig) -> list[TraceInput]:
    """The store's traces with their episodes, in ``store.index`` order."""
    rows = store.traces().to_pylist()
    tok = _tokenizer(store.run_dir, store) if cfg.labeller == "auto" else None
    out = []
    for r in rows:
        ids = np.asarray(r["token_ids"], np.int64)
        lo = (r["think_start"] + 1) if r["think_start"] is not None else r["prompt_len"]
        hi = r["think_end"] if r["think_end"] is not None else len(ids)
        if cfg.labeller == "truth":
            if not r.get("labels"):
                raise ValueError(f"{store.run_dir}: trace {r['trace_id']} has no task labels; use "
                                 "NeuReasonerConfig(labeller='auto') for a model without ground truth")
            from workbench.organism.task import TraceLabels

            events = organism_events(TraceLabels.from_dict(json.loads(r["labels"])))
        else:
            pieces = [tok.decode([int(i)]) for i in ids]
            events = auto_events(pieces, lo - 1, hi, r.get("extracted"), cfg.step_pattern)
        out.append(TraceInput(str(r["problem_id"]), ids, (lo, hi), events))
    return out


def _open(run_dir: str | Path):
    from workbench.store.activation_store import ActivationStore

    return ActivationStore(run_dir)


def rank_mon(run_dir: str | Path, cfg: NeuReasonerConfig = DEFAULT, progress: bool = False,
             ) -> dict[str, NeuronSet]:
    """Key neurons per failure type from the fitting half of the problems; saved as ``RUN/neurons/mon-<type>.json``."""
    store = _open(run_dir)
    traces = trace_inputs(store, cfg)
    fit_ids = fit_half([t.problem for t in traces], cfg.seed)
    rows = [i for i, t in enumerate(traces) if t.problem in fit_ids]
    sets = rank_key_neurons([traces[i] for i in rows], lambda j: store.token_acts(rows[j]), store.token_neurons,
                            (store.n_layers, store.d_mlp), cfg, str(run_dir), progress)
    for t, s in sets.items():
        s.save(Path(run_dir) / "neurons" / f"mon-{t}.json")
    return sets


def mon_report(run_dir: str | Path, cfg: NeuReasonerConfig = DEFAULT, progress: bool = False) -> dict:
    """Key neurons, detectors and controls fitted on one half of the problems and scored on the other.

    Writes the neuron sets (as ``rank_mon``), the detectors and ``RUN/neureasoner/report.json``.
    """
    store = _open(run_dir)
    traces = trace_inputs(store, cfg)
    result = analyse(traces, store.token_acts, store.token_neurons, (store.n_layers, store.d_mlp), cfg,
                     str(run_dir), progress)
    out = Path(run_dir) / OUT
    for t, s in result.sets.items():
        s.save(Path(run_dir) / "neurons" / f"mon-{t}.json")
    for name, det in result.detectors.items():
        det.save(out / f"detector-{name}.joblib")
    report = {**result.report, "mon_token_neurons": len(store.token_neurons), "mon_labeller": cfg.labeller}
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, allow_nan=True))
    return report
