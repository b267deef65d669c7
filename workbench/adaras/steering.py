"""AdaRAS steering (arXiv 2601.19847, Eq. 3): push the reasoning-critical neurons towards "correct", and
only for the questions the gate expects the model to fail.

Eq. 3 adds ``alpha * S'`` to the top-K RCN activations, ``h^l = h^{l-1} + W_down(phi(W_up h^{l-1}) +
alpha S'_l)``, at the current position of every forward pass from the last prompt token on: exactly
where the engine's ``NeuronEdit`` acts. ``S`` is the neuron's mean-difference score of Eq. 1 (mean
activation of correct traces minus incorrect ones), read from the set's ``correct``/``incorrect`` group
means, so every set (RCNs and their controls) is pushed in activation units along its own difference.

The scale of ``S'`` (``scale``):

* ``"raw"`` (default, the reference code's ``steering_add``): ``S' = S`` as ranked, in activation
  units; the reference pushes ``act += strength * weight`` with ``weight = good_avg - bad_avg`` and
  strength 0.3 (AIME-24) / 0.2 (AIME-25).
* ``"max"``: ``S' = S / max_K |S|``, so ``alpha`` is the largest push any neuron gets, in activation
  units, whatever the run's activation scale (comparable across models and tasks).

Controls: ``neurons="rcn-unfiltered"`` (no polarity filter), ``"rcn-probe"`` (the paper's probing-steer
neurons) and ``"rcn-random"``, which keeps the RCNs' magnitudes ``|alpha S'|`` rank for rank on the
random neurons with signs drawn +-1 with equal odds from ``seed`` (a random neuron has no difference
worth following: its own ``S`` is near 0, so a push along it would be no push at all). ``gate=False``
is the paper's "no adaptive gate" ablation; ``analysis_run`` applies neurons and gate found on one task
to another task's run (cross-task transfer).

The gate (``RUN/adaras/gate/``) reads question tokens only, so every prediction is made before
generation: ``build`` teacher-forces the run's prompts, scores them, and the ``GateSwitch`` controller
turns the edit (``default_on=False``) on for each predicted failure before its prompt is run
(``Controller.initial_edits``), so it is steered from the last prompt token on, as an ungated run is.

Example:
    >>> AdarasSteering(alpha=1.0, gate=False).name, AdarasSteering().k
    ('adaras', 50)
    >>> AdarasSteering(scale="std")
    Traceback (most recent call last):
    ...
    ValueError: AdarasSteering.scale='std'; choose 'raw' or 'max'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from jaxtyping import Float

from workbench.adaras.gate import Gate, question_activations
from workbench.engine import Controller, NeuronEdit
from workbench.engine.interventions import StepView
from workbench.neurons import NeuronSet
from workbench.store.paths import RunPaths, gate_files
from workbench.store.rundir import path_hash

SCALES = ("raw", "max")
RANDOM = "rcn-random"


def mean_difference(neurons: NeuronSet, source: str = "neuron set") -> Float[np.ndarray, " neuron"]:
    """``S`` of each neuron: its mean activation over correct traces minus over incorrect ones.

    >>> s = NeuronSet.from_pairs([(0, 1)], group_means=(("correct", (0.5,)), ("incorrect", (-0.25,))))
    >>> mean_difference(s).tolist()
    [0.75]
    """
    means = dict(neurons.group_means)
    if "correct" not in means or "incorrect" not in means:
        raise ValueError(f"{source}: the set has no 'correct'/'incorrect' group means to steer along "
                         f"(groups: {sorted(means)}); rank it again with `workbench rank --method rcn RUN`")
    return np.nan_to_num(np.array(means["correct"], dtype=np.float64) - np.array(means["incorrect"], dtype=np.float64))


def scaled(s: Float[np.ndarray, " neuron"], scale: str) -> Float[np.ndarray, " neuron"]:
    """``S'`` from ``S`` under a scale convention (see the module docstring).

    >>> scaled(np.array([2.0, -4.0]), "max").tolist()
    [0.5, -1.0]
    """
    if scale == "raw":
        return s
    if scale == "max":
        top = float(np.max(np.abs(s))) if len(s) else 0.0
        return s / top if top > 0 else s
    raise ValueError(f"scale={scale!r}; choose one of {SCALES}")


def random_signs(n: int, seed: int) -> Float[np.ndarray, " neuron"]:
    """``n`` signs, +1 or -1 with equal odds, from ``seed``: the random-neuron control's directions.

    >>> random_signs(4, 0).tolist() == random_signs(4, 0).tolist()
    True
    """
    return np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=n)


class GateSwitch(Controller):
    """Turns edit ``edit`` on, before its prompt is run, for each sequence the gate predicted to fail.

    The switch covers the prefill, so a steered sequence is pushed from its last prompt token on, as
    the paper's Eq. 3 (and an ungated run) does. Every sequence gets a ``gate`` event (its score and
    whether it was steered); predicted failures also get the engine's ``edit_on`` event.

    Args:
        edit: the name of the edit it switches.
        scores: the gate's P(fail) for every trace id of the run, computed before generation.
        threshold: failure predicted where ``score >= threshold``.
        about: what else identifies it in the run's manifest (gate hash, neurons, alpha, ...).
    """

    neurons = None  # reads nothing while generating: the gate has already seen every question

    def __init__(self, edit: str, scores: Mapping[str, float], threshold: float, about: Mapping[str, Any]) -> None:
        self.edit, self.threshold, self.about = edit, float(threshold), dict(about)
        self.scores = {k: float(v) for k, v in scores.items()}
        self.fail = {k: v >= self.threshold for k, v in self.scores.items()}
        self._new: set[str] = set()

    def spec(self) -> dict[str, Any]:
        return {"type": f"{type(self).__module__}.{type(self).__qualname__}", "edit": self.edit,
                "threshold": self.threshold, **self.about}

    def on_start(self, key: str) -> None:
        if key not in self.scores:
            raise ValueError(f"the gate has no prediction for trace {key!r}: it was built for another run config "
                             "(build the method with the MethodContext of the run it steers)")
        self._new.add(key)

    def initial_edits(self, key: str) -> dict[str, bool]:
        if key not in self.scores:
            raise ValueError(f"the gate has no prediction for trace {key!r}: it was built for another run config "
                             "(build the method with the MethodContext of the run it steers)")
        return {self.edit: True} if self.fail[key] else {}

    def on_step(self, view: StepView) -> None:
        for row in view.rows():
            key = view.keys[row]
            if key in self._new:
                self._new.discard(key)
                view.note(row, "gate", score=self.scores[key], steer=self.fail[key])

    def on_finish(self, key: str) -> None:
        self._new.discard(key)


@dataclass(frozen=True)
class AdarasSteering:
    """AdaRAS steering as an evaluation-harness method (study ``type = "adaras"``).

    Attributes:
        name: labels the method's rows and names its edit.
        neurons: the set under ``RUN/neurons/``: ``"rcn"``, or a control ``"rcn-random"``, ``"rcn-probe"``,
            ``"rcn-unfiltered"``.
        k: how many of the set's neurons (best first) to steer (paper K = 50).
        alpha: the steering strength (reference 0.3).
        scale: ``S'`` from ``S``: ``"raw"`` (reference code) or ``"max"`` (unit largest ``|S|``).
        gate: steer only sequences the gate (``RUN/adaras/gate/``) predicts will fail; False is the ablation.
        analysis_run: where neurons and gate come from, when not the harness's analysis run (cross-task).
        seed: draws the random control's signs.
    """

    name: str = "adaras"
    analyses: ClassVar[tuple[str, ...]] = ("rcn", "probe")  # the study stages it reads (the gate: probe)
    neurons: str = "rcn"
    k: int = 50
    alpha: float = 0.3
    scale: str = "raw"
    gate: bool = True
    analysis_run: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"AdarasSteering.scale={self.scale!r}; choose 'raw' or 'max'")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"AdarasSteering.k={self.k!r}; steer at least one neuron")
        if not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha):
            raise ValueError(f"AdarasSteering.alpha={self.alpha!r}; give a finite number")
        if not self.neurons or "/" in self.neurons or self.neurons.endswith(".json"):
            raise ValueError(f"AdarasSteering.neurons={self.neurons!r}; name a set under RUN/neurons/ without "
                             "'.json', e.g. 'rcn' or 'rcn-random'")

    def _run(self, ctx: Any) -> Path:
        run = Path(self.analysis_run) if self.analysis_run is not None else ctx.analysis_run
        if run is None:
            raise ValueError(f"method {self.name!r} needs an analysis run (a cached, ranked run directory): set "
                             "the study's analysis run or this method's analysis_run")
        return Path(run)

    def _load(self, run: Path, name: str, shape: tuple[int, int]) -> tuple[NeuronSet, Path]:
        path = RunPaths(run).neuron_set(name)
        if not path.exists():
            raise ValueError(f"{path}: no neuron set {name!r}; make it with `workbench rank --method rcn {run}`")
        neurons = NeuronSet.load(path, model_shape=shape)  # NeuronSetError for another model's shape
        if len(neurons) < self.k:
            raise ValueError(f"{path}: holds {len(neurons)} neurons, fewer than k={self.k}; lower k or rank "
                             f"more with `workbench rank --method rcn --k {self.k} {run}`")
        return neurons.top(self.k), path

    def edit(self, ctx: Any) -> NeuronEdit:
        """The edit: ``alpha * S'`` on the top-``k`` neurons; on for every sequence unless gated."""
        run = self._run(ctx)
        shape = (ctx.model.cfg.n_layers, ctx.model.cfg.d_mlp)
        neurons, path = self._load(run, self.neurons, shape)
        if self.neurons == RANDOM:
            rcn, rcn_path = self._load(run, "rcn", shape)
            magnitudes = np.abs(scaled(mean_difference(rcn, str(rcn_path)), self.scale))
            values = magnitudes * random_signs(self.k, self.seed)
        else:
            values = scaled(mean_difference(neurons, str(path)), self.scale)
        return NeuronEdit(neurons, tuple(float(v) for v in self.alpha * values), default_on=not self.gate,
                          name=self.name)

    def switch(self, ctx: Any, edit: NeuronEdit) -> GateSwitch:
        """The gate's controller, with its predictions for every trace of ``ctx.run_cfg`` made now."""
        from workbench.traces import prompt_ids  # traces imports the engine; keep this module light to import

        run = self._run(ctx)
        folder = RunPaths(run).gate
        try:
            gate = Gate.load(folder)
        except FileNotFoundError:
            raise ValueError(f"{folder}: no gate ({', '.join(f.name for f in gate_files(folder))}); train it with "
                             f"`workbench probe {run}`, or set gate = false") from None
        gate.neurons.check_fits(ctx.model.cfg.n_layers, ctx.model.cfg.d_mlp)
        ids = prompt_ids(ctx.run_cfg, ctx.model)
        prompts = sorted({tuple(p) for p in ids.values()})
        scores = dict(zip(prompts, gate.scores(question_activations(ctx.model, [list(p) for p in prompts],
                                                                      gate.neurons)), strict=True))
        about = {"gate": {"dir": str(folder), "sha256": path_hash(folder), "neurons": len(gate.neurons)},
                 "neurons": {"set": self.neurons, "k": self.k,
                             "sha256": path_hash(RunPaths(run).neuron_set(self.neurons))},
                 "alpha": float(self.alpha), "scale": self.scale}
        return GateSwitch(edit.name, {key: float(scores[tuple(p)]) for key, p in ids.items()}, gate.threshold,
                          about)

    def build(self, ctx: Any) -> tuple[list[NeuronEdit], list[Controller]]:
        """The edit, and when gated the controller that switches it on for predicted failures."""
        edit = self.edit(ctx)
        return [edit], ([self.switch(ctx, edit)] if self.gate else [])
