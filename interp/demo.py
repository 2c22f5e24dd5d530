"""The demo report: runs the registered methods on a shipped organism and writes results/demo/index.html
(figures inlined, offline) with the tables as CSV and Parquet. It grows with every method family."""

from __future__ import annotations

import html
from pathlib import Path

from .model import load_model
from .prompts import PromptSet

DEMO_PROMPTS = [
    {"id": "greeting", "prompt": "User: Hello, how are you?\nAssistant:"},
    {"id": "qa", "prompt": "Q: What is two plus two?\nA:"},
]


def _sections(model, prompts, out: Path) -> list[tuple[str, str, str]]:
    from .methods.predictions import predictions

    result = predictions(model, prompts, top_k=5)
    paths = result.save(out / "tables", "predictions")
    fig = result.figure()
    body = fig.to_html(include_plotlyjs=False, full_html=False)
    links = " ".join(f'<a href="tables/{p.name}">{p.suffix[1:]}</a>' for p in paths.values())
    table = result.table.head(20).to_html(index=False)
    text = ("The model's top next tokens at the last prompt position, with their probabilities. "
            "The simplest check that the model loads and predicts sensibly.")
    return [("Next-token predictions", text, body + f"<p>Tables: {links}</p>" + table)]


def run_demo(out: Path, *, model_dir: str = "data/organisms/dense", quick: bool = False) -> Path:
    """Write the demo report into ``out`` (overwriting the previous one) and return index.html's path."""
    import plotly.offline

    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, device="cpu")
    prompts = PromptSet(DEMO_PROMPTS)
    sections = _sections(model, prompts, out)
    plotly_js = plotly.offline.get_plotlyjs()
    parts = [f"<h2>{html.escape(t)}</h2><p>{html.escape(x)}</p>{body}" for t, x, body in sections]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>interp demo</title>"
        f"<script type='text/javascript'>{plotly_js}</script></head><body>"
        f"<h1>interp demo: {html.escape(model.name)}</h1><p>{html.escape(repr(model))}</p>"
        + "".join(parts)
        + "</body></html>"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
