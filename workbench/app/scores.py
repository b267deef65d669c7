"""Per-token scores over one trace from what the analyses fitted: NeuReasoner's failure detectors and
NEAT's exit signal, for colouring a trace; and one trace's fluctuation view (``fluctuation``) for the
figures.

A detector scores a window of ``cfg.window`` thinking tokens (windows ``cfg.stride`` apart, from the
first thinking token, as it was fitted); its score is drawn on the window's last token, the first point
where a monitor running during generation could have known it. NEAT's ``sim`` (or ``rho``) is the
closeness of the exit neurons to their pattern at exit points, one value per token.

Example:
    >>> import numpy as np
    >>> from workbench.neat.reference import ExitReference
    >>> acts = np.array([[2.0, -1.0], [0.0, 0.0], [-2.0, 1.0]])
    >>> exit_signal(ExitReference((3, 9), (1, -1), (2.0, -1.0)), acts, "rho").round(3).tolist()
    [1.0, 0.0, -1.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float, Int

from workbench.figures.fluctuation import FluctuationSeries
from workbench.neat.reference import ExitReference
from workbench.neureasoner.config import FAILURE_TYPES, NeuReasonerConfig
from workbench.neureasoner.detectors import Detector, fired_runs, token_features
from workbench.neureasoner.features import FEATURES, window_features, window_starts
from workbench.neureasoner.labels import FailureEvents


def neureasoner_config(params: dict) -> NeuReasonerConfig:
    """The ``NeuReasonerConfig`` recorded in a detector's or a MoN neuron set's parameters (other keys ignored).

    >>> neureasoner_config({"window": 6, "stride": 3, "score": "max |d|"}).window
    6
    """
    names = {f.name for f in dataclasses.fields(NeuReasonerConfig)}
    return NeuReasonerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names})


def detector_config(detector: Detector) -> NeuReasonerConfig:
    """The ``NeuReasonerConfig`` a detector was fitted with (recorded in its file)."""
    return neureasoner_config(detector.config)


def detector_scores(
    detector: Detector,
    acts: Float[np.ndarray, "pos neuron"] | None,
    token_ids: Int[np.ndarray, " pos"],
    think: tuple[int, int],
) -> Float[np.ndarray, " pos"]:
    """P(failure) of each window of the thinking span ``[lo, hi)``, on its last token; NaN elsewhere.

    ``acts`` holds the detector's neurons (columns in ``detector.neurons`` order) at every token of
    the trace; a ``"tokens"`` control detector reads ``token_ids`` only (pass ``acts=None``).
    """
    cfg = detector_config(detector)
    lo, hi = think
    out = np.full(len(token_ids), np.nan)
    starts = window_starts(max(hi - lo, 0), cfg, offset=lo)
    if not len(starts):
        return out
    if detector.inputs == "tokens":
        x = token_features(np.asarray(token_ids), starts, cfg)
    else:
        if acts is None:
            raise ValueError(f"a {detector.inputs!r} detector reads neuron activations; pass acts")
        x = window_features(np.asarray(acts)[lo:hi], cfg).reshape(len(starts), -1)
    out[starts + cfg.window - 1] = detector.score(x)
    return out


def exit_signal(
    reference: ExitReference, acts: Float[np.ndarray, "pos k"], which: str = "sim",
) -> Float[np.ndarray, " pos"]:
    """NEAT's ``which`` signal (``sim``, ``rho``, ``phi`` or ``mag``) at every token; ``acts`` in ``flat`` order."""
    signals = reference.signals(acts)
    if which not in signals:
        raise ValueError(f"unknown exit signal {which!r}; choose one of {sorted(signals)}")
    return signals[which]


def fluctuation(
    trace_id: str,
    kind: str,
    labels: Sequence[str],
    acts: Float[np.ndarray, "pos neuron"],
    think: tuple[int, int],
    events: FailureEvents,
    detector: Detector | None = None,
    detector_acts: Float[np.ndarray, "pos k"] | None = None,
    cfg: NeuReasonerConfig | None = None,
) -> FluctuationSeries:
    """What ``figures.fluctuation_figure`` draws for any trace and any neurons (positions count thinking tokens).

    ``acts`` and ``detector_acts`` cover the whole trace; ``cfg`` defaults to the detector's own.
    """
    if cfg is None:
        if detector is None:
            raise ValueError("give the NeuReasonerConfig of the windows, or a detector that records one")
        cfg = detector_config(detector)
    lo, hi = think
    inside = np.asarray(acts)[lo:hi]
    starts = window_starts(max(hi - lo, 0), cfg)
    scores, threshold, detected = None, None, ()
    if detector is not None and len(starts):
        if detector.inputs == "tokens" or detector_acts is None:
            raise ValueError("the fluctuation view scores a detector on neurons; pass its neurons' activations")
        x = window_features(np.asarray(detector_acts)[lo:hi], cfg).reshape(len(starts), -1)
        scores, threshold = detector.score(x), float(detector.threshold)
        detected = tuple((int(a), int(b)) for a, b in fired_runs(starts, cfg.window, scores >= threshold))
    planted = {t: tuple((max(s - lo, 0), min(e - lo, hi - lo)) for s, e in events.of(t) if e > lo and s < hi)
               for t in FAILURE_TYPES}
    return FluctuationSeries(trace_id=trace_id, kind=kind, neurons=tuple(labels), acts=inside.astype(np.float32),
                             planted=planted, detected=detected, window=cfg.window, stride=cfg.stride,
                             window_starts=np.asarray(starts, np.int64), features=window_features(inside, cfg),
                             scores=scores, threshold=threshold, feature_names=tuple(FEATURES))
