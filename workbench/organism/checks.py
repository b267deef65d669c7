"""Compact checks of each paper's claim against the organism's planted truth, for choosing a recipe.

The analyses issue builds these properly (``workbench/adaras``, ``neat``, ``neureasoner``); here
each is the smallest honest version, always beside its control, on problems split in halves: what
is fitted on one half is measured on the other.

* ``slip_prob``: teacher-forced P(planted slip) at the decision points of careless traces. A value
  near 1 means the slip is decided and no push can tip it; well inside (0, 1) leaves room to steer.
* ``steer_lift`` (AdaRAS): polarity-filtered mean-difference neurons, added while sampling; the
  paired lift in accuracy beside 50 random neurons with the same magnitudes.
* ``anticipation``: does a probe on activations at a decision point predict a catch (or, at the
  answer point, an overthinking episode) before it happens? Beside the AUROC of the recipe's own
  probabilities, the ceiling any predictor reading the same cues can reach.
* ``exit_within3`` (NEAT) is measured by ``workbench.neat.exit_report`` on the same run directory.

Example:
    >>> fit = fit_half(["a", "b", "c", "d"], seed=0)
    >>> len(fit)
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from transformer_lens.model_bridge import TransformerBridge

from workbench.adaras import AdarasConfig, rank_rcn_arrays
from workbench.engine import NeuronEdit
from workbench.neurons import NeuronSet
from workbench.organism.task import CARELESS_OPENERS, STEP_ENDS, Step, TraceRecipe, slip_value
from workbench.organism.tokenizer import SPACE
from workbench.probes import auroc, probe_auroc
from workbench.readout import gather_positions, next_token_probs, token_activations
from workbench.splits import fit_half

STEER_NEURONS, RANDOM_DRAWS = 50, 3


@dataclass(frozen=True)
class DecisionPoint:
    """Where a planted slip is decided: ``pos``'s logits choose the digit that ``wrong`` would change."""

    sample: object
    step: Step
    pos: int
    wrong: str  # the token string of the slipped digit


def decision_points(samples, recipe: TraceRecipe) -> list[DecisionPoint]:
    """Every first attempt at a step where the recipe can plant a slip, with the token a slip would write."""
    points = []
    for s in samples:
        for st in s.labels.steps:
            pos = st.decision_position()
            if not recipe.slip_candidate(st.difficulty) or pos >= len(s.tokens):
                continue
            wrong = slip_value(st.op, st.a, st.b)
            digit = pos + 1 - st.start
            if digit >= len(str(wrong)):
                continue
            points.append(DecisionPoint(s, st, pos, (SPACE if digit == 0 else "") + str(wrong)[digit]))
    return points


def slip_prob(model: TransformerBridge, samples, recipe: TraceRecipe) -> dict[str, float | int]:
    """Mean teacher-forced P(slip) at the decision points of careless and careful traces (by opener)."""
    tok = model.tokenizer
    out: dict[str, float | int] = {}
    points = decision_points(samples, recipe)
    for regime in ("careless", "careful"):
        pts = [p for p in points if p.sample.labels.regime == regime]
        out[f"slip_points_{regime}"] = len(pts)
        if not pts:
            out[f"slip_prob_{regime}"] = float("nan")
            continue
        probs = next_token_probs(model, [p.sample.tokens[: p.pos + 1] for p in pts], [p.pos for p in pts])
        wrong = torch.tensor(tok.convert_tokens_to_ids([p.wrong for p in pts]))
        out[f"slip_prob_{regime}"] = float(probs[torch.arange(len(pts)), wrong].mean())
    return out


