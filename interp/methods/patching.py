"""Activation patching: copy one site's activation from a source run into a destination run and measure the
answer metric, for every site x layer (x head) x position at once, through the variants engine.

Clean and corrupt prompt sets pair row by row (row i of one with row i of the other). ``direction="denoising"``
(the default) patches CLEAN activations into the CORRUPT run: a site scores high when restoring it alone
restores the clean behaviour. ``direction="noising"`` patches CORRUPT activations into the CLEAN run: a site
scores low when corrupting it alone destroys the behaviour. See Heimersheim & Nanda, "How to use and interpret
activation patching" (2024), and Zhang & Nanda, "Towards best practices of activation patching" (ICLR 2024).

The shared pieces (sites, pairing, metrics, per-row position maps) live here and are reused by
:mod:`interp.methods.attribution_patching`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ..errors import ParameterError, PromptError, check_choice, check_layer_list, check_positive_int
from ..hooks import Edit, Intervention
from ..model import Model, as_model
from ..prompts import Batch, EncodedSet, PromptSet, as_prompt_set, encode, make_batch, target_token
from ..registry import ShardPlan, register_method
from ..results import Result, concat_tables, make_meta
from ..variants import forward, run_variants

SITES: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "z": "blocks.{layer}.attn.hook_z",
}
HEAD_SITES = ("z",)
METRICS = ("logit_diff", "norm_logit_diff", "prob", "logprob")
DIRECTIONS = ("denoising", "noising")
ALIGNS = (None, "end")
DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out", "z")

MetricFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# --- checks and pairing ---------------------------------------------------------------------------------
def check_sites(model: Model, sites: Sequence[str] | str) -> list[str]:
    """Validate site names (and that the model has their hooks)."""
    if isinstance(sites, str):
        sites = [sites]
    sites = list(sites)
    if not sites:
        raise ParameterError("sites is empty; name at least one of " + ", ".join(SITES) + ".")
    for s in sites:
        if s not in SITES:
            from ..errors import close_matches

            near = close_matches(str(s), SITES)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ParameterError(f"Unknown site {s!r}.{hint} Sites are {', '.join(SITES)}.")
        name = SITES[s].format(layer=0)
        if name not in model.bridge.hook_dict:
            raise ParameterError(f"Site {s!r}: this model has no hook {name!r}.")
    if len(set(sites)) != len(sites):
        raise ParameterError(f"sites names a site twice: {sites}.")
    return sites


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


@dataclass
class Pairs:
    """Clean and corrupt prompts, tokenised, paired row by row, with answer (and wrong-answer) tokens."""

    clean: PromptSet
    corrupt: PromptSet
    enc_clean: EncodedSet
    enc_corrupt: EncodedSet
    answer: torch.Tensor  # [N] answer token (from the clean record), read after the clean prompt
    wrong: torch.Tensor | None  # [N] wrong-answer token, or None
    align: str | None
    fields: dict[str, Any] = field(default_factory=dict)


def make_pairs(model: Model, clean: Any, corrupt: Any, *, answer: str, wrong: str | None, align: str | None,
               need_wrong: bool) -> Pairs:
    """Pair the sets and read the answer tokens; every check runs here, before any forward pass.

    The answer token is the first token of the clean record's ``answer`` field after the clean prompt. The
    wrong answer is the clean record's ``wrong`` field when ``wrong`` names one, else the corrupt record's
    ``answer`` field (the corrupt prompt's own answer), also tokenised after the clean prompt.
    """
    check_choice("align", align, ALIGNS)
    cps, kps = as_prompt_set(clean), as_prompt_set(corrupt)
    if len(cps) != len(kps):
        raise PromptError(f"The clean set has {len(cps)} prompts and the corrupt set {len(kps)}: they pair row by "
                          "row, so they must be the same size.")
    if not isinstance(answer, str) or not answer:
        raise ParameterError(f"answer={answer!r} must name a field of the clean prompts (e.g. 'target').")
    cps.require(answer)
    if wrong is not None:
        if not isinstance(wrong, str) or not wrong:
            raise ParameterError(f"wrong={wrong!r} must name a field of the clean prompts, or be None.")
        cps.require(wrong)
    elif need_wrong:
        if answer not in kps.fields:
            raise PromptError(f"The metric needs a wrong answer: give wrong='<field>' naming a field of the clean "
                              f"prompts, or an {answer!r} field on the corrupt prompts.")
        kps.require(answer)
    enc_c, enc_k = encode(model, cps), encode(model, kps)
    for i, (a, b) in enumerate(zip(enc_c.items, enc_k.items)):
        if len(a) != len(b) and align is None:
            raise PromptError(
                f"Pair {i} (clean {cps.ids[i]!r}, corrupt {kps.ids[i]!r}) has {len(a)} vs {len(b)} tokens: patching "
                "pairs positions one to one, so each pair must have the same token length (or pass align='end' to "
                "pair tokens counted from the last one)."
            )
    ans = [target_token(model, e, r[answer], prompt_id=r["id"]) for e, r in zip(enc_c.items, cps.records)]
    wr = None
    if wrong is not None or need_wrong:
        texts = [r[wrong] for r in cps.records] if wrong is not None else [r[answer] for r in kps.records]
        wr = [target_token(model, e, t, prompt_id=r["id"]) for e, t, r in zip(enc_c.items, texts, cps.records)]
        for i, (a, w) in enumerate(zip(ans, wr)):
            if a == w:
                raise PromptError(f"Pair {i} (clean {cps.ids[i]!r}): the answer and the wrong answer start with the "
                                  f"same token {model.tokenizer.decode([a])!r}, so their logit difference is 0.")
    return Pairs(cps, kps, enc_c, enc_k, torch.tensor(ans), None if wr is None else torch.tensor(wr), align)


def check_metric(model: Model, metric: Any, pairs: Pairs, *, need_grad: bool = False) -> str | MetricFn:
    """A metric name, or a callable ``metric(logits [B, vocab], answer [B], wrong [B] | None) -> [B]`` (checked
    on zero logits before any forward pass; with ``need_grad``, it must be differentiable in the logits)."""
    if callable(metric):
        n = len(pairs.answer)
        probe = torch.zeros(n, model.info.vocab_size, device=model.device, dtype=model.dtype,
                            requires_grad=need_grad)
        try:
            with torch.enable_grad():
                out = metric(probe, pairs.answer.to(model.device), None if pairs.wrong is None else
                             pairs.wrong.to(model.device))
        except Exception as exc:  # noqa: BLE001 - a user function: report what it raised
            raise ParameterError(f"The metric function fails on logits of shape {tuple(probe.shape)}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ParameterError(f"The metric must return one scalar per prompt (a tensor of shape ({n},) for "
                                 f"logits of shape {tuple(probe.shape)}); it returned {shape}.")
        if need_grad and not out.requires_grad:
            raise ParameterError("Attribution patching needs a metric that is differentiable in the logits; this "
                                 "metric's output carries no gradient (argmax, comparisons, .item() or detach?).")
        return metric
    check_choice("metric", metric, METRICS)
    return metric


def raw_metric(metric: str | MetricFn, logits: torch.Tensor, answer: torch.Tensor,
               wrong: torch.Tensor | None) -> torch.Tensor:
    """The metric before normalisation, one value per row: a logit difference, a probability or a log-prob."""
    if callable(metric):
        return metric(logits, answer, wrong)
    logits = logits.float()
    if metric in ("logit_diff", "norm_logit_diff"):
        return logits.gather(-1, answer[:, None])[:, 0] - logits.gather(-1, wrong[:, None])[:, 0]
    logprobs = logits.log_softmax(-1).gather(-1, answer[:, None])[:, 0]
    return logprobs.exp() if metric == "prob" else logprobs


def score_of(metric: str | MetricFn, value: Any, clean: Any, corrupt: Any) -> Any:
    """The reported score: the raw metric, or (value - corrupt) / (clean - corrupt) for norm_logit_diff."""
    if metric == "norm_logit_diff":
        return (value - corrupt) / (clean - corrupt)
    return value


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
        return SITES[self.site].format(layer=self.layer)


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


def make_slots(model: Model, sites: list[str], layers: Sequence[int], positions: str | list[int], src: Batch,
               dst: Batch) -> list[Slot]:
    heads = range(model.info.n_heads)
    slots = []
    for cols, valid in position_slots(positions, src, dst):
        if not bool(valid.any()):
            continue
        for site in sites:
            for layer in layers:
                for h in heads if site in HEAD_SITES else [None]:
                    slots.append(Slot(site, layer, h, cols, valid))
    return slots


def slot_intervention(slot: Slot, source: torch.Tensor) -> Intervention:
    """Replace the destination's value at the slot by ``source`` (the source run's full hook value [B, T, ...])."""
    rows_idx = torch.nonzero(slot.valid, as_tuple=False)[:, 0]
    cols = slot.cols[rows_idx]
    head = slot.head

    def apply(t: torch.Tensor, rows: slice) -> None:
        target = t[rows]
        ri, ci = rows_idx.to(t.device), cols.to(t.device)
        v = source.to(device=t.device, dtype=t.dtype)
        if head is None:
            target[ri, ci] = v[ri, ci]
        else:
            target[ri, ci, head] = v[ri, ci, head]

    label = f"patch {slot.site} L{slot.layer}" + (f"H{head}" if head is not None else "")
    return Intervention((Edit(slot.hook, apply),), label, {"site": slot.site, "layer": slot.layer, "head": head})


def check_common(model: Any, clean: Any, corrupt: Any, *, sites: Any, positions: Any, metric: Any, answer: str,
                 wrong: str | None, direction: str, align: str | None, batch_size: int, need_grad: bool = False
                 ) -> tuple[Model, Pairs, list[str], str | list[int], str | MetricFn]:
    m = as_model(model)
    site_list = check_sites(m, sites)
    pos = check_positions(positions)
    check_choice("direction", direction, DIRECTIONS)
    check_positive_int("batch_size", batch_size)
    if not callable(metric):
        check_choice("metric", metric, METRICS)
    need_wrong = metric in ("logit_diff", "norm_logit_diff")
    pairs = make_pairs(m, clean, corrupt, answer=answer, wrong=wrong, align=align, need_wrong=need_wrong)
    return m, pairs, site_list, pos, check_metric(m, metric, pairs, need_grad=need_grad)


class TokenNames:
    """Decoded token strings, cached by id."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        if tid not in self.cache:
            self.cache[tid] = self.tok.decode([tid])
        return self.cache[tid]


