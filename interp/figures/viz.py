"""Plotly figure builders shared by the methods, and the one figure convention they follow (docs/figures.md):

- one diverging scale, :data:`DIVERGING` (blue negative, white 0, red positive), centred at 0, for signed values;
  one sequential scale, :data:`SEQUENTIAL` (white to red), for non-negative values: red always means "more";
- layer 0 at the bottom of every layer axis (layers increase upwards), heads / positions / experts along x;
- every axis titled; every colourbar titled with its unit; hovers give the value with its unit (and the token
  text where there is one); titles say what is averaged, over how many;
- no fixed width: figures follow their container (the report, a notebook cell);
- one style per series: two legend entries never share a colour, dash and marker; a curve never joins points of
  different sites (one trace per site);
- a value axis is scaled to what is compared: a bounded quantity drawn as a curve (a rate, a probability) spans
  its whole range, points compared with each other (conditions near 1) are zoomed to their spread
  (:func:`value_range`) and drawn as points, never as bars cut above 0.

:func:`check_convention` lists what a figure breaks; ``tests/test_figure_convention.py`` runs it on every
registered method's default figure. :func:`save_html` writes a page with plotly's JavaScript inlined, so it works
offline from a file:// URL; :func:`save_figure` also writes PNG / SVG / PDF.
"""


from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

DIVERGING = "RdBu_r"  # low = blue, 0 = white, high = red
SEQUENTIAL = "Reds"  # 0 = white, high = red
MAX_TITLE_CHARS = 90  # a title line longer than this is cut at the report's width


def bar_top(result: Any, k: int = 20, by: str | None = None, label: str | None = None) -> go.Figure:
    """The default figure: a bar chart of the k rows that matter most (by the schema's value, or ``by``)."""
    table = result.top(k, by=by)
    schema = result.schema
    by = by or schema.value
    unit = schema.unit if schema is not None and by == schema.value else ""
    cols = [c for c in ("prompt_id", "layer", "head", "expert", "position", "token") if c in table.columns]
    names = [label and str(r[label]) or " ".join(f"{c}={r[c]}" for c in cols) for _, r in table.iterrows()]
    fig = go.Figure(go.Bar(x=names, y=table[by], marker_color=_RED,
                           hovertemplate="%{x}<br>" + by + "=%{y:.4g}" + (f" {unit}" if unit else "")
                           + "<extra></extra>"))
    fig.update_layout(title=f"{result.method}: the {len(table)} rows with the largest {by}", xaxis_title="row",
                      yaxis_title=axis_label(by, unit), autosize=True)
    return fig


_RED = "#b2182b"


def axis_label(name: str, unit: str = "") -> str:
    """An axis or colourbar title: the quantity and its unit, e.g. "KL (nats)"."""
    return f"{name} ({unit})" if unit else name


def heatmap(z: Any, x: list, y: list, *, title: str, x_title: str, y_title: str, text: Any = None,
            hover: str | None = None, colorscale: str | None = None, zmid: float | None = None,
            colorbar_title: str | None = None, unit: str = "", diverging: bool | None = None,
            customdata: Any = None) -> go.Figure:
    """A heatmap by the convention: y increases upwards (layer 0 at the bottom when y is a layer axis), both axes
    titled, the colourbar titled with its unit, the diverging scale centred at 0 for signed values (``diverging``;
    by default: when the values have both signs) and the sequential one otherwise; hovers give the value with its
    unit (``hover`` replaces the template; ``customdata`` can carry token text for it)."""
    import numpy as np

    values = np.asarray(z, dtype=float) if z is not None else np.zeros((0, 0))
    finite = values[np.isfinite(values)] if values.size else values
    if diverging is None:
        diverging = zmid is not None or bool(finite.size and finite.min() < 0 < finite.max())
    if colorscale is None or colorscale in ("RdBu", "RdBu_r"):
        colorscale = DIVERGING if diverging else SEQUENTIAL
    if diverging and zmid is None:
        zmid = 0.0
    value = "value" if not colorbar_title else colorbar_title.split(" (")[0]
    trace = go.Heatmap(z=z, x=x, y=y, colorscale=colorscale, zmid=zmid, text=text, customdata=customdata,
                       texttemplate="%{text}" if text is not None else None,
                       colorbar={"title": {"text": colorbar_title or axis_label("value", unit)}},
                       hovertemplate=hover or f"{y_title}=%{{y}}<br>{x_title}=%{{x}}<br>{value}=%{{z:.4g}}"
                       + (f" {unit}" if unit else "") + "<extra></extra>")
    fig = go.Figure(trace)
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, autosize=True)
    fig.update_yaxes(autorange=True)
    return fig


