"""AdaRAS (arXiv 2601.19847): reasoning-critical neurons (RCNs), their controls, and the failure gate.

One line each from a notebook::

    from workbench.adaras import rank_rcn, probe_report
    rcn = rank_rcn("runs/x")           # RUN/neurons/rcn.json and its controls
    report = probe_report("runs/x")    # RUN/probes/report.json, RUN/adaras/gate/
"""

from workbench.adaras.gate import Gate, GateConfig, fit_gate, question_activations, select_features, youden_threshold
from workbench.adaras.ranking import (
    AdarasConfig,
    RcnRankings,
    RcnScores,
    combine_spans,
    layer_distribution,
    rank_rcn_arrays,
    rank_with_controls,
    rcn_scores,
)
from workbench.adaras.regime import rcn_regime_auroc
from workbench.adaras.report import ProbeReportConfig, probe_report, rank_rcn, span_means
from workbench.adaras.results import ProbeReport, RcnSummary

__all__ = [
    "AdarasConfig",
    "Gate",
    "GateConfig",
    "ProbeReport",
    "ProbeReportConfig",
    "RcnRankings",
    "RcnScores",
    "RcnSummary",
    "combine_spans",
    "fit_gate",
    "layer_distribution",
    "probe_report",
    "question_activations",
    "rank_rcn",
    "rank_rcn_arrays",
    "rank_with_controls",
    "rcn_regime_auroc",
    "rcn_scores",
    "select_features",
    "span_means",
    "youden_threshold",
]
