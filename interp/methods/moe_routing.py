"""Routing statistics (expert load per layer, overall and per task) and head-expert correlation (Li et al., ACL
2025, arXiv 2505.24593; the correlation is our reconstruction of their head-expert analysis)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations.experts import is_moe_layer, moe_layer, require_moe
from ..activations.sites import hook_name
from ..activations.variants import forward
from ..errors import ParameterError, check_choice, check_positive_int
from ..prompts import as_prompt_set, batches, encode
from ..results.result import Result, concat_tables, make_meta
from .moe import PAPER, expert_attribution
from .registry import Schema, ShardPlan, register_method

POSITIONS = ("all", "last")
ROUTING_VALUES = ("load", "mean_routing_weight", "mean_router_prob")
ROUTING_SCHEMA = Schema(
    keys=("group", "layer", "expert"), value="load", unit="share of tokens", sign="higher",
    columns={"group": "str", "layer": "int", "expert": "int", "load": "float", "mean_routing_weight": "float",
             "mean_router_prob": "float", "n_tokens": "int"},
    units={"mean_routing_weight": "weight", "mean_router_prob": "probability", "n_tokens": "tokens"},
    grid=("layer", "expert"),
)
CORRELATION_SCHEMA = Schema(
    keys=("layer", "head", "expert_layer", "expert"), value="r_router_prob", unit="Pearson r", sign="higher",
    columns={"layer": "int", "head": "int", "expert_layer": "int", "expert": "int", "r_router_prob": "float",
             "r_gain": "float", "n_prompts": "int"},
    units={"r_gain": "Pearson r", "n_prompts": "prompts"},
    grid=("layer", "head"),
)


def routing_figure(result: Result, group: str = "all", value: str = "load") -> Any:
    """Layer x expert heatmap of the load (or mean_routing_weight, mean_router_prob) of one group, over its
    tokens (their count in the title)."""
    from ..figures.viz import axis_label, heatmap

    check_choice("value", value, ROUTING_VALUES)
    t = result.table[result.table["group"] == group]
    if t.empty:
        known = ", ".join(sorted(set(result.table["group"])))
        raise ParameterError(f"group={group!r} is not in this result ({known}).")
    g = t.pivot_table(index="layer", columns="expert", values=value, aggfunc="mean")
    where = result.meta["parameters"]["positions"]
    unit = ROUTING_SCHEMA.units.get(value, ROUTING_SCHEMA.unit)
    n_tokens = int(t["n_tokens"].iloc[0])
    return heatmap(g.values, [f"E{c}" for c in g.columns], [str(i) for i in g.index], x_title="expert",
                   y_title="layer", title=f"Expert {value} per layer: {group}, mean over {n_tokens} tokens ({where})",
                   colorbar_title=axis_label(value, unit), unit=unit, diverging=False)


def _merge_routing(parts: list[Result], meta: dict, _params: dict) -> Result:
    """Token-weighted means of the shards' per-group statistics (each shard's rows are means over its tokens)."""
    t = concat_tables(parts)
    values = list(ROUTING_VALUES)
    sums = t[values].mul(t["n_tokens"], axis=0).assign(n_tokens=t["n_tokens"])
    sums[["group", "layer", "expert"]] = t[["group", "layer", "expert"]]
    g = sums.groupby(["group", "layer", "expert"], sort=False).sum()
    out = g[values].div(g["n_tokens"].clip(lower=1), axis=0).assign(n_tokens=g["n_tokens"]).reset_index()
    order = ["all"] + sorted(set(out["group"]) - {"all"})  # as routing_stats orders its groups
    out["group"] = pd.Categorical(out["group"], order, ordered=True)
    out = out.sort_values(["group", "layer", "expert"], kind="stable").reset_index(drop=True)
    out["group"] = out["group"].astype(str)
    return Result(out[["group", "layer", "expert", *values, "n_tokens"]], meta)


@register_method("routing_stats", paper=PAPER, family="moe", figure=routing_figure, schema=ROUTING_SCHEMA,
                 inputs="prompts", fields=("task",), organism="moe", corpus="factual",
                 example={"by": "task", "batch_size": 4},
                 cost="1 forward per prompt (batched)", shards=ShardPlan(merge=_merge_routing))
def routing_stats(model: Any, prompts: Any, *, by: str | None = "task", positions: str = "all",
                  batch_size: int = 16, progress: bool = False) -> Result:
    """Expert load per layer: the share of tokens routed to each expert (in its top-k; loads sum to the experts
    per token over a layer's experts), its mean routing weight and mean router probability, over all prompts and
    per value of the prompts' field ``by`` (Li et al., ACL 2025, arXiv 2505.24593). Read from the model's own
    routing hooks (sites ``expert_indices``, ``expert_weights``, ``router_logits``).

    Args:
        by: the prompt field to group by (e.g. "task"; None: overall only).
        positions: "all" real tokens (padding excluded) or the "last" token only.
        batch_size: prompts per forward batch.
        progress: show a progress bar over batches.

    Returns:
        One row per group x layer x expert: group ("all" or the field's value), layer, expert, load (share of the
        group's tokens routed to it), mean_routing_weight (0 where not routed), mean_router_prob (router
        softmax), n_tokens (the group's tokens).

    Cost: one forward per prompt, batched.
    """
    m = require_moe(model, "routing_stats")
    ps = as_prompt_set(prompts)
    check_choice("positions", positions, POSITIONS)
    batch_size = check_positive_int("batch_size", batch_size)
    if by is not None and by not in ps.fields:
        raise ParameterError(f"by={by!r} is not a field of the prompts ({', '.join(ps.fields)}).")
    enc = encode(m, ps)
    layers = [layer for layer in range(m.info.n_layers) if is_moe_layer(m, layer)]
    sites = ("expert_indices", "expert_weights", "router_logits")
    names = [hook_name(site, layer) for layer in layers for site in sites]
    groups = ["all"] + (sorted({str(r.get(by)) for r in ps.records}) if by is not None else [])
    n_exp = {layer: moe_layer(m, layer).n_experts for layer in layers}
    acc = {(g, layer): np.zeros((3, n_exp[layer])) for g in groups for layer in layers}
    count = dict.fromkeys(groups, 0)
    n_batches = -(-len(ps) // batch_size)
    for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="routing_stats", disable=not progress):
        _, st = forward(m, batch, read=names, logits=None)
        bsz, width = batch.size, batch.width
        mask = batch.attention_mask.bool()
        if positions == "last":
            mask = torch.zeros_like(mask)
            mask[:, -1] = True
        for r, i in enumerate(batch.indices):
            gs = ["all"] + ([str(ps[i].get(by))] if by is not None else [])
            keep = mask[r].cpu()
            for g in gs:
                count[g] += int(keep.sum())
            for layer in layers:
                idx, w, p = (st[hook_name(site, layer)].reshape(bsz, width, -1)[r].cpu()[keep] for site in sites)
                sel = torch.zeros(w.shape, dtype=torch.float64).scatter(-1, idx.long(), 1.0).sum(0)
                part = np.stack([sel.numpy(), w.double().sum(0).numpy(),
                                 p.float().softmax(-1).double().sum(0).numpy()])
                for g in gs:
                    acc[(g, layer)] += part
    rows = []
    for g in groups:
        for layer in layers:
            n = max(count[g], 1)
            for e in range(n_exp[layer]):
                s = acc[(g, layer)][:, e] / n
                rows.append({"group": g, "layer": layer, "expert": e, "load": float(s[0]),
                             "mean_routing_weight": float(s[1]), "mean_router_prob": float(s[2]),
                             "n_tokens": int(count[g])})
    return Result(pd.DataFrame(rows), make_meta(model=m, prompts=ps))


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between every column of a [P, n] and every column of b [P, k] -> [n, k] (NaN where constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = a.T @ b
    den = np.sqrt((a * a).sum(0))[:, None] * np.sqrt((b * b).sum(0))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    r[den <= 1e-12 * max(float(den.max(initial=0.0)), 1.0)] = np.nan
    return r


def correlation_figure(result: Result, value: str = "r_router_prob") -> Any:
    """Heatmap of Pearson r across the prompts: heads (rows) x experts at the same or later layers (columns)."""
    from ..figures.viz import heatmap

    check_choice("value", value, ("r_router_prob", "r_gain"))
    t = result.table.copy()
    t["h"] = [f"L{a}H{b}" for a, b in zip(t["layer"], t["head"])]
    t["e"] = [f"L{a}E{b}" for a, b in zip(t["expert_layer"], t["expert"])]
    g = t.pivot_table(index="h", columns="e", values=value, aggfunc="mean", dropna=False)
    rows = sorted(g.index, key=lambda s: tuple(int(x) for x in s[1:].split("H")))
    cols = sorted(g.columns, key=lambda s: tuple(int(x) for x in s[1:].split("E")))
    g = g.loc[rows, cols]
    n = int(t["n_prompts"].iloc[0]) if len(t) else 0
    return heatmap(g.values, cols, rows, x_title="expert (layer >= the head's layer)", y_title="head (layer, head)",
                   title=f"Head-expert Pearson r ({value}) across {n} prompts", colorbar_title="Pearson r",
                   diverging=True)


def _correlation_prepare(m: Any, ps: Any, params: dict) -> dict:
    require_moe(m, "head_expert_correlation")
    if params.get("attribution_result") is not None:
        raise ParameterError("A sharded head_expert_correlation computes the attribution shard by shard; do not pass "
                             "attribution_result= (or run head_expert_correlation on it directly, without shards).")
    if len(ps) < 3:
        raise ParameterError(f"A correlation across prompts needs at least 3 prompts; got {len(ps)}.")
    return {"top_k": check_positive_int("top_k", params.get("top_k", 20)),
            "batch_size": check_positive_int("batch_size", params.get("batch_size", 16))}


def _correlation_shard(model: Any, prompts: Any, *, top_k: int = 20, batch_size: int = 16) -> Result:
    """A shard's piece of head_expert_correlation: the head- and expert-level attribution of its prompts (as a
    plain Result, so that the merge is not taken for an attribution)."""
    attr = expert_attribution(model, prompts, levels=("head", "expert"), batch_size=batch_size)
    return Result(attr.table, attr.meta)


def _correlation_merge(parts: list[Result], meta: dict, params: dict) -> Result:
    t = concat_tables(parts)
    order = list(dict.fromkeys(t["prompt_id"]))
    table = _correlation_table(t, order)
    meta = {**meta, "method": "head_expert_correlation", "parameters": params,
            "schema": CORRELATION_SCHEMA.to_dict(), "top_pairs": _top_pairs(table, params["top_k"])}
    for key in ("summary", "n_layers", "n_experts", "experts_per_token"):  # the attribution shards' fields
        meta.pop(key, None)
    return Result(table, meta)


@register_method("head_expert_correlation", paper=PAPER, family="moe", figure=correlation_figure,
                 schema=CORRELATION_SCHEMA, inputs="prompts", fields=("target",), organism="moe",
                 corpus="factual", example={"top_k": 5, "batch_size": 4},
                 shards=ShardPlan(prepare=_correlation_prepare, merge=_correlation_merge,
                                  shard_function=_correlation_shard),
                 cost="that of expert_attribution (1 forward per prompt), or none given an attribution result")
def head_expert_correlation(model: Any, prompts: Any, *, attribution_result: Result | None = None, top_k: int = 20,
                            batch_size: int = 16, progress: bool = False) -> Result:
    """Pearson r across prompts between each head's LPI at layer l and each routed expert's router
    probability (r_router_prob) and LPI (r_gain) at layers >= l, at the last position (our reconstruction of
    Li et al.'s head-expert analysis, ACL 2025, arXiv 2505.24593; they report r = 0.68).

    Args:
        attribution_result: an expert_attribution result with head and expert rows for these prompts (None: computed
            here, levels "head" and "expert").
        top_k: how many pairs ``meta["top_pairs"]`` keeps (largest r_router_prob first).
        batch_size: prompts per forward batch of the attribution computed here.
        progress: show a progress bar over the attribution's batches.

    Returns:
        One row per (head, expert) pair: layer and head (the head), expert_layer and expert (the expert, at
        expert_layer >= layer), r_router_prob, r_gain (NaN where a series is constant), n_prompts.

    Cost: that of expert_attribution (one forward per prompt), or none when ``attribution_result`` is given.
    """
    m = require_moe(model, "head_expert_correlation")
    ps = as_prompt_set(prompts)
    top_k = check_positive_int("top_k", top_k)
    if len(ps) < 3:
        raise ParameterError(f"A correlation across prompts needs at least 3 prompts; got {len(ps)}.")
    attribution = attribution_result
    if attribution is None:
        attribution = expert_attribution(m, ps, levels=("head", "expert"), batch_size=batch_size, progress=progress)
    elif not isinstance(attribution, Result) or attribution.method != "expert_attribution":
        raise ParameterError("attribution_result must be an interp.expert_attribution result.")
    t = attribution.table
    if not {"head", "expert"} <= set(t["level"]):
        raise ParameterError("The attribution result needs head and expert rows (levels 'head' and 'expert').")
    if sorted(set(t["prompt_id"])) != sorted(ps.ids):
        raise ParameterError("The attribution result was computed on other prompts than these.")
    table = _correlation_table(t, ps.ids)
    return Result(table, make_meta(model=m, prompts=ps, top_pairs=_top_pairs(table, top_k)))


def _correlation_table(t: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    heads = t[t["level"] == "head"].pivot_table(index="prompt_id", columns=["layer", "head"], values="score")
    ex = t[t["level"] == "expert"]
    probs = ex.pivot_table(index="prompt_id", columns=["layer", "expert"], values="router_prob")
    gains = ex.pivot_table(index="prompt_id", columns=["layer", "expert"], values="score")
    heads, probs, gains = heads.loc[order], probs.loc[order], gains.loc[order]
    r_prob = _pearson(heads.values.astype(float), probs.values.astype(float))
    r_gain = _pearson(heads.values.astype(float), gains.values.astype(float))
    rows = []
    for i, (hl, h) in enumerate(heads.columns):
        for j, (el, e) in enumerate(probs.columns):
            if el >= hl:
                rows.append({"layer": int(hl), "head": int(h), "expert_layer": int(el), "expert": int(e),
                             "r_router_prob": float(r_prob[i, j]), "r_gain": float(r_gain[i, j]),
                             "n_prompts": len(order)})
    return pd.DataFrame(rows)


def _top_pairs(table: pd.DataFrame, top_k: int) -> list[dict]:
    return table.dropna(subset=["r_router_prob"]).sort_values("r_router_prob", ascending=False,
                                                               kind="stable").head(top_k).to_dict(orient="records")
