"""Paired statistics of one method against the reference, on the same (problem, sample) grid.

Every method of a study runs the same problems with the same per-(problem, sample) sampler seeds,
so its results are arrays of shape ``(problem, sample)`` aligned cell by cell with the reference's.
The unit of resampling is the **problem**: the k samples of one problem are not independent, so every
confidence interval is a bootstrap over problems (``scipy.stats.bootstrap``, percentile method, which
stays defined when every problem scores alike, e.g. a random model that is always wrong).

* **accuracy**: pass@1 averaged over the k samples of each problem, then over problems.
* **delta**: the mean over problems of (method - reference) per-problem accuracy, with a paired
  bootstrap CI (both methods' values of a problem are resampled together).
* **flips**: per (problem, sample) pair, *fixed* = reference wrong and method right, *broken* = the
  reverse. Per problem, a problem is *solved* when a strict majority of its k samples is correct
  (2 of 4 is not solved); *fixed problems* go from unsolved to solved, *broken problems* the reverse.
* **p_value**: exact McNemar test on the discordant (problem, sample) pairs: under no effect a
  discordant pair is fixed or broken with probability 1/2, so ``binomtest(fixed, fixed + broken)``
  (two-sided; 1.0 when there is no discordant pair). The pairs of one problem share the problem, so
  this test treats clustered pairs as independent and can be anti-conservative when the effect
  differs by problem; ``p_value_problems`` is the same test on the majority flips of problems (one
  pair per problem, independent, less powerful), and the delta's CI is clustered by construction.
* **token_reduction**: ``100 * (1 - mean cost / mean reference cost)`` in % (positive: fewer tokens),
  where a trace's cost is its generated tokens plus any probe tokens its controllers spent (trial
  answers, consistency probes), with a paired bootstrap CI over problems.

Example:
    >>> import numpy as np
    >>> ref = np.array([[1, 0], [0, 0], [1, 1]], bool)
    >>> new = np.array([[1, 1], [0, 1], [1, 0]], bool)
    >>> f = flips(ref, new)
    >>> f.fixed_samples, f.broken_samples, f.fixed_problems, f.broken_problems
    (2, 1, 1, 1)
    >>> round(mcnemar_exact(2, 1), 3)
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float
from scipy import stats


@dataclass(frozen=True)
class Flips:
    """Where a method changes correctness against the reference (see the module docstring)."""

    fixed_samples: int
    broken_samples: int
    fixed_problems: int
    broken_problems: int


def bootstrap_ci(
    statistic: Callable[..., np.ndarray | np.floating], *samples: Float[np.ndarray, " problem"],
    n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*samples, axis=-1)``, the samples paired by problem.

    NaN bounds when there are fewer than two problems (no interval can be drawn).

    >>> lo, hi = bootstrap_ci(np.mean, np.arange(100.0), seed=1)
    >>> 43 < lo < 49.5 < hi < 56
    True
    """
    if len(samples[0]) < 2:
        return float("nan"), float("nan")
    res = stats.bootstrap(samples, statistic, paired=len(samples) > 1, vectorized=True, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def flips(reference: Bool[np.ndarray, "problem sample"], method: Bool[np.ndarray, "problem sample"]) -> Flips:
    """Fixed and broken (problem, sample) pairs, and problems whose majority verdict changed."""
    k = reference.shape[1]
    solved_ref = reference.sum(1) * 2 > k
    solved = method.sum(1) * 2 > k
    return Flips(int((~reference & method).sum()), int((reference & ~method).sum()),
                 int((~solved_ref & solved).sum()), int((solved_ref & ~solved).sum()))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Exact (binomial) McNemar p-value of ``fixed`` vs ``broken`` discordant pairs; 1.0 when there are none.

    >>> mcnemar_exact(0, 0), round(mcnemar_exact(10, 0), 5)
    (1.0, 0.00195)
    """
    n = fixed + broken
    return 1.0 if n == 0 else float(stats.binomtest(fixed, n, 0.5, alternative="two-sided").pvalue)


def _reduction(cost: np.ndarray, ref_cost: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return 100.0 * (1.0 - cost.mean(axis) / ref_cost.mean(axis))


def _delta(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray | np.floating:
    return (a - b).mean(axis)


def paired_difference(
    method: Float[np.ndarray, " problem"], reference: Float[np.ndarray, " problem"], n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean per-problem difference ``method - reference`` and its paired bootstrap CI over problems.

    >>> d, lo, hi = paired_difference(np.ones(50), np.zeros(50), n_resamples=100)
    >>> (d, lo, hi)
    (1.0, 1.0, 1.0)
    """
    return (float(_delta(method, reference)),
            *bootstrap_ci(_delta, method, reference, n_resamples=n_resamples, seed=seed))


def compare(
    correct: Bool[np.ndarray, "problem sample"],
    cost: Float[np.ndarray, "problem sample"],
    ref_correct: Bool[np.ndarray, "problem sample"],
    ref_cost: Float[np.ndarray, "problem sample"],
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float | int | list[float]]:
    """Accuracy with its CI, the paired delta, flips, McNemar and token reduction of one method.

    >>> ref = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], bool)
    >>> cost = np.full((4, 2), 10.0)
    >>> r = compare(ref | True, cost / 2, ref, cost, n_resamples=200)
    >>> r["accuracy"], r["delta_vs_reference"], r["token_reduction"], r["fixed_samples"]
    (1.0, 0.5, 50.0, 4)
    """
    if correct.shape != ref_correct.shape or cost.shape != correct.shape or ref_cost.shape != correct.shape:
        raise ValueError(f"unpaired results: the method has shape {correct.shape} (problem, sample) and the "
                         f"reference {ref_correct.shape}; both must cover the same problems and samples")
    acc = correct.mean(1)
    ref_acc = ref_correct.mean(1)
    f = flips(ref_correct, correct)
    ref_solved = ref_correct.sum(1) * 2 > correct.shape[1]
    solved = correct.sum(1) * 2 > correct.shape[1]
    opts = {"n_resamples": n_resamples, "seed": seed}
    delta, lo, hi = paired_difference(acc, ref_acc, **opts)
    per_cost, per_ref_cost = cost.mean(1), ref_cost.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = float(_reduction(per_cost, per_ref_cost))
        reduction_ci = (bootstrap_ci(_reduction, per_cost, per_ref_cost, **opts) if per_ref_cost.sum() > 0
                        else (float("nan"), float("nan")))
    return {
        "accuracy": float(acc.mean()),
        "accuracy_ci": list(bootstrap_ci(np.mean, acc, **opts)),
        "delta_vs_reference": delta,
        "delta_ci": [lo, hi],
        "fixed_samples": f.fixed_samples,
        "broken_samples": f.broken_samples,
        "fixed_problems": f.fixed_problems,
        "broken_problems": f.broken_problems,
        "p_value": mcnemar_exact(f.fixed_samples, f.broken_samples),
        "p_value_problems": mcnemar_exact(int((~ref_solved & solved).sum()), int((ref_solved & ~solved).sum())),
        "token_reduction": reduction,
        "token_reduction_ci": list(reduction_ci),
    }
