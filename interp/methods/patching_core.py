"""What activation patching and attribution patching share: the clean / corrupt pairing, the patched places
(*slots*: a site at a layer, and head, at per-row columns), the metric and its normalisation, exact patching
of a list of slots, the table's keys and row order, the figure, and the sharded-run plan.

Clean and corrupt prompt sets pair row by row (row i of one with row i of the other). ``direction="denoising"``
(the default) patches CLEAN activations into the CORRUPT run: a place scores high when restoring it alone
restores the clean behaviour. ``direction="noising"`` patches CORRUPT activations into the CLEAN run: a place
scores low when corrupting it alone destroys the behaviour. Heimersheim & Nanda, "How to use and interpret
activation patching" (2024, arXiv 2404.15255); Zhang & Nanda, "Towards best practices of activation patching"
(ICLR 2024, arXiv 2309.16042).

Metrics come from :mod:`interp.methods.metrics`; patching adds one, ``norm_logit_diff``: the logit difference
normalised per pair as (LD - LD_corrupt) / (LD_clean - LD_corrupt), 1 = clean behaviour, 0 = corrupt behaviour,
in both directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import sites as S
from ..activations.hooks import Intervention
from ..activations.interventions import set_edit
from ..activations.variants import forward, reference_run, run_variants
from ..errors import ParameterError, PromptError, check_choice, check_layer_list, check_positive_int
from ..model.loading import Model, as_model
from ..prompts import Batch, EncodedSet, PromptSet, as_prompt_set, encode, make_batch, target_token
from ..results.result import Result, concat_tables
from . import metrics as M
from .registry import Schema, ShardPlan

PATCH_SITES = (*S.RESIDUAL, *S.SUBLAYER_OUTPUTS, *S.HEAD_SITES)  # the order of the table's rows
DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out", "z")
NORM_LOGIT_DIFF = "norm_logit_diff"
METRICS = (*M.METRICS, NORM_LOGIT_DIFF)  # exact patching: any metric of interp.metrics, and the normalised LD
GRADIENT_METRICS = tuple(m for m in METRICS if m != "rank")  # attribution patching: differentiable ones
NEEDS_WRONG = (*M.NEEDS_WRONG, NORM_LOGIT_DIFF)
DIRECTIONS = ("denoising", "noising")
ALIGNS = (None, "end")
PAPERS = ("Meng et al. 2022, arXiv 2202.05262 (causal tracing); Heimersheim & Nanda 2024, arXiv 2404.15255; "
          "Zhang & Nanda, ICLR 2024, arXiv 2309.16042")

# --- the table ------------------------------------------------------------------------------------------
KEYS = ("prompt_id", "site", "layer", "head", "position")
KEY_COLUMNS = {"prompt_id": "str", "corrupt_id": "str", "site": "str", "layer": "int", "head": "int",
               "position": "int", "pos_from_end": "int", "token": "str", "target_token": "str", "target_id": "int"}
RAW_UNIT = "the metric's unit (logits for logit_diff and norm_logit_diff, before normalisation)"
SCORE_UNIT = "the metric's unit (norm_logit_diff: 1 = the clean run, 0 = the corrupt run)"
METRIC_UNITS = {"clean_metric": RAW_UNIT, "corrupt_metric": RAW_UNIT}


def patching_schema(value: str, sign: str, columns: dict[str, str], units: dict[str, str]) -> Schema:
    """The schema of a patching table: the shared keys and token columns, plus the method's own columns."""
    return Schema(keys=KEYS, value=value, unit=RAW_UNIT, sign=sign,
                  columns={**KEY_COLUMNS, **columns, "clean_metric": "float", "corrupt_metric": "float"},
                  units={**units, **METRIC_UNITS}, grid=("layer", "position"))


def example(model: Any, prompts: Any) -> dict[str, Any]:
    """Cheap parameters for a check run: two sites (one with heads), the first two layers, the last position."""
    n = as_model(model).info.n_layers
    return {"sites": ("resid_pre", "z"), "layers": list(range(min(2, n))), "positions": "last"}


