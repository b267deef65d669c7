"""Neuron figures: a ranking beside its controls, layer distributions, and one neuron's activations
correct vs incorrect (a histogram of span means, a mean trajectory over the thinking span).

Sets come from ``RUN/neurons/<name>.json`` (``workbench rank``); activations from the run's
``ActivationStore`` (``workbench cache``). A method's set is drawn first and its controls beside it
in grey shades (``FAMILIES`` lists them), on one comparable axis: the difference of the two group
means each set records (correct - incorrect, exit - thinking, failing - healthy).

Example:
    >>> from workbench.neurons import NeuronSet
    >>> rcn = NeuronSet.from_pairs([(1, 2), (0, 5)], group_means=(("correct", (0.5, 0.1)), ("incorrect", (0.1, 0.3))))
    >>> [round(v, 2) for v in effect(rcn)], neuron_label(1, 2)
    ([0.4, -0.2], 'L1.2')
    >>> [round(v, 2) for v in ranking_figure({"rcn": rcn}).data[0].y]
    [0.4, -0.2]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from jaxtyping import Float
from scipy import stats

from workbench.figures.inputs import MissingInput, after_cache, open_store
from workbench.figures.style import SCREEN, FigureStyle
from workbench.neurons import NeuronSet, NeuronSetError
from workbench.store.paths import RunPaths

Span = tuple[int, int]  # [start, end) token positions

# A method's set first, then its controls (the files `workbench rank` writes beside it).
FAMILIES: dict[str, tuple[str, ...]] = {
    "rcn": ("rcn", "rcn-unfiltered", "rcn-probe", "rcn-random"),
    "exit": ("exit",),
    "mon-slip": ("mon-slip",),
    "mon-oscillation": ("mon-oscillation",),
    "mon-overthinking": ("mon-overthinking",),
}
GROUPS = ("correct", "incorrect")


def rank_command(name: str, run: Path | str) -> str:
    method = "rcn" if name.startswith("rcn") else "exit" if name == "exit" else "mon"
    command = f"workbench rank --method {method} {run}"
    return command if method == "exit" else after_cache(run, command)  # NEAT reads the model, not the store


def load_neuron_sets(run: str | Path, names: Sequence[str]) -> dict[str, NeuronSet]:
    """The named sets of ``RUN/neurons/`` (best first, as ranked); ``MissingInput`` for the first one missing."""
    out = {}
    for name in names:
        path = RunPaths(run).neuron_set(name)
        if not path.exists():
            raise MissingInput(f"the neuron set {name!r}", rank_command(name, run), path)
        try:
            out[name] = NeuronSet.load(path)
        except NeuronSetError as exc:
            raise MissingInput(f"a readable neuron set {name!r} ({exc})", rank_command(name, run), path) from exc
    return out


def neuron_label(layer: int, index: int) -> str:
    return f"L{layer}.{index}"


def effect(neurons: NeuronSet) -> list[float]:
    """Per neuron, the first group's mean minus the second's (e.g. correct - incorrect); the scores if the set
    records no two groups."""
    if len(neurons.group_means) >= 2:
        (_, a), (_, b) = neurons.group_means[:2]
        return [float(x - y) for x, y in zip(a, b, strict=True)]
    if neurons.scores is None:
        raise ValueError(f"neuron set {neurons.method!r} has neither group means nor scores to plot")
    return [float(s) for s in neurons.scores]


def _effect_name(neurons: NeuronSet) -> str:
    if len(neurons.group_means) >= 2:
        return f"mean activation, {neurons.group_means[0][0]} - {neurons.group_means[1][0]}"
    return "score"


def _shade(style: FigureStyle, i: int) -> str:
    return style.colour("method") if i == 0 else ("#595959", "#8C8C8C", "#BFBFBF", "#D9D9D9")[(i - 1) % 4]


def ranking_figure(sets: Mapping[str, NeuronSet], k: int = 20, style: FigureStyle = SCREEN) -> go.Figure:
    """The top ``k`` neurons of the first set (the method) by rank, each control's top ``k`` beside them."""
    fig = go.Figure()
    first = next(iter(sets.values()))
    for i, (name, neurons) in enumerate(sets.items()):
        top = neurons.top(k)
        labels = [neuron_label(a, b) for a, b in zip(top.layers, top.indices, strict=True)]
        fig.add_trace(go.Bar(x=list(range(1, len(top) + 1)), y=effect(top), name=name, text=labels if i == 0 else None,
                             hovertext=labels, marker_color=_shade(style, i),
                             hovertemplate="%{hovertext}: %{y:.3f}<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group", bargap=0.15)
    return style.finish(fig, title=f"{first.method or 'neuron'} ranking beside its controls (top {k})",
                        x="rank", y=_effect_name(first))


def layer_distribution_figure(sets: Mapping[str, NeuronSet], n_layers: int, style: FigureStyle = SCREEN) -> go.Figure:
    """How many neurons of each set sit in each layer (grouped bars, the method first)."""
    fig = go.Figure()
    for i, (name, neurons) in enumerate(sets.items()):
        counts = neurons.layer_counts()
        fig.add_trace(go.Bar(x=list(range(n_layers)), y=[counts.get(layer, 0) for layer in range(n_layers)],
                             name=f"{name} ({len(neurons)})", marker_color=_shade(style, i)))
    fig.update_layout(barmode="group")
    fig.update_xaxes(dtick=1)
    return style.finish(fig, title="Layer distribution", x="layer", y="neurons")


def neuron_activations(store, layer: int, index: int, span: str = "think") -> dict[str, Float[np.ndarray, " trace"]]:
    """One neuron's mean activation over ``span`` per trace, split into ``correct`` and ``incorrect`` (traces
    without the span left out)."""
    values = store.summary(span)[:, layer, index]
    correct = np.array(store.index["correct"].to_pylist(), dtype=bool)
    ok = ~np.isnan(values)
    return {"correct": values[ok & correct], "incorrect": values[ok & ~correct]}


def activation_histogram_figure(values: Mapping[str, np.ndarray], neuron: str, span: str = "think",
                                style: FigureStyle = SCREEN) -> go.Figure:
    """Overlaid density histograms of one neuron's span means, correct vs incorrect traces."""
    fig = go.Figure()
    for group, v in values.items():
        fig.add_trace(go.Histogram(x=np.asarray(v).tolist(), name=f"{group} (n={len(v)})", opacity=0.6,
                                   histnorm="probability density",
                                   marker_color=style.colour(group if group in GROUPS else 0)))
    fig.update_layout(barmode="overlay")
    return style.finish(fig, title=f"{neuron}: mean activation over {span}, correct vs incorrect",
                        x=f"mean activation over {span}", y="density")


@dataclass(frozen=True)
class Trajectory:
    """A neuron's mean activation per bin of normalised thinking position, per group, with a 95% CI.

    Attributes:
        neuron: its label (``L3.284``).
        centres: bin centres in [0, 1] (0: first thinking token, 1: last).
        mean, lo, hi: per group, one value per bin (NaN where no trace reaches the bin).
        n: per group, how many traces contribute to each bin.
    """

    neuron: str
    centres: tuple[float, ...]
    mean: dict[str, tuple[float, ...]]
    lo: dict[str, tuple[float, ...]]
    hi: dict[str, tuple[float, ...]]
    n: dict[str, tuple[int, ...]]


def bin_means(acts: Float[np.ndarray, " pos"], bins: int) -> Float[np.ndarray, " bin"]:
    """Mean of ``acts`` in each of ``bins`` equal bins of relative position (NaN for an empty bin).

    >>> bin_means(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist()
    [2.0, 6.0]
    """
    acts = np.asarray(acts, dtype=np.float64)
    which = np.minimum(((np.arange(len(acts)) + 0.5) / max(len(acts), 1) * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    sums = np.bincount(which, weights=acts, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def with_token_acts(store, neurons: NeuronSet) -> NeuronSet:
    """The neurons of ``neurons`` whose per-token activations the store keeps, in the set's order."""
    columns = set(store.token_neurons.flat(store.d_mlp))
    return neurons.take([i for i, f in enumerate(neurons.flat(store.d_mlp)) if f in columns])


def neuron_trajectory(store, layer: int, index: int, bins: int = 20) -> Trajectory:
    """Mean trajectory of one neuron over each trace's thinking span (per-token activations from the store),
    correct vs incorrect, with a t-interval over traces per bin."""
    flat = layer * store.d_mlp + index
    columns = store.token_neurons.flat(store.d_mlp)
    if flat not in columns:
        raise MissingInput(f"per-token activations of neuron {neuron_label(layer, index)} (the store keeps "
                           f"{len(columns)} neurons per token)", f"workbench cache {store.run_dir} --top-variance "
                           f"{store.n_neurons}  (after deleting {store.run_dir}/activations)", store.root)
    col = columns.index(flat)
    idx = store.index
    series, spans, correct = [], [], []
    for row, (ok, start, end, n_tokens) in enumerate(zip(*(idx[c].to_pylist() for c in (
            "correct", "think_start", "think_end", "n_tokens")), strict=True)):
        series.append(store.token_acts(row)[:, col])
        spans.append((start + 1 if start is not None else 0, end if end is not None else n_tokens))
        correct.append(bool(ok))
    return trajectory(neuron_label(layer, index), series, spans, correct, bins)


def trajectory(
    label: str, series: Sequence[Float[np.ndarray, " _pos"]], spans: Sequence[Span], correct: Sequence[bool],
    bins: int = 20,
) -> Trajectory:
    """Mean activation per bin of normalised thinking position, correct vs incorrect, with 95% t-intervals.

    Each trace's span ``[lo, hi)`` is cut into ``bins`` equal slices (``bin_means``; a trace with no thinking
    is left out); the result is what ``trajectory_figure`` draws. The series may come from anywhere: the
    store (``neuron_trajectory``), or a teacher-forced pass for a neuron the store did not keep (the app).
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    groups: dict[str, list[np.ndarray]] = {"correct": [], "incorrect": []}
    for values, (lo, hi), ok in zip(series, spans, correct, strict=True):
        if hi > lo:
            groups["correct" if ok else "incorrect"].append(bin_means(np.asarray(values)[lo:hi], bins))
    mean, low, high, count = {}, {}, {}, {}
    for g, rows in groups.items():
        m = np.stack(rows) if rows else np.full((0, bins), np.nan)
        n = (~np.isnan(m)).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # bins no trace reaches stay NaN
            mu = np.nanmean(m, 0) if len(m) else np.full(bins, np.nan)
            sem = np.nanstd(m, 0, ddof=1) / np.sqrt(n)
        half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sem, np.nan)
        mean[g], low[g], high[g] = tuple(mu.tolist()), tuple((mu - half).tolist()), tuple((mu + half).tolist())
        count[g] = tuple(int(x) for x in n)
    centres = tuple(float(c) for c in (np.arange(bins) + 0.5) / bins)
    return Trajectory(label, centres, mean, low, high, count)


def trajectory_figure(traj: Trajectory, style: FigureStyle = SCREEN) -> go.Figure:
    """Mean activation over normalised thinking position, correct vs incorrect, each with its 95% CI band."""
    fig = go.Figure()
    x = list(traj.centres)
    for g in traj.mean:
        fig.add_trace(go.Scatter(x=x, y=list(traj.hi[g]), mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip", name=f"{g} CI upper"))
        fig.add_trace(go.Scatter(x=x, y=list(traj.lo[g]), mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor=style.band(g), name=f"{g} 95% CI", showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=list(traj.mean[g]), mode="lines", name=g, customdata=list(traj.n[g]),
                                 line={"color": style.colour(g), "width": style.line_width},
                                 hovertemplate="%{x:.2f}: %{y:.3f} (%{customdata} traces)<extra>" + g + "</extra>"))
    fig.update_xaxes(range=[0, 1])
    return style.finish(fig, title=f"{traj.neuron}: mean trajectory over thinking, correct vs incorrect",
                        x="position in thinking (0 = first token, 1 = last)", y="activation")


def load_store(run: str | Path):
    """The run's activation store, or ``MissingInput`` naming ``workbench cache RUN``."""
    return open_store(Path(run))
