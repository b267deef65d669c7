"""The generation engine and its one intervention API (edits, controllers, events).

Example:
    >>> from workbench.engine import Engine, EngineConfig, NeuronEdit, SamplingConfig
"""

from workbench.engine.interventions import Controller, Event, NeuronEdit, StepView
from workbench.engine.loop import Engine, EngineConfig, Finished, Request, generate
from workbench.engine.sampling import SamplingConfig

__all__ = [
    "Controller", "Engine", "EngineConfig", "Event", "Finished", "NeuronEdit", "Request", "SamplingConfig",
    "StepView", "generate",
]
