"""Attribution patching (Nanda 2023): a first-order estimate of every activation-patching score at once.

For a site with activation a, patching the source value into the destination run changes the metric M by about
``attr = (a_source - a_destination) . dM/da`` (the gradient taken in the destination run). Denoising: the
destination is the corrupt run; noising: the clean run. One clean forward, one corrupt forward and one backward
give every site x layer (x head) x position. Known failure modes (attention saturation, cancellation between
paths; Kramar et al. 2024, "AtP*", arXiv 2403.00745) are why ``verify_top=k`` re-runs exact patching on the k
largest estimates and reports both numbers side by side.

``ig_steps=k > 1`` averages the gradient over k points of the straight path between the two runs' input
embeddings (EAP-IG; Hanna et al. 2024, "Have Faith in Faithfulness", arXiv 2403.17806): dM/da is taken in the
runs whose ``resid_pre`` of block 0 is ``e_dest + (j / k) (e_source - e_dest)``, j = 0 .. k-1 (a left Riemann
sum of the integrated gradient, so k = 1 is plain attribution patching and k -> infinity is the integral). It estimates
each site's share of the whole clean-corrupt change, which is not the same question as patching one site alone:
on the dense organism it tracks exact resid_pre patching better and exact head patching worse (README). On MoE
models the path crosses switches of the top-k routing, which no gradient sees, so the path sum need not reach the
total change (integrated gradients' completeness holds only where the model is smooth along the path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..activations import sites as S
from ..activations.hooks import Edit, Intervention
from ..activations.variants import forward
from ..errors import ParameterError, PromptError, check_positive_int
from ..model.loading import Model
from ..prompts import Batch
from ..results.result import Result, make_meta
from .metrics import MetricFn
from .patching_core import (
    DEFAULT_SITES,
    KEY_COLUMNS,
    PATCH_SITES,
    SCORE_UNIT,
    Cells,
    Pairs,
    PatchTable,
    Slot,
    TokenNames,
    batch_bar,
    batch_cells,
    check_common,
    check_layers,
    example,
    make_places,
    merge_pairs,
    metric_unit,
    pair_batches,
    patching_figure,
    patching_schema,
    prepare_pairs,
    raw_metric,
    run_exact,
    score_of,
)
from .registry import ShardPlan, register_method

EMBED_HOOK = S.hook_name("resid_pre", 0)  # the input embeddings, where the EAP-IG path is taken
PAPERS = ("Nanda 2023, 'Attribution patching: activation patching at industrial scale'; Kramar et al. 2024, "
          "arXiv 2403.00745 (AtP*); Hanna et al. 2024, arXiv 2403.17806 (EAP-IG: ig_steps)")
COLUMNS = ("attribution", "estimate", "exact", "clean_metric", "corrupt_metric")
SCHEMA = patching_schema(
    "attribution", "magnitude",
    {"attribution": "float", "estimate": "float", "exact": "float"},
    {"estimate": SCORE_UNIT, "exact": SCORE_UNIT})


def gradients(m: Model, batch: Batch, hooks: list[str], metric: str | MetricFn, target: torch.Tensor,
              wrong: torch.Tensor | None, prompt_ids: Sequence[str], *, embed: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward and one backward of ``batch``: (metric [B], activations, dMetric/dActivation) at ``hooks``.

    A zero tensor that requires grad is added at each hook (inside :func:`interp.activations.hooks.hooked`, so no hook
    outlives the forward); the gradient of the summed metric with respect to it is dM/da of each row (rows do
    not interact). ``embed`` [B, T, d_model], if given, replaces the input embeddings (``resid_pre`` of block 0)
    before anything else reads them."""
    deltas: dict[str, torch.Tensor] = {}

    def set_embed(t: torch.Tensor, rows: slice) -> None:
        t[rows] = embed[rows].to(t.dtype)  # type: ignore[index]

    def adder(name: str):
        def apply(t: torch.Tensor, rows: slice) -> None:
            if name not in deltas:
                deltas[name] = torch.zeros_like(t, requires_grad=True)
            t[rows] += deltas[name][rows]

        return apply

    first = (Edit(EMBED_HOOK, set_embed),) if embed is not None else ()
    iv = Intervention(first + tuple(Edit(h, adder(h)) for h in hooks), "gradient probe")
    logits, store = forward(m, batch, [iv], read=hooks, keep_grad=True)
    with torch.enable_grad():
        value = raw_metric(metric, logits, target, wrong, prompt_ids)
        missing = [h for h in hooks if h not in deltas]
        if missing:
            raise RuntimeError(f"The forward pass never reached {missing[0]!r}.")
        grads = torch.autograd.grad(value.sum(), [deltas[h] for h in hooks], allow_unused=True)
    acts = {h: store[h].detach() for h in hooks}
    out = {h: (g if g is not None else torch.zeros_like(deltas[h])).detach() for h, g in zip(hooks, grads)}
    return value.detach(), acts, out


