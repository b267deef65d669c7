"""Does a fine-tuned model follow NeuReasoner's trigger tokens? Measured apart from the detectors.

Each case is a prefix ending in an injected error and its trigger token, beside its control: the same
prefix without the trigger, so the model goes on from the bare error. The model writes the rest
greedily and a judge reads each finished sequence: *followed* (did it do what the trigger asks) and
*correct* (is the answer right).

Any model and task: ``run_cases`` builds the cases from a trace run's traces (those not fine-tuned on,
ideally: another run of the task), injecting errors as the fine-tuning data does (``sft.inject``,
with the trigger at the first word boundary after the changed number, or after a whole repeated step),
and ``RunJudge`` reads them with the generic text conventions:

* ``slip`` (``<INTRA>``): followed when the first step after the trigger writes the right value again
  (and not the wrong one);
* ``oscillation`` (``<INTER>``): followed when the automatic labeller (``labels.auto_events``) finds no
  repeat among the steps after the trigger.

The organism has its own cases and judge (``workbench.organism.sft_data``: held-out rendered traces,
its labeller), behind ``workbench organism follow``.

Example:
    >>> case = FollowCase("slip", [], [], None, right="46", wrong="47")   # "12 + 34 = 47", then <INTRA>
    >>> RunJudge.slip_followed("\\n12 + 34 = 46\\n\\nso 46 * 3", case, r"\\n[ \\t]*\\n")
    True
    >>> RunJudge.slip_followed("\\n12 + 34 = 47\\n\\nso 47 * 3", case, r"\\n[ \\t]*\\n")
    False
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from transformer_lens.model_bridge import TransformerBridge

from workbench.engine import Engine, EngineConfig, Request, SamplingConfig
from workbench.neureasoner.labels import auto_events, split_steps


@dataclass(frozen=True)
class FollowCase:
    """One case: the prompt ids with the trigger (``ids``) and without it (``control``); ``meta`` is what the
    judge needs to know (a problem id), ``right``/``wrong`` a slip's values, ``step`` the step repeated,
    ``think_from`` where the thinking starts in ``ids``."""

    case: str
    ids: list[int]
    control: list[int]
    meta: Any
    right: str | None = None
    wrong: str | None = None
    step: str | None = None
    think_from: int = 0


class Verdict(NamedTuple):
    """A judge's reading of one finished case: did the model do what the trigger asks; is its answer right."""

    followed: bool
    correct: bool


Judge = Callable[[FollowCase, list[int], int], Verdict]  # (case, the finished tokens, the prompt length)


