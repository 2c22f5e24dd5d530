"""Attribution patching (Nanda 2023): a first-order estimate of every activation-patching score at once.

For a site with activation a, patching the source value into the destination run changes the metric M by about
``attr = (a_source - a_destination) . dM/da`` (the gradient taken in the destination run). Denoising: the
destination is the corrupt run; noising: the clean run. One clean forward, one corrupt forward and one backward
give every site x layer (x head) x position. Known failure modes (attention saturation, cancellation between
paths; Kramar et al. 2024, "AtP*") are why ``verify_top=k`` re-runs exact patching on the k largest estimates
and reports both numbers side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from ..errors import ParameterError, check_positive_int
from ..hooks import Edit, Intervention
from ..model import Model
from ..prompts import Batch
from ..registry import ShardPlan, register_method
from ..results import Result, make_meta
from ..variants import forward
from .patching import (
    DEFAULT_SITES,
    SITES,
    MetricFn,
    Pairs,
    Slot,
    TokenNames,
    check_common,
    check_layers,
    finish_table,
    make_slots,
    merge_pairs,
    pair_batches,
    patching_figure,
    prepare_pairs,
    raw_metric,
    run_exact,
    score_of,
    slot_rows,
)


def gradients(m: Model, batch: Batch, hooks: list[str], metric: str | MetricFn, answer: torch.Tensor,
              wrong: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward and one backward of ``batch``: (metric [B], activations, dMetric/dActivation) at ``hooks``.

    A zero tensor that requires grad is added at each hook (inside :func:`interp.hooks.hooked`, so no hook
    outlives the forward); the gradient of the summed metric with respect to it is dM/da of each row (rows do
    not interact)."""
    deltas: dict[str, torch.Tensor] = {}

    def adder(name: str):
        def apply(t: torch.Tensor, rows: slice) -> None:
            if name not in deltas:
                deltas[name] = torch.zeros_like(t, requires_grad=True)
            t[rows] += deltas[name][rows]

        return apply

    iv = Intervention(tuple(Edit(h, adder(h)) for h in hooks), "gradient probe")
    logits, store = forward(m, batch, [iv], read=hooks, keep_grad=True)
    with torch.enable_grad():
        value = raw_metric(metric, logits, answer, wrong)
        missing = [h for h in hooks if h not in deltas]
        if missing:
            raise RuntimeError(f"The forward pass never reached {missing[0]!r}.")
        grads = torch.autograd.grad(value.sum(), [deltas[h] for h in hooks], allow_unused=True)
    acts = {h: store[h].detach() for h in hooks}
    out = {h: (g if g is not None else torch.zeros_like(deltas[h])).detach() for h, g in zip(hooks, grads)}
    return value.detach(), acts, out


