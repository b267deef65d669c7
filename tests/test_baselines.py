"""The early-exit and anti-reflection baselines on the organism, paired with vanilla by seed."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.conftest import run_method, traces_by_id
from workbench.baselines import AnswerConsistency, Budget, Deer, NoWait, ThinkingController, probe_answers
from workbench.traces import TraceRunConfig, run_traces

CFG = TraceRunConfig(problems=16, samples=3, temperature=1.0, seed=5)


@pytest.fixture(scope="module")
def vanilla(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines") / "vanilla"
    run_traces(out, config=CFG, progress=False, model=organism)
    return traces_by_id(out)


def generate(organism, tmp_path, method) -> dict[str, dict]:
    return run_method(organism, method, CFG, tmp_path / "run")


def thinking(tok, r) -> list[str]:
    end = r["think_end"] if r["think_end"] is not None else len(r["token_ids"])
    return tok.convert_ids_to_tokens(r["token_ids"][r["think_start"] + 1 : end])


def events(r, kind: str) -> list[dict]:
    return [e for e in r["events"] if e["kind"] == kind]


class TestNoWaitAndBudget:
    def test_nowait_bans_the_reflection_word_at_every_thinking_step(self, organism, vanilla, tmp_path):
        tok = organism.tokenizer
        got = generate(organism, tmp_path, NoWait())
        for r in got.values():
            assert "wait" not in thinking(tok, r) and "▁wait" not in thinking(tok, r)
            if r["think_end"] is not None:  # one ban per step that chose a thinking token or the closing marker
                assert len(events(r, "ban")) == r["thinking_tokens"] + 1
        # a trace vanilla wrote without any reflection word would only differ if the ban moved the sampler
        same = [k for k, r in vanilla.items() if "▁wait" not in thinking(tok, r) and "wait" not in thinking(tok, r)]
        assert same and all(got[k]["token_ids"] == vanilla[k]["token_ids"] for k in same)

    def test_budget_caps_thinking_and_leaves_short_traces_alone(self, organism, vanilla, tmp_path):
        budget = 12
        got = generate(organism, tmp_path, Budget(max_thinking=budget))
        cut = 0
        for key, r in got.items():
            assert r["thinking_tokens"] <= budget
            if vanilla[key]["thinking_tokens"] < budget:
                assert r["token_ids"] == vanilla[key]["token_ids"] and r["events"] == []
            elif vanilla[key]["thinking_tokens"] > budget:
                assert r["thinking_tokens"] == budget and r["answer_start"] is not None
                assert events(r, "budget_exit")[0]["payload"]["thinking_tokens"] == budget
                cut += 1
        assert cut > 0

    def test_study_parameters(self):
        assert NoWait(**{"reflection_words": ["wait", "hmm"]}).reflection_words == ("wait", "hmm")
        with pytest.raises(ValueError, match="max_thinking"):
            Budget(max_thinking=-1)


class TestProbes:
    def test_batched_probes_match_probes_one_at_a_time(self, organism):
        tok = organism.tokenizer
        seqs = [tok(t).input_ids for t in ("Q: 47 + 38 = ? <think> carefully 47 + 38 = 85 ;",
                                           "Q: 47 + 38 + 25 = ? <think> carefully 47 + 38 = 85 ; 85 + 25 = 110 ;",
                                           "Q: 10 + 72 = ? <think>")]
        suffix = tok(" </think>", add_special_tokens=False).input_ids
        together = probe_answers(organism, seqs, suffix)
        for seq, got in zip(seqs, together, strict=True):
            [alone] = probe_answers(organism, [seq], suffix)
            assert got.tokens == alone.tokens and got.probe_tokens == alone.probe_tokens == len(got.tokens) + 2
            assert torch.allclose(torch.tensor(got.probs), torch.tensor(alone.probs), atol=1e-4)
        assert [a.key for a in together[:2]] == ["85", "110"]

    def test_answer_consistency_exits_when_consecutive_answers_agree(self, organism, vanilla, tmp_path):
        every = 4
        got = generate(organism, tmp_path, AnswerConsistency(every=every, agree=2))
        exits = 0
        for key, r in got.items():
            probes = events(r, "probe")
            for e in probes:  # a probe every ``every`` thinking tokens: at step every*k (the prompt ends with <think>)
                assert e["step"] % every == 0 and e["payload"]["probe_tokens"] >= 2
            answers = [e["payload"]["answer"] for e in probes]
            done = events(r, "consistency_exit")
            if done:
                exits += 1
                assert answers[-1] == answers[-2] == done[0]["payload"]["answer"] != ""
                assert all(a != b or not a for a, b in itertools.pairwise(answers[:-1]))  # the first agreement
                assert r["thinking_tokens"] == probes[-1]["step"] <= vanilla[key]["thinking_tokens"]
            else:
                assert all(a != b or not a for a, b in itertools.pairwise(answers))
        assert exits > 0

    def test_deer_exits_once_the_trial_answer_is_confident(self, organism, tmp_path):
        got = generate(organism, tmp_path, Deer(threshold=0.5))
        exits = 0
        for r in got.values():
            probes = events(r, "probe")
            assert all(e["payload"]["probe_tokens"] >= 2 for e in probes)
            done = events(r, "deer_exit")
            if done:
                exits += 1
                assert done[0]["payload"]["confidence"] > 0.5 and probes[-1]["step"] == done[0]["step"]
                assert all(e["payload"]["confidence"] <= 0.5 or not e["payload"]["answer"] for e in probes[:-1])
        assert exits > 0

    def test_probes_alone_change_nothing_but_the_events(self, organism, vanilla, tmp_path):
        got = generate(organism, tmp_path, Deer(threshold=1.0, max_probes=None))  # confidence never exceeds 1
        assert sum(len(events(r, "probe")) for r in got.values()) > len(got)
        for key, r in got.items():
            assert r["token_ids"] == vanilla[key]["token_ids"]
            assert {e["kind"] for e in r["events"]} <= {"probe"}


class TestThinkingSpan:
    def test_thinking_opens_at_a_generated_marker_and_closes_at_the_closing_one(self, organism):
        tok = organism.tokenizer
        ctrl = ThinkingController(tok)
        prompt = tok("Q: 47 + 38 = ?").input_ids
        gen = tok(" <think> carefully 47 + 38 = 85 ; </think> 85", add_special_tokens=False).input_ids
        ctrl.on_start("k")
        state = ctrl.states["k"]
        ctrl._advance(state, prompt, len(prompt))
        assert state.phase == "before"
        ctrl._advance(state, prompt + gen[:3], len(prompt))
        assert state.phase == "thinking" and state.start == len(prompt) + 1
        assert state.thinking_tokens(len(prompt) + 3) == 2
        ctrl._advance(state, prompt + gen, len(prompt))
        assert state.phase == "after"
