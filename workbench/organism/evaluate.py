"""Measures the organism's behaviour on held-out problems against its behaviour targets.

* greedy and sampled accuracy (sampling at ``DEFAULT_TEMPERATURE``, the documented default);
* the share of sampled traces showing each planted failure (reflection, oscillation or stagnation,
  overthinking, uncaught slips), read back from the tokens by the labeler;
* a correctness probe on the mean MLP activations (``blocks.{L}.mlp.hook_post``, all layers) of the
  first ``THINK_WINDOW`` thinking tokens, against the same probe on hand-made features (operand
  count, carry count, regime opener; and, stricter, with every opener cue word counted), split by problem;
* a first look at steering: does adding the careful-minus-careless mean difference at the positions
  where a dropped carry is decided lower the probability of the slip? (teacher-forced; the
  direction is fitted on one half of the problems and tested on the other; a random direction of
  the same norm is the control.)
* the claim checks of ``checks``: ``slip_prob``, ``anticipation`` (beside its ceiling) and
  ``steer_lift`` (beside random neurons); ``exit_within3`` from NEAT's ``exit_report`` (beside random,
  top-activated and all neurons, and the model's own p(end)).

Every trace goes through the trace store (``out/greedy``, ``out/sampled``) and is read back from it.

The full report (300 problems x 8 samples, the numbers of the model card) is a command,
``workbench organism eval --problems 300 --samples 8 --json`` (about 4 minutes on one CPU thread);
its output is committed as ``docs/organism_eval.json``, and the tests read their targets from it.

Example (the two trace runs a report reads; ``evaluate(cfg, out)`` generates them and measures):
    >>> cfg = EvalConfig(problems=20, samples=2)
    >>> {name: (run.samples, run.temperature) for name, run in cfg.runs().items()}
    {'greedy': (1, 0.0), 'sampled': (2, 1.0)}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.model import load_model, resolve
from workbench.neat import NeatConfig, exit_report
from workbench.neurons import NeuronSet
from workbench.organism import checks
from workbench.organism.task import Problem, TraceLabels, TraceRecipe
from workbench.organism.train import planted_of, recipe_of
from workbench.probes import auroc, probe_auroc
from workbench.readout import next_token_probs, window_means
from workbench.splits import fit_half
from workbench.store import load_traces
from workbench.traces import TraceRunConfig, run_traces

DEFAULT_TEMPERATURE = 1.0
THINK_WINDOW = 8


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What to measure.

    Attributes:
        model: ``"organism"`` or a folder holding an organism checkpoint.
        problems: held-out problems (never seen in training).
        samples: sampled traces per problem.
        temperature: sampling temperature for the sampled traces.
        seed: picks the problems and seeds every row's sampler.
        batch_size: rows generated at once.
        steer_alphas: multiples of the careful-minus-careless direction tried in the steering look.
        lift_alphas: multiples of the AdaRAS score tried (on the fitting half) for ``steer_lift``.
        direction_alphas: multiples of the decision-point direction tried for ``steer_direction_lift``.
        task: ``organism`` (addition) or ``organism-sub`` (subtraction).
    """

    model: str = "organism"
    problems: int = 300
    samples: int = 8
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 1234
    batch_size: int = 64
    steer_alphas: tuple[float, ...] = (1.0, 2.0)
    lift_alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    direction_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    task: str = "organism"

    def runs(self) -> dict[str, TraceRunConfig]:
        """The two trace runs the report reads: greedy (one per problem) and sampled."""
        common = {"model": self.model, "task": self.task, "problems": self.problems, "seed": self.seed,
                  "batch_size": self.batch_size}
        return {
            "greedy": TraceRunConfig(**common, samples=1, temperature=0.0),
            "sampled": TraceRunConfig(**common, samples=self.samples, temperature=self.temperature),
        }


@dataclass
class Sample:
    """One stored organism trace, read back from a run directory with its labels."""

    trace_id: str
    problem: Problem
    index: int
    tokens: list[int]
    finish_reason: str
    labels: TraceLabels


def load_samples(run_dir: str | Path) -> list[Sample]:
    """The organism traces of a run directory, with their stored labels, in (problem, sample) order."""
    rows = load_traces(run_dir).to_pylist()
    if rows and rows[0]["labels"] is None:
        raise ValueError(f"{run_dir} holds traces without organism labels; it is not an organism run")
    return [
        Sample(r["trace_id"], Problem.from_id(r["problem_id"]), r["sample_index"], r["token_ids"],
               r["finish_reason"], TraceLabels.from_dict(json.loads(r["labels"])))
        for r in rows
    ]


