"""Next-token predictions: the model's top-k next tokens at the last prompt position, and each target's
probability and rank. The simplest method; a sanity check before any attribution."""

from __future__ import annotations

from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from ..activations.variants import forward
from ..errors import ParameterError, check_positive_int
from ..model.loading import as_model
from ..prompts import as_prompt_set, batches, encode
from ..results.result import Result, make_meta
from . import metrics
from .registry import Schema, register_method

SCHEMA = Schema(
    keys=("prompt_id", "prediction_rank"), value="prob", unit="probability", sign="higher",
    columns={"prompt_id": "str", "prediction_rank": "int", "predicted_id": "int", "predicted_token": "str",
             "prob": "float", "logprob": "float"},
    optional={"target_token": "str", "target_id": "int", "target_prob": "float", "target_rank": "int"},
    units={"logprob": "nats", "target_prob": "probability"},
    grid=("prompt_id", "prediction_rank"),
)


def predictions_figure(result: Result, max_prompts: int = 8) -> Any:
    """For each of the first ``max_prompts`` prompts, its top-k next tokens by rank: x is the rank, one bar group
    per rank with one bar per prompt (labelled with its token), so prompts never share a bar."""
    import plotly.graph_objects as go

    fig = go.Figure()
    pids = list(dict.fromkeys(result.table["prompt_id"]))
    for pid in pids[:max_prompts]:
        rows = result.table[result.table["prompt_id"] == pid]
        fig.add_trace(go.Bar(name=str(pid), x=[f"#{r}" for r in rows["prediction_rank"]], y=rows["prob"],
                             text=[repr(t) for t in rows["predicted_token"]], textposition="outside",
                             customdata=rows["predicted_token"],
                             hovertemplate="prompt " + str(pid) + "<br>rank %{x}: %{customdata}<br>"
                             "p=%{y:.4f} (probability)<extra></extra>"))
    shown = min(max_prompts, len(pids))
    more = f" of {len(pids)}" if len(pids) > shown else ""
    fig.update_layout(title=f"Top next tokens at the last prompt position ({shown}{more} prompts, one colour each)",
                      xaxis_title="rank of the predicted token", yaxis_title="probability", barmode="group",
                      legend_title_text="prompt", autosize=True)
    return fig


@register_method("predictions", paper="(none: the model's own next-token distribution)",
                 cost="1 forward per prompt (batched)", family="core", figure=predictions_figure, schema=SCHEMA,
                 fields=("target",), organism="dense", corpus="factual", example={"top_k": 3})
def predictions(model: Any, prompts: Any, *, top_k: int = 5, target: str = "target", batch_size: int = 16,
                progress: bool = False) -> Result:
    """Top-k next tokens at the last real prompt position, with the target's probability and rank if given.

    Args:
        top_k: next tokens kept per prompt.
        target: the prompt field whose first token is scored, when the prompts have it.
        batch_size: prompts per forward.

    Returns: one row per prompt x rank: prompt_id, prediction_rank (1 = the model's top token), predicted_id,
    predicted_token, prob, logprob (nats); plus target_token, target_id, target_prob and target_rank when the
    prompts carry the ``target`` field. Cost: one forward per prompt, batched.

    Example:
        >>> interp.predictions(model, [{"prompt": "The capital of France is", "target": " Paris"}]).top(3)
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    has_target = target in ps.fields
    enc = encode(m, ps, targets=[target] if has_target else [])
    rows = []
    n_batches = -(-len(ps) // check_positive_int("batch_size", batch_size))
    for batch in tqdm(batches(m, enc, batch_size), total=n_batches, desc="predictions", disable=not progress):
        logits, _ = forward(m, batch)
        logprobs = logits.float().log_softmax(-1).cpu()
        top = logprobs.topk(top_k, dim=-1)
        extra_rows: list[dict] = [{} for _ in batch.indices]
        if has_target:
            t = batch.targets[target].cpu()
            t_prob = metrics.prob(logits.cpu(), t)
            t_rank = metrics.rank(logits.cpu(), t)
            extra_rows = [{"target_token": m.tokenizer.decode([int(t[r])]), "target_id": int(t[r]),
                           "target_prob": float(t_prob[r]), "target_rank": int(t_rank[r])}
                          for r in range(batch.size)]
        for r, idx in enumerate(batch.indices):
            rec = ps[idx]
            for k in range(top_k):
                tid = int(top.indices[r, k])
                rows.append({"prompt_id": rec["id"], "prediction_rank": k + 1, "predicted_id": tid,
                             "predicted_token": m.tokenizer.decode([tid]), "prob": float(top.values[r, k].exp()),
                             "logprob": float(top.values[r, k]), **extra_rows[r]})
    order = {pid: i for i, pid in enumerate(ps.ids)}
    table = pd.DataFrame(rows).sort_values(["prompt_id", "prediction_rank"],
                                           key=lambda s: s.map(order) if s.name == "prompt_id" else s, kind="stable")
    return Result(table, make_meta(model=m, prompts=ps))
