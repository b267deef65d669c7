"""Study figures from ``OUT/results.json`` (``workbench eval`` / ``workbench run``): a forest plot of each
method's paired accuracy change against the reference with its CI, and accuracy against token cost.

Controls sit right below the method they control for (``workbench.evaluation.results.order_methods``),
indented, in their method's colour with open markers (joined to it by a dotted line in the cost plot),
so a method is never read without its control.

Example:
    >>> rows = [{"method": "vanilla", "task": "t", "control_for": None, "reference": "vanilla", "accuracy": 0.7,
    ...          "accuracy_ci": [0.6, 0.8], "delta_vs_vanilla": 0.0, "delta_ci": [0.0, 0.0], "thinking_tokens": 30.0},
    ...         {"method": "steer", "task": "t", "control_for": None, "reference": "vanilla", "accuracy": 0.8,
    ...          "accuracy_ci": [0.7, 0.9], "delta_vs_vanilla": 0.1, "delta_ci": [0.02, 0.18], "thinking_tokens": 28.0}]
    >>> fig = forest_figure(rows)
    >>> fig.data[0].x[0], round(fig.data[0].error_x.array[0], 3), fig.data[0].y[0]
    (0.1, 0.08, 'steer')
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.figures.inputs import MissingInput
from workbench.figures.style import SCREEN, FigureStyle
from workbench.store.paths import StudyPaths


def load_results(study: str | Path) -> list[dict[str, Any]]:
    """The rows of ``OUT/results.json`` (one per task x method, in table order)."""
    path = StudyPaths(study).results_json
    if not path.exists():
        raise MissingInput("the study's results table", f"workbench eval --config STUDY.toml --out {study}", path)
    return json.loads(path.read_text())


def tasks(rows: list[dict[str, Any]]) -> list[str]:
    """The tasks of ``rows``, in order of first appearance."""
    return list(dict.fromkeys(r["task"] for r in rows))


def _task_rows(rows: list[dict[str, Any]], task: str | None) -> tuple[str, list[dict[str, Any]]]:
    from workbench.evaluation.results import order_methods

    names = tasks(rows)
    if not names:
        raise ValueError("the results table has no rows")
    task = names[0] if task is None else task
    if task not in names:
        raise ValueError(f"no results for task {task!r}; the table has {names}")
    mine = {r["method"]: r for r in rows if r["task"] == task}
    order = order_methods([(r["method"], r.get("control_for")) for r in mine.values()])
    return task, [mine[m] for m in order]


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not math.isnan(v) for v in values)


def _families(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Each method's family (its own name, or the method it controls for) as a palette position."""
    roots: dict[str, int] = {}
    out = {}
    parents = {x["method"]: x.get("control_for") for x in rows}
    for r in rows:
        root = r["method"]
        while parents.get(root) in parents and parents[root] != root:
            root = parents[root]
        out[r["method"]] = roots.setdefault(root, len(roots))
    return out


def _label(r: dict[str, Any]) -> str:
    return f"   ↳ {r['method']}" if r.get("control_for") else r["method"]


def forest_figure(rows: list[dict[str, Any]], task: str | None = None, style: FigureStyle = SCREEN) -> go.Figure:
    """Accuracy change against the reference (paired, with its 95% CI) per method of ``task`` (default: the
    first); controls below their method. The reference itself is the zero line."""
    task, rows = _task_rows(rows, task)
    reference = rows[0].get("reference") if rows else None
    shown = [r for r in rows if r["method"] != r.get("reference") and _finite(r["delta_vs_vanilla"])]
    family = _families(rows)
    fig = go.Figure()
    for r in shown:
        control = bool(r.get("control_for"))
        lo, hi = (r.get("delta_ci") or [float("nan")] * 2)
        d = r["delta_vs_vanilla"]
        colour = style.colour(family[r["method"]])
        p = r.get("p_value")
        hover = f"{r['method']}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (f", p={p:.3g}" if _finite(p) else "")
        fig.add_trace(go.Scatter(
            x=[d], y=[_label(r)], mode="markers", name=r["method"], showlegend=False, hovertext=[hover],
            hoverinfo="text",
            marker={"color": colour, "size": 10, "symbol": "circle-open" if control else "circle",
                    "line": {"width": 2, "color": colour}},
            error_x={"type": "data", "array": [hi - d] if _finite(hi) else [0.0],
                     "arrayminus": [d - lo] if _finite(lo) else [0.0], "color": colour, "thickness": 1.5}))
    fig.add_vline(x=0.0, line={"color": style.colour("chance"), "dash": "dot"},
                  annotation_text=reference or "reference", annotation_position="top")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(height=max(320, 34 * len(shown) + 140))
    return style.finish(fig, title=f"{task}: accuracy change vs {reference} [95% paired CI]",
                        x=f"Δ accuracy vs {reference}")


def cost_figure(rows: list[dict[str, Any]], task: str | None = None, style: FigureStyle = SCREEN) -> go.Figure:
    """Accuracy (with its 95% CI) against mean thinking tokens per trace, one point per method of ``task``;
    controls in their method's colour with open markers, joined to it by a dotted line; the reference a star."""
    task, rows = _task_rows(rows, task)
    family = _families(rows)
    fig = go.Figure()
    by_name = {r["method"]: r for r in rows}
    for r in rows:
        parent = by_name.get(r.get("control_for") or "")
        if parent is not None and _finite(r["accuracy"], r["thinking_tokens"], parent["accuracy"],
                                          parent["thinking_tokens"]):
            fig.add_trace(go.Scatter(x=[parent["thinking_tokens"], r["thinking_tokens"]],
                                     y=[parent["accuracy"], r["accuracy"]], mode="lines", showlegend=False,
                                     hoverinfo="skip", line={"color": style.colour(family[r["method"]]), "width": 1,
                                                             "dash": "dot"}))
    for r in rows:
        if not _finite(r["accuracy"], r["thinking_tokens"]):
            continue
        control = bool(r.get("control_for"))
        extra = f"control for {r['control_for']}" if control else ""
        reference = r["method"] == r.get("reference")
        lo, hi = r.get("accuracy_ci") or [float("nan")] * 2
        colour = style.colour(family[r["method"]])
        symbol = "star" if reference else "circle-open" if control else "circle"
        fig.add_trace(go.Scatter(
            x=[r["thinking_tokens"]], y=[r["accuracy"]], mode="markers", name=_label(r),
            marker={"color": colour, "size": 12 if reference else 10, "symbol": symbol,
                    "line": {"width": 2, "color": colour}},
            error_y={"type": "data", "array": [hi - r["accuracy"]] if _finite(hi) else [0.0],
                     "arrayminus": [r["accuracy"] - lo] if _finite(lo) else [0.0], "color": colour,
                     "thickness": 1.5},
            hovertemplate=(f"{r['method']}: accuracy %{{y:.3f}} [{lo:.3f}, {hi:.3f}], %{{x:.1f}} thinking tokens"
                           f"<extra>{extra}</extra>")))
    return style.finish(fig, title=f"{task}: accuracy vs token cost [95% CI]",
                        x="thinking tokens per trace (mean)", y="accuracy (pass@1)")
