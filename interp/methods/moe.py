"""MoE cross-level attribution: the log-probability increase (LPI) of the target's first token, read at layer,
head, expert and neuron level for the same prompts (Li et al., ACL 2025, arXiv 2505.24593; the LPI of Yu &
Ananiadou, EMNLP 2024), and expert importance tables.

For prompt p with target first token w, every vector is decoded at the last position through the final norm
with its scale frozen at the real final residual's (sigma_fin) and its weight applied:
``logP(w | x) = log_softmax(W_U (gamma * x / sigma_fin))[w]``. With h = resid_pre, a = attn_out,
u = resid_mid, m = mlp_out of layer l:

* attn: ``logP(w | h + a) - logP(w | h)``; head h: the same with a replaced by ``z_h W_O[h]``;
* ffn: ``logP(w | u + m) - logP(w | u)``;
* expert j: ``logP(w | u + g_j E_j(x)) - logP(w | u)`` (0 when j is not in the token's top-k); shared expert: the
  same with ``sigmoid(gate) S(x)``;
* neuron k of expert j: ``logP(w | u + g_j s_k W_out[:, k]) - logP(w | u)``.

Blocking and routing statistics live in :mod:`interp.methods.moe_blocking` and :mod:`interp.methods.moe_routing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import moe
from ..capture import head_outputs
from ..decode import apply_final_norm, decode, norm_scale, unembed
from ..errors import ArchitectureError, ParameterError, check_positive_int
from ..model import as_model
from ..prompts import as_prompt_set, batches, encode
from ..registry import ShardPlan, register_method
from ..results import Result, concat_tables, make_meta
from ..variants import forward

LEVELS = ("layer", "head", "expert", "neuron")
KINDS = ("attn", "ffn", "head", "expert", "shared_expert", "neuron")
HIT_AT = 10
PAPER = ("Li et al., Decoding Knowledge Attribution in Mixture-of-Experts (ACL 2025, arXiv 2505.24593); "
         "LPI from Yu & Ananiadou, Neuron-Level Knowledge Attribution in LLMs (EMNLP 2024)")


# --- checks -----------------------------------------------------------------------------------------------
def check_levels(model: Any, levels: Sequence[str] | None) -> tuple[str, ...]:
    """The levels to compute: None -> every level the model has; expert/neuron on a dense model is an error."""
    m = as_model(model)
    if levels is None:
        levels = LEVELS if m.info.is_moe else ("layer", "head")
    if isinstance(levels, str):
        levels = (levels,)
    levels = tuple(levels)
    if not levels:
        raise ParameterError(f"levels is empty; choose from {', '.join(LEVELS)}.")
    for lv in levels:
        if lv not in LEVELS:
            raise ParameterError(f"levels: {lv!r} is not one of {', '.join(repr(x) for x in LEVELS)}.")
    wanted = [lv for lv in levels if lv in ("expert", "neuron")]
    if wanted and not m.info.is_moe:
        moe.require_moe(m, f"The {wanted[0]} level")
    if "head" in levels and "ln1_post" in dict(m.bridge.blocks[0].named_children()):
        raise ArchitectureError(
            f"The head level needs head outputs that add up to attn_out; {m.info.architecture} normalises the "
            "attention output (post-attention norm), so single heads are not additive there. Use levels=('layer',)."
        )
    return tuple(lv for lv in LEVELS if lv in levels)


def _lpi(model: Any, base: torch.Tensor, comps: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor
         ) -> torch.Tensor:
    """LPI logP(w | base + c) - logP(w | base) for base [B, d] and components comps [B, n, d] -> [B, n] (CPU).

    With the final norm's scale frozen the logits are linear in the vector: logits(base + c) = L + D_c with
    D_c = W_U (gamma * c / sigma) (bias terms once, in L). The difference is then taken in float64 as
    D_c[w] - log(sum_v softmax(L)_v exp(D_c[v])), which keeps small gains (single neurons) exact to float32
    rounding of D_c instead of the rounding of two log-probs near -10. Models with a final logit soft-cap are
    not linear there and are decoded directly.
    """
    m = as_model(model)
    idx = target[:, None, None].expand(comps.shape[0], comps.shape[1], 1)
    if getattr(m.hf_model.config, "final_logit_softcapping", None):
        lp_c = decode(m, base[:, None] + comps, norm="frozen", scale=sigma[:, None, :], output="logprobs")
        lp_b = decode(m, base, norm="frozen", scale=sigma, output="logprobs")
        return (lp_c.gather(-1, idx)[..., 0] - lp_b.gather(-1, target[:, None])).cpu()
    zero = torch.zeros((1, base.shape[-1]), dtype=base.dtype, device=base.device)
    const = unembed(m, apply_final_norm(m, zero, norm="frozen", scale=torch.ones((1, 1), device=base.device)))
    logits = unembed(m, apply_final_norm(m, base, norm="frozen", scale=sigma)).double()  # [B, V]
    d = (unembed(m, apply_final_norm(m, comps, norm="frozen", scale=sigma[:, None, :])) - const).double()
    logp = logits.log_softmax(-1)[:, None, :]
    shift = torch.logsumexp(logp + d, dim=-1) - torch.logsumexp(logp, dim=-1)  # [B, n]; exactly 0 where d = 0
    return (d.gather(-1, idx)[..., 0] - shift).float().cpu()


def _ranks(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lp = logits.float().log_softmax(-1)
    t = lp.gather(-1, target[:, None])
    return (lp > t).sum(-1) + 1


# --- the method -------------------------------------------------------------------------------------------
def attribution_figure(result: Result, kind: str = "layers", task: str | None = None) -> Any:
    """kind: "layers" (attention vs FFN gain per layer), "experts" (layer x expert mean gain), "load" (layer x
    expert share of prompts routed at the last token), "heads" (layer x head mean gain)."""
    import plotly.graph_objects as go

    from ..viz import heatmap

    t = result.table if task is None else result.table[result.table["task"] == task]
    where = "" if task is None else f" ({task})"
    if kind == "layers":
        g = t[t["kind"].isin(["attn", "ffn"])].groupby(["layer", "kind"])["score"].mean().unstack()
        fig = go.Figure()
        for k in ("attn", "ffn"):
            if k in g:
                fig.add_trace(go.Bar(name=k, x=list(g.index), y=g[k].tolist()))
        fig.update_layout(title=f"Attention vs FFN log-probability gain per layer{where}", xaxis_title="layer",
                          yaxis_title="mean LPI of the target", barmode="group")
        return fig
    if kind == "heads":
        g = t[t["kind"] == "head"].pivot_table(index="layer", columns="head", values="score", aggfunc="mean")
        return heatmap(g.values, [str(c) for c in g.columns], [str(i) for i in g.index], x_title="head",
                       y_title="layer", title=f"Head LPI (mean over prompts){where}", colorscale="RdBu", zmid=0)
    if kind in ("experts", "load"):
        ex = t[t["kind"].isin(["expert", "shared_expert"])].copy()
        ex["col"] = [("S" if k == "shared_expert" else f"E{int(e)}") for k, e in zip(ex["kind"], ex["expert"])]
        value = "score" if kind == "experts" else "selected"
        ex[value] = ex[value].astype(float)
        g = ex.pivot_table(index="layer", columns="col", values=value, aggfunc="mean")
        cols = sorted(g.columns, key=lambda c: (c == "S", int(c[1:]) if c != "S" else 0))
        g = g[cols]
        title = "Expert LPI (mean over prompts)" if kind == "experts" else "Expert load at the last token"
        return heatmap(g.values, cols, [str(i) for i in g.index], x_title="expert", y_title="layer",
                       title=title + where, colorscale="RdBu" if kind == "experts" else "Viridis",
                       zmid=0 if kind == "experts" else None)
    raise ParameterError(f"kind={kind!r} is not one of 'layers', 'heads', 'experts', 'load'.")


def _merge_attribution(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    return Result(table, {**meta, "summary": attribution_summary(table, meta["n_layers"])})


@register_method("expert_attribution", paper=PAPER, family="moe", figure=attribution_figure,
                 cost="1 forward per prompt (batched), then unembeddings only (no backward)",
                 shards=ShardPlan(merge=_merge_attribution))
def expert_attribution(
    model: Any,
    prompts: Any,
    *,
    levels: Sequence[str] | None = None,
    top_neurons: int = 10,
    batch_size: int = 16,
) -> Result:
    """Log-probability increase of the target's first token at the last position, per layer (attention and
    FFN/MoE), head, routed and shared expert, and expert neuron.

    ``levels``: any of "layer", "head", "expert", "neuron"; None = all the model has (a dense model: layer and
    head; expert/neuron on a dense model is an ArchitectureError). ``top_neurons``: neuron rows kept per prompt
    and layer (the largest gains, over the active experts and the shared expert).

    Table: one row per prompt x layer x component: prompt_id, (task), layer, kind (attn, ffn, head, expert,
    shared_expert, neuron), component, head, expert, neuron, score (the LPI), weight (routing weight g, or
    the shared expert's sigmoid gate), prob (router softmax probability), selected (in the token's top-k),
    neuron_sum (sum of the expert's neuron gains), target_rank. ``meta["summary"]``: the paper's aggregates
    (FFN gain, attention gain, per-layer efficiency, peak-gain position, layer shares, HIT@10, MRR) over all
    prompts and per task. Cost: one forward per prompt (batched), then unembeddings, no backward.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    levels = check_levels(m, levels)
    top_neurons = check_positive_int("top_neurons", top_neurons)
    batch_size = check_positive_int("batch_size", batch_size)
    enc = encode(m, ps, targets=["target"])
    info = m.info
    n_layers = info.n_layers
    moe_layers = [layer for layer in range(n_layers) if moe.is_moe_layer(m, layer)]
    want_experts = "expert" in levels or "neuron" in levels
    reads = []
    for layer in range(n_layers):
        reads += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_resid_mid",
                  f"blocks.{layer}.hook_mlp_out"]
        if "head" in levels:
            reads.append(f"blocks.{layer}.attn.hook_z")
        if want_experts and layer in moe_layers:
            reads.append(f"blocks.{layer}.mlp.hook_in")
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    reads.append(final)
    has_task = "task" in ps.fields

    rows: list[dict[str, Any]] = []
    for batch in batches(m, enc, batch_size):
        logits, st = forward(m, batch, read=reads, read_fn=lambda _n, v: v[:, -1])
        target = batch.targets["target"].to(m.device)
        ranks = _ranks(logits, target).cpu()
        sigma = norm_scale(m, st[final])
        gain = lambda b_, c_, sigma=sigma, target=target: _lpi(m, b_, c_, sigma, target)  # noqa: E731
        base = [{"prompt_id": ps[i]["id"], **({"task": ps[i].get("task")} if has_task else {}),
                 "target_rank": int(ranks[r])} for r, i in enumerate(batch.indices)]

        def add(r: int, layer: int, kind: str, component: str, score: float, base=base, **extra: Any) -> None:
            rows.append({**base[r], "layer": layer, "kind": kind, "component": component, "score": float(score),
                         **extra})

        for layer in range(n_layers):
            h = st[f"blocks.{layer}.hook_resid_pre"]
            a = st[f"blocks.{layer}.hook_attn_out"]
            u = st[f"blocks.{layer}.hook_resid_mid"]
            mo = st[f"blocks.{layer}.hook_mlp_out"]
            layer_gain = gain(h, a[:, None])[:, 0], gain(u, mo[:, None])[:, 0]
            head_gain = None
            if "head" in levels:
                head_gain = gain(h, head_outputs(m, st[f"blocks.{layer}.attn.hook_z"], layer))  # [B, H]
            for r in range(batch.size):
                if "layer" in levels:
                    add(r, layer, "attn", "attn", layer_gain[0][r])
                    add(r, layer, "ffn", "ffn", layer_gain[1][r])
                if head_gain is not None:
                    for hd in range(info.n_heads):
                        add(r, layer, "head", f"L{layer}H{hd}", head_gain[r, hd], head=hd)
            if want_experts and layer in moe_layers:
                _expert_rows(m, layer, st[f"blocks.{layer}.mlp.hook_in"], u, gain, levels, top_neurons, add,
                             batch.size)
    table = _tidy(pd.DataFrame(rows), ps, has_task)
    params = {"levels": list(levels), "top_neurons": top_neurons, "batch_size": batch_size}
    summary = attribution_summary(table, n_layers)
    return Result(table, make_meta("expert_attribution", m, ps, params, summary=summary,
                                   n_layers=n_layers, n_experts=info.n_experts, top_k=info.top_k))


