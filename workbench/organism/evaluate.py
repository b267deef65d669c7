"""Measures the organism's behaviour on held-out problems against its behaviour targets.

* greedy and sampled accuracy (sampling at ``DEFAULT_TEMPERATURE``, the documented default), generated
  through the trace store by ``run_traces`` (the study harness's sampler);
* the share of sampled traces showing each planted failure (reflection, oscillation or stagnation,
  overthinking, uncaught slips), read back from the tokens by the labeler;
* the teacher-forced checks that need the organism's recipe (``checks``): ``slip_prob``,
  ``anticipation`` (beside its ceiling) and a first look at steering: does adding the careful-minus-careless
  mean difference at the positions where a dropped carry is decided lower the probability of the slip?
  (the direction is fitted on one half of the problems and tested on the other; a random direction of
  the same norm is the control);
* composed, not measured again: ``workbench validate`` on the sampled run (``RUN/validate.json``, run
  when the run has none) is the one place the analyses' figures come from; the report carries its
  early probe and NEAT figures (``FROM_VALIDATE``) and the planted read-outs' share of the neuron sets
  the analyses wrote (``RUN/neurons/rcn.json``, ``exit.json``).

Steering while sampling is measured once, by the study harness (``workbench run``, ``studies/organism.toml``):
paired with vanilla, beside random neurons, on problems disjoint from the analysis run. Until issue #22
this report sampled steered runs itself (``steer_lift``, ``direction_lift``) and fitted its own probe and
NEAT split; the README says what each last measured.

Every trace goes through the trace store (``out/greedy``, ``out/sampled``) and is read back from it.

The full report (300 problems x 8 samples, the numbers of the model card) is a command,
``workbench organism eval --problems 300 --samples 8 --json``; its output is committed as
``docs/organism_eval.json``, and the tests read their targets from it.

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
from workbench.neurons import NeuronSet
from workbench.organism import checks
from workbench.organism.task import Problem, TraceLabels, TraceRecipe
from workbench.organism.train import recipe_of
from workbench.readout import next_token_probs
from workbench.splits import fit_half
from workbench.store import load_traces
from workbench.store.paths import RunPaths
from workbench.traces import TraceRunConfig, run_traces

DEFAULT_TEMPERATURE = 1.0
# What the report carries from ``RUN/validate.json``: the early probe beside its hand-feature baseline, and
# every key of NEAT's ``exit_report`` (``exit_*``, ``attribution_*``).
FROM_VALIDATE = ("probe_auroc_early", "probe_auroc_early_ci", "probe_auroc_early_within_careful",
                 "probe_auroc_early_within_careless", "probe_auroc_baseline", "probe_auroc_baseline_ci",
                 "probe_auroc_baseline_features", "probe_traces")
FROM_VALIDATE_PREFIXES = ("exit_", "attribution_")


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
        task: ``organism`` (addition) or ``organism-sub`` (subtraction).
        validate: run ``workbench validate`` on the sampled run (or read its ``RUN/validate.json``) and carry
            its probe and NEAT figures; False: the behaviour and the teacher-forced checks only.
    """

    model: str = "organism"
    problems: int = 300
    samples: int = 8
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 1234
    batch_size: int = 64
    steer_alphas: tuple[float, ...] = (1.0, 2.0)
    task: str = "organism"
    validate: bool = True

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
        run_traces(out / name, config=run_cfg, model=model, progress=progress)
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


def validated(run_dir: str | Path, model: TransformerBridge, progress: bool = False) -> dict:
    """``workbench validate``'s report on ``run_dir``: ``RUN/validate.json`` when the run has one (delete it
    to measure again), else ``validation.validate`` run now (which writes it)."""
    path = RunPaths(run_dir).validate
    if not path.exists():
        from workbench.validation import validate

        validate(run_dir, model=model, progress=progress)
    return json.loads(path.read_text())  # the flat keys, as written


def from_validate(validate_report: dict, run_dir: str | Path, model: str) -> dict:
    """What the behaviour report carries from ``validate_report`` (``FROM_VALIDATE``), and the planted
    read-outs' share of the neuron sets the analyses wrote into ``run_dir``: the RCNs (``rcn_planted_*``,
    the regime read-out) and NEAT's exit neurons (``exit_planted_*``)."""
    out = {k: v for k, v in validate_report.items() if k in FROM_VALIDATE or k.startswith(FROM_VALIDATE_PREFIXES)}
    paths = RunPaths(run_dir)
    for name, what in (("rcn", "regime"), ("exit", "exit")):
        if paths.neuron_set(name).exists():
            out.update(checks.planted_overlap(model, NeuronSet.load(paths.neuron_set(name)), what=what, prefix=name))
    return {"validate_report": str(paths.validate), **out}


def evaluate(
    cfg: EvalConfig, out: str | Path, model: TransformerBridge | None = None, progress: bool = False,
) -> dict:
    """The full behaviour report (see the module docstring); keys are stable for ``--json``.

    The traces go through the trace store: generated into ``out/greedy`` and ``out/sampled`` (resumed
    when already there), then read back. With ``cfg.validate`` the sampled run is validated (or its
    ``validate.json`` read) and the report carries the figures listed in ``FROM_VALIDATE``.
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
    report.update(steering_look(model, sampled, recipe, direction, cfg.steer_alphas, seed=cfg.seed))
    report.update(checks.slip_prob(model, sampled, recipe))
    report.update(checks.anticipation(model, sampled, recipe))
    if cfg.validate:
        run_dir = Path(out) / "sampled"
        report.update(from_validate(validated(run_dir, model, progress), run_dir, cfg.model))
    return report
