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
from ..errors import ArchitectureError, ParameterError, check_positive_float, check_positive_int
from ..model.decode import _norm_parts, apply_final_norm, decode, norm_scale, unembed
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


DEFAULT_BUDGET_MIB = 256  # CPU default of ``memory_budget``; on a GPU a quarter of its free memory
_LOG1P_FLOOR = -0.5  # below it (a gain above log 2) 1 + x loses digits: such entries take the logsumexp form


def budget_bytes(model: Any, memory_budget: float | None) -> int:
    """``memory_budget`` (MiB, None: the default) in bytes."""
    if memory_budget is not None:
        return int(check_positive_float("memory_budget", memory_budget) * 2**20)
    device = as_model(model).device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    return DEFAULT_BUDGET_MIB * 2**20


class _Decoder:
    """LPI of vectors added to one batch's base vectors at the last position (interp.methods.moe's kernel).

    The final norm's scale is frozen (``sigma`` [B, 1], of the real final residual), so the logits are linear in
    the vector: logits(base + c) = L + D_c with D_c = W_U (gamma * c / sigma) (the bias terms once, in L; for a
    LayerNorm model c is centred first). The
    gain of c for target w is then, with p = softmax(L),

        logP(w | base + c) - logP(w | base) = -log1p(sum_v p_v expm1(D_c[v] - D_c[w])),

    float32 throughout: the v = w term is exactly 0, a component that barely moves the logits gives a sum of
    small terms each computed to relative float32 precision (so a 1e-7-nat neuron gain keeps its digits), and a
    zero component gives exactly 0. Entries whose sum is not finite (a shift above ~88 nats) or below -0.5 (a
    gain above log 2, where 1 + x cancels) take the logsumexp form D_c[w] - logsumexp(L + D_c) + logsumexp(L),
    whose float32 error (~1e-7 of the logits' size) is small against such gains. Every [rows, n, vocab] tensor is
    cut into chunks of at most ``budget`` bytes. A model with a final logit soft-cap is not linear there: it is
    decoded directly (log-prob of base + c minus that of base), in the same chunks.
    """

    def __init__(self, model: Any, sigma: torch.Tensor, target: torch.Tensor, budget: int) -> None:
        self.m = as_model(model)
        self.sigma = sigma.float()  # [B, 1]
        self.target = target
        self.budget = budget
        self.softcap = bool(getattr(self.m.hf_model.config, "final_logit_softcapping", None))

    def shift(self, vectors: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """D [..., V] (float32): the change of the logits when ``vectors`` [..., d] are added, norm scale ``scale``:
        the linear part only (norm weight, unembedding matrix), so a zero vector gives exactly 0 (no bias is added
        and taken off again)."""
        kind, weight, _, _ = _norm_parts(self.m)
        x = vectors.float()
        if kind == "layernorm":
            x = x - x.mean(dim=-1, keepdim=True)
        w_u = self.m.hf_model.get_output_embeddings().weight
        return torch.nn.functional.linear((x / scale.float() * weight.float()).to(w_u.dtype), w_u).float()

    def base(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The base vectors x [B, d]: their logits L, p = softmax(L) and logsumexp(L) (float32)."""
        logits = unembed(self.m, apply_final_norm(self.m, x, norm="frozen", scale=self.sigma)).float()
        return {"x": x, "logits": logits, "p": logits.softmax(-1), "lse": logits.logsumexp(-1)}

    def _plan(self, n_rows: int, n: int, vocab: int, width: int) -> tuple[int, int]:
        """(rows, components) per chunk so that a chunk's tensors fit the budget: per (row, component) a float32
        vocabulary row and the final norm's two [.., d] temporaries, and as much again per component (the
        shared decoded directions of the neuron level)."""
        each = 4 * vocab + 8 * width
        if each * (n_rows + 1) <= self.budget:
            return n_rows, max(1, min(n, self.budget // (each * (n_rows + 1))))
        return max(1, self.budget // each - 1), 1

    def _kernel(self, d: torch.Tensor, rows: torch.Tensor, base: dict[str, torch.Tensor],
                redo: Any) -> torch.Tensor:
        """Gains [r, c] from the logit shifts d [r, c, V] (overwritten) of prompts ``rows`` [r];
        ``redo(i, j)`` gives the shifts [m, V] of entries (i, j) again, for the logsumexp form."""
        t = self.target[rows]
        dw = d.gather(-1, t[:, None, None].expand(-1, d.shape[1], 1))[..., 0]  # [r, c]
        x = d.sub_(dw[..., None]).expm1_().mul_(base["p"][rows][:, None, :]).sum(-1)
        gain = -torch.log1p(x)
        bad = ~torch.isfinite(x) | (x < _LOG1P_FLOOR)
        if bool(bad.any()):
            i, j = bad.nonzero(as_tuple=True)
            dd = redo(i, j)  # [m, V]
            r = rows[i]
            gain[i, j] = dw[i, j] - (base["logits"][r] + dd).logsumexp(-1) + base["lse"][r]
        return gain

    def gains(self, base: dict[str, torch.Tensor], comps: torch.Tensor, rows: torch.Tensor | None = None
              ) -> torch.Tensor:
        """LPI of components comps [R, n, d] added to the base of prompts ``rows`` [R] (default: all) -> [R, n]."""
        n_rows, n = comps.shape[:2]
        rows = torch.arange(n_rows, device=comps.device) if rows is None else rows
        out = torch.empty((n_rows, n), dtype=torch.float32, device=comps.device)
        vocab = base["logits"].shape[-1]
        rg, cg = self._plan(n_rows, n, vocab, comps.shape[-1])
        for r0 in range(0, n_rows, rg):
            rr = slice(r0, r0 + rg)
            sig = self.sigma[rows[rr]][:, None, :]  # [r, 1, 1]
            for c0 in range(0, n, cg):
                cc = slice(c0, c0 + cg)
                part = comps[rr, cc]
                if self.softcap:
                    out[rr, cc] = self._direct(base, rows[rr], part)
                    continue
                out[rr, cc] = self._kernel(self.shift(part, sig), rows[rr], base,
                                           lambda i, j, part=part, sig=sig: self.shift(part[i, j], sig[i, 0]))
        return out

    def unit_gains(self, base: dict[str, torch.Tensor], rows: torch.Tensor, coef: torch.Tensor, w_out: torch.Tensor
                   ) -> torch.Tensor:
        """LPI of each neuron k of one expert for the prompts ``rows`` [R] routed to it: the vector
        coef[r, k] * w_out[:, k] (coef = gate x activation [R, F], w_out [d, F]) -> [R, F].

        The decoded direction W_U (gamma * w_out[:, k]) is the same for every prompt, so it is computed once per
        neuron chunk and scaled per prompt by coef / sigma (no [R, F, d] vectors, one [F, V] product per expert
        instead of one per prompt)."""
        n_rows, width = coef.shape
        out = torch.empty((n_rows, width), dtype=torch.float32, device=coef.device)
        if self.softcap:  # not linear: the vectors themselves, 64 neurons at a time
            for f0 in range(0, width, 64):
                ff = slice(f0, f0 + 64)
                out[:, ff] = self.gains(base, coef[:, ff, None] * w_out[:, ff].T[None], rows)
            return out
        scaled = coef.float() / self.sigma[rows]  # [R, F]
        one = torch.ones((1, 1), device=coef.device)
        rg, cg = self._plan(n_rows, width, base["logits"].shape[-1], w_out.shape[0])
        for f0 in range(0, width, cg):
            ff = slice(f0, f0 + cg)
            directions = self.shift(w_out[:, ff].T, one)  # [c, V]
            for r0 in range(0, n_rows, rg):
                rr = slice(r0, r0 + rg)
                sc = scaled[rr, ff]
                d = sc[:, :, None] * directions[None]
                out[rr, ff] = self._kernel(d, rows[rr], base,
                                           lambda i, j, sc=sc, dirs=directions: sc[i, j, None] * dirs[j])
        return out

    def _direct(self, base: dict[str, torch.Tensor], rows: torch.Tensor, comps: torch.Tensor) -> torch.Tensor:
        sig = self.sigma[rows]
        t = self.target[rows]
        lp_c = decode(self.m, base["x"][rows][:, None] + comps, norm="frozen", scale=sig[:, None, :],
                      output="logprobs")
        lp_b = decode(self.m, base["x"][rows], norm="frozen", scale=sig, output="logprobs")
        return lp_c.gather(-1, t[:, None, None].expand(-1, comps.shape[1], 1))[..., 0] - lp_b.gather(-1, t[:, None])


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


def attribution_figure(result: Result, view: str = "layers", task: str | None = None, *, ci: float | None = None,
                       n_boot: int = 1000, seed: int = 0) -> Any:
    """view: "layers" (attention vs FFN gain per layer), "experts" (layer x expert mean gain), "load" (layer x
    expert share of prompts routed at the last token), "heads" (layer x head mean gain); ``task``: that task's
    prompts only. Means are over the prompts, whose count the title gives. With ``ci`` (e.g. 0.95), the seeded
    bootstrap interval over prompts (:meth:`interp.Result.aggregate`): error bars on the layers view, in the
    hover of the heatmaps."""
    import plotly.graph_objects as go

    from ..figures.viz import axis_label, heatmap, interval_error, interval_text, interval_title

    t = result.table if task is None else result.table[result.table["task"] == task]
    n = t["prompt_id"].nunique()
    over = f"mean over {n} prompts" + ("" if task is None else f" of {task}")
    if ci is not None:
        over += ("; bars: " if view == "layers" else "; hover: ") + interval_title(ci, n)

    def hover(cells: pd.DataFrame, g: pd.DataFrame, value: str, unit: str) -> dict[str, Any]:
        if ci is None:
            return {}
        return {"customdata": interval_text(cells, "layer", "col", value, ci=ci, n_boot=n_boot, seed=seed, like=g),
                "hover": f"layer=%{{y}}<br>%{{x}}<br>{value}=%{{z:.4g}} {unit}<br>{ci:.0%} interval "
                         "%{customdata}<extra></extra>"}

    if view == "layers":
        rows = t[t["level"].isin(["attn", "ffn"])]
        g = rows.groupby(["layer", "level"])["score"].mean().unstack()
        bars = None
        if ci is not None:
            bars = Result(rows, {}).aggregate(["level", "layer"], value="score", ci=ci, n_boot=n_boot,
                                              seed=seed).table.set_index(["level", "layer"])
        fig = go.Figure()
        for k, colour in (("attn", "#2166ac"), ("ffn", "#b2182b")):
            if k in g:
                error = None if bars is None else interval_error(bars.loc[k].reindex(g.index).assign(
                    score=g[k].to_numpy()), "score")
                fig.add_trace(go.Bar(name=k, x=list(g.index), y=g[k].tolist(), marker_color=colour, error_y=error,
                                     hovertemplate="layer %{x}<br>" + k + " LPI=%{y:.4g} nats<extra></extra>"))
        fig.update_layout(title=f"Attention vs FFN log-probability gain of the target per layer<br>{over}",
                          xaxis_title="layer", yaxis_title=axis_label("LPI", "nats"), barmode="group",
                          autosize=True)
        return fig
    if view == "heads":
        cells = t[t["level"] == "head"].assign(col=lambda d: d["head"])
        g = cells.pivot_table(index="layer", columns="col", values="score", aggfunc="mean")
        return heatmap(g.values, [str(c) for c in g.columns], [str(i) for i in g.index], x_title="head",
                       y_title="layer", title=f"Head log-probability gain of the target, {over}",
                       colorbar_title=axis_label("LPI", "nats"), unit="nats", diverging=True,
                       **hover(cells, g, "score", "nats"))
    if view in ("experts", "load"):
        cells = t[t["level"].isin(["expert", "shared_expert"])].copy()
        cells["col"] = [("S" if k == "shared_expert" else f"E{int(e)}")
                        for k, e in zip(cells["level"], cells["expert"])]
        value = "score" if view == "experts" else "selected"
        cells[value] = cells[value].astype(float)
        g = cells.pivot_table(index="layer", columns="col", values=value, aggfunc="mean")
        cols = sorted(g.columns, key=lambda c: (c == "S", int(c[1:]) if c != "S" else 0))
        g = g[cols]
        if view == "experts":
            return heatmap(g.values, cols, [str(i) for i in g.index], x_title="expert (S: shared)", y_title="layer",
                           title=f"Expert log-probability gain of the target, {over}",
                           colorbar_title=axis_label("LPI", "nats"), unit="nats", diverging=True,
                           **hover(cells, g, "score", "nats"))
        return heatmap(g.values, cols, [str(i) for i in g.index], x_title="expert (S: shared)", y_title="layer",
                       title=f"Expert load at the last token, {over}",
                       colorbar_title=axis_label("load", "share of prompts"), diverging=False,
                       **hover(cells, g, "selected", "(share of prompts)"))
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
    memory_budget: float | None = None,
    progress: bool = False,
) -> AttributionResult:
    """Log-probability increase (LPI) of the target's first token at the last position, per layer (attention
    and FFN/MoE sublayer), head, routed and shared expert, and expert neuron (Li et al., ACL 2025, arXiv
    2505.24593; the LPI of Yu & Ananiadou, EMNLP 2024, arXiv 2312.12141).

    Args:
        levels: any of "layer" (rows of level attn and ffn), "head", "expert" (levels expert and shared_expert),
            "neuron"; None = all the model has (a dense model: layer and head; expert / neuron on a dense model
            is an ArchitectureError). Only the requested levels are computed.
        top_neurons: neuron rows kept per prompt and layer (the largest gains, over the active experts and the
            shared expert).
        batch_size: prompts per forward.
        memory_budget: MiB that the decoding's largest intermediate tensors ([prompts, components, vocab]
            logit shifts, chunked to fit) may take, whatever the expert count; None: 256 MiB on CPU, a quarter
            of the free memory on a GPU. It changes the chunking only, not the results (beyond float32
            reordering); however small, one component of one prompt is decoded at a time.
        progress: show a progress bar over batches.

    Returns:
        An :class:`AttributionResult`; one row per prompt x layer x component: prompt_id, (task), layer, level
        (attn, ffn, head, expert, shared_expert, neuron), component (its label: attn, ffn, L{l}H{h}, E{e},
        shared, E{e}/N{k}, shared/N{k}), head, expert, neuron, score (the LPI, nats; exactly 0 for an expert
        outside the token's top-k), routing_weight (routing weight g, or the shared expert's sigmoid gate),
        router_prob (router softmax probability), selected (in the token's top-k), neuron_sum (sum of the
        expert's neuron gains, nats: filled only when ``levels`` includes "neuron" as well as "expert", since
        only the neuron pass computes it; NaN otherwise), target_token, target_id, target_rank (in the model's
        own output). ``meta["summary"]``: the paper's aggregates (FFN gain, attention gain, per-layer
        efficiency, peak-gain position, layer shares, HIT@10, MRR) over all prompts and per task.

    Cost: one forward per prompt (batched), then unembeddings, no backward: per layer one base decode per
    prompt for each of resid_pre / resid_mid that a level needs, one per component (2 for the layer level,
    n_heads for heads, top-k + shared for experts: unselected experts are not decoded); the neuron level decodes
    each active expert's neuron directions once per batch ([F, vocab] per routed expert and per shared expert,
    shared by the prompts routed to it) and scales them per prompt.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    levels = check_levels(m, levels)
    top_neurons = check_positive_int("top_neurons", top_neurons)
    batch_size = check_positive_int("batch_size", batch_size)
    budget = budget_bytes(m, memory_budget)
    enc = encode(m, ps, targets=["target"])
    info = m.info
    n_layers = info.n_layers
    moe_layers = [layer for layer in range(n_layers) if experts.is_moe_layer(m, layer)]
    want_layer, want_head = "layer" in levels, "head" in levels
    want_experts = "expert" in levels or "neuron" in levels
    sites: dict[int, list[str]] = {}
    for layer in range(n_layers):
        need = set()
        if want_layer:
            need |= {"resid_pre", "attn_out", "resid_mid", "mlp_out"}
        if want_head:
            need |= {"resid_pre", "z"}
        if want_experts and layer in moe_layers:
            need |= {"resid_mid", "mlp_in"}
        sites[layer] = sorted(need)
    final = hook_name("resid_post", n_layers - 1)
    reads = [hook_name(site, layer) for layer in range(n_layers) for site in sites[layer]] + [final]
    has_task = "task" in ps.fields

    blocks: list[pd.DataFrame] = []
    n_batches = -(-len(ps) // batch_size)
    with torch.no_grad():  # inference only: nothing here needs a graph
        for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="expert_attribution",
                          disable=not progress):
            logits, st = forward(m, batch, read=reads, read_fn=lambda _n, v: v[:, -1])
            target = batch.targets["target"].to(m.device)
            dec = _Decoder(m, norm_scale(m, st[final]), target, budget)
            bsz = batch.size
            ranks = _ranks(logits, target).cpu().numpy()
            prompt_cols: dict[str, np.ndarray] = {
                "prompt_id": np.array([ps[i]["id"] for i in batch.indices], dtype=object),
                "target_token": np.array([m.tokenizer.decode([int(t)]) for t in target], dtype=object),
                "target_id": target.cpu().numpy(), "target_rank": ranks}
            if has_task:
                prompt_cols["task"] = np.array([ps[i].get("task") for i in batch.indices], dtype=object)

            def add(r: np.ndarray, layer: int, level: str, component: list[str], score: Any,
                    prompt_cols=prompt_cols, **extra: Any) -> None:
                cols = {k: v[r] for k, v in prompt_cols.items()}
                cols.update(layer=np.full(len(r), layer), level=level, component=component,
                            score=np.asarray(score, dtype=float), **extra)
                blocks.append(_block(cols))

            everyone = np.arange(bsz)
            for layer in range(n_layers):
                get = lambda site, layer=layer, st=st: st[hook_name(site, layer)]  # noqa: E731
                h_comps, u_comps = [], []
                if want_layer:
                    h_comps.append(get("attn_out")[:, None])
                    u_comps.append(get("mlp_out")[:, None])
                if want_head:
                    h_comps.append(head_outputs(m, get("z"), layer))  # [B, H, d]
                moe = want_experts and layer in moe_layers
                eo = None
                if moe and "expert" in levels:
                    eo = experts.expert_outputs(m, layer, get("mlp_in"))
                    u_comps.append(eo.slots)  # [B, k, d]
                    if eo.shared is not None:
                        u_comps.append(eo.shared[:, None])
                h_gain = dec.gains(dec.base(get("resid_pre")), torch.cat(h_comps, 1)).cpu() if h_comps else None
                bu = dec.base(get("resid_mid")) if (u_comps or moe) else None
                u_gain = dec.gains(bu, torch.cat(u_comps, 1)).cpu() if u_comps else None
                if want_layer:
                    add(everyone, layer, "attn", ["attn"] * bsz, h_gain[:, 0])
                    add(everyone, layer, "ffn", ["ffn"] * bsz, u_gain[:, 0])
                if want_head:
                    n_h = info.n_heads
                    hg = h_gain[:, int(want_layer):].numpy()
                    add(np.repeat(everyone, n_h), layer, "head",
                        [f"L{layer}H{hd}" for _ in range(bsz) for hd in range(n_h)], hg.reshape(-1),
                        head=np.tile(np.arange(n_h), bsz))
                if moe:
                    _moe_rows(m, layer, get("mlp_in"), eo, u_gain[:, int(want_layer):] if eo is not None else None,
                              bu, dec, levels, top_neurons, add, bsz)
    table = _tidy(pd.concat(blocks, ignore_index=True), ps)
    summary = attribution_summary(table, n_layers)
    return AttributionResult(table, make_meta(model=m, prompts=ps, summary=summary, n_layers=n_layers,
                                              n_experts=info.n_experts, experts_per_token=info.top_k))


