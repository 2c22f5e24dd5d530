"""Safety-head attribution (Zhou et al., "On the Role of Attention Heads in Large Language Model Safety",
ICLR 2025): Ships, generalised Ships, Sahara and attack-success evaluation.

* :func:`ships` - per prompt and head, KL(clean || head ablated) of the next-token distribution at the last real
  prompt position;
* :func:`generalized_ships` - for a dataset and a head group, the angle between the leading singular vectors of
  the final-norm outputs M (N x d_model, last real token) with and without the group ablated;
* :func:`sahara` - greedy search of the head group that moves that angle most;
* :func:`attack_success_rate` - generate with heads ablated at every step and judge each response.

Ablations (``ablation=``) are :func:`interp.ablate_heads`'s kinds: ``query`` (the paper's "undifferentiated
attention": the head's query times eps, after q/k-norm and rotary, so attention goes uniform over the causal
prefix; per query head, so right under grouped-query attention), ``output`` (z times eps), ``key`` (the KV
group's key times eps), ``mean`` (z replaced by the mean over the layer's heads) and ``zero``. Every L x H sweep
runs through :func:`interp.run_variants`: ablations batched as rows, each starting at the ablated layer from the
clean residual (exact).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..checkpoints import StageCheckpoints
from ..decode import final_norm_module
from ..errors import ParameterError, check_choice, check_positive_float, check_positive_int
from ..interventions import HEAD_ABLATIONS, ablate_heads, check_heads
from ..model import Model, as_model
from ..prompts import EncodedSet, PromptSet, as_prompt_set, batches, encode
from ..registry import ShardPlan, register_method
from ..results import Result, _jsonable, concat_tables, make_meta
from ..variants import run_variants
from .generation import apply_judge, check_judge, generate

PAPER = "Zhou et al. 2025, On the Role of Attention Heads in Large Language Model Safety (ICLR 2025)"
KL_FLOOR = 1e-12  # added to both distributions, as in the authors' code
BASES = ("left", "right")
Head = tuple[int, int]


# --- shared checks ------------------------------------------------------------------------------------------
def _prompt_set(model: Model, prompts: Any, chat_template: bool | str | None) -> PromptSet:
    if chat_template:
        return PromptSet(prompts, chat_template=chat_template, tokenizer=model.tokenizer)
    return as_prompt_set(prompts)


def _check_ablation(ablation: Any, eps: Any) -> float:
    check_choice("ablation", ablation, HEAD_ABLATIONS)
    return check_positive_float("eps", eps)


def _batch_size(batch_size: Any, n: int) -> int:
    return min(n, 32) if batch_size is None else check_positive_int("batch_size", batch_size)


def all_heads(model: Any) -> list[Head]:
    """Every (layer, head) of the model, layer-major."""
    info = as_model(model).info
    return [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]


def heads_label(heads: Sequence[Head] | None) -> str:
    """'L1H2+L3H0' (empty for no heads)."""
    return "+".join(f"L{layer}H{head}" for layer, head in heads) if heads else ""


# --- Ships ----------------------------------------------------------------------------------------------------
class _KLReduce:
    """Reduce for run_variants: the first call (the clean run) keeps p_clean; later ones return
    KL(p_clean || p_ablated) per row, in nats, with 1e-12 added to both distributions (float64)."""

    def __init__(self) -> None:
        self.clean: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor | None, _store: dict) -> torch.Tensor:
        q = logits.double().softmax(-1) + KL_FLOOR
        if self.clean is None:
            self.clean = q
            return torch.zeros(q.shape[0], dtype=torch.float64, device=q.device)
        p = self.clean.repeat(q.shape[0] // self.clean.shape[0], 1)
        return (p * (p.log() - q.log())).sum(-1)


def ships_figure(result: Result, **_: Any) -> Any:
    """Layer x head grid of the mean Ships score over prompts; hover: layer, head, score, rank."""
    from ..viz import heatmap

    grid = result.pivot("layer", "head", "score", aggfunc="mean")
    flat = grid.stack().sort_values(ascending=False, kind="stable")
    rank = pd.Series(range(1, len(flat) + 1), index=flat.index).unstack().reindex_like(grid)
    fig = heatmap(grid.values, [int(c) for c in grid.columns], [int(i) for i in grid.index],
                  title=f"Ships (mean over prompts, {result.meta.get('parameters', {}).get('ablation', '')} ablation)",
                  x_title="head", y_title="layer",
                  hover="layer=%{y}<br>head=%{x}<br>score=%{z:.4g} nats<br>rank=%{customdata}<extra></extra>")
    fig.data[0].customdata = rank.values.astype(int)
    fig.update_yaxes(autorange="reversed")
    return fig


@register_method("ships", paper=PAPER, family="safety_heads", figure=ships_figure,
                 cost="1 + L*H forwards per prompt (batched; each ablated run starts at the head's layer)")
def ships(model: Any, prompts: Any, *, ablation: str = "query", eps: float = 1e-5, batch_size: int | None = None,
          chat_template: bool | str | None = None, max_rows: int | None = None, progress: bool = False) -> Result:
    """Ships: for each prompt and head, KL(clean || head-ablated) of the next-token distribution at the last real
    prompt position (nats; 1e-12 added to both distributions, as the authors' code does).

    Table: one row per prompt x (layer, head): prompt_id, layer, head, score. ``chat_template``: wrap the prompts
    with the tokenizer's chat template (True) or a format string with ``{prompt}`` (see :class:`PromptSet`).
    Cost: 1 + L*H forwards per prompt, batched as rows of the variants engine; the run ablating a head in layer l
    computes only blocks l..L-1 (the blocks below reuse the clean residual).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    bs = _batch_size(batch_size, len(ps))
    enc = encode(m, ps)
    heads = all_heads(m)
    variants = [ablate_heads(m, [h], kind=ablation, eps=eps) for h in heads]
    scores = torch.zeros(len(ps), len(heads), dtype=torch.float64)
    for batch in batches(m, enc, bs):
        _, per = run_variants(m, batch, variants, _KLReduce(), max_rows=max_rows, progress=progress)
        for k, s in enumerate(per):
            scores[batch.indices, k] = s.cpu()
    n_h = len(heads)
    table = pd.DataFrame({
        "prompt_id": [pid for pid in ps.ids for _ in range(n_h)],
        "layer": [layer for _ in ps.ids for layer, _h in heads],
        "head": [h for _ in ps.ids for _l, h in heads],
        "score": scores.reshape(-1).numpy(),
    })
    params = {"ablation": ablation, "eps": eps, "chat_template": chat_template}
    return Result(table, make_meta("ships", m, ps, params, score="KL(clean || ablated), nats"))


# --- generalised Ships ----------------------------------------------------------------------------------------
def _final_states(m: Model, enc: EncodedSet, groups: Sequence[Sequence[Head]], ablation: str, eps: float,
                  batch_size: int, max_rows: int | None = None,
                  progress: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """M (N x d_model): the final-norm output at the last real token, clean and with each group ablated."""
    last = f"blocks.{m.info.n_layers - 1}.hook_resid_post"
    norm = final_norm_module(m)

    dtype = torch.promote_types(m.dtype, torch.float32)  # float32, or float64 for a float64 model

    def reduce(_logits: torch.Tensor | None, store: dict) -> torch.Tensor:
        with torch.no_grad():
            return norm(store[last][:, -1]).to(dtype)

    n, d = len(enc), m.info.d_model
    clean = torch.zeros(n, d, dtype=dtype)
    ablated = [torch.zeros(n, d, dtype=dtype) for _ in groups]
    variants = [ablate_heads(m, list(g), kind=ablation, eps=eps) for g in groups]
    for batch in batches(m, enc, batch_size):
        # no read_fn: run_variants would apply it to the clean residuals it keeps for restarts as well
        c, per = run_variants(m, batch, variants, reduce, read=[last], max_rows=max_rows, progress=progress)
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
    import plotly.graph_objects as go

    t = result.table
    fig = go.Figure(go.Bar(x=[f"r={r}" for r in t["r"]], y=t["angle"],
                           hovertemplate="%{x}<br>angle=%{y:.4g} deg<extra></extra>"))
    fig.update_layout(title=f"Generalised Ships of {t['heads'].iloc[0]}: {t['score'].iloc[0]:.4g} deg",
                      yaxis_title="angle (degrees)")
    return fig


def _gships_result(clean: torch.Tensor, ablated: torch.Tensor, group: list[Head], params: dict, meta: dict
                   ) -> Result:  # fmt: skip
    angles = principal_angles(clean, ablated, params["r_main"], params["basis"])
    total = sum(a for a, _, _ in angles)
    table = pd.DataFrame({
        "heads": heads_label(group), "n_heads": len(group), "r": list(range(1, params["r_main"] + 1)),
        "angle": [a for a, _, _ in angles], "sigma_clean": [s for _, s, _ in angles],
        "sigma_ablated": [s for _, _, s in angles], "score": total,
    })
    return Result(table, {**meta, "method": "generalized_ships", "parameters": _jsonable(params), "score": total})


def _gships_prepare(m: Model, ps: PromptSet, params: dict) -> dict:
    """Check every argument against the whole set (r_main against its size) before any shard runs."""
    chat = params.get("chat_template")
    eps = _check_ablation(params.get("ablation", "query"), params.get("eps", 1e-5))
    group = check_heads(m, params["heads"])
    r_main = _check_svd_args(m, len(_prompt_set(m, ps, chat)), params.get("r_main", 1), params.get("basis", "left"))
    return {**params, "heads": group, "eps": eps, "r_main": r_main}


def gships_states(model: Any, prompts: Any, heads: Sequence[Head], *, ablation: str = "query", eps: float = 1e-5,
                  r_main: int = 1, basis: str = "left", batch_size: int | None = None,
                  chat_template: bool | str | None = None) -> Result:
    """The per-prompt pieces of generalised Ships (what a shard of a sharded run computes): one row per prompt with
    its final-norm output at the last real token, clean and with the group ablated (lists of float32, or of
    float64 for a float64 model)."""
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    group = check_heads(m, heads)
    enc = encode(m, ps)
    clean, (abl,) = _final_states(m, enc, [group], ablation, eps, _batch_size(batch_size, len(ps)))
    table = pd.DataFrame({"prompt_id": ps.ids, "clean": [r.numpy() for r in clean],
                          "ablated": [r.numpy() for r in abl]})
    return Result(table, make_meta("generalized_ships/states", m, ps, {"heads": group}))


def _gships_merge(parts: list[Result], meta: dict, params: dict) -> Result:
    t = concat_tables(parts)
    as_matrix = lambda col: torch.from_numpy(np.stack([np.asarray(v) for v in t[col]]))  # noqa: E731
    return _gships_result(as_matrix("clean"), as_matrix("ablated"), [tuple(h) for h in params["heads"]],
                          {k: params.get(k, d) for k, d in GSHIPS_DEFAULTS.items()}, meta)


GSHIPS_DEFAULTS = {"heads": None, "ablation": "query", "eps": 1e-5, "r_main": 1, "basis": "left", "chat_template": None}


@register_method("generalized_ships", paper=PAPER, family="safety_heads", figure=generalized_ships_figure,
                 cost="2 forwards per prompt (clean + group ablated; batched) and two SVDs of N x d_model",
                 shards=ShardPlan(prepare=_gships_prepare, merge=_gships_merge, shard_function=gships_states))
def generalized_ships(model: Any, prompts: Any, heads: Sequence[Head], *, ablation: str = "query",
                      eps: float = 1e-5, r_main: int = 1, basis: str = "left", batch_size: int | None = None,
                      chat_template: bool | str | None = None) -> Result:
    """Generalised Ships of a head group on a dataset: sum over r = 1..r_main of the angle (degrees) between the
    r-th singular vectors of M and M_A, where M (N x d_model) holds each prompt's final-norm output
    (``ln_final.hook_out``, norm weight included) at the last real token, M_A the same with the group ablated;
    uncentred SVD, left singular vectors by default (the authors' code).

    Table: one row per r: heads, n_heads, r, angle, sigma_clean, sigma_ablated, score (the sum, on every row).
    Cost: 2 forwards per prompt (the ablated one from the group's first layer), batched, and two SVDs.
    A sharded run (:func:`interp.run_resumable`) computes M and M_A shard by shard and the SVDs once at the end.
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    group = check_heads(m, heads)
    r_main = _check_svd_args(m, len(ps), r_main, basis)
    bs = _batch_size(batch_size, len(ps))
    enc = encode(m, ps)
    clean, (abl,) = _final_states(m, enc, [group], ablation, eps, bs)
    params = {"heads": group, "ablation": ablation, "eps": eps, "r_main": r_main, "basis": basis,
              "chat_template": chat_template}
    return _gships_result(clean, abl, group, params, make_meta("generalized_ships", m, ps, params))


# --- Sahara ---------------------------------------------------------------------------------------------------
def sahara_figure(result: Result, **_: Any) -> Any:
    """Every candidate's score per step (grey), the chosen head per step (labelled)."""
    import plotly.graph_objects as go

    t = result.table
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=t["step"], y=t["score"], mode="markers", marker={"color": "lightgrey", "size": 6}, name="candidates",
        customdata=t[["layer", "head", "rank"]].values,
        hovertemplate="step %{x}: L%{customdata[0]}H%{customdata[1]}<br>score=%{y:.4g} deg<br>"
                      "rank=%{customdata[2]}<extra></extra>"))
    ch = t[t["chosen"]]
    fig.add_trace(go.Scatter(
        x=ch["step"], y=ch["score"], mode="lines+markers+text", marker={"color": "crimson", "size": 10},
        text=[f"+L{r.layer}H{r.head}" for r in ch.itertuples()], textposition="top center", name="chosen",
        hovertemplate="step %{x}: group %{customdata}<br>score=%{y:.4g} deg<extra></extra>",
        customdata=ch["group"]))
    fig.update_layout(title="Sahara: generalised Ships of the group after each step", xaxis_title="step",
                      yaxis_title="angle (degrees)", xaxis={"dtick": 1})
    return fig


