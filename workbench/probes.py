"""Correctness probes: logistic regression scored by held-out AUROC, split by question, with CIs.

Several samples of one question share its difficulty, so a random split would let a probe memorise
questions; folds here never put one question on both sides (``GroupKFold``), the regularisation is chosen
inside each training fold (nested CV), and the bootstrap CI resamples whole questions for the same reason.
Each activation probe is meant to be read beside two controls built here: the same probe on hand-computed
features where the task provides them (``hand_features``) and on the bag of token ids over the same span
(``token_bag``), so a number is never reported without what simpler inputs already reach.

Example:
    >>> import numpy as np
    >>> x = np.r_[np.zeros((20, 1)), np.ones((20, 1))] + np.random.default_rng(0).normal(0, .3, (40, 1))
    >>> y = np.r_[np.zeros(20), np.ones(20)]
    >>> result = probe_auroc(x, y, groups=np.arange(40) // 2)
    >>> round(result.auroc, 1), [round(v, 1) for v in auroc_ci(y, result.scores, np.arange(40) // 2)]
    (1.0, [1.0, 1.0])
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from jaxtyping import Float, Shaped
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
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


def fit_probe(x: np.ndarray, y: np.ndarray, c: float):
    """A standardised L2 logistic regression with strength ``c``, fitted (sklearn pipeline)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)


def _out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, strength) -> np.ndarray:
    """Held-out scores from grouped K-fold; ``strength(train)`` gives each training fold's C."""
    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=min(folds, len(np.unique(groups)))).split(x, y, groups):
        if len(np.unique(y[train])) < 2:
            scores[test] = y[train].mean()
            continue
        scores[test] = fit_probe(x[train], y[train], strength(train)).predict_proba(x[test])[:, 1]
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
    if len(x) and np.all(x == x[0]):
        # Nothing to learn (e.g. the first thinking token is the same in every trace): out-of-fold intercepts alone
        # would anti-correlate with the held-out fold and report an AUROC near 0; the honest answer is chance.
        scores = np.full(len(y), float(y.mean()))
        return ProbeResult(auroc(y, scores), scores)

    def strength(train: np.ndarray) -> float:
        return c if c is not None else select_c(x[train], y[train], groups[train])

    scores = _out_of_fold(x, y, groups, folds, strength)
    return ProbeResult(auroc(y, scores), scores)


def _by_question(y, scores, groups) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Labels and scores as arrays, and the rows of each question: the unit every bootstrap here resamples."""
    y, scores, groups = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64), np.asarray(groups)
    if not len(y) == len(scores) == len(groups):
        raise ValueError(f"y, scores and groups disagree in length: {len(y)}, {len(scores)}, {len(groups)}")
    _, member = np.unique(groups, return_inverse=True)
    return y, scores, [np.flatnonzero(member == g) for g in range(member.max() + 1)]


def auroc_ci(
    y: Shaped[np.ndarray, " row"],
    scores: Float[np.ndarray, " row"],
    groups: Shaped[np.ndarray, " row"],
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUROC, resampling whole questions (``groups``) with replacement.

    A resample that happens to hold one class only has no AUROC and is left out of the percentiles; with
    fewer than two questions there is nothing to resample, and the interval is NaN.
    """
    y, scores, rows = _by_question(y, scores, groups)
    if len(rows) < 2:
        return float("nan"), float("nan")

    def statistic(picked: np.ndarray) -> float:
        idx = np.concatenate([rows[int(g)] for g in picked])
        return auroc(y[idx], scores[idx])

    with warnings.catch_warnings():  # one-class resamples give NaN, which scipy warns about; they are dropped below
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        boot = stats.bootstrap((np.arange(len(rows)),), statistic, n_resamples=n_resamples, vectorized=False,
                               method="percentile", rng=np.random.default_rng(seed))
    dist = boot.bootstrap_distribution
    dist = dist[~np.isnan(dist)]
    if not len(dist):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(dist, [tail, 100 - tail])
    return float(lo), float(hi)


