"""The mixture-of-neurons analysis on labelled traces: rank key neurons, fit detectors, score them.

Problems are split in halves (seeded): neurons are ranked and detectors fitted (threshold included)
on windows of the fitting half, and every reported figure is measured on the other half. Beside
each detector on key neurons sit two controls with the same MLP, split and threshold rule: the same
number of random neurons (``_random``) and the tokens alone (``_tokens``).

Traces come as ``TraceInput`` (problem, token ids, thinking span, episodes) plus a loader of their
per-token activations, so the analysis runs on an activation store, on numpy arrays in a test, or
on anything in between. Activations are read twice (rank on all units, then features of the
chosen ones), one trace at a time.

Units are MLP neurons (a ``NeuronSet`` names their columns) and, with ``cfg.units`` holding
``"heads"``, attention heads (a ``HeadSet`` names the columns after the neurons': each head's
residual write per token, ``workbench.heads``). The ``top_k`` of a type are chosen from the union
of the kinds ``cfg.units`` names, on Cohen's d, which puts both on one scale; the chosen neurons go
to a ``NeuronSet`` and the chosen heads to a ``HeadSet``, and a detector reads the neurons' window
features, then the heads'. The random control draws from the same union.

Example:
    >>> from workbench.neureasoner import NeuReasonerConfig
    >>> NeuReasonerConfig().window
    8
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jaxtyping import Int
from tqdm.auto import tqdm

from workbench.heads import HeadSet
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
from workbench.neurons import NeuronSet, mlp_post
from workbench.probes import auroc
from workbench.splits import fit_half
from workbench.store.paths import RunPaths

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
    sets: dict[str, NeuronSet]  # the chosen neurons of each type (with units holding "neurons")
    detectors: dict[str, Detector]  # "<type>", "<type>_tokens", "<type>_random"
    report: dict
    heads: dict[str, HeadSet] = field(default_factory=dict)  # the chosen heads (with units holding "heads")


def _units(columns: NeuronSet, heads: HeadSet | None, cfg: NeuReasonerConfig) -> np.ndarray:
    """Positions, among the loaded columns (``columns``' neurons, then ``heads``), of the units ``cfg.units`` ranks."""
    if "heads" in cfg.units and heads is None:
        raise ValueError("NeuReasonerConfig.units asks for 'heads' but the activations carry no head columns; cache "
                         "the run with CacheConfig(heads=True) (`workbench cache --heads`) and pass its heads")
    if heads is not None and (heads.model_shape is None or not len(heads)):
        raise ValueError("the head columns must be a non-empty HeadSet that records its model_shape")
    parts = [np.arange(len(columns))] if "neurons" in cfg.units else []
    if "heads" in cfg.units:
        parts.append(len(columns) + np.arange(len(heads)))
    pool = np.concatenate(parts)
    if not len(pool):
        raise ValueError(f"no units to rank: NeuReasonerConfig.units={cfg.units!r} names no loaded column")
    return pool


def unit_name(columns: NeuronSet, heads: HeadSet | None, column: int) -> str:
    """The TransformerLens address of a loaded column: ``blocks.{L}.mlp.hook_post[i]`` or ``blocks.{L}.attn.hook_z[h]``.

    >>> unit_name(NeuronSet.from_pairs([(0, 3)]), HeadSet.every(2, 4), 6)
    'blocks.1.attn.hook_z[1]'
    """
    if column < len(columns):
        return f"{mlp_post(columns.layers[column])}[{columns.indices[column]}]"
    return heads.names()[column - len(columns)]


def store_units(store, cfg: NeuReasonerConfig) -> tuple[Callable[[int], np.ndarray], NeuronSet, HeadSet | None]:
    """What the analysis reads from an ``ActivationStore`` for ``cfg.units``: the loader of a trace's columns,
    the neurons that name the first columns, and the heads that name the rest (None without heads)."""
    if "heads" not in cfg.units:
        return store.token_acts, store.token_neurons, None
    if not store.has_heads:
        raise ValueError(f"NeuReasonerConfig.units={cfg.units!r} asks for attention heads, but the activation cache "
                         f"of {store.run_dir} holds none; delete {store.root} and cache again with "
                         "CacheConfig(heads=True) (`workbench cache --heads`)")
    if "neurons" not in cfg.units:
        none = NeuronSet.from_flat([], store.d_mlp, model_shape=(store.n_layers, store.d_mlp))
        return store.token_heads, none, store.heads
    return (lambda i: np.concatenate([store.token_acts(i), store.token_heads(i)], 1)), store.token_neurons, store.heads


def save_heads(run_dir: str | Path, heads: dict[str, HeadSet]) -> None:
    """``RUN/neureasoner/heads-<type>.json`` per type: heads are not neurons, so they stay out of ``RUN/neurons/``.

    Head sets of an earlier analysis that this one does not write are removed, so the folder never pairs
    this analysis's detectors with another's heads."""
    paths = RunPaths(run_dir)
    keep = {paths.heads(t) for t in heads}
    for stale in paths.head_sets():
        if stale not in keep:
            stale.unlink()
    for t, h in heads.items():
        h.save(paths.heads(t))


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
    windows from clean ones, over ``traces`` (pass only the fitting half); ``rank_key_units`` with neurons only."""
    return rank_key_units(traces, load_acts, columns, model_shape, cfg, provenance, progress)[0]


def rank_key_units(
    traces: Sequence[TraceInput],
    load_acts: Callable[[int], np.ndarray],
    columns: NeuronSet,
    model_shape: tuple[int, int],
    cfg: NeuReasonerConfig,
    provenance: str = "",
    progress: bool = False,
    heads: HeadSet | None = None,
) -> tuple[dict[str, NeuronSet], dict[str, HeadSet]]:
    """Per type, the ``cfg.top_k`` units of the kinds ``cfg.units`` names whose features best separate failing
    windows from clean ones, over ``traces`` (pass only the fitting half): the chosen neurons (a ``NeuronSet``
    per type, when ``cfg.units`` holds ``"neurons"``) and heads (a ``HeadSet`` per type, with ``"heads"``).

    ``load_acts(i)`` gives trace ``i``'s ``(pos, len(columns) + len(heads))`` activations: ``columns``' neurons,
    then ``heads``' residual writes.
    """
    d_mlp, n_cols = model_shape[1], len(columns) + (len(heads) if heads is not None else 0)
    pool = _units(columns, heads, cfg)
    every = len(pool) == n_cols  # the pool is every loaded column, in order: no copy
    stats = {t: SeparationStats(len(pool), len(FEATURES)) for t in cfg.types}
    for i in tqdm(range(len(traces)), desc="mon rank", disable=not progress):
        tr = traces[i]
        starts = tr.starts(cfg)
        if not len(starts):
            continue
        acts = load_acts(i)
        if acts.shape[1] != n_cols:
            raise ValueError(f"trace {i}: {acts.shape[1]} activation columns, but the units name {n_cols} "
                             f"({len(columns)} neurons + {n_cols - len(columns)} heads)")
        feats = _windows(tr, acts if every else acts[:, pool], cfg)
        failing = {t: window_overlaps(starts, cfg.window, tr.events.of(t)) for t in cfg.types}
        clean = ~np.any([window_overlaps(starts, cfg.window, tr.events.of(t)) for t in cfg.types], axis=0)
        for t in cfg.types:
            stats[t].add(feats, failing[t], clean)
    flat = np.array(columns.flat(d_mlp), dtype=np.int64)
    sets, head_sets = {}, {}
    for t in cfg.types:
        order, score, sign, best = key_neurons(stats[t].effect_sizes(), cfg.top_k)
        means = stats[t].means()
        is_head = pool[order] >= len(columns)
        for kind, keep in (("neurons", ~is_head), ("heads", is_head)):
            if kind not in cfg.units:
                continue
            chosen = order[keep]
            common = dict(
                scores=tuple(float(s) for s in score[keep]), signs=tuple(int(s) for s in sign[keep]),
                method=f"neureasoner:{t}", provenance=provenance,
                parameters={**cfg.to_dict(), "score": "max |Cohen's d| over features, failing vs clean windows",
                            "best_feature": [FEATURES[b] for b in best[keep]], "failing_windows": int(stats[t].n[0]),
                            "healthy_windows": int(stats[t].n[1])},
                group_means={"failing": means[0, chosen, 0].tolist(), "healthy": means[1, chosen, 0].tolist()})
            if kind == "neurons":
                sets[t] = NeuronSet.from_flat(flat[pool[chosen]].tolist(), d_mlp, model_shape=tuple(model_shape),
                                              **common)
            else:
                n_heads = heads.model_shape[1]
                head_flat = np.array(heads.flat(n_heads), dtype=np.int64)[pool[chosen] - len(columns)]
                head_sets[t] = HeadSet.from_flat(head_flat.tolist(), n_heads, model_shape=tuple(heads.model_shape),
                                                 **common)
    return sets, head_sets


def analyse(
    traces: Sequence[TraceInput],
    load_acts: Callable[[int], np.ndarray],
    columns: NeuronSet,
    model_shape: tuple[int, int],
    cfg: NeuReasonerConfig = DEFAULT,
    provenance: str = "",
    progress: bool = False,
    heads: HeadSet | None = None,
) -> MonResult:
    """Key units, detectors and their held-out scores with controls; see the module docstring.

    ``load_acts(i)`` gives trace ``i``'s ``(pos, len(columns) + len(heads))`` activations; ``columns`` names
    the first (neurons), ``heads`` the rest (attention heads; None: no head columns).
    """
    fit_ids = fit_half([t.problem for t in traces], cfg.seed)
    fit_rows = [i for i, t in enumerate(traces) if t.problem in fit_ids]
    if not fit_rows or len(fit_rows) == len(traces):
        raise ValueError(f"the problem split left one half empty ({len(fit_rows)} of {len(traces)} traces on the "
                         "fitting side); the analysis needs traces of at least two problems")
    sets, head_sets = rank_key_units([traces[i] for i in fit_rows], lambda j: load_acts(fit_rows[j]), columns,
                                     model_shape, cfg, provenance, progress, heads)
    d_mlp, n_neurons = model_shape[1], len(columns)
    col_of = {f: c for c, f in enumerate(columns.flat(d_mlp))}
    col_of_head = {} if heads is None else {f: n_neurons + c for c, f in enumerate(heads.flat(heads.model_shape[1]))}
    pool = _units(columns, heads, cfg)
    rng = np.random.default_rng(cfg.seed)
    k = min(cfg.top_k, len(pool))
    # A detector's input: its neurons' window features, then its heads' (each kind in its set's order).
    picks = {t: [col_of[f] for f in sets[t].flat(d_mlp)] if t in sets else [] for t in cfg.types}
    for t, h in head_sets.items():
        picks[t] += [col_of_head[f] for f in h.flat(heads.model_shape[1])]
    picks |= {f"{t}_random": sorted(pool[rng.choice(len(pool), size=k, replace=False)].tolist()) for t in cfg.types}
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
    if "heads" in cfg.units:  # which kind the ranking chose, per type (neurons-only reports stay as they were)
        for t in cfg.types:
            report[f"mon_chosen_neurons_{t}"] = sum(c < n_neurons for c in picks[t])
            report[f"mon_chosen_heads_{t}"] = sum(c >= n_neurons for c in picks[t])
            scored = [(s, unit_name(columns, heads, c)) for s, c in zip(
                (*(sets[t].scores if t in sets else ()), *head_sets[t].scores), picks[t], strict=True)]
            report[f"mon_chosen_{t}"] = [name for _, name in sorted(scored, key=lambda x: -x[0])]  # best first
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
            neurons, unit_heads = (sets.get(t), head_sets.get(t)) if kind == "neurons" else (
                _random_units(picks[f"{t}_random"], columns, heads, model_shape, cfg, provenance)
                if kind == "random" else (None, None))
            det = Detector(t, kind, model, thr, neurons, cfg.to_dict(), heads=unit_heads)
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
    return MonResult(sets, detectors, report, head_sets)


def _random_units(
    picked: list[int], columns: NeuronSet, heads: HeadSet | None, model_shape: tuple[int, int],
    cfg: NeuReasonerConfig, provenance: str,
) -> tuple[NeuronSet | None, HeadSet | None]:
    """The random control's neurons and heads (each None where ``cfg.units`` leaves that kind out)."""
    d_mlp, n = model_shape[1], len(columns)
    neurons = NeuronSet.from_flat([columns.flat(d_mlp)[c] for c in picked if c < n], d_mlp, method="random",
                                  model_shape=tuple(model_shape), provenance=provenance) \
        if "neurons" in cfg.units else None
    if "heads" not in cfg.units:
        return neurons, None
    n_heads = heads.model_shape[1]
    return neurons, HeadSet.from_flat([heads.flat(n_heads)[c - n] for c in picked if c >= n], n_heads,
                                      method="random", model_shape=tuple(heads.model_shape), provenance=provenance)
