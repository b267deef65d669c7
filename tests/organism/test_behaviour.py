"""The shipped organism (v4), and v2 (the default before it), against their behaviour targets, read from
their committed evaluation reports, the numbers the model cards cite.

Each report is the output of ``workbench organism eval --problems 300 --samples 8 --json`` (seed 1234;
``--model organism-v2`` for v2): ``docs/organism_eval.json`` and ``docs/organism_v2_eval.json``. A fast
test ties each report to the weights shipped today: it regenerates the first problems' greedy and
sampled traces and must match the report's trace digests exactly, so new weights (or a dependency that
changes what they generate) fail here until the report is regenerated and committed.

v4's report is today's command: behaviour, the teacher-forced checks, and the early probe and NEAT
figures it carries from ``workbench validate`` on its sampled run. Steering while sampling is measured
once, by the study harness (``workbench run``; README, "Interventions on one harness"), and asserted
nowhere from a committed report. v2's report is a record of the command before issue #22 (its card
cites it) and is not regenerated: the tests read from it only what today's report still measures under
the same name and meaning; its steering keys stay in the file as history.

A target a model misses is a strict xfail carrying its measured value: it fails the suite the day the
model meets it (so the card and this file get updated), and it can never hide a regression of a
target that is met.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.model import load_model, set_threads
from workbench.organism.evaluate import EvalConfig, generate_runs, trace_digests

FAILURE_RATES = ("uncaught_slip_rate", "oscillation_rate", "overthinking_rate")
DOCS = Path(__file__).resolve().parents[2] / "docs"
REPORTS = {"organism": DOCS / "organism_eval.json", "organism-v2": DOCS / "organism_v2_eval.json"}
SLICE = 24  # problems regenerated against the report: every trace of the first 24 (216 traces, a few seconds)


def missed(measured: str):
    return pytest.mark.xfail(strict=True, reason=f"target missed by the model measured: {measured}")


def committed(model: str) -> dict:
    report = json.loads(REPORTS[model].read_text())
    cfg = report["config"]
    # The report must be the documented evaluation of this model, not a smaller or reseeded one.
    assert (cfg["model"], cfg["problems"], cfg["samples"], cfg["temperature"], cfg["seed"], cfg["task"]) == \
        (model, 300, 8, 1.0, 1234, "organism"), cfg
    return report


@pytest.fixture(scope="module")
def report() -> dict:
    return committed("organism")


@pytest.fixture(scope="module")
def report_v2() -> dict:
    return committed("organism-v2")


@pytest.mark.parametrize("model", sorted(REPORTS))
def test_the_report_is_what_the_shipped_weights_generate(model, organism, tmp_path):
    """The first problems of the committed evaluation, regenerated now: token for token the same traces."""
    set_threads(1)
    report = committed(model)
    bridge = organism if model == "organism" else load_model(model)
    runs = generate_runs(EvalConfig(model=model, problems=SLICE, samples=report["config"]["samples"]), tmp_path,
                         bridge)
    for name, samples in runs.items():
        now = trace_digests(samples)
        assert len(now) == SLICE
        assert now == {pid: report["trace_digests"][name][pid] for pid in now}, name


class TestBehaviour:
    """Greedy is careful, sampling is not, and each planted failure shows up."""

    def test_greedy_accuracy(self, report):
        assert report["greedy_accuracy"] >= 0.85

    def test_sampled_accuracy_in_band(self, report):
        assert 0.40 <= report["sampled_accuracy"] <= 0.85

    @pytest.mark.parametrize("rate", (*FAILURE_RATES, "reflection_rate"))
    def test_each_failure_type_is_present(self, report, rate):
        assert report[rate] >= 0.05

    def test_few_malformed_traces(self, report):
        assert report["malformed_rate"] <= 0.05 and report["length_cutoff_rate"] <= 0.01


class TestClaims:
    """Each paper's claim against the planted truth of v4 (data/organism/README.md)."""

    def test_slips_are_probable_not_decided(self, report):
        assert 0.3 <= report["slip_prob_careless"] <= 0.8

    def test_catches_are_anticipated(self, report):
        assert report["anticipation_auroc"] >= 0.70
        assert report["anticipation_auroc"] <= report["anticipation_ceiling_catch"] + 0.05

    def test_the_figures_come_from_validate_on_the_same_run(self, report):
        assert report["validate_report"].endswith("sampled/validate.json")
        assert report["probe_traces"] == report["config"]["problems"] * report["config"]["samples"]

    def test_early_probe(self, report):
        assert report["probe_auroc_early"] >= 0.80

    @missed("probe_auroc_early 0.828 [0.810, 0.848] vs hand features 0.856 [0.839, 0.873] (validate's probe_report)")
    def test_early_probe_beats_hand_features(self, report):
        assert report["probe_auroc_early"] > report["probe_auroc_baseline"]

    def test_adaras_ranks_the_planted_regime_neurons(self, report):
        assert report["rcn_planted_precision"] >= 0.8

    def test_the_direction_steers_at_decision_points(self, report):
        assert report["steer_p_slip_careless_alpha2"] < report["steer_p_slip_careless"] - 0.3
        assert abs(report["steer_p_slip_careless_random_alpha2"] - report["steer_p_slip_careless"]) < 0.05

    def test_neat_finds_the_planted_exit_and_its_pattern_peaks_at_the_answer_point(self, report):
        assert report["exit_planted_precision"] >= 0.8 and report["exit_planted_recall"] >= 0.5
        assert report["exit_within3"] >= 0.80 and report["exit_within3"] > report["exit_within3_random"]


class TestV2:
    """organism-v2 (data/organism-v2/README.md), the default before v4: graded state, no planted read-out."""

    def test_behaviour(self, report_v2):
        assert report_v2["greedy_accuracy"] >= 0.85 and 0.40 <= report_v2["sampled_accuracy"] <= 0.85
        for rate in FAILURE_RATES:
            assert report_v2[rate] >= 0.05, rate
        assert report_v2["malformed_rate"] <= 0.05 and report_v2["length_cutoff_rate"] <= 0.01

    @missed("reflection_rate 0.042 (caught slips in 4.2% of sampled traces)")
    def test_caught_slips_are_present(self, report_v2):
        assert report_v2["reflection_rate"] >= 0.05

    def test_slips_are_probable_and_catches_anticipated(self, report_v2):
        assert 0.3 <= report_v2["slip_prob_careless"] <= 0.8
        assert 0.70 <= report_v2["anticipation_auroc"] <= report_v2["anticipation_ceiling_catch"] + 0.05

    def test_exit_pattern_peaks_at_the_answer_point(self, report_v2):
        assert report_v2["exit_within3"] >= 0.80 and report_v2["exit_within3"] > report_v2["exit_within3_random"]

    @missed("probe_auroc_early 0.715 (labels oracle 0.739)")
    def test_early_probe(self, report_v2):
        assert report_v2["probe_auroc_early"] >= 0.80