def trigger_following(
    model: TransformerBridge, cases: Mapping[str, Sequence[FollowCase]], judge: Judge, max_new_tokens: int = 160,
    stop_ids: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Per case: how often the model follows the trigger, and how often it ends right without it.

    Returns ``{case: {"n", "followed", "correct", "correct_without_trigger"}}`` (rates over the cases;
    ``correct_without_trigger`` is the control's). Greedy; ``stop_ids`` end a sequence (default: the
    model's EOS ids).
    """
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {}
    for name, items in cases.items():
        # The with- and without-trigger prefixes of each case side by side, in one batch per case.
        requests = [Request(str(2 * i + drop), c.control if drop else c.ids)
                    for i, c in enumerate(items) for drop in (False, True)]
        engine = Engine(model, EngineConfig(sampling=sampling, batch_size=64, stop_token_ids=stop_ids))
        done = {f.key: f for f in engine.run(requests)}
        followed, correct, control = [], [], []
        for i, c in enumerate(items):
            f, g = done[str(2 * i)], done[str(2 * i + 1)]
            verdict = judge(c, f.tokens, f.prompt_len)
            followed.append(verdict.followed)
            correct.append(verdict.correct)
            control.append(judge(c, g.tokens, g.prompt_len).correct)
        n = len(followed)
        out[name] = {"n": n, "followed": sum(followed) / n if n else float("nan"),
                     "correct": sum(correct) / n if n else float("nan"),
                     "correct_without_trigger": sum(control) / n if n else float("nan")}
    return out


def run_cases(run: str | Path, tokenizer: Any, traces: int = 100, seed: int = 0, correct_only: bool = True,
              ) -> dict[str, list[FollowCase]]:
    """Slip and oscillation cases from up to ``traces`` traces of a trace run (``RunSource.usable``), encoded
    with ``tokenizer`` (the fine-tuned model's)."""
    from workbench.neureasoner.sft import RunSource, encode, inject
    from workbench.neureasoner.triggers import TRIGGERS

    source = RunSource.load(run)
    usable = source.usable(correct_only)
    if not usable:
        raise ValueError(f"{run}: none of its {len(source.traces)} traces has two thinking steps or more"
                         f"{' and is correct' if correct_only else ''}: no case to build; pass another run")
    rng = random.Random(seed)
    chosen = rng.sample(usable, min(traces, len(usable)))
    out: dict[str, list[FollowCase]] = {"slip": [], "oscillation": []}
    for trace in chosen:
        prompt = source.prompt_ids(tokenizer, trace.prompt)
        for case in out:
            got = inject(trace, rng, case, source.word_pattern, dict(TRIGGERS), late=0, cut=False)
            if got is None:
                continue
            ids, control = (prompt + encode([(got.prefix(keep), True)], tokenizer, add_special_tokens=False)[0]
                            for keep in (True, False))
            out[case].append(FollowCase(case, ids, control, trace.problem_id, got.right, got.wrong, got.step,
                                        think_from=len(prompt)))
    return out


class RunJudge:
    """Reads a finished case of a trace run: the answer graded by the run's task, the steps after the
    trigger by the generic text conventions (see the module docstring)."""

    def __init__(self, run: str | Path, tokenizer: Any) -> None:
        from workbench.traces import config_task, run_config, run_problems

        cfg = run_config(run)
        self.task = config_task(cfg)
        self.problems = {p.id: p for p in run_problems(self.task, cfg)}
        self.tokenizer, self.fmt = tokenizer, cfg.prompt.resolve(tokenizer)
        self.step_pattern = self.task.text.step_pattern

    def __call__(self, case: FollowCase, tokens: list[int], prompt_len: int) -> Verdict:
        tok = self.tokenizer
        # Thinking and answer found as the run found them (its prompt format), then graded by its task.
        spans = self.fmt.spans(tok, tokens, prompt_len)
        end = spans.think_end if spans.think_end is not None else len(tokens)
        start = spans.answer_start
        answer = "" if start is None else tok.decode(tokens[start:], skip_special_tokens=True)
        problem = self.problems.get(case.meta)
        correct = problem is not None and self.task.grade(problem, answer).correct
        if case.case == "slip":
            thinking = tok.decode(tokens[prompt_len:end], skip_special_tokens=False)
            return Verdict(self.slip_followed(thinking, case, self.step_pattern), correct)
        return Verdict(self.repeat_followed(tokens, prompt_len, end, case.think_from), correct)

    @staticmethod
    def slip_followed(thinking: str, case: FollowCase, step_pattern: str) -> bool:
        """The first step written after the trigger holds the right value and not the wrong one."""
        steps = split_steps(thinking, step_pattern)
        if not steps:
            return False
        first = thinking[steps[0][0] : steps[0][1]]

        def has(value: str | None) -> bool:
            return value is not None and re.search(rf"(?<![\d.]){re.escape(value)}(?![\d])", first) is not None

        return has(case.right) and not has(case.wrong)

    def repeat_followed(self, tokens: list[int], prompt_len: int, think_end: int, think_from: int = 0) -> bool:
        """No step after the trigger (the prefix's last token) repeats an earlier one, as the automatic
        labeller reads repeats (the same text, expression or value), over the thinking ``[think_from, think_end)``."""
        pieces = [self.tokenizer.decode([t]) for t in tokens]
        events = auto_events(pieces, think_from - 1, think_end, None, self.step_pattern)
        # Episodes are whole steps: one reaching past the trigger holds a step the model wrote after it.
        return not any(e > prompt_len for _, e in events.oscillation)
