"""NeuReasoner's self-correction at inference: detect a failure online and hard-insert its remedy.

While a sequence thinks, the controller reads the union of the key neurons of every failure type
(``RUN/neurons/mon-<type>.json``), updates their sliding-window fluctuation features token by token
(``OnlineFluctuation``: the same windows, offset and stride as the detectors were fitted on) and
scores each type's saved detector (``RUN/neureasoner/detector-<type>.joblib``) on every completed
window. On a detection it acts as the paper does (``PAPERS.md`` §1(c)):

* ``slip`` (intra-step) and ``oscillation`` (inter-step): force the trigger token (``<INTRA>`` /
  ``<INTER>``). A model fine-tuned with ``workbench finetune RUN`` (``workbench organism finetune`` for
  the organism; ``workbench.neureasoner.trainer``) follows it with the remedy: the step redone
  correctly, or the next step instead of another repeat.
* ``overthinking`` (instance level): force a concluding phrase (the paper's "Okay, I have finished
  thinking.") and the end-of-thinking marker; no fine-tuning is needed.

Every action waits for a word boundary: the thinking written so far must end as the task's
``text.word_pattern`` says (after a space or punctuation by default), so a trigger never lands inside
a number (the labeller would read the digits before it as a wrong step result) and thinking never ends
mid-word. A detection with no boundary within ``word_wait`` tokens is dropped (a ``neureasoner_dropped``
note); ``word_wait=0`` acts at once.

A detector fires when its score reaches its saved threshold (Youden's J or target recall on
out-of-fold scores: see ``detectors``), or ``threshold`` when one is given. One episode triggers
once: after firing, a type is disarmed until one of its windows scores below threshold again and
``cooldown`` tokens have passed (consecutive fired windows are one alarm, as the event scores count
them), and it fires at most ``max_triggers`` times per sequence. Every action is recorded as a
``neureasoner_<type>`` note with its score, threshold and the tokens it ``waited`` for a word
boundary, then the engine's ``force`` event. No detector is read on a window that holds a token the
controller forced: no window the detectors were fitted on held one (without this rule, the windows
after an ``<INTRA>`` fired the overthinking detector on most traces of the organism).

Example:
    >>> NeuReasonerRemedy().build(MethodContext(None, None, None))
    Traceback (most recent call last):
    ...
    ValueError: NeuReasonerRemedy needs an analysis run with detectors; none was given (run `workbench rank ...
    >>> NeuReasonerRemedy(types=["slip"], tokens={"slip": "<INTRA>"}).tokens
    (('slip', '<INTRA>'),)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.baselines.thinking import ThinkingController, ThinkState, run_settings
from workbench.engine import Controller, NeuronEdit, StepView
from workbench.evaluation.methods import MethodContext
from workbench.neureasoner.config import FAILURE_TYPES, NeuReasonerConfig
from workbench.neureasoner.detectors import Detector
from workbench.neureasoner.features import OnlineFluctuation
from workbench.neureasoner.triggers import TRIGGERS, trigger_id
from workbench.neurons import NeuronSet, NeuronSetError
from workbench.store.paths import RunPaths
from workbench.tasks.base import TextConventions

PAPER_PHRASE = "Okay, I have finished thinking."
_TAIL = 200  # characters of thinking kept per sequence for the word-boundary test


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, dict) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass(frozen=True, kw_only=True)
class NeuReasonerRemedy:
    """NeuReasoner's online detect-and-remedy over the detectors of an analysis run.

    Attributes:
        name: the label of its rows in results tables.
        types: failure types acted on (a subset of ``slip``, ``oscillation``, ``overthinking``).
        threshold: None: each detector's saved threshold; a number: one threshold for all (ablation).
        thresholds: per-type thresholds (a TOML table or pairs) that override both for the types they
            name, e.g. ``{slip = 0.5}``: Youden's J on rare failing windows picks low thresholds that
            fire often, and a false alarm costs a remedy the model did not need.
        concluding_phrase: forced before the end-of-thinking marker on overthinking. None: the
            paper's phrase ("Okay, I have finished thinking.") when the tokenizer can write it without
            unknown tokens, else the marker alone (the organism's vocabulary has no such words); "": the
            marker alone.
        tokens: the trigger token of each type the fine-tuned model follows (a study's TOML table or
            pairs); slip and oscillation need theirs in the tokenizer.
        cooldown: tokens after a firing before that type may fire again (None: the detector's window).
        max_triggers: firings per type and sequence at most.
        min_thinking: no action before this many thinking tokens.
        detectors: ``"neurons"``: the detectors on each type's key neurons; ``"random"``: the analysis's
            control detectors on as many random neurons (``detector-<type>_random``), which fire at their
            own rate where the key neurons say nothing: the remedy's random-neuron control.
        word_wait: tokens an action waits at most for a word boundary (the task's ``text.word_pattern``);
            a detection with none in time is dropped. 0: act at once, wherever the detector fired.
    """

    name: str = "neureasoner"
    needs_thinking: ClassVar[bool] = True  # acts only inside a thinking span (the results table says when none)
    analyses: ClassVar[tuple[str, ...]] = ("mon",)  # the study stage whose detectors it reads
    types: tuple[str, ...] | list[str] = FAILURE_TYPES
    threshold: float | None = None
    thresholds: tuple[tuple[str, float], ...] | dict[str, float] = ()
    concluding_phrase: str | None = None
    tokens: tuple[tuple[str, str], ...] | dict[str, str] = field(default=TRIGGERS)
    cooldown: int | None = None
    max_triggers: int = 2
    min_thinking: int = 0
    detectors: str = "neurons"
    word_wait: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", tuple(self.types))
        object.__setattr__(self, "tokens", _pairs(self.tokens))
        items = self.thresholds.items() if isinstance(self.thresholds, dict) else self.thresholds
        object.__setattr__(self, "thresholds", tuple(sorted((str(k), float(v)) for k, v in items)))
        bad = [(k, v) for k, v in self.thresholds if k not in FAILURE_TYPES or not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"NeuReasonerRemedy.thresholds: {bad} must name failure types {FAILURE_TYPES} with "
                             "probabilities in [0, 1]")
        if not self.types or any(t not in FAILURE_TYPES for t in self.types):
            raise ValueError(f"NeuReasonerRemedy.types must be a non-empty subset of {FAILURE_TYPES}, got {self.types}")
        missing = [t for t in self.types if t != "overthinking" and t not in dict(self.tokens)]
        if missing:
            raise ValueError(f"NeuReasonerRemedy.tokens names no trigger token for {missing}; give e.g. "
                             f"tokens = {{slip = '<INTRA>', oscillation = '<INTER>'}}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"NeuReasonerRemedy.threshold must be a probability in [0, 1] or None, got "
                             f"{self.threshold}")
        if self.cooldown is not None and self.cooldown < 1:
            raise ValueError(f"NeuReasonerRemedy.cooldown must be >= 1 or None, got {self.cooldown}")
        if self.detectors not in ("neurons", "random"):
            raise ValueError(f"NeuReasonerRemedy.detectors must be 'neurons' or 'random', got {self.detectors!r}")
        if self.word_wait < 0:
            raise ValueError(f"NeuReasonerRemedy.word_wait must be >= 0, got {self.word_wait}")
        if self.max_triggers < 1 or self.min_thinking < 0:
            raise ValueError(f"NeuReasonerRemedy: max_triggers must be >= 1 and min_thinking >= 0 (got "
                             f"{self.max_triggers}, {self.min_thinking})")

    def build(self, ctx: MethodContext) -> tuple[list[NeuronEdit], list[Controller]]:
        """One ``RemedyController`` over the run's detectors; clear errors for what is missing."""
        run = ctx.analysis_run
        if run is None:
            raise ValueError("NeuReasonerRemedy needs an analysis run with detectors; none was given (run `workbench "
                             "rank --method mon RUN` on a cached run and pass it)")
        model_shape = (ctx.model.cfg.n_layers, ctx.model.cfg.d_mlp)
        detectors = load_detectors(Path(run), self.types, model_shape, random=self.detectors == "random")
        tok = ctx.model.tokenizer
        trigger_ids = {t: trigger_id(tok, s) for t, s in self.tokens if t in self.types and t != "overthinking"}
        think_open, think_close, task = run_settings(ctx)
        text = task.text if task is not None else TextConventions()
        return [], [RemedyController(self, detectors, tok, think_open, think_close, trigger_ids, text.word_pattern)]


def load_detectors(
    run: Path, types: tuple[str, ...], model_shape: tuple[int, int], random: bool = False,
) -> dict[str, Detector]:
    """Each type's neuron detector (its random-neuron control when ``random``), checked against
    ``RUN/neurons/mon-<type>.json`` and the model."""
    out = {}
    for t in types:
        det_path = RunPaths(run).detector(f"{t}{'_random' if random else ''}")
        set_path = RunPaths(run).mon_set(t)
        missing = [str(p) for p in (det_path, set_path) if not p.exists()]
        if missing:
            raise ValueError(f"NeuReasonerRemedy: {', '.join(missing)} missing; run `workbench rank --method mon "
                             f"{run}` (mon_report) first")
        det = Detector.load(det_path)
        try:
            mon = NeuronSet.load(set_path, model_shape=model_shape)
        except NeuronSetError as exc:
            raise ValueError(f"NeuReasonerRemedy: {exc}; fit the detectors with this model") from exc
        if det.inputs != ("random" if random else "neurons") or det.neurons is None:
            raise ValueError(f"{det_path}: a {det.inputs!r} detector, not one on {'random' if random else 'key'} "
                             "neurons")
        if det.neurons.model_shape and tuple(det.neurons.model_shape) != tuple(model_shape):
            raise ValueError(f"{det_path}: fitted on a model of shape {det.neurons.model_shape}, not {model_shape}")
        if not random and det.neurons.flat(model_shape[1]) != mon.flat(model_shape[1]):
            raise ValueError(f"NeuReasonerRemedy: {det_path} and {set_path} name different neurons; run "
                             f"`workbench rank --method mon {run}` again")
        out[t] = det
    return out


@dataclass
class _Sequence:
    """One sequence's online state: its features, and per type whether it is armed and when it last fired."""

    online: OnlineFluctuation
    armed: dict[str, bool]
    last: dict[str, int]
    fired: dict[str, int]
    forced_at: int = -(10**9)  # position of the last token this controller forced
    seen: int = 0  # tokens of the sequence read into ``tail``
    tail: str = ""  # the end of the thinking written so far
    pending: tuple[str, float, float, int] | None = None  # (type, score, threshold, position): waiting for a word


class RemedyController(ThinkingController):
    """Applies a ``NeuReasonerRemedy`` spec per thinking token; see the module docstring."""

    def __init__(
        self, spec: NeuReasonerRemedy, detectors: dict[str, Detector], tokenizer, think_open: str, think_close: str,
        trigger_ids: dict[str, int], word_pattern: str = TextConventions().word_pattern,
    ) -> None:
        super().__init__(tokenizer, think_open, think_close)
        self.method, self.detectors, self.trigger_ids = spec, detectors, trigger_ids
        try:
            self.word = re.compile(word_pattern)
        except re.error as exc:
            raise ValueError(f"NeuReasonerRemedy: the task's text.word_pattern {word_pattern!r} is not a regular "
                             f"expression ({exc})") from exc
        configs = {_json_key(d.config) for d in detectors.values()}
        if len(configs) != 1:
            raise ValueError("NeuReasonerRemedy: the detectors were fitted with different window settings; fit them "
                             "in one `mon_report` run")
        first = next(iter(detectors.values()))
        known = set(NeuReasonerConfig.__dataclass_fields__)
        self.cfg = NeuReasonerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in first.config.items() if k in known})
        d_mlp = first.neurons.model_shape[1] if first.neurons.model_shape else None
        if d_mlp is None:
            raise ValueError("NeuReasonerRemedy: the detectors' neuron sets record no model shape")
        flats = {t: d.neurons.flat(d_mlp) for t, d in detectors.items()}
        union = sorted({f for fs in flats.values() for f in fs})
        self.neurons = NeuronSet.from_flat(union, d_mlp, method="neureasoner:union",
                                           model_shape=first.neurons.model_shape)
        where = {f: i for i, f in enumerate(union)}
        self.columns = {t: np.array([where[f] for f in fs]) for t, fs in flats.items()}
        self.cooldown = spec.cooldown or self.cfg.window
        self.phrase_ids = concluding_ids(tokenizer, spec.concluding_phrase)
        # After whitespace the phrase is written without its leading space.
        self.phrase_ids_bare = concluding_ids(tokenizer, spec.concluding_phrase, space=False)
        self.seqs: dict[str, _Sequence] = {}

    def spec(self) -> dict[str, Any]:
        return {"type": "neureasoner_remedy", "method": asdict(self.method), "neurons": asdict(self.neurons),
                "thresholds": {t: self.threshold(t) for t in self.detectors}, "window": self.cfg.to_dict(),
                "trigger_ids": self.trigger_ids, "phrase_ids": self.phrase_ids, "close_ids": self.close_ids,
                "word_pattern": self.word.pattern, "skip_windows_with_forced_tokens": True}

    def threshold(self, kind: str) -> float:
        given = dict(self.method.thresholds)
        if kind in given:
            return given[kind]
        return self.detectors[kind].threshold if self.method.threshold is None else self.method.threshold

    def on_finish(self, key: str) -> None:
        super().on_finish(key)
        self.seqs.pop(key, None)

    def act(self, view: StepView, row: int, state: ThinkState) -> None:
        key, tokens = view.keys[row], view.tokens[row]
        # The activations are of the last token fed; thinking tokens are those from state.start on,
        # the same span ``window_features`` read when the detectors were fitted.
        if state.start is None or len(tokens) - 1 < state.start:
            return
        seq = self.seqs.get(key)
        if seq is None:
            seq = self.seqs[key] = _Sequence(OnlineFluctuation(len(self.neurons), self.cfg),
                                             dict.fromkeys(self.detectors, True), {}, dict.fromkeys(self.detectors, 0),
                                             seen=state.start)
        for t in tokens[seq.seen :]:
            seq.tail = (seq.tail + self.text(t))[-_TAIL:]
        seq.seen = len(tokens)
        feats = seq.online.update(view.acts[row].float().cpu().numpy())
        position = len(tokens) - 1
        if seq.pending is not None:  # a detection waiting for the end of a word: one action at a time
            self._act_at_word(view, row, state, seq, position)
            return
        if feats is None:
            return
        if position - seq.forced_at < self.cfg.window:
            return  # a window holding a forced token is like no window the detectors were fitted on
        for kind, det in self.detectors.items():
            score = float(det.score(feats[self.columns[kind]].reshape(1, -1))[0])
            thr = self.threshold(kind)
            if score < thr:
                seq.armed[kind] = True
                continue
            cooling = position - seq.last.get(kind, -self.cooldown) < self.cooldown
            if (not seq.armed[kind] or cooling or seq.fired[kind] >= self.method.max_triggers
                    or state.thinking_tokens(len(tokens)) < self.method.min_thinking):
                continue
            seq.armed[kind], seq.last[kind] = False, position
            seq.pending = (kind, score, thr, position)
            self._act_at_word(view, row, state, seq, position)
            return  # one action per token

    def at_word(self, seq: _Sequence) -> bool:
        """Whether the thinking written so far ends at a word boundary (the task's ``text.word_pattern``)."""
        return self.word.search(seq.tail) is not None

    def _act_at_word(self, view: StepView, row: int, state: ThinkState, seq: _Sequence, position: int) -> None:
        """Acts on the pending detection if the text ends at a word boundary; drops it after ``word_wait`` tokens."""
        kind, score, thr, since = seq.pending
        waited = position - since
        if self.method.word_wait and not self.at_word(seq):
            if waited >= self.method.word_wait:
                view.note(row, "neureasoner_dropped", type=kind, score=score, threshold=thr, waited=waited)
                seq.pending = None
            return
        seq.pending = None
        seq.fired[kind] += 1
        seq.forced_at = position + 1
        view.note(row, f"neureasoner_{kind}", score=score, threshold=thr, waited=waited)
        if kind == "overthinking":
            phrase = self.phrase_ids_bare if seq.tail[-1:].isspace() else self.phrase_ids
            view.force(row, [*phrase, *self.close_ids])
            state.exiting = True
            return
        view.force(row, [self.trigger_ids[kind]])


def _json_key(d: dict) -> str:
    import json

    return json.dumps(d, sort_keys=True)


def concluding_ids(tokenizer, phrase: str | None, space: bool = True) -> list[int]:
    """The ids of the concluding phrase (see ``NeuReasonerRemedy.concluding_phrase``), after a space
    unless ``space`` is False.

    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> concluding_ids(build_tokenizer(), None)   # the organism cannot write the paper's phrase
    []
    """
    if phrase == "":
        return []
    text = PAPER_PHRASE if phrase is None else phrase
    ids = list(tokenizer((" " if space else "") + text, add_special_tokens=False).input_ids)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        if phrase is None:
            return []
        raise ValueError(f"NeuReasonerRemedy.concluding_phrase {phrase!r} has words this tokenizer cannot write "
                         "(they encode as unknown tokens); give another phrase or '' for the marker alone")
    return ids
