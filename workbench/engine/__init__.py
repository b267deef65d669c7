"""The generation engine and its one intervention API (edits, controllers, monitors, events).

Example:
    >>> from workbench.engine import Engine, EngineConfig, NeuronEdit, NeuronMonitor, SamplingConfig
"""

from workbench.engine.interventions import Controller, Event, NeuronEdit, NeuronMonitor, NeuronStats, StepView
from workbench.engine.loop import Engine, EngineConfig, Finished, Request, generate
from workbench.engine.sampling import SamplingConfig

__all__ = [
    "Controller", "Engine", "EngineConfig", "Event", "Finished", "NeuronEdit", "NeuronMonitor", "NeuronStats",
    "Request", "SamplingConfig", "StepView", "generate",
]