# --- checks and pairing ---------------------------------------------------------------------------------
def check_positions(positions: Any) -> str | list[int]:
    """'all', 'last', or a list of prompt positions (ints; negative ones count from the end, -1 = last)."""
    if isinstance(positions, str):
        if positions not in ("all", "last"):
            raise ParameterError(f"positions={positions!r} is not 'all', 'last' or a list of token positions.")
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        return [positions]
    try:
        out = list(positions)
    except TypeError:
        raise ParameterError(f"positions={positions!r} is not 'all', 'last' or a list of token positions.") from None
    if not out or not all(isinstance(p, int) and not isinstance(p, bool) for p in out):
        raise ParameterError(f"positions={positions!r}: give a non-empty list of integer token positions.")
    if len(set(out)) != len(out):
        raise ParameterError(f"positions={positions!r} repeats a position.")
    return out


def check_layers(m: Model, layers: Sequence[int] | None) -> list[int]:
    return check_layer_list("layers", layers, m.info.n_layers)


@dataclass
class Pairs:
    """Clean and corrupt prompts, tokenised, paired row by row, with target (and wrong-answer) tokens."""

    clean: PromptSet
    corrupt: PromptSet
    enc_clean: EncodedSet
    enc_corrupt: EncodedSet
    target: torch.Tensor  # [N] target token (from the clean record), read after the clean prompt
    wrong: torch.Tensor | None  # [N] wrong-answer token, or None
    align: str | None


def make_pairs(model: Model, clean: Any, corrupt: Any, *, target: str, wrong: str | None, align: str | None,
               need_wrong: bool) -> Pairs:
    """Pair the sets and read the target tokens; every check runs here, before any forward pass.

    The target token is the first token of the clean record's ``target`` field after the clean prompt. The
    wrong answer is the clean record's ``wrong`` field when ``wrong`` names one, else the corrupt record's
    ``target`` field (the corrupt prompt's own answer), also tokenised after the clean prompt.
    """
    check_choice("align", align, ALIGNS)
    cps, kps = as_prompt_set(clean), as_prompt_set(corrupt)
    if len(cps) != len(kps):
        raise PromptError(f"The clean set has {len(cps)} prompts and the corrupt set {len(kps)}: they pair row by "
                          "row, so they must be the same size.")
    if not isinstance(target, str) or not target:
        raise ParameterError(f"target={target!r} must name a field of the clean prompts (e.g. 'target').")
    cps.require(target)
    if wrong is not None:
        if not isinstance(wrong, str) or not wrong:
            raise ParameterError(f"wrong={wrong!r} must name a field of the clean prompts, or be None.")
        cps.require(wrong)
    elif need_wrong:
        if target not in kps.fields:
            raise PromptError(f"The metric needs a wrong answer: give wrong='<field>' naming a field of the clean "
                              f"prompts, or a {target!r} field on the corrupt prompts.")
        kps.require(target)
    enc_c, enc_k = encode(model, cps), encode(model, kps)
    for i, (a, b) in enumerate(zip(enc_c.items, enc_k.items)):
        if len(a) != len(b) and align is None:
            raise PromptError(
                f"Pair {i} (clean {cps.ids[i]!r}, corrupt {kps.ids[i]!r}) has {len(a)} vs {len(b)} tokens: patching "
                "pairs positions one to one, so each pair must have the same token length (or pass align='end' to "
                "pair tokens counted from the last one)."
            )
    tgt = [target_token(model, e, r[target], prompt_id=r["id"]) for e, r in zip(enc_c.items, cps.records)]
    wr = None
    if wrong is not None or need_wrong:
        texts = [r[wrong] for r in cps.records] if wrong is not None else [r[target] for r in kps.records]
        wr = [target_token(model, e, t, prompt_id=r["id"]) for e, t, r in zip(enc_c.items, texts, cps.records)]
        for i, (a, w) in enumerate(zip(tgt, wr)):
            if a == w:
                raise PromptError(f"Pair {i} (clean {cps.ids[i]!r}): the target and the wrong answer start with the "
                                  f"same token {model.tokenizer.decode([a])!r}, so their logit difference is 0.")
    return Pairs(cps, kps, enc_c, enc_k, torch.tensor(tgt), None if wr is None else torch.tensor(wr), align)


