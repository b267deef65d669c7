"""Probes: held-out AUROC, split by problem so that no problem leaks across folds."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.probes import auroc, probe_auroc


def test_separable_data_scores_high():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = y[:, None] + rng.normal(0, 0.5, (400, 3))
    assert probe_auroc(x, y, groups=np.arange(400) // 4).auroc > 0.9


def test_split_by_problem_stops_memorising_problems():
    # Each problem has its own one-hot identity and a label fixed per problem, drawn at random:
    # a row-level split would let the probe memorise the problem; a problem-level split cannot.
    rng = np.random.default_rng(1)
    problems = np.repeat(np.arange(60), 8)
    y = rng.integers(0, 2, 60)[problems]
    x = np.eye(60)[problems]
    assert probe_auroc(x, y, groups=problems).auroc < 0.65  # a row-level split would give ~1.0


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="both classes"):
        probe_auroc(np.zeros((10, 2)), np.ones(10), np.arange(10))


def test_auroc_is_nan_for_one_class():
    assert np.isnan(auroc(np.ones(5), np.arange(5)))


def test_bootstrap_ci_covers_the_true_auroc():
    # Scores ~ N(d * y, 1): the population AUROC is Phi(d / sqrt(2)).
    from scipy.stats import norm

    from workbench.probes import auroc_ci

    d, rng = 1.0, np.random.default_rng(2)
    y = rng.integers(0, 2, 600)
    scores = d * y + rng.normal(0, 1, 600)
    groups = np.arange(600) // 6
    lo, hi = auroc_ci(y, scores, groups, n_resamples=500)
    truth = norm.cdf(d / np.sqrt(2))
    assert lo < truth < hi and hi - lo < 0.12


def test_one_question_has_no_interval_to_resample():
    # scipy's bootstrap refuses a single observation with an error about its `axis`; one question has no CI.
    from workbench.probes import auroc_ci

    lo, hi = auroc_ci(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), np.zeros(4, dtype=int))
    assert np.isnan(lo) and np.isnan(hi)


def test_grouped_bootstrap_is_wider_when_questions_cluster():
    # Scores shared within a question carry less information than independent ones: the grouped CI must say so.
    from workbench.probes import auroc_ci

    rng = np.random.default_rng(4)
    q = np.repeat(np.arange(50), 8)
    y = np.repeat(rng.integers(0, 2, 50), 8)
    scores = y + np.repeat(rng.normal(0, 1, 50), 8)
    lo_g, hi_g = auroc_ci(y, scores, q, n_resamples=300)
    lo_r, hi_r = auroc_ci(y, scores, np.arange(400), n_resamples=300)
    assert hi_g - lo_g > 1.5 * (hi_r - lo_r)


def test_memorised_question_identity_is_not_learned_with_its_ci():
    # Grouped folds leave the identity nothing to generalise from; what remains sits at or below chance (the
    # held-out folds' base rates run opposite to their training folds'), far from the ~1.0 a row split gives.
    from workbench.probes import auroc_ci

    rng = np.random.default_rng(5)
    problems = np.repeat(np.arange(60), 8)
    y = rng.integers(0, 2, 60)[problems]
    res = probe_auroc(np.eye(60)[problems], y, groups=problems)
    _, hi = auroc_ci(y, res.scores, problems, n_resamples=300)
    assert res.auroc < 0.6 and hi < 0.7


def test_roc_points_run_from_corner_to_corner():
    from workbench.probes import roc_points

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    pts = roc_points(y, y + rng.normal(0, 1, 100))
    assert (pts["fpr"][0], pts["tpr"][0], pts["fpr"][-1], pts["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(pts["tpr"]) >= 0) and np.all(np.isfinite(pts["threshold"]))


def test_early_curve_rises_with_tokens_seen_and_skips_short_traces():
    from workbench.probes import early_curve

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 240)
    groups = np.arange(240) // 4
    feats = {k: (k / 4) * y[:, None] + rng.normal(0, 1, (240, 3)) for k in (1, 8)}
    feats[8][:40] = np.nan  # 40 traces think fewer than 8 tokens
    curve = early_curve(feats, y, groups, n_resamples=100)
    assert [p["k"] for p in curve] == [1, 8] and [p["n"] for p in curve] == [240, 200]
    assert curve[0]["auroc"] < 0.75 < 0.95 < curve[1]["auroc"]
    assert curve[1]["ci"][0] <= curve[1]["auroc"] <= curve[1]["ci"][1]


def test_hand_features_and_token_bag():
    import json

    import pyarrow as pa

    from workbench.probes import hand_features, token_bag
    from workbench.tasks import MathTask, get_task

    task = get_task("organism")
    labels = [{"problem_id": "4+5", "n_operands": 2, "carry_count": 0, "regime": "careful"},
              {"problem_id": "4+5", "n_operands": 4, "carry_count": 3, "regime": "careless", "cues": ["quickly"]}]
    table = pa.table({"labels": [json.dumps(x) for x in labels]})
    got = hand_features(table, task)
    assert got.names == ("n_operands", "carry_count", "careless", "careless_share")
    np.testing.assert_array_equal(got.distinct(), [[2, 0, 0], [4, 3, 1]])  # one cue: the share is the regime again
    labels.append({"problem_id": "4+5", "n_operands": 3, "carry_count": 1, "regime": "careless",
                   "cues": ["quickly", "slowly", "roughly", "carefully"]})
    got = hand_features(pa.table({"labels": [json.dumps(x) for x in labels]}), task)
    # several cues: the share of careless ones (the regime itself where only one cue was recorded)
    np.testing.assert_array_equal(got.distinct(), [[2, 0, 0, 0], [4, 3, 1, 1], [3, 1, 1, 0.5]])
    # the regime check's label is the first cue word, by name, never the last column (the share)
    np.testing.assert_array_equal(got.column("careless"), [0, 1, 1])
    with pytest.raises(KeyError, match="no hand feature 'regime'; the task supplies n_operands"):
        got.column("regime")
    assert hand_features(pa.table({"labels": [json.dumps({"problem_id": "4+5", "regime": None})]}), task) is None
    assert hand_features(pa.table({"trace_id": ["a"]}), task) is None
    math = MathTask.from_records([{"question": "1+1?", "answer": "#### 2"}], source="inline")
    assert hand_features(table, math) is None  # a task without features
    bag = token_bag([[1, 2, 2, 3], [3, 3]], starts=[0, 0], ends=[4, 2])
    np.testing.assert_array_equal(bag, [[1, 2, 1], [0, 0, 2]])


def test_token_only_probe_finds_a_token_cue():
    # The control must be able to win: a label carried by one token id is found from the bag alone.
    from workbench.probes import token_bag

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    ids = [[int(v) for v in rng.integers(10, 20, 6)] + [5 if label else 6] for label in y]
    bag = token_bag(ids, [0] * 200, [7] * 200)
    assert probe_auroc(bag, y, np.arange(200) // 4).auroc > 0.95


def test_roc_band_holds_the_true_curve_and_narrows_with_more_questions():
    from sklearn.metrics import roc_curve

    from workbench.probes import roc_band

    def data(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.random(n) < 0.4
        return y, rng.normal(y * 1.0, 1.0), np.arange(n)

    y_pop, s_pop, _ = data(200_000, 99)  # the population ROC, read on the band's grid
    fpr, tpr, _ = roc_curve(y_pop, s_pop)
    widths = []
    for n in (100, 1600):
        y, s, g = data(n, 0)
        band = roc_band(y, s, g, n_resamples=300, grid=21)
        truth = tpr[np.searchsorted(fpr, band["fpr"], side="right") - 1]
        lo, hi = np.array(band["tpr_lo"]), np.array(band["tpr_hi"])
        inside = (lo - 1e-9 <= truth) & (truth <= hi + 1e-9)
        assert inside[1:-1].mean() >= 0.8  # pointwise 95% bands: most of the grid
        widths.append(float((hi - lo)[1:-1].mean()))
    assert widths[1] < widths[0] / 2  # 16x the questions: about a quarter of the width


def test_constant_features_give_chance_not_an_anti_learned_auroc():
    from workbench.probes import probe_auroc

    y = np.random.default_rng(2).random(60) < 0.4  # folds' class shares differ: intercepts alone gave 0.26
    res = probe_auroc(np.ones((60, 4)), y, np.arange(60) // 2)
    assert res.auroc == 0.5