def path_gradients(m: Model, src: Batch, dst: Batch, hooks: list[str], metric: str | MetricFn, target: torch.Tensor,
                   wrong: torch.Tensor | None, prompt_ids: Sequence[str], steps: int
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor],
                              dict[str, torch.Tensor]]:
    """The source run's last logits and activations; the destination's metric and activations, and dM/da averaged
    over ``steps`` points e_dst + (j / steps)(e_src - e_dst) of the input-embedding path (j = 0: the destination
    run itself).
    Cost: 1 source forward + ``steps`` x (1 forward + 1 backward)."""
    read = hooks if steps == 1 else sorted({*hooks, EMBED_HOOK})
    src_logits, src_store = forward(m, src, read=read)
    dst_metric, dst_acts, grads = gradients(m, dst, hooks, metric, target, wrong, prompt_ids)
    if steps > 1:
        _, dst_embed = forward(m, dst, read=[EMBED_HOOK], logits=None, stop_after=EMBED_HOOK)
        e_dst, e_src = dst_embed[EMBED_HOOK], src_store[EMBED_HOOK]
        total = {h: g.clone() for h, g in grads.items()}
        for j in range(1, steps):
            _, _, g = gradients(m, dst, hooks, metric, target, wrong, prompt_ids,
                                embed=e_dst + (j / steps) * (e_src - e_dst))
            for h in hooks:
                total[h] += g[h]
        grads = {h: t / steps for h, t in total.items()}
    return src_logits, src_store, dst_metric, dst_acts, grads


def check_same_lengths(pairs: Pairs) -> None:
    for i, (a, b) in enumerate(zip(pairs.enc_clean.items, pairs.enc_corrupt.items)):
        if len(a) != len(b):
            raise PromptError(
                f"ig_steps > 1 interpolates the clean and corrupt input embeddings token by token, but pair {i} "
                f"(clean {pairs.clean.ids[i]!r}, corrupt {pairs.corrupt.ids[i]!r}) has {len(a)} vs {len(b)} tokens; "
                "use pairs of equal length, or ig_steps=1.")


def place_attributions(sites: Sequence[str], layers: Sequence[int], src: dict[str, torch.Tensor],
                       dst: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], cells: Cells) -> torch.Tensor:
    """(a_src - a_dst) . dM/da [places, cells] in float64, places in :func:`make_places` order: one contraction
    over the feature dimension per hook (every position, and head, at once), then one gather of the cells."""
    device = grads[S.hook_name(sites[0], layers[0])].device
    r, c = torch.from_numpy(cells.row).to(device), torch.from_numpy(cells.col).to(device)
    out = []
    for site in sites:
        for layer in layers:
            hook = S.hook_name(site, layer)
            per = ((src[hook] - dst[hook]).double() * grads[hook].double()).sum(-1)  # [B, T] or [B, T, heads]
            at = per[r, c]  # [C] or [C, heads]
            out.append(at.T if site in S.HEAD_SITES else at[None])
    return torch.cat(out)


