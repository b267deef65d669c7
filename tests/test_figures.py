"""Figures: each carries the numbers of the files it reads; the paper style; the batch export and its errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from workbench.cli import app
from workbench.figures import (
    FAMILIES,
    OKABE_ITO,
    PAPER,
    SCREEN,
    auroc_figure,
    cost_figure,
    early_curve_figure,
    effect,
    exit_timeline,
    exit_timeline_figure,
    fluctuation_figure,
    fluctuation_series,
    forest_figure,
    layer_distribution_figure,
    load_neuron_sets,
    load_probe_report,
    load_store,
    neuron_activations,
    neuron_trajectory,
    ranking_figure,
    roc_figure,
    spectral_features_figure,
    trajectory_figure,
    with_token_acts,
)
from workbench.figures.catalogue import collect_figures, write_study_figures
from workbench.figures.export import BrowserMissing, ExportError, export_figures
from workbench.figures.neurons import bin_means

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: the real SVG/PNG export is not "
                                                             "tested (install it with `apt-get install -y chromium`)")


@pytest.fixture(scope="module")
def analysis(organism_study) -> Path:
    return organism_study / "organism" / "analysis"


@pytest.fixture(scope="module")
def rows(organism_study) -> list[dict]:
    return json.loads((organism_study / "results.json").read_text())


def by_name(fig, name: str):
    return next(d for d in fig.data if d.name == name)


class TestStyle:
    """The paper style: larger fonts, the Okabe-Ito palette, no titles; the screen style keeps titles."""

    def test_paper_changes_fonts_palette_and_drops_titles(self, rows):
        screen, paper = forest_figure(rows, style=SCREEN), forest_figure(rows, style=PAPER)
        assert paper.layout.font.size > screen.layout.font.size
        assert tuple(paper.layout.colorway) == OKABE_ITO != tuple(screen.layout.colorway)
        assert screen.layout.title.text and paper.layout.title.text is None
        assert {d.marker.color for d in paper.data} <= set(OKABE_ITO)  # markers drawn from the palette too

    def test_unknown_colour_role_is_a_clear_error(self):
        with pytest.raises(ValueError, match="unknown colour role 'corect'"):
            SCREEN.colour("corect")


class TestProbes:
    """Probe figures carry the report's curves and intervals."""

    def test_roc_is_the_reports_curve_with_its_auroc_ci(self, analysis):
        report = load_probe_report(analysis)
        fig = roc_figure(report)
        curve = fig.data[-1]
        assert list(curve.x) == report["probe_roc_early"]["fpr"] and list(curve.y) == report["probe_roc_early"]["tpr"]
        lo, hi = report["probe_auroc_early_ci"]
        assert f"AUROC {report['probe_auroc_early']:.2f} [{lo:.2f}, {hi:.2f}]" in curve.name

    def test_roc_band_is_drawn_when_the_report_has_one(self, analysis):
        report = dict(load_probe_report(analysis))
        report["probe_roc_early_band"] = {"fpr": [0.0, 0.5, 1.0], "tpr_lo": [0.0, 0.4, 1.0], "tpr_hi": [0.1, 0.8, 1.0]}
        fig = roc_figure(report)
        assert list(by_name(fig, "CI upper").y) == [0.1, 0.8, 1.0]
        assert list(by_name(fig, "95% CI (bootstrap)").y) == [0.0, 0.4, 1.0]

    def test_early_curve_band_equals_the_reports_intervals(self, analysis):
        report = load_probe_report(analysis)
        curve = [p for p in report["probe_curve"] if not math.isnan(p["auroc"])]
        fig = early_curve_figure(report)
        assert list(by_name(fig, "probe on neurons").x) == [p["k"] for p in curve]
        assert list(by_name(fig, "probe on neurons").y) == [p["auroc"] for p in curve]
        assert list(by_name(fig, "95% CI").y) == [p["ci"][0] for p in curve]
        assert list(by_name(fig, "CI upper").y) == [p["ci"][1] for p in curve]
        assert list(by_name(fig, "token ids (baseline)").y) == [p["auroc_tokens"] for p in curve]
        assert set(by_name(fig, "hand features (baseline)").y) == {report["probe_auroc_baseline"]}

    def test_auroc_bars_span_the_reports_intervals(self, analysis):
        report = load_probe_report(analysis)
        dots = auroc_figure(report).data[0]
        row = list(dots.y).index("token ids (baseline)")
        lo, hi = report["probe_auroc_tokens_ci"]
        assert dots.x[row] == report["probe_auroc_tokens"]
        assert dots.x[row] - dots.error_x.arrayminus[row] == pytest.approx(lo)
        assert dots.x[row] + dots.error_x.array[row] == pytest.approx(hi)


