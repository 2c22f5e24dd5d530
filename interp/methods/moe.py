"""MoE cross-level attribution: the log-probability increase (LPI) of the target's first token, read at layer,
head, expert and neuron level for the same prompts (Li et al., ACL 2025, arXiv 2505.24593; the LPI of Yu &
Ananiadou, EMNLP 2024, arXiv 2312.12141), and its expert importance view.

For prompt p with target first token w, every vector is decoded at the last position through the final norm
with its scale frozen at the real final residual's (sigma_fin) and its weight applied:
``logP(w | x) = log_softmax(W_U (gamma * x / sigma_fin))[w]``. With h = resid_pre, a = attn_out,
u = resid_mid, m = mlp_out of layer l:

* attn: ``logP(w | h + a) - logP(w | h)``; head h: the same with a replaced by ``z_h W_O[h]``;
* ffn: ``logP(w | u + m) - logP(w | u)``;
* expert j: ``logP(w | u + g_j E_j(x)) - logP(w | u)`` (0 when j is not in the token's top-k); shared expert: the
  same with ``sigmoid(gate) S(x)``;
* neuron k of expert j: ``logP(w | u + g_j s_k W_out[:, k]) - logP(w | u)``.

:func:`expert_attribution` returns an :class:`AttributionResult`, whose views :meth:`~AttributionResult.
expert_importance` and :meth:`~AttributionResult.top_experts` (also plain functions) rank the experts. The
per-expert recomputation lives in :mod:`interp.activations.experts`; blocking and routing statistics in
:mod:`interp.methods.moe_blocking` and :mod:`interp.methods.moe_routing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import experts
from ..activations.capture import head_outputs
from ..activations.sites import hook_name
from ..activations.variants import forward
from ..errors import ArchitectureError, ParameterError, check_positive_int
from ..model.decode import apply_final_norm, decode, norm_scale, unembed
from ..model.loading import as_model
from ..prompts import as_prompt_set, batches, encode
from ..results.result import Result, concat_tables, make_meta
from .registry import Schema, ShardPlan, register_method

LEVELS = ("layer", "head", "expert", "neuron")  # what ``levels`` selects
# the ``level`` of a row, and the ``levels`` entry that computes it
ROW_LEVELS = {"attn": "layer", "ffn": "layer", "head": "head", "expert": "expert", "shared_expert": "expert",
              "neuron": "neuron"}
HIT_AT = 10
PAPER = ("Li et al., Decoding Knowledge Attribution in Mixture-of-Experts (ACL 2025, arXiv 2505.24593); "
         "LPI from Yu & Ananiadou, Neuron-Level Knowledge Attribution in Large Language Models (EMNLP 2024, "
         "arXiv 2312.12141)")

ATTRIBUTION_SCHEMA = Schema(
    keys=("prompt_id", "layer", "component"), value="score", unit="nats", sign="higher",
    columns={"prompt_id": "str", "layer": "int", "level": "str", "component": "str", "head": "int", "expert": "int",
             "neuron": "int", "score": "float", "routing_weight": "float", "router_prob": "float",
             "selected": "bool", "neuron_sum": "float", "target_token": "str", "target_id": "int",
             "target_rank": "int"},
    optional={"task": "str"},
    units={"routing_weight": "weight", "router_prob": "probability", "neuron_sum": "nats", "target_rank": "rank"},
    grid=("layer", "component"),
)
IMPORTANCE_SCHEMA = Schema(
    keys=("task", "layer", "level", "expert"), value="score", unit="nats", sign="higher",
    columns={"task": "str", "expert_rank": "int", "layer": "int", "level": "str", "expert": "int", "score": "float",
             "neuron_sum": "float", "load": "float", "routing_weight": "float", "router_prob": "float",
             "score_std": "float", "n_prompts": "int"},
    units={"neuron_sum": "nats", "load": "share of prompts", "routing_weight": "weight",
           "router_prob": "probability", "score_std": "nats", "expert_rank": "rank"},
    grid=("layer", "expert"),
)


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
        experts.require_moe(m, f"The {wanted[0]} level")
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
class AttributionResult(Result):
    """An :func:`expert_attribution` Result, with its expert views (:meth:`expert_importance`,
    :meth:`top_experts`). Survives :meth:`Result.read` and sharded merges as this class."""

    def expert_importance(self, *, task: str | None = None) -> Result:
        """Per (layer, expert): mean LPI over the (task's) prompts and its rank; see :func:`expert_importance`."""
        return expert_importance(self, task=task)

    def top_experts(self, k: int = 10, *, task: str | None = None) -> list[tuple[int, int]]:
        """The k routed experts with the largest mean LPI; see :func:`top_experts`."""
        return top_experts(self, k, task=task)


def attribution_figure(result: Result, view: str = "layers", task: str | None = None) -> Any:
    """view: "layers" (attention vs FFN gain per layer), "experts" (layer x expert mean gain), "load" (layer x
    expert share of prompts routed at the last token), "heads" (layer x head mean gain); ``task``: that task's
    prompts only. Means are over the prompts, whose count the title gives."""
    import plotly.graph_objects as go

    from ..figures.viz import axis_label, heatmap

    t = result.table if task is None else result.table[result.table["task"] == task]
    over = f"mean over {t['prompt_id'].nunique()} prompts" + ("" if task is None else f" of {task}")
    if view == "layers":
        g = t[t["level"].isin(["attn", "ffn"])].groupby(["layer", "level"])["score"].mean().unstack()
        fig = go.Figure()
        for k, colour in (("attn", "#2166ac"), ("ffn", "#b2182b")):
            if k in g:
                fig.add_trace(go.Bar(name=k, x=list(g.index), y=g[k].tolist(), marker_color=colour,
                                     hovertemplate="layer %{x}<br>" + k + " LPI=%{y:.4g} nats<extra></extra>"))
        fig.update_layout(title=f"Attention vs FFN log-probability gain of the target per layer<br>{over}",
                          xaxis_title="layer", yaxis_title=axis_label("LPI", "nats"), barmode="group",
                          autosize=True)
        return fig
    if view == "heads":
        g = t[t["level"] == "head"].pivot_table(index="layer", columns="head", values="score", aggfunc="mean")
        return heatmap(g.values, [str(c) for c in g.columns], [str(i) for i in g.index], x_title="head",
                       y_title="layer", title=f"Head log-probability gain of the target, {over}",
                       colorbar_title=axis_label("LPI", "nats"), unit="nats", diverging=True)
    if view in ("experts", "load"):
        ex = t[t["level"].isin(["expert", "shared_expert"])].copy()
        ex["col"] = [("S" if k == "shared_expert" else f"E{int(e)}") for k, e in zip(ex["level"], ex["expert"])]
        value = "score" if view == "experts" else "selected"
        ex[value] = ex[value].astype(float)
        g = ex.pivot_table(index="layer", columns="col", values=value, aggfunc="mean")
        cols = sorted(g.columns, key=lambda c: (c == "S", int(c[1:]) if c != "S" else 0))
        g = g[cols]
        if view == "experts":
            return heatmap(g.values, cols, [str(i) for i in g.index], x_title="expert (S: shared)", y_title="layer",
                           title=f"Expert log-probability gain of the target, {over}",
                           colorbar_title=axis_label("LPI", "nats"), unit="nats", diverging=True)
        return heatmap(g.values, cols, [str(i) for i in g.index], x_title="expert (S: shared)", y_title="layer",
                       title=f"Expert load at the last token, {over}",
                       colorbar_title=axis_label("load", "share of prompts"), diverging=False)
    raise ParameterError(f"view={view!r} is not one of 'layers', 'heads', 'experts', 'load'.")


def _merge_attribution(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    return AttributionResult(table, {**meta, "summary": attribution_summary(table, meta["n_layers"])})


@register_method("expert_attribution", paper=PAPER, family="moe", figure=attribution_figure,
                 schema=ATTRIBUTION_SCHEMA, inputs="prompts", fields=("target", "task"), organism="moe",
                 corpus="factual", example={"top_neurons": 3, "batch_size": 4}, result_class=AttributionResult,
                 cost="1 forward per prompt (batched), then unembeddings only (no backward)",
                 shards=ShardPlan(merge=_merge_attribution))
def expert_attribution(
    model: Any,
    prompts: Any,
    *,
    levels: Sequence[str] | None = None,
    top_neurons: int = 10,
    batch_size: int = 16,
    progress: bool = False,
) -> AttributionResult:
    """Log-probability increase (LPI) of the target's first token at the last position, per layer (attention
    and FFN/MoE sublayer), head, routed and shared expert, and expert neuron (Li et al., ACL 2025, arXiv
    2505.24593; the LPI of Yu & Ananiadou, EMNLP 2024, arXiv 2312.12141).

    Args:
        levels: any of "layer" (rows of level attn and ffn), "head", "expert" (levels expert and shared_expert),
            "neuron"; None = all the model has (a dense model: layer and head; expert / neuron on a dense model
            is an ArchitectureError).
        top_neurons: neuron rows kept per prompt and layer (the largest gains, over the active experts and the
            shared expert).
        batch_size: prompts per forward.
        progress: show a progress bar over batches.

    Returns:
        An :class:`AttributionResult`; one row per prompt x layer x component: prompt_id, (task), layer, level
        (attn, ffn, head, expert, shared_expert, neuron), component (its label: attn, ffn, L{l}H{h}, E{e},
        shared, E{e}/N{k}, shared/N{k}), head, expert, neuron, score (the LPI, nats), routing_weight (routing
        weight g, or the shared expert's sigmoid gate), router_prob (router softmax probability), selected (in
        the token's top-k), neuron_sum (sum of the expert's neuron gains, nats), target_token, target_id,
        target_rank (in the model's own output). ``meta["summary"]``: the paper's aggregates (FFN gain,
        attention gain, per-layer efficiency, peak-gain position, layer shares, HIT@10, MRR) over all prompts
        and per task.

    Cost: one forward per prompt (batched), then unembeddings, no backward.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    levels = check_levels(m, levels)
    top_neurons = check_positive_int("top_neurons", top_neurons)
    batch_size = check_positive_int("batch_size", batch_size)
    enc = encode(m, ps, targets=["target"])
    info = m.info
    n_layers = info.n_layers
    moe_layers = [layer for layer in range(n_layers) if experts.is_moe_layer(m, layer)]
    want_experts = "expert" in levels or "neuron" in levels
    reads = []
    for layer in range(n_layers):
        reads += [hook_name(site, layer) for site in ("resid_pre", "attn_out", "resid_mid", "mlp_out")]
        if "head" in levels:
            reads.append(hook_name("z", layer))
        if want_experts and layer in moe_layers:
            reads.append(hook_name("mlp_in", layer))
    final = hook_name("resid_post", n_layers - 1)
    reads.append(final)
    has_task = "task" in ps.fields

    rows: list[dict[str, Any]] = []
    n_batches = -(-len(ps) // batch_size)
    for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="expert_attribution",
                      disable=not progress):
        logits, st = forward(m, batch, read=reads, read_fn=lambda _n, v: v[:, -1])
        target = batch.targets["target"].to(m.device)
        ranks = _ranks(logits, target).cpu()
        sigma = norm_scale(m, st[final])
        gain = lambda b_, c_, sigma=sigma, target=target: _lpi(m, b_, c_, sigma, target)  # noqa: E731
        base = [{"prompt_id": ps[i]["id"], **({"task": ps[i].get("task")} if has_task else {}),
                 "target_token": m.tokenizer.decode([int(target[r])]), "target_id": int(target[r]),
                 "target_rank": int(ranks[r])} for r, i in enumerate(batch.indices)]

        def add(r: int, layer: int, level: str, component: str, score: float, base=base, **extra: Any) -> None:
            rows.append({**base[r], "layer": layer, "level": level, "component": component, "score": float(score),
                         **extra})

        for layer in range(n_layers):
            h = st[hook_name("resid_pre", layer)]
            a = st[hook_name("attn_out", layer)]
            u = st[hook_name("resid_mid", layer)]
            mo = st[hook_name("mlp_out", layer)]
            layer_gain = gain(h, a[:, None])[:, 0], gain(u, mo[:, None])[:, 0]
            head_gain = None
            if "head" in levels:
                head_gain = gain(h, head_outputs(m, st[hook_name("z", layer)], layer))  # [B, H]
            for r in range(batch.size):
                if "layer" in levels:
                    add(r, layer, "attn", "attn", layer_gain[0][r])
                    add(r, layer, "ffn", "ffn", layer_gain[1][r])
                if head_gain is not None:
                    for hd in range(info.n_heads):
                        add(r, layer, "head", f"L{layer}H{hd}", head_gain[r, hd], head=hd)
            if want_experts and layer in moe_layers:
                _expert_rows(m, layer, st[hook_name("mlp_in", layer)], u, gain, levels, top_neurons, add,
                             batch.size)
    table = _tidy(pd.DataFrame(rows), ps, has_task)
    summary = attribution_summary(table, n_layers)
    return AttributionResult(table, make_meta(model=m, prompts=ps, summary=summary, n_layers=n_layers,
                                              n_experts=info.n_experts, experts_per_token=info.top_k))


def _expert_rows(m: Any, layer: int, x: torch.Tensor, u: torch.Tensor, gain: Any,
                 levels: tuple[str, ...], top_neurons: int, add: Any, bsz: int) -> None:
    """Expert, shared-expert and neuron rows of one MoE layer (x: block input, u: resid_mid, both [B, d])."""
    lw = experts.moe_layer(m, layer)
    eo = experts.expert_outputs(m, layer, x)
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
        v = experts.neuron_outputs(lw, x, unit, w)  # [B, F, d]
        gains_n = gain(u, v)  # [B, F]
        for r in range(bsz):
            neuron[(r, unit if isinstance(unit, str) else int(unit[r]))] = gains_n[r]
    for r in range(bsz):
        if "expert" in levels:
            for e in range(n_exp):
                ns = neuron.get((r, e))
                add(r, layer, "expert", f"E{e}", gains[r, e], expert=e, routing_weight=float(r_.dense[r, e]),
                    router_prob=float(r_.probs[r, e]), selected=bool(selected[r, e]),
                    neuron_sum=float(ns.sum()) if ns is not None else 0.0)
            if lw.has_shared:
                add(r, layer, "shared_expert", "shared", gains[r, n_exp], routing_weight=float(eo.shared_weight[r]),
                    selected=True, neuron_sum=float(neuron[(r, "shared")].sum()))
        if "neuron" in levels:
            cand = [(float(g), unit, k) for (rr, unit), gs in neuron.items() if rr == r for k, g in enumerate(gs)]
            cand.sort(key=lambda c: -c[0])
            for g, unit, k in cand[:top_neurons]:
                if unit == "shared":
                    add(r, layer, "neuron", f"shared/N{k}", g, neuron=k, routing_weight=float(eo.shared_weight[r]))
                else:
                    add(r, layer, "neuron", f"E{unit}/N{k}", g, expert=int(unit), neuron=k,
                        routing_weight=float(r_.dense[r, int(unit)]), router_prob=float(r_.probs[r, int(unit)]),
                        selected=True)


_COLUMNS = ["prompt_id", "task", "layer", "level", "component", "head", "expert", "neuron", "score",
            "routing_weight", "router_prob", "selected", "neuron_sum", "target_token", "target_id", "target_rank"]


def _tidy(table: pd.DataFrame, ps: Any, has_task: bool) -> pd.DataFrame:
    for col in _COLUMNS:
        if col not in table.columns and (col != "task" or has_task):
            table[col] = None
    cols = [c for c in _COLUMNS if c in table.columns]
    table = table[cols].copy()
    for col in ("head", "expert", "neuron"):
        table[col] = pd.array(table[col].tolist(), dtype="Int64")
    for col in ("routing_weight", "router_prob", "neuron_sum"):
        table[col] = table[col].astype(float)
    table["selected"] = pd.array([None if v is None or v != v else bool(v) for v in table["selected"]],
                                 dtype="boolean")
    for col in ("layer", "target_id", "target_rank"):
        table[col] = table[col].astype(int)
    order = {pid: i for i, pid in enumerate(ps.ids)}
    table["_o"] = table["prompt_id"].map(order)
    table = table.sort_values(["_o", "layer"], kind="stable").drop(columns="_o")
    return table.reset_index(drop=True)


# --- aggregates -------------------------------------------------------------------------------------------
def _summary_of(t: pd.DataFrame, n_layers: int) -> dict[str, Any]:
    ranks = t.groupby("prompt_id", sort=False)["target_rank"].first()
    out: dict[str, Any] = {"n_prompts": int(len(ranks)), "mrr": float((1.0 / ranks).mean()),
                           "hit@10": float((ranks <= HIT_AT).mean())}
    for level in ("ffn", "attn"):
        per_layer = t[t["level"] == level].groupby("layer")["score"].mean().reindex(range(n_layers))
        if per_layer.isna().all():
            continue
        total = float(per_layer.sum())
        out[f"{level}_gain"] = total
        out[f"{level}_efficiency"] = total / n_layers
        out[f"{level}_gain_per_layer"] = [float(v) for v in per_layer]
        out[f"{level}_layer_share"] = [float(v / total) if total else float("nan") for v in per_layer]
        out[f"{level}_peak_position"] = float((int(np.nanargmax(per_layer.values)) + 1) / n_layers)
    return out


def attribution_summary(table: pd.DataFrame, n_layers: int) -> dict[str, Any]:
    """The paper's aggregates (Table 1) over all prompts and per task: FFN gain and attention gain (sum over
    layers of the mean per-layer LPI), efficiency (gain / n_layers), peak-gain position (depth of the layer with
    the largest mean gain, as a fraction, (l + 1) / n_layers), per-layer shares, HIT@10 and MRR of the target."""
    out = {"all": _summary_of(table, n_layers)}
    if "task" in table.columns:
        out["by_task"] = {str(k): _summary_of(g, n_layers) for k, g in table.groupby("task", sort=True)}
    return out


# --- views of an attribution result -----------------------------------------------------------------------
def _is_attribution(result: Any) -> bool:
    return isinstance(result, Result) and (isinstance(result, AttributionResult)
                                           or result.method == "expert_attribution")


def expert_importance(attribution: Result, *, task: str | None = None) -> Result:
    """Expert importance, a view of an :func:`expert_attribution` result (also
    :meth:`AttributionResult.expert_importance`).

    Args:
        attribution: an expert_attribution Result with expert rows (levels including "expert").
        task: keep only this task's prompts (None: all prompts).

    Returns:
        One row per (layer, expert), largest mean LPI first: task ("all" when None), expert_rank (1 = the
        largest mean LPI), layer, level ("expert", or "shared_expert" with no expert index), expert, score (mean
        LPI over the prompts, nats), neuron_sum (mean sum of its neuron gains, nats), load (share of prompts
        that route the last token to it), routing_weight and router_prob (means), score_std, n_prompts.
        ``meta["schema"]`` declares this table, so ``top()`` and ``pivot()`` (layer x expert) work on it.

    Cost: no forward pass (reads the attribution table).
    """
    if not _is_attribution(attribution):
        raise ParameterError("expert_importance needs the Result of interp.expert_attribution.")
    t = attribution.table
    if task is not None:
        if "task" not in t.columns or task not in set(t["task"]):
            known = sorted(set(t["task"])) if "task" in t.columns else []
            raise ParameterError(f"task={task!r} is not among the result's tasks ({', '.join(map(str, known))}).")
        t = t[t["task"] == task]
    ex = t[t["level"].isin(["expert", "shared_expert"])]
    if ex.empty:
        raise ParameterError("The attribution result has no expert rows; run it with levels including 'expert'.")
    ex = ex.assign(selected=ex["selected"].astype(float), expert=ex["expert"].fillna(-1).astype(int))
    g = ex.groupby(["layer", "level", "expert"], sort=True).agg(
        score=("score", "mean"), neuron_sum=("neuron_sum", "mean"), load=("selected", "mean"),
        routing_weight=("routing_weight", "mean"), router_prob=("router_prob", "mean"),
        score_std=("score", "std"), n_prompts=("prompt_id", "nunique")).reset_index()
    g["expert"] = pd.array([None if e < 0 else e for e in g["expert"]], dtype="Int64")
    g["layer"] = g["layer"].astype(int)
    g["n_prompts"] = g["n_prompts"].astype(int)
    g = g.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    g.insert(0, "expert_rank", np.arange(1, len(g) + 1))
    g.insert(0, "task", task if task is not None else "all")
    IMPORTANCE_SCHEMA.check(g, where="expert_importance's table")
    src = attribution.meta
    meta = {k: v for k, v in src.items() if k not in ("method", "parameters", "schema", "summary")}
    meta.update(method="expert_importance", parameters={"task": task}, source_method="expert_attribution",
                source_parameters=src.get("parameters"), schema=IMPORTANCE_SCHEMA.to_dict())
    return Result(g, meta)


def top_experts(result: Result, k: int = 10, *, task: str | None = None) -> list[tuple[int, int]]:
    """The k routed experts (layer, expert) with the largest mean LPI over the (task's) prompts, from an
    expert_attribution result or its expert_importance view (the shared expert is never included). Cost: none."""
    k = check_positive_int("k", k)
    imp = expert_importance(result, task=task) if _is_attribution(result) else result
    if not isinstance(imp, Result) or imp.method != "expert_importance":
        raise ParameterError("top_experts needs an expert_attribution result or its expert_importance view.")
    routed = imp.table[imp.table["level"] == "expert"]
    if task is not None and not _is_attribution(result) and (routed["task"] != task).any():
        raise ParameterError(f"This importance table is for task {routed['task'].iloc[0]!r}, not {task!r}.")
    return [(int(a), int(b)) for a, b in zip(routed["layer"].head(k), routed["expert"].head(k))]
