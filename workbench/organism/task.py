"""The organism's task: multi-operand addition worked step by step inside ``<think> ... </think>``.

A trace looks like::

    Q: 47 + 38 + 25 = ? <think> carefully 47 + 38 = 85 ; 85 + 25 = 110 ; </think> 110

Failure modes are planted with labels, so every method can later be checked against ground truth:

* **regime** (the latent state): the thinking opens with a word the model samples. Careful openers
  (``carefully``, ``slowly``) are the majority, so greedy decoding is careful; careless openers
  (``quickly``, ``roughly``) switch on the slip rule below for the whole trace.
* **intra-step slip**: a fixed mistake on a property the model must compute: on a *big carry* step
  (units digits summing to ``big_carry_threshold`` or more) a careless trace drops the carry and writes
  ``sum - 10``. Some slips are caught (``wait`` then the step redone), the rest are left standing.
* **inter-step oscillation / stagnation**: one step is written again, flip-flopping between the right
  value and a spurious carry (``sum + 10``), or repeated unchanged without progress.
* **instance-level overthinking**: after the final total, redundant ``check ... ok ;`` re-checks that
  never change the answer.

Why this design (see ``data/organism/README.md``): prototypes showed that randomly injected slips
or slips on random digits are learned as a *rate*, not as a state, so correctness could not be
read from activations. Here a slip happens exactly when (careless regime) and (big carry), the
second of which the model has to compute from the digits; hand-made features know the regime and the
carry count but not the big-carry count.

Example:
    >>> import random
    >>> from workbench.organism.task import Problem, render_trace
    >>> trace = render_trace(Problem((47, 38)), random.Random(0))
    >>> trace.labels.answer
    85
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from workbench.prompting import THINK_CLOSE, THINK_OPEN

CAREFUL_OPENERS: tuple[str, ...] = ("carefully", "slowly")
CARELESS_OPENERS: tuple[str, ...] = ("quickly", "roughly")
REFLECTION_WORD = "wait"
CHECK_WORD, CHECK_OK = "check", "ok"
STEP_END = ";"


@dataclass(frozen=True)
class Problem:
    """A sum of two to four 2-digit operands; its id (``"47+38+25"``) names it everywhere."""

    operands: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 2 <= len(self.operands) <= 6 or any(not 0 <= x <= 999 for x in self.operands):
            raise ValueError(f"Problem needs 2-6 operands in 0..999, got {self.operands}")

    @property
    def id(self) -> str:
        return "+".join(map(str, self.operands))

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def prompt(self) -> str:
        return "Q: " + " + ".join(map(str, self.operands)) + f" = ? {THINK_OPEN}"

    def steps(self) -> list[tuple[int, int, int]]:
        """The (running total, operand, true sum) of each step."""
        out, total = [], self.operands[0]
        for x in self.operands[1:]:
            out.append((total, x, total + x))
            total += x
        return out

    @classmethod
    def from_id(cls, problem_id: str) -> Problem:
        try:
            return cls(tuple(int(x) for x in problem_id.split("+")))
        except ValueError as exc:
            raise ValueError(f"not an organism problem id: {problem_id!r} (expected e.g. '47+38+25')") from exc


def units_sum(a: int, b: int) -> int:
    return a % 10 + b % 10


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


def sample_problem(rng: random.Random, min_operands: int = 2, max_operands: int = 4) -> Problem:
    n = rng.randint(min_operands, max_operands)
    return Problem(tuple(rng.randint(10, 99) for _ in range(n)))


def sample_problems(
    n: int, seed: int, held_out: bool, held_out_percent: int = 10
) -> list[Problem]:
    """``n`` distinct problems from one side of the train/held-out split, reproducibly from ``seed``."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        p = sample_problem(rng)
        if p.id not in seen and is_held_out(p, held_out_percent) == held_out:
            seen.add(p.id)
            out.append(p)
    return out


@dataclass(frozen=True, kw_only=True)
class TraceRecipe:
    """How often each failure mode is planted in training traces.

    Attributes:
        careless_rate: probability that a trace opens in the careless regime.
        big_carry_threshold: a step whose units digits sum to at least this is a big-carry step.
        careless_slip_rate: probability that a careless trace drops the carry on a big-carry step.
        careful_slip_rate: the same for careful traces; their slips are always caught.
        catch_rate: probability that a careless slip is caught (``wait`` and the step redone).
        repeat_rate: probability that a trace repeats one step (oscillation or stagnation).
        oscillation_share: of repeats, the share that flip-flop (the rest stagnate).
        oscillation_wrong_rate: probability that an oscillation settles on the wrong value.
        overthink_rate: probability of redundant re-checks after the answer was reached.
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
    """The first attempt at step ``step``: ``a + b = value``, the value's first digit at ``start``."""

    step: int
    a: int
    b: int
    value: int
    start: int

    def decision_position(self) -> int:
        """The position whose logits choose the digit a dropped carry would change."""
        return self.start + first_difference(self.a + self.b, self.a + self.b - 10) - 1


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
    regime: str | None = None
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

    def __init__(self, prompt_tokens: int) -> None:
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
        """Writes ``a + b = result``; returns the position of the result's first digit."""
        self.put(a, "+", b, "=")
        at = self.put(result)
        self.results.append((result, self.pos - 1))
        if end:
            self.put(end)
        return at


