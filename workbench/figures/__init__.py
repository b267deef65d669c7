"""Every plot of the workbench as a library function returning a plotly ``go.Figure``.

The app, the notebooks and ``workbench figures RUN --out DIR`` call the same functions. Each noun has
its module: a loader that reads what the pipeline wrote into a run directory (raising ``MissingInput``
with the command that makes what is missing) and figure functions that take that data and a
``FigureStyle`` (``SCREEN`` or ``PAPER``). ``catalogue`` gathers every figure a run directory can
give; ``export`` writes a batch of them through one kaleido session.

Example:
    >>> from workbench.figures import PAPER, forest_figure
    >>> rows = [{"method": "m", "task": "t", "reference": "vanilla", "delta_vs_vanilla": 0.1, "delta_ci": [0.0, 0.2],
    ...          "accuracy": 0.5, "thinking_tokens": 9.0}]
    >>> forest_figure(rows, style=PAPER).layout.font.size
    16
"""

from workbench.figures.exit import ExitTimeline, exit_timeline, exit_timeline_figure
from workbench.figures.fluctuation import (
    FluctuationSeries,
    fluctuation_figure,
    fluctuation_series,
    spectral_features_figure,
)
from workbench.figures.inputs import MissingInput
from workbench.figures.neurons import (
    FAMILIES,
    Trajectory,
    activation_histogram_figure,
    effect,
    layer_distribution_figure,
    load_neuron_sets,
    load_store,
    neuron_activations,
    neuron_label,
    neuron_trajectory,
    ranking_figure,
    trajectory_figure,
    with_token_acts,
)
from workbench.figures.probes import auroc_figure, early_curve_figure, load_probe_report, roc_figure
from workbench.figures.study import cost_figure, forest_figure, load_results, tasks
from workbench.figures.style import OKABE_ITO, PAPER, SCREEN, FigureStyle

__all__ = [
    "FAMILIES", "OKABE_ITO", "PAPER", "SCREEN", "ExitTimeline", "FigureStyle", "FluctuationSeries", "MissingInput",
    "Trajectory", "activation_histogram_figure", "auroc_figure", "cost_figure", "early_curve_figure", "effect",
    "exit_timeline", "exit_timeline_figure", "fluctuation_figure", "fluctuation_series", "forest_figure",
    "layer_distribution_figure", "load_neuron_sets", "load_probe_report", "load_results", "load_store",
    "neuron_activations", "neuron_label", "neuron_trajectory", "ranking_figure", "roc_figure",
    "spectral_features_figure", "tasks", "trajectory_figure", "with_token_acts",
]
