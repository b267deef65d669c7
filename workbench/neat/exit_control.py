"""NEAT's graded exit (arXiv 2602.02010, Eq. 9-10) as an evaluation-harness method.

At every thinking step the controller reads the exit neurons at the current token and computes
NEAT's two signals against the reference pattern ``mu_ref`` (``RUN/neat/reference.json``):

* exit: when ``rho > tau_sim`` and ``phi > tau_mag``, force the end-of-thinking marker and let the
  model write its answer;
* suppress: when ``tau_sup < rho <= tau_sim`` and the last token ends a reasoning step, set the
  reflection tokens' logits to -inf for the next token (the reference code bans them only right
  after a ``"\\n"`` token: a step boundary; on the organism ``;`` and ``,``);
* otherwise continue.

Two readings of the signals (``signal``), both from ``ExitReference.signals``:

* ``"paper"``: ``rho = cos(a_t, mu_ref)``, ``phi = ||a_t|| / ||mu_ref||`` (Eq. 9);
* ``"aligned"``: the reference code's ``EnsembleNeuronMonitor``: each neuron scaled by its
  sign-aligned reference magnitude, ``sim = cos(z_t, 1)`` and ``mag = ||z_t||`` (a norm: ``sqrt(k)``
  at the reference pattern). As in that code, suppression also needs ``mag > tau_mag``.

Defaults are the paper's and the reference code's, which agree: ``tau_sim = 0.6`` (exit similarity),
``tau_mag = 0.2`` (exit magnitude), ``tau_sup = 0.4`` (suppression similarity); ``PAPERS.md`` §1(b).
The paper's Table 5 values were not captured, and it describes no procedure for calibrating the
thresholds; ``calibrate="prefill"`` is the one per-sequence calibration the reference code has:
the magnitude threshold becomes ``max(tau_mag, 0.5 * magnitude at the last prompt token)``, and a
prompt whose last token already looks like an exit (similarity > 0.8) exits at the first thinking
step.

Ablations (``mode``): ``"exit_only"`` never suppresses; ``"suppress_only"`` never exits and, with no
exit to take over above ``tau_sim``, suppresses whenever ``rho > tau_sup`` (the paper's "suppression
only (tau_sup = 0.4)" row names no upper bound).

Every action is recorded: a ``neat_exit`` or ``neat_suppress`` note with the signal values, then
the engine's own ``force`` or ``ban`` event.

Example:
    >>> NeatExit().build(MethodContext(None, None, None))
    Traceback (most recent call last):
    ...
    ValueError: NeatExit needs an analysis run with exit neurons; none was given (run `workbench rank ...
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.baselines.thinking import (
    ThinkingController,
    ThinkState,
    as_words,
    reflection_ids,
    run_settings,
    step_separators,
)
from workbench.engine import Controller, NeuronEdit, StepView
from workbench.evaluation.methods import MethodContext
from workbench.neat.reference import ExitReference
from workbench.neurons import NeuronSet, NeuronSetError
from workbench.store.paths import RunPaths
from workbench.tasks.base import Task

SIGNALS = ("paper", "aligned")
MODES = ("graded", "exit_only", "suppress_only")
CALIBRATIONS = ("none", "prefill")
PREFILL_EXIT_SIM, PREFILL_MAG_SHARE = 0.8, 0.5  # the reference code's prefill rule

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class NeatExit:
    """NEAT's graded exit over the exit neurons of an analysis run.

    Attributes:
        name: the label of its rows in results tables.
        tau_sim: exit when the similarity exceeds this (and the magnitude exceeds ``tau_mag``).
        tau_mag: the exit's magnitude threshold (``phi``, or ``mag`` for the aligned signal).
        tau_sup: suppress reflection tokens at step boundaries when ``tau_sup < similarity <= tau_sim``.
        signal: ``"paper"`` (rho, phi) or ``"aligned"`` (the reference code's sim, mag).
        mode: ``"graded"``, or the ablations ``"exit_only"`` and ``"suppress_only"``.
        reflection_words: the words suppressed, each as every single-token variant (capitalised,
            with and without a leading space); None: the task's (free text: "wait", "hmm", "alternatively"; the
            reference code also bans "but" and "however").
        step_separators: what ends a reasoning step (None: the task's, ``Task.text.step_ends``: ``;`` and ``,``
            on the organism, a newline for free text).
        min_thinking: no action before this many thinking tokens.
        calibrate: ``"none"`` or ``"prefill"`` (the reference code's rule; see the module docstring).
    """

    name: str = "neat"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    analyses: ClassVar[tuple[str, ...]] = ("exit",)  # the study stages it reads
    tau_sim: float = 0.6
    tau_mag: float = 0.2
    tau_sup: float = 0.4
    signal: str = "paper"
    mode: str = "graded"
    reflection_words: tuple[str, ...] | list[str] | None = None
    step_separators: tuple[str, ...] | list[str] | None = None
    min_thinking: int = 0
    calibrate: str = "none"

    def __post_init__(self) -> None:
        for field_name in ("reflection_words", "step_separators"):  # a study's TOML gives lists
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, as_words(value, f"NeatExit.{field_name}"))
        for field_name, allowed in (("signal", SIGNALS), ("mode", MODES), ("calibrate", CALIBRATIONS)):
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"NeatExit.{field_name} must be one of {allowed}, got {getattr(self, field_name)!r}")
        if self.tau_sup > self.tau_sim:
            raise ValueError(f"NeatExit: tau_sup ({self.tau_sup}) must not exceed tau_sim ({self.tau_sim}); "
                             "the suppression band is tau_sup < similarity <= tau_sim")
        if self.min_thinking < 0:
            raise ValueError(f"NeatExit.min_thinking must be >= 0, got {self.min_thinking}")

    def build(self, ctx: MethodContext) -> tuple[list[NeuronEdit], list[Controller]]:
        """One ``NeatExitController`` over ``RUN/neurons/exit.json`` with ``RUN/neat/reference.json``."""
        run = ctx.analysis_run
        if run is None:
            raise ValueError("NeatExit needs an analysis run with exit neurons; none was given (run "
                             "`workbench rank --method exit RUN` on a cached run and pass it)")
        neurons, reference = load_exit(Path(run), (ctx.model.cfg.n_layers, ctx.model.cfg.d_mlp))
        if len(neurons) < 2:
            # The cosine of one activation with its reference is its sign: rho sits at +-1 and the exit
            # fires at the first token whose sign matches, whatever tau_sim says.
            log.warning("NeatExit %r: only %d exit neuron passed NEAT's vote in %s; rho is then +-1 and tau_sim "
                        "has no effect (calibrate on more traces, or lower tau_cons when ranking)", self.name,
                        len(neurons), run)
        think_open, think_close, task = run_settings(ctx)
        return [], [NeatExitController(self, neurons, reference, ctx.model.tokenizer, think_open, think_close, task)]


def load_exit(run: Path, model_shape: tuple[int, int]) -> tuple[NeuronSet, ExitReference]:
    """The exit neurons and the reference with its columns in the neurons' order; clear errors."""
    paths = RunPaths(run)
    missing = [str(p) for p in (paths.exit_set, paths.exit_reference) if not p.exists()]
    if missing:
        raise ValueError(f"NeatExit: {', '.join(missing)} missing; run `workbench rank --method exit {run}` first")
    try:
        neurons = NeuronSet.load(paths.exit_set, model_shape=model_shape)
    except NeuronSetError as exc:
        raise ValueError(f"NeatExit: {exc}; rank exit neurons with this model (`workbench rank --method exit "
                         f"{run}`)") from exc
    reference = ExitReference.load(paths.exit_reference)
    flat = neurons.flat(model_shape[1])
    if sorted(flat) != sorted(reference.flat):
        raise ValueError(f"NeatExit: {paths.exit_set} and {paths.exit_reference} name different neurons; rank the "
                         f"run again (`workbench rank --method exit {run}`)")
    order = [reference.flat.index(f) for f in flat]
    reference = ExitReference(tuple(flat), tuple(reference.signs[i] for i in order),
                              tuple(reference.mu_ref[i] for i in order))
    return neurons, reference


class NeatExitController(ThinkingController):
    """Applies a ``NeatExit`` spec per thinking step; see the module docstring."""

    def __init__(
        self, spec: NeatExit, neurons: NeuronSet, reference: ExitReference, tokenizer,
        think_open: str, think_close: str, task: Task | None,
    ) -> None:
        super().__init__(tokenizer, think_open, think_close)
        self.method, self.neurons, self.reference = spec, neurons, reference
        self.reflection_ids = reflection_ids(tokenizer, spec.reflection_words, task)
        self.separators = spec.step_separators if spec.step_separators is not None else step_separators(task)
        self.prefill: dict[str, tuple[float, float]] = {}  # key -> (similarity, magnitude) at the last prompt token

    def spec(self) -> dict[str, Any]:
        return {"type": "neat_exit", "method": asdict(self.method), "neurons": asdict(self.neurons),
                "reference": asdict(self.reference), "close_ids": self.close_ids,
                "reflection_ids": self.reflection_ids, "separators": list(self.separators)}

    def on_finish(self, key: str) -> None:
        super().on_finish(key)
        self.prefill.pop(key, None)

    def readings(self, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(similarity, magnitude) per row of ``acts`` under the spec's signal, and all four signals."""
        s = self.reference.signals(acts)
        return (s["rho"], s["phi"], s) if self.method.signal == "paper" else (s["sim"], s["mag"], s)

    def on_step(self, view: StepView) -> None:
        if self.method.calibrate == "prefill":
            for row in view.rows():
                if view.n_generated[row] == 0:
                    sim, mag, _ = self.readings(view.acts[row : row + 1].cpu().numpy())
                    self.prefill[view.keys[row]] = (float(sim[0]), float(mag[0]))
        super().on_step(view)

    def step(self, view: StepView, rows: list[int]) -> None:
        if not rows:
            return
        sim, mag, signals = self.readings(view.acts[rows].cpu().numpy())
        m = self.method
        for i, row in enumerate(rows):
            state: ThinkState = self.states[view.keys[row]]
            if state.thinking_tokens(len(view.tokens[row])) < m.min_thinking:
                continue
            values: dict[str, float] = {k: float(v[i]) for k, v in signals.items()}
            tau_mag, s, g = m.tau_mag, float(sim[i]), float(mag[i])
            if m.calibrate == "prefill" and view.keys[row] in self.prefill:
                pre_sim, pre_mag = self.prefill[view.keys[row]]
                tau_mag = max(tau_mag, PREFILL_MAG_SHARE * pre_mag)
                if pre_sim > PREFILL_EXIT_SIM and m.mode != "suppress_only":
                    self.exit(view, row, "neat_exit", rule="prefill", prefill_similarity=pre_sim, **values)
                    continue
            values["tau_mag"] = tau_mag
            if m.mode != "suppress_only" and s > m.tau_sim and g > tau_mag:
                self.exit(view, row, "neat_exit", rule="graded", **values)
                continue
            upper = np.inf if m.mode == "suppress_only" else m.tau_sim
            in_band = m.tau_sup < s <= upper and (m.signal == "paper" or g > tau_mag)
            if m.mode != "exit_only" and in_band and self.at_boundary(view, row, self.separators):
                view.note(row, "neat_suppress", **values)
                view.ban(row, self.reflection_ids)
