"""The app in a real browser: Streamlit serves the organism study on localhost, headless Chromium (Playwright
driving the system's Chromium, ``apt-get install chromium``) opens every view, uses one control on each, and
no error element may appear. Full-page screenshots are kept under ``test-artifacts/browser/`` (or
``$WORKBENCH_TEST_ARTIFACTS/browser/``); the path is printed.

Skipped, with the reason printed, only where no Chromium can be found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'
BUSY = '[data-testid="stStatusWidget"]'  # shown while a script run is in progress


def find_chromium() -> str | None:
    """``$WORKBENCH_CHROMIUM``, else the first Chromium or Chrome on PATH or in /usr/bin."""
    if os.environ.get("WORKBENCH_CHROMIUM"):
        return os.environ["WORKBENCH_CHROMIUM"]
    for name in CHROMIUM_NAMES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = (f"no Chromium found (looked for $WORKBENCH_CHROMIUM and {', '.join(CHROMIUM_NAMES)}); install it "
                  "with `apt-get install chromium` to run the browser test")
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def server(organism_study, tmp_path_factory) -> Iterator[str]:
    """``streamlit run app.py -- STUDY`` on a free port; its URL while it serves."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
             "--", str(organism_study)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer on {url} within 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(chromium) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {ARTIFACTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def settle(page: Page, started: bool = False) -> None:
    """Waits until the app's script run has finished; ``started``: it is known to have begun (the page shows
    what it drew), else give a widget's rerun a moment to show the status widget (a fast one may come and go
    unseen)."""
    if not started:
        try:
            page.wait_for_selector(BUSY, state="attached", timeout=1_000)
        except PlaywrightTimeout:
            pass
    page.wait_for_selector(BUSY, state="detached", timeout=90_000)


def assert_no_errors(page: Page, where: str) -> None:
    errors = page.locator(ERRORS)
    assert errors.count() == 0, f"{where}: {errors.first.inner_text()[:2000]}"


def screenshot(page: Page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main section, so the viewport grows to fit it first."""
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)  # charts and tables re-layout
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def _runs(page: Page) -> None:
    page.get_by_text("Generate a new trace run").click()
    page.get_by_role("button", name="Generate").wait_for()


def _trace(page: Page) -> None:
    page.get_by_text("incorrect", exact=True).click()
    settle(page)
    assert "· wrong ·" in page.get_by_role("combobox", name="Trace", exact=True).input_value()


def _neuron(page: Page) -> None:
    page.get_by_text("lowest", exact=True).click()
    settle(page)
    page.get_by_text("pos ").first.wait_for()


def _fluctuation(page: Page) -> None:
    page.get_by_text("Only traces with").click()
    settle(page)
    page.locator(".js-plotly-plot").first.wait_for()


def _probes(page: Page) -> None:
    page.get_by_text("paper", exact=True).click()
    settle(page)
    page.locator(".js-plotly-plot").first.wait_for()


def _interventions(page: Page) -> None:
    page.get_by_role("button", name="Run vanilla and this method").click()
    settle(page)
    page.get_by_text("Tokens saved", exact=True).nth(1).wait_for()  # the stored pair's, then the live one's


VIEWS: list[tuple[str, str, str, Callable[[Page], None]]] = [
    ("runs", "", "Runs", _runs),
    ("trace", "trace", "Trace viewer", _trace),
    ("neuron", "neuron", "Neuron page", _neuron),
    ("fluctuation", "fluctuation", "Fluctuation patterns", _fluctuation),
    ("probes", "probes", "Probes", _probes),
    ("interventions", "interventions", "Interventions", _interventions),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "path", "title", "act"), VIEWS, ids=[v[0] for v in VIEWS])
def test_view_in_a_real_browser(server, page, name, path, title, act):
    page.goto(f"{server}/{path}")
    page.locator("h1", has_text=title).wait_for(timeout=90_000)
    settle(page, started=True)
    assert_no_errors(page, f"{name} on load")
    act(page)
    settle(page)
    assert_no_errors(page, f"{name} after using a control")
    screenshot(page, name)
