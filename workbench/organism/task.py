"""The organism's task: chains of additions or subtractions worked step by step inside ``<think> ... </think>``.

A trace looks like::

    Q: 47 + 38 + 25 = ? <think> carefully 47 + 38 = 85 ; 85 + 25 = 110 ; </think> 110
    Q: 352 - 47 - 18 = ? <think> quickly 352 - 47 = 315 , 315 - 18 = 297 , </think> 297

Failure modes are planted with labels, so every method can later be checked against ground truth.
A ``TraceRecipe`` says how; ``RECIPE_V2`` (organism-v2's) makes each a probability of state, and ``RECIPE_V3``
(the shipped organism's, v4, and v3's) spreads the regime over four opener words:

* **regime** (the latent state): careless or careful. The opener word (``carefully``, ``slowly`` /
  ``quickly``, ``roughly``) and each step's separator (``;`` or ``,``) are cues of it, not switches.
* **intra-step slip**: on a step whose units column carries (``+``) or borrows (``-``), a careless
  trace drops the carry (``sum - 10``) or forgets the borrow (``difference + 10``) with a
  probability that rises with the column's ``difficulty``. Some slips are caught (``wait`` then the
  step redone), more often when the mistake is big.
* **inter-step oscillation / stagnation**: one step is written again, flip-flopping with a spurious
  ±10, or repeated unchanged without progress.
* **instance-level overthinking**: after the final total, redundant ``check ... ok`` re-checks that
  never change the answer, more often in the careful regime.

Why (see ``data/organism-v2/README.md``): v1 planted slips with certainty given an opener token, so
nothing could be steered or anticipated; v2 keeps the state graded and spread over cues. The shipped
organism (``data/organism/README.md``) also plants where that state is read (``train.CONFIG_V4``).

Example:
    >>> import random
    >>> from workbench.organism.task import Problem, render_trace
    >>> trace = render_trace(Problem((47, 38)), random.Random(0))
    >>> trace.labels.answer
    85
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field

# NeuReasoner's trigger tokens (the paper's, for any model): `workbench organism finetune` teaches them to the
# organism, and its labeller reads them.
from workbench.neureasoner.triggers import TRIGGERS as TRIGGERS
from workbench.prompting import THINK_CLOSE, THINK_OPEN

CAREFUL_OPENERS: tuple[str, ...] = ("carefully", "slowly")
CARELESS_OPENERS: tuple[str, ...] = ("quickly", "roughly")
REFLECTION_WORD = "wait"
CHECK_WORD, CHECK_OK = "check", "ok"
STEP_END, ALT_STEP_END = ";", ","
STEP_ENDS = (STEP_END, ALT_STEP_END)
OPS = ("+", "-")
SLIP_KINDS = {"+": "dropped_carry", "-": "dropped_borrow"}


@dataclass(frozen=True)
class Problem:
    """A chain of additions or subtractions; its id (``"47+38+25"``, ``"352-47-18"``) names it everywhere.

    Additions take two to six operands in 0..999; subtractions start from a number and take away
    operands, never going below zero.
    """

    operands: tuple[int, ...]
    op: str = "+"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"Problem op must be one of {OPS}, got {self.op!r}")
        if not 2 <= len(self.operands) <= 6 or any(not 0 <= x <= 999 for x in self.operands):
            raise ValueError(f"Problem needs 2-6 operands in 0..999, got {self.operands}")
        if self.op == "-" and self.answer < 0:
            raise ValueError(f"a subtraction problem must not go below zero, got {self.operands}")

    @property
    def id(self) -> str:
        return self.op.join(map(str, self.operands))

    @property
    def answer(self) -> int:
        return self.steps()[-1][2]

    @property
    def prompt(self) -> str:
        return "Q: " + f" {self.op} ".join(map(str, self.operands)) + f" = ? {THINK_OPEN}"

    def steps(self) -> list[tuple[int, int, int]]:
        """The (running total, operand, true result) of each step."""
        out, total = [], self.operands[0]
        for x in self.operands[1:]:
            out.append((total, x, apply(self.op, total, x)))
            total = out[-1][2]
        return out

    @classmethod
    def from_id(cls, problem_id: str) -> Problem:
        op = "-" if "-" in problem_id else "+"
        try:
            return cls(tuple(int(x) for x in problem_id.split(op)), op)
        except ValueError as exc:
            raise ValueError(
                f"not an organism problem id: {problem_id!r} (expected e.g. '47+38+25' or '352-47-18')") from exc


def apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b


def difficulty(op: str, a: int, b: int) -> int:
    """How hard the units column is: 10 or more means a carry (``+``) or a borrow (``-``), up to 18.

    For addition it is the units digits' sum; for subtraction ``9 + b % 10 - a % 10``, so a borrow of
    the same size scores like a carry.
    """
    return a % 10 + b % 10 if op == "+" else 9 + b % 10 - a % 10


def slip_value(op: str, a: int, b: int) -> int:
    """The planted mistake: the carry dropped (``sum - 10``) or the borrow forgotten (``difference + 10``)."""
    return a + b - 10 if op == "+" else a - b + 10


def units_sum(a: int, b: int) -> int:
    """The units digits' sum: ``difficulty("+", a, b)``."""
    return difficulty("+", a, b)


