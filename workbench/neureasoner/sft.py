"""NeuReasoner's remedy fine-tuning data: traces with an injected error, a trigger token, then the fix.

The paper fine-tunes on reasoning traces into which errors were injected, each followed by a trigger
token (``<INTRA>`` after an intra-step error, ``<INTER>`` after an inter-step one) and the correction,
with the injected error and the trigger masked out of the loss: the model learns what to do *after* the
token, never to make the error or to write the token; at inference a detector inserts it (``remedy``).

``TraceRunData`` builds such examples from any trace run (``workbench traces``), on the run's own
traces (correct ones by default: what follows the trigger is the trace's original continuation). Each
trace's thinking is split into steps with its task's ``text.step_pattern`` (``labels.split_steps``):

* ``slip``: a number in one step changed (the step's result, the number after its last ``=``, when it
  has one; else one of its numbers), one digit replaced; the trace runs on to the next word boundary
  (the task's ``text.word_pattern``: where the remedy inserts a trigger), or up to ``late`` boundaries
  more (a detector firing late); then ``<INTRA>``, the step written again as it was, and the rest.
* ``oscillation``: a step written again right after itself (its separator too), cut at a word boundary;
  then ``<INTER>`` and the original continuation from the next step.
* ``plain``: the trace as generated, so the model keeps its behaviour where no trigger comes.

Loss: the prompt, the injected error (with what ran on after it) and the trigger are masked (``-100``);
everything else the model wrote is trained, through its end-of-sequence token. A data recipe is any
``SftData``; ``trainer.finetune`` draws its batches from one (the organism's own recipe is
``workbench.organism.sft_data.OrganismData``).

Example:
    >>> import random
    >>> trace = RunTrace("q0/0", "q0", "Q: (3 + 4) * 2? <think>\\n", "", "3 + 4 = 7\\n\\n7 * 2 = 14\\n", "</think> 14",
    ...                  ((0, 9), (11, 21)), True)
    >>> got = inject(trace, random.Random(0), "slip", r"(^|[\\s.,;:!?)\\]}])$", late=0)
    >>> "".join(text for text, _ in got.pieces)
    '3 + 4 = 7\\n\\n7 * 2 = 10\\n<INTRA>7 * 2 = 14\\n</think> 14'
    >>> [text for text, trained in got.pieces if not trained]   # the injected error and its trigger
    ['10', '\\n', '<INTRA>']
    >>> got = inject(trace, random.Random(0), "oscillation", r"(^|[\\s.,;:!?)\\]}])$", cut=False)
    >>> "".join(text for text, _ in got.pieces)
    '3 + 4 = 7\\n\\n3 + 4 = 7\\n\\n<INTER>7 * 2 = 14\\n</think> 14'
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from workbench.neureasoner.labels import split_steps
from workbench.neureasoner.triggers import TRIGGERS

KINDS = ("slip", "oscillation", "plain")
Pieces = list[tuple[str, bool]]  # (text, trained), joined as they are
Example = tuple[list[int], list[int], str]  # (input ids, labels with -100 where untrained, kind)
_NUMBER = re.compile(r"\d+")
_RESULT = re.compile(r"=\s*\D{0,2}?(\d+)[^=]*$")  # the first number after a step's last "=" (after a $ or so)


@runtime_checkable
class SftData(Protocol):
    """A source of fine-tuning examples: what ``trainer.finetune`` draws its batches from.

    ``trigger_lstrip``: whether the whitespace before a trigger belongs to it (``add_triggers``).
    """

    trigger_lstrip: ClassVar[bool]

    def record(self) -> dict[str, Any]:
        """What defines the data, as plain data: written to ``sft.json`` and compared when a run resumes."""
        ...

    def check(self) -> None:
        """Raises ``ValueError`` (naming what is missing and what to do) when no example can be drawn."""
        ...

    def example(self, rng: random.Random, tokenizer: Any, triggers: Mapping[str, str]) -> Example:
        """One example drawn from ``rng``, encoded with ``tokenizer`` (which has the ``triggers`` tokens)."""
        ...


def encode(pieces: Sequence[tuple[str, bool]], tokenizer: Any, add_special_tokens: bool = True
           ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of the pieces joined: a token is trained when every character it covers is.

    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> encode([("Q: 4 + 5", False), (" = 9", True)], build_tokenizer())
    ([2, 4, 41, 7, 43, 9, 51], [-100, -100, -100, -100, -100, 9, 51])
    """
    text, trained = "", []
    for part, keep in pieces:
        text += part
        trained += [keep] * len(part)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    ids = list(enc.input_ids)
    labels = [tid if e > s and all(trained[s:e]) else -100
              for tid, (s, e) in zip(ids, enc.offset_mapping, strict=True)]
    return ids, labels


