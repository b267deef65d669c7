"""Failure episodes per trace, as token spans, and the labels of sliding windows drawn from them.

Three failure types, as NeuReasoner names them:

* ``slip`` (intra-step): a wrong result inside one step;
* ``oscillation`` (inter-step): a step that repeats an earlier one, with the same value (stagnation)
  or another (oscillation);
* ``overthinking`` (instance-level): thinking that goes on after the final answer first appears.

``FailureEvents.from_spans`` takes them from a task's own truth (``Task.failure_spans``: the organism's
slips, repeats and overthinking span). ``auto_events`` labels any model's decoded
thinking without ground truth: steps are split at blank lines (``step_pattern``); a step repeats
when its text, the expression left of its last ``=``, or the value right of it equals an earlier
step's; overthinking starts at the step after the one where the final answer first appears. Slips
need a checker, which a free-text trace does not have: the labeller only flags a step whose
arithmetic ``a op b = c`` (integers, ``+ - * x``) is trivially wrong, and misses every other slip.
After the answer only a repeated text or expression counts as a repeat (restating the answer's
value there is what overthinking is), so a repeated step may be both.

Example:
    >>> steps = ["3 + 4 = 7", "3 + 4 = 7", "7 * 2 = 15", "7 * 2 = 14", "so 14", "check: 14"]
    >>> pieces = ["Q", "<think>", *[p for s in steps for p in (s, "\\n\\n")][:-1], "</think>", "14"]
    >>> pieces[4], pieces[6], pieces[10]
    ('3 + 4 = 7', '7 * 2 = 15', 'so 14')
    >>> ev = auto_events(pieces, think_start=1, think_end=13, answer="14")
    >>> ev.slip, ev.oscillation, ev.overthinking        # 7 * 2 = 14 after the slip is a correction
    (((6, 7),), ((4, 5),), ((10, 13),))
    >>> window_overlaps(np.array([0, 4, 8]), 4, ev.overthinking).tolist()
    [False, False, True]
"""

from __future__ import annotations

import bisect
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Bool, Int

from workbench.neureasoner.config import FAILURE_TYPES
from workbench.prompting import ThinkSpans
from workbench.tasks.base import Task, TextConventions

Span = tuple[int, int]  # [start, end) in token positions of the full sequence
_ARITH = re.compile(r"(-?\d+)\s*([-+*x×])\s*(-?\d+)\s*=\s*(-?\d+)")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "x": operator.mul, "×": operator.mul}
_VALUE = re.compile(r"=\s*([-+]?\d[\d,]*(?:\.\d+)?)")


@dataclass(frozen=True)
class FailureEvents:
    """One trace's failure episodes, each a token span ``[start, end)``, per type."""

    slip: tuple[Span, ...] = ()
    oscillation: tuple[Span, ...] = ()
    overthinking: tuple[Span, ...] = ()

    @classmethod
    def from_spans(cls, spans: Mapping[str, Sequence[Sequence[int]]]) -> FailureEvents:
        """Episodes from a task's ``failure_spans`` (type -> ``[start, end)`` pairs); a missing type has none.

        >>> FailureEvents.from_spans({"slip": [[4, 5]]}).slip
        ((4, 5),)
        """
        unknown = set(spans) - set(FAILURE_TYPES)
        if unknown:
            raise ValueError(f"failure spans of unknown types {sorted(unknown)}; expected {FAILURE_TYPES}")
        return cls(**{k: tuple((int(a), int(b)) for a, b in spans.get(k, ())) for k in FAILURE_TYPES})

    def of(self, kind: str) -> tuple[Span, ...]:
        if kind not in FAILURE_TYPES:
            raise ValueError(f"unknown failure type {kind!r}; expected one of {FAILURE_TYPES}")
        return getattr(self, kind)

    def token_labels(self, n_tokens: int) -> Bool[np.ndarray, "type pos"]:
        """Per type (rows in ``FAILURE_TYPES`` order) and token: inside an episode of that type."""
        out = np.zeros((len(FAILURE_TYPES), n_tokens), bool)
        for row, kind in enumerate(FAILURE_TYPES):
            for start, end in self.of(kind):
                out[row, max(start, 0) : min(end, n_tokens)] = True
        return out


def trace_events(
    row: Mapping[str, Any], task: Task | None, pieces: Sequence[str] | None, step_pattern: str | None = None,
    truth: bool = True,
) -> tuple[FailureEvents, str]:
    """A stored trace's episodes and where they come from: ``"label"`` (the task's truth, when ``truth`` and the
    task has it for this trace) or ``"detected"`` (the automatic labeller over ``pieces``, each token decoded on
    its own, with ``step_pattern`` or else the task's).

    Thinking is the marked span; a trace that never opened one is read whole (the generation after the
    prompt, whose last step is the answer it writes), so a model that does not think in markers still gets
    labels. Without truth and ``pieces`` there are no episodes.

    >>> row = {"prompt_len": 1, "think_start": None, "think_end": None, "extracted": None, "labels": None}
    >>> trace_events(row, None, ["Q", "1 + 1 = 3"])
    (FailureEvents(slip=((1, 2),), oscillation=(), overthinking=()), 'detected')
    """
    if truth and task is not None and row.get("labels"):
        spans = task.failure_spans(json.loads(row["labels"]))
        if spans is not None:
            return FailureEvents.from_spans(spans), "label"
    if pieces is None:
        return FailureEvents(), "detected"
    lo, hi = ThinkSpans.of(row).bounds(row["prompt_len"], len(pieces))
    pattern = step_pattern or (task.text.step_pattern if task is not None else TextConventions().step_pattern)
    unmarked = row.get("think_start") is None and row.get("think_end") is None
    return auto_events(pieces, lo - 1, hi, row.get("extracted"), pattern, ends_with_answer=unmarked), "detected"


