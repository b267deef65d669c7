"""NEAT's calibration: attribute, filter and vote on traces, then write the exit neurons into the run.

``fit_exit`` runs the whole identification on a list of traces: Imp at the exit positions of the
calibration traces (``attribution``), each trace's candidates ordered by their temporal profile over
the thinking span (``selection``), the vote across traces, and the reference pattern ``mu_ref`` at
exit points (``reference``). ``rank_exit`` does it on the fitting half of a run directory's problems
and writes ``RUN/neurons/exit.json``, ``RUN/neat/fit.safetensors`` and ``RUN/neat/reference.json``:
everything ``exit_report`` measures with on the other half, so the report never refits.

Example (``tests/test_neat.py`` runs it end to end on a generated run)::

    neurons = rank_exit("runs/my-run", config=NeatConfig(calibration_traces=64))
    neurons.layer_counts()        # where NEAT's exit neurons sit
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from workbench.atomic import atomic_write
from workbench.neat.attribution import agreement, importance
from workbench.neat.config import DEFAULT_CONFIG, NeatConfig
from workbench.neat.exit_traces import ExitTrace, calibration_set, forced_pass, load_exit_traces, run_model
from workbench.neat.reference import ExitReference
from workbench.neat.selection import Selection, TraceVote, candidates, trace_vote, vote
from workbench.neurons import NeuronSet
from workbench.splits import fit_half
from workbench.store.paths import RunPaths


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


def split_traces(
    run_dir: Path, traces: Sequence[ExitTrace], seed: int, fit_ids: set[str] | None = None,
) -> tuple[list[ExitTrace], list[ExitTrace], set[str]]:
    """(fitting traces, held-out traces, fitting problem ids): ``fit_half`` of the problems (seeded), or
    ``fit_ids`` as a fit recorded them. A clear error when either side is empty."""
    fit_ids = fit_half([t.problem_id for t in traces], seed) if fit_ids is None else fit_ids
    fit = [t for t in traces if t.problem_id in fit_ids]
    held_out = [t for t in traces if t.problem_id not in fit_ids]
    if not fit or not held_out:
        raise ValueError(f"{run_dir}: its closed traces come from {len({t.problem_id for t in traces})} problem(s); "
                         "fitting on half the problems and measuring on the other needs at least 2")
    return fit, held_out, fit_ids


def save_fit(run_dir: Path, fit: NeatFit, cfg: NeatConfig, model_shape: tuple[int, int], fit_ids: set[str],
             n_fit_traces: int) -> None:
    """Writes what ``exit_report`` measures with: the per-neuron means and the selection
    (``RunPaths.exit_fit``), then ``mu_ref`` with the config, the fitting problems and the fit's
    summary (``RunPaths.exit_reference``), written last."""
    from safetensors.numpy import save_file

    paths = RunPaths(run_dir)
    sel = fit.selection
    arrays = {"exit_mean": fit.exit_mean, "exit_abs_mean": fit.exit_abs_mean, "thinking_mean": fit.thinking_mean,
              "selection_flat": sel.flat, "selection_signs": sel.signs, "selection_consistency": sel.consistency,
              "selection_com": sel.com, "selection_importance": sel.importance}
    paths.neat.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.exit_fit, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                                       str(tmp)))
    fit.reference.save(paths.exit_reference, provenance=str(run_dir), model_shape=list(model_shape),
                       estimator=fit.estimator, calibration_traces=fit.n_calibration,
                       consistency=sel.consistency.tolist(), com=sel.com.tolist(), agreement=fit.agreement,
                       config=cfg.to_dict(), layers_attributed=list(fit.layers), selection_traces=sel.n_traces,
                       fit_traces=n_fit_traces, fit_problems=sorted(fit_ids))


@dataclass(frozen=True)
class SavedFit:
    """A fit as ``rank_exit`` wrote it: the fit, its config, the fitting problems and the model's shape."""

    fit: NeatFit
    cfg: NeatConfig
    fit_ids: set[str]
    n_fit_traces: int
    model_shape: tuple[int, int]