def word_boundaries(text: str, lo: int, hi: int, pattern: str) -> list[int]:
    """Positions ``p`` in ``(lo, hi]`` where a token could end with ``text[:p]`` at a word boundary (``pattern``,
    a task's ``text.word_pattern``): where the remedy would insert a trigger.

    Tokenizers write a space with the word after it and a run of newlines as one token, so a boundary is
    never right after a space or inside a run of newlines.

    >>> word_boundaries("3 + 4 = 7\\n\\n7 * 2, so 14", 8, 30, r"(^|[\\s.,;:!?)\\]}])$")
    [11, 17]
    """
    rx = re.compile(pattern)
    # A boundary pattern looks at the end of the text only: searching the last 200 characters is enough.
    return [p for p in range(max(lo + 1, 1), min(hi, len(text)) + 1)
            if text[p - 1] not in " \t" and (p == len(text) or text[p] not in "\r\n")
            and rx.search(text, max(0, p - 200), p) is not None]


@dataclass(frozen=True)
class RunTrace:
    """One stored trace as text: the prompt, what was generated before thinking opened (``lead``), the
    thinking (split into ``steps``, character spans) and the rest (``tail``: closing marker, answer, end)."""

    trace_id: str
    problem_id: str
    prompt: str
    lead: str
    thinking: str
    tail: str
    steps: tuple[tuple[int, int], ...]
    correct: bool


@dataclass(frozen=True)
class Injection:
    """An injected error and its remedy as pieces of the generation (the prompt apart), with what the
    following measurement checks: the right and wrong value of a slip, the step a repeat repeated.
    ``at`` is the index of the trigger's piece (None for a plain trace)."""

    kind: str
    pieces: Pieces
    at: int | None = None
    right: str | None = None
    wrong: str | None = None
    step: str | None = None

    def prefix(self, with_trigger: bool = True) -> str:
        """The text up to the trigger (included when ``with_trigger``): what the model goes on from."""
        if self.at is None:
            raise ValueError("a plain trace has no trigger to cut it at")
        return "".join(t for t, _ in self.pieces[: self.at + 1 if with_trigger else self.at])


def _corrupt(number: str, rng: random.Random) -> str:
    """``number`` with one digit replaced by another (never a leading zero)."""
    i = rng.randrange(len(number))
    choices = [d for d in "0123456789" if d != number[i] and not (d == "0" and i == 0 and len(number) > 1)]
    return number[:i] + rng.choice(choices) + number[i + 1 :]


def _join(before: str, after: str, gap: str) -> str:
    """``after`` preceded by ``gap`` (the whitespace that stood there) unless ``before`` ends with whitespace."""
    return after if not before or before[-1].isspace() else (gap if gap.strip() == "" and gap else " ") + after


def _numbered(trace: RunTrace) -> list[int]:
    return [i for i, (a, b) in enumerate(trace.steps) if _NUMBER.search(trace.thinking, a, b)]