def _expert_rows(m: Any, layer: int, x: torch.Tensor, u: torch.Tensor, gain: Any,
                 levels: tuple[str, ...], top_neurons: int, add: Any, bsz: int) -> None:
    """Expert, shared-expert and neuron rows of one MoE layer (x: block input, u: resid_mid, both [B, d])."""
    lw = moe.moe_layer(m, layer)
    eo = moe.expert_outputs(m, layer, x)
    r_ = eo.routing
    n_exp = lw.n_experts
    comps = [eo.routed[:, e] for e in range(n_exp)]
    if eo.shared is not None:
        comps.append(eo.shared)
    gains = gain(u, torch.stack(comps, dim=1))  # [B, E(+1)]
    selected = torch.zeros(r_.dense.shape, dtype=torch.bool).scatter(-1, r_.indices.cpu(), True)
    # neuron gains of every active unit (each top-k slot's expert, and the shared expert), batched over prompts
    slots: list[tuple[torch.Tensor | str, torch.Tensor]] = [
        (r_.indices[:, j], r_.dense.gather(-1, r_.indices[:, j:j + 1])[:, 0]) for j in range(lw.top_k)]
    if eo.shared_weight is not None:
        slots.append(("shared", eo.shared_weight))
    neuron: dict[tuple[int, int | str], torch.Tensor] = {}
    for unit, w in slots:
        v = moe.neuron_outputs(lw, x, unit, w)  # [B, F, d]
        gains_n = gain(u, v)  # [B, F]
        for r in range(bsz):
            neuron[(r, unit if isinstance(unit, str) else int(unit[r]))] = gains_n[r]
    for r in range(bsz):
        if "expert" in levels:
            for e in range(n_exp):
                ns = neuron.get((r, e))
                add(r, layer, "expert", f"E{e}", gains[r, e], expert=e, weight=float(r_.dense[r, e]),
                    prob=float(r_.probs[r, e]), selected=bool(selected[r, e]),
                    neuron_sum=float(ns.sum()) if ns is not None else 0.0)
            if lw.has_shared:
                add(r, layer, "shared_expert", "shared", gains[r, n_exp], weight=float(eo.shared_weight[r]),
                    selected=True, neuron_sum=float(neuron[(r, "shared")].sum()))
        if "neuron" in levels:
            cand = [(float(g), unit, k) for (rr, unit), gs in neuron.items() if rr == r for k, g in enumerate(gs)]
            cand.sort(key=lambda c: -c[0])
            for g, unit, k in cand[:top_neurons]:
                if unit == "shared":
                    add(r, layer, "neuron", f"shared/N{k}", g, neuron=k, weight=float(eo.shared_weight[r]))
                else:
                    add(r, layer, "neuron", f"E{unit}/N{k}", g, expert=int(unit), neuron=k,
                        weight=float(r_.dense[r, int(unit)]), prob=float(r_.probs[r, int(unit)]), selected=True)


