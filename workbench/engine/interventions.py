"""The one intervention API: neuron edits as specs, and controllers that watch and act per sequence.

* ``NeuronEdit`` (a frozen spec) adds to or sets chosen ``mlp.hook_post`` neurons at the current
  position of every forward pass: the last prompt token during prefill, then each generated token
  (AdaRAS's push). It is on for every sequence unless a controller turns it off for some.
* A ``Controller`` reads the activations of its ``neurons`` (gathered on the device at the current
  position, never whole layers) and the next-token logits of every live sequence, then acts per
  sequence through the ``StepView``: ban tokens, force a token sequence, stop, toggle an edit. Every
  action is recorded as an ``Event`` (step, sequence, kind, payload).
* A ``NeuronMonitor`` (a frozen spec) keeps per-sequence running statistics (mean and max) of its
  neurons at the current position, on the device; each finished sequence carries them as
  ``NeuronStats``, one small copy to the host per sequence instead of one per token.

Example:
    >>> class StopAfter(Controller):
    ...     def on_step(self, view):
    ...         for row in view.rows():
    ...             if view.n_generated[row] >= 3:
    ...                 view.stop(row, "enough")
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.neurons import NeuronSet


@dataclass(frozen=True)
class NeuronEdit:
    """Add ``values`` to (or set them as) the activations of ``neurons`` at the current position.

    Attributes:
        neurons: which neurons.
        values: one value per neuron (e.g. ``alpha * mean_difference``).
        mode: ``"add"`` or ``"set"``.
        default_on: whether the edit applies to a sequence until a controller toggles it.
        name: how events name it.
    """

    neurons: NeuronSet
    values: tuple[float, ...]
    mode: Literal["add", "set"] = "add"
    default_on: bool = True
    name: str = "edit"

    def __post_init__(self) -> None:
        try:
            values = tuple(float(v) for v in self.values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"NeuronEdit {self.name!r}: values must be numbers, got {self.values!r}") from exc
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"NeuronEdit {self.name!r}: values must be finite; value {bad[0]} is {values[bad[0]]} "
                             f"({len(bad)} non-finite in all)")
        object.__setattr__(self, "values", values)  # a frozen spec, normalised to floats so it hashes alike
        if len(self.values) != len(self.neurons):
            raise ValueError(f"NeuronEdit {self.name!r}: {len(self.neurons)} neurons but {len(self.values)} values")
        if self.mode not in ("add", "set"):
            raise ValueError(f"NeuronEdit {self.name!r}: mode must be 'add' or 'set', got {self.mode!r}")


@dataclass(frozen=True)
class NeuronMonitor:
    """Watch ``neurons`` on every sequence: their mean and max over the positions it runs.

    Attributes:
        neurons: which neurons.
        name: the key of the statistics in ``Finished.stats``.
    """

    neurons: NeuronSet
    name: str = "monitor"


@dataclass(frozen=True)
class NeuronStats:
    """A ``NeuronMonitor``'s reading of one sequence, in the order of its neurons.

    The positions are those every edit and controller acts at, ``n_positions`` in all: the last
    prompt token and each generated token that was run through the model (all but the last when the
    sequence ended on EOS or the length cap; all when a controller stopped it, after its last token ran).

    Attributes:
        mean: mean activation of each neuron over the positions.
        max: maximum activation of each neuron over the positions.
        n_positions: how many positions were seen.
    """

    mean: Float[np.ndarray, " n_neurons"]
    max: Float[np.ndarray, " n_neurons"]
    n_positions: int


@dataclass(frozen=True)
class Event:
    """One action taken on one sequence: ``step`` counts that sequence's generated tokens so far."""

    step: int
    key: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


class Controller:
    """Base class: override what you need. ``neurons`` are read for ``StepView.acts``."""

    neurons: NeuronSet | None = None

    def spec(self) -> dict[str, Any]:
        """What this controller does, as plain data for the manifest of every run it touches.

        The default names the class, its neurons and, for a dataclass controller, its fields;
        override it when a controller's behaviour depends on other state.
        """
        out: dict[str, Any] = {"type": f"{type(self).__module__}.{type(self).__qualname__}"}
        if dataclasses.is_dataclass(self):
            out["fields"] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.neurons is not None:
            out["neurons"] = dataclasses.asdict(self.neurons)
        return out

    def initial_edits(self, key: str) -> dict[str, bool]:
        """Edits to switch on or off for sequence ``key`` before its prompt is run (name -> on).

        A switch made here covers the prefill, so an edit a controller decides on from the prompt
        alone (e.g. AdaRAS's gate) acts from the last prompt token on, as an ungated edit does.
        """
        return {}

    def on_start(self, key: str) -> None:
        """A sequence joined the batch (its prompt has been run)."""

    def on_step(self, view: StepView) -> None:
        """Called once per decode step with every live sequence, before the next token is chosen."""

    def on_finish(self, key: str) -> None:
        """A sequence finished (its events are final)."""


class StepView:
    """What a controller sees at one step, and the actions it may take (recorded as events).

    Rows index the engine's batch slots; ``keys[row]`` names the sequence.
    """

    def __init__(
        self,
        keys: list[str | None],
        live: Bool[Tensor, " batch"],
        logits: Float[Tensor, "batch d_vocab"],
        acts: Float[Tensor, "batch n_neurons"] | None,
        n_generated: list[int],
        tokens: list[list[int]],
        edits: Sequence[NeuronEdit],
        edit_on: Bool[Tensor, "batch n_edits"],
    ) -> None:
        self.keys, self.live, self.logits, self.acts = keys, live, logits, acts
        self.n_generated, self.tokens = n_generated, tokens
        self._edits, self._edit_on = edits, edit_on
        self.events: list[Event] = []
        self.forced: dict[int, list[int]] = {}
        self.stopped: dict[int, str] = {}

    def rows(self) -> Iterator[int]:
        """The live rows."""
        return (int(r) for r in torch.nonzero(self.live).flatten().tolist())

    def _record(self, row: int, kind: str, **payload: Any) -> None:
        key = self.keys[row]
        assert key is not None, f"row {row} holds no sequence"
        self.events.append(Event(self.n_generated[row], key, kind, payload))

    def ban(self, row: int, token_ids: Sequence[int]) -> None:
        """Forbids ``token_ids`` as this step's token for ``row``."""
        self.logits[row, list(token_ids)] = float("-inf")
        self._record(row, "ban", tokens=list(token_ids))

    def force(self, row: int, token_ids: Sequence[int]) -> None:
        """Makes ``row`` emit ``token_ids`` next, one per step, whatever the logits say."""
        if not token_ids:
            raise ValueError("force needs at least one token")
        self.forced[row] = list(token_ids)
        self._record(row, "force", tokens=list(token_ids))

    def stop(self, row: int, reason: str = "controller") -> None:
        """Ends ``row`` now; its finish reason becomes ``reason``."""
        self.stopped[row] = reason
        self._record(row, "stop", reason=reason)

    def set_edit(self, row: int, name: str, on: bool) -> None:
        """Turns the edit called ``name`` on or off for ``row`` from the next forward pass on."""
        names = [e.name for e in self._edits]
        if name not in names:
            raise KeyError(f"no edit named {name!r} (edits: {names})")
        self._edit_on[row, names.index(name)] = on
        self._record(row, "edit_on" if on else "edit_off", edit=name)

    def note(self, row: int, kind: str, **payload: Any) -> None:
        """Records a controller's own observation as an event (e.g. a detector firing)."""
        self._record(row, kind, **payload)
