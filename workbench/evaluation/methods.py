"""What a method is to the evaluation harness: a frozen spec that builds edits and controllers.

Every method of a study (vanilla, AdaRAS steering, NEAT's graded exit, NeuReasoner's remedy, each
baseline, each ablation) is a frozen, hashable spec. ``build`` turns it into the engine's
``NeuronEdit``s and ``Controller``s for one trace run, reading what the analyses wrote into the
analysis run directory (``RUN/neurons/*.json``, ``RUN/adaras/gate/``, ``RUN/neat/reference.json``,
``RUN/neureasoner/``). The harness then generates through ``run_traces`` with them, so every
method's traces land in their own run directory, with the specs in its manifest, paired with every
other method's by problem and sampler seed.

Example:
    >>> Vanilla().build(None)
    ([], [])
    >>> METHODS["vanilla"]({}).name
    'vanilla'
    >>> METHODS["budget"]({"max_thinking": 12}).max_thinking
    12
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from workbench.engine import Controller, NeuronEdit


@dataclass(frozen=True)
class MethodContext:
    """What a method may read when it is built for one trace run.

    Attributes:
        model: the loaded model (a ``TransformerBridge``) the run generates with.
        analysis_run: the cached, ranked run directory whose neuron sets, gate, exit reference and
            detectors the method uses (None for methods that need none).
        run_cfg: the ``TraceRunConfig`` of the run the method will be applied to (problems, samples,
            seed, prompt format): e.g. a gate reads the prompts from it before generation starts.
    """

    model: Any
    analysis_run: Path | None
    run_cfg: Any


@runtime_checkable
class Method(Protocol):
    """A frozen spec; ``name`` labels its rows in results tables.

    Two optional class attributes tell the harness what a method relies on, so a study can say truthfully why
    it could not apply or did nothing: ``analyses`` (the analysis stages whose outputs ``build`` reads, e.g.
    ``("exit",)``) and ``needs_thinking`` (it acts only inside a thinking span).
    """

    name: str

    def build(self, ctx: MethodContext) -> tuple[list[NeuronEdit], list[Controller]]:
        """The edits and controllers that apply this method to one trace run."""
        ...


@dataclass(frozen=True)
class Vanilla:
    """No intervention: the reference every other method is paired with."""

    name: str = "vanilla"

    def build(self, ctx: MethodContext | None) -> tuple[list[NeuronEdit], list[Controller]]:
        return [], []


def _lazy(target: str) -> Callable[[dict[str, Any]], Method]:
    """A constructor that imports ``module:Class`` when first used (the harness imports no paper it does not run)."""

    def construct(params: dict[str, Any]) -> Method:
        import importlib

        module, cls = target.split(":")
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        return getattr(importlib.import_module(module), cls)(**frozen)

    return construct


# method type (as written in a study file) -> constructor from its parameters (a TOML table).
METHODS: dict[str, Callable[[dict[str, Any]], Method]] = {
    "vanilla": lambda params: Vanilla(**params),
    "adaras": _lazy("workbench.adaras.steering:AdarasSteering"),
    "random-steering": lambda params: _lazy("workbench.adaras.steering:AdarasSteering")(
        {"name": "random-steering", "neurons": "rcn-random", "gate": False, **params}),
    "neat": _lazy("workbench.neat.exit_control:NeatExit"),
    "neureasoner": _lazy("workbench.neureasoner.remedy:NeuReasonerRemedy"),
    "nowait": _lazy("workbench.baselines:NoWait"),
    "budget": _lazy("workbench.baselines:Budget"),
    "answer-consistency": _lazy("workbench.baselines:AnswerConsistency"),
    "deer": _lazy("workbench.baselines:Deer"),
}


def register(kind: str, constructor: Callable[[dict[str, Any]], Method]) -> None:
    """Makes ``kind`` usable as a method ``type`` in study files."""
    if kind in METHODS:
        raise ValueError(f"method type {kind!r} is already registered")
    METHODS[kind] = constructor
