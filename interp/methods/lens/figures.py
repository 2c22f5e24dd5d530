"""Figures of the logit / tuned lens: the classic layer x position picture of one prompt, and per-layer curves
over a dataset (logit lens against tuned lens, one colour per target field). They read the table and its
statistics (:mod:`.statistics`) only."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from ...errors import ParameterError
from ...results.result import Result
from .statistics import DISTRIBUTION_METRICS, LensResult, as_summary, is_lens_table

# target fields take these colours; per-distribution metrics (KL, entropy) one neutral colour of their own, so a
# colour names one target field in every panel
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_NEUTRAL = "#333333"
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")  # one per lens x norm
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")  # one per site
_FRACTIONS = ("mean_target_prob", "accuracy", "mrr")  # drawn over their whole range [0, 1]
MAX_COLUMNS = 16  # positions a heatmap shows by default (the last ones): more cannot be read at a report's width
METRIC_TITLES = {"mean_target_prob": "target probability", "median_target_rank": "target rank (median)",
                 "mrr": "MRR", "accuracy": "top-1 accuracy", "mean_target_logit": "target logit",
                 "kl": "KL(final || lens), nats", "entropy": "entropy, nats",
                 "cross_entropy": "cross-entropy of the next token, nats"}


AXIS_TITLES = {"mean_target_prob": "probability", "median_target_rank": "rank (log scale)", "mrr": "MRR",
               "accuracy": "accuracy", "mean_target_logit": "logit", "kl": "KL (nats)", "entropy": "entropy (nats)",
               "cross_entropy": "cross-entropy (nats)"}


def _short(token: str, n: int = 8) -> str:
    text = repr(token)[1:-1]
    return text if len(text) <= n else text[: n - 1] + "…"


def lens_heatmap(result: Result, prompt_id: str | None = None, *, site: str | None = None, color: str = "prob",
                 lens: str | None = None, top_k: int | None = None, last_n: int | None = None) -> Any:
    """The classic logit-lens picture for one prompt: rows = layers (sublayer sites in depth order), columns =
    positions; each cell shows the decoded top-1 token, is coloured by its probability (``color="prob"``), by a
    target field's probability (``color="y_t"`` ..., the field's name), or by ``"kl"`` / ``"entropy"`` (nats),
    and its hover lists the top-k tokens (the first with its probability). Needs a logit_lens result; with
    positions="all" it shows the ``last_n`` last tokens (default: all, at most :data:`MAX_COLUMNS`), with "last" a
    single column. The title names the prompt, says which of how many it is, and how many positions are shown."""
    from ...figures.viz import heatmap

    table = result.table
    if not is_lens_table(table):
        raise ParameterError("lens_heatmap needs a logit_lens result (columns predicted_token, top_tokens, ...).")
    pids = list(dict.fromkeys(table["prompt_id"]))
    pid = prompt_id if prompt_id is not None else pids[0]
    t = table[table["prompt_id"] == pid]
    if t.empty:
        raise ParameterError(f"prompt_id={pid!r} is not in the result.")
    lens = lens if lens is not None else t["lens"].iloc[0]
    t = t[t["lens"] == lens]
    if site is not None:
        t = t[t["site"] == site]
        if t.empty:
            raise ParameterError(f"site={site!r} is not in the result (sites: {', '.join(table['site'].unique())}).")
    fields = list(dict.fromkeys(t["target_field"])) if "target_field" in t.columns else []
    if color in ("prob", "kl", "entropy"):
        zcol = {"prob": "predicted_prob", "kl": "kl", "entropy": "entropy"}[color]
        ztitle = {"prob": "top-1 probability", "kl": "KL(final || lens), nats", "entropy": "entropy, nats"}[color]
        if fields:  # one row per target field: the decoded distribution is the same in each
            t = t[t["target_field"] == fields[0]]
    elif color in fields:
        zcol, ztitle = "target_prob", f"p({color})"
        t = t[t["target_field"] == color]
    else:
        raise ParameterError(f"color={color!r}: use 'prob', 'kl', 'entropy' or a target field of the result "
                             f"({', '.join(fields) or 'none'}).")
    t = t.sort_values(["depth", "position"], kind="stable")
    rows = list(dict.fromkeys(zip(t["depth"], t["layer"], t["site"])))
    row_label = {r: f"L{r[1]} {r[2]}" for r in rows}
    positions = sorted(t["position"].unique())
    n_positions = len(positions)
    if last_n is not None:
        if isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1:
            raise ParameterError(f"last_n must be an integer >= 1; got {last_n!r}.")
    else:
        last_n = MAX_COLUMNS
    positions = positions[-last_n:]
    t = t[t["position"].isin(positions)]
    tokens = t.drop_duplicates("position").set_index("position")["token"]
    col_label = {p: f"{p} {_short(tokens[p], 10)}" for p in positions}
    z = [[None] * len(positions) for _ in rows]
    text = [[""] * len(positions) for _ in rows]
    hover = [[""] * len(positions) for _ in rows]
    ri = {r: i for i, r in enumerate(rows)}
    pi = {p: j for j, p in enumerate(positions)}
    for rec in t.to_dict(orient="records"):
        i, j = ri[(rec["depth"], rec["layer"], rec["site"])], pi[rec["position"]]
        z[i][j] = rec[zcol]
        text[i][j] = _short(rec["predicted_token"])
        toks = json.loads(rec["top_tokens"])
        k = min(len(toks), top_k) if top_k else len(toks)
        lines = [f"{n + 1}. {toks[n]!r}" + (f" {rec['predicted_prob']:.3f}" if n == 0 else "") for n in range(k)]
        hover[i][j] = "<br>".join(lines)
    which = f"prompt {pids.index(pid) + 1} of {len(pids)} (prompt_id=)" if len(pids) > 1 else "the only prompt"
    shown = (f"the last {len(positions)} of {n_positions} positions (last_n=)" if len(positions) < n_positions
             else f"all {n_positions} positions")
    name = pid if len(pid) <= 70 else pid[:69] + "…"
    title = (f"{lens} lens ({t['norm'].iloc[0]} norm): top token, coloured by {ztitle}"
             f"<br>{name!r}<br>{which}; {shown}")
    fig = heatmap(z, [col_label[p] for p in positions], [row_label[r] for r in rows], title=title,
                  x_title="position (input token)", y_title="layer", text=text,
                  hover=f"%{{y}} · %{{x}}<br>{ztitle}=%{{z:.3f}}<br>%{{customdata}}<extra></extra>",
                  colorbar_title=ztitle.replace(", nats", " (nats)"), diverging=False)
    fig.update_traces(customdata=hover, zmin=0, zmax=1 if zcol.endswith("_prob") else None, textfont={"size": 9})
    fig.update_layout(height=max(320, 28 * len(rows) + 190), margin={"t": 110})
    return fig


def lens_curves(*results: Any, metrics: tuple[str, ...] = ("mean_target_prob", "median_target_rank", "accuracy",
                                                           "kl"),
                target: str | list[str] | None = None, site: str | None = "resid_post",
                positions: str = "last", ci: float | None = None, n_boot: int = 1000, seed: int = 0) -> Any:
    """Per-layer curves over a dataset: one panel per metric (target probability, median target rank, top-1
    accuracy, MRR, KL in nats ...), one colour per target field (per-distribution metrics such as KL in a neutral
    colour of their own), one dash style per lens x norm (pass the logit-lens and the tuned-lens results together
    to compare them), one marker and one curve per site (``site=None`` draws every site: sublayers are never
    joined into one curve). Takes logit_lens results or
    :func:`~interp.methods.lens.lens_summary` results. ``target``: the target field(s) drawn (default: all).
    With ``ci`` (e.g. 0.95), every mean (not the median rank) gets error bars of its seeded bootstrap interval over
    prompts (:meth:`LensResult.aggregate`); a summary made with ``aggregate(ci=...)`` draws its own intervals, and a
    summary without them cannot have any (ParameterError: pass the logit_lens result)."""
    from plotly.subplots import make_subplots

    from ...figures.viz import FRACTION_RANGE, interval_error

    if not results:
        raise ParameterError("lens_curves needs at least one result.")
    summary = pd.concat([_summary(r, positions, ci, n_boot, seed) for r in results], ignore_index=True)
    for mtr in metrics:
        if mtr not in METRIC_TITLES:
            raise ParameterError(f"metric {mtr!r} is not one of {', '.join(METRIC_TITLES)}.")
    if site is not None and site in set(summary["site"]):
        summary = summary[summary["site"] == site]
    if target is None:
        fields = [f for f in dict.fromkeys(summary["target_field"]) if f]
    else:
        fields = [target] if isinstance(target, str) else list(target)
    variants = list(dict.fromkeys(zip(summary["lens"], summary["norm"])))
    sites = list(dict.fromkeys(summary.sort_values("depth", kind="stable")["site"]))
    cols = 2 if len(metrics) > 1 else 1
    nrows = (len(metrics) + cols - 1) // cols
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[METRIC_TITLES[mtr] for mtr in metrics])
    x_col = "layer" if len(sites) == 1 else "depth"
    x_title = "layer" if len(sites) == 1 else "depth (blocks)"
    shown: set[str] = set()
    for mi, mtr in enumerate(metrics):
        r, c = mi // cols + 1, mi % cols + 1
        per_target = mtr not in DISTRIBUTION_METRICS
        groups = fields if per_target else [fields[0] if fields else ""]
        for vi, (lens_name, norm) in enumerate(variants):
            for fi, f in enumerate(groups):
                for si, s in enumerate(sites):
                    g = summary[(summary["lens"] == lens_name) & (summary["norm"] == norm)
                                & (summary["target_field"] == f) & (summary["site"] == s)]
                    g = g.sort_values("depth")
                    if g.empty or mtr not in g.columns:
                        continue
                    parts = [f] if per_target else []
                    parts += [f"{lens_name} ({norm})"] + ([s] if len(sites) > 1 else [])
                    name = " · ".join(parts)
                    colour = _COLOURS[fi % len(_COLOURS)] if per_target else _NEUTRAL
                    fig.add_scatter(x=g[x_col], y=g[mtr], mode="lines+markers", name=name, legendgroup=name,
                                    showlegend=name not in shown,
                                    line={"color": colour, "dash": _DASHES[vi % len(_DASHES)]},
                                    marker={"symbol": _SYMBOLS[si % len(_SYMBOLS)], "color": colour},
                                    error_y=(interval_error(g, mtr) if f"{mtr}_ci_low" in g.columns
                                             and g[f"{mtr}_ci_low"].notna().any() else None),
                                    hovertemplate=f"{name}<br>{x_col}=%{{x}}<br>{mtr}=%{{y:.4g}}<extra></extra>",
                                    row=r, col=c)
                    shown.add(name)
        fig.update_xaxes(title_text=x_title, row=r, col=c)
        fig.update_yaxes(title_text=AXIS_TITLES.get(mtr, METRIC_TITLES[mtr]), row=r, col=c)
        if mtr == "median_target_rank":
            fig.update_yaxes(type="log", row=r, col=c)
        elif mtr in _FRACTIONS:
            fig.update_yaxes(range=FRACTION_RANGE, row=r, col=c)
    title = f"Lens per layer over {int(summary['n'].max()) if len(summary) else 0} prompts ({positions} position)"
    if ci is not None:
        title += f"<br>bars: {ci:.0%} bootstrap interval over prompts"
    fig.update_layout(title=title, height=max(330 * nrows + 80, 30 * len(shown) + 200))
    return fig


def _summary(item: Any, positions: str, ci: float | None, n_boot: int, seed: int) -> pd.DataFrame:
    """The summary a curve reads: as :func:`as_summary`, with intervals when ``ci`` is given."""
    if ci is None:
        return as_summary(item, positions)
    table = item.table if isinstance(item, Result) else item
    if isinstance(table, pd.DataFrame) and is_lens_table(table):
        meta = item.meta if isinstance(item, Result) else {}
        return LensResult(table, meta).aggregate(positions=positions, ci=ci, n_boot=n_boot, seed=seed).table
    summary = as_summary(item, positions)
    if not any(c.endswith("_ci_low") for c in summary.columns):
        raise ParameterError("ci= needs the logit_lens result itself (a summary has no per-prompt rows to "
                             "resample), or a summary made with its aggregate(ci=...).")
    return summary


def lens_figure(result: Result, kind: str = "auto", *, ci: float | None = None, **kwargs: Any) -> Any:
    """The registered figure of logit_lens: the layer x position heatmap of one prompt for results decoded at
    more than the last position, the per-layer dataset curves otherwise (``kind="heatmap"`` / ``"curves"`` to
    choose; ``ci`` given, the curves: the heatmap shows one prompt, with no interval to draw)."""
    if kind == "auto":
        kind = "curves" if bool(result.table["is_last"].all()) or ci is not None else "heatmap"
    if kind == "heatmap":
        if ci is not None:
            raise ParameterError("ci= draws intervals over prompts, which the curves average over; the heatmap "
                                 "shows one prompt.")
        return lens_heatmap(result, **kwargs)
    if kind == "curves":
        positions = "last" if bool(result.table["is_last"].any()) else "all"
        return lens_curves(result, positions=kwargs.pop("positions", positions), ci=ci, **kwargs)
    raise ParameterError(f"kind={kind!r} is not one of 'auto', 'heatmap', 'curves'.")
