"""The organism's data recipe for NeuReasoner's remedy fine-tuning, and its trigger-following cases.

``OrganismData`` is an ``SftData`` for the generic trainer (``workbench.neureasoner.trainer``): it renders
the organism's own traces (``render_trace``, training side of the problem split only) and injects the
failures the organism plants, at the word level of its vocabulary:

* ``slip``: one correct step's result is replaced by the planted mistake (``slip_value``: the carry
  dropped or the borrow forgotten), the trace may run on a few words with the wrong total (the
  detector fires a little late), then ``<INTRA>`` and the step redone correctly; the trace goes on
  from there as rendered.
* ``oscillation``: one step is written again with a spurious +-10 (cut at a random word, as the
  detector may fire mid-repeat), then ``<INTER>`` and the next step, as if no repeat had happened.
* ``slip_false_alarm`` / ``oscillation_false_alarm``: a trigger where nothing went wrong (a detector's
  false alarm): ``<INTRA>`` then the last step redone with the same, right value; ``<INTER>`` then the
  trace going on as it was.
* ``plain``: the trace as rendered, so the model keeps its behaviour where no trigger comes.

Loss: everything after the opening think marker, except the injected error words and the trigger
token (``-100``). This is how ``data/organism-neureasoner`` was made (``workbench organism finetune``).

``following_cases`` and ``OrganismJudge`` are the same injections on held-out problems, cut right after
the trigger, for ``workbench.neureasoner.following.trigger_following``; the organism's labeller reads
the whole trace.

Example:
    >>> import random
    >>> from workbench.organism.task import Problem, render_trace, RECIPE_V2
    >>> trace = render_trace(Problem((47, 38, 25)), random.Random(3), RECIPE_V2)
    >>> pieces = inject(trace, random.Random(0), "slip")
    >>> " ".join(w for w, _ in pieces[9:])
    'roughly 47 + 38 = 75 wait 47 + 38 = 85 ; 85 + 25 = 100 <INTRA> 85 + 25 = 110 , </think> 110'
    >>> [w for w, trained in pieces[9:] if not trained]     # after the prompt: the injected error and its trigger
    ['100', '<INTRA>']
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from workbench.neureasoner.following import FollowCase, Verdict
from workbench.neureasoner.sft import Example, encode
from workbench.organism.task import (
    CHECK_WORD,
    RECIPE_V2,
    REFLECTION_WORD,
    STEP_ENDS,
    TRIGGERS,
    Problem,
    TraceRecipe,
    apply,
    is_held_out,
    render_trace,
    sample_problem,
    sample_problems,
    slip_value,
)

KINDS = ("slip", "oscillation", "plain", "slip_false_alarm", "oscillation_false_alarm")
CASES = ("slip", "oscillation", "slip_false_alarm", "oscillation_false_alarm")
Words = list[tuple[str, bool]]  # (word, trained): the words of a trace, joined by spaces


def _steps(words: list[str]) -> list[int]:
    """Indices of ``=`` of first attempts at a step that are correct and end with a separator."""
    out = []
    for j, w in enumerate(words):
        if w != "=" or j < 3 or j + 3 > len(words) or words[j - 4 : j - 3] in ([CHECK_WORD], [REFLECTION_WORD]):
            continue  # a re-check or a caught slip's redo
        a, op, b, r = words[j - 3], words[j - 2], words[j - 1], words[j + 1]
        if not (a.isdigit() and b.isdigit() and r.isdigit()) or op not in "+-":
            continue
        if int(r) != apply(op, int(a), int(b)) or words[j + 2] not in STEP_ENDS:
            continue
        if words[j - 8 : j - 4] == [a, op, b, "="] or words[j + 3 : j + 6] == [a, op, b]:
            continue  # a repeat (or a redo) of this step, or followed by one: not a clean single step
        out.append(j)
    return out


def inject(trace, rng: random.Random, kind: str, triggers: Mapping[str, str] | tuple = TRIGGERS,
           late_words: int = 3) -> Words | None:
    """The trace's words, with an injected ``kind`` error and its remedy, each marked trained or not.

    ``kind="plain"`` gives the trace as rendered. None when the trace has no clean step to inject into.
    """
    triggers = dict(triggers)
    prompt = [(w, False) for w in trace.prompt.split()]
    words = list(trace.words)
    if kind == "plain":
        return prompt + [(w, True) for w in words]
    if kind not in KINDS:
        raise ValueError(f"inject: kind must be one of {KINDS}, got {kind!r}")
    candidates = _steps(words)
    if not candidates:
        return None
    j = rng.choice(candidates)
    a, op, b, right = words[j - 3], words[j - 2], int(words[j - 1]), int(words[j + 1])
    step = [a, op, str(b), "="]
    head = [(w, True) for w in words[: j + 1]]
    rest = words[j + 3 :]  # after the step's separator: the next step, the checks or the closing marker
    if kind.endswith("_false_alarm"):
        # After the step's result, after its separator, or a few words into the next step.
        more = rng.randint(0, late_words) if rest and rest[0].isdigit() else 0
        cut = min(j + 2 + rng.randint(0, 1) + more, len(words) - 2)
        before = [(w, True) for w in words[:cut]]
        if kind == "oscillation_false_alarm":
            return [*prompt, *before, (triggers["oscillation"], False), *[(w, True) for w in words[cut:]]]
        return [*prompt, *before, (triggers["slip"], False),
                *[(w, True) for w in [*step, str(right), words[j + 2], *rest]]]
    if kind == "slip":
        wrong = slip_value(op, int(a), b)
        if wrong < 0 or wrong == right:
            wrong = right + 10
        late = [str(wrong)]
        if rng.random() < 0.5:
            late.append(words[j + 2])
            # The model goes on with the wrong total: the next step's first words.
            if rest and rest[0].isdigit() and rest[0] == str(right):
                late += [str(wrong), *rest[1:3]][: rng.randint(0, late_words)]
        remedy = [*step, str(right), words[j + 2]]
        return [*prompt, *head, *[(w, False) for w in late], (triggers["slip"], False),
                *[(w, True) for w in remedy + rest]]
    spurious = right + 10 if op == "+" or right < 10 else right - 10
    repeat = [*step, str(spurious), words[j + 2]]
    cut = repeat[: rng.randint(1, len(repeat))]
    return [*prompt, *head, (str(right), True), (words[j + 2], True), *[(w, False) for w in cut],
            (triggers["oscillation"], False), *[(w, True) for w in rest]]


def encode_words(words: Words, tokenizer: Any) -> tuple[list[int], list[int]]:
    """(input ids with ``<eos>``, labels) of words joined by spaces; the end-of-sequence token is trained."""
    ids, labels = encode([(w if i == 0 else " " + w, keep) for i, (w, keep) in enumerate(words)], tokenizer)
    return [*ids, tokenizer.eos_token_id], [*labels, tokenizer.eos_token_id]


@dataclass(frozen=True, kw_only=True)
class OrganismData:
    """The organism's recipe (see the module docstring); the defaults made ``data/organism-neureasoner``.

    Attributes:
        slip_share, oscillation_share: shares of examples with an injected slip / oscillation (the rest plain).
        false_alarm_share: of those, the share whose trigger comes where nothing went wrong.
        late_words: a slip's trigger comes after up to this many words past the wrong result.
        recipe: how the base traces are rendered (organism v2's by default, the base of the shipped fine-tune).
        sub_share: share of subtraction problems.
    """

    slip_share: float = 0.35
    oscillation_share: float = 0.35
    false_alarm_share: float = 0.3
    late_words: int = 3
    recipe: TraceRecipe = RECIPE_V2
    sub_share: float = 0.3

    trigger_lstrip: ClassVar[bool] = True  # words are joined by spaces: " <INTRA>" is one token

    def __post_init__(self) -> None:
        if not (0 <= self.slip_share and 0 <= self.oscillation_share and self.slip_share + self.oscillation_share <= 1):
            raise ValueError(f"OrganismData: slip_share ({self.slip_share}) and oscillation_share "
                             f"({self.oscillation_share}) must be >= 0 and sum to at most 1")

    def record(self) -> dict[str, Any]:
        return {"type": "organism", **asdict(self)}

    def check(self) -> None:
        """Every rendered trace can take a plain example: nothing to check."""

    def example(self, rng: random.Random, tokenizer: Any, triggers: Mapping[str, str]) -> Example:
        while True:
            op = "-" if self.sub_share > 0 and rng.random() < self.sub_share else "+"
            problem = sample_problem(rng, op=op)
            if is_held_out(problem):
                continue
            trace = render_trace(problem, rng, self.recipe)
            u = rng.random()
            kind = ("slip" if u < self.slip_share else
                    "oscillation" if u < self.slip_share + self.oscillation_share else "plain")
            if kind != "plain" and rng.random() < self.false_alarm_share:
                kind += "_false_alarm"
            words = inject(trace, rng, kind, triggers, self.late_words)
            if words is not None:
                ids, labels = encode_words(words, tokenizer)
                return ids, labels, kind


def _prefix(words: list[str], trigger: str, drop: bool = False) -> str:
    """The words up to and including the first ``trigger`` (without it when ``drop``), joined by spaces.

    >>> _prefix(["Q:", "1", "+", "2", "<think>", "1", "+", "2", "=", "4", "<INTRA>", "1"], "<INTRA>", drop=True)
    'Q: 1 + 2 <think> 1 + 2 = 4'
    """
    cut = words.index(trigger)
    return " ".join(words[: cut if drop else cut + 1])


def following_cases(tokenizer: Any, problems: int = 100, seed: int = 0, recipe: TraceRecipe = RECIPE_V2,
                    ) -> dict[str, list[FollowCase]]:
    """Per case (``CASES``), held-out rendered traces without a failure of their own, with an error injected
    as the fine-tuning data has it and cut right after the trigger (and, for the control, right before it)."""
    tokens = dict(TRIGGERS)
    rng = random.Random(seed)
    out: dict[str, list[FollowCase]] = {c: [] for c in CASES}
    for problem in sample_problems(problems, seed, held_out=True):
        trace = render_trace(problem, rng, recipe)
        if trace.labels.slips or trace.labels.repeats or not trace.labels.correct:
            continue  # a trace with failures of its own would blur what the trigger did
        for case in CASES:
            words = inject(trace, rng, case)
            if words is None:
                continue
            trigger = tokens["slip" if case.startswith("slip") else "oscillation"]
            plain = [w for w, _ in words]
            out[case].append(FollowCase(case, tokenizer(_prefix(plain, trigger)).input_ids,
                                        tokenizer(_prefix(plain, trigger, drop=True)).input_ids, problem.id))
    return out


@dataclass(frozen=True)
class OrganismJudge:
    """Reads a finished case with the organism's labeller:

    * ``slip``: followed when the slip is caught (the step redone right) and the answer is correct;
    * ``oscillation``: followed when no further repeat comes and the answer is correct;
    * false alarms: followed when the answer is still correct.
    """

    tokenizer: Any
    recipe: TraceRecipe = RECIPE_V2

    def __call__(self, case: FollowCase, tokens: list[int], prompt_len: int) -> Verdict:
        from workbench.organism.labeler import label_tokens

        problem = Problem.from_id(case.meta)
        strs = self.tokenizer.convert_ids_to_tokens(tokens)
        labels = label_tokens(problem, strs, self.recipe)
        if not (labels.correct and labels.well_formed):
            return Verdict(False, labels.correct)
        if case.case == "slip":
            return Verdict(all(s.caught for s in labels.slips), True)
        if case.case == "oscillation":
            before = label_tokens(problem, strs[:prompt_len], self.recipe)
            return Verdict(len(labels.repeats) <= len(before.repeats), True)
        return Verdict(True, True)


def following(model: Any, problems: int = 100, seed: int = 0, recipe: TraceRecipe = RECIPE_V2,
              max_new_tokens: int = 160) -> dict[str, Any]:
    """``trigger_following`` of a fine-tuned organism on its held-out cases (``workbench organism follow``)."""
    from workbench.neureasoner.following import trigger_following

    cases = following_cases(model.tokenizer, problems=problems, seed=seed, recipe=recipe)
    return trigger_following(model, cases, OrganismJudge(model.tokenizer, recipe), max_new_tokens=max_new_tokens)
