"""Routing statistics (expert load per layer, overall and per task) and head-expert correlation (Li et al., ACL
2025, arXiv 2505.24593; the correlation is our reconstruction of their head-expert analysis)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import moe
from ..errors import ParameterError, check_choice, check_positive_int
from ..prompts import as_prompt_set, batches, encode
from ..registry import ShardPlan, register_method
from ..results import Result, concat_tables, make_meta
from ..variants import forward
from .moe import PAPER, expert_attribution

POSITIONS = ("all", "last")


def routing_figure(result: Result, group: str = "all", value: str = "load") -> Any:
    """Layer x expert heatmap of the load (or mean_weight, mean_prob) of one group."""
    from ..viz import heatmap

    t = result.table[result.table["group"] == group]
    if t.empty:
        known = ", ".join(sorted(set(result.table["group"])))
        raise ParameterError(f"group={group!r} is not in this result ({known}).")
    g = t.pivot_table(index="layer", columns="expert", values=value, aggfunc="mean")
    where = result.meta["parameters"]["positions"]
    return heatmap(g.values, [f"E{c}" for c in g.columns], [str(i) for i in g.index], x_title="expert",
                   y_title="layer", title=f"Expert {value} per layer ({group}, {where} positions)")


def _merge_routing(parts: list[Result], meta: dict, _params: dict) -> Result:
    """Token-weighted means of the shards' per-group statistics (each shard's rows are means over its tokens)."""
    t = concat_tables(parts)
    values = ["load", "mean_weight", "mean_prob"]
    sums = t[values].mul(t["n_tokens"], axis=0).assign(n_tokens=t["n_tokens"])
    sums[["group", "layer", "expert"]] = t[["group", "layer", "expert"]]
    g = sums.groupby(["group", "layer", "expert"], sort=False).sum()
    out = g[values].div(g["n_tokens"].clip(lower=1), axis=0).assign(n_tokens=g["n_tokens"]).reset_index()
    order = ["all"] + sorted(set(out["group"]) - {"all"})  # as routing_stats orders its groups
    out["group"] = pd.Categorical(out["group"], order, ordered=True)
    out = out.sort_values(["group", "layer", "expert"], kind="stable").reset_index(drop=True)
    out["group"] = out["group"].astype(str)
    return Result(out[["group", "layer", "expert", *values, "n_tokens"]], meta)


@register_method("routing_stats", paper=PAPER, family="moe", figure=routing_figure,
                 cost="1 forward per prompt (batched)", shards=ShardPlan(merge=_merge_routing))
def routing_stats(model: Any, prompts: Any, *, by: str | None = "task", positions: str = "all",
                  batch_size: int = 16) -> Result:
    """Expert load per layer: the share of tokens routed to each expert (in its top-k; loads sum to top_k over
    a layer's experts), its mean routing weight and mean router probability, over all prompts and per value of
    the prompts' field ``by`` (e.g. task; None: overall only). ``positions``: "all" real tokens (padding
    excluded) or the "last" token only. Read from the model's own routing hooks. Table: group, layer, expert,
    load, mean_weight, mean_prob, n_tokens. Cost: one forward per prompt, batched.
    """
    m = moe.require_moe(model, "routing_stats")
    ps = as_prompt_set(prompts)
    check_choice("positions", positions, POSITIONS)
    batch_size = check_positive_int("batch_size", batch_size)
    if by is not None and by not in ps.fields:
        raise ParameterError(f"by={by!r} is not a field of the prompts ({', '.join(ps.fields)}).")
    enc = encode(m, ps)
    layers = [layer for layer in range(m.info.n_layers) if moe.is_moe_layer(m, layer)]
    names = []
    for layer in layers:
        names += [f"blocks.{layer}.mlp.hook_expert_indices", f"blocks.{layer}.mlp.hook_expert_weights",
                  f"blocks.{layer}.mlp.gate.hook_out"]
    groups = ["all"] + (sorted({str(r.get(by)) for r in ps.records}) if by is not None else [])
    n_exp = {layer: moe.moe_layer(m, layer).n_experts for layer in layers}
    acc = {(g, layer): np.zeros((3, n_exp[layer])) for g in groups for layer in layers}
    count = dict.fromkeys(groups, 0)
    for batch in batches(m, enc, batch_size):
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
                idx = st[f"blocks.{layer}.mlp.hook_expert_indices"].reshape(bsz, width, -1)[r].cpu()[keep]
                w = st[f"blocks.{layer}.mlp.hook_expert_weights"].reshape(bsz, width, -1)[r].cpu()[keep]
                p = st[f"blocks.{layer}.mlp.gate.hook_out"].reshape(bsz, width, -1)[r].cpu()[keep].float()
                sel = torch.zeros(w.shape, dtype=torch.float64).scatter(-1, idx.long(), 1.0).sum(0)
                part = np.stack([sel.numpy(), w.double().sum(0).numpy(), p.softmax(-1).double().sum(0).numpy()])
                for g in gs:
                    acc[(g, layer)] += part
    rows = []
    for g in groups:
        for layer in layers:
            n = max(count[g], 1)
            for e in range(n_exp[layer]):
                s = acc[(g, layer)][:, e] / n
                rows.append({"group": g, "layer": layer, "expert": e, "load": float(s[0]), "mean_weight": float(s[1]),
                             "mean_prob": float(s[2]), "n_tokens": int(count[g])})
    params = {"by": by, "positions": positions, "batch_size": batch_size}
    return Result(pd.DataFrame(rows), make_meta("routing_stats", m, ps, params))


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


def correlation_figure(result: Result, value: str = "r_prob") -> Any:
    """Heatmap of Pearson r: heads (rows) x experts at the same or later layers (columns)."""
    from ..viz import heatmap

    t = result.table.copy()
    t["h"] = [f"L{a}H{b}" for a, b in zip(t["head_layer"], t["head"])]
    t["e"] = [f"L{a}E{b}" for a, b in zip(t["expert_layer"], t["expert"])]
    g = t.pivot_table(index="h", columns="e", values=value, aggfunc="mean", dropna=False)
    rows = sorted(g.index, key=lambda s: tuple(int(x) for x in s[1:].split("H")))
    cols = sorted(g.columns, key=lambda s: tuple(int(x) for x in s[1:].split("E")))
    g = g.loc[rows, cols]
    return heatmap(g.values, cols, rows, x_title="expert (layer >= head layer)", y_title="head",
                   title=f"Head-expert Pearson r ({value}) across prompts", colorscale="RdBu", zmid=0)


def _correlation_prepare(m: Any, ps: Any, params: dict) -> dict:
    moe.require_moe(m, "head_expert_correlation")
    if params.get("attribution") is not None:
        raise ParameterError("A sharded head_expert_correlation computes the attribution shard by shard; do not pass "
                             "attribution= (or run head_expert_correlation on it directly, without shards).")
    if len(ps) < 3:
        raise ParameterError(f"A correlation across prompts needs at least 3 prompts; got {len(ps)}.")
    return {"top": check_positive_int("top", params.get("top", 20)),
            "batch_size": check_positive_int("batch_size", params.get("batch_size", 16))}


def _correlation_shard(model: Any, prompts: Any, *, top: int = 20, batch_size: int = 16) -> Result:
    """A shard's piece of head_expert_correlation: the head- and expert-level attribution of its prompts."""
    return expert_attribution(model, prompts, levels=("head", "expert"), batch_size=batch_size)