_COLUMNS = ["prompt_id", "task", "layer", "kind", "component", "head", "expert", "neuron", "score", "weight", "prob",
            "selected", "neuron_sum", "target_rank"]


def _tidy(table: pd.DataFrame, ps: Any, has_task: bool) -> pd.DataFrame:
    for col in _COLUMNS:
        if col not in table.columns and (col != "task" or has_task):
            table[col] = None
    cols = [c for c in _COLUMNS if c in table.columns]
    table = table[cols].copy()
    for col in ("head", "expert", "neuron"):
        table[col] = pd.array(table[col].tolist(), dtype="Int64")
    for col in ("weight", "prob", "neuron_sum"):
        table[col] = table[col].astype(float)
    table["selected"] = pd.array([None if v is None or v != v else bool(v) for v in table["selected"]],
                                 dtype="boolean")
    table["layer"] = table["layer"].astype(int)
    table["target_rank"] = table["target_rank"].astype(int)
    order = {pid: i for i, pid in enumerate(ps.ids)}
    table["_o"] = table["prompt_id"].map(order)
    table = table.sort_values(["_o", "layer"], kind="stable").drop(columns="_o")
    return table.reset_index(drop=True)


# --- aggregates -------------------------------------------------------------------------------------------
def _summary_of(t: pd.DataFrame, n_layers: int) -> dict[str, Any]:
    ranks = t.groupby("prompt_id", sort=False)["target_rank"].first()
    out: dict[str, Any] = {"n_prompts": int(len(ranks)), "mrr": float((1.0 / ranks).mean()),
                           "hit@10": float((ranks <= HIT_AT).mean())}
    for kind, name in (("ffn", "ffn"), ("attn", "attn")):
        per_layer = t[t["kind"] == kind].groupby("layer")["score"].mean().reindex(range(n_layers))
        if per_layer.isna().all():
            continue
        total = float(per_layer.sum())
        out[f"{name}_gain"] = total
        out[f"{name}_efficiency"] = total / n_layers
        out[f"{name}_gain_per_layer"] = [float(v) for v in per_layer]
        out[f"{name}_layer_share"] = [float(v / total) if total else float("nan") for v in per_layer]
        out[f"{name}_peak_position"] = float((int(np.nanargmax(per_layer.values)) + 1) / n_layers)
    return out


