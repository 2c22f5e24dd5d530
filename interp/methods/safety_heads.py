"""Safety-head attribution (Zhou et al., "On the Role of Attention Heads in Large Language Model Safety",
ICLR 2025, arXiv 2410.13708): Ships, generalised Ships, Sahara and attack-success evaluation.

* :func:`ships` - per prompt and head, KL(clean || head ablated) of the next-token distribution at the last real
  prompt position (nats);
* :func:`generalized_ships` - for a dataset and a head group, the angle (degrees) between the leading singular
  vectors of the final-norm outputs M (N x d_model, last real token) with and without the group ablated;
* :func:`sahara` - greedy search of the head group that moves that angle most;
* :func:`attack_success_rate` - generate with heads ablated at every step and judge each response.

Ablations (``ablation=``) are :func:`interp.ablate_heads`'s, each one of the masks of the authors' code
(``lib/utils/custommodel.py``: ``scale_mask`` / ``mean_mask`` on ``q``, ``k`` or ``v``): ``query`` (the paper's
"undifferentiated attention": the head's query times eps, after q/k-norm and rotary, so attention goes uniform over
the causal prefix; per query head, so right under grouped-query attention; their scale mask on ``q``), ``output``
(z times eps: "scaling contribution"; their scale mask on ``v``), ``key`` (the KV group's key times eps; their scale
mask on ``k``, which under grouped-query attention indexes KV heads with the query head's index), ``mean`` (z
replaced by the mean over the layer's heads; their mean mask on ``v``), ``mean_query`` (the query replaced by the
mean of the layer's query heads; their mean mask on ``q``) and ``zero`` (z set to 0). Every L x H sweep
runs through :func:`interp.run_variants`: ablations batched as rows, each starting at the ablated layer from the
clean residual (exact).

Heads are integer ``layer`` / ``head`` columns; a head set in one cell is written ``"(0, 2), (1, 0)"``
(:func:`heads_label`; :func:`parse_heads` reads it back).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import sites
from ..activations.interventions import HEAD_ABLATIONS, ablate_heads, check_heads
from ..activations.variants import default_max_rows, run_variants
from ..errors import ParameterError, check_choice, check_positive_float, check_positive_int
from ..model.decode import final_norm_module
from ..model.loading import Model, as_model
from ..prompts import EncodedSet, PromptSet, as_prompt_set, batches, encode
from ..results.result import Result, concat_tables, make_meta
from ..runs.checkpoints import StageCheckpoints
from .generation import apply_judge, check_judge, generate
from .registry import Schema, ShardPlan, finish_result, register_method, require_method, shard_input

PAPER = ("Zhou et al. 2025, On the Role of Attention Heads in Large Language Model Safety (ICLR 2025), "
         "arXiv 2410.13708")
KL_FLOOR = 1e-12  # added to both distributions, as in the authors' code
BASES = ("left", "right")
Head = tuple[int, int]

SHIPS_SCHEMA = Schema(
    keys=("prompt_id", "layer", "head"), value="score", unit="nats", sign="higher",
    columns={"prompt_id": "str", "layer": "int", "head": "int", "score": "float"},
    grid=("layer", "head"),
)
GSHIPS_SCHEMA = Schema(
    keys=("r",), value="score", unit="degrees", sign="higher",
    columns={"heads": "str", "n_heads": "int", "r": "int", "angle": "float", "sigma_clean": "float",
             "sigma_ablated": "float", "score": "float"},
    units={"angle": "degrees", "sigma_clean": "final-norm output units", "sigma_ablated": "final-norm output units"},
    grid=("r", None),
)
SAHARA_SCHEMA = Schema(
    keys=("step", "layer", "head"), value="score", unit="degrees", sign="higher",
    columns={"step": "int", "layer": "int", "head": "int", "score": "float", "step_rank": "int", "chosen": "bool",
             "heads": "str"},
    grid=("layer", "head"),
)
ASR_SCHEMA = Schema(
    keys=("variant", "prompt_id"), value="success", unit="attack success (True / False; its mean is the ASR)",
    sign="higher",
    columns={"variant": "str", "variant_group": "str", "heads": "str", "prompt_id": "str", "response": "str",
             "n_new_tokens": "int", "success": "bool"},
    optional={"label": "str"},
    units={"n_new_tokens": "tokens"},
    grid=("variant", None),
)


# --- shared checks ------------------------------------------------------------------------------------------
def _prompt_set(model: Model, prompts: Any, chat_template: bool | str | None) -> PromptSet:
    if chat_template:
        return PromptSet(prompts, chat_template=chat_template, tokenizer=model.tokenizer)
    return as_prompt_set(prompts)


def _check_ablation(ablation: Any, eps: Any) -> float:
    check_choice("ablation", ablation, HEAD_ABLATIONS)
    return check_positive_float("eps", eps)


def _check_rows(batch_size: Any, max_rows: Any) -> tuple[int, int | None]:
    bs = check_positive_int("batch_size", batch_size)
    return bs, (None if max_rows is None else check_positive_int("max_rows", max_rows))


def all_heads(model: Any) -> list[Head]:
    """Every (layer, head) of the model, layer-major."""
    info = as_model(model).info
    return [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]


def heads_label(heads: Sequence[Head] | None) -> str:
    """A head set as one table cell: ``"(1, 2), (3, 0)"`` ((layer, head) integer pairs, in the given order; empty
    for no heads)."""
    return ", ".join(f"({int(layer)}, {int(head)})" for layer, head in heads) if heads else ""


def parse_heads(cell: str) -> list[Head]:
    """The heads of a cell written by :func:`heads_label`: ``"(1, 2), (3, 0)"`` -> [(1, 2), (3, 0)]."""
    pairs = re.findall(r"\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)", cell or "")
    return [(int(a), int(b)) for a, b in pairs]


# --- Ships ----------------------------------------------------------------------------------------------------
class _KLReduce:
    """Reduce for run_variants: the first call (the clean run) keeps p_clean; later ones return
    KL(p_clean || p_ablated) per row, in nats, with 1e-12 added to both distributions.

    The formula of :func:`interp.methods.metrics.kl_divergence` with ``eps=1e-12``, computed in float64: that function
    computes in float32, where the difference of two nearly equal log-probabilities loses the small KLs of
    unimportant heads (on the dense organism it moves them by up to 1e-6 nats, ~900x the smallest ones, and
    reorders the top-10 heads)."""

    def __init__(self) -> None:
        self.clean: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor | None, _store: dict) -> torch.Tensor:
        q = logits.double().softmax(-1) + KL_FLOOR
        if self.clean is None:
            self.clean = q
            return torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
        p = self.clean.repeat(q.shape[0] // self.clean.shape[0], 1)
        return (p * (p.log() - q.log())).sum(-1)


def ships_figure(result: Result, *, ci: float | None = None, n_boot: int = 1000, seed: int = 0, **_: Any) -> Any:
    """Layer x head grid of the mean Ships score over prompts (KL, nats; layer 0 at the bottom); hover: layer,
    head, score, rank, and with ``ci`` (e.g. 0.95) the cell's seeded bootstrap interval over prompts
    (:meth:`interp.Result.aggregate`)."""
    import numpy as np

    from ..figures.viz import heatmap, interval_text, interval_title

    grid = result.pivot("layer", "head", "score", aggfunc="mean")
    flat = grid.stack().sort_values(ascending=False, kind="stable")
    rank = pd.Series(range(1, len(flat) + 1), index=flat.index).unstack().reindex_like(grid)
    n = result.table["prompt_id"].nunique()
    ablation = result.meta.get("parameters", {}).get("ablation", "")
    title = f"Ships: KL(clean || head ablated), mean over {n} prompts ({ablation} ablation)"
    hover = "layer=%{y}<br>head=%{x}<br>score=%{z:.4g} nats<br>rank=%{customdata[0]}"
    custom = [rank.values.astype(int).astype(object)]
    if ci is not None:
        custom.append(interval_text(result.table, "layer", "head", "score", ci=ci, n_boot=n_boot, seed=seed,
                                    like=grid))
        hover += f"<br>{ci:.0%} interval %{{customdata[1]}} nats"
        title += "<br>hover: " + interval_title(ci, n)
    return heatmap(grid.values, [int(c) for c in grid.columns], [int(i) for i in grid.index], title=title,
                   x_title="head", y_title="layer", colorbar_title="Ships KL (nats)", diverging=False,
                   customdata=np.stack(custom, axis=-1), hover=hover + "<extra></extra>")


@register_method("ships", paper=PAPER, family="safety_heads", figure=ships_figure, schema=SHIPS_SCHEMA,
                 inputs="prompts", organism="dense", corpus="safety", example={"ablation": "query"},
                 cost="1 + L*H forwards per prompt (batched; each ablated run starts at the head's layer)")
def ships(model: Any, prompts: Any, *, ablation: str = "query", eps: float = 1e-5, batch_size: int = 32,
          max_rows: int | None = None, progress: bool = False, chat_template: bool | str | None = None) -> Result:
    """Ships (Zhou et al. 2025, arXiv 2410.13708): for each prompt and head, KL(clean || head ablated) of the
    next-token distribution at the last real prompt position.

    Args:
        ablation: how the head is ablated (:data:`interp.activations.interventions.HEAD_ABLATIONS`; the paper's
            is "query").
        eps: the ablation's scale factor (dimensionless, > 0; the authors' default 1e-5).
        batch_size: prompts per batch.
        max_rows: at most this many rows (prompt x head) per forward; None: from a memory budget.
        progress: show a progress bar over the head variants.
        chat_template: wrap the prompts with the tokenizer's chat template (True) or a format string with
            ``{prompt}`` (see :class:`PromptSet`).

    Returns: one row per prompt x (layer, head): ``prompt_id``, ``layer``, ``head``, ``score`` (the KL, nats,
    float64, 1e-12 added to both distributions as in the authors' code). Cost: 1 + L*H forwards per prompt, batched
    as rows of the variants engine; the run ablating a head in layer l computes only blocks l..L-1 (the blocks below
    reuse the clean residual).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    bs, max_rows = _check_rows(batch_size, max_rows)
    enc = encode(m, ps)
    heads = all_heads(m)
    ivs = [ablate_heads(m, [h], ablation=ablation, eps=eps) for h in heads]
    scores = torch.zeros(len(ps), len(heads), dtype=torch.float64)
    for batch in batches(m, enc, bs):
        _, per = run_variants(m, batch, ivs, _KLReduce(), max_rows=max_rows, progress=progress)
        for k, s in enumerate(per):
            scores[batch.indices, k] = s.cpu()
    n_h = len(heads)
    table = pd.DataFrame({
        "prompt_id": [pid for pid in ps.ids for _ in range(n_h)],
        "layer": [layer for _ in ps.ids for layer, _h in heads],
        "head": [h for _ in ps.ids for _l, h in heads],
        "score": scores.reshape(-1).numpy(),
    })
    return Result(table, make_meta(model=m, prompts=ps))


# --- generalised Ships ----------------------------------------------------------------------------------------
def _final_states(m: Model, enc: EncodedSet, groups: Sequence[Sequence[Head]], ablation: str, eps: float,
                  batch_size: int, max_rows: int | None = None,
                  progress: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """M (N x d_model): the final-norm output at the last real token, clean and with each group ablated."""
    last = sites.hook_name("resid_post", m.info.n_layers - 1)
    norm = final_norm_module(m)

    dtype = torch.promote_types(m.dtype, torch.float32)  # float32, or float64 for a float64 model

    def reduce(_logits: torch.Tensor | None, store: dict) -> torch.Tensor:
        with torch.no_grad():
            return norm(store[last][:, -1]).to(dtype)

    n, d = len(enc), m.info.d_model
    clean = torch.zeros(n, d, dtype=dtype)
    ablated = [torch.zeros(n, d, dtype=dtype) for _ in groups]
    ivs = [ablate_heads(m, list(g), ablation=ablation, eps=eps) for g in groups]
    for batch in batches(m, enc, batch_size):
        # no read_fn: run_variants would apply it to the clean residuals it keeps for restarts as well
        c, per = run_variants(m, batch, ivs, reduce, read=[last], max_rows=max_rows, progress=progress)
        clean[batch.indices] = c.cpu()
        for k, s in enumerate(per):
            ablated[k][batch.indices] = s.cpu()
    return clean, ablated


def principal_angles(clean: torch.Tensor, ablated: torch.Tensor, r_main: int = 1, basis: str = "left"
                     ) -> list[tuple[float, float, float]]:
    """[(angle in degrees, sigma_r clean, sigma_r ablated)] for r = 1..r_main: the angle between the r-th singular
    vectors of the uncentred matrices (left: N-dim sample space, as the authors' code; right: d_model space).

    acos(|u . u_A|), computed as atan2(|u_A - (u . u_A) u|, |u . u_A|) in float64 (the same number, without
    acos's loss of precision near 0)."""
    u, s, vh = torch.linalg.svd(clean.double(), full_matrices=False)
    ua, sa, vha = torch.linalg.svd(ablated.double(), full_matrices=False)
    out = []
    for r in range(r_main):
        a, b = (u[:, r], ua[:, r]) if basis == "left" else (vh[r], vha[r])
        c = torch.dot(a, b)
        sine = torch.linalg.vector_norm(b - c * a)
        out.append((math.degrees(math.atan2(float(sine), abs(float(c)))), float(s[r]), float(sa[r])))
    return out


def _check_svd_args(m: Model, n: int, r_main: Any, basis: Any) -> int:
    check_choice("basis", basis, BASES)
    r_main = check_positive_int("r_main", r_main)
    if r_main > min(n, m.info.d_model):
        raise ParameterError(f"r_main={r_main} exceeds min(N prompts={n}, d_model={m.info.d_model}), the number "
                             "of singular vectors.")
    return r_main


def generalized_ships_figure(result: Result, **_: Any) -> Any:
    """One bar per r: the angle (degrees) between the r-th singular vectors with and without the group."""
    import plotly.graph_objects as go

    t = result.table
    heads = str(t["heads"].iloc[0])
    if len(heads) > 70:
        heads = f"{int(t['n_heads'].iloc[0])} heads, {heads[:50]}..."
    fig = go.Figure(go.Bar(x=[f"r={r}" for r in t["r"]], y=t["angle"], marker_color="#b2182b",
                           hovertemplate="%{x}<br>angle=%{y:.4g} degrees<extra></extra>"))
    fig.update_layout(title=f"Generalised Ships over {result.meta.get('n_prompts', '?')} prompts: "
                            f"{t['score'].iloc[0]:.4g} degrees<br>ablated: {heads}",
                      xaxis_title="singular vector r", yaxis_title="angle (degrees)", autosize=True)
    return fig


def _gships_result(clean: torch.Tensor, ablated: torch.Tensor, group: list[Head], r_main: int, basis: str,
                   meta: dict) -> Result:
    angles = principal_angles(clean, ablated, r_main, basis)
    total = sum(a for a, _, _ in angles)
    table = pd.DataFrame({
        "heads": heads_label(group), "n_heads": len(group), "r": list(range(1, r_main + 1)),
        "angle": [a for a, _, _ in angles], "sigma_clean": [s for _, s, _ in angles],
        "sigma_ablated": [s for _, _, s in angles], "score": total,
    })
    return Result(table, {**meta, "score": total})


def _gships_prepare(m: Model, ps: PromptSet, params: dict) -> dict:
    """Check every argument against the whole set (r_main against its size) before any shard runs."""
    chat = params.get("chat_template")
    eps = _check_ablation(params.get("ablation", "query"), params.get("eps", 1e-5))
    group = check_heads(m, params["heads"])
    r_main = _check_svd_args(m, len(_prompt_set(m, ps, chat)), params.get("r_main", 1), params.get("basis", "left"))
    return {**params, "heads": group, "eps": eps, "r_main": r_main}


def gships_states(model: Any, prompts: Any, heads: Sequence[Head], *, ablation: str = "query", eps: float = 1e-5,
                  r_main: int = 1, basis: str = "left", batch_size: int = 32, max_rows: int | None = None,
                  progress: bool = False, chat_template: bool | str | None = None) -> Result:
    """The per-prompt pieces of generalised Ships (what a shard of a sharded run computes): one row per prompt with
    its final-norm output at the last real token, clean and with the group ablated (lists of float32, or of
    float64 for a float64 model). ``r_main`` and ``basis`` are used by the merge, not here."""
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    group = check_heads(m, heads)
    bs, max_rows = _check_rows(batch_size, max_rows)
    enc = encode(m, ps)
    clean, (abl,) = _final_states(m, enc, [group], ablation, eps, bs, max_rows, progress)
    table = pd.DataFrame({"prompt_id": ps.ids, "clean": [r.numpy() for r in clean],
                          "ablated": [r.numpy() for r in abl]})
    return Result(table, make_meta(model=m, prompts=ps, heads=group))


def _gships_merge(parts: list[Result], meta: dict, params: dict) -> Result:
    """Generalised Ships of the whole set from the shards' final states (the SVDs once, over all prompts); the
    Result is stamped by the registry entry as a whole run's is."""
    entry = require_method("generalized_ships")
    bound = {k: params.get(k, d) for k, d in entry.parameters.items()}
    t = concat_tables(parts)
    as_matrix = lambda col: torch.from_numpy(np.stack([np.asarray(v) for v in t[col]]))  # noqa: E731
    group = [tuple(h) for h in bound["heads"]]
    result = _gships_result(as_matrix("clean"), as_matrix("ablated"), group, bound["r_main"], bound["basis"], meta)
    return finish_result(entry, result, None, bound)


@register_method("generalized_ships", paper=PAPER, family="safety_heads", figure=generalized_ships_figure,
                 schema=GSHIPS_SCHEMA, inputs="prompts", organism="dense", corpus="safety",
                 example={"heads": [(0, 0)]},
                 cost="2 forwards per prompt (clean + group ablated; batched) and two SVDs of N x d_model",
                 shards=ShardPlan(prepare=_gships_prepare, merge=_gships_merge, shard_function=gships_states))
def generalized_ships(model: Any, prompts: Any, heads: Sequence[Head], *, ablation: str = "query",
                      eps: float = 1e-5, r_main: int = 1, basis: str = "left", batch_size: int = 32,
                      max_rows: int | None = None, progress: bool = False,
                      chat_template: bool | str | None = None) -> Result:
    """Generalised Ships of a head group on a dataset (Zhou et al. 2025, arXiv 2410.13708): the sum over
    r = 1..r_main of the angle between the r-th singular vectors of M and M_A, where M (N x d_model) holds each
    prompt's final-norm output (``ln_final.hook_out``, norm weight included) at the last real token, M_A the same
    with the group ablated; uncentred SVD, left singular vectors by default (the authors' code).

    Args:
        heads: the head group, (layer, head) integer pairs, ablated together.
        ablation: how the heads are ablated (:data:`interp.activations.interventions.HEAD_ABLATIONS`).
        eps: the ablation's scale factor (dimensionless, > 0).
        r_main: the number of leading singular vectors whose angles are summed (<= min(N, d_model)).
        basis: "left" (singular vectors in the N-dim sample space, the authors') or "right" (d_model space).
        batch_size: prompts per batch.
        max_rows: at most this many rows per forward; None: from a memory budget.
        progress: show a progress bar.
        chat_template: wrap the prompts (True: the tokenizer's chat template; a string with ``{prompt}``).

    Returns: one row per r: ``heads`` (the group, "(0, 2), (1, 0)"), ``n_heads``, ``r``, ``angle`` (degrees),
    ``sigma_clean`` and ``sigma_ablated`` (the r-th singular values), ``score`` (the sum of the angles, degrees, on
    every row; also ``meta["score"]``). Cost: 2 forwards per prompt (the ablated one from the group's first layer),
    batched, and two SVDs. A sharded run (:func:`interp.run_resumable`) computes M and M_A shard by shard and the
    SVDs once at the end.
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    group = check_heads(m, heads)
    r_main = _check_svd_args(m, len(ps), r_main, basis)
    bs, max_rows = _check_rows(batch_size, max_rows)
    enc = encode(m, ps)
    clean, (abl,) = _final_states(m, enc, [group], ablation, eps, bs, max_rows, progress)
    return _gships_result(clean, abl, group, r_main, basis, make_meta(model=m, prompts=ps))


# --- Sahara ---------------------------------------------------------------------------------------------------
def sahara_figure(result: Result, **_: Any) -> Any:
    """Every candidate's score per step (grey), the chosen head per step (labelled)."""
    import plotly.graph_objects as go

    t = result.table
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=t["step"], y=t["score"], mode="markers", marker={"color": "lightgrey", "size": 6}, name="candidates",
        customdata=t[["layer", "head", "step_rank"]].values,
        hovertemplate="step %{x}: head (%{customdata[0]}, %{customdata[1]})<br>score=%{y:.4g} deg<br>"
                      "step_rank=%{customdata[2]}<extra></extra>"))
    ch = t[t["chosen"]]
    fig.add_trace(go.Scatter(
        x=ch["step"], y=ch["score"], mode="lines+markers+text", marker={"color": "crimson", "size": 10},
        text=[f"+({r.layer}, {r.head})" for r in ch.itertuples()], textposition="top center", name="chosen",
        hovertemplate="step %{x}: heads %{customdata}<br>score=%{y:.4g} deg<extra></extra>",
        customdata=ch["heads"]))
    fig.update_layout(title=f"Sahara over {result.meta.get('n_prompts', '?')} prompts: generalised Ships of the "
                            "group after each step", xaxis_title="step",
                      yaxis_title="generalised Ships (degrees)", xaxis={"dtick": 1}, autosize=True)
    return fig


