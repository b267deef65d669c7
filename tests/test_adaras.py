"""AdaRAS: RCN ranking recovers planted neurons, the gate round-trips, and the run-dir entry points work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from workbench.adaras.gate import Gate, GateConfig, fit_gate, select_features, youden_threshold
from workbench.adaras.ranking import (
    AdarasConfig,
    combine_spans,
    layer_distribution,
    rank_rcn_arrays,
    rank_with_controls,
    rcn_scores,
)
from workbench.adaras.regime import rcn_regime_auroc
from workbench.adaras.results import ProbeReport
from workbench.neurons import NeuronSet
from workbench.probes import auroc

D_MLP = 16
# Planted neurons as (layer, index): mean of correct traces, mean of incorrect traces.
PLANTED = {(2, 5): (2.0, -2.0), (0, 3): (-1.5, 1.5), (1, 7): (1.0, -1.0)}
SAME_SIGN = (1, 9)  # differs most of all (S = 5) but is on in both classes
SAME_SIGN_MEANS = (6.0, 1.0)


def planted_means(n_questions: int = 30, per_question: int = 8, seed: int = 0):
    """Span means with the planted neurons, per-question offsets shared by both classes, and one question
    whose traces are all correct (it must not count)."""
    rng = np.random.default_rng(seed)
    qid = np.repeat(np.arange(n_questions), per_question)
    correct = np.tile(np.arange(per_question) % 2 == 0, n_questions)
    correct[qid == n_questions - 1] = True
    means = rng.normal(0, 0.05, (len(qid), 3, D_MLP)) + rng.normal(0, 0.2, (n_questions, 1, 1))[qid]
    for (layer, index), (pos, neg) in {**PLANTED, SAME_SIGN: SAME_SIGN_MEANS}.items():
        means[correct, layer, index] += pos
        means[~correct, layer, index] += neg
    return means.astype(np.float32), correct, qid


class TestRanking:
    """Eq. 1-2 on synthetic span means with known answers."""

    def test_planted_neurons_recovered_exactly_in_order(self):
        means, correct, qid = planted_means()
        rcn = rank_rcn_arrays(means, correct, qid, AdarasConfig(k=3))
        assert list(zip(rcn.layers, rcn.indices, strict=True)) == list(PLANTED)
        assert rcn.signs == (1, -1, 1)
        assert rcn.method == "adaras" and rcn.model_shape == (3, D_MLP)
        assert rcn.params["n_questions"] == 29  # the all-correct question is left out
        np.testing.assert_allclose(rcn.scores, [4.0, -3.0, 2.0], atol=0.05)
        groups = dict(rcn.group_means)
        np.testing.assert_allclose(np.array(groups["correct"]) - groups["incorrect"], rcn.scores, atol=1e-5)

    def test_polarity_filter_drops_same_sign_neuron_and_unfiltered_control_keeps_it(self):
        means, correct, qid = planted_means()
        sets = rank_with_controls(means, correct, qid, AdarasConfig(k=4)).sets()
        rcn = list(zip(sets["rcn"].layers, sets["rcn"].indices, strict=True))
        loose = list(zip(sets["rcn-unfiltered"].layers, sets["rcn-unfiltered"].indices, strict=True))
        assert SAME_SIGN not in rcn and rcn[:3] == list(PLANTED)
        assert loose == [SAME_SIGN, *PLANTED]
        assert sets["rcn-unfiltered"].params["polarity_filter"] is False

    def test_normalised_score_ranks_sign_flips_first(self):
        # |S| / (|mu+| + |mu-|) is 1 for every sign flip and 5/7 for the same-sign neuron.
        means, correct, qid = planted_means()
        cfg = AdarasConfig(k=4, score="normalised", polarity_filter=False)
        top = rank_rcn_arrays(means, correct, qid, cfg)
        assert list(zip(top.layers, top.indices, strict=True)) == [*PLANTED, SAME_SIGN]

    def test_question_pairing_removes_question_difficulty_that_pooling_keeps(self):
        # A neuron that only tracks question difficulty (correct-heavy questions have a high offset) looks like
        # an RCN when traces are pooled across questions, and not when compared within questions.
        rng = np.random.default_rng(3)
        qid = np.repeat(np.arange(20), 8)
        share = np.where(np.arange(20) < 10, 7, 1)  # correct traces per question
        correct = np.concatenate([np.arange(8) < s for s in share])
        means = rng.normal(0, 0.01, (160, 1, 4)).astype(np.float32)
        means[:, 0, 0] += np.where(np.arange(20) < 10, 1.0, -1.0)[qid]
        paired = rcn_scores(means, correct, qid, "question")
        pooled = rcn_scores(means, correct, qid, "pooled")
        assert abs(paired.s[0, 0]) < 0.05 < 1.0 < abs(pooled.s[0, 0])

    def test_controls_random_and_probe(self):
        means, correct, qid = planted_means()
        sets = rank_with_controls(means, correct, qid, AdarasConfig(k=4, seed=1))
        # every noise neuron carries the same question offsets in both classes, so only the 3 planted sign-flips
        # pass the polarity filter: the RCN set is shorter than k rather than padded with failures
        assert [len(s) for s in sets.sets().values()] == [3, 4, 4, 4]
        probe = set(zip(sets.probe.layers, sets.probe.indices, strict=True))
        assert probe == {*PLANTED, SAME_SIGN}  # the probe sees every neuron that differs, sign-flip or not
        again = rank_with_controls(means, correct, qid, AdarasConfig(k=4, seed=1)).random
        assert again.flat(D_MLP) == sets.random.flat(D_MLP) and sets.random.method == "random"

    def test_layer_distribution_counts_every_layer(self):
        means, correct, qid = planted_means()
        assert layer_distribution(rank_rcn_arrays(means, correct, qid, AdarasConfig(k=3)), 3) == [1, 1, 1]

    def test_combine_spans_is_token_weighted(self):
        q, t = np.full((2, 1, 1), 1.0), np.array([[[4.0]], [[np.nan]]])
        out = combine_spans(q, t, np.array([1, 2]), np.array([3, 0]))
        np.testing.assert_allclose(out.ravel(), [(1 + 12) / 4, 1.0])

    def test_no_mixed_question_is_refused(self):
        means, _, qid = planted_means()
        with pytest.raises(ValueError, match="both correct and incorrect"):
            rcn_scores(means, np.ones(len(qid), bool), qid)

    def test_bad_config_names_the_field(self):
        with pytest.raises(ValueError, match=r"AdarasConfig\.k=0"):
            AdarasConfig(k=0)


class TestGate:
    """The failure gate: Youden's threshold, learning, and an identical round trip through files."""

    def test_youden_threshold_known_case(self):
        fail = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        score = np.array([0.1, 0.2, 0.3, 0.55, 0.5, 0.6, 0.8, 0.9])
        # At 0.6: TPR 3/4, FPR 0 (J = .75); at 0.5: TPR 1, FPR 1/4 (J = .75, ties keep the first, higher cut)
        assert youden_threshold(fail, score) == pytest.approx(0.6)

    def _data(self, n_questions=60, seed=0):
        rng = np.random.default_rng(seed)
        hard = rng.random(n_questions) < 0.5
        qid = np.repeat(np.arange(n_questions), 4)
        fail = (rng.random(len(qid)) < np.where(hard, 0.9, 0.1)[qid]).astype(int)
        # one informative token per question (position varies), the rest noise: attention must find it
        acts = []
        for q in range(n_questions):
            a = rng.normal(0, 1, (6, 3)).astype(np.float32)
            a[q % 6, 0] += 3.0 if hard[q] else -3.0
            acts.append(a)
        return [acts[q] for q in qid], fail, qid, hard

    def test_gate_learns_and_round_trips(self, tmp_path):
        acts, fail, qid, _ = self._data()
        neurons = NeuronSet.from_flat([0, 1, 2], d_mlp=4, model_shape=(1, 4))
        gate = fit_gate(acts[:160], fail[:160], qid[:160], neurons, GateConfig(epochs=60, lr=3e-3, patience=20))
        held = gate.scores(acts[160:])
        assert auroc(fail[160:], held) > 0.75
        loaded = Gate.load(gate.save(tmp_path / "gate"))
        np.testing.assert_array_equal(loaded.scores(acts[160:]), held)
        assert loaded.threshold == gate.threshold and loaded.neurons == gate.neurons
        assert [loaded.predict_fail(a) for a in acts[160:]] == [bool(s >= gate.threshold) for s in held]
        meta = json.loads((tmp_path / "gate" / "gate.json").read_text())
        assert meta["config"]["n_features"] == 256 and len(meta["mean"]) == 3

    def test_wrong_width_is_refused(self, tmp_path):
        acts, fail, qid, _ = self._data(20)
        gate = fit_gate(acts, fail, qid, NeuronSet.from_flat([0, 1, 2], d_mlp=4), GateConfig(epochs=2))
        with pytest.raises(ValueError, match="one column per gate neuron"):
            gate.scores([np.zeros((4, 5), np.float32)])
        with pytest.raises(FileNotFoundError, match="no saved gate"):
            Gate.load(tmp_path)

    def test_select_features_ranks_by_anova(self):
        rng = np.random.default_rng(0)
        fail = np.arange(100) % 2
        x = rng.normal(0, 1, (100, 2, 5))
        x[:, 1, 2] += 2 * fail
        assert select_features(x, fail, 1).flat(5) == (7,)


