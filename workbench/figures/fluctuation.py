"""NeuReasoner's view of one trace: key neurons' activations over thinking with the planted failure
spans and the spans its detector flagged, and the spectral window features the detector reads.

``fluctuation_series(RUN, kind)`` reads an analysis run: per-token activations from its store, key
neurons from ``RUN/neurons/mon-<kind>.json`` and the detector from ``RUN/neureasoner/`` (both written by
``workbench validate`` or a study's ``mon`` stage). By default it shows a trace of the held-out half of
the problems (the detector never saw it) that holds an episode of ``kind``. Positions count thinking
tokens (0 = first token after the opening marker).

Example:
    >>> s = FluctuationSeries(trace_id="p/0", kind="slip", neurons=("L3.1",), acts=np.arange(4.0)[:, None],
    ...                       planted={"slip": ((1, 2),)}, window=4, stride=2, window_starts=np.array([0]),
    ...                       features=np.zeros((1, 1, 6), np.float32))
    >>> fig = fluctuation_figure(s)
    >>> list(fig.data[0].y), [(sh.x0, sh.x1) for sh in fig.layout.shapes]
    ([0.0, 1.0, 2.0, 3.0], [(0.5, 1.5)])
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float, Int
from plotly.subplots import make_subplots

from workbench.figures.inputs import MissingInput, open_store
from workbench.figures.neurons import load_neuron_sets, neuron_label
from workbench.figures.style import SCREEN, FigureStyle
from workbench.store.paths import RunPaths

Span = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class FluctuationSeries:
    """Key neurons over one trace's thinking span, with failure spans and window features.

    Attributes:
        trace_id, kind: the trace, and the failure type (``slip``, ``oscillation``, ``overthinking``).
        neurons: labels of the plotted neurons (``L3.104``), best first.
        acts: their activation at each thinking token.
        planted: per failure type, the trace's labelled episodes ``[start, end)``.
        detected: the spans where the detector of ``kind`` fired (runs of fired windows).
        window, stride: the detector's windows.
        window_starts: first thinking position of each window.
        features: ``window_features`` of the plotted neurons, per window (``workbench.neureasoner.FEATURES``).
        scores: the detector's score per window (None without a detector); ``threshold`` its operating point.
        held_out: whether the trace's problem was outside the detector's fitting half.
    """

    trace_id: str
    kind: str
    neurons: tuple[str, ...]
    acts: Float[np.ndarray, "pos neuron"]
    planted: dict[str, tuple[Span, ...]]
    detected: tuple[Span, ...] = ()
    window: int
    stride: int
    window_starts: Int[np.ndarray, " win"]
    features: Float[np.ndarray, "win neuron feature"]
    scores: Float[np.ndarray, " win"] | None = None
    threshold: float | None = None
    held_out: bool | None = None
    feature_names: tuple[str, ...] = field(default=("mean", "std", "total_variation", "high_ratio", "dominant_ratio",
                                                    "spectral_entropy"))


def _config(params: dict):
    from workbench.neureasoner import NeuReasonerConfig

    names = {f.name for f in fields(NeuReasonerConfig)}
    return NeuReasonerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names})


def fluctuation_series(run: str | Path, kind: str = "slip", trace_id: str | None = None, n_neurons: int = 3,
                       ) -> FluctuationSeries:
    """One trace of an analysis run through NeuReasoner's eyes; see the module docstring."""
    from workbench.neureasoner import FAILURE_TYPES, FEATURES, Detector, trace_inputs, window_features, window_starts
    from workbench.neureasoner.detectors import fired_runs
    from workbench.splits import fit_half

    run = Path(run)
    store = open_store(run)
    key = load_neuron_sets(run, [f"mon-{kind}"])[f"mon-{kind}"]
    det_path = RunPaths(run).detector(kind)
    detector = Detector.load(det_path) if det_path.exists() else None
    cfg = _config(detector.config if detector is not None else key.params)
    traces = trace_inputs(store, cfg)
    fit_ids = fit_half([t.problem for t in traces], cfg.seed)
    ids = store.index["trace_id"].to_pylist()
    if trace_id is not None:
        if trace_id not in ids:
            raise ValueError(f"{run}: no trace {trace_id!r} in the activation store (e.g. {ids[0]!r})")
        row = ids.index(trace_id)
    else:
        def good(i: int, held_out: bool) -> bool:
            t = traces[i]
            return bool(t.events.of(kind)) and t.think[1] - t.think[0] >= cfg.window and \
                (t.problem not in fit_ids) == held_out

        rows = [i for i in range(len(traces)) if good(i, True)] or [i for i in range(len(traces)) if good(i, False)]
        if not rows:
            raise ValueError(f"{run}: no trace has a {kind} episode and at least {cfg.window} thinking tokens")
        row = rows[0]
    tr = traces[row]
    lo, hi = tr.think
    columns = store.token_neurons.flat(store.d_mlp)
    flat = [f for f in key.flat(store.d_mlp) if f in columns][:n_neurons]
    if not flat:
        raise MissingInput(f"per-token activations of the mon-{kind} neurons", f"workbench cache {run} "
                           f"--top-variance {store.n_neurons}  (after deleting {run}/activations)", store.root)
    acts_all = store.token_acts(row)[lo:hi]
    acts = acts_all[:, [columns.index(f) for f in flat]]
    starts = window_starts(hi - lo, cfg)
    scores, threshold, detected = None, None, ()
    if detector is not None and detector.neurons is not None:
        det_cols = [columns.index(f) for f in detector.neurons.flat(store.d_mlp)]
        x = window_features(acts_all[:, det_cols], cfg).reshape(len(starts), -1)
        scores = detector.score(x) if len(starts) else np.zeros(0)
        threshold = float(detector.threshold)
        detected = tuple((int(a), int(b)) for a, b in fired_runs(starts, cfg.window, scores >= threshold))
    planted = {t: tuple((max(s - lo, 0), min(e - lo, hi - lo)) for s, e in tr.events.of(t) if e > lo and s < hi)
               for t in FAILURE_TYPES}
    return FluctuationSeries(
        trace_id=ids[row], kind=kind, neurons=tuple(neuron_label(f // store.d_mlp, f % store.d_mlp) for f in flat),
        acts=np.asarray(acts, np.float32), planted=planted, detected=detected, window=cfg.window, stride=cfg.stride,
        window_starts=np.asarray(starts, np.int64), features=window_features(acts, cfg),
        scores=None if scores is None else np.asarray(scores, np.float64), threshold=threshold,
        held_out=tr.problem not in fit_ids, feature_names=tuple(FEATURES))


def fluctuation_figure(s: FluctuationSeries, style: FigureStyle = SCREEN) -> go.Figure:
    """Activations of the key neurons over thinking; planted episodes of ``kind`` shaded over the whole
    height, the detector's fired spans as a band along the top; the detector's window score below."""
    rows = 2 if s.scores is not None else 1
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3][:rows] if rows == 2 else None,
                        vertical_spacing=0.06)
    x = list(range(len(s.acts)))
    for j, name in enumerate(s.neurons):
        fig.add_trace(go.Scatter(x=x, y=s.acts[:, j].tolist(), mode="lines", name=name,
                                 line={"color": style.colour(j), "width": style.line_width}), row=1, col=1)
    for a, b in s.planted.get(s.kind, ()):
        # token t covers [t - 0.5, t + 0.5]
        fig.add_vrect(x0=a - 0.5, x1=b - 0.5, fillcolor=style.colour("failure"), opacity=0.18, line_width=0,
                      row=1, col=1)
    for a, b in s.detected:
        fig.add_shape(type="rect", x0=a - 0.5, x1=b - 0.5, y0=0.93, y1=1.0, yref="y domain", xref="x",
                      fillcolor=style.colour("detected"), opacity=0.8, line_width=0)
    # legend entries for the two kinds of span
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"planted {s.kind}",
                             marker={"symbol": "square", "size": 12, "color": style.band("failure", 0.4)}),
                  row=1, col=1)
    if s.scores is not None:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="detector fired",
                                 marker={"symbol": "square", "size": 12, "color": style.colour("detected")}),
                      row=1, col=1)
        ends = (s.window_starts + s.window - 1).tolist()
        fig.add_trace(go.Scatter(x=ends, y=s.scores.tolist(), mode="lines+markers", name="detector score",
                                 line={"color": style.colour("detected"), "width": style.line_width}), row=2, col=1)
        fig.add_hline(y=s.threshold, line={"color": style.colour("control"), "dash": "dash"}, row=2, col=1)
        fig.update_yaxes(title_text="p(failure)", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="thinking token (window scores at each window's last token)", row=rows, col=1)
    fig.update_yaxes(title_text="activation", row=1, col=1)
    held = "" if s.held_out is None else (", held-out problem" if s.held_out else ", fitting-half problem")
    return style.finish(fig, title=f"mon-{s.kind} neurons over trace {s.trace_id}{held}")


