"""The logit lens (nostalgebraist, "interpreting GPT: the logit lens", LessWrong 2020), and decoding through a
tuned lens (Belrose et al. 2023, arXiv 2303.08112): every layer's residual stream (and, if asked, each sublayer's
output) decoded into a next-token distribution, with named targets' probability / logit / rank, KL to the model's
own distribution and entropy.

Two normalisation conventions, not interchangeable (see :mod:`interp.model.decode`):

* ``norm="recompute"``: every decoded vector goes through the final norm afresh, ``W_U . LN_f(h)`` (the "true"
  logit lens of the tuned-lens library). A sublayer output (``attn_out`` / ``mlp_out``) is normalised on its own:
  it is read as if it were the whole residual, so only its direction matters.
* ``norm="frozen"``: every decoded vector (residuals and sublayer outputs alike) is divided by the final norm's
  scale of the *real final residual* at that position, then the norm's weight (and bias, for LayerNorm) and the
  unembedding are applied (direct-logit-attribution style). A sublayer output is then read at the scale the
  model really uses; with no norm bias and no soft-cap the logits are linear in the vector, so the frozen logits
  of ``attn_out`` + ``mlp_out`` of a layer add up to those of ``resid_post - resid_pre``.

In both modes the last layer's ``resid_post`` decodes to the model's own logits.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ...activations.sites import STREAM, check_sites, depth, hook_name
from ...errors import ParameterError, PromptError, check_choice, check_positive_int
from ...model.decode import NORM_MODES, decode, norm_scale
from ...model.loading import as_model
from ...prompts import PromptSet, as_prompt_set, batches, encode
from ...results.result import make_meta
from .. import metrics
from ..registry import Schema, register_method
from . import reading
from .figures import lens_figure
from .statistics import FinalDistribution, LensResult, Workspace, chunk_rows, row_statistics
from .tuned import TunedLens

# presets of ``sites`` (besides any list of names from interp.activations.sites.STREAM)
SITE_PRESETS: dict[str, tuple[str, ...]] = {
    "resid_post": ("resid_post",),
    "resid_pre": ("resid_pre",),
    "sublayers": ("attn_out", "mlp_out", "resid_post"),
}
_TARGET_COLUMNS = {"target_field": "str", "target_token": "str", "target_id": "int", "target_prob": "float",
                   "target_logit": "float", "target_rank": "int", "target_rr": "float", "correct": "bool"}
SCHEMA = Schema(
    keys=("prompt_id", "site", "layer", "position", "target_field"),
    value="target_prob", unit="probability", sign="higher",
    columns={"prompt_id": "str", "lens": "str", "norm": "str", "site": "str", "layer": "int", "depth": "float",
             "position": "int", "is_last": "bool", "token": "str", "predicted_id": "int", "predicted_token": "str",
             "predicted_prob": "float", "top_ids": "str", "top_tokens": "str", "kl": "float",
             "entropy": "float", "cross_entropy": "float"},
    optional={**_TARGET_COLUMNS, "metric_value": "float"},
    units={"target_logit": "logits", "target_rank": "rank", "target_rr": "1 / rank", "predicted_prob": "probability",
           "kl": "nats", "entropy": "nats", "cross_entropy": "nats", "depth": "blocks"},
    grid=("layer", "target_field"),
)


def resolve_sites(sites: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name ("resid_post", "resid_pre", "sublayers"), one site, or a list of sites from
    :data:`interp.activations.sites.STREAM` -> the sites in depth order."""
    if isinstance(sites, str) and sites in SITE_PRESETS:
        return SITE_PRESETS[sites]
    if not isinstance(sites, str) and not (isinstance(sites, Sequence) and all(isinstance(s, str) for s in sites)):
        raise ParameterError(f"sites={sites!r} must be one of {', '.join(map(repr, SITE_PRESETS))} or a list of "
                             f"sites ({', '.join(STREAM)}).")
    items = check_sites(sites, STREAM)
    return tuple(sorted(items, key=STREAM.index))


