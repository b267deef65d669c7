"""Does NEAT's exit signal peak where thinking is done? Measured beside its controls.

``rank_exit`` fits on one half of the problems (seeded) and writes the fit; the report reads it and
measures on the other half, so it never refits. For every held-out trace each
signal is read over the thinking span, and the trace counts as a hit when the signal peaks within
``window`` tokens of the trace's answer point (``exit_traces.ExitTrace.answer_point``). Signals, all
read the same way:

* ``exit_within3``: ``rho = cos(a_t, mu_ref)`` over NEAT's selected neurons (the paper's signal);
  ``exit_within3_aligned``: the reference code's sign-aligned similarity over the same neurons;
* ``exit_within3_random``: the same cosine over random neurons of the attributed layers, as many
  (mean over ``random_draws`` draws), each with its own exit-point mean;
* ``exit_within3_top_activated``: the same count of neurons with the largest mean |activation| at
  exit points (the paper's "top-activated neurons" baseline);
* ``exit_within3_all``: the cosine over every neuron of every layer;
* ``exit_within3_p_end``: the model's own probability of the end-of-thinking token.

Example:
    >>> hits = peak_hits({"s": [np.array([0.1, 0.9, 0.2])]}, [(10, 13)], [14])
    >>> hits["s"]
    [True]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.neat.calibration import NeatFit, fit_run, load_fit, split_traces
from workbench.neat.config import DEFAULT_CONFIG, NeatConfig
from workbench.neat.exit_traces import ExitTrace, forced_pass, load_exit_traces, run_model
from workbench.neat.reference import ExitReference
from workbench.neat.results import Agreement, ExitReport, WithinWindow
from workbench.store.paths import RunPaths


def peak_hits(
    signals: dict[str, Sequence[np.ndarray]], spans: Sequence[tuple[int, int]],
    targets: Sequence[int], window: int = 3,
) -> dict[str, list[bool]]:
    """Per signal, per trace: does the signal (read over ``spans[i]``) peak within ``window`` of ``targets[i]``?"""
    out = {}
    for name, per_trace in signals.items():
        out[name] = [abs(span[0] + int(np.argmax(s)) - target) <= window
                     for s, span, target in zip(per_trace, spans, targets, strict=True)]
    return out


def _cos(acts: np.ndarray, mu: np.ndarray) -> np.ndarray:
    return ExitReference(tuple(range(len(mu))), (1,) * len(mu), tuple(mu.tolist())).signals(acts)["rho"]


def control_sets(fit: NeatFit, d_mlp: int, cfg: NeatConfig) -> dict[str, np.ndarray]:
    """Flat neuron indices of each neuron-set signal: the selection, random draws, top-activated."""
    k = len(fit.selection.flat)
    pool = np.concatenate([np.arange(layer * d_mlp, (layer + 1) * d_mlp) for layer in fit.layers])
    rng = np.random.default_rng(cfg.seed)
    sets = {"exit": fit.selection.flat}
    for d in range(cfg.random_draws):
        sets[f"random{d}"] = np.sort(rng.choice(pool, size=min(k, len(pool)), replace=False))
    sets["top_activated"] = pool[np.argsort(-fit.exit_abs_mean[pool], kind="stable")[:k]]
    return sets


def measure(
    model: TransformerBridge, traces: Sequence[ExitTrace], fit: NeatFit, cfg: NeatConfig, progress: bool = False,
) -> dict[str, list[bool]]:
    """Hits of every signal on ``traces`` (one teacher-forced pass per batch)."""
    d_mlp = model.cfg.d_mlp
    sets = control_sets(fit, d_mlp, cfg) if len(fit.selection.flat) else {}
    union = np.unique(np.concatenate(list(sets.values()))) if sets else np.zeros(0, dtype=np.int64)
    col = {int(f): i for i, f in enumerate(union)}
    mu_all = torch.from_numpy(fit.exit_mean.reshape(model.cfg.n_layers, d_mlp)).float()
    signals: dict[str, list[np.ndarray]] = {name: [] for name in [*sets, "aligned", "all", "p_end"]}
    budget = cfg.budget()
    for rows in tqdm(list(budget.batches([len(t.tokens) for t in traces])), desc="exit signals",
                     disable=not progress, unit="batch"):
        batch = [traces[i] for i in rows]
        width = max(len(t.tokens) for t in batch)
        gathered = np.zeros((len(batch), width, len(union)), dtype=np.float32)
        dot, sq = torch.zeros(len(batch), width), torch.zeros(len(batch), width)

        def on_layer(layer: int, act: torch.Tensor, start: int, gathered=gathered, dot=dot, sq=sq) -> None:
            at = slice(start, start + act.shape[1])
            dot[:, at].add_(act @ mu_all[layer])
            sq[:, at].add_((act * act).sum(-1))
            mine = np.flatnonzero(union // d_mlp == layer)
            if len(mine):
                gathered[:, at, mine] = act[:, :, union[mine] % d_mlp].numpy()

        p_end = forced_pass(model, [t.tokens for t in batch], on_layer, p_of=[t.end_id for t in batch], budget=budget)
        all_cos = (dot / (sq.sqrt().clamp_min(1e-10) * mu_all.norm().clamp_min(1e-10))).numpy()
        for r, t in enumerate(batch):
            lo, hi = t.span
            signals["p_end"].append(p_end[r, lo:hi].numpy())
            signals["all"].append(all_cos[r, lo:hi])
            for name, flat in sets.items():
                acts = gathered[r, lo:hi][:, [col[int(f)] for f in flat]]
                signals[name].append(_cos(acts, fit.exit_mean[flat]))
            if sets:
                acts = gathered[r, lo:hi][:, [col[int(f)] for f in fit.reference.flat]]
                signals["aligned"].append(fit.reference.signals(acts)["sim"])
    signals = {k: v for k, v in signals.items() if len(v) == len(traces)}
    return peak_hits(signals, [t.span for t in traces], [t.answer_point for t in traces], cfg.window)


def exit_report(
    run: str | Path, *, config: NeatConfig | None = None, model: TransformerBridge | None = None,
    progress: bool = False,
) -> ExitReport:
    """``exit_within3`` and its controls on a run, measured on the problems ``rank_exit`` did not fit on.

    Reads what ``rank_exit`` (the study's exit stage, ``workbench rank --method exit``) wrote: the
    selection, ``mu_ref``, the per-neuron means the controls are built from and the fitting problems;
    nothing is refitted. On a run without an exit result it runs the fit first (``rank_exit``'s work;
    an empty selection is written and reported as NaN figures). ``config`` None: the config the fit
    recorded (``NEAT``'s defaults when fitting here); a ``config`` that would calibrate differently from
    the recorded fit is refused. Also written to ``RUN/neat/report.json`` (``ExitReport.to_json()``)."""
    run_dir, cfg = Path(run), config
    t0 = time.time()
    saved = load_fit(run_dir)
    if saved is None:
        cfg = cfg if cfg is not None else DEFAULT_CONFIG
        # a run without closed traces, or with one problem, says so before a model is loaded
        split_traces(run_dir, load_exit_traces(run_dir, cfg.exit_token), cfg.seed)
        model = model if model is not None else run_model(run_dir)
        fit_run(run_dir, model, cfg, progress)
        saved = load_fit(run_dir)
    if cfg is None:
        cfg = saved.cfg
    elif differ := saved.cfg.fit_differences(cfg):
        raise ValueError(f"{run_dir}: its exit neurons were fitted with another NeatConfig (it differs in: "
                         f"{', '.join(differ)}); measure with the recorded config (config=None), or rank again with "
                         f"this one: `workbench rank --method exit {run_dir}` (or `rank_exit(run, config=...)`)")
    fit = saved.fit
    traces = load_exit_traces(run_dir, cfg.exit_token)
    _, test, _ = split_traces(run_dir, traces, cfg.seed, saved.fit_ids)
    model = model if model is not None else run_model(run_dir)
    if (model.cfg.n_layers, model.cfg.d_mlp) != saved.model_shape:
        raise ValueError(f"{run_dir}: its exit neurons were fitted on a model of shape {saved.model_shape} "
                         f"(layers, d_mlp); this one is {(model.cfg.n_layers, model.cfg.d_mlp)}")
    hits = measure(model, test, fit, cfg, progress)

    def share(name: str) -> float:
        return float(np.mean(hits[name])) if name in hits else float("nan")

    random = [share(f"random{d}") for d in range(cfg.random_draws)]
    selected = [divmod(int(f), model.cfg.d_mlp) for f in fit.selection.flat]
    layer_counts: dict[str, int] = {}
    for layer, _ in selected:
        layer_counts[str(layer)] = layer_counts.get(str(layer), 0) + 1
    labelled = sum(t.answer_point != t.think_end - 1 for t in test)
    note = None if len(fit.selection.flat) else (
        f"no neuron passed the vote (tau_cons {cfg.tau_cons}, tau_com {cfg.tau_com}) over {fit.n_calibration} "
        "calibration traces; neuron-set figures are NaN")
    report = ExitReport(
        within_window=WithinWindow(share("exit"), share("aligned"), float(np.mean(random)), random,
                                   share("top_activated"), share("all"), share("p_end")),
        traces=len(test), fit_traces=saved.n_fit_traces, calibration_traces=fit.n_calibration,
        targets_before_think_end=labelled, neurons=len(fit.selection.flat),
        layer_counts=dict(sorted(layer_counts.items(), key=lambda kv: int(kv[0]))),
        selected=[list(pair) for pair in selected], estimator=fit.estimator, window=cfg.window,
        seconds=round(time.time() - t0, 1), agreement=Agreement.from_json(fit.agreement) if fit.agreement else None,
        note=note)
    report.save(RunPaths(run_dir).exit_report)
    return report
