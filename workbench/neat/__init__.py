"""NEAT (arXiv 2602.02010): exit neurons, whose activation pattern says the model is done thinking.

* ``rank_exit(run_dir)``: attribution at the positions before the end-of-thinking token, the temporal
  filter and the consistency vote, on the fitting half of the run's problems; writes
  ``RUN/neurons/exit.json``, ``RUN/neat/fit.safetensors`` and ``RUN/neat/reference.json`` (``load_fit``);
* ``exit_report(run_dir)``: reads that fit and asks, on the other half, does the exit signal peak at the
  answer point, beside random neurons, top-activated neurons, all neurons and the model's own p(end)?
  Returns an ``ExitReport``, written to ``RUN/neat/report.json``;
* ``ExitMonitor``: the exit signals one token at a time, for a controller.

Example:
    >>> from workbench.neat import NeatConfig, rank_exit, exit_report
    >>> NeatConfig().vote_k
    50
"""

from workbench.neat.attribution import ablation_importance, agreement, gradient_importance, importance
from workbench.neat.calibration import NeatFit, SavedFit, fit_exit, load_fit, rank_exit
from workbench.neat.config import NeatConfig
from workbench.neat.exit_traces import ExitTrace, load_exit_traces
from workbench.neat.reference import ExitMonitor, ExitReading, ExitReference
from workbench.neat.report import exit_report, measure
from workbench.neat.results import ExitReport
from workbench.neat.selection import Selection, TraceVote, candidates, temporal_profile, trace_vote, vote

__all__ = [
    "ExitMonitor", "ExitReading", "ExitReference", "ExitReport", "ExitTrace", "NeatConfig", "NeatFit", "SavedFit",
    "Selection", "TraceVote", "ablation_importance", "agreement", "candidates", "exit_report", "fit_exit",
    "gradient_importance", "importance", "load_exit_traces", "load_fit", "measure", "rank_exit", "temporal_profile",
    "trace_vote", "vote",
]
