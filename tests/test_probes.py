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