def _prepare(m: Model, ps: Any, params: dict) -> dict:
    if params.get("verify_top"):
        raise ParameterError("verify_top picks the places with the largest mean attribution over the whole set, which "
                             "no shard sees; run a sharded attribution_patching with verify_top=0, then "
                             "activation_patching on the places you pick (or run it without shards).")
    return prepare_pairs(m, ps, params)


@register_method("attribution_patching", inputs="pair", schema=SCHEMA,
                 shards=ShardPlan(prepare=_prepare, paired=("corrupt",), merge=merge_pairs), paper=PAPERS,
                 cost="1 source forward + 1 destination forward + 1 backward per batch (every place at once); "
                 "ig_steps=k: 1 + k forwards + k backwards; verify_top=k adds exact patching of k places",
                 family="patching", figure=patching_figure, fields=("target",), organism="dense",
                 corpus="composite", example=example)
def attribution_patching(
    model: Any,
    clean: Any,
    corrupt: Any,
    *,
    sites: Sequence[str] | str = DEFAULT_SITES,
    positions: str | Sequence[int] = "all",
    metric: str | MetricFn = "logit_diff",
    target: str = "target",
    wrong: str | None = None,
    direction: str = "denoising",
    verify_top: int = 0,
    ig_steps: int = 1,
    layers: Sequence[int] | None = None,
    align: str | None = None,
    batch_size: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
) -> Result:
    """Estimate the activation-patching table with one gradient: attr = (a_source - a_dest) . dM/da at dest
    (Nanda 2023; Kramar et al. 2024, arXiv 2403.00745; EAP-IG: Hanna et al. 2024, arXiv 2403.17806).

    Same arguments and pairing as :func:`interp.activation_patching` (denoising: source = clean, destination =
    corrupt; noising: the reverse), plus:

    Args:
        metric: as in activation_patching, differentiable in the logits (not "rank").
        verify_top: the k places (site, layer, head, position) with the largest mean |attribution| over pairs
            are patched exactly, and their ``exact`` score sits next to the ``estimate`` (0: none).
        ig_steps: the gradient is averaged over k points of the input-embedding path from the destination run to
            the source run (EAP-IG, see the module docstring); k > 1 needs every pair to have the same token
            length, since the path mixes the two runs' embeddings column by column.
        progress: a progress bar over the pair batches.

    Returns:
        A Result with the keys and token columns of activation_patching plus attribution (the estimated change
        of the raw metric, i.e. of activation_patching's ``effect``; the schema's value, larger magnitude
        matters more), estimate (the estimated score after patching: the raw metric of the destination +
        attribution, normalised as the metric says), exact (the exact score; NaN unless verified), clean_metric
        / corrupt_metric (raw metric values).

    Cost per batch: 1 source forward, ig_steps x (1 destination forward + 1 backward); verify_top adds exact
    patching of k places (activation_patching's cost for them).
    """
    m, pairs, site_list, pos, metric_v = check_common(
        model, clean, corrupt, sites=sites, positions=positions, metric=metric, target=target, wrong=wrong,
        direction=direction, align=align, batch_size=batch_size, need_grad=True)
    verify_top = check_positive_int("verify_top", verify_top, minimum=0)
    ig_steps = check_positive_int("ig_steps", ig_steps)
    if ig_steps > 1:
        check_same_lengths(pairs)
    layer_list = check_layers(m, layers)
    places = make_places(m, site_list, layer_list)
    hooks = sorted({S.hook_name(site, layer) for site, layer, _ in places})
    rows = PatchTable(pairs, TokenNames(m.tokenizer), places, [*KEY_COLUMNS, *COLUMNS])
    batches = pair_batches(m, pairs, batch_size)
    for cb, kb in batch_bar(batches, "attribution_patching", progress):
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        cells = batch_cells(pos, src, dst)
        if not len(cells):
            continue
        tgt = pairs.target[dst.indices].to(m.device)
        wr = None if pairs.wrong is None else pairs.wrong[dst.indices].to(m.device)
        ids = [pairs.clean.ids[i] for i in dst.indices]
        src_logits, src_store, dst_metric, dst_acts, grads = path_gradients(m, src, dst, hooks, metric_v, tgt, wr,
                                                                            ids, ig_steps)
        src_metric = raw_metric(metric_v, src_logits, tgt, wr, ids).detach()
        clean_m, corr_m = (src_metric, dst_metric) if direction == "denoising" else (dst_metric, src_metric)
        attr = place_attributions(site_list, layer_list, src_store, dst_acts, grads, cells)
        host = torch.cat([attr.reshape(-1), torch.stack([clean_m, corr_m, dst_metric]).double().reshape(-1)]).cpu()
        host = host.numpy()  # the batch's one transfer to the host
        a = host[:attr.numel()].reshape(attr.shape)
        cm, km, dm = (v[cells.row] for v in host[attr.numel():].reshape(3, -1))
        with np.errstate(divide="ignore", invalid="ignore"):
            estimate = score_of(metric_v, dm + a, cm, km)
        rows.add(dst, cells, {"attribution": a, "estimate": estimate, "exact": float("nan"), "clean_metric": cm,
                              "corrupt_metric": km})
    table = rows.table()
    if verify_top:
        table = _verify(m, pairs, table, batches, metric_v, direction, verify_top, max_rows)
    return Result(table, make_meta(model=m, prompts=pairs.clean, corrupt_fingerprint=pairs.corrupt.fingerprint(),
                                   metric_unit=metric_unit(metric_v)))


