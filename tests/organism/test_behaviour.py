"""The shipped organism meets its behaviour targets on held-out problems (issue: foundation)."""

from __future__ import annotations

import pytest

from workbench.organism.evaluate import EvalConfig, evaluate

FAILURE_RATES = ("reflection_rate", "uncaught_slip_rate", "oscillation_rate", "overthinking_rate")


@pytest.fixture(scope="module")
def report(organism, tmp_path_factory):
    return evaluate(EvalConfig(problems=200, samples=8), tmp_path_factory.mktemp("eval"), organism)


@pytest.mark.slow
class TestTargets:
    """Greedy is careful, sampling is not, each failure shows up, and activations predict correctness."""

    def test_greedy_accuracy(self, report):
        assert report["greedy_accuracy"] >= 0.85

    def test_sampled_accuracy_in_band(self, report):
        assert 0.40 <= report["sampled_accuracy"] <= 0.85

    @pytest.mark.parametrize("rate", FAILURE_RATES)
    def test_each_failure_type_is_present(self, report, rate):
        assert report[rate] >= 0.05

    def test_early_probe_predicts_correctness(self, report):
        assert report["probe_auroc_early"] >= 0.75

    def test_early_probe_not_below_hand_features(self, report):
        assert report["probe_auroc_early"] >= report["probe_auroc_baseline"]

    def test_few_malformed_traces(self, report):
        assert report["malformed_rate"] <= 0.05 and report["length_cutoff_rate"] <= 0.01