def check_convention(fig: go.Figure) -> list[str]:
    """What a figure breaks of the convention (an empty list when it follows it)."""
    problems = []
    layout = fig.layout
    title = (layout.title.text or "") if layout.title else ""
    if not title.strip():
        problems.append("no title")
    for line in title.split("<br>"):
        if len(_plain_text(line)) > MAX_TITLE_CHARS:
            problems.append(f"a title line of {len(_plain_text(line))} characters would be cut: {line[:40]!r}...")
    if layout.width is not None:
        problems.append(f"a fixed width ({layout.width}px): figures follow their container")
    used_axes = {(getattr(t, "xaxis", None) or "x", getattr(t, "yaxis", None) or "y") for t in fig.data
                 if t.type not in ("pie", "table", "indicator")}
    for xa, ya in used_axes:
        for name in (xa, ya):
            axis = layout[("xaxis" if name.startswith("x") else "yaxis") + name[1:]]
            text = axis.title.text if axis is not None and axis.title is not None else None
            if not text:
                problems.append(f"axis {name} has no title")
            elif name.startswith("y") and "layer" in text.lower() and axis.autorange == "reversed":
                problems.append(f"axis {name} ({text}) puts layer 0 at the top")
    for t in fig.data:
        if t.type == "heatmap":
            cb = t.colorbar.title.text if t.colorbar is not None and t.colorbar.title is not None else None
            if t.showscale is not False and not cb:
                problems.append("a heatmap's colourbar has no title")
            ys = list(t.y) if t.y is not None else []
            if ys and all(isinstance(v, (int, float)) for v in ys) and ys != sorted(ys):
                problems.append("a heatmap's y values do not increase (layer 0 must be at the bottom)")
            elif t.showscale is not False and cb.split(" (")[0].strip().lower() in GENERIC_COLORBAR_TITLES:
                problems.append(f"a heatmap's colourbar is titled {cb!r}: say what it shows, with its unit")
            scale = t.colorscale
            if scale is not None and _is_diverging_but_uncentred(t):
                problems.append("a diverging colour scale not centred at 0")
    problems += _shared_styles(fig)
    return problems


GENERIC_COLORBAR_TITLES = {"value", "z", ""}


def _trace_style(trace: Any) -> tuple | None:
    """(kind, colour, dash, marker symbol) of a trace that sets its colour; None when plotly picks the colour
    (then its colourway gives each trace its own)."""
    line = getattr(trace, "line", None)
    marker = getattr(trace, "marker", None)
    colour = getattr(line, "color", None) or getattr(marker, "color", None)
    if colour is None or not isinstance(colour, str):
        return None
    dash = getattr(line, "dash", None)
    symbol = getattr(marker, "symbol", None)
    mode = getattr(trace, "mode", None)
    return (trace.type, colour, dash or "solid", symbol if isinstance(symbol, str) else "circle", mode)


def _shared_styles(fig: go.Figure) -> list[str]:
    """Legend entries of different names drawn in the same style (a reader cannot tell them apart)."""
    seen: dict[tuple, str] = {}
    problems = []
    for t in fig.data:
        if t.showlegend is False or not t.name:
            continue
        style = _trace_style(t)
        if style is None:
            continue
        other = seen.setdefault(style, t.name)
        if other != t.name:
            problems.append(f"legend entries {other!r} and {t.name!r} are drawn in the same style {style[1:4]}")
    return problems


FRACTION_RANGE = [-0.03, 1.03]  # the whole range of a probability / rate / accuracy, markers at 0 and 1 not cut


