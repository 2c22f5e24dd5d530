"""The demo report (``interp demo --quick``), and the report opened in a real browser (headless Chromium).

Without a browser: every method interp registers appears in the report, in a section that says which methods
it shows; every figure has a caption; texts never say "left" / "right" of figures that are stacked; the page
loads no external script or stylesheet.

In the browser, section by section: every figure renders (plotly's SVG present and non-empty), no errors in the
console, and no request leaves the machine (Chromium's network log holds no http(s) / ws request); a screenshot
of each section is written to DIR/screenshots/<section>.png next to the report (and copied to
results/demo_screenshots/) for a person to look at.

.ci/run installs Debian's chromium when it is missing; the browser tests are skipped, with this reason, only
where it cannot be installed."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from interp.cli import main
from interp.figures.demo import SECTIONS
from interp.vocabulary import package_methods

ROOT = Path(__file__).resolve().parents[1]
ORGANISMS = (ROOT / "data" / "organisms" / "dense" / "config.json").exists()
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--virtual-time-budget=20000"]
# Chromium's own calls to Google's services (network time, accounts, check-in, new tab), made whatever the page
# holds: not the page's requests (a figure fetching e.g. cdn.plot.ly would still fail the test)
BROWSER_SERVICES = re.compile(r"https?://([a-z0-9-]+\.)*(google\.com|googleapis\.com|gstatic\.com|gvt1\.com)/")
SECTION = re.compile(r"<section id='([^']+)' data-methods='([^']*)'>(.*?)</section>", re.S)


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
    out = tmp_path_factory.mktemp("demo") / "report"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    return out / "index.html"


def sections(page: str) -> list[tuple[str, list[str], str]]:
    """(id, methods, inner html) of every section of the report."""
    return [(sid, methods.split(), body) for sid, methods, body in SECTION.findall(page)]


# --- the report, without a browser ----------------------------------------------------------------------
@pytest.mark.skipif(not ORGANISMS, reason="the organisms are not in data/organisms/ (the demo shows the core only)")
def test_demo_covers_every_registered_method(demo_index):
    found = sections(demo_index.read_text())
    assert len(found) == len(SECTIONS)
    shown = {m for _, methods, _ in found for m in methods}
    missing = [e.name for e in package_methods() if e.name not in shown]
    assert not missing, f"the demo report shows no result of {missing}"


def test_every_figure_has_a_caption_and_no_text_points_left_or_right(demo_index):
    page = demo_index.read_text()
    found = sections(page)
    assert found
    for sid, _, body in found:
        figures = body.count("<div class='figure'>")
        assert figures >= 1, sid
        if ORGANISMS:
            assert body.count("<p class='caption'>") == figures, f"{sid}: a figure without its caption"
        text = re.sub(r"<div class='figure'>.*?</script>\s*</div>\s*</div>", "", body, flags=re.S)
        assert not re.search(r"\b(left|right)\b", re.sub(r"<[^>]+>", " ", text), re.I), \
            f"{sid}: the figures are stacked; a text pointing left or right misleads"


def test_page_needs_no_network(demo_index):
    page = demo_index.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "no external script is loaded"
    assert not re.search(r"<link[^>]*href=[\"']https?:", page), "no external stylesheet is loaded"
    assert "plotly.js v" in page or "Plotly" in page[:5_000_000], "plotly.js is inlined"


# --- in a browser, section by section ------------------------------------------------------------------
def _section_pages(index: Path, tmp: Path) -> list[tuple[str, Path, int]]:
    """One page per section (the report's head, with plotly.js, and that section), with a window height that
    holds its figures: (id, page, height)."""
    page = index.read_text()
    head = page[: page.index("<body>") + len("<body>")]
    out = []
    for sid, _, body in sections(page):
        path = tmp / f"{sid}.html"
        path.write_text(f"{head}<section>{body}</section></body></html>", encoding="utf-8")
        heights = []
        for chunk in body.split("<div class='figure'>")[1:]:
            found = [int(h) for h in re.findall(r'"height":\s*(\d+)', chunk.split("</script>")[0])]
            heights.append(max(found) if found else 450)
        out.append((sid, path, 220 + sum(h + 140 for h in heights)))
    return out


def _requests(net_log: Path) -> list[str]:
    """The http(s) / ws URLs Chromium's network log records (none for a page that needs no network)."""
    text = net_log.read_text(errors="replace") if net_log.exists() else ""
    try:
        events = json.loads(text).get("events", [])
        urls = [str(e.get("params", {}).get("url", "")) for e in events]
    except json.JSONDecodeError:  # a log cut short when the browser exits: read the URLs from the text
        urls = re.findall(r'"url":"([^"]+)"', text)
    return sorted({u for u in urls if re.match(r"(https?|wss?)://", u) and not BROWSER_SERVICES.match(u)})


def test_every_section_renders_offline_without_console_errors(demo_index, tmp_path):
    browser = chromium()
    shots = demo_index.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    kept = ROOT / "results" / "demo_screenshots"
    kept.mkdir(parents=True, exist_ok=True)
    pages = _section_pages(demo_index, tmp_path)
    assert pages
    for sid, page, height in pages:
        net_log = tmp_path / f"{sid}.netlog.json"
        run = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / ('p-' + sid)}", "--enable-logging=stderr",
                              "--v=0", f"--log-net-log={net_log}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=180)
        expected = page.read_text().count("plotly-graph-div")
        counter = PlotCounter()
        counter.feed(run.stdout)
        assert len(counter.plots) == expected, f"{sid}: every figure div is in the rendered page"
        assert all(n > 0 for n in counter.plots), f"{sid}: figures without SVG shapes: {counter.plots}"
        assert run.stdout.count('class="main-svg"') >= expected, sid
        console_errors = [line for line in run.stderr.splitlines()
                          if "CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]
        assert not console_errors, (sid, console_errors)
        assert not _requests(net_log), (sid, _requests(net_log))

        shot = shots / f"{sid}.png"
        subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / ('s-' + sid)}",
                        f"--window-size=1150,{height}", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=180)
        assert shot.exists() and shot.stat().st_size > 10_000, sid
        shutil.copy(shot, kept / shot.name)
