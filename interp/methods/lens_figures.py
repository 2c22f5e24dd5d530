"""Figures of the logit / tuned lens: the classic layer x position picture of one prompt, and per-layer curves
over a dataset (logit lens against tuned lens, one colour per target field)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import ParameterError
from ..results import Result

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
METRIC_TITLES = {"mean_prob": "target probability", "median_rank": "target rank (median)", "mrr": "MRR",
                 "accuracy": "top-1 accuracy", "mean_logit": "target logit", "kl_bits": "KL(final || lens), bits",
                 "entropy_bits": "entropy, bits", "ce_bits": "cross-entropy of the next token, bits"}


def _short(token: str, n: int = 8) -> str:
    text = repr(token)[1:-1]
    return text if len(text) <= n else text[: n - 1] + "…"


def lens_heatmap(result: Result, prompt_id: str | None = None, *, site: str | None = None, color: str = "prob",
                 lens: str | None = None, top_k: int | None = None, last_n: int | None = None) -> Any:
    """The classic logit-lens picture for one prompt: rows = layers (sublayer sites in depth order), columns =
    positions; each cell shows the decoded top-1 token, is coloured by its probability (``color="prob"``), by a
    target field's probability (``color="target"``, ``"y_t"`` ...), or by ``"kl"`` / ``"entropy"`` (bits), and
    its hover lists the top-k tokens with probabilities. Needs a logit_lens result; with positions="all" it shows
    every token (or the ``last_n`` last ones), with "last" a single column."""
    from ..viz import heatmap

    table = result.table
    if "top1_token" not in table.columns:
        raise ParameterError("lens_heatmap needs a logit_lens result (columns top1_token, top1_prob, ...).")
    pid = prompt_id if prompt_id is not None else table["prompt_id"].iloc[0]
    t = table[table["prompt_id"] == pid]
    if t.empty:
        raise ParameterError(f"prompt_id={pid!r} is not in the result.")
    lens = lens if lens is not None else t["lens"].iloc[0]
    t = t[t["lens"] == lens]
    if site is not None:
        t = t[t["site"] == site]
        if t.empty:
            raise ParameterError(f"site={site!r} is not in the result (sites: {', '.join(table['site'].unique())}).")
    if color == "prob":
        zcol, ztitle = "top1_prob", "top-1 probability"
    elif color in ("kl", "kl_bits"):
        zcol, ztitle = "kl_bits", "KL(final || lens), bits"
    elif color in ("entropy", "entropy_bits"):
        zcol, ztitle = "entropy_bits", "entropy, bits"
    elif f"{color}_prob" in t.columns:
        zcol, ztitle = f"{color}_prob", f"p({color})"
    else:
        raise ParameterError(f"color={color!r}: use 'prob', 'kl', 'entropy' or a target field of the result.")
    k = sum(1 for c in t.columns if c.startswith("top") and c.endswith("_prob"))
    k = min(k, top_k) if top_k else k
    t = t.sort_values(["depth", "position"], kind="stable")
    rows = list(dict.fromkeys(zip(t["depth"], t["layer"], t["site"])))
    row_label = {r: f"L{r[1]} {r[2]}" for r in rows}
    positions = sorted(t["position"].unique())
    if last_n is not None:
        if isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1:
            raise ParameterError(f"last_n must be an integer >= 1; got {last_n!r}.")
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
        text[i][j] = _short(rec["top1_token"])
        lines = [f"{n}. {rec[f'top{n}_token']!r} {rec[f'top{n}_prob']:.3f}" for n in range(1, k + 1)]
        hover[i][j] = "<br>".join(lines)
    fig = heatmap(z, [col_label[p] for p in positions], [row_label[r] for r in rows],
                  title=f"{lens} lens ({t['norm'].iloc[0]} norm), prompt {pid!r}: top token, coloured by {ztitle}",
                  x_title="position (input token)", y_title="layer", text=text,
                  hover=f"%{{y}} · %{{x}}<br>{ztitle}=%{{z:.3f}}<br>%{{customdata}}<extra></extra>",
                  colorscale="Blues")
    fig.update_traces(customdata=hover, zmin=0, zmax=1 if zcol.endswith("_prob") else None)
    fig.update_layout(height=max(300, 28 * len(rows) + 150), width=max(600, 70 * len(positions) + 200))
    return fig


def _as_summary(item: Any, positions: str) -> pd.DataFrame:
    from .lens import lens_summary

    if isinstance(item, Result):
        return lens_summary(item, positions=positions).table if item.method == "logit_lens" else item.table
    if isinstance(item, pd.DataFrame):
        return lens_summary(item, positions=positions).table if "is_last" in item.columns else item
    raise ParameterError(f"lens_curves takes logit_lens results or their summaries, got {type(item).__name__}.")


def lens_curves(*results: Any, metrics: tuple[str, ...] = ("mean_prob", "median_rank", "accuracy", "kl_bits"),
                targets: list[str] | None = None, site: str | None = "resid_post", positions: str = "last") -> Any:
    """Per-layer curves over a dataset: one panel per metric (target probability, median rank, top-1 accuracy,
    MRR, KL ...), one colour per target field, one dash style per lens x norm (pass the logit-lens and the
    tuned-lens results together to compare them). Takes logit_lens results or :func:`lens_summary` results."""
    from plotly.subplots import make_subplots

    if not results:
        raise ParameterError("lens_curves needs at least one result.")
    summary = pd.concat([_as_summary(r, positions) for r in results], ignore_index=True)
    for mtr in metrics:
        if mtr not in METRIC_TITLES:
            raise ParameterError(f"metric {mtr!r} is not one of {', '.join(METRIC_TITLES)}.")
    if site is not None and site in set(summary["site"]):
        summary = summary[summary["site"] == site]
    fields = targets if targets is not None else [f for f in dict.fromkeys(summary["target"]) if f]
    variants = list(dict.fromkeys(zip(summary["lens"], summary["norm"])))
    cols = 2 if len(metrics) > 1 else 1
    nrows = (len(metrics) + cols - 1) // cols
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[METRIC_TITLES[mtr] for mtr in metrics])
    x_col = "layer" if summary["site"].nunique() == 1 else "depth"
    shown: set[str] = set()
    for mi, mtr in enumerate(metrics):
        r, c = mi // cols + 1, mi % cols + 1
        per_target = mtr not in ("kl_bits", "entropy_bits", "ce_bits")
        groups = fields if per_target else [fields[0] if fields else ""]
        for vi, (lens_name, norm) in enumerate(variants):
            for fi, f in enumerate(groups):
                g = summary[(summary["lens"] == lens_name) & (summary["norm"] == norm) & (summary["target"] == f)]
                g = g.sort_values("depth")
                if g.empty or mtr not in g.columns:
                    continue
                name = f"{f} · {lens_name} ({norm})" if per_target else f"{lens_name} ({norm})"
                colour = _COLOURS[fi % len(_COLOURS)] if per_target else _COLOURS[vi % len(_COLOURS)]
                fig.add_scatter(x=g[x_col], y=g[mtr], mode="lines+markers", name=name, legendgroup=name,
                                showlegend=name not in shown,
                                line={"color": colour, "dash": _DASHES[vi % len(_DASHES)]},
                                hovertemplate=f"{name}<br>{x_col}=%{{x}}<br>{mtr}=%{{y:.4g}}<extra></extra>",
                                row=r, col=c)
                shown.add(name)
        fig.update_xaxes(title_text=x_col, row=r, col=c)
        if mtr == "median_rank":
            fig.update_yaxes(type="log", row=r, col=c)
    fig.update_layout(title=f"Lens per layer over {int(summary['n'].max()) if len(summary) else 0} prompts "
                            f"({positions} position)", height=330 * nrows + 80)
    return fig


def lens_figure(result: Result, kind: str = "auto", **kwargs: Any) -> Any:
    """The registered figure of logit_lens: the layer x position heatmap of one prompt for positions="all"
    results, the per-layer dataset curves otherwise (``kind="heatmap"`` / ``"curves"`` to choose)."""
    if kind == "auto":
        kind = "heatmap" if result.meta.get("parameters", {}).get("positions") == "all" else "curves"
    if kind == "heatmap":
        return lens_heatmap(result, **kwargs)
    if kind == "curves":
        return lens_curves(result, **kwargs)
    raise ParameterError(f"kind={kind!r} is not one of 'auto', 'heatmap', 'curves'.")
