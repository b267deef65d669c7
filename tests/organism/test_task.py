"""The organism task: rendering, tokenizing and reading traces back agree on every label."""

from __future__ import annotations

import dataclasses
import random

import pytest

from workbench.organism.labeler import label_tokens
from workbench.organism.task import (
    RECIPE_V2,
    RECIPE_V3,
    Problem,
    TraceRecipe,
    apply,
    difficulty,
    is_held_out,
    render_trace,
    sample_problem,
    sample_problems,
    units_sum,
)
from workbench.organism.tokenizer import build_tokenizer

TOK = build_tokenizer()


def rendered(n: int, seed: int, recipe: TraceRecipe | None = None, op: str = "+"):
    rng = random.Random(seed)
    for _ in range(n):
        yield render_trace(sample_problem(rng, op=op), rng, recipe)


RECIPES = [pytest.param(None, "+", id="v1"), pytest.param(RECIPE_V2, "+", id="v2-add"),
           pytest.param(RECIPE_V2, "-", id="v2-sub"), pytest.param(RECIPE_V3, "+", id="v3-add"),
           pytest.param(RECIPE_V3, "-", id="v3-sub")]


def tokens_of(text: str) -> list[str]:
    return TOK.convert_ids_to_tokens([*TOK(text).input_ids, TOK.eos_token_id])


class TestTokenizer:
    """Exact round trip, one token per digit."""

    def test_round_trip(self):
        for trace in rendered(200, seed=1):
            ids = TOK(trace.text).input_ids
            assert TOK.decode(ids, skip_special_tokens=True) == trace.text
            assert TOK.unk_token_id not in ids

    def test_digits_are_single_tokens(self):
        assert TOK.convert_ids_to_tokens(TOK("Q: 107", add_special_tokens=False).input_ids) == ["Q:", "▁1", "0", "7"]


class TestRenderer:
    """Planted failures sit where the labels say, and follow the recipe."""

    @pytest.mark.parametrize(("recipe", "op"), RECIPES)
    def test_labels_point_at_the_right_tokens(self, recipe, op):
        for trace in rendered(300, seed=2, recipe=recipe, op=op):
            toks, lab = tokens_of(trace.text), trace.labels
            assert toks[lab.think_start] == "▁<think>" and toks[lab.think_end] == "▁</think>"
            assert toks[lab.answer_reached].removeprefix("▁") == str(lab.answer)[-1]
            for slip in lab.slips:
                step = lab.steps[slip.step]
                digit = slip.token - step.start
                assert str(apply(op, step.a, step.b))[digit] != toks[slip.token].removeprefix("▁")

    def test_slips_only_on_big_carries_of_careless_traces_unless_caught(self):
        recipe = TraceRecipe(careless_slip_rate=1.0)
        for trace in rendered(500, seed=3, recipe=recipe):
            for slip in trace.labels.slips:
                step = trace.labels.steps[slip.step]
                assert units_sum(step.a, step.b) >= recipe.big_carry_threshold
                assert trace.labels.regime == "careless" or slip.caught
            big = [s for s in trace.labels.steps if units_sum(s.a, s.b) >= recipe.big_carry_threshold]
            if trace.labels.regime == "careless":
                assert len(trace.labels.slips) == len(big)

    @pytest.mark.parametrize(("recipe", "op"), RECIPES)
    def test_answer_is_off_by_the_uncaught_slips_and_wrong_oscillations(self, recipe, op):
        sign = 1 if op == "+" else -1  # a dropped carry loses ten; a forgotten borrow keeps it
        for trace in rendered(1000, seed=4, recipe=recipe, op=op):
            lab = trace.labels
            dropped = sum(not s.caught for s in lab.slips)
            extra = sum(r.wrong for r in lab.repeats)
            assert lab.answer == Problem.from_id(lab.problem_id).answer + sign * 10 * (extra - dropped)

    def test_no_failures_when_the_recipe_plants_none(self):
        clean = TraceRecipe(careless_rate=0.0, careful_slip_rate=0.0, repeat_rate=0.0, overthink_rate=0.0)
        for trace in rendered(200, seed=5, recipe=clean):
            lab = trace.labels
            assert lab.correct and not lab.slips and not lab.repeats and lab.overthinking is None

    def test_rates_follow_the_recipe(self):
        traces = list(rendered(4000, seed=6))
        careless = sum(t.labels.regime == "careless" for t in traces) / len(traces)
        overthink = sum(t.labels.overthinking is not None for t in traces) / len(traces)
        assert abs(careless - TraceRecipe().careless_rate) < 0.03
        assert abs(overthink - TraceRecipe().overthink_rate) < 0.03