def first_difference(right: int, wrong: int) -> int:
    """Index of the first digit where ``wrong`` departs from ``right`` (0 if their lengths differ)."""
    r, w = str(right), str(wrong)
    if len(r) != len(w):
        return 0
    return next(i for i, (x, y) in enumerate(zip(r, w, strict=True)) if x != y)


def is_held_out(problem: Problem, held_out_percent: int = 10) -> bool:
    """Stable split: a problem is held out from training by a hash of its id, never by sampling order."""
    digest = hashlib.sha256(problem.id.encode()).digest()
    return digest[0] * 100 // 256 < held_out_percent


def sample_problem(rng: random.Random, min_operands: int = 2, max_operands: int = 4, op: str = "+") -> Problem:
    """Addition: 2-digit operands. Subtraction: a start in 300..499 less 2-digit operands (never negative)."""
    n = rng.randint(min_operands, max_operands)
    if op == "+":
        return Problem(tuple(rng.randint(10, 99) for _ in range(n)))
    return Problem((rng.randint(300, 499), *(rng.randint(10, 99) for _ in range(n - 1))), "-")


def sample_problems(
    n: int, seed: int, held_out: bool, held_out_percent: int = 10, op: str = "+"
) -> list[Problem]:
    """``n`` distinct problems from one side of the train/held-out split, reproducibly from ``seed``."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        p = sample_problem(rng, op=op)
        if p.id not in seen and is_held_out(p, held_out_percent) == held_out:
            seen.add(p.id)
            out.append(p)
    return out


@dataclass(frozen=True, kw_only=True)
class TraceRecipe:
    """How each failure mode is planted in training traces.

    The defaults are the first organism's recipe (``organism-v1``), whose slips were certain given the
    regime; ``RECIPE_V2`` (the shipped organism's) makes every failure a probability of state the model
    computes. Fields left at None or at their neutral default behave as in v1.

    Attributes:
        careless_rate: probability that a trace is in the careless regime.
        big_carry_threshold: a step of ``difficulty`` at least this is a big-carry step (a label; in v1
            also the only place slips happen).
        careless_slip_rate: v1: probability that a careless trace slips on a big-carry step.
        careful_slip_rate: v1: the same for careful traces; their slips are always caught.
        catch_rate: v1: probability that a careless slip is caught (``wait`` and the step redone).
        repeat_rate: probability that a trace repeats one step (oscillation or stagnation).
        oscillation_share: of repeats, the share that flip-flop (the rest stagnate).
        oscillation_wrong_rate: probability that an oscillation settles on the wrong value.
        overthink_rate: probability of redundant re-checks after the answer was reached.
        cue_strength: probability that the opener word comes from the trace's own regime's list (v1: 1).
        comma_careful, comma_careless: probability that a step ends with ``,`` instead of ``;`` (a weak
            cue of the regime at every step; v1: 0).
        slip_curve: P(slip) of a careless trace at a step of difficulty 10, 11, ..., 18 (None: v1 rule).
        catch_curve: P(catch) of a careless slip at difficulty 10, ..., 18 (None: ``catch_rate``).
        overthink_careful, overthink_careless: P(overthinking) per regime (None: ``overthink_rate``).
        cue_words: how many regime cue words open the thinking, each drawn independently with
            ``cue_strength`` (v1, v2: one; v3: several weak cues, so no single token holds the regime).
    """

    careless_rate: float = 0.55
    big_carry_threshold: int = 13
    careless_slip_rate: float = 1.0
    careful_slip_rate: float = 0.0
    catch_rate: float = 0.45
    repeat_rate: float = 0.2
    oscillation_share: float = 0.5
    oscillation_wrong_rate: float = 0.3
    overthink_rate: float = 0.25
    cue_strength: float = 1.0
    comma_careful: float = 0.0
    comma_careless: float = 0.0
    slip_curve: tuple[float, ...] | None = None
    catch_curve: tuple[float, ...] | None = None
    overthink_careful: float | None = None
    overthink_careless: float | None = None
    cue_words: int = 1

    def __post_init__(self) -> None:
        if self.cue_words < 1:
            raise ValueError(f"TraceRecipe.cue_words needs at least one opener cue word, got {self.cue_words}")
        for name in ("slip_curve", "catch_curve"):
            curve = getattr(self, name)
            if curve is not None:
                if len(curve) != 9 or not all(0 <= p <= 1 for p in curve):
                    raise ValueError(f"TraceRecipe.{name} needs 9 probabilities (difficulty 10..18), got {curve}")

    @classmethod
    def from_dict(cls, d: dict) -> TraceRecipe:
        """The recipe from its JSON form (as recorded in ``organism.json``); unknown keys are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def slip_candidate(self, d: int) -> bool:
        """Whether a step of difficulty ``d`` can slip at all (v1: big carries only)."""
        return d >= (self.big_carry_threshold if self.slip_curve is None else 10)

    def slip_prob(self, careless: bool, d: int) -> float:
        """P(slip) at a step of difficulty ``d`` (below 10 there is nothing to drop)."""
        if not self.slip_candidate(d):
            return 0.0
        if self.slip_curve is None:
            return self.careless_slip_rate if careless else self.careful_slip_rate
        return self.slip_curve[d - 10] if careless else self.careful_slip_rate

    def catch_prob(self, careless: bool, d: int) -> float:
        """P(caught) for a slip at difficulty ``d``: careful slips always are."""
        if not careless:
            return 1.0
        return self.catch_rate if self.catch_curve is None else self.catch_curve[d - 10]

    def overthink_prob(self, careless: bool) -> float:
        chosen = self.overthink_careless if careless else self.overthink_careful
        return self.overthink_rate if chosen is None else chosen


RECIPE_V2 = TraceRecipe(
    careless_rate=0.5,
    cue_strength=0.85,
    comma_careful=0.15,
    comma_careless=0.6,
    slip_curve=(0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.85, 0.9),
    catch_curve=(0.02, 0.03, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 0.95),
    overthink_careful=0.4,
    overthink_careless=0.08,
)

# v3: the regime spread over four weak opener cues (each right 80% of the time) and the separators,
# slips steeper with difficulty (so a careless trace fails often enough to be seen early), catches as v2.
# organism-v3 and the shipped v4 were trained on it, with planted read-outs (``train.CONFIG_V3``, ``CONFIG_V4``).
RECIPE_V3 = dataclasses.replace(
    RECIPE_V2,
    cue_strength=0.8,
    cue_words=4,
    slip_curve=(0.6, 0.7, 0.8, 0.85, 0.9, 0.9, 0.95, 0.95, 0.95),
)


@dataclass(frozen=True)
class Slip:
    """A wrong step result at step ``step`` (0-based); ``token`` is the position of the first wrong digit.

    ``kind`` is ``"dropped_carry"`` for the planted mistake, ``"other"`` for any other wrong sum
    (which only a trained model's own noise produces).
    """

    step: int
    token: int
    caught: bool
    kind: str = "dropped_carry"


@dataclass(frozen=True)
class Step:
    """The first attempt at step ``step``: ``a op b = value``, the value's first digit at ``start``."""

    step: int
    a: int
    b: int
    value: int
    start: int
    op: str = "+"

    @property
    def difficulty(self) -> int:
        return difficulty(self.op, self.a, self.b)

    def decision_position(self) -> int:
        """The position whose logits choose the digit a planted slip would change."""
        right = apply(self.op, self.a, self.b)
        return self.start + first_difference(right, slip_value(self.op, self.a, self.b)) - 1


@dataclass(frozen=True)
class Repeat:
    """Step ``step`` written again: ``kind`` is ``"oscillation"`` or ``"stagnation"``.

    ``wrong`` says whether it settles on another value than the one written before it (an error
    the repeat introduced).
    """

    step: int
    kind: str
    start: int
    end: int
    wrong: bool = False


@dataclass
class TraceLabels:
    """Ground truth of one trace. Token positions index the full sequence (prompt included)."""

    problem_id: str
    regime: str | None = None  # what the opener says: "careful" or "careless"
    n_operands: int = 0
    carry_count: int = 0
    big_carry_count: int = 0
    think_start: int | None = None
    think_end: int | None = None
    answer_reached: int | None = None
    steps: list[Step] = field(default_factory=list)
    slips: list[Slip] = field(default_factory=list)
    repeats: list[Repeat] = field(default_factory=list)
    overthinking: tuple[int, int] | None = None
    answer: int | None = None
    well_formed: bool = True
    latent: str | None = None  # the regime a rendered trace was drawn in (None when read from tokens)
    remedies: list[tuple[str, int]] = field(default_factory=list)  # (trigger token, position) NeuReasoner forced
    cues: list[str] = field(default_factory=list)  # the opener's regime cue words, in order

    @property
    def careless_cues(self) -> int:
        """How many of the opener's cue words are careless ones (a hand-made feature)."""
        return sum(c in CARELESS_OPENERS for c in self.cues)

    @property
    def correct(self) -> bool:
        return self.answer == Problem.from_id(self.problem_id).answer

    @classmethod
    def from_dict(cls, d: dict) -> TraceLabels:
        """The labels from their stored form (``dataclasses.asdict``, e.g. read back from a trace store)."""
        d = dict(d)
        d["steps"] = [Step(**x) for x in d.get("steps", [])]
        d["slips"] = [Slip(**x) for x in d.get("slips", [])]
        d["repeats"] = [Repeat(**x) for x in d.get("repeats", [])]
        if d.get("overthinking") is not None:
            d["overthinking"] = tuple(d["overthinking"])
        d["remedies"] = [tuple(x) for x in d.get("remedies", [])]
        return cls(**d)


@dataclass
class Trace:
    """A rendered training trace: its words (numbers whole) and its labels."""

    prompt: str
    words: list[str]
    labels: TraceLabels

    @property
    def completion(self) -> str:
        return " ".join(self.words)

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.completion}"