def check_common(model: Any, clean: Any, corrupt: Any, *, sites: Any, positions: Any, metric: Any, target: str,
                 wrong: str | None, direction: str, align: str | None, batch_size: int, need_grad: bool = False
                 ) -> tuple[Model, Pairs, list[str], str | list[int], str | M.MetricFn]:
    """Every check of a patching call, before any forward pass: model, sites, positions, direction, metric
    (a name of :data:`METRICS`, or a callable checked on zero logits), the pairs and their target tokens."""
    m = as_model(model)
    site_list = S.check_sites(sites, PATCH_SITES, model=m)
    pos = check_positions(positions)
    check_choice("direction", direction, DIRECTIONS)
    check_positive_int("batch_size", batch_size)
    allowed = GRADIENT_METRICS if need_grad else METRICS
    if not callable(metric):
        check_choice("metric", metric, allowed)
    pairs = make_pairs(m, clean, corrupt, target=target, wrong=wrong, align=align,
                       need_wrong=not callable(metric) and metric in NEEDS_WRONG)
    if callable(metric):
        M.check_metric(metric, vocab_size=m.info.vocab_size, n=len(pairs.target), device=m.device, dtype=m.dtype,
                       needs_grad=need_grad, has_wrong=pairs.wrong is not None)
    return m, pairs, site_list, pos, metric


def raw_metric(metric: str | M.MetricFn, logits: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor | None,
               prompt_ids: Sequence[str] | None = None) -> torch.Tensor:
    """The metric before normalisation, one value per row (norm_logit_diff: the logit difference), through
    :func:`interp.methods.metrics.score` (a user metric that raises is reported naming the batch's prompts)."""
    name = "logit_diff" if metric == NORM_LOGIT_DIFF else metric
    return M.score(name, logits, target, wrong, prompt_ids=prompt_ids)


def score_of(metric: str | M.MetricFn, value: Any, clean: Any, corrupt: Any) -> Any:
    """The reported score: the raw metric, or (value - corrupt) / (clean - corrupt) for norm_logit_diff."""
    if metric == NORM_LOGIT_DIFF:
        return (value - corrupt) / (clean - corrupt)
    return value


def metric_unit(metric: str | M.MetricFn) -> str:
    """The unit of the raw metric of a call (recorded in the Result's meta as ``metric_unit``)."""
    return "logits" if metric == NORM_LOGIT_DIFF else M.unit_of(metric)


# --- batches and slots ----------------------------------------------------------------------------------
def pad_left(batch: Batch, width: int, pad_id: int) -> Batch:
    """The batch left-padded to ``width`` columns (spans shifted with it)."""
    extra = width - batch.width
    if extra <= 0:
        return batch
    b = batch.size
    ids = torch.cat([torch.full((b, extra), pad_id, dtype=batch.input_ids.dtype), batch.input_ids], 1)
    mask = torch.cat([torch.zeros((b, extra), dtype=batch.attention_mask.dtype), batch.attention_mask], 1)
    pos = torch.cat([torch.zeros((b, extra), dtype=batch.position_ids.dtype), batch.position_ids], 1)
    spans = {n: [(s + extra, e + extra) for s, e in sp] for n, sp in batch.spans.items()}
    return Batch(batch.indices, ids, mask, pos, batch.lengths, spans, batch.targets)


