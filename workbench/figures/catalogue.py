"""Every figure a run directory can give, and the batch that writes them (``workbench figures``, the pipeline).

``collect_figures(RUN)`` takes a study folder (``workbench eval`` / ``workbench run``: ``results.json`` and
``<task>/analysis``, ``<task>/<method>``) or a single run directory and draws each figure whose inputs
exist; for each other one it records what is missing and the command that makes it.
``write_figures`` exports them in one kaleido session; ``write_study_figures`` is the pipeline's last
step: it never fails the pipeline, and falls back to HTML when no browser is installed.

Example:
    >>> import tempfile
    >>> cat = collect_figures(tempfile.mkdtemp())
    >>> cat.figures, cat.missing[0].command
    ({}, 'workbench traces --out ... (or a study: workbench eval --config STUDY.toml --out ...)')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench.figures.export import BrowserMissing, ExportError, ExportResult, export_figures
from workbench.figures.inputs import MissingInput, open_store
from workbench.figures.style import PAPER, SCREEN, FigureStyle
from workbench.store.paths import RunPaths, StudyPaths

log = logging.getLogger(__name__)
FAILURE_KINDS = ("slip", "oscillation", "overthinking")


@dataclass(frozen=True)
class Missing:
    """A figure not drawn: what it lacks, and the command that makes it (None when no command would)."""

    figure: str
    what: str
    command: str | None = None

    def line(self) -> str:
        fix = f"  ->  {self.command}" if self.command else ""
        return f"{self.figure}: {self.what}{fix}"


@dataclass
class Catalogue:
    """Figures by file name (without extension), and those that could not be drawn."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    missing: list[Missing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, build: Callable[[], go.Figure]) -> None:
        """Draws figure ``name``, or records why not: a missing input with its command, or a documented refusal.

        Documented refusals are ``ValueError``s (every workbench error is one: ``RunDirError``, ``ModelLoadError``,
        a method's "no trace has a slip episode"; so is pyarrow's ``ArrowInvalid`` on a garbled file) and
        ``OSError``s (an input that cannot be read); they are reported and the batch goes on. Anything else
        (a ``TypeError``, ``KeyError``, ``AttributeError``...) is a bug in the figure and propagates.
        """
        try:
            self.figures[name] = build()
        except MissingInput as exc:
            self.missing.append(Missing(name, exc.what + (f" ({exc.path})" if exc.path else ""), exc.command))
        except (ValueError, OSError) as exc:
            log.debug("figure %s failed", name, exc_info=True)
            self.missing.append(Missing(name, f"could not be drawn: {type(exc).__name__}: {exc}"))


class _Model:
    """The run's model, loaded once and only if a figure needs it (NEAT's timeline replays a trace)."""

    def __init__(self, model=None) -> None:
        self.model = model

    def get(self, run: Path):
        if self.model is None:
            from workbench.errors import ModelLoadError
            from workbench.model import load_model, resolve
            from workbench.store.rundir import run_model_spec

            try:
                self.model = load_model(resolve(run_model_spec(run)))
            except ModelLoadError as exc:
                raise MissingInput(f"the run's model ({exc})", "pass a model folder that exists") from exc
        return self.model


