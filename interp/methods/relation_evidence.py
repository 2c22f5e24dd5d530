"""Relation evidence at the last prompt position (Liu et al. 2025, "Relation Also Knows", AAAI; after Geva et al.
2023, "Dissecting Recall of Factual Associations"): where does the relation's answer type show up?

* the per-layer rank of the object's first token when the residual after each block at the last position is
  decoded with the logit lens (final norm recomputed);
* the attribute rate AR_l = |top-k decoded tokens intersect A_r| / k (k = 50), where A_r is a set of tokens
  related to the relation (e.g. for "capital of": city-like tokens);
* sublayer knockout: the MLP (or attention) outputs at the last position are zeroed in a window of layers, and
  the drop of the final attribute rate and of P(object) is measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from ..errors import ParameterError, check_choice, check_positive_int
from ..hooks import Edit, Intervention
from ..model import Model, as_model
from ..prompts import EncodedSet, as_prompt_set, batches, encode
from ..registry import ShardPlan, register_method
from ..results import Result, make_meta
from ..variants import forward, run_variants
from .tracing import HOOKS

SUBLAYERS = ("mlp", "attn")


def knockout(model: Any, kind: str, layers: Iterable[int], *, column: int = -1) -> Intervention:
    """Zero the MLP (``hook_mlp_out``) or attention (``hook_attn_out``) output at ``column`` (default the last
    prompt position) in each of ``layers``: the sublayer no longer writes to that position's residual."""
    check_choice("kind", kind, SUBLAYERS)
    layers = list(layers)
    n = as_model(model).info.n_layers
    for layer in layers:
        if not 0 <= layer < n:
            raise ParameterError(f"Knockout layer {layer} is out of range (the model has {n} layers).")

    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows, column] = 0

    edits = tuple(Edit(f"blocks.{layer}.{HOOKS[kind]}", apply) for layer in layers)
    return Intervention(edits, f"knock out {kind} L{layers[0]}-{layers[-1]}" if layers else "nothing",
                        {"kind": kind, "layers": layers})


