"""The demo report opened in a real browser (headless Chromium): every figure renders (plotly's SVG present and
non-empty), no errors in the console, and a screenshot is taken (kept in results/ for a person to look at).

.ci/run installs Debian's chromium when it is missing; the test is skipped, with this reason, only where it
cannot be installed."""

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from interp.figures.demo import SECTIONS, run_demo

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed here and could not be installed (.ci/run installs Debian's chromium)")


class PlotCounter(HTMLParser):
    """Counts plotly figures and the SVG shapes drawn inside each."""

    def __init__(self):
        super().__init__()
        self.plots: list[int] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag == "div" and "plotly-graph-div" in cls:
            self.plots.append(0)
            self.depth = 1
        elif self.depth:
            if tag == "div":
                self.depth += 1
            if tag in ("path", "rect") and self.plots:
                self.plots[-1] += 1

    def handle_endtag(self, tag):
        if self.depth and tag == "div":
            self.depth -= 1


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    return run_demo(tmp_path_factory.mktemp("demo"), quick=True)


def test_every_figure_renders_without_console_errors(demo_index, tmp_path):
    browser = chromium()
    url = demo_index.resolve().as_uri()
    run = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=180)
    dom = run.stdout
    expected = demo_index.read_text().count("plotly-graph-div")
    organisms = (ROOT / "data" / "organisms" / "dense" / "config.json").exists()
    assert expected >= (len(SECTIONS) if organisms else 1)
    counter = PlotCounter()
    counter.feed(dom)
    assert len(counter.plots) == expected, "every figure div is in the rendered page"
    assert all(n > 0 for n in counter.plots), f"figures without SVG shapes: {counter.plots}"
    assert dom.count('class="main-svg"') >= expected
    console_errors = [line for line in run.stderr.splitlines()
                      if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]
    assert not console_errors, console_errors

    shot = ROOT / "results" / "demo_screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,2400",
                    f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_page_needs_no_network(demo_index):
    page = demo_index.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "no external script is loaded"
    assert not re.search(r"<link[^>]*href=[\"']https?:", page), "no external stylesheet is loaded"
    assert "plotly.js v" in page or "Plotly" in page[:5_000_000], "plotly.js is inlined"
