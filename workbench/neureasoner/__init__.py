"""NeuReasoner (arXiv 2604.02972): failure detection from the fluctuation of a mixture of neurons.

Per failure type (intra-step ``slip``, inter-step ``oscillation``, instance-level ``overthinking``):
label episodes (``labels``), compute fluctuation features of each neuron over sliding windows
(``features``; batch and online), rank the neurons whose features separate failing windows from
healthy ones (``ranking``), fit small MLP detectors on them and score them at window and episode
level beside token-only and random-neuron controls (``detectors``, ``analysis``). ``rank_mon`` and
``mon_report`` run it all on a cached run directory (``run``).

Example:
    >>> from workbench.neureasoner import NeuReasonerConfig
    >>> NeuReasonerConfig().types
    ('slip', 'oscillation', 'overthinking')
"""

from workbench.neureasoner.analysis import MonResult, TraceInput, analyse, rank_key_neurons
from workbench.neureasoner.config import FAILURE_TYPES, NeuReasonerConfig
from workbench.neureasoner.detectors import Detector, token_features
from workbench.neureasoner.features import FEATURES, OnlineFluctuation, window_features, window_starts
from workbench.neureasoner.labels import FailureEvents, auto_events, split_steps
from workbench.neureasoner.ranking import SeparationStats, key_neurons
from workbench.neureasoner.run import mon_report, rank_mon, trace_inputs

__all__ = [
    "FAILURE_TYPES", "FEATURES", "Detector", "FailureEvents", "MonResult", "NeuReasonerConfig", "OnlineFluctuation",
    "SeparationStats", "TraceInput", "analyse", "auto_events", "key_neurons", "mon_report",
    "rank_key_neurons", "rank_mon", "split_steps", "token_features", "trace_inputs",
    "window_features", "window_starts",
]