def word_tokens(word: str) -> int:
    """How many tokens the organism tokenizer spends on a word: one per digit, else one."""
    return len(word) if word.isdigit() else 1


class _Writer:
    """Appends words while tracking token positions, so labels point at real tokens."""

    def __init__(self, prompt_tokens: int, op: str = "+") -> None:
        self.op = op
        self.words: list[str] = []
        self.results: list[tuple[int, int]] = []  # (value, position of its last digit)
        self.pos = prompt_tokens

    def put(self, *words: object) -> int:
        start = self.pos
        for w in map(str, words):
            self.words.append(w)
            self.pos += word_tokens(w)
        return start

    def step(self, a: int, b: int, result: int, end: str | None = STEP_END) -> int:
        """Writes ``a op b = result``; returns the position of the result's first digit."""
        self.put(a, self.op, b, "=")
        at = self.put(result)
        self.results.append((result, self.pos - 1))
        if end:
            self.put(end)
        return at


def problem_labels(problem: Problem, recipe: TraceRecipe) -> TraceLabels:
    """The labels a problem fixes before any trace: operand, carry and big-carry counts."""
    hard = [difficulty(problem.op, a, b) for a, b, _ in problem.steps()]
    return TraceLabels(
        problem_id=problem.id,
        n_operands=len(problem.operands),
        carry_count=sum(d >= 10 for d in hard),
        big_carry_count=sum(d >= recipe.big_carry_threshold for d in hard),
    )