class TestNeurons:
    """Rankings and layer counts from the neuron files; one neuron's activations from the store."""

    def test_ranking_bars_are_the_files_group_mean_differences_beside_controls(self, analysis):
        sets = load_neuron_sets(analysis, FAMILIES["rcn"])
        fig = ranking_figure(sets, k=10)
        assert [d.name for d in fig.data] == list(FAMILIES["rcn"])
        raw = json.loads((analysis / "neurons" / "rcn-random.json").read_text())["neurons"][:10]
        assert list(fig.data[3].y) == pytest.approx([n["mean_correct"] - n["mean_incorrect"] for n in raw])
        assert list(fig.data[0].y) == pytest.approx(effect(sets["rcn"].top(10)))

    def test_layer_distribution_counts_each_sets_neurons(self, analysis):
        sets = load_neuron_sets(analysis, ["rcn", "exit"])
        fig = layer_distribution_figure(sets, 4)
        for trace, name in zip(fig.data, sets, strict=True):
            layers = [n["layer"] for n in json.loads((analysis / "neurons" / f"{name}.json").read_text())["neurons"]]
            assert list(trace.y) == [layers.count(layer) for layer in range(4)]

    def test_histogram_splits_span_means_by_correctness(self, analysis):
        store = load_store(analysis)
        values = neuron_activations(store, 3, 7)
        correct = np.array(store.index["correct"].to_pylist())
        think = store.summary("think")[:, 3, 7]
        assert sorted(values["correct"]) == pytest.approx(sorted(think[correct & ~np.isnan(think)]))
        assert len(values["incorrect"]) == int((~correct & ~np.isnan(think)).sum())

    def test_trajectory_bins_are_means_over_traces_of_per_token_activations(self, analysis):
        store = load_store(analysis)
        rcn = with_token_acts(store, load_neuron_sets(analysis, ["rcn"])["rcn"])
        layer, index = rcn.layers[0], rcn.indices[0]
        traj = neuron_trajectory(store, layer, index, bins=5)
        col = store.token_neurons.flat(store.d_mlp).index(layer * store.d_mlp + index)
        last = {True: [], False: []}  # by hand: each trace's last fifth of thinking, averaged over traces
        for row, r in enumerate(store.index.to_pylist()):
            lo, hi = r["think_start"] + 1, r["think_end"] if r["think_end"] is not None else r["n_tokens"]
            if hi - lo >= 5:
                acts = store.token_acts(row)[lo:hi, col]
                last[r["correct"]].append(bin_means(acts, 5)[-1])
        assert traj.mean["correct"][-1] == pytest.approx(np.mean(last[True]), rel=1e-5)
        assert traj.mean["incorrect"][-1] == pytest.approx(np.mean(last[False]), rel=1e-5)
        assert traj.n["correct"][-1] == len(last[True]) and traj.n["incorrect"][-1] == len(last[False])
        assert traj.lo["correct"][-1] < traj.mean["correct"][-1] < traj.hi["correct"][-1]
        fig = trajectory_figure(traj)
        assert list(by_name(fig, "correct").y) == list(traj.mean["correct"])
        assert bin_means(np.array([2.0, 4.0, 6.0, 8.0, 10.0]), 5).tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]


class TestExit:
    """NEAT's timeline replays a trace: its reading where the controller exited is the one the controller saw."""

    def test_replayed_signal_matches_the_controllers_recorded_reading(self, organism_study, organism):
        run = organism_study / "organism" / "neat-tau0.9"
        t = exit_timeline(run, model=organism)
        assert t.exited_at is not None and t.recorded, "the chosen trace should be one where NEAT exited"
        assert t.rho[t.exited_at] == pytest.approx(t.recorded["rho"], abs=1e-4)
        assert t.phi[t.exited_at] == pytest.approx(t.recorded["phi"], abs=1e-4)
        assert t.rho[t.exited_at] > t.tau_sim == 0.9  # the study's setting, read from the run's manifest
        assert t.think_end == t.exited_at + 1  # the forced end-of-thinking marker follows the reading
        assert all(0.0 <= p <= 1.0 for p in t.p_end)
        fig = exit_timeline_figure(t)
        assert list(by_name(fig, "rho").y) == list(t.rho)
        assert set(by_name(fig, "tau_sim = 0.9").y) == {0.9}