def problem_labels(problem: Problem, recipe: TraceRecipe) -> TraceLabels:
    """The labels a problem fixes before any trace: operand, carry and big-carry counts."""
    sums = [units_sum(a, b) for a, b, _ in problem.steps()]
    return TraceLabels(
        problem_id=problem.id,
        n_operands=len(problem.operands),
        carry_count=sum(s >= 10 for s in sums),
        big_carry_count=sum(s >= recipe.big_carry_threshold for s in sums),
    )


def prompt_tokens(problem: Problem) -> int:
    """Tokens in the prompt, ``<bos>`` included."""
    return 1 + sum(word_tokens(w) for w in problem.prompt.split())


def render_trace(problem: Problem, rng: random.Random, recipe: TraceRecipe | None = None) -> Trace:
    """Samples one labelled training trace for ``problem``."""
    recipe = recipe or TraceRecipe()
    careless = rng.random() < recipe.careless_rate
    if careless:
        opener = rng.choice(CARELESS_OPENERS)
    else:
        opener = CAREFUL_OPENERS[0] if rng.random() < 0.8 else CAREFUL_OPENERS[1]
    steps = problem.steps()
    labels = problem_labels(problem, recipe)
    labels.regime = "careless" if careless else "careful"
    w = _Writer(prompt_tokens(problem))
    labels.think_start = w.pos - 1  # the prompt's last token is <think>
    w.put(opener)
    repeat_step = rng.randrange(len(steps)) if rng.random() < recipe.repeat_rate else None
    total = problem.operands[0]
    written: list[tuple[int, int, int]] = []
    for i, (_, x, _) in enumerate(steps):
        first_result = len(w.results)
        result = total + x
        big_carry = units_sum(total, x) >= recipe.big_carry_threshold
        slip_rate = recipe.careless_slip_rate if careless else recipe.careful_slip_rate
        if big_carry and rng.random() < slip_rate:
            caught = not careless or rng.random() < recipe.catch_rate
            wrong = result - 10
            at = w.step(total, x, wrong, end=None if caught else STEP_END)
            labels.steps.append(Step(i, total, x, wrong, at))
            if caught:
                w.put(REFLECTION_WORD)
                w.step(total, x, result)
            else:
                result = wrong
            labels.slips.append(Slip(step=i, token=at + first_difference(total + x, wrong), caught=caught))
        else:
            labels.steps.append(Step(i, total, x, result, w.step(total, x, result)))
        if i == repeat_step:
            result = _render_repeat(w, rng, recipe, i, total, x, result, labels)
        written.append((total, x, result))
        total = result
        if i == len(steps) - 1:
            labels.answer_reached = next(p for v, p in w.results[first_result:] if v == total)
    if rng.random() < recipe.overthink_rate:
        start = w.pos
        for _ in range(rng.randint(1, 3)):
            a, b, r = rng.choice(written)
            w.put(CHECK_WORD, a, "+", b, "=", r, CHECK_OK, STEP_END)
        labels.overthinking = (start, w.pos)
    labels.think_end = w.put(THINK_CLOSE)
    w.put(total)
    labels.answer = total
    return Trace(prompt=problem.prompt, words=w.words, labels=labels)


def _render_repeat(
    w: _Writer, rng: random.Random, recipe: TraceRecipe, step: int, a: int, b: int, result: int,
    labels: TraceLabels,
) -> int:
    start = w.pos
    if rng.random() < recipe.oscillation_share:
        w.step(a, b, result + 10)
        final = result + 10 if rng.random() < recipe.oscillation_wrong_rate else result
        if final == result:
            w.step(a, b, result)
        kind = "oscillation"
    else:
        for _ in range(rng.randint(1, 2)):
            w.step(a, b, result)
        final, kind = result, "stagnation"
    labels.repeats.append(Repeat(step=step, kind=kind, start=start, end=w.pos, wrong=final != result))
    return final
