"""NEAT's typed report: ``RUN/neat/report.json`` and the ``exit_*`` / ``attribution_*`` keys of ``validate.json``.

Each ``within_window`` figure is the share of held-out traces whose signal peaks within ``window`` tokens of the
answer point. The JSON keys say ``within3`` whatever the window, as ``validate.json`` and the README have always
read them; ``window`` (key ``exit_window``) is the window that was used.

Example:
    >>> hits = WithinWindow(0.9, 0.9, 0.4, [0.4], 0.8, 0.95, 0.9)
    >>> hits.to_json()["exit_within3_p_end"]
    0.9
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.report import Report


@dataclass(frozen=True)
class WithinWindow(Report):
    """Per signal, the share of held-out traces whose peak lies within the window of the answer point."""

    exit: float = field(metadata={"key": "exit_within3"})  # rho = cos(a_t, mu_ref) over the selected neurons
    aligned: float = field(metadata={"key": "exit_within3_aligned"})  # the reference code's sign-aligned similarity
    random: float = field(metadata={"key": "exit_within3_random"})  # as many random neurons, mean over draws
    random_draws: list[float] = field(metadata={"key": "exit_within3_random_draws"})
    top_activated: float = field(metadata={"key": "exit_within3_top_activated"})
    all: float = field(metadata={"key": "exit_within3_all"})  # every neuron of every layer
    p_end: float = field(metadata={"key": "exit_within3_p_end"})  # the model's own p(end of thinking)


@dataclass(frozen=True)
class Agreement(Report):
    """Exact ablation against activation x gradient on the first calibration traces."""

    spearman: float = field(metadata={"key": "attribution_spearman"})
    spearman_per_trace: float = field(metadata={"key": "attribution_spearman_per_trace"})
    top_overlap: float = field(metadata={"key": "attribution_top_overlap"})
    traces: int = field(metadata={"key": "attribution_agreement_traces"})
    layers: list[int] = field(metadata={"key": "attribution_agreement_layers"})


@dataclass(frozen=True)
class ExitReport(Report):
    """``exit_report``'s result: the held-out hit rates beside their controls, and what was selected."""

    within_window: WithinWindow = field(metadata={"report": WithinWindow})
    traces: int = field(metadata={"key": "exit_traces"})  # held-out traces measured
    fit_traces: int = field(metadata={"key": "exit_fit_traces"})
    calibration_traces: int = field(metadata={"key": "exit_calibration_traces"})
    targets_before_think_end: int = field(metadata={"key": "exit_targets_before_think_end"})
    neurons: int = field(metadata={"key": "exit_neurons"})
    layer_counts: dict[str, int] = field(metadata={"key": "exit_layer_counts"})
    selected: list[list[int]] = field(metadata={"key": "exit_selected"})  # (layer, index) pairs
    estimator: str = field(metadata={"key": "exit_estimator"})
    window: int = field(metadata={"key": "exit_window"})
    seconds: float = field(metadata={"key": "exit_seconds"})
    agreement: Agreement | None = field(default=None, metadata={"report": Agreement, "optional": True})
    note: str | None = field(default=None, metadata={"key": "exit_note", "optional": True})
