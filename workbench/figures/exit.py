"""NEAT's exit signal over one trace: similarity and magnitude against their thresholds, the model's
own p(end of thinking), and where the controller exited or suppressed.

``exit_timeline(RUN, trace_id)`` replays the trace teacher-forced (a clean readout: NEAT's controller
only forces and bans tokens, so the replay sees the activations it saw) and reads the exit neurons and
thresholds from the run's manifest (a ``neat_exit`` controller); on an analysis run it reads
``RUN/neat/reference.json`` and NEAT's default thresholds. Positions count thinking tokens: 0 is the
first token after the opening marker. A reading at position ``t`` decides the token at ``t + 1``.

Example:
    >>> t = ExitTimeline(trace_id="p/0", method="neat", signal="paper", positions=(0, 1, 2), rho=(0.1, 0.5, 0.9),
    ...                  phi=(0.3, 0.4, 0.8), p_end=(0.0, 0.1, 0.7), tau_sim=0.6, tau_mag=0.2, tau_sup=0.4,
    ...                  exited_at=2)
    >>> fig = exit_timeline_figure(t)
    >>> [d.name for d in fig.data][:3], list(fig.data[0].y)
    (['rho', 'p(end of thinking)', 'phi'], [0.1, 0.5, 0.9])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.inputs import MissingInput, read_json
from workbench.figures.style import SCREEN, FigureStyle
from workbench.store.paths import RunPaths


@dataclass(frozen=True, kw_only=True)
class ExitTimeline:
    """The exit signals of one trace, position by position over its thinking span.

    Attributes:
        trace_id, method: which trace, and the run's NEAT method (or ``"analysis"``).
        signal: ``"paper"`` (rho = cos(a, mu_ref), phi = ||a|| / ||mu_ref||) or ``"aligned"`` (sim, mag).
        positions: thinking-token positions (0 = first thinking token).
        rho, phi: similarity and magnitude under ``signal`` at each position.
        p_end: the model's probability that the next token closes thinking (None: not read).
        tau_sim, tau_mag, tau_sup: the exit and suppression thresholds.
        exited_at: the position whose reading made the controller exit (None: it did not).
        suppressed_at: positions whose reading made it ban reflection tokens.
        think_end: the position of the closing marker (None: thinking never closed).
        answer_reached: where the final answer first appears in thinking (task label; None if unknown).
        tokens: each position's token as text (hover), or None.
        recorded: the controller's own reading at ``exited_at`` (from the trace's events), for comparison.
    """

    trace_id: str
    method: str
    signal: str
    positions: tuple[int, ...]
    rho: tuple[float, ...]
    phi: tuple[float, ...]
    p_end: tuple[float, ...] | None = None
    tau_sim: float
    tau_mag: float
    tau_sup: float
    exited_at: int | None = None
    suppressed_at: tuple[int, ...] = ()
    think_end: int | None = None
    answer_reached: int | None = None
    tokens: tuple[str, ...] | None = None
    recorded: dict[str, float] = field(default_factory=dict)


def _neat_spec(run: Path) -> dict[str, Any] | None:
    manifest = read_json(RunPaths(run).manifest, "the run manifest", f"workbench traces --out {run}")
    for c in manifest.get("identity", {}).get("interventions", {}).get("controllers", []):
        if c.get("type") == "neat_exit":
            return c
    return None


def _events(row: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(row["events"]) if row.get("events") else []


def pick_trace(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The trace where NEAT exited after the most thinking (the longest signal to read), else the first
    whose thinking closed, else the first."""
    exited = [r for r in rows if any(e["kind"] == "neat_exit" for e in _events(r))]
    if exited:
        return max(exited, key=lambda r: r["thinking_tokens"] or 0)  # max keeps the first of equals
    return next((r for r in rows if r["think_end"] is not None), rows[0])


