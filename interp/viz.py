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
    """Write the figure as a standalone page with plotly.js inlined (no network needed to view it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path
