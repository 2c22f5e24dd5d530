"""Plotly figure builders shared by the methods; :func:`save_html` writes a page with plotly's JavaScript
inlined, so it works offline from a file:// URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go


def bar_top(result: Any, k: int = 20, by: str | None = None, label: str | None = None) -> go.Figure:
    """The default figure: a bar chart of the k rows that matter most (by the schema's value, or ``by``)."""
    table = result.top(k, by=by)
    by = by or result.schema.value
    cols = [c for c in ("prompt_id", "layer", "head", "expert", "position", "token") if c in table.columns]
    names = [label and str(r[label]) or " ".join(f"{c}={r[c]}" for c in cols) for _, r in table.iterrows()]
    fig = go.Figure(go.Bar(x=names, y=table[by], hovertemplate="%{x}<br>" + by + "=%{y:.4g}<extra></extra>"))
    fig.update_layout(title=f"{result.method}: top {k} by {by}", xaxis_title="", yaxis_title=by)
    return fig


def heatmap(z: Any, x: list, y: list, *, title: str, x_title: str, y_title: str, text: Any = None,
            hover: str | None = None, colorscale: str = "Viridis", zmid: float | None = None) -> go.Figure:
    """A heatmap with labelled axes and hover text (cells may carry a text label)."""
    trace = go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmid=zmid, text=text,
                       texttemplate="%{text}" if text is not None else None,
                       hovertemplate=hover or f"{y_title}=%{{y}}<br>{x_title}=%{{x}}<br>value=%{{z:.4g}}"
                       "<extra></extra>")
    fig = go.Figure(trace)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title)
    return fig


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write the figure as a standalone page with plotly.js inlined (no network needed to view it); atomic."""
    from .atomic import write_text

    return write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


IMAGE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: go.Figure, path: str | Path, *, scale: float = 2.0) -> Path:
    """Save a figure for a paper: ``.html`` (plotly.js inlined, always available) or ``.png`` / ``.svg`` / ``.pdf``
    through kaleido (the optional extra ``pip install 'interp[figures]'``), which drives a headless Chromium: the
    system's (``chromium`` on Debian) is used when kaleido has none of its own. Written atomically."""
    from .atomic import write_bytes
    from .errors import ParameterError

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt == "html":
        return save_html(fig, path)
    if fmt not in IMAGE_FORMATS:
        raise ParameterError(f"Cannot save a figure as {path.name!r}: give a .html, .png, .svg or .pdf path.")
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ParameterError(f"Saving {fmt.upper()} needs kaleido: pip install 'interp[figures]' (or save .html, "
                             "which needs nothing).") from None
    _use_system_chromium()
    data = fig.to_image(format=fmt, scale=scale if fmt == "png" else 1)
    return write_bytes(path, data)


def _use_system_chromium() -> None:
    """Point kaleido's browser lookup at the system Chromium when one is installed and none is configured."""
    import os
    import shutil

    if os.environ.get("BROWSER_PATH"):
        return
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            os.environ["BROWSER_PATH"] = found
            return