def pair_batches(model: Model, pairs: Pairs, batch_size: int) -> list[tuple[Batch, Batch]]:
    """(clean, corrupt) batches of the same pairs with the same width: column c of one faces column c of the
    other (equal lengths: the same token position; align='end': the same distance from the last token)."""
    order = sorted(range(len(pairs.clean)), key=lambda i: len(pairs.enc_clean.items[i]))
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else (model.tokenizer.eos_token_id or 0)
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        cb, kb = make_batch(model, pairs.enc_clean, idx), make_batch(model, pairs.enc_corrupt, idx)
        width = max(cb.width, kb.width)
        out.append((pad_left(cb, width, int(pad)), pad_left(kb, width, int(pad))))
    return out


def batch_bar(batches: list[tuple[Batch, Batch]], name: str, progress: bool) -> Any:
    """The pair batches, with a progress bar over them when ``progress``."""
    return tqdm(batches, desc=name, disable=not progress, unit="batch")


@dataclass
class Slot:
    """One patched place: a site at a layer (and head), at per-row columns of a batch pair."""

    site: str
    layer: int
    head: int | None
    cols: torch.Tensor  # [B] long: the column patched in each row
    valid: torch.Tensor  # [B] bool: rows where that column is a real token in both runs

    @property
    def hook(self) -> str:
        return S.hook_name(self.site, self.layer)