def _analysis(cat: Catalogue, run: Path, style: FigureStyle, prefix: str, model: _Model, exit_from: list[Path],
              ) -> None:
    """The figures of an analysis run; NEAT's timeline is drawn on each run of ``exit_from`` (on ``run`` itself,
    with NEAT's default thresholds, when it is empty)."""
    from workbench.figures import exit as exit_figs
    from workbench.figures import fluctuation, neurons, probes

    def name(x: str) -> str:
        return f"{prefix}{x}"

    cat.add(name("probe-roc"), lambda: probes.roc_figure(probes.load_probe_report(run), style))
    cat.add(name("probe-aurocs"), lambda: probes.auroc_figure(probes.load_probe_report(run), style))
    cat.add(name("probe-early-curve"), lambda: probes.early_curve_figure(probes.load_probe_report(run), style))

    def rcn_family() -> dict[str, Any]:
        names = [n for n in neurons.FAMILIES["rcn"] if n == "rcn" or RunPaths(run).neuron_set(n).exists()]
        return neurons.load_neuron_sets(run, names)

    def store():
        return open_store(run)

    cat.add(name("rcn-ranking"), lambda: neurons.ranking_figure(rcn_family(), style=style))

    def layers() -> go.Figure:
        sets = rcn_family()
        n_layers = next(s.model_shape for s in sets.values() if s.model_shape)[0]
        return neurons.layer_distribution_figure(sets, n_layers, style)

    cat.add(name("rcn-layers"), layers)

    def all_layers() -> go.Figure:
        names = [n for n in ("rcn", "exit", *(f"mon-{k}" for k in FAILURE_KINDS))
                 if RunPaths(run).neuron_set(n).exists()]
        if not names:
            raise MissingInput("every neuron set", f"workbench rank --method rcn {run}", RunPaths(run).neurons)
        sets = neurons.load_neuron_sets(run, names)
        n_layers = next(s.model_shape for s in sets.values() if s.model_shape)[0]
        return neurons.layer_distribution_figure(sets, n_layers, style)

    cat.add(name("neuron-layers"), all_layers)

    def histogram() -> go.Figure:
        rcn = rcn_family()["rcn"]
        s = store()
        label = neurons.neuron_label(rcn.layers[0], rcn.indices[0])
        return neurons.activation_histogram_figure(neurons.neuron_activations(s, rcn.layers[0], rcn.indices[0]),
                                                   f"top RCN {label}", style=style)

    cat.add(name("rcn-histogram"), histogram)

    def trajectory() -> go.Figure:
        rcn = rcn_family()["rcn"]
        s = store()
        kept = neurons.with_token_acts(s, rcn)
        if not len(kept):
            return neurons.neuron_trajectory(s, rcn.layers[0], rcn.indices[0])  # raises MissingInput, with the fix
        return neurons.trajectory_figure(neurons.neuron_trajectory(s, kept.layers[0], kept.indices[0]), style)

    cat.add(name("rcn-trajectory"), trajectory)
    def timeline(source: Path) -> go.Figure:
        exit_figs.exit_settings(source, reference_run=run)  # what it needs, checked before loading a model
        return exit_figs.exit_timeline_figure(
            exit_figs.exit_timeline(source, model=model.get(source), reference_run=run), style)

    for source in exit_from or [run]:
        cat.add(name("exit-timeline") if source == run else name(f"exit-timeline-{source.name}"),
                lambda source=source: timeline(source))
    for kind in FAILURE_KINDS:
        if not RunPaths(run).detector(kind).exists() and RunPaths(run).mon_set(kind).exists():
            cat.notes.append(f"{name(f'fluctuation-{kind}')}: no {kind} detector, drawn without detected spans  ->  "
                             f"workbench validate {run}")
        series: dict[str, Any] = {}

        def get(kind: str = kind, series: dict[str, Any] = series):
            if "s" not in series:
                series["s"] = fluctuation.fluctuation_series(run, kind)
            return series["s"]

        cat.add(name(f"fluctuation-{kind}"), lambda get=get: fluctuation.fluctuation_figure(get(), style))
        cat.add(name(f"spectral-{kind}"), lambda get=get: fluctuation.spectral_features_figure(get(), style))


def is_study(run: Path) -> bool:
    return StudyPaths(run).results_json.exists() or bool(StudyPaths(run).analyses())


def collect_figures(run: str | Path, style: FigureStyle = SCREEN, model=None) -> Catalogue:
    """Every figure ``run`` (a study folder or one run directory) can give; see the module docstring."""
    from workbench.figures import study

    run = Path(run)
    cat = Catalogue()
    holder = _Model(model)
    if is_study(run):
        rows: list[dict[str, Any]] = []
        try:
            rows = study.load_results(run)
        except MissingInput as exc:
            for fig in ("forest", "cost"):
                cat.missing.append(Missing(f"<task>-{fig}", exc.what, exc.command))
        names = study.tasks(rows) or [p.parent.name for p in StudyPaths(run).analyses()]
        for task in names:
            cat.add(f"{task}-forest", lambda task=task: study.forest_figure(rows, task, style))
            cat.add(f"{task}-cost", lambda task=task: study.cost_figure(rows, task, style))
            neat = [StudyPaths(run).method(task, r["method"]) for r in rows if r["task"] == task
                    and r.get("type") == "neat" and not r.get("control_for")
                    and StudyPaths(run).method(task, r["method"]).is_dir()]
            analysis = StudyPaths(run).analysis(task)
            if not analysis.is_dir():
                cat.missing.append(Missing(f"{task}-<analysis figures>", f"the analysis run ({analysis})",
                                           f"workbench eval --config STUDY.toml --out {run}  (with [analysis] stages)"))
                continue
            _analysis(cat, analysis, style, f"{task}-", holder, neat)
    elif RunPaths(run).traces.exists():
        _analysis(cat, run, style, "", holder, [])
    else:
        cat.missing.append(Missing("<all>", f"{run} is neither a study folder nor a run directory",
                                   f"workbench traces --out {run} (or a study: workbench eval --config STUDY.toml "
                                   f"--out {run})"))
    return cat