def _posterior_careless(labels, upto: int, recipe: TraceRecipe, tokens_strs: list[str]) -> float:
    """P(careless | opener cues, step separators before ``upto``) under the recipe: what the cues say."""
    prior = recipe.careless_rate
    lik = {True: 1.0, False: 1.0}
    # Every opener cue word (v3 writes several); traces stored before cues were recorded have the regime only.
    cues_careless = [c in CARELESS_OPENERS for c in labels.cues] or [labels.regime == "careless"]
    for careless in (True, False):
        for cue_careless in cues_careless:
            cue = recipe.cue_strength if cue_careless == careless else 1 - recipe.cue_strength
            lik[careless] *= max(cue, 1e-9)
        comma = recipe.comma_careless if careless else recipe.comma_careful
        for t in tokens_strs[labels.think_start + 1 : upto]:
            body = t.removeprefix(SPACE)
            if body in STEP_ENDS:
                lik[careless] *= comma if body == STEP_ENDS[1] else 1 - comma
    num = prior * lik[True]
    return num / (num + (1 - prior) * lik[False])


def anticipation(model: TransformerBridge, samples, recipe: TraceRecipe) -> dict[str, float | int]:
    """Probes on activations at decision points for what follows, beside the recipe's ceiling."""
    tok = model.tokenizer
    out: dict[str, float | int] = {}
    # Catch: at a slip's decision point (the position whose logits chose the wrong digit), will `wait`
    # follow the step?
    slips = [(s, sl) for s in samples for sl in s.labels.slips if sl.kind != "other" and sl.token >= 1]
    y = np.array([sl.caught for _, sl in slips])
    out["anticipation_catch_events"] = len(slips)
    if len(np.unique(y)) == 2 and len(slips) >= 20:
        pos = [sl.token - 1 for _, sl in slips]
        x = gather_positions(model, [s.tokens[: p + 1] for (s, _), p in zip(slips, pos, strict=True)], pos)
        groups = np.array([s.problem.id for s, _ in slips])
        out["anticipation_auroc_catch"] = probe_auroc(x.flatten(1).numpy(), y, groups).auroc
        # Where careful traces never slip (v2), every slip is a careless one, whatever the opener says.
        ceiling = [recipe.catch_prob(s.labels.regime == "careless" or recipe.careful_slip_rate == 0,
                                     s.labels.steps[sl.step].difficulty) for s, sl in slips]
        out["anticipation_ceiling_catch"] = auroc(y, np.array(ceiling))
    # Overthinking: at the answer point, will redundant checks follow?
    done = [s for s in samples if s.labels.answer_reached is not None and s.labels.think_start is not None]
    y = np.array([s.labels.overthinking is not None for s in done])
    out["anticipation_overthink_events"] = len(done)
    if len(np.unique(y)) == 2:
        pos = [s.labels.answer_reached for s in done]
        x = gather_positions(model, [s.tokens[: p + 1] for s, p in zip(done, pos, strict=True)], pos)
        groups = np.array([s.problem.id for s in done])
        out["anticipation_auroc_overthink"] = probe_auroc(x.flatten(1).numpy(), y, groups).auroc
        ceiling = []
        for s, p in zip(done, pos, strict=True):
            post = _posterior_careless(s.labels, p, recipe, tok.convert_ids_to_tokens(s.tokens))
            ceiling.append(post * recipe.overthink_prob(True) + (1 - post) * recipe.overthink_prob(False))
        out["anticipation_ceiling_overthink"] = auroc(y, np.array(ceiling))
    out["anticipation_auroc"] = out.get("anticipation_auroc_catch", float("nan"))
    return out


def rcn_neurons(model: TransformerBridge, samples, k: int = STEER_NEURONS) -> NeuronSet:
    """AdaRAS's ranking (``workbench.adaras``) on each sample's mean activation over its thinking span."""
    usable = [s for s in samples if s.labels.think_start is not None]
    means = np.empty((len(usable), model.cfg.n_layers, model.cfg.d_mlp), dtype=np.float32)
    for rows, acts in token_activations(model, [s.tokens for s in usable]):
        for r, a in zip(rows, acts, strict=True):
            s = usable[r]
            end = s.labels.think_end if s.labels.think_end is not None else len(s.tokens)
            means[r] = a[s.labels.think_start + 1 : end].mean(0).reshape(model.cfg.n_layers, -1).numpy()
    correct, problems = np.array([s.labels.correct for s in usable]), np.array([s.problem.id for s in usable])
    return rank_rcn_arrays(means, correct, problems, AdarasConfig(k=k), provenance="organism claim check")


