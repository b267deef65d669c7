"""Reads a generated organism trace back into ground-truth labels.

The model's samples carry no labels, so this parser recovers them from the tokens with the same
definitions the trace renderer uses when it plants them (a test checks the two agree): the regime
opener, every step and whether its sum is right, dropped carries and whether a ``wait`` caught them,
repeated steps (oscillation when the value changes, stagnation when it does not), redundant
``check`` clauses after the answer, and where the final answer was first reached.

Example:
    >>> from workbench.organism.task import Problem
    >>> from workbench.organism.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> p = Problem((47, 38))
    >>> ids = tok(p.prompt + " carefully 47 + 38 = 75 ; </think> 75").input_ids
    >>> labels = label_tokens(p, tok.convert_ids_to_tokens(ids))
    >>> labels.correct, labels.slips[0].caught
    (False, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.organism.task import (
    CAREFUL_OPENERS,
    CARELESS_OPENERS,
    CHECK_OK,
    CHECK_WORD,
    REFLECTION_WORD,
    SLIP_KINDS,
    STEP_ENDS,
    THINK_CLOSE,
    THINK_OPEN,
    TRIGGERS,
    Problem,
    Repeat,
    Slip,
    Step,
    TraceLabels,
    TraceRecipe,
    apply,
    difficulty,
    first_difference,
    problem_labels,
    slip_value,
)
from workbench.organism.tokenizer import SPACE

_SPECIAL = {"<bos>", "<eos>", "<pad>", "<unk>"}
_TRIGGER_KIND = {token: kind for kind, token in TRIGGERS}


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # position of its first token

    @property
    def number(self) -> int | None:
        return int(self.text) if self.text.isdigit() else None


def words_of(tokens: Sequence[str]) -> list[Word]:
    """Groups tokens into words: a token with a leading space starts a new word, digits glue on."""
    words: list[Word] = []
    for pos, tok in enumerate(tokens):
        if tok in _SPECIAL:
            words.append(Word(tok, pos))
            continue
        body = tok.removeprefix(SPACE)
        glue = not tok.startswith(SPACE) and words and words[-1].text.isdigit() and body.isdigit()
        if glue:
            words[-1] = Word(words[-1].text + body, words[-1].start)
        else:
            words.append(Word(body, pos))
    return words


def _step_at(words: list[Word], i: int, op: str) -> tuple[int, int, Word] | None:
    """Parses ``A op B = R`` starting at word ``i``."""
    chunk = words[i : i + 5]
    if len(chunk) < 5 or chunk[1].text != op or chunk[3].text != "=":
        return None
    a, b, r = chunk[0].number, chunk[2].number, chunk[4]
    if a is None or b is None or r.number is None:
        return None
    return a, b, r


def label_tokens(problem: Problem, tokens: Sequence[str], recipe: TraceRecipe | None = None) -> TraceLabels:
    """Labels a full sequence (prompt and generation) given as token strings."""
    words = words_of(tokens)
    steps, op = problem.steps(), problem.op
    labels = problem_labels(problem, recipe or TraceRecipe())
    try:
        i = next(k for k, w in enumerate(words) if w.text == THINK_OPEN) + 1
    except StopIteration:
        labels.well_formed = False
        return labels
    labels.think_start = words[i - 1].start
    if i < len(words) and words[i].text in CAREFUL_OPENERS + CARELESS_OPENERS:
        labels.regime = "careful" if words[i].text in CAREFUL_OPENERS else "careless"
        while i < len(words) and words[i].text in CAREFUL_OPENERS + CARELESS_OPENERS:  # v3: several cue words
            labels.cues.append(words[i].text)
            i += 1
    step_idx, prev, redo, base = -1, None, None, None  # prev: (a, b, value) of the last finished step
    results: list[tuple[int, int, int]] = []  # (step, value, position of its last digit)
    while i < len(words):
        w = words[i]
        if w.text == THINK_CLOSE:
            labels.think_end = w.start
            labels.answer = words[i + 1].number if i + 1 < len(words) else None
            break
        if w.text in _TRIGGER_KIND:  # a NeuReasoner remedy the controller forced
            labels.remedies.append((w.text, w.start))
            redone = _step_at(words, i + 1, op) if _TRIGGER_KIND[w.text] == "slip" else None
            if redone is not None:  # <INTRA> then the step written again: a redo, not a repeat
                redo = redone[:2]
                _catch(labels, redo)
            i += 1
            if i < len(words) and words[i].text in STEP_ENDS:  # the separator of the step the trigger followed
                i += 1
            continue
        if w.text == CHECK_WORD:
            tail = [x.text for x in words[i + 6 : i + 8]]
            labels.well_formed &= _step_at(words, i + 1, op) is not None and len(tail) == 2 and \
                tail[0] == CHECK_OK and tail[1] in STEP_ENDS
            start = labels.overthinking[0] if labels.overthinking else w.start
            i += 8
            labels.overthinking = (start, words[i].start if i < len(words) else len(tokens))
            continue
        parsed = _step_at(words, i, op)
        if parsed is None:
            trigger = next((k for k in range(i, min(i + 5, len(words))) if words[k].text in _TRIGGER_KIND), None)
            joined = [*words[i:trigger], *words[trigger + 1 : trigger + 7]] if trigger is not None else []
            if _step_at(joined, 0, op) is not None and (len(joined) < 6 or joined[5].text != op):
                # A trigger inside a step the model then finished (a false alarm mid-step): read the step whole
                # (unless the words after it start the next step: a repeat the trigger cut short).
                labels.remedies.append((words[trigger].text, words[trigger].start))
                words = [*words[:trigger], *words[trigger + 1 :]]
                continue
            # A step cut short by a trigger is the remedy's doing, not a malformed trace.
            labels.well_formed &= trigger is not None
            i = trigger if trigger is not None else i + 1
            continue
        a, b, r = parsed
        value = r.number
        assert value is not None
        after = words[i + 5].text if i + 5 < len(words) else None
        repeat = redo != (a, b) and prev is not None and (a, b) == prev[:2]
        if repeat:
            _add_repeat(labels, step_idx, words[i].start, r, after, same=value == prev[2], wrong=value != base)
        elif redo != (a, b):
            step_idx += 1
            labels.steps.append(Step(step_idx, a, b, value, r.start, op))
        redo = None
        right = apply(op, a, b)
        if value != right and not repeat:
            planted = value == slip_value(op, a, b) and difficulty(op, a, b) >= 10
            labels.slips.append(Slip(
                step=step_idx, token=r.start + first_difference(right, value), caught=after == REFLECTION_WORD,
                kind=SLIP_KINDS[op] if planted else "other",
            ))
        if after == REFLECTION_WORD:
            redo = (a, b)
            i += 6
            continue
        results.append((step_idx, value, r.start + len(r.text) - 1))
        if not repeat:
            base = value  # what a later repeat of this step is compared with
        prev = (a, b, value)
        i += 6 if after in STEP_ENDS else 5
    if labels.answer is not None:
        last_step = len(steps) - 1
        labels.answer_reached = next(
            (p for s, v, p in results if s == last_step and v == labels.answer), None
        )
    return labels


def _catch(labels: TraceLabels, operands: tuple[int, int]) -> None:
    """Marks the uncaught slips of the step with these operands caught (by a remedy's redo)."""
    steps = {s.step for s in labels.steps if (s.a, s.b) == operands}
    labels.slips = [dataclasses.replace(s, caught=True) if s.step in steps and not s.caught else s
                    for s in labels.slips]


def _add_repeat(
    labels: TraceLabels, step: int, start: int, result: Word, after: str | None, same: bool, wrong: bool
) -> None:
    """Records a repeated step, merging back-to-back repeats of one step into one span."""
    kind = "stagnation" if same else "oscillation"
    end = result.start + len(result.text) + (after in STEP_ENDS)
    last = labels.repeats[-1] if labels.repeats else None
    if last is not None and last.step == step and last.end == start:
        kind = "oscillation" if "oscillation" in (kind, last.kind) else kind
        labels.repeats[-1] = Repeat(step, kind, last.start, end, wrong)
    else:
        labels.repeats.append(Repeat(step, kind, start, end, wrong))


def hand_features(labels: TraceLabels) -> dict[str, float] | None:
    """The organism's hand-computed features of a trace, by name: the question's shape and the regime its opener
    announces; None for a trace whose thinking opens with no cue word (it has no regime to read).

    ``careless`` is 1.0 when the *first* cue word is a careless one (``labels.regime``, which the regime check and
    the evaluation's per-regime figures read); ``careless_share`` is the share of careless words among the
    opener's cues (v3/v4 spread the regime over several), equal to ``careless`` where there is one cue.

    >>> from workbench.organism.task import TraceLabels
    >>> hand_features(TraceLabels("47+38", regime="careless", n_operands=2, carry_count=1,
    ...                           cues=["quickly", "slowly"]))
    {'n_operands': 2.0, 'carry_count': 1.0, 'careless': 1.0, 'careless_share': 0.5}
    """
    if labels.regime is None:
        return None
    careless = float(labels.regime == "careless")
    share = labels.careless_cues / len(labels.cues) if labels.cues else careless
    return {"n_operands": float(labels.n_operands), "carry_count": float(labels.carry_count),
            "careless": careless, "careless_share": share}


def failure_spans(labels: TraceLabels) -> dict[str, list[tuple[int, int]]]:
    """The organism's ground truth as NeuReasoner's episodes per type: a slip spans its first wrong digit, a repeat
    its span, overthinking the span of its redundant checks."""
    return {
        "slip": [(s.token, s.token + 1) for s in labels.slips],
        "oscillation": [(r.start, r.end) for r in labels.repeats],
        "overthinking": [tuple(labels.overthinking)] if labels.overthinking is not None else [],
    }


def failure_flags(labels: TraceLabels) -> dict[str, bool]:
    """Which planted failures a trace shows, by name (a slip a ``wait`` or a remedy caught does not count).

    >>> from workbench.organism.task import Repeat, Slip, TraceLabels
    >>> failure_flags(TraceLabels("4+5", slips=[Slip(0, 3, True, "other")], repeats=[Repeat(0, "stagnation", 3, 5)]))
    {'uncaught_slip': False, 'oscillation': False, 'stagnation': True, 'overthinking': False}
    """
    kinds = {r.kind for r in labels.repeats}
    return {"uncaught_slip": any(not s.caught for s in labels.slips), "oscillation": "oscillation" in kinds,
            "stagnation": "stagnation" in kinds, "overthinking": labels.overthinking is not None}