def spectral_features_figure(s: FluctuationSeries, style: FigureStyle = SCREEN) -> go.Figure:
    """Each window feature the detector reads, per plotted neuron, at each window's start; windows that
    overlap a planted episode of ``kind`` are marked."""
    names = s.feature_names
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.02,
                        subplot_titles=None if style.paper else names)
    starts = s.window_starts.tolist()
    spans = s.planted.get(s.kind, ())
    failing = [any(st < e and st + s.window > a for a, e in spans) for st in starts]
    for f, name in enumerate(names):
        for j, neuron in enumerate(s.neurons):
            fig.add_trace(go.Scatter(x=starts, y=s.features[:, j, f].tolist(), mode="lines+markers", name=neuron,
                                     legendgroup=neuron, showlegend=f == 0,
                                     marker={"symbol": ["x" if w else "circle" for w in failing], "size": 7},
                                     line={"color": style.colour(j), "width": style.line_width * 0.75}),
                          row=f + 1, col=1)
        if style.paper:
            fig.update_yaxes(title_text=name.replace("_", " "), row=f + 1, col=1)
    fig.update_xaxes(title_text=f"window start (thinking token; window {s.window}, x: overlaps a planted {s.kind})",
                     row=len(names), col=1)
    fig.update_layout(height=170 * len(names))
    return style.finish(fig, title=f"Fluctuation features, trace {s.trace_id}")
