"""Activation patching: copy one site's activation from a source run into a destination run and measure the
metric, for every site x layer (x head) x position at once, through the variants engine.

Clean and corrupt prompt sets pair row by row. ``direction="denoising"`` (the default) patches CLEAN
activations into the CORRUPT run; ``direction="noising"`` patches CORRUPT activations into the CLEAN run. Meng
et al., "Locating and editing factual associations in GPT" (2022, arXiv 2202.05262); Heimersheim & Nanda, "How
to use and interpret activation patching" (2024, arXiv 2404.15255); Zhang & Nanda, "Towards best practices of
activation patching" (ICLR 2024, arXiv 2309.16042). The pairing, slots and metrics it shares with
:mod:`interp.methods.attribution_patching` live in :mod:`interp.methods.patching_core`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..results.result import Result, make_meta
from .metrics import MetricFn
from .patching_core import (
    DEFAULT_SITES,
    KEY_COLUMNS,
    PAIRED_SHARDS,
    PAPERS,
    RAW_UNIT,
    SCORE_UNIT,
    PatchTable,
    TokenNames,
    batch_bar,
    batch_cells,
    check_common,
    check_layers,
    example,
    make_places,
    make_slots,
    metric_unit,
    pair_batches,
    patching_figure,
    patching_schema,
    run_exact,
    score_of,
)
from .registry import register_method

COLUMNS = ("effect", "score", "patched_metric", "clean_metric", "corrupt_metric")
SCHEMA = patching_schema(
    "effect", "magnitude",
    {"effect": "float", "score": "float", "patched_metric": "float"},
    {"score": SCORE_UNIT, "patched_metric": RAW_UNIT})


@register_method("activation_patching", inputs="pair", schema=SCHEMA, shards=PAIRED_SHARDS, paper=PAPERS,
                 cost="2 forwards per pair + 1 destination row per site x layer (x head) x position where the two "
                 "runs differ, batched and started at the patched block", family="patching", figure=patching_figure,
                 fields=("target",), organism="dense", corpus="composite", example=example)
def activation_patching(
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
    layers: Sequence[int] | None = None,
    align: str | None = None,
    batch_size: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
) -> Result:
    """Exact activation patching of every site x layer (x head) x position (Meng et al. 2022, arXiv 2202.05262;
    Heimersheim & Nanda 2024, arXiv 2404.15255; Zhang & Nanda, ICLR 2024, arXiv 2309.16042).

    ``direction="denoising"`` (default): each clean activation is patched into the corrupt run, alone;
    ``"noising"``: each corrupt activation into the clean run. Clean row i pairs with corrupt row i; the two
    must have the same token length unless ``align="end"`` (tokens paired counting from the last; a position
    real in only one of the two is skipped).

    Args:
        model: an interp.Model or a TransformerBridge.
        clean, corrupt: prompt sets paired row by row.
        sites: names from interp.activations.sites: resid_pre, resid_mid, resid_post, attn_out, mlp_out (whole-layer
            vectors) and z (per head, before W_O).
        positions: "all", "last" or token positions of the destination prompt (0-based; negatives from the end).
        metric: a name of interp.metrics ("logit_diff": logit of the target minus logit of the wrong answer,
            "prob", "logprob", "logit", "rank"), "norm_logit_diff" ((LD - LD_corrupt) / (LD_clean -
            LD_corrupt) per pair: 1 = clean behaviour, 0 = corrupt behaviour, in both directions), or a callable
            ``f(logits [B, vocab], target [B], wrong [B] | None) -> [B]``.
        target: the clean prompts' field whose first token is scored (read after the clean prompt).
        wrong: the clean prompts' field of the contrast answer; None: the corrupt prompt's ``target`` field.
        direction: "denoising" or "noising".
        layers: layer indices (None: all).
        align: None (equal lengths) or "end".
        batch_size: pairs per batch; max_rows: at most this many patched rows per forward.
        progress: a progress bar over the pair batches.

    Returns:
        A Result with one row per pair x site x layer (x head) x position: prompt_id, corrupt_id, site, layer,
        head (NA except z), position (in the destination prompt), pos_from_end, token, target_token, target_id,
        effect (patched_metric minus the destination run's own metric: what attribution patching estimates; the
        schema's value, larger magnitude matters more), score (the metric after patching, normalised for
        norm_logit_diff), patched_metric / clean_metric / corrupt_metric (raw metric values).

    Cost: 2 forwards per pair plus one destination row per patched place where the source and destination
    activations differ, batched by the variants engine (chunks start at their first patched block).
    """
    m, pairs, site_list, pos, metric_v = check_common(
        model, clean, corrupt, sites=sites, positions=positions, metric=metric, target=target, wrong=wrong,
        direction=direction, align=align, batch_size=batch_size)
    layer_list = check_layers(m, layers)
    places = make_places(m, site_list, layer_list)
    rows = PatchTable(pairs, TokenNames(m.tokenizer), places, [*KEY_COLUMNS, *COLUMNS])
    for cb, kb in batch_bar(pair_batches(m, pairs, batch_size), "activation_patching", progress):
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        slots = make_slots(m, site_list, layer_list, pos, src, dst)
        clean_m, corr_m, patched = run_exact(m, pairs, (cb, kb), slots, metric_v, direction, max_rows, progress)
        cells = batch_cells(pos, src, dst)  # slot k: kept position k // len(places), place k % len(places)
        if not len(cells):
            continue
        n = dst.size
        host = torch.cat([torch.stack(patched).double().reshape(-1),
                          torch.stack([clean_m, corr_m]).double().reshape(-1)]).cpu().numpy()  # one transfer
        vals = host[:len(slots) * n].reshape(-1, len(places), n)[cells.slot, :, cells.row].T  # [places, cells]
        cm, km = (v[cells.row] for v in host[len(slots) * n:].reshape(2, n))
        dm = km if direction == "denoising" else cm
        with np.errstate(divide="ignore", invalid="ignore"):
            score = score_of(metric_v, vals, cm, km)
        rows.add(dst, cells, {"effect": vals - dm, "score": score, "patched_metric": vals, "clean_metric": cm,
                              "corrupt_metric": km})
    table = rows.table()
    return Result(table, make_meta(model=m, prompts=pairs.clean, corrupt_fingerprint=pairs.corrupt.fingerprint(),
                                   metric_unit=metric_unit(metric_v)))
