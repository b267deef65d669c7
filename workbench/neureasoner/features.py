"""Fluctuation features of each neuron over sliding windows of its per-token activation.

NeuReasoner reads a failure from how a neuron's activation *moves* within a short window rather
than from its level: an intra-step slip as a burst of high-frequency energy and total variation,
an oscillation as energy piling into one (dominant) frequency, overthinking as slow, low-frequency
drift with a flat spectrum. Per window and neuron this module computes, from the mean-removed
spectrum (``numpy.fft.rfft``; the DC bin is dropped, the one-sided bins weighted to the two-sided
energy):

* ``mean`` and ``std`` of the activation,
* ``total_variation``: mean absolute step between consecutive tokens,
* ``high_ratio``: share of the energy above ``high_cutoff`` cycles per token (the low-frequency
  share is ``1 - high_ratio``),
* ``dominant_ratio``: share of the energy in the strongest frequency,
* ``spectral_entropy``: entropy of the normalised spectrum over log(number of bins), in [0, 1].

A flat window has no energy: its three spectral features are 0.

``window_features`` does it for a whole trace at once; ``OnlineFluctuation`` does it token by
token in O(window) time per neuron and token (a sliding DFT plus running sums), so a detector can
run while the model generates; the two agree to floating-point error (a test checks it).

Example:
    >>> import numpy as np
    >>> cfg = NeuReasonerConfig(window=8, stride=4)
    >>> acts = np.zeros((16, 2)); acts[:, 0] = [1, -1] * 8     # neuron 0 flips every token
    >>> f = window_features(acts, cfg)
    >>> f.shape                                                # (window, neuron, feature)
    (3, 2, 6)
    >>> [round(float(x), 3) for x in f[0, 0]]                  # mean, std, tv, high, dominant, entropy
    [0.0, 1.0, 2.0, 1.0, 1.0, 0.0]
    >>> online = OnlineFluctuation(2, cfg)
    >>> out = [online.update(a) for a in acts]
    >>> np.allclose(np.stack([o for o in out if o is not None]), f)
    True
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float
from numpy.lib.stride_tricks import sliding_window_view

from workbench.neureasoner.config import NeuReasonerConfig

FEATURES: tuple[str, ...] = ("mean", "std", "total_variation", "high_ratio", "dominant_ratio", "spectral_entropy")
_EMPTY = 1e-12  # spectral energy below this is a flat window


def _bins(window: int) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (cycles per token) of the rfft bins 1.. and their one-sided to two-sided weights."""
    freqs = np.fft.rfftfreq(window)[1:]
    weights = np.full(len(freqs), 2.0)
    if window % 2 == 0:
        weights[-1] = 1.0  # the Nyquist bin has no mirror image
    return freqs, weights


def _spectral(power: np.ndarray, cfg: NeuReasonerConfig) -> np.ndarray:
    """(..., bins) two-sided power without DC -> (..., 3): high share, dominant share, entropy."""
    freqs, _ = _bins(cfg.window)
    total = power.sum(-1)
    flat = total <= _EMPTY
    p = power / np.where(flat, 1.0, total)[..., None]
    high = p[..., freqs > cfg.high_cutoff].sum(-1)
    dominant = p.max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = (0.0 - np.where(p > 0, p * np.log(p), 0.0).sum(-1)) / np.log(len(freqs))  # 0.0 - x: no -0.0
    out = np.stack([high, dominant, entropy], -1)
    out[flat] = 0.0
    return out


def window_starts(n_tokens: int, cfg: NeuReasonerConfig, offset: int = 0) -> np.ndarray:
    """First position of each window over ``n_tokens`` tokens that begin at ``offset``.

    >>> window_starts(12, NeuReasonerConfig(window=8, stride=2), offset=5).tolist()
    [5, 7, 9]
    """
    return offset + cfg.stride * np.arange(cfg.n_windows(n_tokens))


def window_features(
    acts: Float[np.ndarray, "pos neuron"], cfg: NeuReasonerConfig,
) -> Float[np.ndarray, "win neuron feature"]:
    """Fluctuation features of every window (``window_starts(len(acts), cfg)``) and neuron, float32."""
    n, w = acts.shape[1], cfg.window
    if cfg.n_windows(len(acts)) == 0:
        return np.zeros((0, n, len(FEATURES)), np.float32)
    x = sliding_window_view(np.asarray(acts, np.float64), w, axis=0)[:: cfg.stride]  # (win, neuron, window)
    _, weights = _bins(w)
    power = np.abs(np.fft.rfft(x, axis=-1)[..., 1:]) ** 2 * weights / w**2
    tv = np.abs(np.diff(x, axis=-1)).sum(-1) / (w - 1)
    out = np.concatenate([x.mean(-1)[..., None], x.std(-1)[..., None], tv[..., None], _spectral(power, cfg)], -1)
    return out.astype(np.float32)


class OnlineFluctuation:
    """The features of ``window_features``, updated one token at a time.

    Keeps a ring buffer of the last ``window`` activations, running sums for the mean, the variance
    and the total variation, and the DFT bins updated by the sliding-DFT recurrence
    ``X_k <- (X_k - x_old + x_new) * exp(2 pi i k / window)``: each token costs O(window) per neuron,
    however long the trace. ``update`` returns the features of the window that ends at this token
    when it is one of ``window_starts``'s windows, else None.
    """

    def __init__(self, n_neurons: int, cfg: NeuReasonerConfig) -> None:
        if n_neurons < 1:
            raise ValueError(f"OnlineFluctuation needs at least one neuron (got n_neurons={n_neurons})")
        self.cfg, self.n_neurons = cfg, n_neurons
        w = cfg.window
        self._k = np.arange(1, w // 2 + 1)
        self._rotate = np.exp(2j * np.pi * self._k / w)
        self._weights = _bins(w)[1]
        self._buf = np.zeros((w, n_neurons))
        self._dft = np.zeros((n_neurons, len(self._k)), complex)
        self._sum = np.zeros(n_neurons)
        self._sumsq = np.zeros(n_neurons)
        self._tv = np.zeros(n_neurons)
        self.seen = 0

    def update(self, acts: Float[np.ndarray, " neuron"]) -> Float[np.ndarray, "neuron feature"] | None:
        x = np.asarray(acts, np.float64)
        if x.shape != (self.n_neurons,):
            raise ValueError(f"OnlineFluctuation.update: expected {self.n_neurons} activations, got shape {x.shape}")
        w, t = self.cfg.window, self.seen
        if t >= 1:
            self._tv += np.abs(x - self._buf[(t - 1) % w])
        if t < w:  # filling: add x's term at its place in the first window
            self._dft += x[:, None] * np.exp(-2j * np.pi * self._k * t / w)
        else:
            old = self._buf[t % w]
            self._tv -= np.abs(self._buf[(t + 1) % w] - old)  # the step that leaves the window
            self._dft = (self._dft + (x - old)[:, None]) * self._rotate
            self._sum -= old
            self._sumsq -= old**2
        self._buf[t % w] = x
        self._sum += x
        self._sumsq += x**2
        self.seen = t + 1
        if self.seen < w or (self.seen - w) % self.cfg.stride:
            return None
        mean = self._sum / w
        std = np.sqrt(np.maximum(self._sumsq / w - mean**2, 0.0))
        power = np.abs(self._dft) ** 2 * self._weights / w**2
        tv = self._tv / (w - 1)
        out = np.concatenate([mean[:, None], std[:, None], tv[:, None], _spectral(power, self.cfg)], -1)
        return out.astype(np.float32)
