"""Relation evidence at the last prompt position (Liu et al. 2025, "Relation Also Knows", AAAI, arXiv 2408.15091;
after Geva et al. 2023, "Dissecting Recall of Factual Associations in Auto-Regressive Language Models", arXiv
2304.14767): where does the relation's answer type show up?

* the per-layer rank of the target's first token when the residual after each block at the last position is
  decoded with the logit lens (final norm recomputed);
* the attribute rate AR_l = |top-k decoded tokens intersect A_r| / k (k = 50), where A_r is a set of tokens
  related to the relation (e.g. for "capital of": city-like tokens);
* sublayer knockout: the MLP (``mlp_out``) or attention (``attn_out``) outputs at the last position are zeroed in
  a half-open window of layers, and the drop of the final attribute rate and of P(target) is measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations.hooks import Intervention
from ..activations.interventions import set_edit
from ..activations.sites import SUBLAYER_OUTPUTS, check_sites, hook_name
from ..activations.variants import forward, run_variants
from ..errors import ParameterError, check_positive_int
from ..model.loading import Model, as_model
from ..prompts import EncodedSet, as_prompt_set, batches, encode
from ..results.result import Result, make_meta
from . import metrics
from .registry import Schema, ShardPlan, register_method

KNOCKOUT_SITES = ("mlp_out", "attn_out")  # the sublayers knocked out (Geva et al.'s order: MLP, then attention)
assert set(KNOCKOUT_SITES) == set(SUBLAYER_OUTPUTS)

PAPER = ("Liu et al. 2025, Relation Also Knows (AAAI), arXiv 2408.15091; Geva et al. 2023, Dissecting Recall of "
         "Factual Associations (attribute rate, sublayer knockout), arXiv 2304.14767")
COST = ("1 forward per prompt (batched) + (L - window + 1) x len(sites) knocked-out rows per prompt (batched, "
        "each starting at its first knocked-out block) + L unembeddings of the last position per prompt")
SCHEMA = Schema(
    keys=("prompt_id", "analysis", "site", "layer"), value="attribute_rate", unit="fraction", sign="higher",
    columns={"prompt_id": "str", "analysis": "str", "site": "str", "layer": "int", "window_start": "int",
             "window_end": "int", "target_rank": "int", "target_prob": "float", "attribute_rate": "float",
             "clean_attribute_rate": "float", "clean_target_prob": "float", "attribute_rate_drop": "float",
             "target_prob_drop": "float", "correct": "bool", "target_token": "str", "target_id": "int"},
    optional={"task": "str", "metric_value": "float", "clean_metric": "float"},
    units={"target_rank": "rank", "target_prob": "probability", "clean_attribute_rate": "fraction",
           "clean_target_prob": "probability", "attribute_rate_drop": "fraction", "target_prob_drop": "probability"},
    grid=("layer", "site"),
)


def knockout(model: Any, site: str, layers: Iterable[int], *, column: int = -1) -> Intervention:
    """Zero the MLP (``mlp_out``) or attention (``attn_out``) output at ``column`` (default the last prompt
    position) in each of ``layers``: the sublayer no longer writes to that position's residual."""
    check_sites([site], KNOCKOUT_SITES, name="site")
    layers = list(layers)
    n = as_model(model).info.n_layers
    for layer in layers:
        if not 0 <= layer < n:
            raise ParameterError(f"Knockout layer {layer} is out of range (the model has {n} layers).")

    edits = tuple(set_edit(hook_name(site, layer), 0.0, column) for layer in layers)
    return Intervention(edits, f"knock out {site} L{layers[0]}-{layers[-1]}" if layers else "nothing",
                        {"site": site, "layers": layers})


def attribute_sets(model: Any, prompts: Any, attributes: Any = None, *, target: str = "target") -> list[set[int]]:
    """A_r for each prompt, as token ids. ``attributes``: None -> for each ``task`` (relation) of the prompt set,
    the first tokens of every ``target`` field of that task (all of the relation's objects; one set when the
    prompts carry no ``task``); a list of strings -> one set for every prompt; a dict task -> list of strings. A
    string's token is its first token tokenised alone with no special tokens (so give leading spaces: " Paris");
    an int is taken as a token id."""
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
        ps.require(target)
        enc = encode(m, ps, targets=[target])
        tasks = [r.get("task", "") for r in ps.records]
        by_task: dict[Any, set[int]] = {}
        for task, t in zip(tasks, enc.targets[target]):
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
    sets = attribute_sets(m, ps, target=params.get("target", "target"))
    if "task" in ps.fields:
        fixed: Any = {}
        for r, ids in zip(ps.records, sets):
            fixed[r.get("task")] = sorted(ids)
    else:
        fixed = sorted(sets[0])
    return {**params, "attributes": fixed}