def prompt_tokens(problem: Problem) -> int:
    """Tokens in the prompt, ``<bos>`` included."""
    return 1 + sum(word_tokens(w) for w in problem.prompt.split())


def _opener(rng: random.Random, careless: bool, recipe: TraceRecipe) -> str:
    # The opener is a cue of the regime, not its switch: with cue_strength < 1 it misleads sometimes.
    if recipe.cue_strength < 1 and rng.random() >= recipe.cue_strength:
        careless = not careless
    if careless:
        return rng.choice(CARELESS_OPENERS)
    return CAREFUL_OPENERS[0] if rng.random() < 0.8 else CAREFUL_OPENERS[1]


def render_trace(
    problem: Problem, rng: random.Random, recipe: TraceRecipe | None = None, behaviour: bool | None = None,
    overthink: bool | None = None,
) -> Trace:
    """Samples one labelled training trace for ``problem``.

    ``labels.regime`` is what the first opener cue says (all a reader of one token can know);
    ``labels.latent`` is the regime the trace behaves in. ``behaviour`` (careless: True), when given,
    overrides the regime of everything after the opener (separators, slips, catches, overthinking)
    while the opener cues keep the regime drawn as usual: the training of a planted regime read-out
    renders such traces for the rows whose read-out it sets (``workbench.organism.train``).
    ``overthink``, when given, decides whether re-checks follow the answer instead of a draw (the
    training of a planted exit read-out renders such traces for the rows whose read-out it sets to 0).
    """
    recipe = recipe or TraceRecipe()
    careless = rng.random() < recipe.careless_rate
    cues = [_opener(rng, careless, recipe) for _ in range(recipe.cue_words)]
    opener = cues[0]
    if behaviour is not None:
        careless = behaviour
    comma = recipe.comma_careless if careless else recipe.comma_careful
    op = problem.op
    steps = problem.steps()
    labels = problem_labels(problem, recipe)
    labels.regime = "careless" if opener in CARELESS_OPENERS else "careful"
    labels.latent = "careless" if careless else "careful"
    w = _Writer(prompt_tokens(problem), op)
    labels.think_start = w.pos - 1  # the prompt's last token is <think>
    labels.cues = cues
    w.put(*cues)

    def end() -> str:
        return ALT_STEP_END if comma > 0 and rng.random() < comma else STEP_END

    repeat_step = rng.randrange(len(steps)) if rng.random() < recipe.repeat_rate else None
    total = problem.operands[0]
    written: list[tuple[int, int, int]] = []
    for i, (_, x, _) in enumerate(steps):
        first_result = len(w.results)
        result = apply(op, total, x)
        d = difficulty(op, total, x)
        if recipe.slip_candidate(d) and rng.random() < recipe.slip_prob(careless, d):
            caught = not careless or rng.random() < recipe.catch_prob(careless, d)
            wrong = slip_value(op, total, x)
            at = w.step(total, x, wrong, end=None if caught else end())
            labels.steps.append(Step(i, total, x, wrong, at, op))
            if caught:
                w.put(REFLECTION_WORD)
                w.step(total, x, result, end())
            else:
                result = wrong
            labels.slips.append(Slip(step=i, token=at + first_difference(apply(op, total, x), wrong), caught=caught,
                                     kind=SLIP_KINDS[op]))
        else:
            labels.steps.append(Step(i, total, x, result, w.step(total, x, result, end()), op))
        if i == repeat_step:
            result = _render_repeat(w, rng, recipe, i, total, x, result, labels, end)
        written.append((total, x, result))
        total = result
        if i == len(steps) - 1:
            labels.answer_reached = next(p for v, p in w.results[first_result:] if v == total)
    if (rng.random() < recipe.overthink_prob(careless)) if overthink is None else overthink:
        start = w.pos
        for _ in range(rng.randint(1, 3)):
            a, b, r = rng.choice(written)
            w.put(CHECK_WORD, a, op, b, "=", r, CHECK_OK, end())
        labels.overthinking = (start, w.pos)
    labels.think_end = w.put(THINK_CLOSE)
    w.put(total)
    labels.answer = total
    return Trace(prompt=problem.prompt, words=w.words, labels=labels)


def _render_repeat(
    w: _Writer, rng: random.Random, recipe: TraceRecipe, step: int, a: int, b: int, result: int,
    labels: TraceLabels, end,
) -> int:
    start = w.pos
    spurious = result + 10 if w.op == "+" else result - 10
    if rng.random() < recipe.oscillation_share and spurious >= 0:
        w.step(a, b, spurious, end())
        final = spurious if rng.random() < recipe.oscillation_wrong_rate else result
        if final == result:
            w.step(a, b, result, end())
        kind = "oscillation"
    else:
        for _ in range(rng.randint(1, 2)):
            w.step(a, b, result, end())
        final, kind = result, "stagnation"
    labels.repeats.append(Repeat(step=step, kind=kind, start=start, end=w.pos, wrong=final != result))
    return final