def slot_attribution(slot: Slot, src: torch.Tensor, dst: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(a_src - a_dst) . grad at the slot's per-row columns (and head) [B]; rows not valid get 0."""
    r = torch.arange(len(slot.cols))
    c = slot.cols.to(src.device)
    diff, g = src[r, c] - dst[r, c], grad[r, c]
    if slot.head is not None:
        diff, g = diff[:, slot.head], grad[r, c][:, slot.head]
    out = (diff.double() * g.double()).sum(-1)
    return torch.where(slot.valid.to(out.device), out, torch.zeros_like(out))


def _prepare(m: Model, ps: Any, params: dict) -> dict:
    if params.get("verify_top"):
        raise ParameterError("verify_top picks the places with the largest mean attribution over the whole set, which "
                             "no shard sees; run a sharded attribution_patching with verify_top=0, then "
                             "activation_patching on the places you pick (or run it without shards).")
    return prepare_pairs(m, ps, params)


@register_method("attribution_patching",
                 shards=ShardPlan(prepare=_prepare, paired=("corrupt",), merge=merge_pairs),
                 paper="Nanda 2023, 'Attribution patching'; Kramar et al. 2024 (AtP*)",
                 cost="1 clean forward + 1 corrupt forward + 1 backward per batch (all sites at once); "
                 "verify_top=k adds exact patching of k places", family="patching", figure=patching_figure)
def attribution_patching(
    model: Any,
    clean: Any,
    corrupt: Any,
    *,
    sites: Sequence[str] | str = DEFAULT_SITES,
    positions: str | Sequence[int] = "all",
    metric: str | MetricFn = "logit_diff",
    answer: str = "target",
    wrong: str | None = None,
    direction: str = "denoising",
    verify_top: int = 0,
    layers: Sequence[int] | None = None,
    align: str | None = None,
    batch_size: int = 8,
    max_rows: int | None = None,
) -> Result:
    """Estimate the activation-patching table with one gradient: attr = (a_source - a_dest) . dM/da at dest.

    Same arguments and pairing as :func:`interp.activation_patching` (denoising: source = clean, destination =
    corrupt; noising: the reverse). ``metric`` must be differentiable in the logits. ``verify_top=k``: the k
    places (site, layer, head, position) with the largest mean |attribution| over pairs are patched exactly, and
    their ``exact`` score sits next to the ``estimate``.

    Table: the keys of activation_patching plus attribution (the estimated change of the raw metric), estimate
    (the estimated score after patching: the raw metric of the destination + attribution, normalised as the
    metric says), exact (the exact score; NaN unless verified), clean / corrupt (raw metric values). Cost per
    batch: 1 source forward, 1 destination forward + 1 backward; verify_top adds exact patching of k places.
    """
    m, pairs, site_list, pos, metric_v = check_common(
        model, clean, corrupt, sites=sites, positions=positions, metric=metric, answer=answer, wrong=wrong,
        direction=direction, align=align, batch_size=batch_size, need_grad=True)
    verify_top = check_positive_int("verify_top", verify_top, minimum=0)
    layer_list = check_layers(m, layers)
    names = TokenNames(m.tokenizer)
    rows: list[dict[str, Any]] = []
    batches = pair_batches(m, pairs, batch_size)
    for cb, kb in batches:
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        slots = make_slots(m, site_list, layer_list, pos, src, dst)
        hooks = sorted({s.hook for s in slots})
        ans = pairs.answer[dst.indices].to(m.device)
        wr = None if pairs.wrong is None else pairs.wrong[dst.indices].to(m.device)
        src_logits, src_store = forward(m, src, read=hooks)
        src_metric = raw_metric(metric_v, src_logits, ans, wr).detach()
        dst_metric, dst_acts, grads = gradients(m, dst, hooks, metric_v, ans, wr)
        clean_m, corr_m = (src_metric, dst_metric) if direction == "denoising" else (dst_metric, src_metric)
        cm, km, dm = clean_m.double().cpu(), corr_m.double().cpu(), dst_metric.double().cpu()
        for slot in slots:
            attr = slot_attribution(slot, src_store[slot.hook], dst_acts[slot.hook], grads[slot.hook]).cpu()
            for r, key in slot_rows(slot, dst, pairs, names):
                a, c, k = float(attr[r]), float(cm[r]), float(km[r])
                rows.append({**key, "attribution": a, "estimate": float(score_of(metric_v, float(dm[r]) + a, c, k)),
                             "exact": float("nan"), "clean": c, "corrupt": k})
    table = finish_table(rows, pairs.clean.ids)
    if verify_top:
        table = _verify(m, pairs, table, batches, metric_v, direction, verify_top, max_rows)
    params = {"sites": site_list, "positions": pos, "metric": metric if isinstance(metric, str) else "custom",
              "answer": answer, "wrong": wrong, "direction": direction, "verify_top": verify_top,
              "layers": layer_list, "align": align}
    return Result(table, make_meta("attribution_patching", m, pairs.clean, params,
                                   corrupt_fingerprint=pairs.corrupt.fingerprint()))


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
        for site, layer, head, p in sorted(chosen, key=lambda x: (list(SITES).index(x[0]), x[1], x[2] or 0, x[3])):
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
    heads = out["head"].astype(object).where(out["head"].notna(), None)
    key = zip(out["prompt_id"], out["site"], out["layer"], heads, out["position"])
    out["exact"] = [exact.get((p, s, int(la), None if h is None else int(h), int(po)), float("nan"))
                    for p, s, la, h, po in key]
    return out
