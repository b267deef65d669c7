"""Does a fine-tuned model follow NeuReasoner's trigger tokens? Measured apart from the detectors.

On held-out problems (never trained on), each rendered trace without a failure of its own gets an
error injected as the fine-tuning data has it (``sft.inject``) and is cut right after the trigger
token; the model then writes the rest greedily, and the organism's labeller reads the whole trace.
Beside each case, its control: the same prefix with the trigger left out, so the model goes on from
the bare error. Per case:

* ``slip``: a wrong step result, then ``<INTRA>``: *followed* when the slip is caught (the step redone
  right) and the answer is correct;
* ``oscillation``: a step written again with another value (possibly cut short), then ``<INTER>``:
  followed when no further repeat comes and the answer is correct;
* ``slip_false_alarm`` / ``oscillation_false_alarm``: a trigger where nothing went wrong (a detector's
  false alarm): followed when the answer is still correct.

Example:
    >>> case_prefix(["Q:", "1", "+", "2", "<think>", "1", "+", "2", "=", "4", "<INTRA>", "1"], "<INTRA>")
    'Q: 1 + 2 <think> 1 + 2 = 4 <INTRA>'
    >>> case_prefix(["Q:", "1", "+", "2", "<think>", "1", "+", "2", "=", "4", "<INTRA>", "1"], "<INTRA>", drop=True)
    'Q: 1 + 2 <think> 1 + 2 = 4'
"""

from __future__ import annotations

import random
from typing import Any

from transformer_lens.model_bridge import TransformerBridge

from workbench.engine import SamplingConfig, generate
from workbench.neureasoner.sft import inject
from workbench.organism.labeler import label_tokens
from workbench.organism.task import RECIPE_V2, TRIGGERS, TraceRecipe, render_trace, sample_problems

CASES = ("slip", "oscillation", "slip_false_alarm", "oscillation_false_alarm")


def case_prefix(words: list[str], trigger: str, drop: bool = False) -> str:
    """The words up to and including the first ``trigger`` (without it when ``drop``), joined by spaces."""
    cut = words.index(trigger)
    return " ".join(words[: cut if drop else cut + 1])


def _followed(case: str, labels, prefix_repeats: int) -> bool:
    if not (labels.correct and labels.well_formed):
        return False
    if case == "slip":
        return all(s.caught for s in labels.slips)
    if case == "oscillation":
        return len(labels.repeats) <= prefix_repeats
    return True


def trigger_following(
    model: TransformerBridge, problems: int = 100, seed: int = 0, recipe: TraceRecipe = RECIPE_V2,
    max_new_tokens: int = 160,
) -> dict[str, Any]:
    """Per case (``CASES``): how often the model follows the trigger, and how often it ends right without it.

    Returns ``{case: {"n", "followed", "correct", "correct_without_trigger"}}`` (rates over the prefixes
    that could be built; ``correct_without_trigger`` is the control: the same prefix less the trigger).
    """
    tokens = dict(TRIGGERS)
    rng = random.Random(seed)
    prefixes: dict[str, list[tuple[Any, str, bool]]] = {c: [] for c in CASES}
    for problem in sample_problems(problems, seed, held_out=True):
        trace = render_trace(problem, rng, recipe)
        if trace.labels.slips or trace.labels.repeats or not trace.labels.correct:
            continue  # a trace with failures of its own would blur what the trigger did
        for case in CASES:
            pieces = inject(trace, rng, case)
            if pieces is None:
                continue
            words = [w for w, _ in pieces]
            trigger = tokens["slip" if case.startswith("slip") else "oscillation"]
            for drop in (False, True):
                prefixes[case].append((problem, case_prefix(words, trigger, drop), drop))
    out: dict[str, Any] = {}
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    tok = model.tokenizer
    for case, items in prefixes.items():
        done = generate(model, [text for _, text, _ in items], sampling)
        followed, correct, control = [], [], []
        for (problem, _, drop), f in zip(items, done, strict=True):
            labels = label_tokens(problem, tok.convert_ids_to_tokens(f.tokens), recipe)
            if drop:
                control.append(labels.correct)
                continue
            before = label_tokens(problem, tok.convert_ids_to_tokens(f.tokens[: f.prompt_len]), recipe)
            followed.append(_followed(case, labels, len(before.repeats)))
            correct.append(labels.correct)
        n = len(followed)
        out[case] = {"n": n, "followed": sum(followed) / n if n else float("nan"),
                     "correct": sum(correct) / n if n else float("nan"),
                     "correct_without_trigger": sum(control) / len(control) if control else float("nan")}
    return out
