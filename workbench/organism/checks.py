"""Teacher-forced checks of the organism that need its planted recipe, which no analysis of a run measures.

* ``slip_prob``: teacher-forced P(planted slip) at the decision points of careless traces. A value
  near 1 means the slip is decided and no push can tip it; well inside (0, 1) leaves room to steer.
* ``anticipation``: does a probe on activations at a decision point predict a catch (or, at the
  answer point, an overthinking episode) before it happens? Beside the AUROC of the recipe's own
  probabilities, the ceiling any predictor reading the same cues can reach.
* ``regime_direction``: the careful-minus-careless mean at slip decision points (for ``steering_look``).
* ``planted_overlap``: how many of a neuron set are a planted read-out.

Each paper's claim is measured elsewhere, once: AdaRAS's and NEAT's analyses by ``workbench validate``
(``probe_report``, ``exit_report``), steering while sampling by the study harness (``workbench run``).

Example:
    >>> planted_overlap("organism", NeuronSet.from_pairs([(3, 26), (3, 27)]), what="exit", prefix="exit")
    {'exit_planted_hits': 1, 'exit_planted_precision': 0.5, 'exit_planted_recall': 0.0625}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from workbench.neurons import NeuronSet
from workbench.organism.task import CARELESS_OPENERS, STEP_ENDS, Step, TraceRecipe, slip_value
from workbench.organism.tokenizer import SPACE
from workbench.probes import auroc, probe_auroc
from workbench.readout import gather_positions, next_token_probs


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