def attribute_sets(model: Any, prompts: Any, attributes: Any = None) -> list[set[int]]:
    """A_r for each prompt, as token ids. ``attributes``: None -> for each ``task`` (relation) of the prompt set,
    the first tokens of every target of that task (all of the relation's objects; one set when the prompts carry
    no ``task``); a list of strings -> one set for every prompt; a dict task -> list of strings. A string's token
    is its first token tokenised alone with no special tokens (so give leading spaces: " Paris"); an int is taken
    as a token id."""
    m = as_model(model)
    ps = as_prompt_set(prompts)
    tok = m.tokenizer

    def first_token(s: Any, where: str) -> int:
        if isinstance(s, int) and not isinstance(s, bool):  # a token id, as a sharded run's prepare fixes them
            if not 0 <= s < m.info.vocab_size:
                raise ParameterError(f"{where}: attribute token id {s} is outside the vocabulary [0, "
                                     f"{m.info.vocab_size}).")
            return s
        if not isinstance(s, str) or not s:
            raise ParameterError(f"{where}: attribute {s!r} must be a non-empty string.")
        ids = tok(s, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ParameterError(f"{where}: attribute {s!r} tokenises to nothing.")
        return int(ids[0])

    if attributes is None:
        ps.require("target")
        enc = encode(m, ps, targets=["target"])
        tasks = [r.get("task", "") for r in ps.records]
        by_task: dict[Any, set[int]] = {}
        for task, t in zip(tasks, enc.targets["target"]):
            by_task.setdefault(task, set()).add(int(t))
        return [by_task[task] for task in tasks]
    if isinstance(attributes, Mapping):
        cache: dict[Any, set[int]] = {}
        out = []
        for r in ps.records:
            task = r.get("task")
            if task not in attributes:
                raise ParameterError(f"Prompt {r['id']!r}: attributes has no entry for its task {task!r}.")
            if task not in cache:
                cache[task] = {first_token(s, f"task {task!r}") for s in _strings(attributes[task], task)}
            out.append(cache[task])
        return out
    shared = {first_token(s, "attributes") for s in _strings(attributes, "attributes")}
    return [shared] * len(ps)


def _strings(value: Any, where: Any) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ParameterError(f"attributes for {where!r} must be a list of strings, got {type(value).__name__}.")
    value = list(value)
    if not value:
        raise ParameterError(f"attributes for {where!r} is empty.")
    return value


def _prepare(m: Any, ps: Any, params: dict) -> dict:
    """The default attribute sets come from the whole set's targets: fix them once, as token ids, for every shard."""
    if params.get("attributes") is not None:
        return params
    sets = attribute_sets(m, ps)
    if "task" in ps.fields:
        fixed: Any = {}
        for r, ids in zip(ps.records, sets):
            fixed[r.get("task")] = sorted(ids)
    else:
        fixed = sorted(sets[0])
    return {**params, "attributes": fixed}


def relation_evidence_figure(result: Result) -> Any:
    """Three panels: mean attribute rate per layer, mean log10 rank of the object per layer (logit lens at the
    last position), and the mean drop of the final attribute rate when each window of MLPs / attention is
    knocked out."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = result.table
    lens = t[t["analysis"] == "lens"].copy()
    lens["log10_rank"] = lens["object_rank"].astype(float).apply(math.log10)
    per_layer = lens.groupby("layer")[["attribute_rate", "log10_rank"]].mean().reset_index()
    fig = make_subplots(rows=1, cols=3, subplot_titles=("attribute rate (logit lens)", "log10 rank of the object",
                                                        "knockout: drop of the final attribute rate"))
    fig.add_trace(go.Scatter(x=per_layer["layer"], y=per_layer["attribute_rate"], mode="lines+markers",
                             name="AR_l"), row=1, col=1)
    fig.add_trace(go.Scatter(x=per_layer["layer"], y=per_layer["log10_rank"], mode="lines+markers",
                             name="log10 rank"), row=1, col=2)
    ko = t[t["analysis"].str.startswith("knockout")]
    for analysis, part in ko.groupby("analysis", sort=False):
        g = part.groupby("layer")["attribute_rate_drop"].mean().reset_index()
        fig.add_trace(go.Bar(x=[f"L{a}-{a + int(result.meta['parameters']['knockout_window']) - 1}"
                                for a in g["layer"]], y=g["attribute_rate_drop"], name=analysis), row=1, col=3)
    fig.update_layout(title=f"Relation evidence at the last position ({t['prompt_id'].nunique()} prompts)",
                      barmode="group")
    return fig


@register_method("relation_evidence", paper="Liu et al. 2025 (Relation Also Knows, AAAI); Geva et al. 2023 "
                 "(Dissecting Recall: attribute rate, sublayer knockout)",
                 cost="1 forward per prompt (batched) + one knockout run per window x sublayer kind (batched)",
                 family="tracing", figure=relation_evidence_figure, shards=ShardPlan(prepare=_prepare))
def relation_evidence(
    model: Any,
    prompts: Any,
    *,
    attributes: Sequence[str] | Mapping[Any, Sequence[str]] | None = None,
    top_k: int = 50,
    knockout_kinds: Sequence[str] = SUBLAYERS,
    knockout_window: int = 2,
    batch_size: int = 16,
    max_rows: int | None = None,
) -> Result:
    """Per-layer object rank and attribute rate at the last prompt position, and the sublayer-knockout drops.

    Prompts carry ``target`` (the object; its first token is o) and usually ``task`` (the relation); A_r comes
    from ``attributes`` (see :func:`attribute_sets`; default: the first tokens of all targets of the prompt's
    task in this prompt set). Table, one row per prompt x analysis x layer: prompt_id, task, analysis ("lens",
    "knockout_mlp", "knockout_attn"), layer (lens: the block whose output is decoded; knockout: the first
    layer of the window), layer_end (last layer of the window, inclusive), object_rank (1 = top), object_prob,
    attribute_rate (lens: AR_l of the decoded residual; knockout: AR of the model's output with the window
    knocked out), clean_attribute_rate and clean_object_prob (the model's output, unknocked),
    attribute_rate_drop and object_prob_drop (clean - knocked; knockout rows only), correct (clean argmax = o).
    Cost: one forward per prompt plus (L - window + 1) x len(knockout_kinds) knocked-out forwards per prompt,
    all batched.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    if isinstance(knockout_kinds, str):
        knockout_kinds = (knockout_kinds,)
    for k in knockout_kinds:
        check_choice("knockout_kinds", k, SUBLAYERS)
    n_layers = m.info.n_layers
    check_positive_int("knockout_window", knockout_window)
    if knockout_window > n_layers:
        raise ParameterError(f"knockout_window={knockout_window} exceeds the number of layers ({n_layers}).")
    check_positive_int("batch_size", batch_size)
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
    ps.require("target")
    enc = encode(m, ps, targets=["target"])
    a_sets = attribute_sets(m, ps, attributes)
    rows = []
    for batch in batches(m, enc, batch_size):
        rows.extend(_evidence_batch(m, enc, batch, a_sets, top_k, knockout_kinds, knockout_window, max_rows))
    order = {pid: i for i, pid in enumerate(ps.ids)}
    table = pd.DataFrame(rows)
    table = table.sort_values("prompt_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    params = {"attributes": "targets of each task" if attributes is None else attributes, "top_k": top_k,
              "knockout_kinds": list(knockout_kinds), "knockout_window": knockout_window}
    return Result(table, make_meta("relation_evidence", m, ps, params))


def _measures(logits: torch.Tensor, targets: torch.Tensor, a_masks: torch.Tensor, top_k: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank of the target [N], its probability [N], attribute rate [N]) of logits [N, vocab]."""
    lp = logits.float().log_softmax(-1)
    t_lp = lp.gather(-1, targets[:, None])
    rank = (lp > t_lp).sum(-1) + 1
    top = lp.topk(top_k, dim=-1).indices
    rate = a_masks.gather(-1, top).float().sum(-1) / top_k
    return rank, t_lp[:, 0].exp(), rate


def _evidence_batch(m: Model, enc: EncodedSet, batch: Any, a_sets: list[set[int]], top_k: int,
                    kinds: Sequence[str], window: int, max_rows: int | None) -> list[dict[str, Any]]:
    from ..decode import decode

    n_layers = m.info.n_layers
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    logits, store = forward(m, batch, read=names, read_fn=lambda n, v: v[:, -1])
    targets = batch.targets["target"].to(logits.device)
    a_masks = torch.zeros(batch.size, logits.shape[-1], dtype=torch.bool, device=logits.device)
    for r, idx in enumerate(batch.indices):
        a_masks[r, list(a_sets[idx])] = True
    c_rank, c_prob, c_rate = _measures(logits, targets, a_masks, top_k)
    correct = logits.argmax(-1) == targets
    lens = []
    for name in names:
        lens.append(_measures(decode(m, store[name], norm="recompute", output="logits"), targets, a_masks, top_k))
    starts = list(range(0, n_layers - window + 1))
    variants = [knockout(m, kind, range(a, a + window)) for kind in kinds for a in starts]
    keys = [(kind, a) for kind in kinds for a in starts]
    ko = []
    if variants:
        _, outs = run_variants(m, batch, variants, lambda lg, _: lg.float(), max_rows=max_rows)
        ko = [_measures(o, targets, a_masks, top_k) for o in outs]
    rows = []
    for r, idx in enumerate(batch.indices):
        rec = enc.prompts.records[idx]
        common = {"prompt_id": rec["id"], "task": rec.get("task"), "clean_attribute_rate": float(c_rate[r]),
                  "clean_object_prob": float(c_prob[r]), "correct": bool(correct[r])}
        for layer, (rank, prob, rate) in enumerate(lens):
            rows.append({**common, "analysis": "lens", "layer": layer, "layer_end": layer,
                         "object_rank": int(rank[r]), "object_prob": float(prob[r]), "attribute_rate": float(rate[r]),
                         "attribute_rate_drop": float("nan"), "object_prob_drop": float("nan")})
        for (kind, a), (rank, prob, rate) in zip(keys, ko):
            rows.append({**common, "analysis": f"knockout_{kind}", "layer": a, "layer_end": a + window - 1,
                         "object_rank": int(rank[r]), "object_prob": float(prob[r]), "attribute_rate": float(rate[r]),
                         "attribute_rate_drop": float(c_rate[r] - rate[r]),
                         "object_prob_drop": float(c_prob[r] - prob[r])})
    return rows