def _verify(m: Model, pairs: Pairs, table: pd.DataFrame, batches: list[tuple[Batch, Batch]], metric: str | MetricFn,
            direction: str, k: int, max_rows: int | None) -> pd.DataFrame:
    """Exact patching of the k places with the largest mean |attribution|; fills the ``exact`` column there."""
    keys = ["site", "layer", "head", "position"]
    mean_abs = table.assign(_a=table["attribution"].abs()).groupby(keys, dropna=False, sort=False)["_a"].mean()
    top = mean_abs.sort_values(ascending=False, kind="stable").head(k).index.tolist()
    chosen = {(s, int(layer), None if pd.isna(h) else int(h), int(p)) for s, layer, h, p in top}
    exact: dict[tuple, float] = {}
    for cb, kb in batches:
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        slots = []
        for site, layer, head, p in sorted(chosen, key=lambda x: (PATCH_SITES.index(x[0]), x[1], x[2] or 0, x[3])):
            cols = dst.offsets + p
            first_real = torch.maximum(src.offsets, dst.offsets)
            valid = (cols >= first_real) & (cols < dst.width)
            if bool(valid.any()):
                slots.append(Slot(site, layer, head, cols.clamp(0, dst.width - 1), valid))
        if not slots:
            continue
        clean_m, corr_m, patched = run_exact(m, pairs, (cb, kb), slots, metric, direction, max_rows)
        for slot, vals in zip(slots, patched):
            for r in torch.nonzero(slot.valid, as_tuple=False)[:, 0].tolist():
                i = dst.indices[r]
                pos_r = int(slot.cols[r]) - int(dst.offsets[r])
                exact[(pairs.clean.ids[i], slot.site, slot.layer, slot.head, pos_r)] = float(
                    score_of(metric, float(vals[r]), float(clean_m[r]), float(corr_m[r])))
    out = table.copy()
    # only the rows at a chosen place can have an exact value: find them with whole-column comparisons
    at = np.zeros(len(out), dtype=bool)
    site, layer, position = (out[c].to_numpy() for c in ("site", "layer", "position"))
    head, head_na = out["head"].to_numpy(dtype=np.int64, na_value=-1), out["head"].isna().to_numpy()
    for s, la, h, p in chosen:
        at |= (site == s) & (layer == la) & (position == p) & (head_na if h is None else head == h)
    idx = np.nonzero(at)[0]
    values = out["exact"].to_numpy(dtype=np.float64, copy=True)
    pid = out["prompt_id"].to_numpy()
    values[idx] = [exact.get((pid[i], site[i], int(layer[i]), None if head_na[i] else int(head[i]), int(position[i])),
                             float("nan")) for i in idx]
    out["exact"] = values
    return out