def relation_evidence_figure(result: Result, *, ci: float | None = None, n_boot: int = 1000, seed: int = 0) -> Any:
    """Three panels: mean attribute rate per layer and mean log10 rank of the target per layer (logit lens at the
    last position), and below them the mean drop of the final attribute rate when each window of MLPs / attention
    is knocked out. Rates are drawn over their whole range [0, 1] and the drops up to the final attribute rate
    (the most a knockout can remove), so a change of one top-k token is not drawn as a cliff. With ``ci`` (e.g.
    0.95), every mean gets error bars of its seeded bootstrap interval over prompts
    (:meth:`interp.Result.aggregate`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures.viz import FRACTION_RANGE, interval_error, interval_title

    t = result.table
    lens = t[t["analysis"] == "lens"].copy()
    lens["log10_rank"] = lens["target_rank"].astype(float).apply(math.log10)
    per_layer = lens.groupby("layer")[["attribute_rate", "log10_rank"]].mean().reset_index()
    bars: dict[str, Any] = {"attribute_rate": None, "log10_rank": None}
    if ci is not None:
        agg = Result(lens, {}).aggregate("layer", value=["attribute_rate", "log10_rank"], ci=ci, n_boot=n_boot,
                                         seed=seed).table.set_index("layer").reindex(per_layer["layer"])
        for c in bars:
            bars[c] = interval_error(agg.assign(**{c: per_layer[c].to_numpy()}), c)
    fig = make_subplots(rows=2, cols=2, specs=[[{}, {}], [{"colspan": 2}, None]], vertical_spacing=0.2,
                        horizontal_spacing=0.14,
                        subplot_titles=("attribute rate per layer", "rank of the target per layer",
                                        "knockout: drop of the final attribute rate"))
    fig.add_trace(go.Scatter(x=per_layer["layer"], y=per_layer["attribute_rate"], mode="lines+markers",
                             name="attribute rate", line={"color": "#b2182b"}, error_y=bars["attribute_rate"],
                             hovertemplate="layer %{x}<br>mean attribute rate %{y:.3f}<extra></extra>"),
                  row=1, col=1)
    fig.add_trace(go.Scatter(x=per_layer["layer"], y=per_layer["log10_rank"], mode="lines+markers",
                             name="log10 rank of the target", line={"color": "#2166ac"},
                             error_y=bars["log10_rank"],
                             hovertemplate="layer %{x}<br>mean log10 rank %{y:.3f}<extra></extra>"),
                  row=1, col=2)
    ko = t[t["analysis"] == "knockout"]
    drops = [0.0]
    for site, part in ko.groupby("site", sort=False):
        g = part.groupby(["window_start", "window_end"])["attribute_rate_drop"].mean().reset_index()
        drops += [float(v) for v in g["attribute_rate_drop"]]
        error = None
        if ci is not None:
            windows = ["window_start", "window_end"]
            agg = Result(part, {}).aggregate(windows, value="attribute_rate_drop", ci=ci, n_boot=n_boot,
                                             seed=seed).table
            agg = g[windows].merge(agg, on=windows, how="left", validate="one_to_one")
            error = interval_error(agg.assign(attribute_rate_drop=g["attribute_rate_drop"].to_numpy()),
                                   "attribute_rate_drop")
            drops += [float(v) for v in agg["attribute_rate_drop_ci_high"].dropna()]
        fig.add_trace(go.Bar(x=[f"[{a}, {b})" for a, b in zip(g["window_start"], g["window_end"])],
                             y=g["attribute_rate_drop"], name=f"{site} knocked out", error_y=error,
                             hovertemplate="layers %{x}<br>mean drop %{y:.3f}<extra>" + site + "</extra>"),
                      row=2, col=1)
    final_rate = float(per_layer["attribute_rate"].iloc[-1]) if len(per_layer) else 1.0
    top = max(final_rate, max(drops))
    low = min(drops)
    ranks_top = max(1.0, float(per_layer["log10_rank"].max()) if len(per_layer) else 1.0)
    fig.update_xaxes(title_text="layer (residual after the block)", row=1, col=1)
    fig.update_xaxes(title_text="layer (residual after the block)", row=1, col=2)
    fig.update_xaxes(title_text="knocked-out layers [start, end)", row=2, col=1)
    fig.update_yaxes(title_text="attribute rate (fraction of top-k)", range=FRACTION_RANGE, row=1, col=1)
    fig.update_yaxes(title_text="log10 rank (0 = top-1)", range=[-0.05 * ranks_top, 1.05 * ranks_top], row=1, col=2)
    fig.update_yaxes(title_text="drop (fraction of top-k)", range=[low - 0.05 * top, 1.05 * top], row=2, col=1)
    n = t["prompt_id"].nunique()
    over = f"mean over {n} prompt{'s' if n != 1 else ''}"
    if ci is not None:
        over += "; bars: " + interval_title(ci, n)
    fig.update_layout(title=f"Relation evidence at the last position<br>{over}",
                      barmode="group", autosize=True, height=720, margin={"t": 110},
                      legend={"orientation": "h", "y": -0.12})
    return fig


@register_method("relation_evidence", paper=PAPER, cost=COST, schema=SCHEMA, inputs="prompts", family="tracing",
                 figure=relation_evidence_figure, shards=ShardPlan(prepare=_prepare), fields=("target", "task"),
                 organism="dense", corpus="factual", example={"top_k": 5, "window": 2, "sites": ("mlp_out",)})
def relation_evidence(
    model: Any,
    prompts: Any,
    *,
    attributes: Sequence[str] | Mapping[Any, Sequence[str]] | None = None,
    top_k: int = 50,
    sites: Sequence[str] = KNOCKOUT_SITES,
    window: int = 2,
    target: str = "target",
    metric: str | metrics.MetricFn | None = None,
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = False,
) -> Result:
    """Per-layer target rank and attribute rate at the last prompt position (logit lens), and the drops of both
    when a window of MLPs or attention sublayers is knocked out there (Liu et al. 2025, arXiv 2408.15091; Geva
    et al. 2023, arXiv 2304.14767).

    Prompts carry the ``target`` field (the object; its first token o is scored) and usually ``task`` (the
    relation).

    Args:
        attributes: A_r (see :func:`attribute_sets`): None takes the first tokens of every target of the
            prompt's task in this prompt set; a list of strings, one set for every prompt; a dict task -> list.
        top_k: the decoded tokens the attribute rate looks at (Liu et al.: 50).
        sites: the sublayers knocked out, names from :mod:`interp.activations.sites`: ``"mlp_out"``, ``"attn_out"``.
        window: width of the half-open window of layers knocked out together, in layers; every window
            [a, a + window) inside the model is run.
        target: the prompt field whose first token is scored.
        metric: also score every row with this metric of the row's logits (lens rows: the decoded residual;
            knockout rows: the output with the window knocked out) and the target: a name from
            :data:`interp.methods.metrics.METRICS` without a contrast token, or a callable
            ``f(logits [B, vocab], target [B], None) -> [B]``; adds ``metric_value`` and ``clean_metric`` (the
            output with nothing knocked out), in ``meta["metric_unit"]``. None: the paper's measures only.
        batch_size: prompts per forward batch.
        max_rows: at most this many rows (prompt x knockout) in one forward; None: from a memory budget.
        progress: a progress bar over the batches.

    Returns:
        A Result, one row per prompt x analysis x site x layer (schema ``SCHEMA``; value ``attribute_rate``, a
        fraction of top_k, higher matters more): prompt_id, task (when the prompts carry it), analysis
        ("lens": the residual after block ``layer`` decoded, site ``resid_post``, window [layer, layer + 1);
        "knockout": ``site`` zeroed at the last position in layers [window_start, window_end), ``layer`` =
        window_start), target_rank (1 = top), target_prob, attribute_rate (lens: AR_l of the decoded residual;
        knockout: AR of the model's output with the window knocked out), clean_attribute_rate and
        clean_target_prob (the model's output, nothing knocked out), attribute_rate_drop and target_prob_drop
        (clean - knocked; NaN on lens rows), correct (clean top-1 = o), target_token, target_id.

    Cost: one forward per prompt plus (L - window + 1) x len(sites) knocked-out rows per prompt, all batched,
    and L unembeddings of the last position per prompt.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    chosen = check_sites(sites, KNOCKOUT_SITES, model=m, name="sites")
    n_layers = m.info.n_layers
    check_positive_int("window", window)
    if window > n_layers:
        raise ParameterError(f"window={window} exceeds the number of layers ({n_layers}).")
    if not isinstance(target, str) or not target:
        raise ParameterError(f"target must be the name of a prompt field; got {target!r}.")
    check_positive_int("batch_size", batch_size)
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
    if metric is not None:
        metrics.check_metric(metric, vocab_size=m.info.vocab_size, device=m.device, dtype=m.dtype)
    ps.require(target)
    enc = encode(m, ps, targets=[target])
    a_sets = attribute_sets(m, ps, attributes, target=target)
    has_task = "task" in ps.fields
    rows = []
    n_batches = -(-len(ps) // batch_size)
    for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="relation_evidence",
                      disable=not progress):
        rows.extend(_evidence_batch(m, enc, batch, a_sets, top_k, chosen, window, target, max_rows, has_task,
                                    metric))
    order = {pid: i for i, pid in enumerate(ps.ids)}
    columns = [c for c in SCHEMA.columns if c != "prompt_id"]
    columns += ["metric_value", "clean_metric"] if metric is not None else []
    table = pd.DataFrame(rows, columns=["prompt_id", *(["task"] if has_task else []), *columns])
    table = table.sort_values("prompt_id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    meta = make_meta(model=m, prompts=ps)
    if metric is not None:
        meta.update(metric=metrics.metric_label(metric), metric_unit=metrics.unit_of(metric))
    return Result(table, meta)


def _measures(logits: torch.Tensor, targets: torch.Tensor, a_masks: torch.Tensor, top_k: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank of the target [N], its probability [N], attribute rate [N]) of logits [N, vocab]."""
    rank = metrics.rank(logits, targets)
    prob = metrics.prob(logits, targets)
    top = logits.float().topk(top_k, dim=-1).indices
    rate = a_masks.gather(-1, top).float().sum(-1) / top_k
    return rank, prob, rate


def _evidence_batch(m: Model, enc: EncodedSet, batch: Any, a_sets: list[set[int]], top_k: int,
                    chosen: Sequence[str], window: int, target: str, max_rows: int | None, has_task: bool,
                    metric: Any = None) -> list[dict[str, Any]]:
    from ..model.decode import decode

    n_layers = m.info.n_layers
    names = [hook_name("resid_post", layer) for layer in range(n_layers)]
    logits, store = forward(m, batch, read=names, read_fn=lambda n, v: v[:, -1])
    targets = batch.targets[target].to(logits.device)
    a_masks = torch.zeros(batch.size, logits.shape[-1], dtype=torch.bool, device=logits.device)
    for r, idx in enumerate(batch.indices):
        a_masks[r, list(a_sets[idx])] = True
    _, c_prob, c_rate = _measures(logits, targets, a_masks, top_k)
    correct = logits.argmax(-1) == targets
    ids = [enc.prompts.records[i]["id"] for i in batch.indices]

    def user(lg: torch.Tensor) -> list[float]:
        return [float("nan")] * len(ids) if metric is None else \
            metrics.score(metric, lg, targets, None, prompt_ids=ids).float().tolist()

    clean_user = user(logits)
    lens, lens_user = [], []
    for name in names:
        decoded = decode(m, store[name], norm="recompute", output="logits")
        lens.append(_measures(decoded, targets, a_masks, top_k))
        lens_user.append(user(decoded))
    starts = list(range(0, n_layers - window + 1))
    variants = [knockout(m, site, range(a, a + window)) for site in chosen for a in starts]
    keys = [(site, a) for site in chosen for a in starts]
    ko, ko_user = [], []
    if variants:
        _, outs = run_variants(m, batch, variants, lambda lg, _: lg.float(), max_rows=max_rows)
        ko = [_measures(o, targets, a_masks, top_k) for o in outs]
        ko_user = [user(o) for o in outs]
    tok = m.tokenizer
    rows = []
    for r, idx in enumerate(batch.indices):
        rec = enc.prompts.records[idx]
        tid = int(targets[r])
        common = {"prompt_id": rec["id"], **({"task": rec.get("task")} if has_task else {}),
                  "clean_attribute_rate": float(c_rate[r]), "clean_target_prob": float(c_prob[r]),
                  "correct": bool(correct[r]), "target_token": tok.decode([tid]), "target_id": tid}
        if metric is not None:
            common["clean_metric"] = clean_user[r]
        for layer, (rank, prob, rate) in enumerate(lens):
            extra = {"metric_value": lens_user[layer][r]} if metric is not None else {}
            rows.append({**common, **extra, "analysis": "lens", "site": "resid_post", "layer": layer,
                         "window_start": layer, "window_end": layer + 1, "target_rank": int(rank[r]),
                         "target_prob": float(prob[r]), "attribute_rate": float(rate[r]),
                         "attribute_rate_drop": float("nan"), "target_prob_drop": float("nan")})
        for (site, a), (rank, prob, rate), values in zip(keys, ko, ko_user):
            extra = {"metric_value": values[r]} if metric is not None else {}
            rows.append({**common, **extra, "analysis": "knockout", "site": site, "layer": a, "window_start": a,
                         "window_end": a + window, "target_rank": int(rank[r]), "target_prob": float(prob[r]),
                         "attribute_rate": float(rate[r]), "attribute_rate_drop": float(c_rate[r] - rate[r]),
                         "target_prob_drop": float(c_prob[r] - prob[r])})
    return rows
