"""Correctness probes: logistic regression scored by held-out AUROC, split by problem.

Several samples of one problem share its difficulty, so a random split would let a probe memorise
problems; folds here never put one problem on both sides (``GroupKFold``).

Example:
    >>> import numpy as np
    >>> x = np.r_[np.zeros((20, 1)), np.ones((20, 1))] + np.random.default_rng(0).normal(0, .3, (40, 1))
    >>> y = np.r_[np.zeros(20), np.ones(20)]
    >>> round(probe_auroc(x, y, groups=np.arange(40) // 2).auroc, 1)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class ProbeResult:
    auroc: float
    scores: np.ndarray  # out-of-fold probability of the positive class, one per row


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """AUROC, or NaN where only one class is present."""
    y = np.asarray(y)
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)


def _out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, strength) -> np.ndarray:
    """Held-out scores from grouped K-fold; ``strength(train)`` gives each training fold's C."""
    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=min(folds, len(np.unique(groups)))).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            scores[test] = y[train].mean()
            continue
        scores[test] = _fit(x[train], y[train], strength(train)).predict_proba(x[test])[:, 1]
    return scores


def select_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 3) -> float:
    """The L2 strength with the best grouped inner-CV AUROC (ties go to stronger regularisation)."""
    best, best_score = C_GRID[0], -1.0
    for c in C_GRID:
        score = auroc(y, _out_of_fold(x, y, groups, folds, lambda train, c=c: c))
        if score > best_score + 1e-9:
            best, best_score = c, score
    return best


def probe_auroc(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5, c: float | None = None
) -> ProbeResult:
    """Out-of-fold AUROC of a standardised L2 logistic regression predicting ``y`` from ``x``.

    With ``c=None`` the regularisation is chosen inside each training fold (nested, grouped CV), so
    the held-out fold never influences it.
    """
    x, y, groups = np.asarray(x, dtype=np.float64), np.asarray(y).astype(int), np.asarray(groups)
    if len(x) != len(y) or len(y) != len(groups):
        raise ValueError(f"x, y and groups disagree in length: {len(x)}, {len(y)}, {len(groups)}")
    if len(np.unique(y)) < 2:
        raise ValueError("the probe needs both classes in y; sample more traces")

    def strength(train: np.ndarray) -> float:
        return c if c is not None else select_c(x[train], y[train], groups[train])

    scores = _out_of_fold(x, y, groups, folds, strength)
    return ProbeResult(auroc(y, scores), scores)
