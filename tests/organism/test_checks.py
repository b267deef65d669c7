"""The organism's teacher-forced checks: halves, decision points, planted overlap, and v1's saturated slips."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workbench.organism.checks import decision_points, slip_prob
from workbench.organism.labeler import label_tokens
from workbench.organism.task import RECIPE_V2, Problem, TraceRecipe
from workbench.organism.tokenizer import build_tokenizer
from workbench.splits import fit_half

TOK = build_tokenizer()


def traced(text: str, recipe: TraceRecipe | None = None):
    p = Problem.from_id(text.split("Q: ")[1].split(" = ")[0].replace(" ", ""))
    ids = TOK(text).input_ids
    return SimpleNamespace(problem=p, tokens=ids, labels=label_tokens(p, TOK.convert_ids_to_tokens(ids), recipe))


def test_fit_half_is_a_stable_half():
    ids = [f"p{i}" for i in range(11)]
    assert fit_half(ids, 3) == fit_half(list(reversed(ids)), 3) and len(fit_half(ids, 3)) == 5
    assert fit_half(ids, 3) != fit_half(ids, 4)


@pytest.mark.parametrize(("text", "wrong", "digit"), [
    ("Q: 47 + 38 = ? <think> quickly 47 + 38 = 85 ; </think> 85", "▁7", 0),  # 85 -> 75: the first digit
    ("Q: 352 - 47 = ? <think> quickly 352 - 47 = 305 ; </think> 305", "1", 1),  # 305 -> 315: the second
])
def test_decision_points_name_the_digit_a_slip_changes(text, wrong, digit):
    s = traced(text, RECIPE_V2)
    (point,) = decision_points([s], RECIPE_V2)
    strs = TOK.convert_ids_to_tokens(s.tokens)
    assert point.wrong == wrong and strs[point.pos + 1] != wrong
    assert point.pos + 1 - point.step.start == digit


def test_v1_slips_are_decided(organism_v1):
    """The independent study's finding: given a careless opener, v1 drops the carry with P ~ 1."""
    texts = [f"Q: {a} + {b} = ? <think> quickly {a} + {b} = {a + b} ; </think> {a + b}"
             for a, b in ((47, 38), (59, 26), (68, 17), (39, 46))]
    got = slip_prob(organism_v1, [traced(t) for t in texts], TraceRecipe())
    assert got["slip_points_careless"] == 4 and got["slip_prob_careless"] > 0.9


def test_planted_overlap_counts_the_readout_among_ranked_neurons(tmp_path):
    import json

    from workbench.neurons import NeuronSet
    from workbench.organism.checks import _posterior_careless, planted_overlap

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "organism.json").write_text(json.dumps({"config": {}, "planted_regime_neurons": {
        "hook": "blocks.2.mlp.hook_post", "indices": [3, 7, 9, 11], "careful_value": 1.0}}))
    ranked = NeuronSet.from_pairs([(2, 7), (2, 11), (1, 3), (2, 5)])
    assert planted_overlap(tmp_path, ranked) == {"steer_planted_hits": 2, "steer_planted_precision": 0.5,
                                                 "steer_planted_recall": 0.5}
    assert planted_overlap("organism-v1", ranked) == {}
    # every opener cue counts in what the cues say: two careless words of three beat one
    recipe = TraceRecipe(cue_strength=0.8, careless_rate=0.5, cue_words=3)
    labels = SimpleNamespace(cues=["quickly", "roughly", "carefully"], regime="careless", think_start=0)
    assert _posterior_careless(labels, 1, recipe, ["<think>"]) == pytest.approx(0.8)
    labels.cues = ["quickly"]
    assert _posterior_careless(labels, 1, recipe, ["<think>"]) == pytest.approx(0.8)
    labels.cues = ["quickly", "roughly", "slowly", "quickly"]
    want = 0.8**3 * 0.2 / (0.8**3 * 0.2 + 0.2**3 * 0.8)
    assert _posterior_careless(labels, 1, recipe, ["<think>"]) == pytest.approx(want)
