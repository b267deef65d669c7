"""``NeuReasonerConfig``: every choice of the mixture-of-neurons analysis in one frozen spec.

The paper (arXiv 2604.02972) leaves the window, K, the MLP and its thresholds unstated (see
``../shared/PAPERS.md``); the defaults here are sized for short traces (the organism thinks for
20 to 100 tokens) and each is recorded with the neuron sets and detectors it produced.

Example:
    >>> cfg = NeuReasonerConfig(window=8, stride=2)
    >>> cfg.n_windows(20)
    7
    >>> NeuReasonerConfig(window=2)
    Traceback (most recent call last):
    ...
    ValueError: NeuReasonerConfig.window must be >= 4 (got 2): a spectrum needs a few bins
    >>> NeuReasonerConfig(units=("neurons", "experts"))
    Traceback (most recent call last):
    ...
    ValueError: NeuReasonerConfig.units must be a non-empty subset of ('neurons', 'heads'), each named once...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FAILURE_TYPES: tuple[str, ...] = ("slip", "oscillation", "overthinking")
THRESHOLDS = ("youden", "recall", "precision")
UNITS: tuple[str, ...] = ("neurons", "heads")


@dataclass(frozen=True, kw_only=True)
class NeuReasonerConfig:
    """What to window, rank and fit.

    Attributes:
        window: tokens per sliding window (the FFT length).
        stride: tokens between the starts of consecutive windows (1 = every token).
        high_cutoff: frequencies above this many cycles per token count as high (Nyquist is 0.5);
            the low-frequency share is one minus the high share.
        top_k: key neurons kept per failure type.
        types: failure types analysed (a subset of ``FAILURE_TYPES``).
        hidden: hidden layer sizes of each detector's MLP.
        alpha: the MLP's L2 penalty.
        max_iter: MLP training epochs (Adam).
        threshold: ``"youden"`` (maximise TPR - FPR), ``"recall"`` (the highest threshold whose
            window recall reaches ``target_recall``) or ``"precision"`` (the lowest threshold whose window
            precision reaches ``target_precision``: for remedies, where a false alarm costs a trigger the
            model did not need; Youden's J where the failing windows' own share reaches the target),
            chosen on out-of-fold scores of the fitting half.
        target_recall: the window recall ``threshold="recall"`` aims for.
        target_precision: the window precision ``threshold="precision"`` aims for (the most precise
            threshold when no threshold reaches it).
        folds: grouped folds (by problem) on the fitting half for the out-of-fold threshold scores.
        token_buckets: width of the token-only control's bag of token ids (ids are taken modulo it).
        labeller: ``"truth"`` reads the task's own labels (the organism's), ``"auto"`` labels decoded text.
        step_pattern: regular expression between steps for the automatic labeller (default: blank lines).
        units: the kinds of unit ranked and fed to the detectors: ``"neurons"`` (MLP neurons,
            ``blocks.{L}.mlp.hook_post``) and/or ``"heads"`` (attention heads, each head's residual write
            ``||z_h W_O[h]||`` from ``blocks.{L}.attn.hook_z``: the paper puts its inter-step experts in
            attention heads). With both, the ``top_k`` units are chosen from their union; heads need a
            cache made with ``CacheConfig(heads=True)``.
        seed: seeds the problem split and the MLPs.
    """

    window: int = 8
    stride: int = 2
    high_cutoff: float = 0.25
    top_k: int = 16
    types: tuple[str, ...] = FAILURE_TYPES
    hidden: tuple[int, ...] = (32,)
    alpha: float = 1e-3
    max_iter: int = 300
    threshold: str = "youden"
    target_recall: float = 0.9
    target_precision: float = 0.5
    folds: int = 3
    token_buckets: int = 256
    labeller: str = "truth"
    step_pattern: str = r"\n[ \t]*\n"
    units: tuple[str, ...] = ("neurons",)
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"NeuReasonerConfig.{field} must be {why} (got {getattr(self, field)!r})")

        if self.window < 4:
            raise ValueError(f"NeuReasonerConfig.window must be >= 4 (got {self.window}): a spectrum needs a few bins")
        if not 1 <= self.stride <= self.window:
            raise bad("stride", f"between 1 and window={self.window}")
        if not 0.0 < self.high_cutoff < 0.5:
            raise bad("high_cutoff", "strictly between 0 and 0.5 cycles per token")
        if self.top_k < 1:
            raise bad("top_k", ">= 1")
        if not self.types or any(t not in FAILURE_TYPES for t in self.types):
            raise bad("types", f"a non-empty subset of {FAILURE_TYPES}")
        if self.threshold not in THRESHOLDS:
            raise bad("threshold", f"one of {THRESHOLDS}")
        if not 0.0 < self.target_recall <= 1.0:
            raise bad("target_recall", "in (0, 1]")
        if not 0.0 < self.target_precision <= 1.0:
            raise bad("target_precision", "in (0, 1]")
        if self.folds < 2:
            raise bad("folds", ">= 2")
        if self.labeller not in ("truth", "auto"):
            raise bad("labeller", "'truth' or 'auto'")
        if self.token_buckets < 2:
            raise bad("token_buckets", ">= 2")
        if (not isinstance(self.units, tuple) or not self.units or any(u not in UNITS for u in self.units)
                or len(set(self.units)) != len(self.units)):
            raise bad("units", f"a non-empty subset of {UNITS}, each named once, as a tuple")

    def n_windows(self, n_tokens: int) -> int:
        """How many windows a span of ``n_tokens`` holds."""
        return 0 if n_tokens < self.window else (n_tokens - self.window) // self.stride + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, recorded with every neuron set and detector."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT = NeuReasonerConfig()