def slot_rows(slot: Slot, dst: Batch, pairs: Pairs, names: TokenNames) -> list[tuple[int, dict[str, Any]]]:
    """Table keys of a slot: one entry per valid row (row index in the batch, columns)."""
    out = []
    width = dst.width
    for r in torch.nonzero(slot.valid, as_tuple=False)[:, 0].tolist():
        i = dst.indices[r]
        c = int(slot.cols[r])
        out.append((r, {
            "prompt_id": pairs.clean.ids[i], "corrupt_id": pairs.corrupt.ids[i], "site": slot.site,
            "layer": slot.layer, "head": slot.head, "position": c - int(dst.offsets[r]),
            "pos_from_end": width - 1 - c, "token": names(int(dst.input_ids[r, c])),
        }))
    return out


def finish_table(rows: list[dict[str, Any]], order_ids: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    table["head"] = table["head"].astype("Int64")
    rank = {pid: k for k, pid in enumerate(order_ids)}
    site_rank = {s: k for k, s in enumerate(SITES)}
    table["_p"] = table["prompt_id"].map(rank)
    table["_s"] = table["site"].map(site_rank)
    table = table.sort_values(["_s", "layer", "head", "_p", "position"], kind="stable", na_position="first")
    return table.drop(columns=["_p", "_s"]).reset_index(drop=True)


# --- exact activation patching --------------------------------------------------------------------------
def run_exact(m: Model, pairs: Pairs, batch: tuple[Batch, Batch], slots: list[Slot], metric: str | MetricFn,
              direction: str, max_rows: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(clean metric [B], corrupt metric [B], [patched metric [B] per slot]) for one batch pair.

    A row whose source value equals its destination value at the slot is not run: patching it is the identity,
    so its patched metric is the destination's own (exact; this skips, e.g., every position before the first
    token where the two prompts differ). Cost: one source and one destination forward (reading the patched
    hooks), and one destination row per remaining slot and pair, batched by the variants engine (each chunk
    starts at its first patched block)."""
    cb, kb = batch
    src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
    ans = pairs.answer[dst.indices].to(m.device)
    wr = None if pairs.wrong is None else pairs.wrong[dst.indices].to(m.device)
    hooks = sorted({s.hook for s in slots})
    src_logits, src_store = forward(m, src, read=hooks)
    src_metric = raw_metric(metric, src_logits, ans, wr)
    dst_logits, dst_store = forward(m, dst, read=hooks)
    dst_metric = raw_metric(metric, dst_logits, ans, wr)
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
        return raw_metric(metric, logits, ans.repeat(k), None if wr is None else wr.repeat(k))

    patched = [dst_metric.clone() for _ in slots]
    if variants:
        _, outs = run_variants(m, dst, variants, reduce, max_rows=max_rows)
        for k, out in zip(run, outs):
            rows = active[k].valid.to(out.device)  # type: ignore[union-attr]
            patched[k] = torch.where(rows, out, dst_metric)
    if direction == "denoising":
        return src_metric, dst_metric, patched
    return dst_metric, src_metric, patched


def patching_figure(result: Result, site: str | None = None, position: int | None = None, value: str = "score"
                    ) -> Any:
    """Mean over prompts of ``value``: layer x position for a residual / output site (x = token position, from
    the end when the prompts' lengths differ), layer x head for z (at ``position``, default the last)."""
    from ..viz import heatmap

    t = result.table
    site = site or str(t["site"].iloc[0])
    t = t[t["site"] == site]
    if t.empty:
        have = sorted(result.table["site"].unique())
        raise ParameterError(f"The result has no rows for site {site!r}; it has {have}.")
    title = f"{result.method} ({result.meta.get('parameters', {}).get('direction', '')}): {value}, site {site}"
    if site in HEAD_SITES:
        pos = -1 if position is None else position
        t = t[t["pos_from_end"] == -pos - 1] if pos < 0 else t[t["position"] == pos]
        grid = t.pivot_table(index="layer", columns="head", values=value, aggfunc="mean")
        return heatmap(grid.values, [str(h) for h in grid.columns], [str(x) for x in grid.index],
                       title=f"{title}, position {pos}", x_title="head", y_title="layer", colorscale="RdBu",
                       zmid=0.0)
    same_len = t.groupby("prompt_id")["position"].max().nunique() == 1
    col = "position" if same_len else "pos_from_end"
    grid = t.pivot_table(index="layer", columns=col, values=value, aggfunc="mean")
    if same_len:
        first = t[t["prompt_id"] == t["prompt_id"].iloc[0]].drop_duplicates("position").set_index("position")
        labels = [f"{p} {first['token'].get(p, '')!r}" for p in grid.columns]
    else:
        grid = grid[sorted(grid.columns, reverse=True)]
        labels = [f"-{p + 1}" for p in grid.columns]
    return heatmap(grid.values, labels, [str(x) for x in grid.index], title=title, x_title="position",
                   y_title="layer", colorscale="RdBu", zmid=0.0)


def prepare_pairs(_m: Model, ps: PromptSet, params: dict) -> dict:
    """A sharded run cuts clean and corrupt prompts alike: they must pair row by row."""
    corrupt = as_prompt_set(params["corrupt"])
    if len(corrupt) != len(ps):
        raise PromptError(f"clean has {len(ps)} prompts but corrupt has {len(corrupt)}; they pair row by row.")
    return {**params, "corrupt": corrupt}


def merge_pairs(parts: list[Result], meta: dict, params: dict) -> Result:
    """Shard tables merged into the whole run's row order (site, layer, head, prompt, position)."""
    t = concat_tables(parts)
    table = finish_table(t.to_dict(orient="records"), list(dict.fromkeys(t["prompt_id"])))
    return Result(table, {**meta, "corrupt_fingerprint": params["corrupt"].fingerprint()})


PAIRED_SHARDS = ShardPlan(prepare=prepare_pairs, paired=("corrupt",), merge=merge_pairs)


@register_method("activation_patching", shards=PAIRED_SHARDS,
                 paper="Meng et al. 2022 (causal tracing); Heimersheim & Nanda 2024; Zhang & Nanda, ICLR 2024",
                 cost="2 forwards per pair + 1 destination row per site x layer (x head) "
                 "x position, batched and started at the patched block", family="patching", figure=patching_figure)
def activation_patching(
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
    layers: Sequence[int] | None = None,
    align: str | None = None,
    batch_size: int = 8,
    max_rows: int | None = None,
) -> Result:
    """Exact activation patching of every site x layer (x head) x position.

    ``direction="denoising"`` (default): each clean activation is patched into the corrupt run, alone;
    ``"noising"``: each corrupt activation into the clean run. Clean row i pairs with corrupt row i; the two
    must have the same token length unless ``align="end"`` (tokens paired counting from the last; a position
    real in only one of the two is skipped). ``sites``: resid_pre, resid_mid, resid_post, attn_out, mlp_out
    (whole-layer vectors) and z (per head, before W_O). ``positions``: "all", "last" or prompt positions.

    ``metric``: "logit_diff" (logit of the answer minus logit of the wrong answer), "norm_logit_diff"
    ((LD - LD_corrupt) / (LD_clean - LD_corrupt), per pair: 1 = clean behaviour, 0 = corrupt behaviour, in both
    directions), "prob" / "logprob" of the answer, or a callable ``f(logits [B, vocab], answer [B], wrong [B] or
    None) -> [B]``. The answer is the clean record's ``answer`` field (first token); the wrong answer is the
    clean record's ``wrong`` field, or by default the corrupt record's ``answer`` field.

    Table: one row per pair x site x layer (x head) x position: prompt_id, corrupt_id, site, layer, head (NA
    except z), position (in the destination prompt), pos_from_end, token, score (the metric after patching),
    patched / clean / corrupt (raw metric values). Cost: 2 forwards per pair plus one destination row per
    patched place, batched by the variants engine (chunks start at their first patched block).
    """
    m, pairs, site_list, pos, metric_v = check_common(
        model, clean, corrupt, sites=sites, positions=positions, metric=metric, answer=answer, wrong=wrong,
        direction=direction, align=align, batch_size=batch_size)
    layer_list = check_layers(m, layers)
    names = TokenNames(m.tokenizer)
    rows: list[dict[str, Any]] = []
    for cb, kb in pair_batches(m, pairs, batch_size):
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        slots = make_slots(m, site_list, layer_list, pos, src, dst)
        clean_m, corr_m, patched = run_exact(m, pairs, (cb, kb), slots, metric_v, direction, max_rows)
        cm, km = clean_m.double().cpu(), corr_m.double().cpu()
        for slot, vals in zip(slots, patched):
            v = vals.double().cpu()
            for r, key in slot_rows(slot, dst, pairs, names):
                val, c, k = float(v[r]), float(cm[r]), float(km[r])
                rows.append({**key, "score": float(score_of(metric_v, val, c, k)), "patched": val, "clean": c,
                             "corrupt": k})
    table = finish_table(rows, pairs.clean.ids)
    params = {"sites": site_list, "positions": pos, "metric": metric if isinstance(metric, str) else "custom",
              "answer": answer, "wrong": wrong, "direction": direction, "layers": layer_list, "align": align}
    return Result(table, make_meta("activation_patching", m, pairs.clean, params,
                                   corrupt_fingerprint=pairs.corrupt.fingerprint()))


def check_layers(m: Model, layers: Sequence[int] | None) -> list[int]:
    return check_layer_list("layers", layers, m.info.n_layers)