def value_range(values: Any, errors: Any = None, *, pad: float = 0.15, min_span: float = 1e-3) -> list[float]:
    """A value axis range that shows the differences between ``values`` (± ``errors``): their spread plus
    ``pad`` of it on each side (at least ``min_span`` wide), not a range from 0 that flattens 0.975 against 0.99.
    For points compared with each other; draw them as markers (a bar's length would claim a zero baseline)."""
    import numpy as np

    v = np.asarray(values, dtype=float).ravel()
    e = np.zeros_like(v) if errors is None else np.nan_to_num(np.asarray(errors, dtype=float).ravel())
    lo, hi = np.nanmin(v - e), np.nanmax(v + e)
    span = max(hi - lo, min_span)
    return [float(lo - pad * span), float(hi + pad * span)]


def _plain_text(text: str) -> str:
    import re

    return re.sub(r"<[^>]+>", "", text)


def _is_diverging_but_uncentred(trace: Any) -> bool:
    import numpy as np

    z = np.asarray(trace.z, dtype=float) if trace.z is not None else np.zeros(0)
    finite = z[np.isfinite(z)]
    signed = bool(finite.size and finite.min() < 0 < finite.max())
    return signed and trace.zmid is None and trace.zmin is None


def save_html(fig: go.Figure, path: str | Path) -> Path:
    """Write the figure as a standalone page with plotly.js inlined (no network needed to view it); atomic."""
    from ..results.atomic import write_text

    return write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


IMAGE_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: go.Figure, path: str | Path, *, scale: float = 2.0) -> Path:
    """Save a figure for a paper: ``.html`` (plotly.js inlined, always available) or ``.png`` / ``.svg`` / ``.pdf``
    through kaleido (the optional extra ``pip install 'interp[figures]'``), which drives a headless Chromium: the
    system's (``chromium`` on Debian) is used when kaleido has none of its own. Written atomically."""
    from ..errors import ParameterError
    from ..results.atomic import write_bytes

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


def interval_error(table: Any, value: str) -> dict:
    """Plotly error bars (``error_y``) of a mean and its interval, from a :meth:`interp.Result.aggregate` table:
    ``value`` from ``value_ci_low`` to ``value_ci_high`` (asymmetric; a missing interval draws no bar)."""
    import numpy as np

    mean = np.asarray(table[value], dtype=float)
    up = np.asarray(table[f"{value}_ci_high"], dtype=float) - mean
    down = mean - np.asarray(table[f"{value}_ci_low"], dtype=float)
    return {"type": "data", "symmetric": False, "array": np.nan_to_num(up).tolist(),
            "arrayminus": np.nan_to_num(down).tolist(), "visible": True, "thickness": 1.5}


def interval_text(table: Any, index: str, columns: str, value: str, *, ci: float, n_boot: int, seed: int,
                  like: Any) -> Any:
    """The bootstrap interval over prompts of every cell of a heatmap of means, as hover text ``"[low, high]"``
    (``"n/a"`` where a cell has fewer than two prompts), aligned with ``like`` (the grid of means: its index and
    columns). ``table`` holds the rows averaged (one or more per prompt and cell; a prompt is one resampling unit,
    :meth:`interp.Result.aggregate`). Returns a [rows, columns] numpy array of strings."""
    import numpy as np

    from ..results.result import Result

    agg = Result(table, {}).aggregate([index, columns], value=value, ci=ci, n_boot=n_boot, seed=seed).table
    low = agg.pivot(index=index, columns=columns, values=f"{value}_ci_low").reindex(index=like.index,
                                                                                    columns=like.columns)
    high = agg.pivot(index=index, columns=columns, values=f"{value}_ci_high").reindex(index=like.index,
                                                                                      columns=like.columns)
    text = np.full(low.shape, "n/a", dtype=object)
    lo, hi = low.to_numpy(dtype=float), high.to_numpy(dtype=float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    text[ok] = [f"[{a:.4g}, {b:.4g}]" for a, b in zip(lo[ok], hi[ok])]
    return text


def interval_title(ci: float, n: int, what: str = "prompts") -> str:
    """The title line saying what the figure's intervals are."""
    return f"{ci:.0%} bootstrap interval over {n} {what}"