@register_method("sahara", paper=PAPER, family="safety_heads", figure=sahara_figure, schema=SAHARA_SCHEMA,
                 inputs="prompts", organism="dense", corpus="safety", example={"steps": 1},
                 shards=ShardPlan(checkpoint=True),
                 cost="per step: 1 + (L*H - step) forwards per prompt (batched over prompts and candidates)")
def sahara(model: Any, prompts: Any, *, steps: int = 3, ablation: str = "query", eps: float = 1e-5,
           r_main: int = 1, basis: str = "left", batch_size: int = 32, max_rows: int | None = None,
           progress: bool = False, chat_template: bool | str | None = None) -> Result:
    """Sahara (Zhou et al. 2025, arXiv 2410.13708): greedy forward selection of the head group G whose ablation
    moves the dataset's final states most. Each step ablates G + {h} for every head h not in G, scores it with
    generalised Ships against the clean model, and adds the argmax head (ties: the first in layer-major order).

    Args:
        steps: the number of greedy steps (the size of the group; <= L*H).
        ablation: how the heads are ablated (:data:`interp.activations.interventions.HEAD_ABLATIONS`).
        eps: the ablation's scale factor (dimensionless, > 0).
        r_main: singular vectors whose angles are summed in the generalised Ships score.
        basis: "left" (sample space, the authors') or "right" singular vectors.
        batch_size: prompts per batch.
        max_rows: at most this many rows (prompt x candidate) per forward; None: from a memory budget.
        progress: show a progress bar over the candidates of each step.
        chat_template: wrap the prompts (True: the tokenizer's chat template; a string with ``{prompt}``).

    Returns: every candidate at every step: ``step``, ``layer``, ``head``, ``score`` (generalised Ships of G + {h},
    degrees), ``step_rank`` (1 = the best candidate of its step), ``chosen``, ``heads`` (G + {h} in the order
    chosen, "(0, 2), (1, 0)"); ``meta["group"]``: the chosen heads in order. Cost: per step 1 + (L*H - |G|)
    forwards per prompt, batched over prompts and candidate heads (each from the group's first layer), and one SVD
    per candidate. A run of :func:`interp.run_resumable` saves each finished step and a rerun resumes after the last
    saved one (:mod:`interp.runs.checkpoints`).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    steps = check_positive_int("steps", steps)
    n_heads = m.info.n_layers * m.info.n_heads
    if steps > n_heads:
        raise ParameterError(f"steps={steps} exceeds the model's {n_heads} heads.")
    r_main = _check_svd_args(m, len(ps), r_main, basis)
    bs, max_rows = _check_rows(batch_size, max_rows)
    enc = encode(m, ps)
    saved = StageCheckpoints(shard_input("checkpoint_dir"))
    group: list[Head] = []
    rows = []
    for step in range(1, steps + 1):
        done = saved.load_result(f"step_{step:03d}")
        if done is not None:
            step_rows = done.table.to_dict(orient="records")
            rows.extend(step_rows)
            group.append(next((int(r["layer"]), int(r["head"])) for r in step_rows if r["chosen"]))
            continue
        first = len(rows)
        cands = [h for h in all_heads(m) if h not in group]
        groups = [sorted(group + [h]) for h in cands]
        clean, ablated = _final_states(m, enc, groups, ablation, eps, bs, max_rows, progress)
        scores = [sum(a for a, _, _ in principal_angles(clean, a_m, r_main, basis)) for a_m in ablated]
        order = sorted(range(len(cands)), key=lambda k: -scores[k])
        ranks = {k: i + 1 for i, k in enumerate(order)}
        best = order[0]
        for k, h in enumerate(cands):
            rows.append({"step": step, "layer": h[0], "head": h[1], "score": scores[k], "step_rank": ranks[k],
                         "chosen": k == best, "heads": heads_label(group + [h])})
        group.append(cands[best])
        saved.save_result(f"step_{step:03d}", Result(pd.DataFrame(rows[first:]), {"method": "sahara/step"}))
    return Result(pd.DataFrame(rows), make_meta(model=m, prompts=ps, group=group))


# --- attack success rate ----------------------------------------------------------------------------------------
def _variant_specs(m: Model, variants: Any) -> list[tuple[str, list[Head] | None]]:
    if variants is None:
        return [("clean", None)]
    if isinstance(variants, Mapping):
        if not variants:
            raise ParameterError("variants is an empty mapping; give {name: heads or None (clean)}.")
        return [(str(k), None if v is None else check_heads(m, v)) for k, v in variants.items()]
    heads = check_heads(m, variants)
    return [(heads_label(heads), heads)]


def variant_group(variant: str) -> str:
    """The group of a variant name: the name without a trailing ' #i' (draws of one control: 'random-3 #7')."""
    return re.sub(r"\s*#\d+$", "", variant)


def asr_summary(result: Result) -> pd.DataFrame:
    """Per variant group (names ending ' #i' are draws of one group, e.g. 'random-3 #7'): mean ASR over the
    group's variants (``asr``), its standard deviation, min, max and the number of variants."""
    per = result.table.groupby("variant", sort=False).agg(variant_group=("variant_group", "first"),
                                                          asr=("success", "mean"))
    out = per.groupby("variant_group", sort=False)["asr"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out.rename(columns={"mean": "asr", "std": "asr_std", "min": "asr_min", "max": "asr_max",
                               "count": "n_variants"})


def asr_figure(result: Result, *, ci: float | None = None, n_boot: int = 1000, seed: int = 0, **_: Any) -> Any:
    """ASR bars per variant group (mean, with the spread over draws as error bars); with ``ci`` (e.g. 0.95), the
    error bars are instead the seeded bootstrap interval over prompts of the group's ASR
    (:meth:`interp.Result.aggregate`; a prompt's draws are resampled together)."""
    import plotly.graph_objects as go

    if ci is not None:
        from ..figures.viz import interval_error

        agg = result.aggregate("variant_group", value="success", ci=ci, n_boot=n_boot, seed=seed).table
        fig = go.Figure(go.Bar(
            x=agg["variant_group"], y=agg["success"], error_y=interval_error(agg, "success"),
            customdata=agg[["success_ci_low", "success_ci_high", "n_prompts"]].values,
            hovertemplate="%{x}<br>ASR=%{y:.3f} (" + f"{ci:.0%}" + " interval %{customdata[0]:.3f}-"
                          "%{customdata[1]:.3f}, %{customdata[2]} prompts)<extra></extra>"))
        fig.update_layout(title=f"Attack success rate over {result.table['prompt_id'].nunique()} prompts<br>bars: "
                                f"{ci:.0%} bootstrap interval over prompts", xaxis_title="variant group",
                          yaxis_title="ASR (share of prompts)", yaxis={"range": [0, 1.05]}, autosize=True)
        return fig
    s = asr_summary(result)
    fig = go.Figure(go.Bar(
        x=s["variant_group"], y=s["asr"], error_y={"type": "data", "array": s["asr_std"]},
        customdata=s[["asr_std", "asr_min", "asr_max", "n_variants"]].values,
        hovertemplate="%{x}<br>ASR=%{y:.3f} (std %{customdata[0]:.3f}, range %{customdata[1]:.3f}-"
                      "%{customdata[2]:.3f}, %{customdata[3]} variants)<extra></extra>"))
    n = result.table["prompt_id"].nunique()
    fig.update_layout(title=f"Attack success rate over {n} prompts, mean over each group's variants",
                      xaxis_title="variant group", yaxis_title="ASR (share of prompts)", yaxis={"range": [0, 1.05]},
                      autosize=True)
    return fig


def _asr_by_variant(table: pd.DataFrame) -> dict[str, float]:
    return {str(v): float(table.loc[table["variant"] == v, "success"].mean()) for v in table["variant"].unique()}


def _merge_asr(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    order = {v: k for k, v in enumerate(table["variant"].unique())}  # variant-major, as one run writes it
    table = table.sort_values("variant", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return Result(table, {**meta, "asr": _asr_by_variant(table)})


@register_method("attack_success_rate", paper=PAPER, family="safety_heads", figure=asr_figure, schema=ASR_SCHEMA,
                 inputs="prompts", fields=("label",), organism="dense", corpus="safety",
                 example={"max_new_tokens": 2, "variants": {"clean": None, "ablated": [(0, 0)]}},
                 shards=ShardPlan(merge=_merge_asr),
                 cost="per variant and prompt: 1 prefill + max_new_tokens single-token forwards (KV cache, batched)")
def attack_success_rate(model: Any, prompts: Any, *, variants: Any = None, ablation: str = "query",
                        eps: float = 1e-5, max_new_tokens: int = 64, do_sample: bool = False,
                        temperature: float = 1.0, seed: int = 0, judge: Callable[[str], bool] | None = None,
                        batch_size: int = 32, max_rows: int | None = 1024, progress: bool = False,
                        chat_template: bool | str | None = None) -> Result:
    """Attack success rate (Zhou et al. 2025, arXiv 2410.13708): generate a response to each prompt with the heads
    ablated at every step (prompt and generated tokens), judge it, ASR = the share judged successful.

    Args:
        variants: the head sets to ablate: None (the clean model), a list of (layer, head), or a mapping
            {name: heads or None (clean)} evaluated side by side in one batched generation (names 'name #i' are
            draws of the group 'name' for :func:`asr_summary`).
        ablation: how the heads are ablated (:data:`interp.activations.interventions.HEAD_ABLATIONS`).
        eps: the ablation's scale factor (dimensionless, > 0).
        max_new_tokens: at most this many new tokens per response (the paper: 128).
        do_sample: sample from softmax(logits / temperature) instead of greedy decoding.
        temperature: the sampling temperature (> 0).
        seed: the seed of the sampling (one generator per prompt and variant, independent of batching).
        judge: any callable str -> bool (True = the attack succeeded); None: no refusal keyword of the authors'
            list and at least 32 characters (:func:`interp.keyword_judge`).
        batch_size: prompts per batch.
        max_rows: at most this many rows (variant x prompt) per forward; None: from a memory budget (on CPU that
            budget is for full forwards and splits a generation into many small ones, hence the default 1024).
        progress: show a progress bar over the batches.
        chat_template: wrap the prompts (True: the tokenizer's chat template; a string with ``{prompt}``).

    Returns: one row per variant x prompt: ``variant``, ``variant_group``, ``heads`` ("(0, 2), (1, 0)"; empty for
    the clean model), ``prompt_id``, ``response``, ``n_new_tokens``, ``success`` (plus ``label`` when the prompts
    carry one); ``meta["asr"]``: {variant: ASR}. Cost: per variant and prompt one prefill and up to
    max_new_tokens one-token forwards (KV cache), batched as variants x prompts rows (<= max_rows).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    temperature = check_positive_float("temperature", temperature)
    bs, max_rows = _check_rows(batch_size, max_rows)
    judge_fn = check_judge(judge)
    specs = _variant_specs(m, variants)
    enc = encode(m, ps)
    ivs = [None if h is None else ablate_heads(m, h, ablation=ablation, eps=eps) for _, h in specs]
    texts: list[list[str]] = [[""] * len(ps) for _ in specs]
    n_tok: list[list[int]] = [[0] * len(ps) for _ in specs]
    n_batches = -(-len(ps) // bs)
    for batch in tqdm(batches(m, enc, bs), total=n_batches, desc="attack_success_rate", disable=not progress):
        rows_cap = max_rows if max_rows is not None else default_max_rows(m, batch.width + max_new_tokens)
        per_chunk = max(1, rows_cap // batch.size)
        for start in range(0, len(ivs), per_chunk):
            gens = generate(m, batch, ivs[start:start + per_chunk], max_new_tokens=max_new_tokens,
                            do_sample=do_sample, temperature=temperature, seed=seed,
                            row_keys=[ps.ids[i] for i in batch.indices])
            for j, g in enumerate(gens):
                for r, idx in enumerate(batch.indices):
                    texts[start + j][idx] = g.texts[r]
                    n_tok[start + j][idx] = len(g.tokens[r])
    rows = []
    has_label = "label" in ps.fields
    for v, (name, heads) in enumerate(specs):
        for i, rec in enumerate(ps.records):
            where = f"prompt {rec['id']!r} (variant {name!r})"
            row = {"variant": name, "variant_group": variant_group(name), "heads": heads_label(heads),
                   "prompt_id": rec["id"], "response": texts[v][i], "n_new_tokens": n_tok[v][i],
                   "success": apply_judge(judge_fn, texts[v][i], where)}
            if has_label:
                row["label"] = rec.get("label")
            rows.append(row)
    table = pd.DataFrame(rows)
    return Result(table, make_meta(model=m, prompts=ps, asr=_asr_by_variant(table)))
