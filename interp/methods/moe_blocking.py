"""Expert blocking with random controls, and the shared-only / shared + top-n routed contrast (Li et al., ACL
2025, arXiv 2505.24593, Table 2 and the expert-blocking experiment; the random-expert control is ours).

Blocking is an :class:`~interp.activations.hooks.Intervention` on the routing weights (site ``expert_weights``) built by
:func:`interp.activations.experts.block_experts_intervention`; every condition runs through the variants engine, so
hooks
never leak and conditions are batched.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations.experts import (
    ABLATIONS,
    block_experts_intervention,
    check_experts,
    keep_top_experts_intervention,
    moe_layer,
    require_moe,
)
from ..activations.hooks import Intervention
from ..activations.variants import run_variants
from ..errors import ParameterError, check_choice, check_positive_int
from ..prompts import as_prompt_set, batches, encode
from ..results.result import Result, concat_tables, make_meta
from . import metrics
from .moe import HIT_AT, PAPER
from .registry import Schema, ShardPlan, register_method

BLOCKING_SCHEMA = Schema(
    keys=("prompt_id", "condition", "control"), value="target_rr", unit="1/rank", sign="higher",
    columns={"prompt_id": "str", "condition": "str", "control": "int", "target_token": "str", "target_id": "int",
             "target_rank": "int", "target_rr": "float", "target_in_top10": "bool"},
    optional={"task": "str", "metric_value": "float"}, units={"target_rank": "rank"}, grid=("condition", None),
)


def _rank_reduce(targets: torch.Tensor, metric: Any = None, prompt_ids: Sequence[str] = ()):
    """reduce(logits, store) -> the target's rank [rows] (float), and with a user ``metric`` [rows, 2]: (rank,
    metric)."""
    def reduce(logits: torch.Tensor, _store: Any) -> torch.Tensor:
        k = logits.shape[0] // targets.shape[0]
        t = targets.to(logits.device).repeat(k)
        lp = logits.float().log_softmax(-1)
        rank = ((lp > lp.gather(-1, t[:, None])).sum(-1) + 1).double()
        if metric is None:
            return rank.cpu()
        value = metrics.score(metric, logits, t, None, prompt_ids=list(prompt_ids) * k).double()
        return torch.stack([rank, value], -1).cpu()

    return reduce


def _check_user_metric(m: Any, metric: Any) -> None:
    if metric is not None:
        metrics.check_metric(metric, vocab_size=m.info.vocab_size, device=m.device, dtype=m.dtype)


def _with_metric_meta(meta: dict[str, Any], metric: Any) -> dict[str, Any]:
    if metric is not None:
        meta.update(metric=metrics.metric_label(metric), metric_unit=metrics.unit_of(metric))
    return meta


def _run_conditions(m: Any, ps: Any, conditions: Sequence[tuple[str, int | None, Intervention]],
                    batch_size: int, max_rows: int | None, progress: bool, desc: str, metric: Any = None
                    ) -> pd.DataFrame:
    """Target rank of every prompt under the clean run and each (condition, control index, intervention)."""
    enc = encode(m, ps, targets=["target"])
    has_task = "task" in ps.fields
    rows = []
    n_batches = -(-len(ps) // batch_size)
    for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc=desc, disable=not progress):
        target = batch.targets["target"]
        ids = [ps[i]["id"] for i in batch.indices]
        clean, results = run_variants(m, batch, [c[2] for c in conditions], _rank_reduce(target, metric, ids),
                                      max_rows=max_rows)

        def measured(out: torch.Tensor, r: int) -> dict[str, Any]:
            if metric is None:
                return {"target_rank": int(out[r])}
            return {"target_rank": int(out[r, 0]), "metric_value": float(out[r, 1])}

        for r, i in enumerate(batch.indices):
            base = {"prompt_id": ps[i]["id"], **({"task": ps[i].get("task")} if has_task else {})}
            tgt = {"target_token": m.tokenizer.decode([int(target[r])]), "target_id": int(target[r])}
            rows.append({**base, "condition": "clean", "control": None, **tgt, **measured(clean, r)})
            for (name, ctrl, _), res in zip(conditions, results):
                rows.append({**base, "condition": name, "control": ctrl, **tgt, **measured(res, r)})
    table = pd.DataFrame(rows)
    if metric is not None:  # after the declared columns
        table = table[[c for c in table.columns if c != "metric_value"] + ["metric_value"]]
    table["control"] = pd.array(table["control"].tolist(), dtype="Int64")
    table["target_rr"] = 1.0 / table["target_rank"]
    table["target_in_top10"] = table["target_rank"] <= HIT_AT
    order = {pid: k for k, pid in enumerate(ps.ids)}
    table["_o"] = table["prompt_id"].map(order)
    return table.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)


def _metric_summary(t: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"n_prompts": int(t["prompt_id"].nunique())}
    for metric in ("target_rr", "target_in_top10"):
        name = "mrr" if metric == "target_rr" else "hit@10"
        for cond in t["condition"].unique():
            part = t[t["condition"] == cond]
            if cond == "control":
                per = part.groupby("control")[metric].mean()
                out[f"{name}_control_mean"] = float(per.mean())
                out[f"{name}_control_std"] = float(per.std(ddof=1)) if len(per) > 1 else 0.0
                out[f"{name}_control_min"] = float(per.min())
                out[f"{name}_control_max"] = float(per.max())
                out[f"{name}_control_each"] = [float(v) for v in per]
            else:
                out[f"{name}_{cond}"] = float(part[metric].astype(float).mean())
    return out


def blocking_summary(table: pd.DataFrame) -> dict[str, Any]:
    """MRR and HIT@10 per condition (controls: mean, std, min, max over the control sets), all and per task."""
    out = {"all": _metric_summary(table)}
    if "task" in table.columns:
        out["by_task"] = {str(k): _metric_summary(g) for k, g in table.groupby("task", sort=True)}
    return out


def _merge_blocking(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    return Result(table, {**meta, "summary": blocking_summary(table)})


def blocking_figure(result: Result, metric: str = "mrr", *, ci: float | None = None, n_boot: int = 1000,
                    seed: int = 0) -> Any:
    """MRR (or HIT@10) of the target, over all prompts and per task, as points: clean, blocked (or each keep-n
    condition), and the mean of the random controls with their std as an error bar. The axis is zoomed to the
    points' spread (:func:`interp.figures.viz.value_range`): blocking moves a near-1 MRR by hundredths, which bars
    from 0 would hide. With ``ci`` (e.g. 0.95), every point's error bar is instead its seeded bootstrap interval
    over prompts (:meth:`interp.Result.aggregate`; a prompt's control sets resampled together)."""
    import plotly.graph_objects as go

    from ..figures.viz import value_range

    check_choice("metric", metric, ("mrr", "hit@10"))
    summ = result.meta["summary"]
    groups = dict(summ.get("by_task", {})) or {"all": summ["all"]}
    if "by_task" in summ:
        groups = {"all": summ["all"], **groups}
    x = list(groups)
    fig = go.Figure()
    conds = [c for c in ("clean", "blocked") if f"{metric}_{c}" in summ["all"]]
    conds += [c for c in summ["all"] if c.startswith(f"{metric}_keep")]
    label = "MRR" if metric == "mrr" else "HIT@10"
    values, errors = [], []
    for i, c in enumerate(conds):
        key = c if c.startswith(f"{metric}_") else f"{metric}_{c}"
        name = key.removeprefix(f"{metric}_")
        ys = [groups[g].get(key) for g in x]
        values += ys
        errors += [0.0] * len(ys)
        fig.add_trace(go.Scatter(name=name, x=x, y=ys, mode="markers", marker={"size": 11, "symbol": _SYMBOLS[i % 4]},
                                 hovertemplate="%{x}<br>" + name + f" {label}=%{{y:.4f}}<extra></extra>"))
    if f"{metric}_control_mean" in summ["all"]:
        ys = [groups[g][f"{metric}_control_mean"] for g in x]
        sd = [groups[g][f"{metric}_control_std"] for g in x]
        values += ys
        errors += sd
        fig.add_trace(go.Scatter(name="random controls (mean ± std)", x=x, y=ys, mode="markers",
                                 marker={"size": 11, "symbol": "x"}, error_y={"type": "data", "array": sd},
                                 hovertemplate="%{x}<br>random controls " + label + "=%{y:.4f}<extra></extra>"))
    n = summ["all"]["n_prompts"]
    if ci is not None:
        values, errors = _interval_bars(fig, result, x, metric, ci, n_boot, seed)
    fig.update_layout(title=f"{result.method}: {label} of the target over {n} prompts (all, then per task)"
                      + ("" if ci is None else f"<br>bars: {ci:.0%} bootstrap interval over prompts"),
                      xaxis_title="prompts (all, or one task)", yaxis_title=label, scattermode="group",
                      autosize=True)
    finite = [(v, e) for v, e in zip(values, errors) if v is not None and v == v]
    if finite:
        fig.update_yaxes(range=value_range([v for v, _ in finite], [e for _, e in finite]))
    return fig


_SYMBOLS = ("circle", "diamond", "square", "triangle-up")


def _interval_bars(fig: Any, result: Result, groups: list[str], metric: str, ci: float, n_boot: int,
                   seed: int) -> tuple[list[float], list[float]]:
    """Set each condition's points (and error bars) of a blocking figure to the mean and bootstrap interval over
    prompts, per group ('all' and each task); the values and half-widths, for the axis zoom."""
    from ..figures.viz import interval_error

    col = "target_rr" if metric == "mrr" else "target_in_top10"
    parts = [result.aggregate("condition", value=col, ci=ci, n_boot=n_boot, seed=seed).table.assign(group="all")]
    if "task" in result.table.columns and len(groups) > 1:
        parts.append(result.aggregate(["task", "condition"], value=col, ci=ci, n_boot=n_boot, seed=seed).table
                     .rename(columns={"task": "group"}))
    agg = pd.concat(parts, ignore_index=True).set_index(["group", "condition"])
    values, errors = [], []
    for trace in fig.data:
        cond = "control" if str(trace.name).startswith("random controls") else trace.name
        rows = agg.loc[[(g, cond) for g in groups]]
        trace.y = rows[col].tolist()
        trace.error_y = interval_error(rows, col)
        if cond == "control":
            trace.name = f"random controls (mean, {ci:.0%} interval)"
        values += rows[col].tolist()
        errors += list(((rows[f"{col}_ci_high"] - rows[f"{col}_ci_low"]) / 2).fillna(0.0))
    return values, errors


def _control_sets(m: Any, pairs: list[tuple[int, int]], controls: int, seed: int) -> list[list[tuple[int, int]]]:
    """``controls`` random expert sets with as many experts per layer as ``pairs``, drawn from each layer's
    other experts (from all of them when the layer has too few others)."""
    rng = random.Random(seed)
    by_layer: dict[int, list[int]] = {}
    for layer, e in pairs:
        by_layer.setdefault(layer, []).append(e)
    sets = []
    for _ in range(controls):
        chosen = []
        for layer, es in sorted(by_layer.items()):
            n_exp = moe_layer(m, layer).n_experts
            pool = [e for e in range(n_exp) if e not in es]
            if len(pool) < len(es):
                pool = list(range(n_exp))
            chosen += [(layer, e) for e in sorted(rng.sample(pool, len(es)))]
        sets.append(chosen)
    return sets


def _expert_list(experts: Any) -> list[Any]:
    if isinstance(experts, Result):
        if experts.method != "expert_importance":
            raise ParameterError("Pass expert pairs, or an expert_importance view (e.g. its top rows); for an "
                                 "expert_attribution result use result.top_experts(k, task=...).")
        t = experts.table[experts.table["level"] == "expert"]
        return [(int(a), int(b)) for a, b in zip(t["layer"], t["expert"])]
    if isinstance(experts, pd.DataFrame):
        return [(int(a), int(b)) for a, b in zip(experts["layer"], experts["expert"]) if b is not pd.NA]
    if not isinstance(experts, Iterable) or isinstance(experts, (str, bytes)):
        raise ParameterError(f"experts must be a list of (layer, expert) pairs; got {type(experts).__name__}.")
    return list(experts)


@register_method("block_experts", paper=PAPER, family="moe", figure=blocking_figure, schema=BLOCKING_SCHEMA,
                 inputs="prompts", fields=("target", "task"), organism="moe", corpus="factual",
                 example={"experts": [(0, 0), (1, 1)], "controls": 2, "batch_size": 4},
                 shards=ShardPlan(merge=_merge_blocking),
                 cost="(2 + controls) forwards per prompt (batched; each starts at the first blocked layer)")
def block_experts(
    model: Any,
    prompts: Any,
    experts: Sequence[tuple[int, int]] | Result | pd.DataFrame,
    *,
    ablation: str = "zero",
    controls: int = 20,
    seed: int = 0,
    metric: str | metrics.MetricFn | None = None,
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = False,
) -> Result:
    """MRR and HIT@10 of the target before and after blocking a set of (layer, expert) pairs, and after
    blocking ``controls`` random sets with the same number of experts per layer (Li et al., ACL 2025, arXiv
    2505.24593; the random control is ours).

    Args:
        experts: (layer, expert) integer pairs, e.g. ``attribution.top_experts(10, task="country_capital")``, or an
            expert_importance view / DataFrame with layer and expert columns.
        ablation: "zero" drops the experts' contributions (other routing weights unchanged); "reroute" sets their
            router logits to -inf before top-k so tokens go to their next-best experts (renormalised as the
            architecture does).
        controls: random expert sets blocked as controls (0: none).
        seed: the seed of the random control sets.
        metric: also score every condition with this metric of the last position's logits and the target (a
            name from :data:`interp.methods.metrics.METRICS` without a contrast token, or a callable
            ``f(logits [B, vocab], target [B], None) -> [B]``); adds ``metric_value``, in ``meta["metric_unit"]``.
            None: the paper's rank measures only.
        batch_size: prompts per forward batch.
        max_rows: at most this many rows (prompt x condition) in one forward (None: from a memory budget).
        progress: show a progress bar over batches.

    Returns:
        One row per prompt x condition (clean, blocked, control with its index in ``control``): prompt_id,
        (task), condition, control, target_token, target_id, target_rank, target_rr (1 / target_rank),
        target_in_top10 (HIT@10). ``meta["summary"]``: MRR / HIT@10 per condition (controls: mean, std, min,
        max over the sets) over all prompts and per task; ``meta["blocked_experts"]``: the pairs blocked;
        ``meta["control_sets"]``: the random sets.

    Cost: (2 + controls) forwards per prompt, batched.
    """
    m = require_moe(model, "block_experts")
    ps = as_prompt_set(prompts)
    check_choice("ablation", ablation, ABLATIONS)
    pairs = check_experts(m, _expert_list(experts))
    controls = check_positive_int("controls", controls, minimum=0)
    batch_size = check_positive_int("batch_size", batch_size)
    if max_rows is not None:
        max_rows = check_positive_int("max_rows", max_rows)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed must be an integer; got {seed!r}.")
    _check_user_metric(m, metric)
    encode(m, ps, targets=["target"])  # every prompt and target checked before any forward
    sets = _control_sets(m, pairs, controls, seed)
    conditions = [("blocked", None, block_experts_intervention(m, pairs, ablation=ablation))]
    conditions += [("control", k, block_experts_intervention(m, s, ablation=ablation)) for k, s in enumerate(sets)]
    table = _run_conditions(m, ps, conditions, batch_size, max_rows, progress, "block_experts", metric)
    meta = make_meta(model=m, prompts=ps, summary=blocking_summary(table), blocked_experts=pairs, control_sets=sets)
    return Result(table, _with_metric_meta(meta, metric))


@register_method("shared_routed_contrast", paper=PAPER, family="moe", figure=blocking_figure,
                 schema=BLOCKING_SCHEMA, inputs="prompts", fields=("target", "task"), organism="moe",
                 corpus="factual", example={"keep": [0, 1], "batch_size": 4}, shards=ShardPlan(merge=_merge_blocking),
                 cost="(1 + len(keep)) forwards per prompt (batched)")
def shared_routed_contrast(model: Any, prompts: Any, *, keep: Sequence[int] | None = None,
                           metric: str | metrics.MetricFn | None = None, batch_size: int = 16,
                           max_rows: int | None = None, progress: bool = False) -> Result:
    """MRR and HIT@10 when every MoE block keeps only each token's top-n routed experts (n in ``keep``; 0 =
    the shared expert alone), as Li et al.'s Table 2 (ACL 2025, arXiv 2505.24593: shared only / shared + top-1
    / ...). Kept weights are renormalised over the kept experts where the architecture renormalises.

    Args:
        keep: numbers of routed experts each token keeps, each in 0 .. experts per token (default: 0 .. experts
            per token - 1; keeping all of them is the clean run).
        metric: also score every condition with this metric (as :func:`block_experts`); adds ``metric_value``.
        batch_size: prompts per forward batch.
        max_rows: at most this many rows (prompt x condition) in one forward (None: from a memory budget).
        progress: show a progress bar over batches.

    Returns:
        The table of :func:`block_experts`, one row per prompt x condition ("clean", "keep0", "keep1", ...;
        ``control`` is empty). ``meta["summary"]``: MRR / HIT@10 per condition, all prompts and per task.

    Cost: one forward per prompt and condition, batched.
    """
    m = require_moe(model, "shared_routed_contrast")
    ps = as_prompt_set(prompts)
    per_token = int(m.info.top_k or 0)
    keep = list(range(per_token)) if keep is None else list(keep)
    if not keep:
        raise ParameterError("keep is empty; give the numbers of routed experts to keep, e.g. [0, 1].")
    for n in keep:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= per_token:
            raise ParameterError(f"keep: {n!r} must be an integer between 0 and {per_token} (the model's experts "
                                 "per token).")
    batch_size = check_positive_int("batch_size", batch_size)
    if max_rows is not None:
        max_rows = check_positive_int("max_rows", max_rows)
    _check_user_metric(m, metric)
    encode(m, ps, targets=["target"])
    conditions = [(f"keep{n}", None, keep_top_experts_intervention(m, n)) for n in keep]
    table = _run_conditions(m, ps, conditions, batch_size, max_rows, progress, "shared_routed_contrast", metric)
    meta = make_meta(model=m, prompts=ps, summary=blocking_summary(table), shared_experts=m.info.n_shared_experts,
                     experts_per_token=per_token)
    return Result(table, _with_metric_meta(meta, metric))
