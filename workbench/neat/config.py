"""``NeatConfig``: every choice NEAT's exit-neuron analysis makes, with the reference code's defaults.

The defaults follow the reference implementation (github.com/KpKqwq/Early_Exist_Circuit,
``identify_neurons.py``) where it is explicit, and the paper (arXiv 2602.02010) where the code is
silent; ``../shared/PAPERS.md`` lists where the two disagree.

Example:
    >>> cfg = NeatConfig()
    >>> (cfg.top_attr, cfg.top_temporal, cfg.vote_k, cfg.tau_cons, cfg.tau_com)
    (300, 100, 50, 0.6, 0.6)
    >>> NeatConfig(estimator="exact")
    Traceback (most recent call last):
    ...
    ValueError: NeatConfig.estimator must be 'auto', 'ablation' or 'gradient', got 'exact'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

ESTIMATORS = ("auto", "ablation", "gradient")
COM_SPANS = ("thinking", "sequence")
# Fields that decide only how the report measures (or how passes are batched), never what calibration finds.
MEASURE_ONLY = ("window", "random_draws", "batch_size", "max_tokens_per_batch", "ablation_batch")


@dataclass(frozen=True, kw_only=True)
class NeatConfig:
    """How exit neurons are attributed, selected and measured.

    Attributes:
        exit_offsets: Imp and the reference pattern are taken at positions ``think_end - k`` for each
            ``k`` here (``think_end`` is the closing marker's first token, so ``k = 1`` is the position
            whose next token is the end of thinking). The reference code uses that one position (its
            last newline before ``</think>``); Imp is summed over the positions, as the code sums them.
        layers: the layers whose neurons are attributed (None: all). The reference code attributes
            layers 19-27 of 28 and then drops layers <= 10; pass e.g. ``tuple(range(19, 28))``.
        estimator: ``"ablation"`` (exact: zero the neuron's ``hook_post`` value at the exit position and
            re-run the rest of the model), ``"gradient"`` (activation x gradient, one backward pass per
            batch), or ``"auto"``: ablation when the attributed layers hold at most
            ``ablation_max_neurons`` neurons.
        ablation_max_neurons: the ``"auto"`` threshold.
        top_attr: per calibration trace, the neurons with the highest positive Imp kept (code: 300).
        top_temporal: of those, the top by Imp scored by their temporal profile (code: 100).
        vote_k: per trace, the candidates with the latest relative centre of mass (entropy breaks
            ties) vote (code: 50).
        tau_cons: a neuron is kept when it votes in at least this share of calibration traces (0.6).
        tau_com: ... and its mean relative centre of mass over those votes is at least this (0.6).
        tau_entropy: optional ceiling on a candidate's normalised entropy (entropy / log2 of the span
            length) for it to vote; None, as in the reference code, uses entropy only to break ties.
        com_span: the span the temporal profile is computed over: ``"thinking"`` (the issue's choice:
            ``think_start + 1 .. think_end - 1``) or ``"sequence"`` (the reference code: every token up to
            the exit position, prompt included).
        max_neurons: keep at most this many selected neurons (None: all that pass).
        calibration_traces: how many traces (drawn evenly across problems, seeded) calibrate the
            selection (None: all). The paper's note mentions 20 greedy traces.
        agreement_traces: how many calibration traces both estimators are run on to report their
            agreement (0: skip).
        random_draws: random neuron sets averaged for the random control.
        window: a signal "hits" when it peaks within this many tokens of the answer point.
        seed: picks calibration traces, the fit/measure split of problems and the random controls.
        batch_size: traces per teacher-forced pass at most.
        max_tokens_per_batch: padded tokens per teacher-forced pass at most (``readout.Budget``).
        ablation_batch: ablated neurons per forward pass of the exact estimator.
        exit_token: the token whose probability the exit neurons raise (None: the run's closing think marker).
            A model that never thinks in a marked span can be calibrated on another, e.g. its end-of-turn token
            (``"<|im_end|>"``): its "thinking" is then the generation up to that token.
    """

    exit_offsets: tuple[int, ...] = (1,)
    layers: tuple[int, ...] | None = None
    estimator: str = "auto"
    ablation_max_neurons: int = 65536
    top_attr: int = 300
    top_temporal: int = 100
    vote_k: int = 50
    tau_cons: float = 0.6
    tau_com: float = 0.6
    tau_entropy: float | None = None
    com_span: str = "thinking"
    max_neurons: int | None = None
    calibration_traces: int | None = 128
    agreement_traces: int = 8
    random_draws: int = 5
    window: int = 3
    seed: int = 0
    batch_size: int = 32
    max_tokens_per_batch: int = 16_384
    ablation_batch: int = 512
    exit_token: str | None = None

    def budget(self):
        """The readout ``Budget`` of the teacher-forced passes (``batch_size``, ``max_tokens_per_batch``)."""
        from workbench.readout import Budget

        return Budget(batch_size=self.batch_size, max_tokens_per_batch=self.max_tokens_per_batch)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (tuples as lists), as ``rank_exit`` records it."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeatConfig:
        """The config ``to_dict`` wrote (lists back to tuples); unknown fields are refused by the constructor.

        >>> NeatConfig.from_dict(NeatConfig(layers=(2, 3)).to_dict()) == NeatConfig(layers=(2, 3))
        True
        """
        tuples = {k: tuple(d[k]) for k in ("exit_offsets", "layers") if d.get(k) is not None}
        return cls(**{**d, **tuples})

    def fit_differences(self, other: NeatConfig) -> list[str]:
        """The fields, other than ``MEASURE_ONLY``, where ``other`` would calibrate differently.

        >>> NeatConfig().fit_differences(NeatConfig(window=5, seed=1))
        ['seed']
        """
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in MEASURE_ONLY and mine[k] != theirs[k]]

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"NeatConfig.estimator must be 'auto', 'ablation' or 'gradient', got {self.estimator!r}")
        if self.com_span not in COM_SPANS:
            raise ValueError(f"NeatConfig.com_span must be 'thinking' or 'sequence', got {self.com_span!r}")
        if not self.exit_offsets or any(k < 1 for k in self.exit_offsets):
            raise ValueError(f"NeatConfig.exit_offsets must be positive offsets before think_end, "
                             f"got {self.exit_offsets}")
        for name in ("top_attr", "top_temporal", "vote_k", "batch_size", "max_tokens_per_batch", "ablation_batch",
                     "ablation_max_neurons"):
            if getattr(self, name) < 1:
                raise ValueError(f"NeatConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tau_cons", "tau_com"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"NeatConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.calibration_traces is not None and self.calibration_traces < 1:
            raise ValueError(f"NeatConfig.calibration_traces must be >= 1 or None, got {self.calibration_traces}")
        if self.layers is not None and (not self.layers or any(layer < 0 for layer in self.layers)):
            raise ValueError(f"NeatConfig.layers must be None or non-negative layer numbers, got {self.layers}")
        if self.exit_token is not None and (not self.exit_token or self.exit_token != self.exit_token.strip()):
            raise ValueError(f"NeatConfig.exit_token must be a token's text without surrounding spaces, got "
                             f"{self.exit_token!r}")
        if self.window < 0 or self.random_draws < 1 or self.agreement_traces < 0:
            raise ValueError("NeatConfig: window and agreement_traces must be >= 0 and random_draws >= 1")


DEFAULT_CONFIG = NeatConfig()