def test_regime_check_sees_planted_regime_and_random_control_does_not():
    rng = np.random.default_rng(0)
    careless = np.arange(200) % 2 == 0
    x = rng.normal(0, 1, (200, 4, 32)).astype(np.float32)
    x[careless, 2, 4] += 1.5
    x[careless, 3, 1] -= 1.5
    rcn = NeuronSet.from_pairs([(2, 4), (3, 1)], signs=(-1, 1))  # they point away from careless
    control = NeuronSet.from_pairs([(0, 0), (1, 1)], signs=(1, 1))
    out = rcn_regime_auroc(x, careless, np.arange(200) // 4, rcn, control=control, random_draws=2)
    assert out["rcn_regime_auroc"] > 0.8 and out["rcn_regime_auroc_projection"] > 0.8
    assert abs(out["rcn_regime_auroc_projection_control"] - 0.5) < 0.15
    assert out["rcn_regime_auroc_random"] < 0.7  # random draws almost surely miss both planted neurons


@pytest.mark.slow
def test_end_to_end_on_an_organism_run(organism_cache, organism, tmp_path):
    from workbench.adaras.report import ProbeReportConfig, probe_report, rank_rcn

    run = tmp_path / "run"
    shutil.copytree(organism_cache, run)
    rcn = rank_rcn(run, config=AdarasConfig(k=20, span="question+think"))
    for name in ("rcn", "rcn-unfiltered", "rcn-probe", "rcn-random"):
        loaded = NeuronSet.load(run / "neurons" / f"{name}.json", model_shape=(4, 512))
        assert len(loaded) == 20
    assert NeuronSet.load(run / "neurons" / "rcn.json") == rcn
    cfg = ProbeReportConfig(n_resamples=50, curve_k=(1, 8), gate=GateConfig(epochs=3, n_features=32))
    typed = probe_report(run, config=cfg, model=organism)
    report = typed.to_json()
    saved = json.loads((run / "probes" / "report.json").read_text())
    assert saved.keys() == report.keys()
    assert json.dumps(ProbeReport.load(run / "probes" / "report.json").to_json()) == json.dumps(report)
    for key in ("probe_auroc_early", "probe_auroc_baseline", "probe_auroc_tokens", "gate_auroc",
                "gate_auroc_logistic", "rcn_regime_auroc", "rcn_regime_auroc_random",
                "rcn_regime_auroc_projection_control"):
        assert 0.0 <= report[key] <= 1.0, key
    lo, hi = report["probe_auroc_early_ci"]
    assert lo <= report["probe_auroc_early"] <= hi
    assert [p["k"] for p in report["probe_curve"]] == [1, 8]
    gate = Gate.load(run / "adaras" / "gate")
    assert gate.threshold == report["gate_threshold"] and len(gate.neurons) == 32
