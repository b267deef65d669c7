"""The app: an ``AppTest`` per view against a small finished study, runs that lack pieces (the view says what
to run, never a traceback), and the library behind the views (``workbench/app``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from workbench.app.layout import LayoutError, find_layout
from workbench.app.live import run_case
from workbench.app.marks import event_marks, label_marks
from workbench.app.neuron_stats import logit_effects, thinking_span, top_contexts, trajectory
from workbench.app.scores import detector_config, detector_scores
from workbench.app.tokens import MARK_COLOURS, token_html
from workbench.neurons import NeuronSet
from workbench.readout import neuron_activations
from workbench.store import ActivationStore, load_traces
from workbench.traces import run_config, run_task

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PAGES = ("runs", "trace", "neuron", "fluctuation", "probes", "interventions")


def open_view(run_dir: Path, page: str = "runs") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["run_dir"] = str(run_dir)
    at.run()
    if page != "runs":
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def widget(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r} (have {[w.label for w in widgets]})"
    return found[0]


def token_views(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if "font-family: monospace" in m.value]


def rows_of(run: Path) -> dict[str, dict]:
    return {r["trace_id"]: r for r in load_traces(run).to_pylist()}


# -- one AppTest per view ---------------------------------------------------------------------------------------


class TestViews:
    """Every view on the organism study: it renders, shows the study's numbers, and answers one control."""

    def test_runs_lists_every_run_with_its_accuracy_and_compares_two(self, organism_study):
        at = open_view(organism_study)
        task = organism_study / "organism"
        table = at.dataframe[0].value.set_index("name")
        assert set(table.index) == {p.name for p in task.iterdir() if p.is_dir()}
        vanilla, budget = rows_of(task / "vanilla"), rows_of(task / "budget-20")
        assert table.loc["vanilla", "accuracy"] == pytest.approx(np.mean([r["correct"] for r in vanilla.values()]))
        widget(at.multiselect, "Runs to compare").set_value(["vanilla", "budget-20"])
        at.run()
        assert_clean(at)
        compare = at.dataframe[1].value
        expected = (np.mean([r["thinking_tokens"] for r in budget.values()])
                    - np.mean([r["thinking_tokens"] for r in vanilla.values()]))
        assert compare.loc["budget-20", "thinking_delta"] == pytest.approx(expected)

    def test_trace_viewer_marks_planted_failures_and_interventions(self, organism_study):
        at = open_view(organism_study, "trace")
        widget(at.radio, "Show").set_value("with failure labels")
        at.run()
        assert_clean(at)
        trace = widget(at.selectbox, "Trace").value
        row = load_traces(organism_study / "organism" / "vanilla").to_pylist()[trace]
        labels = json.loads(row["labels"])
        kinds = {"slip"} if labels["slips"] else set()
        kinds |= {"oscillation"} if labels["repeats"] else set()
        kinds |= {"overthinking"} if labels["overthinking"] else set()
        assert kinds, "the filter kept a trace without failure labels"
        (html,) = token_views(at)
        assert html.count('<span title="pos ') == len(row["token_ids"])
        for kind in kinds:
            assert f"border-bottom: 3px solid {MARK_COLOURS[kind]}" in html
        widget(at.selectbox, "Trace run").set_value("neat-tau0.9")
        at.run()
        widget(at.radio, "Show").set_value("with interventions")
        at.run()
        assert_clean(at)
        assert "\u25b2neat_exit" in token_views(at)[0]
        widget(at.radio, "Colour tokens by").set_value("NeuReasoner detector")
        at.run()
        assert_clean(at)
        assert any("threshold" in c.value for c in at.caption)

    def test_neuron_page_ranks_filters_and_reads_a_neuron(self, organism_study, organism):
        at = open_view(organism_study, "neuron")
        analysis = organism_study / "organism" / "analysis"
        rcn = NeuronSet.load(analysis / "neurons" / "rcn.json")
        assert len(at.dataframe[0].value) == len(rcn)
        assert at.header[0].value == f"L{rcn.layers[0]}.{rcn.indices[0]}"
        widget(at.selectbox, "Sign").set_value("-")
        at.run()
        assert_clean(at)
        shown = at.dataframe[0].value
        assert len(shown) == sum(s == -1 for s in rcn.signs) and set(shown["sign"]) == {-1}
        text = "Q: 12 + 34 = ? <think>"
        widget(at.text_area, "Text").set_value(text)
        at.button[0].click()
        at.run()
        assert_clean(at)
        custom = token_views(at)[-1]
        assert custom.count('<span title="pos ') == len(organism.tokenizer(text).input_ids)
        assert "&lt;think&gt;" in custom

    def test_fluctuation_lists_the_traces_with_the_chosen_failure(self, organism_study):
        at = open_view(organism_study, "fluctuation")
        widget(at.selectbox, "Failure type").set_value("overthinking")
        at.run()
        assert_clean(at)
        rows = load_traces(organism_study / "organism" / "analysis").to_pylist()
        expected = sum(json.loads(r["labels"])["overthinking"] is not None for r in rows)
        assert len(widget(at.selectbox, "Trace").options) == expected
        detectors = at.dataframe[-1].value
        assert len(detectors) == 3 * 3 and detectors["auroc"].notna().all()

    def test_probes_show_the_reports_auroc_in_both_figure_styles(self, organism_study):
        at = open_view(organism_study, "probes")
        report = json.loads((organism_study / "organism" / "analysis" / "probes" / "report.json").read_text())
        assert at.metric[0].value == f"{report['probe_auroc_early']:.3f}"
        widget(at.radio, "Figure style").set_value("paper")
        at.run()
        assert_clean(at)

    def test_interventions_table_side_by_side_and_live_panel(self, organism_study):
        at = open_view(organism_study, "interventions")
        results = json.loads((organism_study / "results.json").read_text())
        assert list(at.dataframe[0].value["method"]) == [r["method"] for r in results]
        widget(at.selectbox, "Method").set_value("budget-20")
        at.run()
        trace = widget(at.selectbox, "Trace").value
        saved = (rows_of(organism_study / "organism" / "vanilla")[trace]["thinking_tokens"]
                 - rows_of(organism_study / "organism" / "budget-20")[trace]["thinking_tokens"])
        assert widget(at.metric, "Tokens saved").value == str(saved)
        widget(at.selectbox, "Method to run").set_value("budget-20")
        at.run()
        widget(at.slider, "max_thinking").set_value(5)
        widget(at.button, "Run vanilla and this method").click()
        at.run()
        assert_clean(at)
        case = widget(at.selectbox, "Problem").value
        live = at.metric[-3:]  # the live panel's side by side comes last
        assert int(live[1].value) <= 5
        assert int(live[0].value) == rows_of(organism_study / "organism" / "vanilla")[case]["thinking_tokens"]