@dataclass
class FigureReport:
    """What a batch drew and wrote, what it could not draw, and how long it took."""

    out: Path
    fmt: str
    catalogue: Catalogue
    export: ExportResult | None = None
    build_s: float = 0.0
    problem: str | None = None  # why nothing (or HTML instead) was written

    @property
    def none_written(self) -> bool:
        """Figures were drawn and a browser ran, yet not one file came out: a failure, not a missing input."""
        e = self.export
        return bool(self.catalogue.figures) and e is not None and e.browser is not None and not e.files

    def lines(self) -> list[str]:
        out = []
        e = self.export
        if not self.catalogue.figures:
            out.append(f"wrote no figures to {self.out}: each one lacks an input (below)")
        elif e is not None and e.files:
            timing = (f"browser start {e.startup_s:.1f} s, then {sum(e.seconds.values()) / len(e.seconds):.2f} s a "
                      f"figure; {e.per_figure_s:.2f} s a figure overall" if e.browser else "no browser needed")
            out.append(f"wrote {len(e.files)} figures ({e.fmt}) to {self.out} in {e.total_s:.1f} s ({timing}); "
                       f"drawing them took {self.build_s:.1f} s")
        elif e is not None:
            out.append(f"wrote none of the {len(self.catalogue.figures)} figures ({e.fmt}) to {self.out}")
        if e is not None:  # always, written or not: a figure that failed says why
            out += [f"not written: {name}: {why}" for name, why in e.errors.items()]
        if self.problem:
            out.append(self.problem)
        out += [f"missing: {m.line()}" for m in self.catalogue.missing]
        out += [f"note: {n}" for n in self.catalogue.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        e = self.export
        return {"out": str(self.out), "format": e.fmt if e else self.fmt,
                "files": [str(p) for p in e.files] if e else [], "browser": e.browser if e else None,
                "startup_s": e.startup_s if e else None, "seconds": e.seconds if e else {},
                "total_s": e.total_s if e else None, "build_s": self.build_s, "problem": self.problem,
                "errors": e.errors if e else {},
                "missing": [{"figure": m.figure, "what": m.what, "command": m.command} for m in self.catalogue.missing],
                "notes": self.catalogue.notes}


def write_figures(run: str | Path, out: str | Path, fmt: str = "svg", paper: bool = False, model=None,
                  startup_timeout_s: float = 60.0, figure_timeout_s: float = 60.0) -> FigureReport:
    """Draws every figure of ``run`` and writes them to ``out`` as ``fmt`` in one export session.

    Raises ``BrowserMissing`` / ``ExportError`` for static formats without a working browser.
    """
    style = PAPER if paper else SCREEN
    t0 = time.perf_counter()
    cat = collect_figures(run, style, model)
    report = FigureReport(Path(out), fmt, cat, build_s=time.perf_counter() - t0)
    report.export = export_figures(cat.figures, out, fmt, style, startup_timeout_s=startup_timeout_s,
                                   figure_timeout_s=figure_timeout_s)
    return report


def write_study_figures(out: str | Path, fmt: str = "svg", model=None) -> FigureReport:
    """The pipeline's last step: the study's figures into ``OUT/figures``.

    It never fails the study for a figure it cannot draw or write: a missing input, a documented refusal
    (``Catalogue.add``), an unreadable folder or a full disk is put in ``problem`` and the report; without a
    working browser the figures are written as HTML instead, and ``problem`` says why. A bug propagates.
    """
    out = Path(out)
    target = StudyPaths(out).figures
    try:
        t0 = time.perf_counter()
        cat = collect_figures(out, SCREEN, model)
        report = FigureReport(target, fmt, cat, build_s=time.perf_counter() - t0)
    except (ValueError, OSError) as exc:  # the figures are a by-product: the study's results stand without them
        return FigureReport(target, fmt, Catalogue(), problem=f"figures not drawn: {type(exc).__name__}: {exc}")
    try:
        report.export = export_figures(cat.figures, target, fmt, SCREEN)
    except (BrowserMissing, ExportError) as exc:
        report.problem = f"{fmt.upper()} figures not written ({exc}); wrote HTML instead"
        try:
            report.export = export_figures(cat.figures, target, "html", SCREEN)
        except OSError as html_exc:  # HTML needs no browser: only the disk can refuse it
            report.problem += f", which also failed: {html_exc}"
    except OSError as exc:  # the folder cannot be made or written
        report.problem = f"figures not written: {type(exc).__name__}: {exc}"
    return report