def _check_target(ps: PromptSet, target: str | Sequence[str] | None) -> tuple[str, ...]:
    if target is None:
        return ("target",) if "target" in ps.fields else ()
    fields = (target,) if isinstance(target, str) else target
    if not isinstance(fields, Sequence) or not all(isinstance(t, str) for t in fields):
        raise ParameterError(f"target={target!r} must be a field name or a list of field names, e.g. 'target' or "
                             "['y_t', 'y_s1'].")
    for t in fields:
        if t not in ps.fields:
            raise PromptError(f"target: the prompt set has no field {t!r} (its fields: {', '.join(ps.fields)}); pass "
                              "target=[] to decode without targets.")
    if len(set(fields)) != len(fields):
        raise ParameterError(f"target={list(fields)!r} names a field twice.")
    return tuple(fields)


class _Tokens:
    """Token texts, decoded once per id, kept in arrays indexed by id (filled as ids are met): the text, its JSON
    text and the id's, so a column of texts or of JSON lists is one fancy index plus one join per row."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.known = np.zeros(0, dtype=bool)
        self.text = self.json = self.id_json = np.empty(0, dtype=object)

    def _fill(self, ids: np.ndarray) -> None:
        seen = np.unique(ids)
        if seen.size and seen[-1] >= len(self.known):
            grow = int(seen[-1]) + 1 - len(self.known)
            self.known = np.concatenate([self.known, np.zeros(grow, dtype=bool)])
            self.text, self.json, self.id_json = (np.concatenate([a, np.empty(grow, dtype=object)])
                                                  for a in (self.text, self.json, self.id_json))
        for t in seen[~self.known[seen]].tolist():
            text = self.tokenizer.decode([t])
            self.text[t], self.json[t], self.id_json[t] = text, json.dumps(text, ensure_ascii=False), str(t)
            self.known[t] = True

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        self._fill(ids)
        return self.text[ids]

    def json_lists(self, ids: np.ndarray) -> tuple[list[str], list[str]]:
        """(ids, token texts) of each row of ``ids`` [N, k] as JSON lists: the text ``json.dumps`` writes for
        the list (``ensure_ascii=False``), joined from each item's JSON text."""
        self._fill(ids)
        return ([f"[{', '.join(r)}]" for r in self.id_json[ids].tolist()],
                [f"[{', '.join(r)}]" for r in self.json[ids].tolist()])


_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokens_of(tokenizer: Any) -> _Tokens:
    """The tokenizer's :class:`_Tokens`, kept while the tokenizer lives (a token's text does not change, so each
    id is decoded once per tokenizer, not once per call)."""
    try:
        return _TOKENS.setdefault(tokenizer, _Tokens(tokenizer))
    except TypeError:  # not weakly referable
        return _Tokens(tokenizer)


def _next_ids(batch: Any, rows: torch.Tensor, cols: torch.Tensor, last_target: torch.Tensor | None) -> torch.Tensor:
    """The actual next token at each selected position: the next prompt token, or at the last position the first
    target field's token (-1 when unknown)."""
    ids = batch.input_ids.cpu()
    nxt = ids[rows, (cols + 1).clamp(max=batch.width - 1)]
    last = cols == batch.width - 1
    fill = last_target if last_target is not None else torch.full_like(nxt, -1)
    return torch.where(last, fill, nxt)


def _decoded_columns(stats: dict[str, torch.Tensor], tokens: _Tokens) -> dict[str, Any]:
    """The per-distribution columns of one site x layer ([N] each) from :func:`row_statistics`."""
    top_ids, top_probs = stats["top_ids"].cpu().numpy(), stats["top_logp"].exp().cpu().numpy()
    ids_json, tokens_json = tokens.json_lists(top_ids)
    return {
        "predicted_id": top_ids[:, 0], "predicted_token": tokens(top_ids[:, 0]), "predicted_prob": top_probs[:, 0],
        "top_ids": np.array(ids_json, dtype=object), "top_tokens": np.array(tokens_json, dtype=object),
        "kl": stats["kl"].cpu().numpy(), "entropy": stats["entropy"].cpu().numpy(),
        "cross_entropy": stats["cross_entropy"].cpu().numpy(),
    }


