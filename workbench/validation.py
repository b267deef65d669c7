"""``workbench validate``: every analysis of an organism run, checked against the planted truth and its controls.

The organism's traces carry ground-truth labels (regime, slips, repeats, overthinking, the answer
point), so each paper's method can be scored where on a real model it could only be trusted. One
call caches the run if needed, then runs AdaRAS (ranking, probes, gate, regime check), NEAT (exit
neurons beside random, top-activated and all neurons and the model's own p(end); ``exit_report`` reads
the run's exit fit, or fits it first when the run has none) and NeuReasoner
(key neurons and detectors beside a token-only detector), all through the run directory, and checks
the figures against ``TARGETS``. The report lands in ``RUN/validate.json``.

Example:
    >>> sorted(TARGETS)[:2]
    ['exit_within3', 'mon_event_recall_oscillation']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.adaras.results import ProbeReport
from workbench.neat.results import ExitReport
from workbench.neureasoner.results import MonReport
from workbench.report import Report
from workbench.store import load_traces
from workbench.store.paths import RunPaths

FAILURE_TYPES = ("slip", "oscillation", "overthinking")
# Targets on the shipped organism (issue 8); a figure that misses stays in the report, marked as missed.
TARGETS: dict[str, float] = {
    "probe_auroc_early": 0.80,
    "rcn_regime_auroc": 0.80,
    "exit_within3": 0.80,
    **{f"mon_event_recall_{t}": 0.90 for t in FAILURE_TYPES},
}
# exit_within3 must also beat these controls (the model's own p(end) is reported, not required to lose).
EXIT_CONTROLS = ("exit_within3_random", "exit_within3_top_activated", "exit_within3_all")
FULL_TOKEN_CACHE = 4096  # models with at most this many MLP neurons are cached whole per token


def _check_organism(run_dir: Path) -> None:
    table = load_traces(run_dir)
    if table.num_rows == 0:
        raise ValueError(f"{run_dir} holds no traces; generate some with `workbench traces --out {run_dir}`")
    if table["labels"][0].as_py() is None:
        raise ValueError(f"{run_dir} has no ground-truth labels: `workbench validate` checks analyses against "
                         "the organism's planted truth; run the analyses on it with `workbench rank` and "
                         "`workbench probe` instead")


def target_table(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target's measured value, threshold and whether it is met (NaN counts as missed)."""
    out = {}
    for key, threshold in TARGETS.items():
        value = report.get(key, float("nan"))
        met = isinstance(value, int | float) and not math.isnan(value) and value >= threshold
        out[key] = {"value": value, "target": f">= {threshold}", "met": bool(met)}
    value = report.get("exit_within3", float("nan"))
    beaten = [report.get(c, float("nan")) for c in EXIT_CONTROLS]
    out["exit_within3_beats_controls"] = {
        "value": value, "target": "> " + ", ".join(EXIT_CONTROLS),
        "met": bool(all(isinstance(b, int | float) and value > b for b in beaten)),
    }
    return out


@dataclass(frozen=True)
class ValidationReport(Report):
    """``validate``'s result: each analysis's typed report, and the targets. ``to_json()`` is ``validate.json``:
    the analyses' flat keys side by side (``probe_auroc_early``, ``exit_within3``, ``mon_event_recall_slip``, ...)."""

    run_dir: str
    rcn_layers: list[list[int]]  # (layer, count) of the RCNs
    probe: ProbeReport = field(metadata={"report": ProbeReport})
    exit: ExitReport = field(metadata={"report": ExitReport})
    mon: MonReport = field(metadata={"report": MonReport})
    targets: dict[str, dict[str, Any]]


def validate(run: str | Path, *, model=None, progress: bool = False) -> ValidationReport:
    """Runs every analysis on an organism trace run and checks it against the planted truth.

    Caches the activations first when ``RUN/activations`` is missing; loads the run's model when
    ``model`` is None. Returns the report written to ``RUN/validate.json``.
    """
    from workbench.adaras import probe_report, rank_rcn
    from workbench.model import load_model, resolve
    from workbench.neat import exit_report
    from workbench.neureasoner import mon_report
    from workbench.store import CacheConfig, cache_activations
    from workbench.store.rundir import run_model_spec

    run_dir = Path(run)
    _check_organism(run_dir)
    if model is None:
        model = load_model(resolve(run_model_spec(run_dir)))
    if not RunPaths(run_dir).activations.index.exists():
        # NeuReasoner ranks the neurons kept per token: keep all of a model as small as the organism.
        n_neurons = model.cfg.n_layers * model.cfg.d_mlp
        cfg = CacheConfig(top_variance=n_neurons) if n_neurons <= FULL_TOKEN_CACHE else CacheConfig()
        cache_activations(run_dir, config=cfg, model=model, progress=progress)
    rcn = rank_rcn(run_dir, progress=progress)
    probe = probe_report(run_dir, model=model, progress=progress)
    neat = exit_report(run_dir, model=model, progress=progress)  # the exit stage's fit, or fitted here
    mon = mon_report(run_dir, progress=progress)
    flat = {**probe.to_json(), **neat.to_json(), **mon.to_json()}
    report = ValidationReport(str(run_dir), [list(lc) for lc in rcn.layer_counts().items()], probe, neat, mon,
                              target_table(flat))
    report.save(RunPaths(run_dir).validate)
    return report
