"""AdaRAS reasoning-critical neurons (RCNs): the neurons whose mean activation differs between correct and
incorrect traces of the same question, with opposite signs (arXiv 2601.19847, Eqs. 1-2).

For neuron ``i`` of layer ``l`` and each question ``p_k`` that has both correct and incorrect traces,
``mu(a+, p_k)`` is the mean over its correct traces of the neuron's span mean (``mu(a-, p_k)`` likewise for
incorrect ones). Then ``S(l, i) = E_k[mu(a+, p_k) - mu(a-, p_k)]``; the polarity filter keeps neurons with
``E_k[mu+] * E_k[mu-] < 0`` (the neuron is on in one class and off in the other), and the top ``k`` by
``|S|`` are the RCNs. Each choice where the paper and the reference code (github.com/cat-sk/AdaRAS)
differ is an ``AdarasConfig`` field. Every ranking comes with its controls (``rank_with_controls``): the
same ranking without the polarity filter, the paper's "probing-steer" set (top ``|coef|`` of a logistic
probe on the same span means) and random neurons.

Example:
    >>> rng = np.random.default_rng(0)
    >>> means = rng.normal(0, 1, (40, 2, 8)).astype(np.float32)
    >>> correct = np.arange(40) % 2 == 0
    >>> means[correct, 1, 3] += 3; means[~correct, 1, 3] -= 3       # neuron (1, 3): +3 vs -3
    >>> rcn = rank_rcn_arrays(means, correct, np.arange(40) // 4, AdarasConfig(k=2))
    >>> rcn.layers[0], rcn.indices[0], rcn.signs[0]
    (1, 3, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float, Shaped
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from workbench.neurons import NeuronSet
from workbench.probes import select_c


@dataclass(frozen=True, kw_only=True)
class AdarasConfig:
    """How RCNs are ranked.

    Attributes:
        k: how many neurons to keep (the paper steers the top 50).
        span: which tokens a trace's mean runs over: ``"think"`` (the thinking span, the paper's reading) or
            ``"question+think"`` (every position of question and thinking, as the reference code caches
            them); the latter is the token-weighted mean of the store's question and thinking summaries.
        score: ``"diff"`` ranks by ``|S|`` (paper Eq. 2); ``"normalised"`` ranks by the reference code's
            ``|S| / (|mu+| + |mu-| + 1e-8)``, ties broken by ``|S|``. After the polarity filter that ratio
            is exactly 1 for every kept neuron, so both orders agree; they differ only without the filter.
        pairing: ``"question"`` averages within each question first, then over questions (Eq. 1);
            ``"pooled"`` averages over all correct and all incorrect traces of those questions, as the
            reference code does (its 4-correct/4-wrong questions make the two equal).
        polarity_filter: keep only neurons with ``E[mu+] * E[mu-] < 0`` (Eq. 2); off gives the ablation.
        seed: seed of the random-neuron control.
    """

    k: int = 50
    span: Literal["think", "question+think"] = "think"
    score: Literal["diff", "normalised"] = "diff"
    pairing: Literal["question", "pooled"] = "question"
    polarity_filter: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {"span": ("think", "question+think"), "score": ("diff", "normalised"),
                   "pairing": ("question", "pooled")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"AdarasConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.k < 1:
            raise ValueError(f"AdarasConfig.k={self.k}; keep at least one neuron")


@dataclass(frozen=True)
class RcnScores:
    """Per-neuron statistics of Eq. 1, each ``(n_layers, d_mlp)``, and how much data they rest on."""

    s: np.ndarray  # E_k[mu+ - mu-]
    mu_pos: np.ndarray  # E_k[mu+]: mean activation of correct traces
    mu_neg: np.ndarray  # E_k[mu-]: mean activation of incorrect traces
    n_questions: int  # questions with both correct and incorrect traces
    n_traces: int  # traces of those questions


def combine_spans(
    question: Float[np.ndarray, "trace n_layers d_mlp"],
    think: Float[np.ndarray, "trace n_layers d_mlp"],
    question_len: Shaped[np.ndarray, " trace"],
    think_len: Shaped[np.ndarray, " trace"],
) -> Float[np.ndarray, "trace n_layers d_mlp"]:
    """The mean over question and thinking tokens together, from each span's mean and length.

    An empty span (length 0, its mean NaN) simply contributes nothing.

    >>> q, t = np.ones((1, 1, 2)), np.full((1, 1, 2), np.nan)
    >>> combine_spans(q, t, np.array([3]), np.array([0]))[0, 0].tolist()
    [1.0, 1.0]
    """
    wq = np.asarray(question_len, dtype=np.float64)[:, None, None]
    wt = np.asarray(think_len, dtype=np.float64)[:, None, None]
    total = np.where(wq + wt > 0, wq + wt, np.nan)
    q = np.where(wq > 0, np.nan_to_num(question), 0.0)
    t = np.where(wt > 0, np.nan_to_num(think), 0.0)
    return ((q * wq + t * wt) / total).astype(np.float32)


def rcn_scores(
    means: Float[np.ndarray, "trace n_layers d_mlp"],
    correct: Shaped[np.ndarray, " trace"],
    question_ids: Shaped[np.ndarray, " trace"],
    pairing: Literal["question", "pooled"] = "question",
) -> RcnScores:
    """Eq. 1 over the questions with both correct and incorrect traces; traces with an empty span are skipped."""
    means, correct, qid = np.asarray(means), np.asarray(correct).astype(bool), np.asarray(question_ids)
    if not len(means) == len(correct) == len(qid):
        raise ValueError(f"means, correct and question_ids disagree in length: {len(means)}, {len(correct)}, "
                         f"{len(qid)}")
    ok = ~np.isnan(means).all(axis=(1, 2))
    mixed = {q for q in np.unique(qid[ok]) if len(np.unique(correct[ok & (qid == q)])) == 2}
    use = ok & np.isin(qid, list(mixed))
    if not mixed:
        both = sum(len(np.unique(correct[qid == q])) == 2 for q in np.unique(qid))
        if not ok.any():
            raise ValueError(f"the span read is empty in all {len(ok)} traces (no tokens in it), so no neuron has a "
                             "mean; read another span (AdarasConfig.span = 'question+think')")
        if both:
            raise ValueError(f"{both} of {len(np.unique(qid))} questions have both correct and incorrect traces, but "
                             f"the span read is empty in {int((~ok).sum())} of {len(ok)} traces, which leaves none; "
                             "read another span (AdarasConfig.span = 'question+think')")
        raise ValueError("no question has both correct and incorrect traces; sample more traces per question "
                         "(or at a higher temperature)")
    x = np.nan_to_num(means[use].astype(np.float64))
    y, q = correct[use], qid[use]
    if pairing == "pooled":
        mu_pos, mu_neg = x[y].mean(0), x[~y].mean(0)
    else:
        qs = sorted(mixed)
        mu_pos = np.mean([x[(q == k) & y].mean(0) for k in qs], axis=0)
        mu_neg = np.mean([x[(q == k) & ~y].mean(0) for k in qs], axis=0)
    return RcnScores(mu_pos - mu_neg, mu_pos, mu_neg, len(mixed), int(use.sum()))


def rank_order(scores: RcnScores, cfg: AdarasConfig) -> np.ndarray:
    """Flat indices (``layer * d_mlp + index``) of the top ``cfg.k`` neurons, best first (fewer when fewer
    neurons pass the polarity filter)."""
    s, pos, neg = scores.s.ravel(), scores.mu_pos.ravel(), scores.mu_neg.ravel()
    key = np.abs(s) / (np.abs(pos) + np.abs(neg) + 1e-8) if cfg.score == "normalised" else np.abs(s)
    candidates = np.flatnonzero(pos * neg < 0) if cfg.polarity_filter else np.arange(s.size)
    # lexsort sorts by its last key first: primary key, then |S| to break ties; negate for descending.
    order = candidates[np.lexsort((-np.abs(s[candidates]), -key[candidates]))]
    return order[: cfg.k]


def _neuron_set(flat: np.ndarray, scores: RcnScores, method: str, signs: np.ndarray, values: np.ndarray,
                parameters: dict, provenance: str) -> NeuronSet:
    n_layers, d_mlp = scores.s.shape
    flat = np.asarray(flat, dtype=int)
    return NeuronSet.from_flat(
        flat.tolist(), d_mlp, scores=tuple(float(v) for v in values),
        signs=tuple(1 if v >= 0 else -1 for v in signs), method=method,
        parameters={**parameters, "n_questions": scores.n_questions, "n_traces": scores.n_traces},
        group_means={"correct": scores.mu_pos.ravel()[flat].tolist(),
                     "incorrect": scores.mu_neg.ravel()[flat].tolist()},
        model_shape=(n_layers, d_mlp), provenance=provenance,
    )


def rank_rcn_arrays(
    means: Float[np.ndarray, "trace n_layers d_mlp"],
    correct: Shaped[np.ndarray, " trace"],
    question_ids: Shaped[np.ndarray, " trace"],
    cfg: AdarasConfig = AdarasConfig(),
    provenance: str = "",
) -> NeuronSet:
    """The top ``cfg.k`` RCNs of span means: method ``"adaras"``, scores ``S``, signs ``sign(S)``."""
    return _ranked(rcn_scores(means, correct, question_ids, cfg.pairing), cfg, "adaras", provenance)


def _ranked(scores: RcnScores, cfg: AdarasConfig, method: str, provenance: str) -> NeuronSet:
    """The top ``cfg.k`` neurons of ``scores`` ranked as ``cfg`` says, scored and signed by ``S``."""
    flat = rank_order(scores, cfg)
    s = scores.s.ravel()[flat]
    return _neuron_set(flat, scores, method, s, s, asdict(cfg), provenance)


@dataclass(frozen=True)
class RcnRankings:
    """The RCNs and their controls, all with the same ``k``; ``sets()`` names them as files are named."""

    rcn: NeuronSet
    unfiltered: NeuronSet  # the same ranking without the polarity filter
    probe: NeuronSet  # the paper's "probing-steer" set: top |coef| of a logistic correctness probe
    random: NeuronSet  # seeded random neurons

    def sets(self) -> dict[str, NeuronSet]:
        return {"rcn": self.rcn, "rcn-unfiltered": self.unfiltered, "rcn-probe": self.probe,
                "rcn-random": self.random}


def layer_distribution(neurons: NeuronSet, n_layers: int) -> list[int]:
    """How many of ``neurons`` sit in each layer, every layer listed (zeros included).

    >>> layer_distribution(NeuronSet.from_pairs([(2, 0), (2, 5), (0, 1)]), n_layers=4)
    [1, 0, 2, 0]
    """
    counts = neurons.layer_counts()
    return [counts.get(layer, 0) for layer in range(n_layers)]


def probe_coefficients(
    means: Float[np.ndarray, "trace n_layers d_mlp"],
    correct: Shaped[np.ndarray, " trace"],
    question_ids: Shaped[np.ndarray, " trace"],
) -> np.ndarray:
    """Per-neuron coefficient ``(n_layers * d_mlp,)`` of a standardised L2 logistic correctness probe, its
    strength chosen by grouped CV; standardising makes ``|coef|`` comparable across neurons."""
    ok = ~np.isnan(means).all(axis=(1, 2))
    x = np.nan_to_num(np.asarray(means[ok], dtype=np.float64).reshape(int(ok.sum()), -1))
    y, groups = np.asarray(correct)[ok].astype(int), np.asarray(question_ids)[ok]
    c = select_c(x, y, groups)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x, y)
    return pipe[-1].coef_[0]


def rank_with_controls(
    means: Float[np.ndarray, "trace n_layers d_mlp"],
    correct: Shaped[np.ndarray, " trace"],
    question_ids: Shaped[np.ndarray, " trace"],
    cfg: AdarasConfig = AdarasConfig(),
    provenance: str = "",
) -> RcnRankings:
    """The RCNs beside the unfiltered ranking, the probing-steer set and random neurons (same ``k``)."""
    scores = rcn_scores(means, correct, question_ids, cfg.pairing)
    params = asdict(cfg)
    s = scores.s.ravel()
    coef = probe_coefficients(means, correct, question_ids)
    by_coef = np.argsort(-np.abs(coef), kind="stable")[: cfg.k]
    drawn = np.random.default_rng(cfg.seed).choice(s.size, size=min(cfg.k, s.size), replace=False)
    return RcnRankings(
        rcn=_ranked(scores, cfg, "adaras", provenance),
        unfiltered=_ranked(scores, AdarasConfig(**{**params, "polarity_filter": False}), "adaras:unfiltered",
                           provenance),
        probe=_neuron_set(by_coef, scores, "adaras:probe", coef[by_coef], coef[by_coef],
                          {**params, "selection": "top |coef| of a standardised logistic probe"}, provenance),
        random=_neuron_set(drawn, scores, "random", s[drawn], s[drawn], {**params, "selection": "random"},
                           provenance),
    )
