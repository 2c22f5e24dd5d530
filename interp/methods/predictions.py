"""Next-token predictions: the model's top-k next tokens at the last prompt position, and each target's
probability and rank. The simplest method; a sanity check before any attribution."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..errors import check_positive_int
from ..model import as_model
from ..prompts import as_prompt_set, batches, encode
from ..registry import register_method
from ..results import Result, make_meta
from ..variants import forward


def predictions_figure(result: Result, max_prompts: int = 8) -> Any:
    """One bar group per prompt: its top-k next tokens and their probabilities."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for pid in list(dict.fromkeys(result.table["prompt_id"]))[:max_prompts]:
        rows = result.table[result.table["prompt_id"] == pid]
        fig.add_trace(go.Bar(name=str(pid), x=[f"#{r} {t!r}" for r, t in zip(rows["rank"], rows["token"])],
                             y=rows["prob"], hovertemplate="%{x}<br>p=%{y:.4f}<extra>" + str(pid) + "</extra>"))
    fig.update_layout(title="Next-token predictions at the last prompt position", yaxis_title="probability",
                      barmode="group")
    return fig


@register_method("predictions", paper="(none: the model's own next-token distribution)",
                 cost="1 forward per prompt (batched)", family="core", figure=predictions_figure)
def predictions(model: Any, prompts: Any, *, top_k: int = 5, batch_size: int = 16) -> Result:
    """Top-k next tokens at the last real prompt position, with the target's probability and rank if given.

    Table: one row per prompt x rank: prompt_id, rank, token_id, token, prob, logprob; plus target,
    target_prob, target_rank when the prompts carry a ``target``. Cost: one forward per prompt, batched.
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        from ..errors import ParameterError

        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    has_target = "target" in ps.fields
    enc = encode(m, ps, targets=["target"] if has_target else [])
    rows = []
    for batch in batches(m, enc, check_positive_int("batch_size", batch_size)):
        logits, _ = forward(m, batch)
        logprobs = logits.float().log_softmax(-1).cpu()
        top = logprobs.topk(top_k, dim=-1)
        for r, idx in enumerate(batch.indices):
            rec = ps[idx]
            extra = {}
            if has_target:
                t = int(batch.targets["target"][r])
                lp = logprobs[r, t]
                extra = {"target": rec["target"], "target_prob": float(lp.exp()),
                         "target_rank": int((logprobs[r] > lp).sum()) + 1}
            for k in range(top_k):
                tid = int(top.indices[r, k])
                rows.append({"prompt_id": rec["id"], "rank": k + 1, "token_id": tid,
                             "token": m.tokenizer.decode([tid]), "prob": float(top.values[r, k].exp()),
                             "logprob": float(top.values[r, k]), **extra})
    order = {pid: i for i, pid in enumerate(ps.ids)}
    table = pd.DataFrame(rows).sort_values(["prompt_id", "rank"], key=lambda s: s.map(order) if s.name == "prompt_id"
                                           else s, kind="stable")
    return Result(table, make_meta("predictions", m, ps, {"top_k": top_k}))


