"""The demo report: runs every method family on the shipped organisms and writes ``results/demo/``.

``index.html`` has one section per method (a two-line explanation of what the reader sees, the interactive
figures, links to the tables); the tables are written as CSV and Parquet next to it. plotly.js is inlined once,
so the page works offline from a file:// URL. Each family contributes a section builder to ``SECTIONS``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..organisms import REPO_ROOT
from .demo_sections import FAMILY_SECTIONS
from .report import DemoContext, DemoFigure, DemoSection


def _predictions_section(ctx: DemoContext) -> DemoSection:
    from ..methods.predictions import predictions

    prompts = ctx.prompts("factual", n=4)
    result = predictions(ctx.dense, prompts, top_k=5)
    t = result.table
    first = t[t["prediction_rank"] == t["prediction_rank"].min()]
    if "target_id" in t.columns:
        hits = int((first["predicted_id"] == first["target_id"]).sum())
        caption = f"{hits} of {len(first)} facts have their object as the top token"
    else:
        caption = f"The top token of the {len(first)} facts"
    return DemoSection(
        "Next-token predictions",
        "The dense organism's top next tokens at the last prompt position for held-out facts, with probabilities. "
        "The simplest check that the model loads and recalls what it was trained on.",
        [DemoFigure(result.figure(), caption + f"; the first, {first['predicted_token'].iloc[0]!r}, at "
                                               f"{first['prob'].iloc[0]:.2f}.")],
        {"predictions": result},
    )


def _fixture_predictions_section(ctx: DemoContext) -> DemoSection:
    """Without the organisms: the core on a tiny random Llama built from a config (the smallest honest demo)."""
    import tempfile

    from ..methods.predictions import predictions
    from ..model.fixtures import build_tiny_model
    from ..model.loading import load_model

    model = load_model(build_tiny_model("llama", Path(tempfile.mkdtemp()) / "tiny-llama"), device="cpu")
    result = predictions(model, ["The capital of France is", "User: how do I bake bread?\nAssistant:"], top_k=5)
    print(result.table.to_string(index=False))
    return DemoSection(
        "Next-token predictions (tiny random Llama; organisms not shipped yet)",
        "A random-init Llama with grouped-query attention loaded through the bridge: its top next tokens. Random "
        "weights, so the tokens mean nothing; this shows the pipeline (load, prompts, method, table, figure).",
        [result.figure()],
        {"predictions": result},
    )


SECTIONS: tuple[Callable[[DemoContext], DemoSection], ...] = (_predictions_section, *FAMILY_SECTIONS)


def run_demo(out: Path, *, data_dir: Path | None = None, quick: bool = False, overwrite: bool = False) -> Path:
    """Write the demo report into ``out`` and return index.html's path.

    The report is built in a temporary directory and moved into place when complete. ``out`` must be new, empty,
    or an earlier demo report (then ``overwrite=True`` replaces it, removing only the files the demo wrote); any
    other non-empty directory is refused before anything runs (:mod:`interp.results.outputs`)."""
    from ..results.outputs import check_report_dir, publish_report

    out = Path(out)
    check_report_dir(out, "demo", overwrite=overwrite)
    data_dir = Path(data_dir) if data_dir is not None else REPO_ROOT / "data"
    organisms = (data_dir / "organisms" / "dense" / "config.json").exists()
    sections = SECTIONS if organisms else (_fixture_predictions_section,)
    ctx = DemoContext(data_dir=data_dir, quick=quick)
    publish_report(out, "demo", lambda tmp: _write_report(tmp, ctx, sections, organisms, quick), overwrite=overwrite)
    return out / "index.html"


def _slug(title: str) -> str:
    """A section's id (and its screenshot's name): the title's first words, lower case, joined by hyphens."""
    import re

    words = re.findall(r"[a-z0-9]+", title.lower())
    return "-".join(words[:4]) or "section"


def _figure_html(item: DemoFigure) -> str:
    """One figure, then its caption (numbers from the results) and the paper figure it mirrors, in words."""
    parts = [f"<div class='figure'>{item.figure.to_html(include_plotlyjs=False, full_html=False)}</div>"]
    if item.caption:
        parts.append(f"<p class='caption'>{html.escape(item.caption)}</p>")
    if item.paper:
        parts.append(f"<p class='paper'>In the paper: {html.escape(item.paper)}</p>")
    return "".join(parts)


def _write_report(out: Path, ctx: DemoContext, sections: tuple, organisms: bool, quick: bool) -> None:
    import plotly.offline

    (out / "tables").mkdir(parents=True)
    parts = []
    for builder in tqdm(sections, desc="demo sections"):
        section = builder(ctx)
        links = []
        for name, result in section.results.items():
            paths = result.save(out / "tables", name)
            links.append(f"{html.escape(name)}: " + " ".join(
                f'<a href="tables/{p.name}">{p.suffix[1:]}</a>' for k, p in paths.items() if k != "json"))
        figs = "".join(_figure_html(item) for item in section.items)
        methods = " ".join(section.methods)
        parts.append(
            f"<section id='{_slug(section.title)}' data-methods='{html.escape(methods)}'>"
            f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.explanation)}</p>{figs}"
            f"<p class='tables'>Tables: {' | '.join(links)}</p></section>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>interp demo</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}section{margin-bottom:2em}"
        ".caption{margin:.2em 0 0 0}.paper{margin:.2em 0 1.5em 0;color:#555;font-style:italic}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>"
        "<h1>interp demo report</h1><p>Every method of the toolkit on the shipped model organisms "
        "(small trained models with known behaviours: findings on them check the tools, not claims about large "
        f"models).{' Quick configuration.' if quick else ''}</p>"
        + ("" if organisms else "<p><b>The model organisms are not in data/organisms/ yet: this report shows the "
           "core on a tiny random Llama built from a config; the method sections need the organisms.</b></p>")
        + "".join(parts) + "</body></html>"
    )
    (out / "index.html").write_text(page, encoding="utf-8")