# -- runs that lack pieces ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stripped_study(organism_study, tmp_path_factory) -> Path:
    """The study without its results and without every analysis artefact but the traces."""
    out = tmp_path_factory.mktemp("stripped") / "study"
    shutil.copytree(organism_study, out)
    for name in ("results.json", "results.md", "results.parquet"):
        (out / name).unlink()
    for piece in ("activations", "neurons", "probes", "neureasoner", "neat", "adaras"):
        shutil.rmtree(out / "organism" / "analysis" / piece)
    return out


EXPECTED_COMMANDS = {"runs": (), "trace": (), "neuron": ("workbench cache", "workbench rank --method rcn"),
                     "fluctuation": ("workbench cache", "workbench rank --method mon"),
                     "probes": ("workbench cache", "workbench probe"), "interventions": ("workbench eval",)}


class TestMissingPieces:
    """A folder that lacks a piece: the view names it and the command that makes it, and raises nothing."""

    @pytest.mark.parametrize("page", PAGES)
    def test_a_study_without_analyses_or_results(self, stripped_study, page):
        at = open_view(stripped_study, page)  # no exception, no error
        commands = " ".join(c.value for c in at.code)
        assert all(command in commands for command in EXPECTED_COMMANDS[page]), commands
        assert any(w.value.startswith("Missing:") for w in at.warning) == bool(EXPECTED_COMMANDS[page])

    def test_a_single_uncached_run_asks_for_the_cache(self, organism_study, tmp_path):
        run = tmp_path / "vanilla"
        shutil.copytree(organism_study / "organism" / "vanilla", run)
        at = open_view(run, "neuron")
        assert f"workbench cache {run} && workbench rank --method rcn {run}" in [c.value for c in at.code]

    def test_a_folder_that_is_not_there(self, tmp_path):
        at = open_view(tmp_path / "nowhere")
        assert "is not a folder" in at.warning[0].value
        assert at.code[0].value == f"workbench run --out {tmp_path / 'nowhere'}"