def _correlation_merge(parts: list[Result], meta: dict, params: dict) -> Result:
    t = concat_tables(parts)
    order = list(dict.fromkeys(t["prompt_id"]))
    table = _correlation_table(t, order)
    meta = {**meta, "method": "head_expert_correlation", "parameters": params,
            "top_pairs": _top_pairs(table, params["top"])}
    for key in ("summary", "n_layers", "n_experts", "top_k"):  # the attribution shards' fields
        meta.pop(key, None)
    return Result(table, meta)


@register_method("head_expert_correlation", paper=PAPER, family="moe", figure=correlation_figure,
                 shards=ShardPlan(prepare=_correlation_prepare, merge=_correlation_merge,
                                  shard_function=_correlation_shard),
                 cost="that of expert_attribution (1 forward per prompt), or none given an attribution result")
def head_expert_correlation(model: Any, prompts: Any, *, attribution: Result | None = None, top: int = 20,
                            batch_size: int = 16) -> Result:
    """Pearson r across prompts between each head's LPI at layer l and each routed expert's router
    probability (r_prob) and LPI (r_gain) at layers >= l, at the last position.

    ``attribution``: an expert_attribution result with head and expert rows for these prompts (computed when
    None). Table: one row per (head, expert) pair: head_layer, head, expert_layer, expert, r_prob, r_gain,
    n_prompts (NaN r where a series is constant). ``meta["top_pairs"]``: the ``top`` pairs by r_prob.
    Cost: that of expert_attribution, or none when given.
    """
    m = moe.require_moe(model, "head_expert_correlation")
    ps = as_prompt_set(prompts)
    top = check_positive_int("top", top)
    if len(ps) < 3:
        raise ParameterError(f"A correlation across prompts needs at least 3 prompts; got {len(ps)}.")
    if attribution is None:
        attribution = expert_attribution(m, ps, levels=("head", "expert"), batch_size=batch_size)
    elif not isinstance(attribution, Result) or attribution.method != "expert_attribution":
        raise ParameterError("attribution must be an interp.expert_attribution result.")
    t = attribution.table
    if not {"head", "expert"} <= set(t["kind"]):
        raise ParameterError("The attribution result needs head and expert rows (levels 'head' and 'expert').")
    if sorted(set(t["prompt_id"])) != sorted(ps.ids):
        raise ParameterError("The attribution result was computed on other prompts than these.")
    table = _correlation_table(t, ps.ids)
    meta = make_meta("head_expert_correlation", m, ps, {"top": top, "batch_size": batch_size})
    return Result(table, {**meta, "top_pairs": _top_pairs(table, top)})


def _correlation_table(t: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    heads = t[t["kind"] == "head"].pivot_table(index="prompt_id", columns=["layer", "head"], values="score")
    ex = t[t["kind"] == "expert"]
    probs = ex.pivot_table(index="prompt_id", columns=["layer", "expert"], values="prob")
    gains = ex.pivot_table(index="prompt_id", columns=["layer", "expert"], values="score")
    heads, probs, gains = heads.loc[order], probs.loc[order], gains.loc[order]
    r_prob = _pearson(heads.values.astype(float), probs.values.astype(float))
    r_gain = _pearson(heads.values.astype(float), gains.values.astype(float))
    rows = []
    for i, (hl, h) in enumerate(heads.columns):
        for j, (el, e) in enumerate(probs.columns):
            if el >= hl:
                rows.append({"head_layer": int(hl), "head": int(h), "expert_layer": int(el), "expert": int(e),
                             "r_prob": float(r_prob[i, j]), "r_gain": float(r_gain[i, j]), "n_prompts": len(order)})
    return pd.DataFrame(rows)


def _top_pairs(table: pd.DataFrame, top: int) -> list[dict]:
    return table.dropna(subset=["r_prob"]).sort_values("r_prob", ascending=False, kind="stable").head(top).to_dict(
        orient="records")