def attribution_summary(table: pd.DataFrame, n_layers: int) -> dict[str, Any]:
    """The paper's aggregates (Table 1) over all prompts and per task: FFN gain and attention gain (sum over
    layers of the mean per-layer LPI), efficiency (gain / n_layers), peak-gain position (depth of the layer with
    the largest mean gain, as a fraction, (l + 1) / n_layers), per-layer shares, HIT@10 and MRR of the target."""
    out = {"all": _summary_of(table, n_layers)}
    if "task" in table.columns:
        out["by_task"] = {str(k): _summary_of(g, n_layers) for k, g in table.groupby("task", sort=True)}
    return out


@register_method("expert_importance", paper=PAPER, family="moe",
                 cost="none (a view of an expert_attribution result)")
def expert_importance(attribution: Result, prompts: Any = None, *, task: str | None = None) -> Result:
    """Expert importance table: per (layer, expert), the mean LPI over the (task's) prompts, the mean sum of
    its neuron gains, its load (share of prompts that route the last token to it), mean routing weight and
    probability, and its rank by mean LPI. The shared expert has kind "shared_expert" and no expert index.
    Cost: no forward pass (reads an expert_attribution result). ``prompts`` is unused (registry signature)."""
    if not isinstance(attribution, Result) or attribution.method != "expert_attribution":
        raise ParameterError("expert_importance needs the Result of interp.expert_attribution.")
    t = attribution.table
    if task is not None:
        if "task" not in t.columns or task not in set(t["task"]):
            known = sorted(set(t["task"])) if "task" in t.columns else []
            raise ParameterError(f"task={task!r} is not among the result's tasks ({', '.join(map(str, known))}).")
        t = t[t["task"] == task]
    ex = t[t["kind"].isin(["expert", "shared_expert"])]
    if ex.empty:
        raise ParameterError("The attribution result has no expert rows; run it with levels including 'expert'.")
    ex = ex.assign(selected=ex["selected"].astype(float), expert=ex["expert"].fillna(-1).astype(int))
    g = ex.groupby(["layer", "kind", "expert"], sort=True).agg(
        score=("score", "mean"), neuron_sum=("neuron_sum", "mean"), load=("selected", "mean"),
        weight=("weight", "mean"), prob=("prob", "mean"), score_std=("score", "std"),
        n_prompts=("prompt_id", "nunique")).reset_index()
    g["expert"] = pd.array([None if e < 0 else e for e in g["expert"]], dtype="Int64")
    g = g.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    g.insert(0, "rank", np.arange(1, len(g) + 1))
    g.insert(0, "task", task if task is not None else "all")
    src = attribution.meta
    meta = make_meta("expert_importance", None, None, {"task": task}, source_parameters=src.get("parameters"))
    meta.update({k: src[k] for k in ("model", "architecture", "dataset_fingerprint", "n_prompts") if k in src})
    return Result(g, meta)


def top_experts(result: Result, k: int = 10, *, task: str | None = None) -> list[tuple[int, int]]:
    """The k routed experts (layer, expert) with the largest mean LPI over the (task's) prompts, from an
    expert_attribution or expert_importance result (the shared expert is never included)."""
    k = check_positive_int("k", k)
    imp = expert_importance(result, task=task) if result.method == "expert_attribution" else result
    if imp.method != "expert_importance":
        raise ParameterError("top_experts needs an expert_attribution or expert_importance result.")
    routed = imp.table[imp.table["kind"] == "expert"]
    if task is not None and result.method == "expert_importance" and (routed["task"] != task).any():
        raise ParameterError(f"This importance table is for task {routed['task'].iloc[0]!r}, not {task!r}.")
    return [(int(a), int(b)) for a, b in zip(routed["layer"].head(k), routed["expert"].head(k))]