@pytest.fixture(scope="module")
def series(analysis):
    return fluctuation_series(analysis, "slip")


class TestFluctuation:
    """A held-out trace's planted episodes and the detector's fired spans, and the window features."""

    def test_planted_spans_are_the_traces_labels(self, series, analysis):
        from workbench.organism.task import TraceLabels
        from workbench.store import load_traces

        row = next(r for r in load_traces(analysis).to_pylist() if r["trace_id"] == series.trace_id)
        labels = TraceLabels.from_dict(json.loads(row["labels"]))
        lo = row["think_start"] + 1
        assert series.planted["slip"] == tuple((s.token - lo, s.token + 1 - lo) for s in labels.slips)
        assert series.held_out
        shapes = [(s.x0, s.x1) for s in fluctuation_figure(series).layout.shapes if s.y0 == 0]  # full height
        assert shapes == [(a - 0.5, b - 0.5) for a, b in series.planted["slip"]]

    def test_detected_spans_cover_exactly_the_fired_windows(self, series):
        fired = series.window_starts[series.scores >= series.threshold]
        covered = set()
        for a, b in series.detected:
            covered |= set(range(a, b))
        assert all(set(range(s, s + series.window)) <= covered for s in fired)
        assert {a for a, _ in series.detected} <= set(fired.tolist())

    def test_spectral_panels_plot_the_window_features(self, series):
        from workbench.neureasoner import FEATURES, NeuReasonerConfig, window_features

        fig = spectral_features_figure(series)
        expected = window_features(series.acts, NeuReasonerConfig(window=series.window, stride=series.stride))
        entropy = [d for d in fig.data if d.yaxis == f"y{FEATURES.index('spectral_entropy') + 1}"]
        assert list(entropy[0].y) == pytest.approx(expected[:, 0, FEATURES.index("spectral_entropy")].tolist())
        assert list(entropy[0].x) == series.window_starts.tolist()


class TestStudy:
    """The forest plot and the cost plot carry results.json's numbers, controls under their method."""

    def test_forest_points_are_the_results_deltas_and_cis(self, rows):
        fig = forest_figure(rows)
        shown = {d.name: d for d in fig.data}
        for r in rows:
            if r["method"] == r["reference"]:
                assert r["method"] not in shown
                continue
            d = shown[r["method"]]
            assert d.x[0] == r["delta_vs_vanilla"]
            assert d.x[0] - d.error_x.arrayminus[0] == pytest.approx(r["delta_ci"][0])
            assert d.x[0] + d.error_x.array[0] == pytest.approx(r["delta_ci"][1])
        order = [d.name for d in fig.data]
        for r in rows:
            if r["control_for"]:
                assert order.index(r["method"]) > order.index(r["control_for"])
                assert "↳" in shown[r["method"]].y[0] and shown[r["method"]].marker.symbol == "circle-open"

    def test_cost_points_are_accuracy_against_thinking_tokens(self, rows):
        fig = cost_figure(rows)
        points = {d.name.strip(" ↳"): d for d in fig.data if d.mode == "markers"}
        for r in rows:
            d = points[r["method"]]
            assert (d.x[0], d.y[0]) == (r["thinking_tokens"], r["accuracy"])
            assert d.y[0] + d.error_y.array[0] == pytest.approx(r["accuracy_ci"][1])
        assert points["vanilla"].marker.symbol == "star"


