"""NEAT's graded exit on the organism: it exits, suppresses only at step boundaries, and is inert
when its thresholds never fire."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_method, traces_by_id
from workbench.evaluation.methods import MethodContext
from workbench.model import set_threads
from workbench.neat import NeatConfig, rank_exit
from workbench.neat.exit_control import NeatExit
from workbench.traces import TraceRunConfig, run_traces

CFG = TraceRunConfig(problems=12, samples=2, temperature=1.0, seed=3)
SEPARATORS = {";", "▁;", ",", "▁,"}


@pytest.fixture(scope="module")
def analysis(organism, organism_run, tmp_path_factory):
    """An analysis run with NEAT's exit neurons (ranked on problems other than CFG's)."""
    set_threads(1)
    run = tmp_path_factory.mktemp("exitctl") / "analysis"
    shutil.copytree(organism_run, run)
    rank_exit(run, model=organism, config=NeatConfig(calibration_traces=32, agreement_traces=0))
    return run


@pytest.fixture(scope="module")
def vanilla(organism, tmp_path_factory):
    out = tmp_path_factory.mktemp("exitctl") / "vanilla"
    run_traces(out, config=CFG, progress=False, model=organism)
    return traces_by_id(out)


def generate(organism, analysis, tmp_path, method) -> dict[str, dict]:
    return run_method(organism, method, CFG, tmp_path / "run", analysis)


class TestNeatExit:
    """The controller's three actions on generated traces, paired with vanilla by seed."""

    def test_thresholds_that_always_fire_exit_early_and_the_answer_is_still_written(
        self, organism, analysis, vanilla, tmp_path
    ):
        got = generate(organism, analysis, tmp_path, NeatExit(tau_sim=-1.0, tau_mag=0.0, tau_sup=-1.0, min_thinking=2))
        assert got.keys() == vanilla.keys()
        for key, r in got.items():
            assert r["thinking_tokens"] == 2 < vanilla[key]["thinking_tokens"]
            assert r["think_end"] is not None and r["answer_start"] is not None and r["finish_reason"] == "eos"
            assert len(r["token_ids"]) > r["answer_start"]  # an answer is written after the forced marker
            exits = [e for e in r["events"] if e["kind"] == "neat_exit"]
            assert len(exits) == 1 and exits[0]["step"] == 2
            assert {"rho", "phi", "sim", "mag"} <= exits[0]["payload"].keys()
        # Cut off inside its four opener words, the organism still answers with a number first in most traces (23
        # of 24 here on v4; v2: all); the other opens its answer with a second `</think>`, which the organism's
        # grader (the answer's first word) reads as no answer.
        assert sum(r["extracted"] is not None for r in got.values()) > len(got) // 2
        mean = sum(r["thinking_tokens"] for r in got.values()) / len(got)
        assert mean < sum(r["thinking_tokens"] for r in vanilla.values()) / len(vanilla)

    def test_thresholds_that_never_fire_reproduce_vanilla_token_for_token(self, organism, analysis, vanilla, tmp_path):
        got = generate(organism, analysis, tmp_path, NeatExit(tau_sim=1.0, tau_mag=1e9, tau_sup=1.0))
        for key, r in got.items():
            assert r["token_ids"] == vanilla[key]["token_ids"] and r["events"] == []

    def test_suppress_only_bans_at_every_step_boundary_and_never_exits(self, organism, analysis, vanilla, tmp_path):
        got = generate(organism, analysis, tmp_path, NeatExit(mode="suppress_only", tau_sup=-1.0))
        tok = organism.tokenizer
        wait_ids = set(tok.convert_tokens_to_ids(["wait", "▁wait"]))
        n_bans = 0
        for r in got.values():
            assert {e["kind"] for e in r["events"]} <= {"neat_suppress", "ban"}
            strs = tok.convert_ids_to_tokens(r["token_ids"])
            bans = [e for e in r["events"] if e["kind"] == "ban"]
            for e in bans:
                assert strs[r["prompt_len"] + e["step"] - 1] in SEPARATORS  # the step's last token ends a step
                assert set(e["payload"]["tokens"]) == wait_ids
            end = r["think_end"] if r["think_end"] is not None else len(strs)
            thinking = strs[r["think_start"] + 1 : end]
            assert len(bans) == sum(s in SEPARATORS for s in thinking)  # every boundary while thinking
            n_bans += len(bans)
        assert n_bans > 0

    def test_graded_exit_only_where_both_signals_pass(self, organism, analysis, tmp_path):
        spec = NeatExit(tau_sim=0.5, tau_mag=0.5, tau_sup=0.2, signal="aligned", calibrate="prefill")
        got = generate(organism, analysis, tmp_path, spec)
        fired = [e for r in got.values() for e in r["events"] if e["kind"] == "neat_exit"]
        assert fired
        for e in fired:
            p = e["payload"]
            assert p["rule"] == "prefill" or (p["sim"] > 0.5 and p["mag"] > p["tau_mag"] >= 0.5)
        for e in (e for r in got.values() for e in r["events"] if e["kind"] == "neat_suppress"):
            assert 0.2 < e["payload"]["sim"] <= 0.5 and e["payload"]["mag"] > e["payload"]["tau_mag"]


class TestSpec:
    """Study-file parameters and clear errors."""

    def test_study_parameters_become_a_hashable_spec(self):
        spec = NeatExit(**{"reflection_words": ["wait", "hmm"], "mode": "exit_only", "step_separators": ["\n"]})
        assert spec.reflection_words == ("wait", "hmm") and hash(spec) == hash(NeatExit(
            reflection_words=("wait", "hmm"), mode="exit_only", step_separators=("\n",)))

    @pytest.mark.parametrize("bad", [{"mode": "exit"}, {"signal": "cos"}, {"tau_sup": 0.7}, {"reflection_words": []},
                                     {"calibrate": "quantile"}, {"min_thinking": -1}])
    def test_bad_parameters_are_refused(self, bad):
        with pytest.raises(ValueError, match="NeatExit"):
            NeatExit(**bad)

    def test_missing_analysis_files_name_the_file_and_the_command(self, organism, tmp_path):
        with pytest.raises(ValueError, match=r"exit\.json.*workbench rank --method exit"):
            NeatExit().build(MethodContext(organism, tmp_path, CFG))
