"""NeuReasoner (arXiv 2604.02972): mixture-of-neurons failure detection from activation fluctuations."""

from workbench.neureasoner.config import FAILURE_TYPES, NeuReasonerConfig
from workbench.neureasoner.features import FEATURES, OnlineFluctuation, window_features, window_starts

__all__ = ["FAILURE_TYPES", "FEATURES", "NeuReasonerConfig", "OnlineFluctuation", "window_features", "window_starts"]
