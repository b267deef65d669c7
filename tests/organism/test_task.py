"""The organism task: rendering, tokenizing and reading traces back agree on every label."""

from __future__ import annotations

import dataclasses
import random

import pytest

from workbench.organism.labeler import label_tokens
from workbench.organism.task import (
    Problem,
    TraceRecipe,
    is_held_out,
    render_trace,
    sample_problem,
    sample_problems,
    units_sum,
)
from workbench.organism.tokenizer import build_tokenizer

TOK = build_tokenizer()


def rendered(n: int, seed: int, recipe: TraceRecipe | None = None):
    rng = random.Random(seed)
    for _ in range(n):
        yield render_trace(sample_problem(rng), rng, recipe)


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

    def test_labels_point_at_the_right_tokens(self):
        for trace in rendered(300, seed=2):
            toks, lab = tokens_of(trace.text), trace.labels
            assert toks[lab.think_start] == "▁<think>" and toks[lab.think_end] == "▁</think>"
            assert toks[lab.answer_reached].removeprefix("▁") == str(lab.answer)[-1]
            for slip in lab.slips:
                step = lab.steps[slip.step]
                digit = slip.token - step.start
                assert str(step.a + step.b)[digit] != toks[slip.token].removeprefix("▁")

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

    def test_answer_is_off_by_the_uncaught_slips_and_wrong_oscillations(self):
        for trace in rendered(1000, seed=4):
            lab = trace.labels
            dropped = sum(not s.caught for s in lab.slips)
            extra = sum(r.wrong for r in lab.repeats)
            assert lab.answer == Problem.from_id(lab.problem_id).answer + 10 * (extra - dropped)

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


class TestLabeler:
    """Reading tokens back gives exactly the labels the renderer planted."""

    def test_agrees_with_the_renderer(self):
        for trace in rendered(2000, seed=7):
            got = label_tokens(Problem.from_id(trace.labels.problem_id), tokens_of(trace.text))
            assert dataclasses.asdict(got) == dataclasses.asdict(trace.labels)

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
