"""Splits by problem: what a method is fitted on never shares a problem with where it is measured.

Several traces of one problem share its difficulty, so a split by trace would let a method memorise
problems; every analysis splits by problem id, through this one function.

Example:
    >>> half = fit_half(["a", "b", "c", "d", "a"], seed=0)
    >>> len(half), half <= {"a", "b", "c", "d"}
    (2, True)
"""

from __future__ import annotations

import random
from collections.abc import Iterable


def fit_half(problem_ids: Iterable[str], seed: int) -> set[str]:
    """The half of the distinct problems (seeded) that a method is fitted on; the rest is where it is measured."""
    ids = sorted(set(problem_ids))
    random.Random(seed).shuffle(ids)
    return set(ids[: len(ids) // 2])
