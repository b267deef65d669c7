"""NEAT's calibration: attribute, filter and vote on traces, then write the exit neurons into the run.

``fit_exit`` runs the whole identification on a list of traces: Imp at the exit positions of the
calibration traces (``attribution``), each trace's candidates ordered by their temporal profile over
the thinking span (``selection``), the vote across traces, and the reference pattern ``mu_ref`` at
exit points (``reference``). ``rank_exit`` does it on every trace of a run directory and writes
``RUN/neurons/exit.json`` and ``RUN/neat/reference.json``.

Example (``tests/test_neat.py`` runs it end to end on a generated run)::

    neurons = rank_exit("runs/my-run", cfg=NeatConfig(calibration_traces=64))
    neurons.layer_counts()        # where NEAT's exit neurons sit
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.neat.attribution import agreement, importance
from workbench.neat.config import DEFAULT_CONFIG, NeatConfig
from workbench.neat.exit_traces import ExitTrace, calibration_set, forced_pass, load_exit_traces, run_model
from workbench.neat.reference import ExitReference
from workbench.neat.selection import Selection, TraceVote, candidates, trace_vote, vote
from workbench.neurons import NeuronSet

EXIT_SET, REFERENCE = Path("neurons") / "exit.json", Path("neat") / "reference.json"


@dataclass(frozen=True)
class NeatFit:
    """What calibration found: the selection, its reference pattern, and per-neuron means of every
    neuron (flat ``layer * d_mlp + index``) that the controls are built from."""

    selection: Selection
    reference: ExitReference
    exit_mean: Float[np.ndarray, " n_neurons"]  # mean activation at exit positions
    exit_abs_mean: Float[np.ndarray, " n_neurons"]  # mean |activation| there (top-activated control)
    thinking_mean: Float[np.ndarray, " n_neurons"]  # mean activation over the thinking span
    layers: tuple[int, ...]
    estimator: str
    n_calibration: int
    agreement: dict[str, float]

    def neuron_set(self, model_shape: tuple[int, int], cfg: NeatConfig, provenance: str) -> NeuronSet:
        """The selection as a ``NeuronSet`` (scores: mean Imp over its votes; signs kept)."""
        flat = self.selection.flat
        return NeuronSet.from_flat(
            flat.tolist(), model_shape[1], scores=tuple(self.selection.importance.tolist()),
            signs=tuple(int(s) for s in self.selection.signs), method="neat", provenance=provenance,
            parameters={**asdict(cfg), "estimator_used": self.estimator, "layers_attributed": list(self.layers),
                        "calibration_traces_used": self.n_calibration},
            group_means={"exit": self.exit_mean[flat].tolist(), "thinking": self.thinking_mean[flat].tolist()},
            model_shape=model_shape,
        )


def resolve_estimator(cfg: NeatConfig, n_neurons: int) -> str:
    """``cfg.estimator`` with ``"auto"`` made concrete for ``n_neurons`` attributed neurons.

    >>> resolve_estimator(NeatConfig(), 2048), resolve_estimator(NeatConfig(), 10**6)
    ('ablation', 'gradient')
    """
    if cfg.estimator != "auto":
        return cfg.estimator
    return "ablation" if n_neurons <= cfg.ablation_max_neurons else "gradient"


def _importance(model, traces: Sequence[ExitTrace], cfg: NeatConfig, estimator: str, layers, progress: bool):
    """Imp summed over each trace's exit positions (an offset outside a short span is skipped)."""
    n = model.cfg.n_layers * model.cfg.d_mlp
    total = np.zeros((len(traces), n), dtype=np.float32)
    for k in cfg.exit_offsets:
        rows = [i for i, t in enumerate(traces) if t.think_end - k >= t.think_start + 1]
        if rows:
            imp = importance(model, [traces[i].tokens for i in rows], [traces[i].think_end - k for i in rows],
                             [traces[i].end_id for i in rows], estimator, layers, cfg.ablation_batch,
                             cfg.batch_size, progress)
            total[rows] += imp
    return total


def _agreement(model, traces: Sequence[ExitTrace], cfg: NeatConfig, layers: list[int]) -> dict[str, float]:
    """Both estimators on the first ``agreement_traces`` traces at ``think_end - 1``."""
    sub = list(traces[: cfg.agreement_traces])
    if not sub:
        return {}
    if len(layers) * model.cfg.d_mlp > cfg.ablation_max_neurons:  # exact ablation of every neuron is too dear
        layers = layers[-1:]
    args = ([t.tokens for t in sub], [t.think_end - 1 for t in sub], [t.end_id for t in sub])
    exact = importance(model, *args, "ablation", layers, cfg.ablation_batch, cfg.batch_size)
    approx = importance(model, *args, "gradient", layers, cfg.ablation_batch, cfg.batch_size)
    return {**agreement(exact, approx, top=cfg.vote_k), "attribution_agreement_traces": len(sub),
            "attribution_agreement_layers": list(layers)}


