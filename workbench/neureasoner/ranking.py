"""Key neurons per failure type: whose fluctuation features separate failing windows from healthy ones.

NeuReasoner's mixture of neurons keeps, per failure type, the neurons whose activation dynamics
mark that failure. Here each neuron gets, per feature, the standardised mean difference (Cohen's d,
pooled standard deviation) between windows that overlap an episode of the type and *clean* windows
(no episode of any type, so another failure cannot masquerade as health); its score is the largest
|d| over its features, its sign the sign of that d (+1: the feature is higher in failing windows).
Sums are streamed, so the ranking never holds more than one trace's windows.

The paper selects by DePass attribution intersected across time steps (no public code); ranking by
the separation the detector itself uses is the direct reading of "the neurons whose fluctuation
separates failure", and needs no gradients.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> feats = rng.normal(size=(200, 3, 2)); failing = np.arange(200) < 50
    >>> feats[failing, 1, 0] += 3.0                     # neuron 1 separates by its first feature
    >>> stats = SeparationStats(3, 2); stats.add(feats, failing, ~failing)
    >>> order, score, sign, best = key_neurons(stats.effect_sizes(), k=2)
    >>> int(order[0]), int(sign[0]), int(best[0]), bool(score[0] > 2 > score[1])
    (1, 1, 0, True)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float


class SeparationStats:
    """Running per-neuron, per-feature count, sum and sum of squares of failing and healthy windows."""

    def __init__(self, n_neurons: int, n_features: int) -> None:
        shape = (2, n_neurons, n_features)  # group 0 failing, group 1 healthy
        self.n = np.zeros(2)
        self.sum = np.zeros(shape)
        self.sumsq = np.zeros(shape)

    def add(
        self,
        feats: Float[np.ndarray, "win neuron feature"],
        failing: Bool[np.ndarray, " win"],
        healthy: Bool[np.ndarray, " win"],
    ) -> None:
        if np.any(failing & healthy):
            raise ValueError("SeparationStats.add: a window cannot be both failing and healthy")
        for g, mask in enumerate((failing, healthy)):
            x = np.asarray(feats[mask], np.float64)
            self.n[g] += len(x)
            self.sum[g] += x.sum(0)
            self.sumsq[g] += (x**2).sum(0)

    def means(self) -> Float[np.ndarray, "group neuron feature"]:
        """Mean feature per group (failing, healthy); NaN for an empty group."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.n[:, None, None]

    def effect_sizes(self) -> Float[np.ndarray, "neuron feature"]:
        """Cohen's d, failing minus healthy; 0 where a feature does not vary at all."""
        if min(self.n) < 2:
            raise ValueError(f"too few windows to rank neurons: {int(self.n[0])} failing and {int(self.n[1])} "
                             "healthy; label more traces or shorten NeuReasonerConfig.window")
        mean = self.means()
        var = np.maximum(self.sumsq - self.n[:, None, None] * mean**2, 0.0)
        pooled = np.sqrt(var.sum(0) / (self.n.sum() - 2))
        diff = mean[0] - mean[1]
        return np.where(pooled > 1e-12, diff / np.where(pooled > 1e-12, pooled, 1.0), 0.0)


def key_neurons(
    d: Float[np.ndarray, "neuron feature"], k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best neurons: (positions, score = max |d|, sign of that d, index of that feature), best first."""
    best = np.abs(d).argmax(1)
    score = np.abs(d)[np.arange(len(d)), best]
    order = np.argsort(-score, kind="stable")[:k]
    sign = np.where(d[order, best[order]] >= 0, 1, -1)
    return order, score[order], sign, best[order]
