"""AdaRAS's typed reports: the ranking's summary (``RUN/adaras/rcn.json``) and the probe report
(``RUN/probes/report.json``, the ``probe_*``, ``gate_*`` and ``rcn_<label>_*`` keys of ``validate.json``).

Example:
    >>> check = PlantedCheck(0.99, 0.96, 0.98, [0.97, 0.99], 200)
    >>> sorted(check.to_json("regime"))[:2]
    ['rcn_regime_auroc', 'rcn_regime_auroc_projection']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.report import Report


@dataclass(frozen=True)
class ThinkingNote(Report):
    """How many traces opened no thinking span; for those, the "think" spans are the whole generation."""

    traces_without_thinking_span: int
    thinking_note: str | None = field(default=None, metadata={"optional": True})


@dataclass(frozen=True)
class RcnSummary(Report):
    """``rank_rcn``'s summary: per saved set, its layers and its overlap with the RCNs."""

    config: dict[str, Any]
    sets: dict[str, dict[str, Any]]
    n_questions: int
    n_traces: int
    thinking: ThinkingNote = field(metadata={"report": ThinkingNote})


@dataclass(frozen=True)
class EarlyProbe(Report):
    """The headline correctness probe on the early span, beside hand features and token ids over the same tokens."""

    auroc: float = field(metadata={"key": "probe_auroc_early"})
    ci: list[float] = field(metadata={"key": "probe_auroc_early_ci"})
    span: str = field(metadata={"key": "probe_auroc_early_span"})
    traces: int = field(metadata={"key": "probe_traces"})
    roc: Any = field(metadata={"key": "probe_roc_early"})
    roc_band: Any = field(metadata={"key": "probe_roc_early_band"})
    baseline_auroc: float = field(metadata={"key": "probe_auroc_baseline"})
    baseline_ci: list[float] = field(metadata={"key": "probe_auroc_baseline_ci"})
    baseline_features: list[str] = field(metadata={"key": "probe_auroc_baseline_features"})
    # The headline probe within each class of a planted label (e.g. careful / careless).
    within: dict[str, float] = field(metadata={"key": "probe_auroc_early_within_{}", "each": True})
    tokens_auroc: float = field(metadata={"key": "probe_auroc_tokens"})
    tokens_ci: list[float] = field(metadata={"key": "probe_auroc_tokens_ci"})
    baseline_reason: str | None = field(default=None, metadata={"key": "probe_auroc_baseline_reason",
                                                                "optional": True})


@dataclass(frozen=True)
class GateReport(Report):
    """The question-only failure gate and a logistic gate on question means, on held-out questions."""

    auroc: float = field(metadata={"key": "gate_auroc"})
    ci: list[float] = field(metadata={"key": "gate_auroc_ci"})
    threshold: float = field(metadata={"key": "gate_threshold"})
    neurons: int = field(metadata={"key": "gate_neurons"})
    neuron_source: str = field(metadata={"key": "gate_neuron_source"})
    test_traces: int = field(metadata={"key": "gate_test_traces"})
    test_fail_rate: float = field(metadata={"key": "gate_test_fail_rate"})
    threshold_logistic: float = field(metadata={"key": "gate_threshold_logistic"})
    auroc_logistic: float = field(metadata={"key": "gate_auroc_logistic"})


@dataclass(frozen=True)
class PlantedCheck(Report):
    """Do the RCNs read a label the task planted? (``adaras.regime.rcn_regime_auroc``; keys ``rcn_<label>_*``)."""

    auroc: float = field(metadata={"key": "rcn_{}_auroc"})
    projection: float = field(metadata={"key": "rcn_{}_auroc_projection"})
    random: float = field(metadata={"key": "rcn_{}_auroc_random"})
    random_draws: list[float] = field(metadata={"key": "rcn_{}_auroc_random_draws"})
    traces: int = field(metadata={"key": "rcn_{}_traces"})
    projection_control: float | None = field(default=None, metadata={"key": "rcn_{}_auroc_projection_control",
                                                                     "optional": True})


@dataclass(frozen=True)
class ProbeReport(Report):
    """``probe_report``'s result: the early probe, its curve over k, the gate, and each planted-label check."""

    config: dict[str, Any]
    traces: int
    accuracy: float
    thinking: ThinkingNote = field(metadata={"report": ThinkingNote})
    early: EarlyProbe = field(metadata={"report": EarlyProbe})
    curve: list[dict[str, Any]] = field(metadata={"key": "probe_curve"})
    gate: GateReport = field(metadata={"report": GateReport})
    planted: dict[str, PlantedCheck] = field(default_factory=dict, metadata={"report": PlantedCheck, "each": True})
