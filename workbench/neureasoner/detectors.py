"""Small MLP detectors of each failure type from window features, and how they are scored.

A detector is a standardiser and an ``MLPClassifier`` (``cfg.hidden``, Adam, L2 ``cfg.alpha``)
fitted on windows of the fitting half of the problems. Its threshold is chosen on out-of-fold
scores of that same half (grouped folds by problem, so the threshold never sees a window the MLP
was fitted on): Youden's J (max TPR - FPR) by default, or the highest threshold whose window
recall reaches ``cfg.target_recall``. The test half is only ever scored.

Scores, per type:

* window level: precision, recall (at the threshold) and AUROC of each window overlapping an episode;
* event level: an episode is *detected* when any window overlapping it fires; a *run* is a maximal
  stretch of consecutive fired windows of one trace, and event precision is the share of runs that
  overlap an episode (a run is one alarm, however many windows it spans);
* anticipation: on windows that overlap no episode yet, the AUROC of predicting that one starts in
  the next ``window`` tokens.

The token-only control is the same detector on what the tokens alone say: the window's bag of
token ids plus a one-hot of its last token (ids modulo ``cfg.token_buckets``).

Example:
    >>> fired = np.array([True, True, False, True]); starts = np.array([0, 2, 4, 6])
    >>> event_hits(starts, 4, fired, [(1, 2), (20, 21)]), fired_runs(starts, 4, fired)
    ([True, False], [(0, 6), (6, 10)])
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from jaxtyping import Bool, Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import precision_recall_curve, roc_curve
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.atomic import atomic_write
from workbench.heads import HeadSet
from workbench.neureasoner.config import NeuReasonerConfig
from workbench.neureasoner.features import FEATURES
from workbench.neurons import NeuronSet
from workbench.probes import auroc

FORMAT = "workbench.neureasoner.Detector/1"


class _Constant:
    """Stands in for an MLP when the fitting windows hold one class only."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(x), 1))


def fit_mlp(x: np.ndarray, y: np.ndarray, cfg: NeuReasonerConfig) -> Pipeline | _Constant:
    if len(np.unique(y)) < 2:
        return _Constant(float(y.mean()) if len(y) else 0.0)
    # No early stopping: its held-out accuracy plateaus at the majority class long before the ranking
    # of rare failing windows is learnt (on planted data it stopped at AUROC 0.96 where 1.0 was there).
    mlp = MLPClassifier(hidden_layer_sizes=cfg.hidden, alpha=cfg.alpha, max_iter=cfg.max_iter, random_state=cfg.seed)
    with warnings.catch_warnings():  # cfg.max_iter is a budget: reaching it is expected, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        return make_pipeline(StandardScaler(), mlp).fit(x, y)