def load_fit(run_dir: str | Path) -> SavedFit | None:
    """The fit ``rank_exit`` wrote into the run, or None when it wrote none. A clear error when the
    run holds exit neurons ranked before fits were recorded, or files that do not belong together."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    paths = RunPaths(run_dir)
    again = f"rank it again with `workbench rank --method exit {run_dir}` (or `rank_exit`)"
    if not paths.exit_fit.exists() or not paths.exit_reference.exists():
        if paths.exit_set.exists() or paths.exit_reference.exists():
            raise ValueError(f"{run_dir}: its exit neurons were ranked before NEAT recorded its fit "
                             f"({paths.exit_fit.name} is missing); {again}")
        return None
    try:
        meta = json.loads(paths.exit_reference.read_text())
        arrays = load_file(str(paths.exit_fit))
        reference = ExitReference.load(paths.exit_reference)
        cfg = NeatConfig.from_dict(meta["config"])
        selection = Selection(arrays["selection_flat"], arrays["selection_signs"], arrays["selection_consistency"],
                              arrays["selection_com"], arrays["selection_importance"], int(meta["selection_traces"]))
        fit = NeatFit(selection, reference, arrays["exit_mean"], arrays["exit_abs_mean"], arrays["thinking_mean"],
                      tuple(meta["layers_attributed"]), meta["estimator"], int(meta["calibration_traces"]),
                      meta["agreement"])
        saved = SavedFit(fit, cfg, set(meta["fit_problems"]), int(meta["fit_traces"]), tuple(meta["model_shape"]))
    except (OSError, SafetensorError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir}: NEAT's recorded fit is unreadable ({exc}); {again}") from exc
    if tuple(selection.flat.tolist()) != reference.flat:
        raise ValueError(f"{run_dir}: {paths.exit_fit.name} and {paths.exit_reference.name} name different "
                         f"neurons (an interrupted rank?); {again}")
    return saved


def fit_run(
    run_dir: str | Path, model: TransformerBridge | None = None, cfg: NeatConfig = DEFAULT_CONFIG,
    progress: bool = False,
) -> tuple[NeatFit, NeuronSet | None]:
    """``rank_exit``'s work: fits on the fitting half and writes it; an empty selection is written too
    (``exit_report`` then reports NaN) and removes an older run's ``exit.json``."""
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    traces = load_exit_traces(run_dir, cfg.exit_token)
    fit_traces, _, fit_ids = split_traces(run_dir, traces, cfg.seed)
    model = model if model is not None else run_model(run_dir)
    fit = fit_exit(model, fit_traces, cfg, progress)
    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    neurons = fit.neuron_set(shape, cfg, provenance=str(run_dir)) if len(fit.selection.flat) else None
    try:
        if neurons is not None:
            neurons.save(paths.exit_set)
        else:
            paths.exit_set.unlink(missing_ok=True)
        save_fit(run_dir, fit, cfg, shape, fit_ids, len(fit_traces))
    except OSError as exc:
        raise ValueError(f"cannot write NEAT's results into {run_dir} ({exc.strerror or exc}); copy the run "
                         "directory somewhere writable and rank the copy") from exc
    return fit, neurons


def rank_exit(
    run: str | Path, *, config: NeatConfig | None = None, model: TransformerBridge | None = None,
    progress: bool = False,
) -> NeuronSet:
    """NEAT's exit neurons of a run, calibrated on the fitting half of its problems (``splits.fit_half``,
    seeded by ``cfg.seed``; ``exit_report`` measures on the other half). Writes ``RUN/neurons/exit.json``,
    ``RUN/neat/fit.safetensors`` (per-neuron means, the selection) and ``RUN/neat/reference.json``
    (``mu_ref``, the config, the fitting problems). ``model`` defaults to the run manifest's model."""
    run_dir, cfg = run, config if config is not None else DEFAULT_CONFIG
    fit, neurons = fit_run(run_dir, model, cfg, progress)
    if neurons is None:
        raise ValueError(
            f"{run_dir}: no neuron passed NEAT's vote over {fit.n_calibration} calibration traces (consistency >= "
            f"{cfg.tau_cons}, mean centre of mass >= {cfg.tau_com}); lower tau_cons or tau_com, or calibrate on "
            "more traces (calibration_traces)")
    return neurons