class TestCatalogue:
    """A figure not drawn for a documented reason is reported; a bug in a figure propagates."""

    def test_missing_inputs_and_documented_refusals_are_reported(self, tmp_path):
        from workbench.figures.catalogue import Catalogue
        from workbench.figures.inputs import MissingInput

        def missing():
            raise MissingInput("the probe report", "workbench probe RUN", tmp_path / "report.json")

        def refused():
            raise ValueError("no trace has a slip episode and at least 8 thinking tokens")

        def unreadable():
            raise PermissionError(13, "Permission denied", str(tmp_path / "x.parquet"))

        cat = Catalogue()
        for name, build in (("a", missing), ("b", refused), ("c", unreadable)):
            cat.add(name, build)
        assert cat.figures == {}
        assert [m.line() for m in cat.missing] == [
            f"a: the probe report ({tmp_path / 'report.json'})  ->  workbench probe RUN",
            "b: could not be drawn: ValueError: no trace has a slip episode and at least 8 thinking tokens",
            f"c: could not be drawn: PermissionError: [Errno 13] Permission denied: '{tmp_path / 'x.parquet'}'"]

    @pytest.mark.parametrize("bug", [TypeError, KeyError, AttributeError])
    def test_a_bug_in_a_figure_is_not_swallowed(self, bug):
        from workbench.figures.catalogue import Catalogue

        def broken():
            raise bug("a bug, not a missing input")

        with pytest.raises(bug, match="a bug"):
            Catalogue().add("broken", broken)

    def test_the_pipeline_step_lets_a_bug_through(self, tmp_path, monkeypatch):
        """``write_study_figures`` reports what it cannot draw or write, but never turns a bug into a report."""
        import workbench.figures.catalogue as catalogue

        def buggy(*args, **kwargs):
            raise TypeError("collect_figures() got an unexpected keyword argument")

        monkeypatch.setattr(catalogue, "collect_figures", buggy)
        with pytest.raises(TypeError, match="unexpected keyword"):
            write_study_figures(tmp_path, "html")

        def unreadable(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(tmp_path))

        monkeypatch.setattr(catalogue, "collect_figures", unreadable)
        report = write_study_figures(tmp_path, "html")
        assert report.problem.startswith("figures not drawn: PermissionError")