class TestRecipeV2:
    """Slips, catches and overthinking are probabilities of state, and the opener is only a cue."""

    def test_slip_and_catch_rates_follow_the_curves(self):
        traces = [t for op in "+-" for t in rendered(6000, seed=8, recipe=RECIPE_V2, op=op)]
        by_d: dict[int, list[bool]] = {}
        caught: dict[int, list[bool]] = {}
        for t in traces:
            if t.labels.latent != "careless":
                continue
            slipped = {s.step: s for s in t.labels.slips}
            for st in t.labels.steps:
                if st.difficulty >= 10:
                    by_d.setdefault(st.difficulty, []).append(st.step in slipped)
                    if st.step in slipped:
                        caught.setdefault(st.difficulty, []).append(slipped[st.step].caught)
        for d, got in by_d.items():
            assert abs(sum(got) / len(got) - RECIPE_V2.slip_prob(True, d)) < 4 * (0.25 / len(got)) ** 0.5 + 0.01
        for d in (10, 18):
            assert abs(sum(caught[d]) / len(caught[d]) - RECIPE_V2.catch_prob(True, d)) < 0.08
        opener_says_latent = [t.labels.regime == t.labels.latent for t in traces]
        assert abs(sum(opener_says_latent) / len(traces) - RECIPE_V2.cue_strength) < 0.02

    def test_careful_traces_never_slip(self):
        assert all(not t.labels.slips for t in rendered(2000, seed=9, recipe=RECIPE_V2) if t.labels.latent == "careful")

    def test_subtraction_problems(self):
        p = Problem.from_id("352-47-18")
        assert p.op == "-" and p.answer == 287 and p.prompt == "Q: 352 - 47 - 18 = ? <think>"
        assert difficulty("-", 352, 47) == 14 and difficulty("-", 305, 3) == 7  # borrow 7 from 2, none for 5-3
        with pytest.raises(ValueError, match="below zero"):
            Problem((10, 20), "-")
        for p in sample_problems(50, seed=1, held_out=True, op="-"):
            assert p.op == "-" and p.answer >= 0 and Problem.from_id(p.id) == p


class TestRecipeV3:
    """Several weak opener cues; a behaviour regime that the planted read-out's training can set apart from them."""

    def test_each_cue_word_follows_the_latent_at_the_cue_strength(self):
        traces = list(rendered(4000, seed=10, recipe=RECIPE_V3))
        assert all(len(t.labels.cues) == RECIPE_V3.cue_words for t in traces)
        agree = [(c in ("quickly", "roughly")) == (t.labels.latent == "careless")
                 for t in traces for c in t.labels.cues]
        assert abs(sum(agree) / len(agree) - RECIPE_V3.cue_strength) < 0.015
        assert all(t.labels.regime == ("careless" if t.labels.cues[0] in ("quickly", "roughly") else "careful")
                   for t in traces)

    def test_behaviour_overrides_what_follows_the_cues_only(self):
        rng = random.Random(11)
        for careless in (True, False):
            traces = [render_trace(sample_problem(rng), rng, RECIPE_V3, behaviour=careless) for _ in range(1500)]
            assert {t.labels.latent for t in traces} == {"careless" if careless else "careful"}
            assert bool(sum(bool(t.labels.slips) for t in traces)) == careless  # careful traces never slip
            # the cues are still drawn from the usual latent: about half say careless, whatever the behaviour
            share = sum(t.labels.careless_cues for t in traces) / (RECIPE_V3.cue_words * len(traces))
            assert abs(share - 0.5) < 0.04
            commas = [w == "," for t in traces for w in t.words]
            rate = RECIPE_V3.comma_careless if careless else RECIPE_V3.comma_careful
            steps = [w in (";", ",") for t in traces for w in t.words]
            assert abs(sum(commas) / sum(steps) - rate) < 0.03

    def test_a_recipe_needs_a_cue_word(self):
        with pytest.raises(ValueError, match="cue_words"):
            dataclasses.replace(RECIPE_V3, cue_words=0)


class TestLabeler:
    """Reading tokens back gives exactly the labels the renderer planted."""

    @pytest.mark.parametrize(("recipe", "op"), RECIPES)
    def test_agrees_with_the_renderer(self, recipe, op):
        for trace in rendered(2000, seed=7, recipe=recipe, op=op):
            got = label_tokens(Problem.from_id(trace.labels.problem_id), tokens_of(trace.text), recipe)
            # The latent regime is the renderer's secret; a reader of the tokens sees the opener only.
            assert dataclasses.asdict(got) == dataclasses.asdict(dataclasses.replace(trace.labels, latent=None))

    def test_flags_other_arithmetic_errors_and_truncation(self):
        p = Problem((47, 38, 25))
        got = label_tokens(p, tokens_of(p.prompt + " carefully 47 + 38 = 86 ; 86 + 25 = 111 ; </think> 111"))
        assert [s.kind for s in got.slips] == ["other"] and not got.correct
        cut = label_tokens(p, tokens_of(p.prompt + " carefully 47 + 38 = 85 ; 85 +"))
        assert cut.answer is None and not cut.well_formed and not cut.correct


class TestProblems:
    def test_split_is_disjoint_and_stable(self):
        held = sample_problems(200, seed=0, held_out=True)
        train = sample_problems(200, seed=0, held_out=False)
        assert all(is_held_out(p) for p in held) and not any(is_held_out(p) for p in train)
        assert not {p.id for p in held} & {p.id for p in train}
        assert [p.id for p in held] == [p.id for p in sample_problems(200, seed=0, held_out=True)]

    @pytest.mark.parametrize("bad", ["", "47+x", "47"])
    def test_bad_ids_are_refused(self, bad):
        with pytest.raises(ValueError, match=r"operand|problem id"):
            Problem.from_id(bad)