def choose_threshold(y: np.ndarray, scores: np.ndarray, cfg: NeuReasonerConfig) -> float:
    """The operating point of ``cfg.threshold`` on (out-of-fold) scores; 0.5 without both classes."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, scores)
    thr = np.minimum(thr, 1.0)  # roc_curve's first threshold is +inf
    # A precision target the base rate already meets is met by firing on every window: no detector at all.
    if cfg.threshold == "youden" or (cfg.threshold == "precision" and y.mean() >= cfg.target_precision):
        return float(thr[int(np.argmax(tpr - fpr))])
    if cfg.threshold == "recall":
        return float(thr[int(np.argmax(tpr >= cfg.target_recall))])
    precision, _, cuts = precision_recall_curve(y, scores)  # cuts ascending; precision[i] at cuts[i]
    precision = precision[:-1]
    reached = np.flatnonzero(precision >= cfg.target_precision)
    return float(cuts[reached[0]] if len(reached) else cuts[int(np.argmax(precision))])


@dataclass
class Detector:
    """A fitted detector of one failure type: what it reads, its model and its threshold.

    ``inputs`` is ``"neurons"`` (window features of the key units: ``neurons``, then ``heads`` where the
    analysis ranked attention heads too; unit-major, then ``FEATURES``), ``"random"`` (the same of random
    units) or ``"tokens"`` (the token-only control). ``needs`` says which activations it reads.
    """

    kind: str
    inputs: str
    model: Any
    threshold: float
    neurons: NeuronSet | None = None
    config: dict = field(default_factory=dict)
    heads: HeadSet | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """The activations a window's input is made of, in order: ``"neurons"`` (``blocks.{L}.mlp.hook_post``),
        ``"heads"`` (each head's residual write from ``blocks.{L}.attn.hook_z``), or ``"tokens"`` alone."""
        if self.inputs == "tokens":
            return ("tokens",)
        return (*(("neurons",) if self.neurons else ()), *(("heads",) if self.heads else ()))

    def score(self, x: Float[np.ndarray, "win feature"]) -> Float[np.ndarray, " win"]:
        if self.heads and x.shape[1] != (len(self.neurons or ()) + len(self.heads)) * len(FEATURES):
            # A caller that reads MLP neurons only (the remedy, live) cannot feed a detector fitted on heads.
            raise ValueError(
                f"this {self.kind} detector reads {len(self.neurons or ())} neurons and {len(self.heads)} attention "
                f"heads ({', '.join(self.heads.names()[:3])}{', ...' if len(self.heads) > 3 else ''}): "
                f"{(len(self.neurons or ()) + len(self.heads)) * len(FEATURES)} window features, the neurons' then "
                f"the heads', got {x.shape[1]}; live head features are not read at generation time, so refit with "
                "NeuReasonerConfig(units=('neurons',)) for a remedy")
        return self.model.predict_proba(np.asarray(x, np.float64))[:, 1]

    def fires(self, x: Float[np.ndarray, "win feature"]) -> Bool[np.ndarray, " win"]:
        return self.score(x) >= self.threshold

    def save(self, path: str | Path) -> Path:
        """Writes the detector with joblib, atomically (load it with ``Detector.load``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"format": FORMAT, "kind": self.kind, "inputs": self.inputs, "model": self.model,
                 "threshold": self.threshold, "config": self.config,
                 "neurons": None if self.neurons is None else self.neurons.to_dict()}
        if self.heads is not None:  # files without heads stay as they were
            state["heads"] = self.heads.to_dict()
        atomic_write(path, lambda tmp: joblib.dump(state, tmp))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no detector here; run `workbench rank --method mon` on its run first")
        state = joblib.load(path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a NeuReasoner detector file (expected format {FORMAT!r})")
        neurons = None if state["neurons"] is None else NeuronSet.from_dict(state["neurons"], source=str(path))
        heads = HeadSet.from_dict(state["heads"], source=str(path)) if state.get("heads") is not None else None
        return cls(state["kind"], state["inputs"], state["model"], state["threshold"], neurons, state["config"], heads)


def fit_detector(
    x: Float[np.ndarray, "win feature"],
    y: Bool[np.ndarray, " win"],
    groups: np.ndarray,
    cfg: NeuReasonerConfig,
) -> tuple[Any, float]:
    """An MLP fitted on all of ``x`` and the threshold chosen on grouped out-of-fold scores of ``x``."""
    y = np.asarray(y).astype(int)
    oof = np.zeros(len(y))
    n_groups = len(np.unique(groups))
    if n_groups >= 2 and len(np.unique(y)) == 2:
        for train, test in GroupKFold(n_splits=min(cfg.folds, n_groups)).split(x, y, groups):
            oof[test] = fit_mlp(x[train], y[train], cfg).predict_proba(x[test])[:, 1]
    return fit_mlp(x, y, cfg), choose_threshold(y, oof, cfg)


def token_features(
    token_ids: Int[np.ndarray, " pos"], starts: Int[np.ndarray, " win"], cfg: NeuReasonerConfig,
) -> Float[np.ndarray, "win feature"]:
    """The token-only control's input: per window, the share of each token id and a one-hot of its last token."""
    b = cfg.token_buckets
    out = np.zeros((len(starts), 2 * b), np.float32)
    ids = np.asarray(token_ids) % b
    for i, s in enumerate(starts):
        np.add.at(out[i], ids[s : s + cfg.window], 1.0 / cfg.window)
        out[i, b + ids[s + cfg.window - 1]] = 1.0
    return out


def fired_runs(starts: Int[np.ndarray, " win"], window: int, fired: Bool[np.ndarray, " win"]) -> list[tuple[int, int]]:
    """Token spans of the maximal runs of consecutive fired windows."""
    runs: list[tuple[int, int]] = []
    prev = False
    for s, f in zip(starts.tolist(), fired.tolist(), strict=True):
        if f and prev:
            runs[-1] = (runs[-1][0], s + window)
        elif f:
            runs.append((s, s + window))
        prev = f
    return runs


def event_hits(
    starts: Int[np.ndarray, " win"], window: int, fired: Bool[np.ndarray, " win"], spans,
) -> list[bool]:
    """Per episode: does any fired window overlap it?"""
    return [bool(np.any(fired & (starts < e) & (starts + window > s))) for s, e in spans]


def window_scores(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Window-level precision, recall (at ``threshold``) and AUROC."""
    fired = scores >= threshold
    tp = float(np.sum(fired & y))
    return {"precision": tp / fired.sum() if fired.any() else float("nan"),
            "recall": tp / y.sum() if y.any() else float("nan"), "auroc": auroc(y, scores)}
