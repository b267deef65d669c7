"""The app renders its pages without error (Streamlit's AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from workbench.traces import TraceRunConfig, run_traces

PAGES = Path(__file__).resolve().parent.parent / "app_pages"


def test_organism_page_reads_a_run_directory(organism, tmp_path):
    run_traces(TraceRunConfig(problems=8, seed=3), tmp_path / "run", progress=False, model=organism)
    at = AppTest.from_file(str(PAGES / "organism.py"), default_timeout=120)
    at.session_state["run_dir"] = str(tmp_path / "run")
    at.run()
    assert not at.exception
    assert at.metric[0].label == "Accuracy"
    assert len(at.code) == 8


def test_missing_run_directory_says_how_to_make_one(tmp_path):
    at = AppTest.from_file(str(PAGES / "organism.py"), default_timeout=120)
    at.session_state["run_dir"] = str(tmp_path / "none")
    at.run()
    assert not at.exception and not at.metric
    assert "workbench run" in at.markdown[-1].value