# -- the library behind the views ---------------------------------------------------------------------------------


class TestLibrary:
    """workbench/app against the study it reads, and against independent computations."""

    def test_layout_of_a_study_a_task_and_a_single_run(self, organism_study, tmp_path):
        study = find_layout(organism_study)
        assert study.kind == "study" and study.results == organism_study / "results.json"
        assert study.tasks["organism"].analysis == organism_study / "organism" / "analysis"
        assert "vanilla" in study.tasks["organism"].methods and "analysis" not in study.tasks["organism"].methods
        assert find_layout(organism_study / "organism").kind == "task"
        single = find_layout(organism_study / "organism" / "vanilla")
        assert single.kind == "run" and list(single.tasks["vanilla"].runs()) == ["vanilla"]
        with pytest.raises(LayoutError, match="no trace run under"):
            find_layout(tmp_path)

    def test_forced_reads_match_the_activation_store(self, organism_study, organism):
        store = ActivationStore(organism_study / "organism" / "analysis")
        neurons = store.token_neurons.take(range(6))
        rows = store.traces().to_pylist()[:3]
        got = neuron_activations(organism, [r["token_ids"] for r in rows], neurons)
        for r, acts in enumerate(got):
            cached = store.token_acts(r)[:, :6]  # float16 on disk
            assert acts.shape == cached.shape
            np.testing.assert_allclose(acts, cached, atol=2e-2 * max(1.0, float(np.abs(cached).max())))

    @pytest.mark.parametrize("method", ["vanilla", "budget-20", "neat-tau0.9"])
    def test_a_live_case_reproduces_the_stored_trace(self, organism_study, organism, method):
        from workbench.evaluation.methods import METHODS

        run = organism_study / "organism" / method
        spec = next(r for r in json.loads((organism_study / "results.json").read_text()) if r["method"] == method)
        stored = load_traces(run).to_pylist()[0]
        live = run_case(organism, run_config(run), stored["trace_id"], METHODS[spec["type"]](spec["params"]),
                        organism_study / "organism" / "analysis")
        assert live["token_ids"] == stored["token_ids"]
        # the same actions at the same steps (readings in payloads agree to float error only: batch of 1 here)
        assert [(e["step"], e["kind"]) for e in json.loads(live["events"])] == [
            (e["step"], e["kind"]) for e in json.loads(stored["events"])]
        assert not any(hp.fwd_hooks for hp in organism.hook_dict.values())  # nothing left on the shared model

    def test_event_marks_sit_on_the_tokens_the_controller_forced(self, organism_study):
        checked = 0
        for row in load_traces(organism_study / "organism" / "neat-tau0.9").to_pylist():
            forced = [e for e in json.loads(row["events"]) if e["kind"] == "force"]
            marks = [m for m in event_marks(row) if m.kind == "force"]
            for event, mark in zip(forced, marks, strict=True):
                assert row["token_ids"][mark.start] == event["payload"]["tokens"][0]
                checked += 1
        assert checked > 0

    def test_label_marks_follow_the_planted_labels(self, organism_study):
        run = organism_study / "organism" / "analysis"
        task = run_task(run)
        for row in load_traces(run).to_pylist():
            labels = json.loads(row["labels"])
            marks = label_marks(row, task)
            assert sorted(m.start for m in marks if m.kind == "slip") == sorted(s["token"] for s in labels["slips"])
            assert [(m.start, m.end) for m in marks if m.kind == "overthinking"] == (
                [tuple(labels["overthinking"])] if labels["overthinking"] else [])

    def test_the_overthinking_detector_scores_higher_inside_overthinking(self, organism_study, organism):
        from workbench.neureasoner.detectors import Detector

        analysis = organism_study / "organism" / "analysis"
        det = Detector.load(analysis / "neureasoner" / "detector-overthinking.joblib")
        cfg = detector_config(det)
        inside, outside = [], []
        rows = load_traces(analysis).to_pylist()
        read = neuron_activations(organism, [r["token_ids"] for r in rows], det.neurons)
        for row, acts in zip(rows, read, strict=True):
            lo, hi = thinking_span(row)
            scores = detector_scores(det, acts, np.asarray(row["token_ids"]), (lo, hi))
            ends = np.flatnonzero(~np.isnan(scores))
            n_windows = max(0, (hi - lo - cfg.window) // cfg.stride + 1)
            assert ends.tolist() == [lo + s * cfg.stride + cfg.window - 1 for s in range(n_windows)]
            assert np.all((scores[ends] >= 0) & (scores[ends] <= 1))
            span = json.loads(row["labels"])["overthinking"]
            for e in ends:
                (inside if span and span[0] <= e < span[1] else outside).append(scores[e])
        assert inside and np.mean(inside) > np.mean(outside) + 0.3

    def test_logit_effects_are_the_unembedded_output_weights(self, organism):
        hf = organism.original_model
        layer, index = 2, 17
        direct = hf.lm_head.weight.detach() @ hf.model.layers[layer].mlp.down_proj.weight.detach()[:, index]
        effects = logit_effects(organism, layer, index, k=5)
        tokens = organism.tokenizer.convert_ids_to_tokens(direct.argsort(descending=True)[:5].tolist())
        assert [t for t, _ in effects.promoted] == tokens
        assert effects.suppressed[0][1] == pytest.approx(float(direct.min()), rel=1e-4)
        with pytest.raises(ValueError, match="outside this model"):
            logit_effects(organism, organism.cfg.n_layers, 0)

    def test_trajectory_separates_groups_and_top_contexts_keep_one_per_trace(self):
        ramp, flat = np.linspace(0, 1, 40), np.zeros(30)
        series = [ramp, ramp + 0.1, flat, flat + 0.05]
        spans = [(0, 40), (0, 40), (0, 30), (0, 30)]
        t = trajectory("L0.0", series, spans, [True, True, False, False], bins=4)
        assert np.all(np.diff(t.mean["correct"]) > 0) and np.allclose(t.mean["incorrect"], 0.025)
        assert all(lo <= m <= hi for lo, m, hi in zip(t.lo["correct"], t.mean["correct"], t.hi["correct"],
                                                         strict=True))
        top = top_contexts(series, k=3, spans=spans)
        assert [c.row for c in top] == [1, 0, 3]
        assert top_contexts(series, k=1, largest=False)[0].value == 0.0

    def test_token_html_escapes_text_and_leaves_missing_values_uncoloured(self):
        html = token_html(["<script>", "x"], [float("nan"), 2.0])
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert "background: transparent" in html and "rgb(255, 0, 0)" in html
        with pytest.raises(ValueError, match="2 values for 1 tokens"):
            token_html(["a"], [1.0, 2.0])


class TestCommand:
    """``workbench app RUN_DIR`` replaces itself with ``streamlit run app.py -- RUN_DIR``."""

    def test_execs_streamlit_on_the_run(self, monkeypatch, tmp_path):
        from workbench.cli import app

        calls = []
        monkeypatch.setattr("os.execv", lambda path, argv: calls.append(argv))
        result = CliRunner().invoke(app, ["app", str(tmp_path), "--port", "8765", "--headless"])
        assert result.exit_code == 0, result.output
        (argv,) = calls
        assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4] == APP
        assert argv[-2:] == ["--", str(tmp_path)] and "8765" in argv and "--server.headless" in argv

    def test_refuses_a_folder_that_is_not_there(self, tmp_path):
        from workbench.cli import app

        result = CliRunner().invoke(app, ["app", str(tmp_path / "none")])
        assert result.exit_code == 2 and "workbench run --out" in result.output