def split_steps(text: str, pattern: str = r"\n[ \t]*\n") -> list[tuple[int, int]]:
    """Character spans of the non-blank steps of ``text`` between matches of ``pattern``.

    >>> split_steps("a = 1\\n\\n  \\nb = 2 ; c", r"\\n[ \\t]*\\n")
    [(0, 5), (10, 19)]
    """
    spans, start = [], 0
    for m in [*re.finditer(pattern, text), None]:
        end = len(text) if m is None else m.start()
        chunk = text[start:end]
        if chunk.strip():
            lead = len(chunk) - len(chunk.lstrip())
            spans.append((start + lead, start + len(chunk.rstrip())))
        if m is not None:
            start = m.end()
    return spans


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).strip(" .;,:")


def _number(s: str) -> str:
    return s.replace(",", "").lstrip("+")


def auto_events(
    pieces: Sequence[str],
    think_start: int,
    think_end: int | None,
    answer: str | None,
    step_pattern: str = r"\n[ \t]*\n",
    ends_with_answer: bool = False,
) -> FailureEvents:
    """Episodes read from decoded text: ``pieces[i]`` is token ``i`` decoded on its own.

    Thinking is ``pieces[think_start + 1 : think_end]`` (to the end when ``think_end`` is None);
    ``answer`` is the final answer as written (None: no overthinking label). ``ends_with_answer``: the text's
    last step is the written answer, not thinking (a model that never opened a thinking span), so overthinking
    ends where it starts.
    """
    lo, hi = think_start + 1, len(pieces) if think_end is None else think_end
    if not 0 <= lo <= hi <= len(pieces):
        raise ValueError(f"auto_events: thinking span [{lo}, {hi}) does not fit {len(pieces)} tokens")
    offsets = np.cumsum([0, *(len(p) for p in pieces[lo:hi])]).tolist()
    text = "".join(pieces[lo:hi])

    def tokens(a: int, b: int) -> Span:  # character span -> token span
        return lo + bisect.bisect_right(offsets, a) - 1, lo + bisect.bisect_left(offsets, b)

    steps = split_steps(text, step_pattern)
    # Overthinking: from the step after the one where the answer first appears to the end of thinking.
    over: tuple[Span, ...] = ()
    n_before = len(steps)
    if answer is not None and answer.strip():
        pattern = rf"(?<![\d.]){re.escape(_number(answer.strip()))}(?![\d]|\.\d)"
        hit = re.search(pattern, text.replace(",", "") if "," not in answer else text)
        if hit is not None:
            n_before = next((i + 1 for i, (a, b) in enumerate(steps) if a <= hit.start() < b), len(steps))
            last = len(steps) - 1 if ends_with_answer else len(steps)
            if n_before < last:
                end = tokens(*steps[last])[0] if ends_with_answer else hi
                over = ((tokens(steps[n_before][0], steps[n_before][1])[0], end),)
    slips, slip_chars = [], []
    for a, b in steps:
        for m in _ARITH.finditer(text[a:b]):
            x, op, y, z = m.groups()
            if _OPS[op](int(x), int(y)) != int(z):
                slips.append(tokens(a + m.start(4), a + m.end(4)))
                slip_chars.append(a + m.start(4))
    # Oscillation: a step whose text, expression or value equals an earlier one's; back-to-back
    # repeats form one episode.
    seen_text, seen_expr, seen_value = set(), set(), set()
    repeats: list[Span] = []
    last_repeat = -2
    for i, (a, b) in enumerate(steps):
        step = text[a:b]
        if any(a <= s_ < b for s_ in slip_chars):
            continue  # a wrong step: redoing it later is a correction, not a repeat
        values = _VALUE.findall(step)
        expr = _norm(step[: step.rfind("=")]) if values else None
        value = _number(values[-1]) if values else None
        keys = (_norm(step), expr, value)
        by_value = value is not None and value in seen_value and i < n_before
        if keys[0] in seen_text or (expr and expr in seen_expr) or by_value:
            span = tokens(a, b)
            repeats[-1:] = [(repeats[-1][0], span[1])] if last_repeat == i - 1 else [*repeats[-1:], span]
            last_repeat = i
        seen_text.add(keys[0])
        if expr:
            seen_expr.add(expr)
        if value is not None:
            seen_value.add(value)
    return FailureEvents(slip=tuple(slips), oscillation=tuple(repeats), overthinking=over)


def window_overlaps(
    starts: Int[np.ndarray, " win"], window: int, spans: Sequence[Span],
) -> Bool[np.ndarray, " win"]:
    """Which windows ``[start, start + window)`` overlap any of ``spans``."""
    out = np.zeros(len(starts), bool)
    for s, e in spans:
        out |= (starts < e) & (starts + window > s)
    return out


def window_onsets(
    starts: Int[np.ndarray, " win"], window: int, spans: Sequence[Span],
) -> Bool[np.ndarray, " win"]:
    """Anticipation target: an episode starts within the ``window`` tokens right after the window.

    Only meaningful for windows that overlap no episode yet (callers keep those).
    """
    out = np.zeros(len(starts), bool)
    for s, _ in spans:
        out |= (starts + window <= s) & (s < starts + 2 * window)
    return out
