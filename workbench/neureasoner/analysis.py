"""The mixture-of-neurons analysis on labelled traces: rank key neurons, fit detectors, score them.

Problems are split in halves (seeded): neurons are ranked and detectors fitted (threshold included)
on windows of the fitting half, and every reported figure is measured on the other half. Beside
each detector on key neurons sit two controls with the same MLP, split and threshold rule: the same
number of random neurons (``_random``) and the tokens alone (``_tokens``).

Traces come as ``TraceInput`` (problem, token ids, thinking span, episodes) plus a loader of their
per-token activations, so the analysis runs on an activation store, on numpy arrays in a test, or
on anything in between. Activations are read twice (rank on all neurons, then features of the
chosen ones), one trace at a time.

Example:
    >>> from workbench.neureasoner import NeuReasonerConfig
    >>> NeuReasonerConfig().window
    8
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Int
from tqdm.auto import tqdm

from workbench.neureasoner.config import DEFAULT, NeuReasonerConfig
from workbench.neureasoner.detectors import (
    Detector,
    event_hits,
    fired_runs,
    fit_detector,
    fit_mlp,
    token_features,
    window_scores,
)
from workbench.neureasoner.features import FEATURES, window_features, window_starts
from workbench.neureasoner.labels import FailureEvents, window_onsets, window_overlaps
from workbench.neureasoner.ranking import SeparationStats, key_neurons
from workbench.neurons import NeuronSet
from workbench.probes import auroc
from workbench.splits import fit_half

CONTROLS = ("tokens", "random")


@dataclass(frozen=True)
class TraceInput:
    """One labelled trace: its problem (the unit of the split), tokens, thinking span ``[lo, hi)``, episodes."""

    problem: str
    token_ids: Int[np.ndarray, " pos"]
    think: tuple[int, int]
    events: FailureEvents

    def starts(self, cfg: NeuReasonerConfig) -> np.ndarray:
        lo, hi = self.think
        return window_starts(max(hi - lo, 0), cfg, offset=lo)


@dataclass
class MonResult:
    sets: dict[str, NeuronSet]
    detectors: dict[str, Detector]  # "<type>", "<type>_tokens", "<type>_random"
    report: dict


def _windows(trace: TraceInput, acts: np.ndarray, cfg: NeuReasonerConfig) -> np.ndarray:
    lo, hi = trace.think
    return window_features(acts[lo:hi], cfg)


def rank_key_neurons(
    traces: Sequence[TraceInput],
    load_acts: Callable[[int], np.ndarray],
    columns: NeuronSet,
    model_shape: tuple[int, int],
    cfg: NeuReasonerConfig,
    provenance: str = "",
    progress: bool = False,
) -> dict[str, NeuronSet]:
    """Per type, the ``cfg.top_k`` columns (neurons of ``columns``) whose features best separate failing
    windows from clean ones, over ``traces`` (pass only the fitting half)."""
    n_cols, d_mlp = len(columns), model_shape[1]
    stats = {t: SeparationStats(n_cols, len(FEATURES)) for t in cfg.types}
    for i in tqdm(range(len(traces)), desc="mon rank", disable=not progress):
        tr = traces[i]
        starts = tr.starts(cfg)
        if not len(starts):
            continue
        feats = _windows(tr, load_acts(i), cfg)
        failing = {t: window_overlaps(starts, cfg.window, tr.events.of(t)) for t in cfg.types}
        clean = ~np.any([window_overlaps(starts, cfg.window, tr.events.of(t)) for t in cfg.types], axis=0)
        for t in cfg.types:
            stats[t].add(feats, failing[t], clean)
    flat = np.array(columns.flat(d_mlp))
    out = {}
    for t in cfg.types:
        order, score, sign, best = key_neurons(stats[t].effect_sizes(), cfg.top_k)
        means = stats[t].means()
        out[t] = NeuronSet.from_flat(
            flat[order].tolist(), d_mlp, scores=tuple(float(s) for s in score), signs=tuple(int(s) for s in sign),
            method=f"neureasoner:{t}", provenance=provenance, model_shape=tuple(model_shape),
            parameters={**cfg.to_dict(), "score": "max |Cohen's d| over features, failing vs clean windows",
                        "best_feature": [FEATURES[b] for b in best], "failing_windows": int(stats[t].n[0]),
                        "healthy_windows": int(stats[t].n[1])},
            group_means={"failing": means[0, order, 0].tolist(), "healthy": means[1, order, 0].tolist()},
        )
    return out


def analyse(
    traces: Sequence[TraceInput],
    load_acts: Callable[[int], np.ndarray],
    columns: NeuronSet,
    model_shape: tuple[int, int],
    cfg: NeuReasonerConfig = DEFAULT,
    provenance: str = "",
    progress: bool = False,
) -> MonResult:
    """Key neurons, detectors and their held-out scores with controls; see the module docstring.

    ``load_acts(i)`` gives trace ``i``'s ``(pos, len(columns))`` activations; ``columns`` names them.
    """
    fit_ids = fit_half([t.problem for t in traces], cfg.seed)
    fit_rows = [i for i, t in enumerate(traces) if t.problem in fit_ids]
    if not fit_rows or len(fit_rows) == len(traces):
        raise ValueError(f"the problem split left one half empty ({len(fit_rows)} of {len(traces)} traces on the "
                         "fitting side); the analysis needs traces of at least two problems")
    sets = rank_key_neurons([traces[i] for i in fit_rows], lambda j: load_acts(fit_rows[j]), columns, model_shape,
                            cfg, provenance, progress)
    d_mlp = model_shape[1]
    col_of = {f: c for c, f in enumerate(columns.flat(d_mlp))}
    rng = np.random.default_rng(cfg.seed)
    k = min(cfg.top_k, len(columns))
    picks = {t: [col_of[f] for f in sets[t].flat(d_mlp)] for t in cfg.types}
    picks |= {f"{t}_random": sorted(rng.choice(len(columns), size=k, replace=False).tolist()) for t in cfg.types}
    union = sorted({c for cols in picks.values() for c in cols})
    where = {c: j for j, c in enumerate(union)}
    # Second pass: features of the chosen columns only, per window, with the window's trace and labels.
    feats, toks, trace_of, starts_all = [], [], [], []
    for i in tqdm(range(len(traces)), desc="mon windows", disable=not progress):
        tr = traces[i]
        starts = tr.starts(cfg)
        if not len(starts):
            continue
        feats.append(_windows(tr, load_acts(i)[:, union], cfg))
        toks.append(token_features(tr.token_ids, starts, cfg))
        trace_of.append(np.full(len(starts), i))
        starts_all.append(starts)
    feats_all, toks_all = np.concatenate(feats), np.concatenate(toks)
    trace_of_all, starts_cat = np.concatenate(trace_of), np.concatenate(starts_all)
    problems = np.array([traces[i].problem for i in trace_of_all])
    fit = np.isin(problems, list(fit_ids))
    test = ~fit
    report: dict = {"mon_windows": len(fit), "mon_windows_test": int(test.sum()),
                    "mon_traces_test": len({int(i) for i in trace_of_all[test]}), "mon_config": cfg.to_dict()}
    detectors = {}
    for t in cfg.types:
        failing = np.concatenate([window_overlaps(s, cfg.window, traces[i].events.of(t))
                                  for s, i in zip(starts_all, (int(x[0]) for x in trace_of), strict=True)])
        onset = np.concatenate([window_onsets(s, cfg.window, traces[i].events.of(t))
                                for s, i in zip(starts_all, (int(x[0]) for x in trace_of), strict=True)])
        report[f"mon_failing_windows_{t}"] = int(failing[test].sum())
        inputs = {"": ("neurons", feats_all[:, [where[c] for c in picks[t]]].reshape(len(fit), -1)),
                  "_random": ("random", feats_all[:, [where[c] for c in picks[f"{t}_random"]]].reshape(len(fit), -1)),
                  "_tokens": ("tokens", toks_all)}
        for suffix, (kind, x) in inputs.items():
            model, thr = fit_detector(x[fit], failing[fit], problems[fit], cfg)
            neurons = sets[t] if kind == "neurons" else (
                NeuronSet.from_flat([columns.flat(d_mlp)[c] for c in picks[f"{t}_random"]], d_mlp,
                                    method="random", model_shape=tuple(model_shape), provenance=provenance)
                if kind == "random" else None)
            det = Detector(t, kind, model, thr, neurons, cfg.to_dict())
            detectors[f"{t}{suffix}"] = det
            scores = det.score(x[test])
            w = window_scores(failing[test], scores, thr)
            report[f"mon_precision_{t}{suffix}"] = w["precision"]
            report[f"mon_recall_{t}{suffix}"] = w["recall"]
            report[f"mon_auroc_{t}{suffix}"] = w["auroc"]
            report[f"mon_threshold_{t}{suffix}"] = thr
            hits, runs, true_runs = [], 0, 0
            fired_test = scores >= thr
            test_idx = np.flatnonzero(test)
            for i in sorted({int(x) for x in trace_of_all[test]}):
                sel = trace_of_all[test] == i
                s, f = starts_cat[test_idx[sel]], fired_test[sel]
                spans = traces[i].events.of(t)
                hits += event_hits(s, cfg.window, f, spans)
                for a, b in fired_runs(s, cfg.window, f):
                    runs += 1
                    true_runs += any(a < e and b > st for st, e in spans)
            report[f"mon_event_recall_{t}{suffix}"] = float(np.mean(hits)) if hits else float("nan")
            report[f"mon_event_precision_{t}{suffix}"] = true_runs / runs if runs else float("nan")
            if suffix == "":
                report[f"mon_events_{t}"] = len(hits)
                report[f"mon_alarms_{t}"] = runs
            # Anticipation: among windows with no episode yet, does one start in the next window's tokens?
            quiet = ~failing
            ant = fit_mlp(x[fit & quiet], onset[fit & quiet].astype(int), cfg)
            report[f"mon_anticipation_auroc_{t}{suffix}"] = auroc(
                onset[test & quiet], ant.predict_proba(x[test & quiet].astype(np.float64))[:, 1])
    return MonResult(sets, detectors, report)