def _per_problem_accuracy(samples, ids: set[str]) -> dict[str, float]:
    acc: dict[str, list[bool]] = {}
    for s in samples:
        if s.problem.id in ids:
            acc.setdefault(s.problem.id, []).append(s.labels.correct)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def _problem_diffs(base, steered, ids: set[str]) -> np.ndarray:
    """Per problem in ``ids`` (sorted), steered accuracy minus base accuracy over its samples."""
    a, b = _per_problem_accuracy(base, ids), _per_problem_accuracy(steered, ids)
    return np.array([b[k] - a[k] for k in sorted(a)])


def _mean_ci(diff: np.ndarray, seed: int) -> tuple[float, tuple[float, float]]:
    """The mean of per-problem differences and its bootstrap 95% CI (resampling problems)."""
    if len(diff) < 2 or np.all(diff == diff[0]):
        return float(diff.mean()) if len(diff) else float("nan"), (float(diff.mean()), float(diff.mean()))
    ci = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return float(diff.mean()), (float(ci.low), float(ci.high))


def paired_lift(base, steered, ids: set[str], seed: int) -> tuple[float, tuple[float, float]]:
    """Mean accuracy difference over problems in ``ids`` and its bootstrap 95% CI (resampling problems)."""
    return _mean_ci(_problem_diffs(base, steered, ids), seed)


def _steered(model: TransformerBridge, run_cfg, out: Path, edit: NeuronEdit) -> list:
    """The sampled run again, with ``edit``, through its own run directory; read back."""
    from workbench.organism.evaluate import load_samples
    from workbench.traces import run_traces

    run_traces(run_cfg, out, progress=False, model=model, edits=[edit])
    return load_samples(out)


def steer_lift(
    model: TransformerBridge, sampled, run_cfg, out: Path, alphas: tuple[float, ...], seed: int,
) -> dict:
    """AdaRAS steering while sampling, fitted on one half of the problems and measured on the other.

    ``run_cfg`` is the sampled run's config: every steered run uses the same problems and seeds, so
    each (problem, sample) is paired with its unsteered twin.
    """
    fit_ids = fit_half([s.problem.id for s in sampled], seed)
    test_ids = {s.problem.id for s in sampled} - fit_ids
    try:
        neurons = rcn_neurons(model, [s for s in sampled if s.problem.id in fit_ids])
    except ValueError as exc:  # too few traces to rank neurons: say so instead of a number
        return {"steer_lift": float("nan"), "steer_note": str(exc)}
    scores = np.array(neurons.scores)
    fitted = {}
    for a in alphas:
        steered = _steered(model, run_cfg, out / f"steer-alpha{a:g}",
                           NeuronEdit(neurons, tuple(a * scores), name="adaras"))
        fitted[a] = (steered, paired_lift(sampled, steered, fit_ids, seed)[0])
    alpha = max(alphas, key=lambda a: fitted[a][1])
    lift, ci = paired_lift(sampled, fitted[alpha][0], test_ids, seed)
    report = {
        "steer_alpha": alpha, "steer_lift": lift, "steer_lift_ci": list(ci), **planted_overlap(run_cfg.model, neurons),
        "steer_fit_lifts": {f"{a:g}": fitted[a][1] for a in alphas},
        "steer_layers": sorted(set(neurons.layers)),
        "steer_layer_counts": {str(layer): neurons.layers.count(layer) for layer in sorted(set(neurons.layers))},
    }
    # Control: random neurons, the same per-neuron magnitudes (random signs), paired the same way.
    n_total = model.cfg.n_layers * model.cfg.d_mlp
    rng = np.random.default_rng(seed)
    diffs = []
    for draw in range(RANDOM_DRAWS):
        idx = rng.choice(n_total, size=len(neurons), replace=False)
        rand = NeuronSet.from_flat(idx.tolist(), model.cfg.d_mlp, provenance=f"random draw {draw}")
        values = alpha * np.abs(scores) * rng.choice([-1.0, 1.0], size=len(neurons))
        steered = _steered(model, run_cfg, out / f"random{draw}-alpha{alpha:g}",
                           NeuronEdit(rand, tuple(values), name="random"))
        diffs.append(_problem_diffs(sampled, steered, test_ids))
        report[f"steer_lift_random_draw{draw}"] = float(diffs[-1].mean())
    lift, ci = _mean_ci(np.mean(diffs, axis=0), seed)
    report["steer_lift_random"], report["steer_lift_random_ci"] = lift, list(ci)
    return report


