"""NEAT's selection: attribution candidates, the temporal filter and the consistency vote (pure numpy).

Per calibration trace (reference code, ``identify_neurons.py``):

1. **candidates**: the ``top_attr`` neurons with the highest positive Imp, then the first
   ``top_temporal`` of them;
2. **temporal profile**: each candidate's activation over the span is sign-aligned with its value at
   the exit position and rectified, ``c(t) = max(s * a_t, 0)``; the relative centre of mass is
   ``mu_com = (1/T) sum_t t c(t) / ||c||_1`` (``t = 1..T``: 1 for a neuron that fires only at the exit
   position, about 0.5 for a constant one) and the entropy of ``c / ||c||_1`` is divided by
   ``log2 T`` so that 1 means spread evenly;
3. **vote**: candidates sorted by centre of mass (latest first, lower entropy breaking ties); the
   first ``vote_k`` vote.

Across traces, a neuron is kept when it voted in at least ``tau_cons`` of the traces and its mean
centre of mass over its votes is at least ``tau_com``; kept neurons are ordered by votes, then mean
Imp. Its sign is the majority of its per-trace signs (the sum of exit activations breaks a tie).

Example:
    >>> import numpy as np
    >>> span = np.zeros((10, 2)); span[-1, 0] = 2.0; span[:, 1] = 1.0   # a late spike, a constant
    >>> com, ent, ok = temporal_profile(span, np.array([1, 1]))
    >>> com.round(2).tolist(), ent.round(2).tolist()
    ([1.0, 0.55], [0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int
from scipy import stats

from workbench.neat.config import NeatConfig


def candidates(imp: Float[np.ndarray, " n_neurons"], cfg: NeatConfig) -> Int[np.ndarray, " k"]:
    """The trace's candidates (flat indices, best first): top ``top_attr`` by positive Imp, then the
    first ``top_temporal``. NaN Imp (neurons of layers not attributed) never qualifies.

    >>> candidates(np.array([0.5, -1.0, np.nan, 2.0]), NeatConfig(top_attr=300, top_temporal=100)).tolist()
    [3, 0]
    """
    score = np.where(np.isnan(imp), -np.inf, imp)
    positive = np.flatnonzero(score > 0)
    order = positive[np.argsort(-score[positive], kind="stable")]
    return order[: cfg.top_attr][: cfg.top_temporal]


def temporal_profile(
    span: Float[np.ndarray, "pos k"], signs: Int[np.ndarray, " k"],
) -> tuple[Float[np.ndarray, " k"], Float[np.ndarray, " k"], Bool[np.ndarray, " k"]]:
    """Relative centre of mass, normalised entropy and "has mass" of each column's rectified,
    sign-aligned activation over ``span`` (positions in order, the exit position last)."""
    n_pos = span.shape[0]
    c = np.maximum(span * signs[None, :], 0.0).astype(np.float64)
    mass = c.sum(0)
    ok = mass > 1e-6
    p = c / np.where(ok, mass, 1.0)[None, :]
    com = (np.arange(1, n_pos + 1) @ p) / n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        ent = stats.entropy(np.where(ok[None, :], p, 1.0 / n_pos), base=2, axis=0)
    ent = ent / np.log2(n_pos) if n_pos > 1 else np.zeros_like(ent)
    return np.where(ok, com, np.nan), np.where(ok, ent, np.nan), ok


@dataclass(frozen=True)
class TraceVote:
    """One calibration trace's voters, in vote order: flat indices and what the vote averages."""

    flat: Int[np.ndarray, " k"]
    importance: Float[np.ndarray, " k"]
    com: Float[np.ndarray, " k"]
    signs: Int[np.ndarray, " k"]
    exit_act: Float[np.ndarray, " k"]  # raw activation at the exit position(s), summed


def trace_vote(
    flat: Int[np.ndarray, " k"],
    importance: Float[np.ndarray, " k"],
    span: Float[np.ndarray, "pos k"],
    exit_act: Float[np.ndarray, " k"],
    cfg: NeatConfig,
) -> TraceVote:
    """Orders one trace's candidates by their temporal profile and keeps the first ``vote_k``.

    ``exit_act`` is each candidate's activation at the exit position(s): its sign is the candidate's
    sign in this trace (the reference code's ``target_sign``).

    >>> span = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [-3.0, 1.0, 0.0]])
    >>> v = trace_vote(np.array([7, 8, 9]), np.ones(3), span, span[-1], NeatConfig(vote_k=2))
    >>> v.flat.tolist(), v.signs.tolist()
    ([7, 8], [-1, 1])
    """
    signs = np.where(exit_act < 0, -1, 1).astype(np.int64)
    com, ent, ok = temporal_profile(span, signs)
    if cfg.tau_entropy is not None:
        ok &= ent <= cfg.tau_entropy
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((ent[idx], -com[idx]))][: cfg.vote_k]
    return TraceVote(flat[order], importance[order].astype(np.float64), com[order], signs[order],
                     exit_act[order].astype(np.float64))


@dataclass(frozen=True)
class Selection:
    """Neurons that passed the vote, best first, with the statistics that chose them."""

    flat: Int[np.ndarray, " k"]
    signs: Int[np.ndarray, " k"]
    consistency: Float[np.ndarray, " k"]
    com: Float[np.ndarray, " k"]
    importance: Float[np.ndarray, " k"]
    n_traces: int


def vote(votes: Sequence[TraceVote], cfg: NeatConfig) -> Selection:
    """Keeps neurons with consistency >= ``tau_cons`` and mean centre of mass >= ``tau_com``.

    >>> a = TraceVote(np.array([1, 2]), np.array([1.0, 2.0]), np.array([0.9, 0.9]), np.array([1, -1]),
    ...               np.array([1.0, -1.0]))
    >>> b = TraceVote(np.array([2]), np.array([4.0]), np.array([0.7]), np.array([-1]), np.array([-1.0]))
    >>> s = vote([a, b], NeatConfig(tau_cons=0.6))
    >>> s.flat.tolist(), s.signs.tolist(), s.consistency.tolist(), s.importance.tolist()
    ([2], [-1], [1.0], [3.0])
    """
    if not votes:
        raise ValueError("vote: no calibration trace voted; give traces whose thinking closes")
    stats_by: dict[int, list[tuple[float, float, int, float]]] = {}
    for v in votes:
        for f, imp, com, sign, act in zip(v.flat.tolist(), v.importance.tolist(), v.com.tolist(),
                                          v.signs.tolist(), v.exit_act.tolist(), strict=True):
            stats_by.setdefault(int(f), []).append((imp, com, sign, act))
    rows = []
    for f, items in stats_by.items():
        imp, com, sign, act = (np.array(x, dtype=np.float64) for x in zip(*items, strict=True))
        cons, mean_com = len(items) / len(votes), float(com.mean())
        if cons >= cfg.tau_cons and mean_com >= cfg.tau_com:
            s = np.sign(sign.sum()) or np.sign(act.sum()) or 1.0
            rows.append((f, int(s), cons, mean_com, float(imp.mean())))
    rows.sort(key=lambda r: (-r[2], -r[4], r[0]))
    rows = rows[: cfg.max_neurons] if cfg.max_neurons is not None else rows
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    return Selection(np.array(cols[0], dtype=np.int64), np.array(cols[1], dtype=np.int64),
                     np.array(cols[2], dtype=np.float64), np.array(cols[3], dtype=np.float64),
                     np.array(cols[4], dtype=np.float64), len(votes))