def generate_runs(
    cfg: EvalConfig, out: str | Path, model: TransformerBridge | None = None, progress: bool = False,
) -> dict[str, list[Sample]]:
    """Generates (or resumes) the greedy and sampled runs under ``out`` and reads them back."""
    out = Path(out)
    for name, run_cfg in cfg.runs().items():
        run_traces(run_cfg, out / name, progress=progress, model=model)
    return {name: load_samples(out / name) for name in cfg.runs()}


def trace_digests(samples: list[Sample]) -> dict[str, str]:
    """Per problem, a digest of its traces' tokens and finish reasons, in sample order.

    The report carries them so that any few problems, regenerated alone, can be checked against it
    exactly: each row's sampler is seeded by its own trace id, so a problem's traces do not depend on
    which others ran beside it. ``tests/organism/test_behaviour.py`` regenerates the first problems
    with the shipped weights and compares them with ``docs/organism_eval.json``.
    """
    by_problem: dict[str, list] = {}
    for s in samples:
        by_problem.setdefault(s.problem.id, []).append([s.index, s.tokens, s.finish_reason])
    return {pid: hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] for pid, rows in by_problem.items()}


def behaviour(samples: list[Sample]) -> dict[str, float]:
    """Accuracy and the share of traces showing each failure type."""
    labels = [s.labels for s in samples]

    def share(pred) -> float:
        return float(np.mean([bool(pred(x)) for x in labels])) if labels else float("nan")

    out = {
        "accuracy": share(lambda x: x.correct),
        "reflection_rate": share(lambda x: any(s.caught for s in x.slips)),
        "uncaught_slip_rate": share(lambda x: any(not s.caught for s in x.slips)),
        "oscillation_rate": share(lambda x: x.repeats),
        "oscillation_only_rate": share(lambda x: any(r.kind == "oscillation" for r in x.repeats)),
        "stagnation_only_rate": share(lambda x: any(r.kind == "stagnation" for r in x.repeats)),
        "overthinking_rate": share(lambda x: x.overthinking),
        "careless_share": share(lambda x: x.regime == "careless"),
        "malformed_rate": share(lambda x: not x.well_formed or x.answer is None),
        "length_cutoff_rate": float(np.mean([s.finish_reason == "length" for s in samples])),
        "mean_thinking_tokens": float(np.mean([
            (x.think_end or len(s.tokens)) - (x.think_start or 0) - 1
            for s, x in zip(samples, labels, strict=True)
        ])),
    }
    for regime in ("careful", "careless"):
        sub = [x.correct for x in labels if x.regime == regime]
        out[f"accuracy_{regime}"] = float(np.mean(sub)) if sub else float("nan")
    return out


def probe_report(
    model: TransformerBridge, samples: list[Sample], planted: NeuronSet | None = None,
) -> dict[str, float | int]:
    """Held-out AUROCs of correctness probes: activations vs hand-made features, and within regime; with
    ``planted`` (v3's regime read-out), also the read-out's own mean as a score, nothing fitted."""
    usable = [
        s for s in samples
        if s.labels.think_start is not None and len(s.tokens) > s.labels.think_start + THINK_WINDOW
    ]
    y = np.array([s.labels.correct for s in usable])
    groups = np.array([s.problem.id for s in usable])
    acts = window_means(
        model, [s.tokens for s in usable], [s.labels.think_start + 1 for s in usable], THINK_WINDOW
    )
    act_probe = probe_auroc(acts.flatten(1).numpy(), y, groups)
    careless = np.array([s.labels.regime == "careless" for s in usable], dtype=float)
    hand = np.array([[s.labels.n_operands, s.labels.carry_count] for s in usable], dtype=float)
    base_probe = probe_auroc(np.c_[hand, careless], y, groups)
    oracle = np.c_[hand, careless, [s.labels.big_carry_count for s in usable],
                   careless * np.array([s.labels.big_carry_count for s in usable])]
    # A stricter hand-made baseline: every opener cue word counted, not only the first (v3 writes several).
    cues = np.array([[s.labels.careless_cues, len(s.labels.cues)] for s in usable], dtype=float)
    cue_probe = probe_auroc(np.c_[hand, careless, cues], y, groups)
    out = {
        "probe_auroc_early": act_probe.auroc,
        "probe_auroc_baseline": base_probe.auroc,
        "probe_auroc_baseline_cues": cue_probe.auroc,
        "probe_auroc_oracle_labels": probe_auroc(oracle, y, groups).auroc,
        "probe_traces": len(usable),
    }
    if planted is not None:
        readout = acts[:, list(planted.layers), list(planted.indices)].mean(-1).numpy()
        out["probe_auroc_early_planted"] = auroc(y, readout)
    for regime in ("careful", "careless"):
        m = np.array([s.labels.regime == regime for s in usable])
        out[f"probe_auroc_early_within_{regime}"] = auroc(y[m], act_probe.scores[m])
        out[f"probe_auroc_baseline_within_{regime}"] = auroc(y[m], base_probe.scores[m])
        out[f"probe_auroc_baseline_cues_within_{regime}"] = auroc(y[m], cue_probe.scores[m])
    return out


