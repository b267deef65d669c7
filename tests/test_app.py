"""The app renders its pages without error (Streamlit's AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGES = Path(__file__).resolve().parent.parent / "app_pages"


def test_organism_page_renders(organism):
    at = AppTest.from_file(str(PAGES / "organism.py"), default_timeout=120).run()
    assert not at.exception
    assert at.metric[0].label == "Accuracy"
    assert len(at.code) == 8