def position_slots(positions: str | list[int], src: Batch, dst: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-row (columns, valid) of each patched position. 'all': one slot per column with a real token in some
    row; 'last': the last column; ints: prompt position p (counted in the destination prompt; negatives from
    the end)."""
    width = dst.width
    first_real = torch.maximum(src.offsets, dst.offsets)  # first column real in both runs, per row
    out = []
    if positions == "all":
        for c in range(int(first_real.min()), width):
            cols = torch.full((dst.size,), c, dtype=torch.long)
            out.append((cols, cols >= first_real))
        return out
    plist = [-1] if positions == "last" else positions
    for p in plist:
        cols = dst.offsets + p if p >= 0 else torch.full((dst.size,), width + p, dtype=torch.long)
        valid = (cols >= first_real) & (cols < width)
        out.append((cols.clamp(0, width - 1), valid))
    return out


Place = tuple[str, int, "int | None"]  # (site, layer, head): where a slot patches, without the columns


def make_places(model: Model, sites: Sequence[str], layers: Sequence[int]) -> list[Place]:
    """(site, layer, head) in the order :func:`make_slots` walks them at each position: sites as given, layers,
    heads (every head of a head site, None for the others)."""
    heads = range(model.info.n_heads)
    return [(site, layer, h) for site in sites for layer in layers
            for h in (heads if site in S.HEAD_SITES else [None])]


def make_slots(model: Model, sites: list[str], layers: Sequence[int], positions: str | list[int], src: Batch,
               dst: Batch) -> list[Slot]:
    """One slot per kept position (real in some row) x place, position-major: slot k is kept position
    k // len(places) at place k % len(places) (the layout :func:`batch_cells` indexes)."""
    places = make_places(model, sites, layers)
    return [Slot(site, layer, h, cols, valid) for cols, valid in position_slots(positions, src, dst)
            if bool(valid.any()) for site, layer, h in places]


def slot_intervention(slot: Slot, source: torch.Tensor) -> Intervention:
    """Replace the destination's value at the slot by ``source`` (the source run's full hook value [B, T, ...])."""
    rows_idx = torch.nonzero(slot.valid, as_tuple=False)[:, 0]
    cols = slot.cols[rows_idx]
    head = slot.head
    ri, ci = rows_idx.to(source.device), cols.to(source.device)
    value = source[ri, ci] if head is None else source[ri, ci, head]
    label = f"patch {slot.site} L{slot.layer}" + (f"H{head}" if head is not None else "")
    return Intervention((set_edit(slot.hook, value, (rows_idx, cols), head=head),), label,
                        {"site": slot.site, "layer": slot.layer, "head": head})


class TokenNames:
    """Decoded token strings, cached by id."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        if tid not in self.cache:
            self.cache[tid] = self.tok.decode([tid])
        return self.cache[tid]


@dataclass
class Cells:
    """The (kept position, batch row) pairs of one batch pair that get table rows, row-major over [kept position,
    row] (the order a row-by-row build visits them): ``slot`` indexes the positions :func:`make_slots` keeps,
    ``row`` is the batch row and ``col`` its column. Every place has one row at every cell."""

    slot: np.ndarray  # [C] int64
    row: np.ndarray  # [C] int64
    col: np.ndarray  # [C] int64

    def __len__(self) -> int:
        return len(self.row)


def batch_cells(positions: str | list[int], src: Batch, dst: Batch) -> Cells:
    """The cells of a batch pair: every (position kept by :func:`make_slots`, row where it is valid)."""
    kept = [(c, v) for c, v in position_slots(positions, src, dst) if bool(v.any())]
    if not kept:
        empty = np.zeros(0, dtype=np.int64)
        return Cells(empty, empty, empty)
    cols = torch.stack([c for c, _ in kept]).numpy()
    slot, row = np.nonzero(torch.stack([v for _, v in kept]).numpy())
    return Cells(slot.astype(np.int64), row.astype(np.int64), cols[slot, row].astype(np.int64))


def _strings(values: Sequence[Any], codes: np.ndarray) -> Any:
    """``values[codes]`` as the array a DataFrame of row dicts would infer for them (pandas' string dtype for
    str), built by one take instead of a Python object per row."""
    return pd.Series(list(values)).array.take(codes)


class PatchTable:
    """A patching table built as columns: one row per place x cell of every batch pair, in :func:`finish_table`'s
    order (site, layer, head, prompt as given, position; ties in the order a row-by-row build makes them) and
    with the dtypes :func:`finish_table` gives a list of row dicts. Costs a few array operations per column,
    not a dict per row."""

    def __init__(self, pairs: Pairs, names: TokenNames, places: Sequence[Place], columns: Sequence[str]):
        self.pairs, self.names, self.places, self.columns = pairs, names, list(places), list(columns)
        self.keys: list[dict[str, np.ndarray]] = []
        self.values: list[dict[str, Any]] = []

    def add(self, dst: Batch, cells: Cells, values: dict[str, Any]) -> None:
        """One batch pair's rows. ``values``: each value column as an array [places, cells], an array [cells]
        (the same for every place) or a scalar; float64 where the column is a float."""
        if not len(cells):
            return
        r, c = cells.row, cells.col
        self.keys.append({"prompt": np.asarray(dst.indices, dtype=np.int64)[r],
                          "position": c - dst.offsets.cpu().numpy().astype(np.int64)[r],
                          "pos_from_end": dst.width - 1 - c,
                          "token": dst.input_ids.cpu().numpy().astype(np.int64)[r, c]})
        self.values.append(values)

    def table(self) -> pd.DataFrame:
        if not self.keys:
            return finish_table([], self.pairs.clean.ids, self.columns)
        n_places = len(self.places)
        sizes = [len(k["prompt"]) for k in self.keys]
        keys = {name: np.concatenate([k[name] for k in self.keys]) for name in self.keys[0]}
        rank = {pid: k for k, pid in enumerate(self.pairs.clean.ids)}
        prompt_rank = np.array([rank[pid] for pid in self.pairs.clean.ids], dtype=np.int64)
        order = np.lexsort((keys["position"], prompt_rank[keys["prompt"]]))  # stable: ties keep the build order
        keys = {name: v[order] for name, v in keys.items()}
        site_rank = {s: k for k, s in enumerate(PATCH_SITES)}
        porder = np.array(sorted(range(n_places), key=lambda k: (
            site_rank[self.places[k][0]], self.places[k][1], -1 if self.places[k][2] is None else self.places[k][2])),
            dtype=np.int64)
        n_cells = len(order)
        sites = [self.places[k][0] for k in porder]
        site_names = list(dict.fromkeys(sites))
        site_codes = np.array([site_names.index(x) for x in sites], dtype=np.int64)
        heads = [self.places[k][2] for k in porder]
        tile = lambda a: np.tile(a, n_places)  # noqa: E731
        spread = lambda a: np.repeat(a, n_cells)  # noqa: E731
        tok_ids, tok_codes = np.unique(keys["token"], return_inverse=True)
        target = self.pairs.target.cpu().numpy().astype(np.int64)[keys["prompt"]]
        tgt_ids, tgt_codes = np.unique(target, return_inverse=True)
        cols: dict[str, Any] = {
            "prompt_id": _strings(self.pairs.clean.ids, tile(keys["prompt"])),
            "corrupt_id": _strings(self.pairs.corrupt.ids, tile(keys["prompt"])),
            "site": _strings(site_names, spread(site_codes)),
            "layer": spread(np.array([self.places[k][1] for k in porder], dtype=np.int64)),
            "head": pd.arrays.IntegerArray(spread(np.array([0 if h is None else h for h in heads], dtype=np.int64)),
                                           spread(np.array([h is None for h in heads], dtype=bool))),
            "position": tile(keys["position"]),
            "pos_from_end": tile(keys["pos_from_end"]),
            "token": _strings([self.names(int(t)) for t in tok_ids], tile(tok_codes.reshape(-1))),
            "target_token": _strings([self.names(int(t)) for t in tgt_ids], tile(tgt_codes.reshape(-1))),
            "target_id": tile(target),
        }
        for name in self.columns:
            if name in cols:
                continue
            parts = [np.asarray(v[name]) for v in self.values]
            if all(p.ndim < 2 for p in parts):  # one value per cell: the same for every place
                per_cell = np.concatenate([np.broadcast_to(p, (n,)) for p, n in zip(parts, sizes)])
                cols[name] = tile(per_cell[order])
            else:
                grid = parts[0] if len(parts) == 1 else np.concatenate(
                    [np.broadcast_to(p, (n_places, n)) for p, n in zip(parts, sizes)], axis=1)
                cols[name] = grid[np.ix_(porder, order)].reshape(-1)
        return pd.DataFrame(cols, columns=self.columns)


def finish_table(rows: list[dict[str, Any]], order_ids: list[str], columns: Sequence[str]) -> pd.DataFrame:
    """The rows in the table's order: site, layer, head, prompt (as given), position; ``columns`` in order."""
    return sort_table(pd.DataFrame(rows, columns=list(columns)), order_ids)


def sort_table(table: pd.DataFrame, order_ids: list[str]) -> pd.DataFrame:
    """``table`` (head as Int64) sorted into the table's order: site, layer, head, prompt (as ``order_ids``),
    position; stable, so rows with equal keys keep their order."""
    table = table.copy()
    table["head"] = table["head"].astype("Int64")
    rank = {pid: k for k, pid in enumerate(order_ids)}
    site_rank = {s: k for k, s in enumerate(PATCH_SITES)}
    table["_p"] = table["prompt_id"].map(rank)
    table["_s"] = table["site"].map(site_rank)
    table = table.sort_values(["_s", "layer", "head", "_p", "position"], kind="stable", na_position="first")
    return table.drop(columns=["_p", "_s"]).reset_index(drop=True)


# --- exact patching of a list of slots ------------------------------------------------------------------
def run_exact(m: Model, pairs: Pairs, batch: tuple[Batch, Batch], slots: list[Slot], metric: str | M.MetricFn,
              direction: str, max_rows: int | None = None, progress: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(clean metric [B], corrupt metric [B], [patched metric [B] per slot]) for one batch pair, raw metric values.

    A row whose source value equals its destination value at the slot is not run: patching it is the identity,
    so its patched metric is the destination's own (exact; this skips, e.g., every position before the first
    token where the two prompts differ). Cost: one source and one destination forward (reading the patched
    hooks), and one destination row per remaining slot and pair, batched by the variants engine (each chunk
    starts at its first patched block and runs only the columns from its first patched column on, on the
    destination run's cached keys and values)."""
    cb, kb = batch
    src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
    tgt = pairs.target[dst.indices].to(m.device)
    wr = None if pairs.wrong is None else pairs.wrong[dst.indices].to(m.device)
    ids = [pairs.clean.ids[i] for i in dst.indices]
    hooks = sorted({s.hook for s in slots})
    src_logits, src_store = forward(m, src, read=hooks)
    src_metric = raw_metric(metric, src_logits, tgt, wr, ids)
    ref = reference_run(m, dst, read=hooks)  # the destination run, kept for the variants engine to restart from
    dst_logits, dst_store = ref.logits, ref.store
    dst_metric = raw_metric(metric, dst_logits, tgt, wr, ids)
    active: list[Slot | None] = []
    for s in slots:
        r = torch.arange(len(s.cols))
        a, b = src_store[s.hook][r, s.cols], dst_store[s.hook][r, s.cols]
        if s.head is not None:
            a, b = a[:, s.head], b[:, s.head]
        differs = (a != b).flatten(1).any(1).cpu() & s.valid
        active.append(Slot(s.site, s.layer, s.head, s.cols, differs) if bool(differs.any()) else None)
    del dst_store
    run = [k for k, s in enumerate(active) if s is not None]
    variants = [slot_intervention(active[k], src_store[active[k].hook]) for k in run]  # type: ignore[union-attr]
    bsz = dst.size

    def reduce(logits: torch.Tensor, _store: dict[str, Any]) -> torch.Tensor:
        k = logits.shape[0] // bsz
        return raw_metric(metric, logits, tgt.repeat(k), None if wr is None else wr.repeat(k), ids)

    patched = [dst_metric.clone() for _ in slots]
    if variants:
        _, outs = run_variants(m, dst, variants, reduce, max_rows=max_rows, progress=progress, reference=ref)
        for k, out in zip(run, outs):
            rows = active[k].valid.to(out.device)  # type: ignore[union-attr]
            patched[k] = torch.where(rows, out, dst_metric)
    if direction == "denoising":
        return src_metric, dst_metric, patched
    return dst_metric, src_metric, patched


# --- figure and sharded runs ----------------------------------------------------------------------------
def patching_figure(result: Result, site: str | None = None, position: int | None = None, value: str | None = None,
                    *, ci: float | None = None, n_boot: int = 1000, seed: int = 0) -> Any:
    """Mean over prompt pairs of ``value`` (default: the schema's value, ``effect`` / ``attribution``; ``"score"``
    for the metric after patching): layer x position for a residual / output site (x = token position, from the end
    when the prompts' lengths differ), layer x head for z (at ``position``, default the last). The title says over
    how many pairs; a column names its token only where every pair has that token there (the hover lists them).
    With ``ci`` (e.g. 0.95), the hover also gives each cell's seeded bootstrap interval over the pairs
    (:meth:`interp.Result.aggregate`)."""
    import numpy as np

    from ..figures.viz import axis_label, heatmap, interval_text, interval_title

    t = result.table
    if value is None:
        schema = result.schema
        value = schema.value if schema is not None else "score"
    if value not in t.columns:
        raise ParameterError(f"value={value!r} is not a column of this table ({', '.join(t.columns)}).")
    site = site or str(t["site"].iloc[0])
    t = t[t["site"] == site]
    if t.empty:
        have = sorted(result.table["site"].unique())
        raise ParameterError(f"The result has no rows for site {site!r}; it has {have}.")
    params = result.meta.get("parameters", {})
    n = t["prompt_id"].nunique()
    mean = f"mean over {n} prompt pair{'s' if n != 1 else ''}"
    title = f"{result.method} ({params.get('direction', '')}): {value}, site {site}"
    normalised = value in ("score", "estimate", "exact") and params.get("metric") == NORM_LOGIT_DIFF
    unit = "1 = clean, 0 = corrupt" if normalised else str(result.meta.get("metric_unit", ""))
    bar = axis_label(value, unit if len(unit) <= 30 else "")
    if site in S.HEAD_SITES:
        pos = -1 if position is None else position
        t = t[t["pos_from_end"] == -pos - 1] if pos < 0 else t[t["position"] == pos]
        grid = t.pivot_table(index="layer", columns="head", values=value, aggfunc="mean")
        hover = custom = None
        if ci is not None:
            custom = interval_text(t, "layer", "head", value, ci=ci, n_boot=n_boot, seed=seed, like=grid)
            hover = (f"layer=%{{y}}<br>head=%{{x}}<br>{bar.split(' (')[0]}=%{{z:.4g}}<br>{ci:.0%} interval "
                     "%{customdata}<extra></extra>")
            mean += "; hover: " + interval_title(ci, n, "pairs")
        return heatmap(grid.values, [str(h) for h in grid.columns], [str(x) for x in grid.index],
                       title=f"{title}, position {pos}<br>{mean}", x_title="head", y_title="layer",
                       zmid=0.0, colorbar_title=bar, customdata=custom, hover=hover)
    same_len = t.groupby("prompt_id")["position"].max().nunique() == 1
    col = "position" if same_len else "pos_from_end"
    grid = t.pivot_table(index="layer", columns=col, values=value, aggfunc="mean")
    if not same_len:
        grid = grid[sorted(grid.columns, reverse=True)]
    tokens = t.drop_duplicates(["prompt_id", col]).groupby(col)["token"].agg(lambda s: list(dict.fromkeys(s)))
    names = [f"{p}" if same_len else f"-{p + 1}" for p in grid.columns]
    labels = [f"{name} {tokens[p][0]!r}" if len(tokens.get(p, [])) == 1 else name
              for name, p in zip(names, grid.columns)]
    shown = [", ".join(repr(x) for x in tokens.get(p, [])[:6]) + (" ..." if len(tokens.get(p, [])) > 6 else "")
             for p in grid.columns]
    custom = np.empty((len(grid.index), len(grid.columns), 2 if ci is not None else 1), dtype=object)
    custom[:, :, 0] = [shown for _ in grid.index]
    value_name = bar.split(" (")[0]
    hover = f"layer=%{{y}}<br>position=%{{x}}<br>tokens: %{{customdata[0]}}<br>{value_name}=%{{z:.4g}}"
    if ci is not None:
        custom[:, :, 1] = interval_text(t, "layer", col, value, ci=ci, n_boot=n_boot, seed=seed, like=grid)
        hover += f"<br>{ci:.0%} interval %{{customdata[1]}}"
        mean += "; hover: " + interval_title(ci, n, "pairs")
    return heatmap(grid.values, labels, [str(x) for x in grid.index], title=f"{title}<br>{mean}",
                   x_title=("position" if same_len else "position from the end") + " (token: where all pairs share it)",
                   y_title="layer", zmid=0.0, colorbar_title=bar, customdata=custom,
                   hover=hover + "<extra></extra>")


def prepare_pairs(_m: Model, ps: PromptSet, params: dict) -> dict:
    """A sharded run cuts clean and corrupt prompts alike: they must pair row by row."""
    corrupt = as_prompt_set(params["corrupt"])
    if len(corrupt) != len(ps):
        raise PromptError(f"clean has {len(ps)} prompts but corrupt has {len(corrupt)}; they pair row by row.")
    return {**params, "corrupt": corrupt}


def merge_pairs(parts: list[Result], meta: dict, params: dict) -> Result:
    """Shard tables merged into the whole run's row order (site, layer, head, prompt, position)."""
    t = concat_tables(parts)
    table = sort_table(t, list(dict.fromkeys(t["prompt_id"])))
    return Result(table, {**meta, "corrupt_fingerprint": params["corrupt"].fingerprint()})


PAIRED_SHARDS = ShardPlan(prepare=prepare_pairs, paired=("corrupt",), merge=merge_pairs)
