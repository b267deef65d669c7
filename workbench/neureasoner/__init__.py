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

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use: the organism imports the trigger tokens from this package, and loading every module
# here (sklearn, the detectors) on that import cost a second to every organism import.
_EXPORTS = {
    "analysis": ("MonResult", "TraceInput", "analyse", "rank_key_neurons"),
    "config": ("FAILURE_TYPES", "NeuReasonerConfig"),
    "detectors": ("Detector", "token_features"),
    "features": ("FEATURES", "OnlineFluctuation", "window_features", "window_starts"),
    "labels": ("FailureEvents", "auto_events", "split_steps"),
    "ranking": ("SeparationStats", "key_neurons"),
    "results": ("DetectorScores", "FailureTypeReport", "MonReport"),
    "run": ("mon_report", "rank_mon", "trace_inputs"),
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