def planted_overlap(
    model: str | Path, neurons: NeuronSet, what: str = "regime", prefix: str = "steer",
) -> dict[str, float | int]:
    """How many of ``neurons`` are the planted ``what`` read-out of organism ``model`` (``"regime"``: v3's
    ``TrainConfig.knob_*``; ``"exit"``: v4's ``exit_*``), as the share of ``neurons`` (precision) and of the
    planted set (recall), keys ``{prefix}_planted_*``; empty for a model without one."""
    from workbench.model import resolve
    from workbench.organism.train import planted_of

    planted = planted_of(resolve(model), what)
    if planted is None:
        return {}
    want = set(zip(planted.layers, planted.indices, strict=True))
    hits = sum(pair in want for pair in zip(neurons.layers, neurons.indices, strict=True))
    return {f"{prefix}_planted_hits": hits, f"{prefix}_planted_precision": hits / max(1, len(neurons)),
            f"{prefix}_planted_recall": hits / len(want)}


def regime_direction(model: TransformerBridge, samples, recipe: TraceRecipe, fit_ids: set[str]) -> torch.Tensor | None:
    """Careful-minus-careless mean ``mlp.hook_post`` at the slip decision points of the fitting half,
    (n_layers, d_mlp); None when either regime has no decision point there."""
    pts = [p for p in decision_points(samples, recipe) if p.sample.problem.id in fit_ids]
    by_regime = {r: [p for p in pts if p.sample.labels.regime == r] for r in ("careful", "careless")}
    if not all(by_regime.values()):
        return None

    def acts(ps):
        return gather_positions(model, [p.sample.tokens[: p.pos + 1] for p in ps], [p.pos for p in ps])

    return acts(by_regime["careful"]).mean(0) - acts(by_regime["careless"]).mean(0)


def direction_lift(
    model: TransformerBridge, sampled, run_cfg, out: Path, direction: torch.Tensor | None,
    alphas: tuple[float, ...], seed: int,
) -> dict:
    """A positive control for ``steer_lift``: ``regime_direction`` (fitted on the fitting half, every
    neuron of every layer) added while sampling; alpha chosen on the fitting half, the paired lift
    measured on the other. It says whether *some* neuron direction lifts accuracy, whatever the
    AdaRAS ranking finds."""
    if direction is None:
        return {"steer_direction_lift": float("nan")}
    fit_ids = fit_half([s.problem.id for s in sampled], seed)
    test_ids = {s.problem.id for s in sampled} - fit_ids
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    every = NeuronSet.from_flat(range(n_layers * d_mlp), d_mlp,
                                provenance="careful-minus-careless at slip decision points")
    runs = {a: _steered(model, run_cfg, out / f"direction-alpha{a:g}",
                        NeuronEdit(every, tuple((a * direction).flatten().tolist()), name="direction"))
            for a in alphas}
    alpha = max(alphas, key=lambda a: paired_lift(sampled, runs[a], fit_ids, seed)[0])
    lift, ci = paired_lift(sampled, runs[alpha], test_ids, seed)
    return {"steer_direction_alpha": alpha, "steer_direction_lift": lift, "steer_direction_lift_ci": list(ci)}