def inject(
    trace: RunTrace, rng: random.Random, kind: str, word_pattern: str, triggers: Mapping[str, str] | None = None,
    late: int = 1, cut: bool = True,
) -> Injection | None:
    """``trace`` with an injected ``kind`` error (``KINDS``) and its remedy; None when it has no place for one.

    ``late``: a slip's trigger comes at one of the first ``late + 1`` word boundaries after the changed
    number; ``cut``: a repeat is cut at a random word boundary (else written whole, with its separator).
    """
    triggers = dict(TRIGGERS if triggers is None else triggers)
    think, steps = trace.thinking, trace.steps
    head, tail = [(trace.lead, True)], [(trace.tail, True)]
    if kind == "plain":
        return Injection(kind, _clean([*head, (think, True), *tail]))
    if kind not in KINDS:
        raise ValueError(f"inject: kind must be one of {KINDS}, got {kind!r}")
    if kind == "slip":
        numbered = _numbered(trace)
        if not numbered:
            return None
        i = rng.choice(numbered)
        a, b = steps[i]
        result = _RESULT.search(think, a, b)
        if result is not None:
            start, end = result.span(1)
        else:
            start, end = rng.choice([m.span() for m in _NUMBER.finditer(think, a, b)])
        right = think[start:end]
        wrong = _corrupt(right, rng)  # as long as ``right``: positions in the slipped text are those of ``think``
        nxt = steps[i + 1][0] if i + 1 < len(steps) else len(think)
        stops = word_boundaries(think[:start] + wrong + think[end:], end - 1, nxt, word_pattern)
        stop = rng.choice(stops[: late + 1]) if stops else nxt
        before = [(think[:start], True), (wrong, False), (think[end:stop], False)]
        gap = think[steps[i - 1][1] : a] if i else think[:a]
        redo = _join(think[:start] + wrong + think[end:stop], think[a:], gap)
        return _injection(kind, [*head, *before], triggers["slip"], [(redo, True), *tail],
                          right=right, wrong=wrong, step=think[a:b])
    if len(steps) < 2:
        return None
    i = rng.randrange(len(steps) - 1)
    a, b = steps[i]
    nxt = steps[i + 1][0]
    repeated = think[:nxt] + think[a:nxt]
    stops = word_boundaries(repeated, nxt, len(repeated), word_pattern) if cut else []
    stop = rng.choice(stops) if stops else len(repeated)
    rest = _join(repeated[:stop], think[nxt:], think[b:nxt])
    return _injection(kind, [*head, (think[:nxt], True), (repeated[nxt:stop], False)], triggers["oscillation"],
                      [(rest, True), *tail], step=think[a:b])


def _injection(kind: str, before: Pieces, trigger: str, after: Pieces, **info: str) -> Injection:
    before = _clean(before)
    return Injection(kind, [*before, (trigger, False), *_clean(after)], at=len(before), **info)


def _clean(pieces: Pieces) -> Pieces:
    return [(t, keep) for t, keep in pieces if t]


@dataclass(frozen=True)
class RunSource:
    """A trace run read for fine-tuning: its traces as text, its task's text conventions and prompt format."""

    run: Path
    traces: tuple[RunTrace, ...]
    step_pattern: str
    word_pattern: str
    prompt: Any  # the run's PromptFormat

    @classmethod
    def load(cls, run: str | Path) -> RunSource:
        """Decodes every trace of ``run`` with its model's tokenizer and splits its thinking into steps."""
        from workbench.model import load_tokenizer
        from workbench.store import load_traces
        from workbench.traces import config_task, run_config

        run = Path(run)
        cfg = run_config(run)
        text = config_task(cfg).text
        tok = load_tokenizer(cfg.model)

        def dec(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) if ids else ""

        traces = []
        for r in load_traces(run).to_pylist():
            ids, p, n = list(r["token_ids"]), r["prompt_len"], len(r["token_ids"])
            last = n - 1 if r["finish_reason"] == "eos" and n > p else n  # a stop token is no part of a step
            if r["think_start"] is None:  # no thinking span: the generation is read whole
                lo, hi = p, last
            else:
                lo, hi = max(r["think_start"] + 1, p), r["think_end"] if r["think_end"] is not None else last
            thinking = dec(ids[lo:hi])
            traces.append(RunTrace(r["trace_id"], r["problem_id"], r["prompt"], dec(ids[p:lo]), thinking,
                                   dec(ids[hi:]), tuple(split_steps(thinking, text.step_pattern)),
                                   bool(r["correct"])))
        return cls(run, tuple(traces), text.step_pattern, text.word_pattern, cfg.prompt)

    def usable(self, correct_only: bool = True) -> list[RunTrace]:
        """The traces an error can be injected into: two steps at least (correct ones when ``correct_only``)."""
        return [t for t in self.traces if len(t.steps) >= 2 and (t.correct or not correct_only)]

    def prompt_ids(self, tokenizer: Any, prompt: str) -> list[int]:
        """A trace's prompt tokenised as the run fed it (its prompt format's BOS policy), by ``tokenizer``."""
        return self.prompt.resolve(tokenizer).tokenize(tokenizer, prompt)


