"""The NeuReasoner analysis's typed report: ``RUN/neureasoner/report.json`` and the ``mon_*`` keys of ``validate.json``.

Every figure is measured on the held-out half of the problems. Per failure type, three detectors are scored
the same way: on the key units (``key``), on as many random units (``random``, keys ``..._<type>_random``) and
on the tokens alone (``tokens``, ``..._<type>_tokens``).

Example:
    >>> scores = DetectorScores(0.5, 0.9, 0.8, 0.3, 0.95, 0.4, 0.7)
    >>> sorted(scores.to_json("slip_random"))[:2]
    ['mon_anticipation_auroc_slip_random', 'mon_auroc_slip_random']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.report import Report


@dataclass(frozen=True)
class DetectorScores(Report):
    """One detector's held-out scores: per window (threshold fitted on the fitting half), per episode, ahead."""

    precision: float = field(metadata={"key": "mon_precision_{}"})
    recall: float = field(metadata={"key": "mon_recall_{}"})
    auroc: float = field(metadata={"key": "mon_auroc_{}"})
    threshold: float = field(metadata={"key": "mon_threshold_{}"})
    event_recall: float = field(metadata={"key": "mon_event_recall_{}"})
    event_precision: float = field(metadata={"key": "mon_event_precision_{}"})
    anticipation_auroc: float = field(metadata={"key": "mon_anticipation_auroc_{}"})


@dataclass(frozen=True)
class FailureTypeReport(Report):
    """One failure type: its held-out windows and episodes, and its detector beside the two controls."""

    failing_windows: int = field(metadata={"key": "mon_failing_windows_{}"})
    events: int = field(metadata={"key": "mon_events_{}"})
    alarms: int = field(metadata={"key": "mon_alarms_{}"})
    key: DetectorScores = field(metadata={"report": DetectorScores, "fill": "{}"})
    random: DetectorScores = field(metadata={"report": DetectorScores, "fill": "{}_random"})
    tokens: DetectorScores = field(metadata={"report": DetectorScores, "fill": "{}_tokens"})
    # With heads among the units: how many of each kind the ranking chose, and their names, best first.
    chosen_neurons: int | None = field(default=None, metadata={"key": "mon_chosen_neurons_{}", "optional": True})
    chosen_heads: int | None = field(default=None, metadata={"key": "mon_chosen_heads_{}", "optional": True})
    chosen: list[str] | None = field(default=None, metadata={"key": "mon_chosen_{}", "optional": True})


@dataclass(frozen=True)
class MonReport(Report):
    """``mon_report``'s result: windows, the settings, and one ``FailureTypeReport`` per type."""

    windows: int = field(metadata={"key": "mon_windows"})
    windows_test: int = field(metadata={"key": "mon_windows_test"})
    traces_test: int = field(metadata={"key": "mon_traces_test"})
    config: dict[str, Any] = field(metadata={"key": "mon_config"})
    types: dict[str, FailureTypeReport] = field(metadata={"report": FailureTypeReport, "each": True})
    token_neurons: int = field(metadata={"key": "mon_token_neurons"})
    labeller: str = field(metadata={"key": "mon_labeller"})
    token_heads: int | None = field(default=None, metadata={"key": "mon_token_heads", "optional": True})
