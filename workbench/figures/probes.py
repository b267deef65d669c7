"""Probe figures from ``RUN/probes/report.json`` (``workbench probe RUN``): ROC, AUROC beside baselines, early curve.

Each number comes with its grouped bootstrap CI from the report, and each probe sits beside what
simpler inputs reach (hand-computed features of the question, the bag of thinking token ids), so a
figure never shows a probe without its baselines.

Example:
    >>> report = {"probe_auroc_early": 0.8, "probe_auroc_early_ci": [0.7, 0.9],
    ...           "probe_auroc_early_span": "think_first_8",
    ...           "probe_roc_early": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1]}}
    >>> fig = roc_figure(report)
    >>> list(fig.data[-1].x), fig.data[-1].name
    ([0, 0.2, 1], 'probe (think_first_8): AUROC 0.80 [0.70, 0.90]')
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.figures.inputs import after_cache, read_json
from workbench.figures.style import SCREEN, FigureStyle
from workbench.store.paths import RunPaths

# (report key, label): the headline probe's AUROC beside its baselines and the AdaRAS gates, in this order.
AUROCS: tuple[tuple[str, str], ...] = (
    ("probe_auroc_early", "probe on neurons"),
    ("probe_auroc_baseline", "hand features (baseline)"),
    ("probe_auroc_tokens", "token ids (baseline)"),
    ("gate_auroc", "AdaRAS gate (question)"),
    ("gate_auroc_logistic", "logistic gate (question)"),
)


def load_probe_report(run: str | Path) -> dict[str, Any]:
    """``RUN/probes/report.json``, or ``MissingInput`` naming ``workbench probe RUN``."""
    return read_json(RunPaths(run).probe_report, "the probe report", after_cache(run, f"workbench probe {run}"))


def _ci_text(value: float, ci: list[float] | None) -> str:
    if ci is None or any(c is None or math.isnan(c) for c in ci):
        return f"{value:.2f}"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def roc_figure(report: dict[str, Any], style: FigureStyle = SCREEN) -> go.Figure:
    """The early probe's out-of-fold ROC curve with its AUROC [95% CI] in the legend.

    Where the report carries a bootstrap band (``probe_roc_early_band``: ``fpr``, ``tpr_lo``, ``tpr_hi``)
    it is drawn around the curve.
    """
    roc = report["probe_roc_early"]
    span = report.get("probe_auroc_early_span", "early")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                             line={"color": style.colour("chance"), "dash": "dot", "width": 1}))
    band = report.get("probe_roc_early_band")
    if band:
        fig.add_trace(go.Scatter(x=list(band["fpr"]), y=list(band["tpr_hi"]), mode="lines", line={"width": 0},
                                 showlegend=False, hoverinfo="skip", name="CI upper"))
        fig.add_trace(go.Scatter(x=list(band["fpr"]), y=list(band["tpr_lo"]), mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor=style.band("method"), name="95% CI (bootstrap)"))
    label = f"probe ({span}): AUROC {_ci_text(report['probe_auroc_early'], report.get('probe_auroc_early_ci'))}"
    fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=label, line_shape="hv",
                             line={"color": style.colour("method"), "width": style.line_width}))
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1], scaleanchor="x", scaleratio=1)
    fig.update_layout(legend={"x": 0.98, "y": 0.02, "xanchor": "right", "yanchor": "bottom"})
    return style.finish(fig, title=f"Correctness probe on {span}, out of fold ({report.get('probe_traces', '?')} "
                                   "traces)", x="false positive rate", y="true positive rate")


def auroc_figure(report: dict[str, Any], style: FigureStyle = SCREEN) -> go.Figure:
    """AUROC with its 95% CI of the probe, its baselines and the gates (those the report holds)."""
    names, values, lo, hi, colours = [], [], [], [], []
    for key, label in AUROCS:
        value = report.get(key)
        if value is None or math.isnan(value):
            continue
        ci = report.get(f"{key}_ci") or [float("nan")] * 2
        names.append(label)
        values.append(value)
        lo.append(value - ci[0] if not math.isnan(ci[0]) else 0.0)
        hi.append(ci[1] - value if not math.isnan(ci[1]) else 0.0)
        colours.append(style.colour("control") if "baseline" in label else style.colour("method"))
    fig = go.Figure(go.Scatter(x=values, y=names, mode="markers", marker={"color": colours, "size": 10},
                               error_x={"type": "data", "array": hi, "arrayminus": lo, "thickness": 1.5},
                               name="AUROC", showlegend=False))
    fig.add_vline(x=0.5, line={"color": style.colour("chance"), "dash": "dot"})
    fig.update_yaxes(autorange="reversed")
    return style.finish(fig, title="Correctness AUROC [95% CI] beside baselines", x="AUROC (held out)")


def early_curve_figure(report: dict[str, Any], style: FigureStyle = SCREEN) -> go.Figure:
    """AUROC against how many thinking tokens the probe has seen, with its CI band, beside the token-only
    probe on the same tokens and the hand-feature baseline (which reads no thinking tokens: a flat line)."""
    curve = [p for p in report["probe_curve"] if not math.isnan(p["auroc"])]
    ks = [p["k"] for p in curve]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ks, y=[p["ci"][1] for p in curve], mode="lines", line={"width": 0},
                             showlegend=False, hoverinfo="skip", name="CI upper"))
    fig.add_trace(go.Scatter(x=ks, y=[p["ci"][0] for p in curve], mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=style.band("method"), name="95% CI"))
    fig.add_trace(go.Scatter(x=ks, y=[p["auroc"] for p in curve], mode="lines+markers", name="probe on neurons",
                             line={"color": style.colour("method"), "width": style.line_width},
                             customdata=[p["n"] for p in curve],
                             hovertemplate="k=%{x}: AUROC %{y:.3f} (%{customdata} traces)<extra></extra>"))
    if any("auroc_tokens" in p for p in curve):
        fig.add_trace(go.Scatter(x=ks, y=[p.get("auroc_tokens", float("nan")) for p in curve], mode="lines+markers",
                                 name="token ids (baseline)", line={"color": style.colour("control"), "dash": "dash",
                                                                    "width": style.line_width}))
    hand = report.get("probe_auroc_baseline")
    if hand is not None and not math.isnan(hand):
        fig.add_trace(go.Scatter(x=[min(ks), max(ks)], y=[hand, hand], mode="lines", name="hand features (baseline)",
                                 line={"color": style.colour("baseline"), "dash": "dot", "width": style.line_width}))
    fig.add_hline(y=0.5, line={"color": style.colour("chance"), "dash": "dot", "width": 1})
    fig.update_xaxes(type="log", tickvals=ks)
    return style.finish(fig, title="Early predictability: correctness AUROC vs thinking tokens seen",
                        x="thinking tokens seen (k)", y="AUROC (held out)")