@register_method("sahara", paper=PAPER, family="safety_heads", figure=sahara_figure,
                 shards=ShardPlan(checkpoint="checkpoint_dir"),
                 cost="per step: 1 + (L*H - step) forwards per prompt (batched over prompts and candidates)")
def sahara(model: Any, prompts: Any, *, steps: int = 3, ablation: str = "query", eps: float = 1e-5,
           r_main: int = 1, basis: str = "left", batch_size: int | None = None,
           chat_template: bool | str | None = None, max_rows: int | None = None, progress: bool = False,
           checkpoint_dir: str | None = None) -> Result:
    """Sahara: greedy forward selection of the head group G whose ablation moves the dataset's final states most.
    Each step ablates G + {h} for every head h not in G, scores it with generalised Ships against the clean
    model, and adds the argmax head (ties: the first in layer-major order).

    Table: every candidate at every step: step, layer, head, score (degrees), rank (within the step), chosen,
    group (G + {h}). ``meta["group"]``: the chosen heads in order. Cost: per step 1 + (L*H - |G|) forwards per
    prompt, batched over prompts and candidate heads (each from the group's first layer), and one SVD per
    candidate. ``checkpoint_dir``: each finished step is saved there and a rerun with the same arguments resumes
    after the last saved step (:mod:`interp.checkpoints`; :func:`interp.run_resumable` passes one).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    steps = check_positive_int("steps", steps)
    n_heads = m.info.n_layers * m.info.n_heads
    if steps > n_heads:
        raise ParameterError(f"steps={steps} exceeds the model's {n_heads} heads.")
    r_main = _check_svd_args(m, len(ps), r_main, basis)
    bs = _batch_size(batch_size, len(ps))
    enc = encode(m, ps)
    saved = StageCheckpoints(checkpoint_dir)
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
            rows.append({"step": step, "layer": h[0], "head": h[1], "score": scores[k], "rank": ranks[k],
                         "chosen": k == best, "group": heads_label(group + [h])})
        group.append(cands[best])
        saved.save_result(f"step_{step:03d}", Result(pd.DataFrame(rows[first:]), {"method": "sahara/step"}))
    params = {"steps": steps, "ablation": ablation, "eps": eps, "r_main": r_main, "basis": basis,
              "chat_template": chat_template}
    return Result(pd.DataFrame(rows), make_meta("sahara", m, ps, params, group=group))


# --- attack success rate ----------------------------------------------------------------------------------------
def _variant_specs(m: Model, ablate: Any) -> list[tuple[str, list[Head] | None]]:
    if ablate is None:
        return [("clean", None)]
    if isinstance(ablate, Mapping):
        if not ablate:
            raise ParameterError("ablate is an empty mapping; give {label: heads or None}.")
        return [(str(k), None if v is None else check_heads(m, v)) for k, v in ablate.items()]
    heads = check_heads(m, ablate)
    return [(heads_label(heads), heads)]


def asr_summary(result: Result) -> pd.DataFrame:
    """Per variant group (labels ending ' #i' are draws of one group, e.g. 'random-3 #7'): mean ASR over the
    group's variants, its standard deviation, min, max and the number of variants."""
    per = result.table.groupby("variant", sort=False).agg(group=("group", "first"), asr=("success", "mean"))
    out = per.groupby("group", sort=False)["asr"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out.rename(columns={"mean": "asr", "std": "asr_std", "min": "asr_min", "max": "asr_max",
                               "count": "n_variants"})


def asr_figure(result: Result, **_: Any) -> Any:
    """ASR bars per variant group (mean, with the spread over draws as error bars)."""
    import plotly.graph_objects as go

    s = asr_summary(result)
    fig = go.Figure(go.Bar(
        x=s["group"], y=s["asr"], error_y={"type": "data", "array": s["asr_std"]},
        customdata=s[["asr_std", "asr_min", "asr_max", "n_variants"]].values,
        hovertemplate="%{x}<br>ASR=%{y:.3f} (std %{customdata[0]:.3f}, range %{customdata[1]:.3f}-"
                      "%{customdata[2]:.3f}, %{customdata[3]} variants)<extra></extra>"))
    fig.update_layout(title="Attack success rate", yaxis_title="ASR", yaxis={"range": [0, 1.05]})
    return fig


def _asr_by_variant(table: pd.DataFrame) -> dict[str, float]:
    return {str(v): float(table.loc[table["variant"] == v, "success"].mean()) for v in table["variant"].unique()}


def _merge_asr(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    order = {v: k for k, v in enumerate(table["variant"].unique())}  # variant-major, as one run writes it
    table = table.sort_values("variant", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
    return Result(table, {**meta, "asr": _asr_by_variant(table)})


@register_method("attack_success_rate", paper=PAPER, family="safety_heads", figure=asr_figure,
                 shards=ShardPlan(merge=_merge_asr),
                 cost="per variant and prompt: 1 prefill + max_new_tokens single-token forwards (KV cache, batched)")
def attack_success_rate(model: Any, prompts: Any, *, ablate: Any = None, ablation: str = "query",
                        eps: float = 1e-5, max_new_tokens: int = 64, do_sample: bool = False,
                        temperature: float = 1.0, seed: int = 0, judge: Callable[[str], bool] | None = None,
                        batch_size: int | None = None, max_rows: int = 1024,
                        chat_template: bool | str | None = None) -> Result:
    """Attack success rate: generate a response to each prompt with the heads ablated at every step (prompt and
    generated tokens), judge it, ASR = share judged successful.

    ``ablate``: None (the clean model), a list of (layer, head), or a mapping {label: heads or None} to evaluate
    several variants in one batched generation (labels 'name #i' are draws of group 'name' for
    :func:`asr_summary`). ``judge``: any callable str -> bool (True = attack succeeded); default: no refusal keyword
    of the authors' list and at least 32 characters. Greedy unless ``do_sample`` (seeded per prompt and variant).
    Table: one row per variant x prompt: variant, group, heads, prompt_id, response, n_new_tokens, success (plus
    label when the prompts carry one); ``meta["asr"]``: {variant: ASR}. Cost: per variant and prompt one prefill
    and up to max_new_tokens one-token forwards (KV cache), batched as variants x prompts rows (<= max_rows).
    """
    m = as_model(model)
    ps = _prompt_set(m, prompts, chat_template)
    eps = _check_ablation(ablation, eps)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    temperature = check_positive_float("temperature", temperature)
    max_rows = check_positive_int("max_rows", max_rows)
    judge_fn = check_judge(judge)
    specs = _variant_specs(m, ablate)
    bs = _batch_size(batch_size, len(ps))
    enc = encode(m, ps)
    ivs = [None if h is None else ablate_heads(m, h, kind=ablation, eps=eps) for _, h in specs]
    texts: list[list[str]] = [[""] * len(ps) for _ in specs]
    n_tok: list[list[int]] = [[0] * len(ps) for _ in specs]
    for batch in batches(m, enc, bs):
        per_chunk = max(1, max_rows // batch.size)
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
    for v, (label, heads) in enumerate(specs):
        for i, rec in enumerate(ps.records):
            where = f"prompt {rec['id']!r} (variant {label!r})"
            row = {"variant": label, "group": re.sub(r"\s*#\d+$", "", label), "heads": heads_label(heads),
                   "prompt_id": rec["id"], "response": texts[v][i], "n_new_tokens": n_tok[v][i],
                   "success": apply_judge(judge_fn, texts[v][i], where)}
            if has_label:
                row["label"] = rec.get("label")
            rows.append(row)
    table = pd.DataFrame(rows)
    asr = _asr_by_variant(table)
    params = {"ablate": {k: h for k, h in specs}, "ablation": ablation, "eps": eps, "max_new_tokens": max_new_tokens,
              "do_sample": do_sample, "temperature": temperature, "seed": seed,
              "judge": "keyword_judge" if judge is None else getattr(judge, "__name__", repr(judge)),
              "chat_template": chat_template}
    return Result(table, make_meta("attack_success_rate", m, ps, params, asr=asr))