def roc_band(
    y: Shaped[np.ndarray, " row"],
    scores: Float[np.ndarray, " row"],
    groups: Shaped[np.ndarray, " row"],
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    grid: int = 101,
) -> dict[str, list[float]]:
    """Pointwise percentile bootstrap band of the ROC: the TPR at each FPR of a grid, resampling whole questions.

    >>> y = np.array([0, 1] * 20); s = y + np.linspace(0, 1.5, 40)
    >>> band = roc_band(y, s, np.arange(40) // 2, n_resamples=50, grid=5)
    >>> band["fpr"], all(lo <= hi for lo, hi in zip(band["tpr_lo"], band["tpr_hi"]))
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    y, scores, rows = _by_question(y, scores, groups)
    fpr_grid, rng, curves = np.linspace(0.0, 1.0, grid), np.random.default_rng(seed), []
    for _ in range(n_resamples):
        idx = np.concatenate([rows[g] for g in rng.integers(0, len(rows), len(rows))])
        if len(np.unique(y[idx])) < 2:
            continue  # no ROC without both classes, as in auroc_ci
        fpr, tpr, _ = roc_curve(y[idx], scores[idx])
        curves.append(tpr[np.searchsorted(fpr, fpr_grid, side="right") - 1])  # the staircase's TPR at each FPR
    if not curves:
        nan = [float("nan")] * grid
        return {"fpr": fpr_grid.tolist(), "tpr_lo": nan, "tpr_hi": nan}
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.array(curves), [tail, 100 - tail], axis=0)
    return {"fpr": fpr_grid.tolist(), "tpr_lo": lo.tolist(), "tpr_hi": hi.tolist()}


def roc_points(y: Shaped[np.ndarray, " row"], scores: Float[np.ndarray, " row"]) -> dict[str, list[float]]:
    """The ROC curve's corners (sklearn ``roc_curve``) as JSON-able lists: ``fpr``, ``tpr``, ``threshold``.

    >>> roc_points(np.array([0, 0, 1, 1]), np.array([.1, .4, .35, .8]))["tpr"]
    [0.0, 0.5, 0.5, 1.0, 1.0]
    """
    fpr, tpr, thr = roc_curve(np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64))
    # the first threshold is +inf (nothing predicted positive); JSON has no inf, so use the top score + 1
    thr = np.where(np.isfinite(thr), thr, np.max(scores) + 1)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()}


def early_curve(
    features: Mapping[int, Float[np.ndarray, "row feature"]],
    y: Shaped[np.ndarray, " row"],
    groups: Shaped[np.ndarray, " row"],
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, float | int | list[float]]]:
    """AUROC (with its grouped bootstrap CI) of the probe against how many thinking tokens it has seen.

    ``features[k]`` holds each row's features from its first ``k`` thinking tokens; rows with NaN features
    (thinking shorter than ``k``) are left out of that point, and ``n`` says how many remained.
    """
    out = []
    for k in sorted(features):
        x = np.asarray(features[k], dtype=np.float64)
        ok = ~np.isnan(x).any(axis=1)
        yk, gk = np.asarray(y)[ok], np.asarray(groups)[ok]
        if len(np.unique(yk)) < 2:
            out.append({"k": int(k), "auroc": float("nan"), "ci": [float("nan")] * 2, "n": int(ok.sum())})
            continue
        res = probe_auroc(x[ok], yk, gk)
        out.append({"k": int(k), "auroc": res.auroc, "ci": list(auroc_ci(yk, res.scores, gk, n_resamples=n_resamples,
                                                                         seed=seed)), "n": int(ok.sum())})
    return out


@dataclass(frozen=True)
class HandFeatures:
    """Hand-computed features per trace, as named columns (``values[:, i]`` is ``names[i]``)."""

    names: tuple[str, ...]
    values: Float[np.ndarray, "row feature"]

    def column(self, name: str) -> Float[np.ndarray, " row"]:
        """The column called ``name``; a clear error naming the columns there are."""
        if name not in self.names:
            raise KeyError(f"no hand feature {name!r}; the task supplies {', '.join(self.names) or 'none'}")
        return self.values[:, self.names.index(name)]

    def distinct(self) -> Float[np.ndarray, "row distinct"]:
        """The columns a probe reads: a column equal to an earlier one in every row is left out. It adds nothing
        but would change the probe's regularisation (the organism's share of careless cue words is its
        first-cue regime again wherever traces open with one cue)."""
        keep = [i for i in range(len(self.names))
                if not any(np.array_equal(self.values[:, i], self.values[:, j]) for j in range(i))]
        return self.values[:, keep]


def hand_features(traces: pa.Table, task) -> HandFeatures | None:
    """The task's hand-computed features (``task.hand_features``) of every trace, or None when it has none.

    None too when any trace has none (a feature missing for one trace cannot be made up).

    >>> from workbench.tasks import get_task
    >>> t = pa.table({"labels": [json.dumps({"problem_id": "4+5", "n_operands": 2, "regime": "careless"})]})
    >>> got = hand_features(t, get_task("organism"))
    >>> got.names, got.column("careless").tolist(), got.distinct().shape
    (('n_operands', 'carry_count', 'careless', 'careless_share'), [1.0], (1, 3))
    >>> hand_features(pa.table({"labels": [None]}), get_task("organism")) is None
    True
    """
    if "labels" not in traces.column_names:
        return None
    rows = [task.hand_features(json.loads(raw) if raw else None) for raw in traces.column("labels").to_pylist()]
    if not rows or any(r is None for r in rows):
        return None
    names = tuple(rows[0])
    for i, r in enumerate(rows):
        if tuple(r) != names:
            raise ValueError(f"task {task.name!r} gave trace {i} hand features {tuple(r)}, trace 0 {names}; "
                             "a task must name the same features for every trace")
    return HandFeatures(names, np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float64))


def token_bag(
    token_ids: Sequence[Sequence[int]], starts: Sequence[int], ends: Sequence[int]
) -> Float[np.ndarray, "row vocab_seen"]:
    """Counts of each token id over ``token_ids[r][starts[r]:ends[r]]``: the token-only baseline's input.

    Columns are the ids that occur in any span, in ascending order.

    >>> token_bag([[5, 7, 7, 9], [7, 5]], starts=[1, 0], ends=[4, 2]).tolist()
    [[0.0, 2.0, 1.0], [1.0, 1.0, 0.0]]
    """
    spans = [np.asarray(ids[s:e], dtype=np.int64) for ids, s, e in zip(token_ids, starts, ends, strict=True)]
    vocab = np.unique(np.concatenate([*spans, np.zeros(0, dtype=np.int64)]))
    out = np.zeros((len(spans), len(vocab)))
    for r, span in enumerate(spans):
        np.add.at(out[r], np.searchsorted(vocab, span), 1.0)
    return out