def _target_columns(stats: dict[str, torch.Tensor], target_ids: torch.Tensor) -> dict[str, np.ndarray]:
    """The per-target columns of one site x layer, [N, F] each (F = the target fields, in order)."""
    out = {"target_prob": stats["target_logp"].exp().cpu().numpy(),
           "target_logit": stats["target_logit"].cpu().numpy(),
           "target_rank": stats["target_rank"].cpu().numpy(),
           "correct": (stats["top_ids"][:, :1] == target_ids).cpu().numpy()}
    out["target_rr"] = 1.0 / out["target_rank"]
    return out


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@register_method(
    "logit_lens",
    paper="nostalgebraist 2020, 'interpreting GPT: the logit lens' (LessWrong); tuned lens: Belrose et al. 2023, "
          "arXiv 2303.08112",
    cost="1 forward per batch of prompts (stopped after the final norm) + 1 unembedding [positions, d_model] x "
         "[d_model, vocab] per site and layer of the selected positions only; no backward",
    schema=SCHEMA,
    figure=lens_figure,
    family="lens",
    result_class=LensResult,
    fields=("y_t", "y_s1", "y_s2"),
    organism="dense",
    corpus="composite",
    example={"target": ["y_t", "y_s1", "y_s2"], "top_k": 3},
)
def logit_lens(
    model: Any,
    prompts: Any,
    *,
    sites: str | Sequence[str] = "resid_post",
    norm: str = "recompute",
    positions: str | Sequence[int] = "last",
    target: str | Sequence[str] | None = None,
    top_k: int = 10,
    lens: TunedLens | None = None,
    metric: str | metrics.MetricFn | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LensResult:
    """Decode each layer's residual (and, with ``sites="sublayers"``, each attention and MLP output) into a
    next-token distribution, at the positions asked for: ``W_U . LN_f(h)`` (the logit lens, nostalgebraist 2020),
    or ``W_U . LN_f(T_l(h))`` through a tuned lens's translators (Belrose et al. 2023, arXiv 2303.08112).

    Args:
        sites: "resid_post" (default), "resid_pre", "sublayers" (attn_out, mlp_out and resid_post of every
            layer), or a list of sites from :data:`interp.activations.sites.STREAM` (resid_pre, attn_out, resid_mid,
            mlp_out,
            resid_post).
        norm: "recompute" or "frozen" (see the module docstring).
        positions: "last" (the last real token), "all" (every token), the name of a prompt field (that field's
            token span, e.g. "subject") or a list of 0-based token positions (BOS included).
        target: the prompt field (or a list of fields) whose first token is scored (the token after the prompt in
            prompt + field); None (default): "target" when the prompts have that field, else none; [] for none.
        top_k: decoded tokens kept per row (top_ids / top_tokens).
        lens: a :class:`TunedLens` from :func:`train_tuned_lens` (its site only); its translator is applied
            before decoding. None: the logit lens.
        metric: also score each target field with this metric of the decoded logits at each row (a name from
            :data:`interp.methods.metrics.METRICS` without a contrast token, or a callable
            ``f(logits [N, vocab], target [N], None) -> [N]``); adds ``metric_value``, in ``meta["metric_unit"]``.
            Needs a target field. None: the lens statistics only.
        batch_size: prompts per forward.
        progress: show a progress bar over the batches.

    Returns: a :class:`LensResult` (``.aggregate()`` = :func:`lens_summary`: per-layer accuracy / MRR / mean
    probability) with one row per prompt x site x layer x position x target field. The layout is tidy so that its
    columns are the same whatever the target fields (the decoded distribution's columns repeat on the rows of
    each target field). Columns: prompt_id, lens ("logit" or "tuned"), norm, site, layer, depth (sites.depth:
    layer + 0 / .25 / .5 / .75 / 1 for resid_pre / attn_out / resid_mid / mlp_out / resid_post), position
    (0-based, BOS included), is_last, token (the input token there); predicted_id / predicted_token /
    predicted_prob (the decoded top-1 token); top_ids, top_tokens (the top_k decoded tokens, best first, each a
    JSON list in one cell: discrete values, so two tables still compare within a tolerance; the other tokens'
    probabilities are not kept, since numbers inside a string compare only exactly); kl = KL(model's final
    distribution at that position || decoded), entropy and cross_entropy (-log p of the actual next token: the
    next prompt token, or at the last position the first target field's token; NaN there without targets), all
    in nats; with target fields, target_field, target_token, target_id, target_prob, target_logit, target_rank
    (1 + number of tokens with a larger logit), target_rr (1 / target_rank), correct (predicted_id ==
    target_id). Targets are the token after the whole prompt, so at other positions their columns read the
    lens's support for the answer there. Without target fields the target columns are absent and there is one
    row per prompt x site x layer x position.

    Cost: one forward per batch of prompts, stopped after the final norm, keeping only the residuals asked for at
    the selected positions; then one unembedding [positions, d_model] x [d_model, vocab] per site and layer
    (with positions="last", B rows: the [B, T, vocab] logits are never made). No backward.
    """
    m = as_model(model)
    kinds = resolve_sites(sites)
    check_choice("norm", norm, NORM_MODES)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    batch_size = check_positive_int("batch_size", batch_size)
    if lens is not None:
        if not isinstance(lens, TunedLens):
            raise ParameterError(f"lens must be a TunedLens (from interp.train_tuned_lens), got {type(lens).__name__}.")
        lens.check_model(m)
        if kinds != (lens.site,):
            raise ParameterError(f"lens: this tuned lens translates {lens.site!r} only; call logit_lens with "
                                 f"sites={lens.site!r} (got sites={sites!r}).")
    ps = as_prompt_set(prompts)
    pos = reading.check_positions(ps, positions)
    fields = _check_target(ps, target)
    span = [pos] if isinstance(pos, str) and pos not in reading.POSITION_MODES else []
    enc = encode(m, ps, targets=fields, spans=span)  # checks every record (and target) before any forward
    reading.check_positions_fit(enc, pos)
    if metric is not None:
        if not fields:
            raise ParameterError("metric scores a target field, and this call has none: give target='<field>'.")
        metrics.check_metric(metric, vocab_size=m.info.vocab_size, device=m.device, dtype=m.dtype)

    n_layers = m.info.n_layers
    final_resid = hook_name("resid_post", n_layers - 1)
    names = list(dict.fromkeys([*(hook_name(k, layer) for k in kinds for layer in range(n_layers)), final_resid]))
    tokens = _tokens_of(m.tokenizer)
    n_fields = len(fields)
    frames = []
    n_batches = -(-len(ps) // batch_size)
    workspace = Workspace()  # the [rows, vocab] buffers of the statistics, reused by every chunk of every batch
    with torch.no_grad():
        for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="logit lens", disable=not progress):
            rows, cols = reading.select(batch, pos)
            store = reading.read(m, batch, names, rows, cols)
            scale = norm_scale(m, store[final_resid]) if norm == "frozen" else None
            target_ids = {f: batch.targets[f].to(m.device)[rows.to(m.device)] for f in fields}
            next_ids = _next_ids(batch, rows, cols, target_ids[fields[0]].cpu() if fields else None).to(m.device)
            tid = torch.stack([target_ids[f] for f in fields], dim=1) if fields else None  # [N, F]
            base: dict[str, Any] = {
                "_prompt": np.asarray(batch.indices)[rows.numpy()],
                "position": (cols - batch.offsets[rows]).numpy(),
                "is_last": (cols == batch.width - 1).numpy(),
                "token": tokens(batch.input_ids[rows, cols].numpy()),
            }
            if fields:
                ids = tid.cpu().numpy()
                per_field = {"target_field": np.tile(np.array(fields, dtype=object), len(rows)),
                             "target_token": tokens(ids).reshape(-1), "target_id": ids.reshape(-1)}
            # chunks of rows outside, sites x layers inside: the model's own distribution of a chunk is made once,
            # and no [rows, vocab] array larger than a chunk exists
            parts: dict[tuple[str, int], list[dict[str, torch.Tensor]]] = {
                (kind, layer): [] for kind in kinds for layer in range(n_layers)}
            # the final distribution is the last residual decoded with the final norm recomputed, as the logit
            # lens decodes it (so a tuned lens's table has the same one, bit for bit); where the call decodes
            # exactly that, it is decoded first and its own distribution serves as the final one
            last = ("resid_post", n_layers - 1)
            own_final = lens is None and norm == "recompute" and last in parts
            order = [last, *(key for key in parts if key != last)] if own_final else list(parts)
            step = chunk_rows(len(rows), m.info.vocab_size, m.device)
            for s0 in range(0, len(rows), step):
                sl = slice(s0, s0 + step)
                final = None if own_final else FinalDistribution.of(
                    decode(m, store[final_resid][sl], norm="recompute", output="logits"), workspace)
                for kind, layer in order:
                    # every layer is decoded the same way (the last one too, not the model's own logits reused),
                    # so an identity tuned lens gives exactly the logit lens's table
                    h = store[hook_name(kind, layer)][sl]
                    if lens is not None:
                        h = lens.translate(h, layer)
                    logits = decode(m, h, norm=norm, scale=None if scale is None else scale[sl], output="logits")
                    stats = row_statistics(logits, final, next_ids[sl], None if tid is None else tid[sl], top_k,
                                           workspace)
                    if final is None:
                        final = stats.pop("final")
                    if metric is not None:
                        pids = [ps.ids[i] for i in base["_prompt"][sl]]
                        stats["metric_value"] = torch.stack(
                            [metrics.score(metric, logits, tid[sl][:, j], None, prompt_ids=pids).float()
                             for j in range(n_fields)], dim=1)
                    parts[(kind, layer)].append(stats)
                del final
            for (kind, layer), chunks in parts.items():
                stats = _concat(chunks)
                out = {**base, **_decoded_columns(stats, tokens)}
                n_rows = len(rows) * max(1, n_fields)
                out.update({"site": np.full(n_rows, kind, dtype=object), "layer": np.full(n_rows, layer),
                            "depth": np.full(n_rows, depth(kind, layer)),
                            "_site_order": np.full(n_rows, STREAM.index(kind))})
                if fields:
                    out = {k: np.repeat(v, n_fields, axis=0) if len(v) != n_rows else v for k, v in out.items()}
                    out.update(per_field)
                    out.update({k: v.reshape(-1) for k, v in _target_columns(stats, tid).items()})
                    if metric is not None:
                        out["metric_value"] = stats["metric_value"].cpu().numpy().reshape(-1)
                frames.append(out)
    # one table, sorted (stable) by prompt, layer, site, position: numpy's lexsort on the integer keys, then
    # each column taken in that order, once
    columns = {k: np.concatenate([f[k] for f in frames]) for k in frames[0]}
    order = np.lexsort((columns["position"], columns["_site_order"], columns["layer"], columns["_prompt"]))
    table = pd.DataFrame({k: v[order] for k, v in columns.items()})
    table.insert(0, "prompt_id", np.asarray(ps.ids, dtype=object)[table["_prompt"].to_numpy()])
    table.insert(1, "lens", "logit" if lens is None else "tuned")
    table.insert(2, "norm", norm)
    lead = ["prompt_id", "lens", "norm", "site", "layer", "depth", "position", "is_last", "token"]
    order = lead + [c for c in SCHEMA.columns if c not in lead] + [c for c in _TARGET_COLUMNS if c in table.columns]
    order += ["metric_value"] if metric is not None else []
    table = table[order]
    for c in ("layer", "position", "predicted_id", *(("target_id", "target_rank") if fields else ())):
        table[c] = table[c].astype("int64")
    extra: dict[str, Any] = {"n_layers": n_layers, "sites": list(kinds), "target_fields": list(fields)}
    if lens is not None:
        extra["tuned_lens"] = lens.describe()
    if metric is not None:
        extra.update(metric=metrics.metric_label(metric), metric_unit=metrics.unit_of(metric))
    return LensResult(table, make_meta(model=m, prompts=ps, **extra))