def steering_look(
    model: TransformerBridge, samples: list[Sample], recipe: TraceRecipe, direction: torch.Tensor | None,
    alphas: tuple[float, ...], seed: int = 0,
) -> dict[str, float | int]:
    """Teacher-forced: P(slip) at careless decision points, with and without ``direction``
    (``checks.regime_direction`` on the fitting half), tested on the other half."""
    tok = model.tokenizer
    fit_ids = fit_half([s.problem.id for s in samples], seed)
    test = [p for p in checks.decision_points(samples, recipe)
            if p.sample.problem.id not in fit_ids and p.sample.labels.regime == "careless"]
    if not test or direction is None:
        return {"steer_points": len(test)}
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(direction.shape, generator=gen)
    rand = rand / rand.norm(dim=-1, keepdim=True) * direction.norm(dim=-1, keepdim=True)
    seqs = [p.sample.tokens[: p.pos + 1] for p in test]
    pos = [p.pos for p in test]
    wrong = torch.tensor(tok.convert_tokens_to_ids([p.wrong for p in test]))
    rows = torch.arange(len(test))

    def p_slip(add) -> float:
        return float(next_token_probs(model, seqs, pos, add)[rows, wrong].mean())

    out = {"steer_points": len(test), "steer_p_slip_careless": p_slip(None)}
    for a in alphas:
        out[f"steer_p_slip_careless_alpha{a:g}"] = p_slip(a * direction)
        out[f"steer_p_slip_careless_random_alpha{a:g}"] = p_slip(a * rand)
    return out


def evaluate(
    cfg: EvalConfig, out: str | Path, model: TransformerBridge | None = None, progress: bool = False,
) -> dict:
    """The full behaviour report (see the module docstring); keys are stable for ``--json``.

    The traces go through the trace store: generated into ``out/greedy`` and ``out/sampled`` (resumed
    when already there), then read back.
    """
    model = model if model is not None else load_model(cfg.model)
    runs = generate_runs(cfg, out, model, progress)
    g, s = behaviour(runs["greedy"]), behaviour(runs["sampled"])
    report: dict = {
        "config": asdict(cfg),
        "greedy_accuracy": g["accuracy"],
        "greedy_careless_share": g["careless_share"],
        "sampled_accuracy": s["accuracy"],
        **{k: v for k, v in s.items() if k != "accuracy"},
        "trace_digests": {name: trace_digests(samples) for name, samples in runs.items()},
    }
    recipe, sampled = recipe_of(resolve(cfg.model)), runs["sampled"]
    direction = checks.regime_direction(model, sampled, recipe, fit_half([s.problem.id for s in sampled],
                                                                                 cfg.seed))
    report.update(probe_report(model, sampled, planted_of(resolve(cfg.model))))
    report.update(steering_look(model, sampled, recipe, direction, cfg.steer_alphas, seed=cfg.seed))
    report.update(checks.slip_prob(model, sampled, recipe))
    report.update(checks.anticipation(model, sampled, recipe))
    report.update(exit_report(Path(out) / "sampled", model, NeatConfig(seed=cfg.seed)))
    exit_set = NeuronSet.from_pairs([tuple(p) for p in report["exit_selected"]], method="neat")
    report.update(checks.planted_overlap(cfg.model, exit_set, what="exit", prefix="exit"))
    if cfg.lift_alphas:
        run_cfg, steer_dir = cfg.runs()["sampled"], Path(out) / "steer"
        report.update(checks.steer_lift(model, sampled, run_cfg, steer_dir, cfg.lift_alphas, cfg.seed))
        if cfg.direction_alphas:
            report.update(checks.direction_lift(model, sampled, run_cfg, steer_dir, direction, cfg.direction_alphas,
                                                cfg.seed))
    return report