@dataclass(frozen=True, kw_only=True)
class TraceRunData:
    """Examples from the traces of one trace run (see the module docstring).

    Attributes:
        run: the trace run directory.
        slip_share, oscillation_share: shares of examples with an injected slip / repeat (the rest plain).
        late: a slip's trigger comes at one of the first ``late + 1`` word boundaries after the changed number.
        correct_only: only the run's correct traces (what follows a trigger is the original continuation).
    """

    run: str | Path
    slip_share: float = 0.35
    oscillation_share: float = 0.35
    late: int = 1
    correct_only: bool = True

    # A trigger comes right after a word boundary, a newline often: the newline stays its own token, as at
    # inference, where the remedy forces the trigger after it.
    trigger_lstrip: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", str(self.run))
        if not (0 <= self.slip_share and 0 <= self.oscillation_share and self.slip_share + self.oscillation_share <= 1):
            raise ValueError(f"TraceRunData: slip_share ({self.slip_share}) and oscillation_share "
                             f"({self.oscillation_share}) must be >= 0 and sum to at most 1")
        if self.late < 0:
            raise ValueError(f"TraceRunData.late must be >= 0, got {self.late}")

    @cached_property
    def source(self) -> RunSource:
        return RunSource.load(self.run)

    @cached_property
    def traces(self) -> list[RunTrace]:
        return self.source.usable(self.correct_only)

    def record(self) -> dict[str, Any]:
        return {"type": "trace_run", **asdict(self)}

    def check(self) -> None:
        all_traces = self.source.traces
        if not self.traces:
            correct = sum(t.correct for t in all_traces)
            stepped = sum(len(t.steps) >= 2 for t in all_traces if t.correct or not self.correct_only)
            raise ValueError(
                f"{self.run}: none of its {len(all_traces)} traces can be fine-tuned on: {correct} are correct and "
                f"{stepped} of the {'correct ' if self.correct_only else ''}ones have two thinking steps or more "
                f"(split by the task's step pattern {self.source.step_pattern!r}); generate traces the model gets "
                "right with `workbench traces`, or use every trace (correct_only=False)")
        if self.slip_share > 0 and not any(_numbered(t) for t in self.traces):
            raise ValueError(f"{self.run}: no usable trace has a number in its thinking to inject a slip into "
                             f"({len(self.traces)} traces); set slip_share to 0")

    def example(self, rng: random.Random, tokenizer: Any, triggers: Mapping[str, str]) -> Example:
        while True:  # check() guarantees a trace that takes each kind drawn
            trace = rng.choice(self.traces)
            u = rng.random()
            kind = ("slip" if u < self.slip_share else
                    "oscillation" if u < self.slip_share + self.oscillation_share else "plain")
            got = inject(trace, rng, kind, self.source.word_pattern, triggers, late=self.late)
            if got is not None:
                break
        prompt = self.source.prompt_ids(tokenizer, trace.prompt)
        ids, labels = encode(got.pieces, tokenizer, add_special_tokens=False)
        return [*prompt, *ids], [-100] * len(prompt) + labels, kind
