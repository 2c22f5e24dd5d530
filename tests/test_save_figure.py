"""Figures saved for a paper: HTML with plotly.js inlined always; PNG / SVG / PDF through kaleido and the system
Chromium (CI installs Debian's chromium; these tests skip, saying why, only where no Chromium exists)."""

import shutil
import struct

import pandas as pd
import pytest

import interp
from interp.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (CI installs chromium)")


def result():
    res = interp.Result(pd.DataFrame({"prompt_id": ["a", "b"], "layer": [0, 1], "score": [1.0, 2.0]}),
                        {"method": "x"})
    res.meta["schema"] = interp.Schema(keys=("prompt_id", "layer"), value="score", unit="logits", sign="higher",
                                       columns={"prompt_id": "str", "layer": "int", "score": "float"}).to_dict()
    return res


def test_html_needs_nothing_and_inlines_the_javascript(tmp_path):
    path = result().save_figure(tmp_path / "f.html")
    html = path.read_text()
    assert "plotly" in html and "cdn.plot.ly" not in html.split("<body>")[0] and len(html) > 1_000_000


@needs_chromium
def test_png_and_svg_are_valid_images(tmp_path):
    png = result().save_figure(tmp_path / "f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 400 and height >= 300
    svg = result().save_figure(tmp_path / "f.svg").read_text()
    assert svg.lstrip().startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert ">score<" in svg or "score" in svg


@needs_chromium
def test_cli_figure_format(tmp_path, tiny_model_dirs):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "The capital of France is", "target": " Paris"}\n')
    assert main(["run", "predictions", "--model", str(tiny_model_dirs["llama"]), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o"), "--figure-format", "svg"]) == 0
    assert (tmp_path / "o" / "predictions.html").exists()
    assert (tmp_path / "o" / "predictions.svg").read_text().lstrip().startswith("<svg")


def test_unknown_figure_format_is_refused(tmp_path):
    with pytest.raises(interp.ParameterError, match="give a .html, .png, .svg or .pdf path"):
        result().save_figure(tmp_path / "f.gif")
