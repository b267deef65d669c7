"""Run-directory entry points: rank RCNs and report correctness probes from a run's activation store.

Both entry points have the one shape ``f(run, *, config=None, model=None, progress=False)``.
``rank_rcn(RUN)`` writes ``RUN/neurons/rcn.json`` and its controls ``rcn-unfiltered.json``, ``rcn-probe.json``
and ``rcn-random.json`` (plus ``RUN/adaras/rcn.json``: each set's layer distribution and overlap with the
RCNs). ``probe_report(RUN)`` writes ``RUN/probes/report.json``: the early correctness probe with its CI and
ROC, beside hand-computed features and token ids over the same span; the early-predictability curve; the
gate (saved into ``RUN/adaras/gate/``) beside a logistic gate; and, for runs with planted regimes, whether
the RCNs separate them. Both read ``workbench cache RUN``'s store; neither runs the model, except that the
gate reads question tokens from the model when the store's per-token neurons lack the gate's neurons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit
from tqdm.auto import tqdm

from workbench.adaras.gate import GateConfig, fit_gate, question_activations, select_features, youden_threshold
from workbench.adaras.ranking import AdarasConfig, combine_spans, layer_distribution, rank_with_controls
from workbench.adaras.regime import rcn_regime_auroc
from workbench.adaras.results import EarlyProbe, GateReport, PlantedCheck, ProbeReport, RcnSummary, ThinkingNote
from workbench.neurons import NeuronSet
from workbench.probes import (
    HandFeatures,
    auroc,
    auroc_ci,
    early_curve,
    fit_probe,
    hand_features,
    probe_auroc,
    roc_band,
    roc_points,
    select_c,
    token_bag,
)
from workbench.prompting import ThinkSpans
from workbench.store import ActivationStore
from workbench.store.paths import RunPaths
from workbench.tasks import Task
from workbench.traces import run_task

DEFAULT_RCN = AdarasConfig()


def _column(store: ActivationStore, name: str) -> np.ndarray:
    return np.array(store.index[name].to_pylist())


def thinking_bounds(store: ActivationStore) -> tuple[np.ndarray, np.ndarray]:
    """Each trace's thinking ``[start, end)`` as the store's ``"think"`` span reads it (``ThinkSpans.bounds``): the
    whole generation for a trace that never opened a thinking span, to the end for one that never closed it."""
    bounds = [ThinkSpans.of(row).bounds(row["prompt_len"], row["n_tokens"]) for row in store.index.to_pylist()]
    return np.array([b[0] for b in bounds], dtype=np.int64), np.array([b[1] for b in bounds], dtype=np.int64)


def thinking_note(store: ActivationStore) -> ThinkingNote:
    """How many traces opened no thinking span, and what was read for them instead (the report says so)."""
    opened = [s is not None or e is not None for s, e in zip(store.index["think_start"].to_pylist(),
                                                              store.index["think_end"].to_pylist(), strict=True)]
    none = len(opened) - sum(opened)
    return ThinkingNote(none, f"{none} of {len(opened)} traces open no thinking span: their 'think' spans are the "
                              "whole generation, answer included" if none else None)


def span_means(store: ActivationStore, span: str) -> np.ndarray:
    """``(trace, n_layers, d_mlp)`` means over ``"think"`` or ``"question+think"`` (token-weighted)."""
    if span == "think":
        return store.summary("think")
    starts, ends = thinking_bounds(store)
    return combine_spans(store.summary("question"), store.summary("think"), _column(store, "prompt_len"),
                         np.maximum(ends - starts, 0))


def rank_rcn(
    run: str | Path, *, config: AdarasConfig | None = None, model=None, progress: bool = False,
) -> NeuronSet:
    """Ranks RCNs from the run's activation store; writes them and their controls under ``RUN/neurons/`` and
    their summary (``RcnSummary``) to ``RUN/adaras/rcn.json``. The ranking reads the cache only: ``model`` is
    accepted for the one shape of entry points and unused."""
    run_dir, cfg = Path(run), config if config is not None else DEFAULT_RCN
    bar = tqdm(total=2, desc="rank rcn", disable=not progress)
    store = ActivationStore(run_dir)
    means = span_means(store, cfg.span)
    bar.update()
    rankings = rank_with_controls(means, _column(store, "correct"), _column(store, "problem_id"), cfg,
                                  provenance=str(run_dir))
    sets: dict[str, dict[str, Any]] = {}
    rcn = set(rankings.rcn.flat(store.d_mlp))
    for name, neurons in rankings.sets().items():
        neurons.save(RunPaths(run_dir).neuron_set(name))
        sets[name] = {"layer_distribution": layer_distribution(neurons, store.n_layers),
                      "overlap_with_rcn": len(rcn & set(neurons.flat(store.d_mlp)))}
    RcnSummary(asdict(cfg), sets, rankings.rcn.params["n_questions"], rankings.rcn.params["n_traces"],
               thinking_note(store)).save(RunPaths(run_dir).rcn_summary)
    bar.update()
    bar.close()
    return rankings.rcn


@dataclass(frozen=True, kw_only=True)
class ProbeReportConfig:
    """What ``probe_report`` measures.

    Attributes:
        early_span: the span of the headline probe (the organism's validation reads the first 8 thinking tokens).
        curve_k: the k of the early-predictability curve's points; None takes every ``think_first_k`` cached.
        n_resamples: bootstrap resamples of each CI.
        test_fraction: share of the questions the gate never sees while fitting (its AUROC is measured there).
        gate: the gate classifier's settings.
        rcn: the ranking whose RCNs the regime check reads (ranked if ``RUN/neurons/rcn.json`` is missing).
        seed: seeds the splits and the bootstrap.
    """

    early_span: str = "think_first_8"
    curve_k: tuple[int, ...] | None = None
    n_resamples: int = 1000
    test_fraction: float = 0.2
    gate: GateConfig = field(default_factory=GateConfig)
    rcn: AdarasConfig = field(default_factory=AdarasConfig)
    seed: int = 0


def _probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeReportConfig) -> tuple[Any, list[float]]:
    res = probe_auroc(x, y, groups)
    return res, list(auroc_ci(y, res.scores, groups, n_resamples=cfg.n_resamples, seed=cfg.seed))


def _early(store: ActivationStore, traces, y, groups, cfg: ProbeReportConfig, task: Task,
           hand: HandFeatures | None) -> EarlyProbe:
    """The headline probe on ``early_span`` beside hand features and token ids over the same tokens."""
    x = store.summary(cfg.early_span).reshape(len(store), -1)
    ok = ~np.isnan(x).any(axis=1)
    if len(np.unique(y[ok])) < 2:
        left = "none is left" if not ok.any() else \
            f"the {int(ok.sum())} left are all {'correct' if y[ok].all() else 'incorrect'}"
        raise ValueError(f"the span {cfg.early_span!r} is empty in {int((~ok).sum())} of {len(ok)} traces (too few "
                         f"thinking tokens), and {left}; probe a span they have (ProbeReportConfig.early_span)")
    res, ci = _probe(x[ok], y[ok], groups[ok], cfg)
    within: dict[str, float] = {}
    if hand is None:
        base_auroc, base_ci, names = float("nan"), [float("nan")] * 2, []
        reason = f"task {task.name!r} supplies no hand features for these traces"
    else:
        base, base_ci = _probe(hand.distinct()[ok], y[ok], groups[ok], cfg)
        base_auroc, names, reason = base.auroc, list(hand.names), None
        for planted in task.planted:  # the headline probe within each class of a planted label
            positive = hand.column(planted.feature)[ok] == 1
            for cls, m in zip(planted.classes, (~positive, positive), strict=True):
                within[cls] = auroc(y[ok][m], res.scores[m])
    k = int(cfg.early_span.removeprefix("think_first_")) if cfg.early_span.startswith("think_first_") else None
    starts, ends = thinking_bounds(store)
    ends = starts + k if k is not None else ends
    bag = token_bag(traces["token_ids"].to_pylist(), starts.tolist(), ends.tolist())
    tok, tok_ci = _probe(bag[ok], y[ok], groups[ok], cfg)
    return EarlyProbe(res.auroc, ci, cfg.early_span, int(ok.sum()), roc_points(y[ok], res.scores),
                      roc_band(y[ok], res.scores, groups[ok], n_resamples=cfg.n_resamples, seed=cfg.seed),
                      base_auroc, base_ci, names, within, tok.auroc, tok_ci, baseline_reason=reason)


def _curve(store: ActivationStore, traces, y, groups, cfg: ProbeReportConfig) -> list[dict[str, Any]]:
    """The early-predictability curve, each point beside the token-only probe on the same first k tokens."""
    ks = store.early_k if cfg.curve_k is None else cfg.curve_k
    missing = sorted(set(ks) - set(store.early_k))
    if missing:
        raise ValueError(f"ProbeReportConfig.curve_k: {missing} not cached (the store has k in {store.early_k}); "
                         "cache again with CacheConfig(early_k=...)")
    feats = {k: store.summary(f"think_first_{k}").reshape(len(store), -1) for k in ks}
    curve = early_curve(feats, y, groups, n_resamples=cfg.n_resamples, seed=cfg.seed)
    ids = traces["token_ids"].to_pylist()
    starts = thinking_bounds(store)[0].tolist()
    for point in curve:
        ok = ~np.isnan(feats[point["k"]]).any(axis=1)
        if len(np.unique(y[ok])) < 2:
            point["auroc_tokens"] = float("nan")
            continue
        bag = token_bag([ids[i] for i in np.flatnonzero(ok)], [starts[i] for i in np.flatnonzero(ok)],
                        [starts[i] + point["k"] for i in np.flatnonzero(ok)])
        point["auroc_tokens"] = probe_auroc(bag, y[ok], groups[ok]).auroc
    return curve


def _split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    split = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return next(split.split(np.zeros(len(groups)), groups=groups))


def _gate(store: ActivationStore, traces, y, groups, cfg: ProbeReportConfig, model, run_dir: Path) -> GateReport:
    """The attention-pooling gate and a logistic gate on question means, both measured on held-out questions."""
    fail = 1 - y
    question = store.summary("question")
    fit, test = _split(groups, cfg.test_fraction, cfg.seed)
    neurons = select_features(question[fit], fail[fit], min(cfg.gate.n_features, store.n_neurons))
    token_cols = {f: c for c, f in enumerate(store.token_neurons.flat(store.d_mlp))}
    flat = neurons.flat(store.d_mlp)
    prompt_len = _column(store, "prompt_len")
    if all(f in token_cols for f in flat):
        cols, source = [token_cols[f] for f in flat], "store"
        acts = [store.token_acts(r)[: prompt_len[r]][:, cols] for r in range(len(store))]
    else:
        source = "model"
        if model is None:
            from workbench.model import load_model, resolve
            from workbench.store.rundir import run_model_spec

            model = load_model(resolve(run_model_spec(run_dir)))
        ids = traces["token_ids"].to_pylist()
        prompts = sorted({tuple(ids[r][: prompt_len[r]]) for r in range(len(store))})
        got = dict(zip(prompts, question_activations(model, [list(p) for p in prompts], neurons), strict=True))
        acts = [got[tuple(ids[r][: prompt_len[r]])] for r in range(len(store))]
    gate = fit_gate([acts[i] for i in fit], fail[fit], groups[fit], neurons, cfg.gate)
    gate.save(RunPaths(run_dir).gate)
    test_scores = gate.scores([acts[i] for i in test])
    # Logistic gate on question-span means: fitted on the same training questions, its threshold by Youden's J
    # on the same validation questions as the MLP's, measured on the same test questions.
    x = np.nan_to_num(question.reshape(len(store), -1).astype(np.float64))
    train_rel, val_rel = _split(groups[fit], cfg.gate.val_fraction, cfg.gate.seed)
    train, val = fit[train_rel], fit[val_rel]
    pipe = fit_probe(x[train], fail[train], select_c(x[train], fail[train], groups[train]))
    threshold = youden_threshold(fail[val], pipe.predict_proba(x[val])[:, 1]) \
        if len(np.unique(fail[val])) == 2 else float("nan")
    return GateReport(auroc(fail[test], test_scores),
                      list(auroc_ci(fail[test], test_scores, groups[test], n_resamples=cfg.n_resamples, seed=cfg.seed)),
                      gate.threshold, len(neurons), source, len(test), float(fail[test].mean()), threshold,
                      auroc(fail[test], pipe.predict_proba(x[test])[:, 1]))


def _regime(store: ActivationStore, groups, cfg: ProbeReportConfig, run_dir: Path, task: Task,
            hand: HandFeatures | None) -> dict[str, PlantedCheck]:
    """Whether the RCNs read each label the task planted (none: nothing to check)."""
    if hand is None or not task.planted:
        return {}
    path = RunPaths(run_dir).neuron_set("rcn")
    rcn = NeuronSet.load(path, model_shape=(store.n_layers, store.d_mlp)) if path.exists() else \
        rank_rcn(run_dir, config=cfg.rcn)
    control_path = RunPaths(run_dir).neuron_set("rcn-random")
    control = NeuronSet.load(control_path) if control_path.exists() else None
    early = store.summary("think_first_8" if "think_first_8" in store.spans else cfg.early_span)
    return {planted.name: PlantedCheck.from_json(
        rcn_regime_auroc(early, hand.column(planted.feature), groups, rcn, control=control, seed=cfg.seed,
                         name=planted.name), fill=planted.name) for planted in task.planted}


def probe_report(
    run: str | Path, *, config: ProbeReportConfig | None = None, model=None, progress: bool = False,
) -> ProbeReport:
    """Correctness probes, the gate and the RCN regime check of a cached run; writes ``RUN/probes/report.json``
    (``ProbeReport.to_json()``: the flat keys of ``validate.json``).

    ``model`` is only needed (and otherwise loaded from the run manifest) when the gate's neurons are not
    among the store's per-token neurons.
    """
    run_dir, cfg = Path(run), config if config is not None else ProbeReportConfig()
    store = ActivationStore(run_dir)
    traces = store.traces()
    y = _column(store, "correct").astype(int)
    groups = _column(store, "problem_id")
    if len(np.unique(y)) < 2:
        raise ValueError(f"{run_dir}: every trace is {'correct' if y[0] else 'incorrect'}; the probes need both")
    right, wrong = len(set(groups[y == 1])), len(set(groups[y == 0]))
    if min(right, wrong) < 2:  # grouped folds and the gate's split put each question on one side only
        raise ValueError(f"{run_dir}: {int(y.sum())} of {len(y)} traces are correct, from {right} question(s), and "
                         f"{wrong} question(s) have an incorrect one; the probes' grouped folds need each class in at "
                         "least 2 questions: sample more traces, or a task the model solves sometimes")
    task = run_task(run_dir)
    hand = hand_features(traces, task)  # the baseline's input and the planted labels, read once
    stages = {"early": lambda: _early(store, traces, y, groups, cfg, task, hand),
              "curve": lambda: _curve(store, traces, y, groups, cfg),
              "gate": lambda: _gate(store, traces, y, groups, cfg, model, run_dir),
              "planted": lambda: _regime(store, groups, cfg, run_dir, task, hand)}
    parts: dict[str, Any] = {}
    bar = tqdm(stages.items(), desc="probe", disable=not progress)
    for name, stage in bar:
        bar.set_postfix_str(name)
        parts[name] = stage()
    report = ProbeReport(asdict(cfg), len(store), float(y.mean()), thinking_note(store), **parts)
    report.save(RunPaths(run_dir).probe_report)
    return report