class TestBatch:
    """`workbench figures`: files of the chosen format, missing inputs with their command, browser errors."""

    def test_help_imports_nothing_heavy(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbench.cli", "figures", "--help"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
                    if line.startswith("import time:") and line.count("|") == 2}
        assert "typer" in imported and not imported & {"torch", "transformers", "transformer_lens", "kaleido"}

    @needs_chromium
    def test_cli_writes_every_figure_as_svg_through_one_browser(self, organism_study, tmp_path):
        expected = set(collect_figures(organism_study).figures)
        assert {"organism-forest", "organism-probe-roc", "organism-exit-timeline-neat-tau0.9",
                "organism-fluctuation-slip"} <= expected
        t0 = time.perf_counter()
        result = runner.invoke(app, ["figures", str(organism_study), "--out", str(tmp_path), "--format", "svg"])
        assert result.exit_code == 0, result.output
        written = sorted(tmp_path.glob("*.svg"))
        assert {p.stem for p in written} == expected
        assert all(p.read_text()[:200].lstrip().startswith("<svg") for p in written)
        assert f"wrote {len(expected)} figures (svg)" in result.output
        summary = re.search(r"wrote \d+ figures.*", result.output).group(0)  # stderr's progress bars share output
        print(f"\n{len(written)} SVG figures, CLI {time.perf_counter() - t0:.1f} s: {summary}")

    @needs_chromium
    def test_png_and_paper_export(self, rows, tmp_path):
        result = export_figures({"forest": forest_figure(rows, style=PAPER)}, tmp_path, "png", PAPER)
        assert (tmp_path / "forest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert result.files == [tmp_path / "forest.png"] and result.startup_s > 0

    @needs_chromium
    def test_relative_out_with_spaces_from_any_working_folder(self, rows, tmp_path, monkeypatch):
        """The browser's worker runs in a scratch folder: a relative OUT must still land where the user meant."""
        monkeypatch.chdir(tmp_path)
        result = export_figures({"forest": forest_figure(rows)}, Path("my figs") / "sub", "svg")
        assert result.errors == {} and (tmp_path / "my figs" / "sub" / "forest.svg").read_text().lstrip()[:4] == "<svg"

    def test_figures_not_written_are_named_and_fail_the_command(self, organism_study, tmp_path, monkeypatch):
        """A browser that runs but writes nothing is a failure with each figure's reason, never a silent report."""
        import workbench.figures.catalogue as catalogue
        from workbench.figures.export import ExportResult

        def nothing_written(figures, out, fmt, *args, **kwargs):
            return ExportResult([], fmt, browser="/usr/bin/chromium",
                                errors={name: "RuntimeError('Cannot reach path')" for name in figures})

        monkeypatch.setattr(catalogue, "export_figures", nothing_written)
        result = runner.invoke(app, ["figures", str(organism_study), "--out", str(tmp_path), "--format", "svg"])
        n = len(collect_figures(organism_study).figures)
        assert result.exit_code == 2
        assert f"wrote none of the {n} figures (svg)" in result.output
        assert result.output.count("not written: ") == n and "Cannot reach path" in result.output
        study = tmp_path / "study"
        study.mkdir()
        for name in ("organism", "results.json"):
            (study / name).symlink_to(organism_study / name)
        report = catalogue.write_study_figures(study, "svg")  # the pipeline's step: never raises
        assert report.none_written and any(line.startswith("not written: organism-forest") for line in report.lines())

    def test_missing_inputs_are_listed_with_the_command_that_makes_them(self, organism_study, tmp_path):
        run = tmp_path / "vanilla"
        shutil.copytree(organism_study / "organism" / "vanilla", run)
        result = runner.invoke(app, ["figures", str(run), "--out", str(tmp_path / "figs"), "--format", "html"])
        assert result.exit_code == 0, result.output
        assert "wrote no figures" in result.output
        assert f"missing: probe-roc: the probe report ({run / 'probes' / 'report.json'})  ->  workbench cache {run} " \
               f"&& workbench probe {run}" in result.output
        assert f"missing: exit-timeline: NEAT's exit reference ({run / 'neat' / 'reference.json'})  ->  workbench " \
               f"rank --method exit {run}" in result.output

    def test_missing_results_table_names_workbench_eval(self, organism_study, tmp_path):
        (tmp_path / "organism").symlink_to(organism_study / "organism")  # read only; no results.json here
        cat = collect_figures(tmp_path)
        missing = {m.figure: m for m in cat.missing}
        assert missing["<task>-forest"].command == f"workbench eval --config STUDY.toml --out {tmp_path}"
        assert "organism-probe-roc" in cat.figures

    def test_no_browser_is_a_clear_error_at_once(self, monkeypatch, tmp_path, rows):
        monkeypatch.delenv("BROWSER_PATH", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))  # no chromium, no chrome
        t0 = time.perf_counter()
        with pytest.raises(BrowserMissing, match="apt-get install -y chromium"):
            export_figures({"forest": forest_figure(rows)}, tmp_path / "out", "svg")
        assert time.perf_counter() - t0 < 2
        monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
        result = runner.invoke(app, ["figures", str(tmp_path), "--out", str(tmp_path / "out"), "--format", "pdf"])
        assert result.exit_code == 2 and "BROWSER_PATH" in result.output and "chromium" in result.output

    def test_a_browser_that_hangs_is_stopped_and_killed(self, tmp_path, rows):
        fake = tmp_path / "chromium"
        fake.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 600\n")
        fake.chmod(0o755)
        t0 = time.perf_counter()
        with pytest.raises(ExportError, match="did not start within 3 s"):
            export_figures({"forest": forest_figure(rows)}, tmp_path / "out", "svg", browser=str(fake),
                           startup_timeout_s=3.0)
        assert time.perf_counter() - t0 < 30
        pid = int((tmp_path / "pid").read_text())

        def gone() -> bool:
            try:
                return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            except FileNotFoundError:
                return True

        # A killed process can stay runnable for a moment on a loaded machine before it dies: wait up to 10 s.
        deadline = time.perf_counter() + 10
        while not gone() and time.perf_counter() < deadline:
            time.sleep(0.1)
        assert gone()

    def test_pipeline_step_falls_back_to_html_without_a_browser(self, organism_study, organism, tmp_path,
                                                               monkeypatch):
        for name in ("organism", "results.json"):
            (tmp_path / name).symlink_to(organism_study / name)
        monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
        report = write_study_figures(tmp_path, "svg", model=organism)
        assert "wrote HTML instead" in report.problem and "BROWSER_PATH" in report.problem
        assert (tmp_path / "figures" / "organism-forest.html").exists()
        assert {p.stem for p in (tmp_path / "figures").glob("*.html")} == set(report.catalogue.figures)
        assert any("wrote HTML instead" in line for line in report.lines())