def fit_exit(
    model: TransformerBridge, traces: Sequence[ExitTrace], cfg: NeatConfig = DEFAULT_CONFIG, progress: bool = False,
) -> NeatFit:
    """NEAT's identification on ``traces`` (calibration traces are drawn from them by ``cfg``)."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    layers = list(range(n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    if layers[-1] >= n_layers:
        raise ValueError(f"NeatConfig.layers {cfg.layers} asks for layers the model lacks (it has {n_layers})")
    calib = calibration_set(traces, cfg.calibration_traces, cfg.seed)
    if not calib:
        raise ValueError("fit_exit: no traces to calibrate on; give traces whose thinking closes")
    estimator = resolve_estimator(cfg, len(layers) * d_mlp)
    imp = _importance(model, calib, cfg, estimator, layers, progress)
    cands = [candidates(row, cfg) for row in imp]

    n = n_layers * d_mlp
    exit_sum, exit_abs, think_sum, think_count = np.zeros(n), np.zeros(n), np.zeros(n), 0
    votes: list[TraceVote] = []
    budget = cfg.budget()
    for rows in tqdm(list(budget.batches([len(t.tokens) for t in calib])), desc="temporal profiles",
                     disable=not progress, unit="batch"):
        batch, b = [calib[i] for i in rows], rows.start
        spans = [(0 if cfg.com_span == "sequence" else t.span[0], t.think_end) for t in batch]
        exits = [np.asarray(t.exit_positions(cfg.exit_offsets)) for t in batch]
        got_span = [np.zeros((hi - lo, len(cands[b + r])), dtype=np.float32) for r, (lo, hi) in enumerate(spans)]
        # per layer, per row: the neurons at the exit positions, and the thinking sum (a chunk at a time)
        at_exits = {layer: [np.zeros((len(e), d_mlp), dtype=np.float32) for e in exits] for layer in range(n_layers)}
        thinking = {layer: [np.zeros(d_mlp, dtype=np.float32) for _ in batch] for layer in range(n_layers)}

        def on_layer(layer: int, act: torch.Tensor, start: int, batch=batch, spans=spans, exits=exits,
                     got_span=got_span, at_exits=at_exits, thinking=thinking, b=b) -> None:
            a, stop = act.numpy(), start + act.shape[1]
            for r, t in enumerate(batch):
                here = (exits[r] >= start) & (exits[r] < stop)
                at_exits[layer][r][here] = a[r, exits[r][here] - start]
                lo, hi = max(t.span[0], start), min(t.span[1], stop)
                if lo < hi:
                    thinking[layer][r] += a[r, lo - start : hi - start].sum(0)
                c = cands[b + r]
                mine = np.flatnonzero(c // d_mlp == layer)
                lo, hi = max(spans[r][0], start), min(spans[r][1], stop)
                if len(mine) and lo < hi:
                    into = slice(lo - spans[r][0], hi - spans[r][0])
                    got_span[r][into, mine] = a[r, lo - start : hi - start][:, c[mine] % d_mlp]

        forced_pass(model, [t.tokens for t in batch], on_layer, budget=budget)  # every layer: exit_mean
        got_exit = [np.zeros(len(cands[b + r])) for r in range(len(batch))]
        for layer in range(n_layers):
            sl = slice(layer * d_mlp, (layer + 1) * d_mlp)
            for r in range(len(batch)):
                at_exit = at_exits[layer][r].mean(0)
                exit_sum[sl] += at_exit
                exit_abs[sl] += np.abs(at_exit)
                think_sum[sl] += thinking[layer][r]
                c = cands[b + r]
                mine = np.flatnonzero(c // d_mlp == layer)
                got_exit[r][mine] = at_exits[layer][r][:, c[mine] % d_mlp].sum(0)
        think_count += sum(t.span[1] - t.span[0] for t in batch)
        for r in range(len(batch)):
            c = cands[b + r]
            votes.append(trace_vote(c, imp[b + r, c], got_span[r], got_exit[r], cfg))
    selection = vote(votes, cfg)
    exit_mean = exit_sum / len(calib)
    reference = ExitReference(tuple(selection.flat.tolist()), tuple(int(s) for s in selection.signs),
                              tuple(exit_mean[selection.flat].tolist()))
    return NeatFit(selection, reference, exit_mean, exit_abs / len(calib), think_sum / max(think_count, 1),
                   tuple(layers), estimator, len(calib), _agreement(model, calib, cfg, layers))


def rank_exit(
    run_dir: str | Path, model: TransformerBridge | None = None, cfg: NeatConfig = DEFAULT_CONFIG,
    progress: bool = False,
) -> NeuronSet:
    """NEAT's exit neurons of a run, calibrated on its traces; writes ``RUN/neurons/exit.json`` and
    ``RUN/neat/reference.json`` (``mu_ref``). ``model`` defaults to the run manifest's model."""
    run_dir = Path(run_dir)
    traces = load_exit_traces(run_dir, cfg.exit_token)
    model = model if model is not None else run_model(run_dir)
    fit = fit_exit(model, traces, cfg, progress)
    if not len(fit.selection.flat):
        raise ValueError(
            f"{run_dir}: no neuron passed NEAT's vote over {fit.n_calibration} calibration traces (consistency >= "
            f"{cfg.tau_cons}, mean centre of mass >= {cfg.tau_com}); lower tau_cons or tau_com, or calibrate on "
            "more traces (calibration_traces)")
    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    neurons = fit.neuron_set(shape, cfg, provenance=str(run_dir))
    try:
        neurons.save(run_dir / EXIT_SET)
        fit.reference.save(run_dir / REFERENCE, provenance=str(run_dir), model_shape=list(shape),
                           estimator=fit.estimator, calibration_traces=fit.n_calibration,
                           consistency=fit.selection.consistency.tolist(), com=fit.selection.com.tolist(),
                           agreement=fit.agreement)
    except OSError as exc:
        raise ValueError(f"cannot write NEAT's results into {run_dir} ({exc.strerror or exc}); copy the run "
                         "directory somewhere writable and rank the copy") from exc
    return neurons