def exit_settings(run: str | Path, reference_run: str | Path | None = None) -> tuple[Any, dict[str, Any], list[int]]:
    """(the ``ExitReference``, the method's settings, the closing marker's ids) a timeline of ``run`` reads:
    its ``neat_exit`` controller's, or else ``REFERENCE_RUN/neat/reference.json`` with NeatExit's defaults."""
    from workbench.neat.exit_control import NeatExit
    from workbench.neat.reference import ExitReference

    run = Path(run)
    spec = _neat_spec(run)
    if spec is not None:
        reference = ExitReference(tuple(spec["reference"]["flat"]), tuple(spec["reference"]["signs"]),
                                  tuple(spec["reference"]["mu_ref"]))
        return reference, spec["method"], list(spec.get("close_ids") or [])
    ref_run = Path(reference_run) if reference_run is not None else run
    path = RunPaths(ref_run).exit_reference
    if not path.exists():
        raise MissingInput("NEAT's exit reference", f"workbench rank --method exit {ref_run}", path)
    defaults = NeatExit()
    return ExitReference.load(path), {"name": "analysis", "tau_sim": defaults.tau_sim, "tau_mag": defaults.tau_mag,
                                      "tau_sup": defaults.tau_sup, "signal": defaults.signal}, []


def exit_timeline(run: str | Path, trace_id: str | None = None, model=None, reference_run: str | Path | None = None,
                  ) -> ExitTimeline:
    """The exit signals of ``trace_id`` (default: ``pick_trace``) of a NEAT method run or an analysis run.

    ``model`` defaults to the run's own (loaded from its manifest); ``reference_run`` is where an analysis
    run's ``neat/reference.json`` lives (default: ``run``).
    """
    import torch

    from workbench.model import load_model, resolve
    from workbench.neat.exit_traces import forced_pass
    from workbench.store import load_traces
    from workbench.store.rundir import run_model_spec

    run = Path(run)
    reference, method, close_ids = exit_settings(run, reference_run)
    rows = load_traces(run).to_pylist()
    if not rows:
        raise MissingInput("traces", f"workbench traces --out {run}", RunPaths(run).traces)
    if trace_id is None:
        row = pick_trace(rows)
    else:
        found = [r for r in rows if r["trace_id"] == trace_id]
        if not found:
            raise ValueError(f"{run}: no trace {trace_id!r} (e.g. {rows[0]['trace_id']!r})")
        row = found[0]
    if model is None:
        model = load_model(resolve(run_model_spec(run)))
    d_mlp = model.cfg.d_mlp
    tokens = list(row["token_ids"])
    flat = np.asarray(reference.flat)
    acts = np.zeros((len(tokens), len(flat)), dtype=np.float32)

    start, end = row["think_start"], row["think_end"]
    end_id = close_ids[0] if close_ids else (tokens[end] if end is not None else None)

    def on_layer(layer: int, act: torch.Tensor, at: int) -> None:
        mine = np.flatnonzero(flat // d_mlp == layer)
        if len(mine):
            acts[at : at + act.shape[1], mine] = act[0][:, flat[mine] % d_mlp].numpy()

    p_all = forced_pass(model, [tokens], on_layer, layers=sorted({int(f) // d_mlp for f in flat}),
                        p_of=None if end_id is None else [end_id])
    lo = start + 1 if start is not None else row["prompt_len"]
    hi = end if end is not None else len(tokens)
    signals = reference.signals(acts[lo:hi])
    sim, mag = ("rho", "phi") if method.get("signal", "paper") == "paper" else ("sim", "mag")
    p_end = None if p_all is None else tuple(p_all[0, lo:hi].tolist())
    exited, suppressed, recorded = None, [], {}
    for e in _events(row):
        pos = row["prompt_len"] + e["step"] - 1 - lo  # the reading was taken at the last token before the step
        if e["kind"] == "neat_exit" and exited is None:
            exited, recorded = pos, {k: float(v) for k, v in e["payload"].items()
                                     if isinstance(v, int | float) and not isinstance(v, bool)}
        elif e["kind"] == "neat_suppress":
            suppressed.append(pos)
    answer = row.get("answer_reached")
    tok = getattr(model, "tokenizer", None)
    return ExitTimeline(
        trace_id=row["trace_id"], method=method.get("name", "neat"), signal=method.get("signal", "paper"),
        positions=tuple(range(hi - lo)), rho=tuple(float(x) for x in signals[sim]),
        phi=tuple(float(x) for x in signals[mag]), p_end=p_end, tau_sim=float(method["tau_sim"]),
        tau_mag=float(method["tau_mag"]), tau_sup=float(method["tau_sup"]), exited_at=exited,
        suppressed_at=tuple(suppressed), think_end=(end - lo) if end is not None else None,
        answer_reached=(answer - lo) if answer is not None and lo <= answer < hi else None,
        tokens=tuple(tok.decode([t]) for t in tokens[lo:hi]) if tok is not None else None, recorded=recorded)


def exit_timeline_figure(t: ExitTimeline, style: FigureStyle = SCREEN) -> go.Figure:
    """Similarity (with tau_sim, tau_sup) and p(end) above, magnitude (with tau_mag) below; vertical
    lines where the controller exited, where thinking ended and where the answer was reached."""
    sim, mag = ("rho", "phi") if t.signal == "paper" else ("sim", "mag")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.06)
    x = list(t.positions)
    hover = list(t.tokens) if t.tokens is not None else None
    fig.add_trace(go.Scatter(x=x, y=list(t.rho), name=sim, mode="lines+markers", text=hover,
                             line={"color": style.colour("signal"), "width": style.line_width}), row=1, col=1)
    if t.p_end is not None:
        fig.add_trace(go.Scatter(x=x, y=list(t.p_end), name="p(end of thinking)", mode="lines", text=hover,
                                 line={"color": style.colour("p_end"), "dash": "dash", "width": style.line_width}),
                      row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=list(t.phi), name=mag, mode="lines+markers", text=hover,
                             line={"color": style.colour("magnitude"), "width": style.line_width}), row=2, col=1)
    for y, name, dash, row in ((t.tau_sim, "tau_sim", "dash", 1), (t.tau_sup, "tau_sup", "dot", 1),
                               (t.tau_mag, "tau_mag", "dash", 2)):
        fig.add_trace(go.Scatter(x=[x[0], x[-1]] if x else [0, 1], y=[y, y], mode="lines", name=f"{name} = {y:g}",
                                 line={"color": style.colour("control"), "dash": dash, "width": 1.5}), row=row, col=1)
    if t.suppressed_at:
        at = [p for p in t.suppressed_at if 0 <= p < len(x)]
        fig.add_trace(go.Scatter(x=at, y=[t.rho[p] for p in at], mode="markers", name="suppressed reflection",
                                 marker={"symbol": "x", "size": 10, "color": style.colour("failure")}), row=1, col=1)
    # labels left of the exit and right of the end of thinking: the two are often one token apart
    for pos, label, colour, side in ((t.exited_at, "exit fired", style.colour("failure"), "top left"),
                                     (t.think_end, "end of thinking", style.colour("chance"), "top right"),
                                     (t.answer_reached, "answer reached", style.colour("baseline"), "bottom left")):
        if pos is not None:
            for row in (1, 2):
                fig.add_vline(x=pos, line={"color": colour, "dash": "dot", "width": 1.5}, row=row, col=1,
                              **({"annotation_text": label, "annotation_position": side} if row == 1 else {}))
    fig.update_xaxes(title_text="thinking token", row=2, col=1)
    fig.update_yaxes(title_text=f"{sim}, p(end)", row=1, col=1)
    fig.update_yaxes(title_text=mag, row=2, col=1)
    style.finish(fig, title=f"NEAT exit signal ({t.method}), trace {t.trace_id}")
    # below the plot: the legend is long and the signal needs the width
    return fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"}, margin={"b": 120})
