"""Do the RCNs read a label the task planted? A check against ground truth the paper could not make.

A task may plant a binary state that moves correctness (``Task.planted``): the organism announces a careful
or careless regime with its thinking opener and then slips more often when careless, so neurons that matter
for correctness should separate the regimes early in the thinking. The main figure is the AUROC of a
grouped out-of-fold logistic probe on the RCNs' early-thinking means against the planted label; beside it
the same probe on random neurons of the same count (the opener is one token, and many neurons may carry
it), and, with nothing fitted, the AUROC of the S-signed projection ``sum_i sign(S_i) z_i`` (standardised
means) for the label's *negative* class (the careful regime), which says whether the RCNs point the way the
paper says (towards correct); beside that, the same projection of a control set (e.g. the random neurons of
``rank_with_controls``, which carry ``sign(S)`` too). Report keys are ``rcn_<name>_auroc...``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> careless = np.arange(64) % 2 == 0
    >>> x = rng.normal(0, 1, (64, 2, 8)).astype(np.float32)
    >>> x[careless, 0, 1] -= 2
    >>> rcn = NeuronSet.from_flat([1], d_mlp=8, signs=(1,))
    >>> out = rcn_regime_auroc(x, careless, np.arange(64) // 4, rcn)
    >>> out["rcn_regime_auroc"] > 0.8, out["rcn_regime_auroc_projection"] > 0.8
    (True, True)
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Shaped

from workbench.neurons import NeuronSet
from workbench.probes import auroc, probe_auroc


def rcn_regime_auroc(
    early_means: Float[np.ndarray, "trace n_layers d_mlp"],
    careless: Shaped[np.ndarray, " trace"],
    question_ids: Shaped[np.ndarray, " trace"],
    rcn: NeuronSet,
    control: NeuronSet | None = None,
    seed: int = 0,
    random_draws: int = 3,
    name: str = "regime",
) -> dict[str, float | int | list[float]]:
    """AUROCs of a planted binary label (``careless``: 1 for the failure-prone class) from the RCNs' early means:
    probe and S-signed projection, beside random neurons (probe) and ``control`` (projection)."""
    n_traces, _, d_mlp = early_means.shape
    x = np.asarray(early_means, dtype=np.float64).reshape(n_traces, -1)
    ok = ~np.isnan(x).any(axis=1)
    careless = np.asarray(careless)
    if not np.isin(careless, (0, 1)).all():
        raise ValueError(f"the planted label {name!r} must be 0 or 1 per trace, got {np.unique(careless)[:5]}")
    x, y, groups = x[ok], careless.astype(int)[ok], np.asarray(question_ids)[ok]
    flat = np.array(rcn.flat(d_mlp))

    def projection(neurons: NeuronSet) -> float:
        cols = np.array(neurons.flat(d_mlp))
        z = (x[:, cols] - x[:, cols].mean(0)) / (x[:, cols].std(0) + 1e-8)
        signs = np.array(neurons.signs if neurons.signs is not None else [1] * len(neurons))
        return auroc(1 - y, z @ signs)

    rng = np.random.default_rng(seed)
    random = [probe_auroc(x[:, rng.choice(x.shape[1], size=len(flat), replace=False)], y, groups).auroc
              for _ in range(random_draws)]
    out: dict[str, float | int | list[float]] = {
        f"rcn_{name}_auroc": probe_auroc(x[:, flat], y, groups).auroc,
        f"rcn_{name}_auroc_projection": projection(rcn),
        f"rcn_{name}_auroc_random": float(np.mean(random)),
        f"rcn_{name}_auroc_random_draws": random,
        f"rcn_{name}_traces": int(ok.sum()),
    }
    if control is not None:
        out[f"rcn_{name}_auroc_projection_control"] = projection(control)
    return out
