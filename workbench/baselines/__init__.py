"""The early-exit and anti-reflection baselines, each a method for the evaluation harness.

* ``NoWait``: ban the reflection words throughout thinking (arXiv 2506.08343);
* ``Budget``: force the end of thinking at a thinking-token budget (s1 / TALE);
* ``AnswerConsistency``: probe a trial answer every N thinking tokens, exit when consecutive ones
  agree (Dynasor-CoT);
* ``Deer``: probe a trial answer at reflection points, exit when it is confident (DEER).

The probes run beside the generation (``probe_answer``) and their tokens are recorded as cost;
``thinking`` tracks each sequence's thinking span for every exit controller, NEAT's included.

Example:
    >>> from workbench.baselines import Budget, NoWait
    >>> Budget(max_thinking=20).max_thinking, NoWait(reflection_words=["wait"]).reflection_words
    (20, ('wait',))
"""

from workbench.baselines.answer_consistency import AnswerConsistency, AnswerConsistencyController
from workbench.baselines.budget import Budget, BudgetController
from workbench.baselines.deer import Deer, DeerController
from workbench.baselines.nowait import NoWait, NoWaitController
from workbench.baselines.probe_answer import ProbeAnswer, ProbingController, answer_key, probe_answers
from workbench.baselines.thinking import ThinkingController, ThinkState, marker_ids, step_separators, word_ids

__all__ = [
    "AnswerConsistency", "AnswerConsistencyController", "Budget", "BudgetController", "Deer", "DeerController",
    "NoWait", "NoWaitController", "ProbeAnswer", "ProbingController", "ThinkState", "ThinkingController",
    "answer_key", "marker_ids", "probe_answers", "step_separators", "word_ids",
]