def _moe_rows(m: Any, layer: int, x: torch.Tensor, eo: Any, slot_gain: torch.Tensor | None,
              bu: dict[str, torch.Tensor], dec: _Decoder, levels: tuple[str, ...], top_neurons: int, add: Any,
              bsz: int) -> None:
    """Expert, shared-expert and neuron rows of one MoE layer (x: block input [B, d]; eo: its expert outputs when
    the expert level is asked, slot_gain [B, k (+1 shared)] their gains; bu: the resid_mid base)."""
    lw = experts.moe_layer(m, layer)
    r_ = eo.routing if eo is not None else experts.route(lw, x)
    n_exp, k = lw.n_experts, r_.indices.shape[-1]
    idx = r_.indices.cpu()
    everyone = np.arange(bsz)
    sw = experts.shared_weight(lw, x).float().cpu() if lw.has_shared else None
    neuron_sum = None
    if "neuron" in levels:  # every active unit's neuron gains: each routed expert once for the prompts it got
        width = lw.expert_width
        per_slot = torch.zeros((bsz, k, width))
        for e in torch.unique(r_.indices).tolist():
            tok, slot = (r_.indices == e).nonzero(as_tuple=True)
            coef = r_.dense[tok, e][:, None] * experts.expert_hidden(lw, x[tok], e)
            per_slot[tok.cpu(), slot.cpu()] = dec.unit_gains(bu, tok, coef, lw.down[e]).cpu()
        cand = [per_slot.reshape(bsz, k * width)]
        if lw.has_shared:
            coef = experts.shared_weight(lw, x)[:, None] * experts.shared_hidden(lw, x)
            shared_g = dec.unit_gains(bu, torch.arange(bsz, device=x.device), coef, lw.shared_down_proj).cpu()
            cand.append(shared_g)
        neuron_sum = torch.zeros((bsz, n_exp)).scatter(-1, idx, per_slot.sum(-1))
    if "expert" in levels:
        score = torch.zeros((bsz, n_exp)).scatter(-1, idx, slot_gain[:, :k])
        selected = torch.zeros((bsz, n_exp), dtype=torch.bool).scatter(-1, idx, True)
        add(np.repeat(everyone, n_exp), layer, "expert", [f"E{e}" for _ in range(bsz) for e in range(n_exp)],
            score.reshape(-1).numpy(), expert=np.tile(np.arange(n_exp), bsz),
            routing_weight=r_.dense.float().cpu().reshape(-1).numpy(),
            router_prob=r_.probs.float().cpu().reshape(-1).numpy(), selected=selected.reshape(-1).numpy(),
            neuron_sum=neuron_sum.reshape(-1).numpy() if neuron_sum is not None else np.full(bsz * n_exp, np.nan))
        if lw.has_shared:
            add(everyone, layer, "shared_expert", ["shared"] * bsz, slot_gain[:, k].numpy(),
                routing_weight=sw.numpy(), selected=np.ones(bsz, dtype=bool),
                neuron_sum=shared_g.sum(-1).numpy() if neuron_sum is not None else np.full(bsz, np.nan))
    if "neuron" in levels:
        gains = torch.cat(cand, dim=-1)  # [B, k F (+ Fs)]: slot order, then the shared expert
        order = torch.sort(gains, dim=-1, descending=True, stable=True).indices[:, :top_neurons]
        n_top = order.shape[1]
        col = order.numpy()
        g = gains.gather(-1, order).numpy()
        routed = col < k * width
        slot = np.where(routed, col // width, 0)
        unit = np.where(routed, idx.numpy()[everyone[:, None], slot], -1)
        neuron = np.where(routed, col % width, col - k * width)
        dense_w = r_.dense.float().cpu().numpy()
        probs = r_.probs.float().cpu().numpy()
        rows = np.repeat(everyone, n_top)
        u_, routed_ = unit.reshape(-1), routed.reshape(-1)
        add(rows, layer, "neuron",
            [f"E{e}/N{n}" if rr else f"shared/N{n}" for e, n, rr in zip(u_, neuron.reshape(-1), routed_)],
            g.reshape(-1), expert=np.where(routed_, u_, -1), neuron=neuron.reshape(-1),
            routing_weight=np.where(routed_, dense_w[rows, np.maximum(u_, 0)],
                                    sw.numpy()[rows] if sw is not None else np.nan),
            router_prob=np.where(routed_, probs[rows, np.maximum(u_, 0)], np.nan),
            selected=np.where(routed_, 1, -1))


_COLUMNS = ["prompt_id", "task", "layer", "level", "component", "head", "expert", "neuron", "score",
            "routing_weight", "router_prob", "selected", "neuron_sum", "target_token", "target_id", "target_rank"]
_INTS = ("head", "expert", "neuron")  # nullable: -1 in a block means missing
_FLOATS = ("routing_weight", "router_prob", "neuron_sum")


def _block(cols: dict[str, Any]) -> pd.DataFrame:
    """One block of rows with every column in its final dtype (missing ints as -1 -> NA, selected: 1 / 0 / -1)."""
    n = len(cols["score"])
    out: dict[str, Any] = {}
    for c in _COLUMNS:
        if c == "task" and c not in cols:
            continue
        v = cols.get(c)
        if c in _INTS:
            a = np.full(n, -1) if v is None else np.asarray(v).astype(np.int64)
            out[c] = pd.arrays.IntegerArray(np.where(a < 0, 0, a), a < 0)
        elif c in _FLOATS:
            out[c] = np.full(n, np.nan) if v is None else np.asarray(v, dtype=float)
        elif c == "selected":
            a = np.full(n, -1) if v is None else np.asarray(v).astype(np.int64)
            out[c] = pd.arrays.BooleanArray(a > 0, a < 0)
        elif c == "level":
            out[c] = np.full(n, v, dtype=object)
        else:
            out[c] = v
    return pd.DataFrame(out)


def _tidy(table: pd.DataFrame, ps: Any) -> pd.DataFrame:
    for col in ("layer", "target_id", "target_rank"):
        table[col] = table[col].astype(int)
    table["score"] = table["score"].astype(float)
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
