"""Internal chain-of-thought probes (Yang et al., "Internal Chain-of-Thought: Empirical Evidence for Layer-wise
Subtask Scheduling in LLMs", EMNLP 2025, arXiv 2505.14530): layer-from context masking and cross-task patching.

* :func:`context_masking` forbids attention to the demonstrations from layer l on and reads, per l, the top-1
  accuracy against the composite answer y_t, the intermediate answer y_s1 and the distractor y_s2.
* :func:`cross_task_patching` takes the composite task's vector at each layer (mean resid_post at the last
  position of N-shot composite prompts) and writes it into zero-shot prompts of each subtask.

Both expect an "X-shape": the first subtask (s1) is learned at shallower layers than the second (s2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations import sites as S
from ..activations.hooks import Intervention
from ..activations.interventions import mask_attention, set_edit
from ..activations.variants import forward, run_variants
from ..errors import ParameterError, PromptError, check_layer_list, check_positive_int
from ..model.loading import Model, as_model
from ..prompts import PromptSet, as_prompt_set, batches, encode
from ..results.result import Result, make_meta
from ..runs.checkpoints import StageCheckpoints
from . import metrics
from .patching_core import TokenNames, check_layers
from .registry import Schema, ShardPlan, register_method, shard_input

ICOT_PAPER = "Yang et al., EMNLP 2025, arXiv 2505.14530 (Internal Chain-of-Thought)"
ICOT_TARGETS = ("y_t", "y_s1", "y_s2")

MASKING_SCHEMA = Schema(
    keys=("prompt_id", "from_layer", "target_field"), value="score", unit="accuracy (1 = the top-1 prediction is "
    "the target token)", sign="higher",
    columns={"prompt_id": "str", "from_layer": "int", "target_field": "str", "target_token": "str",
             "target_id": "int", "correct": "bool", "target_prob": "float", "score": "float"},
    optional={"task": "str", "metric_value": "float"}, units={"target_prob": "probability"},
    grid=("from_layer", "target_field"))
# the value is acc_patch, not the paper's strength: strength is undefined (NaN) wherever acc_ICL = acc_0, e.g. on
# every random model, while acc_patch ranks a subtask's layers the same way wherever strength is defined and
# acc_ICL > acc_0
CROSS_TASK_SCHEMA = Schema(
    keys=("composite", "subtask", "layer"), value="acc_patch", unit="accuracy", sign="higher",
    columns={"composite": "str", "subtask": "str", "layer": "int", "strength": "float", "strength_note": "str",
             "acc_patch": "float",
             "acc_0": "float", "acc_icl": "float", "prob_patch": "float", "prob_0": "float", "prob_icl": "float",
             "n_zero": "int", "n_icl": "int", "n_vectors": "int"},
    units={"strength": "fraction of the ICL gain, (acc_patch - acc_0) / (acc_icl - acc_0)", "acc_0": "accuracy",
           "acc_icl": "accuracy", "prob_patch": "probability", "prob_0": "probability", "prob_icl": "probability"},
    grid=("layer", "subtask"))


def _check_from_layers(m: Model, from_layers: Sequence[int] | None) -> list[int]:
    n = m.info.n_layers  # from_layers = n: no layer masked (the plain model)
    return check_layer_list("from_layers", from_layers, n + 1, out_of_range=f"is not in [0, {n}] ({n} = no masking)")


def _check_targets(ps: PromptSet, target: Sequence[str] | str) -> list[str]:
    fields = [target] if isinstance(target, str) else list(target)
    if not fields:
        raise ParameterError("target is empty; name at least one answer field (e.g. 'y_t').")
    for t in fields:
        if not isinstance(t, str) or t not in ps.fields:
            raise PromptError(f"The prompts have no {t!r} field to score against (fields: {', '.join(ps.fields)}).")
    if len(set(fields)) != len(fields):
        raise ParameterError(f"target names a field twice: {fields}.")
    return fields


def _accuracy_reduce(targets: torch.Tensor, metric: Any = None, prompt_ids: Sequence[str] | None = None):
    """reduce(logits, store) -> [rows, 1 + n_targets (+ n_targets)]: argmax, then each target's log-probability,
    then (with a user ``metric``) each target's metric."""
    bsz = targets.shape[0]

    def reduce(logits: torch.Tensor, _store: dict[str, Any]) -> torch.Tensor:
        k = logits.shape[0] // bsz
        lp = logits.float().log_softmax(-1)
        tg = targets.to(lp.device).repeat(k, 1)
        parts = [lp.argmax(-1, keepdim=True).float(), lp.gather(-1, tg)]
        if metric is not None:
            ids = list(prompt_ids or []) * k
            parts.append(torch.stack([metrics.score(metric, logits, tg[:, j], None, prompt_ids=ids).float()
                                      for j in range(tg.shape[1])], dim=1))
        return torch.cat(parts, dim=1)

    return reduce


def context_masking_figure(result: Result, *, ci: float | None = None, n_boot: int = 1000, seed: int = 0) -> Any:
    """Top-1 accuracy against each target field as a function of the first masked layer (one line per target,
    and per task when there are several); with ``ci`` (e.g. 0.95), error bars of the seeded bootstrap interval over
    prompts (:meth:`interp.Result.aggregate`)."""
    import plotly.graph_objects as go

    from ..figures.viz import interval_error

    t = result.table
    keys = ["task", "target_field"] if "task" in t.columns and t["task"].nunique() > 1 else ["target_field"]
    fig = go.Figure()
    if ci is None:
        acc = t.groupby([*keys, "from_layer"], sort=False)["correct"].mean().reset_index()
    else:
        acc = result.aggregate([*keys, "from_layer"], value="correct", ci=ci, n_boot=n_boot, seed=seed).table
    for key, g in acc.groupby(keys, sort=False):
        name = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        fig.add_trace(go.Scatter(x=g["from_layer"], y=g["correct"], mode="lines+markers", name=name,
                                 error_y=None if ci is None else interval_error(g, "correct")))
    n = result.meta.get("n_layers")
    title = (f"Context masking: attention to '{result.meta['parameters']['span']}' forbidden from layer l on ({n} = "
             "no masking)")
    if ci is not None:
        title += f"<br>bars: {ci:.0%} bootstrap interval over {t['prompt_id'].nunique()} prompts"
    fig.update_layout(title=title, xaxis_title="first masked layer l", yaxis_title="top-1 accuracy",
                      yaxis_range=[-0.02, 1.02])
    return fig


def _masking_example(model: Any, prompts: Any) -> dict[str, Any]:
    """Cheap parameters for a check run: two masked layers and the unmasked model."""
    n = as_model(model).info.n_layers
    return {"from_layers": sorted({0, min(1, n - 1), n})}


@register_method("context_masking", schema=MASKING_SCHEMA, paper=ICOT_PAPER,
                 cost="1 forward per prompt + 1 prompt row per masked layer (batched, each started at its first "
                 "masked layer)", family="patching", figure=context_masking_figure,
                 fields=("demonstrations", *ICOT_TARGETS), organism="dense", corpus="composite",
                 example=_masking_example)
def context_masking(
    model: Any,
    prompts: Any,
    *,
    span: str = "demonstrations",
    from_layers: Sequence[int] | None = None,
    target: Sequence[str] | str = ICOT_TARGETS,
    metric: str | metrics.MetricFn | None = None,
    batch_size: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
) -> Result:
    """Layer-from context masking (Yang et al., EMNLP 2025, arXiv 2505.14530): for each l, no query may attend
    to the ``span`` field's tokens in any layer >= l (-inf added to those key columns of the scores before the
    softmax, in every head and query row; a row that would have no key left is left alone). l = n_layers is the
    unmasked model.

    Args:
        model: an interp.Model or a TransformerBridge.
        prompts: N-shot prompts with the ``span`` field and the ``target`` field(s).
        span: the prompt field whose token span is masked (the demonstrations).
        from_layers: the first masked layers l, in [0, n_layers] (n_layers: no masking); None: all of them.
        target: the prompt field, or list of fields, whose first token's top-1 accuracy and probability are
            read (default: the composite answer y_t, the intermediate answer y_s1, the distractor y_s2).
        metric: also score each target field's first token with this metric of the last position's logits (a
            name from :data:`interp.methods.metrics.METRICS` without a contrast token, or a callable
            ``f(logits [B, vocab], target [B], None) -> [B]``); adds ``metric_value``, in ``meta["metric_unit"]``.
            None: the paper's top-1 accuracy and the probability only.
        batch_size: prompts per batch; max_rows: at most this many masked rows per forward.
        progress: a progress bar over the batches.

    Returns:
        A Result with one row per prompt x l x target field: prompt_id, task (if the prompts have one),
        from_layer, target_field (the field's name), target_token (its first token's text), target_id, correct
        (top-1 prediction == that token), target_prob, score (= correct as 0/1: the schema's value, its mean is
        the accuracy).

    Cost: 1 forward per prompt + 1 prompt row per l < n_layers, batched by the variants engine (chunks start at
    their first masked layer).
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    if not isinstance(span, str) or not span:
        raise ParameterError(f"span={span!r} must name a field of the prompts (e.g. 'demonstrations').")
    if span not in ps.fields:
        raise PromptError(f"The prompts have no {span!r} field to mask (fields: {', '.join(ps.fields)}).")
    layers = _check_from_layers(m, from_layers)
    tnames = _check_targets(ps, target)
    check_positive_int("batch_size", batch_size)
    if metric is not None:
        metrics.check_metric(metric, vocab_size=m.info.vocab_size, device=m.device, dtype=m.dtype)
    enc = encode(m, ps, targets=tnames, spans=[span])
    n = m.info.n_layers
    names = TokenNames(m.tokenizer)
    rows = []
    n_batches = -(-len(ps) // batch_size)
    for batch in tqdm(batches(m, enc, batch_size), desc="context_masking", total=n_batches, disable=not progress):
        key_mask = torch.zeros(batch.size, batch.width, dtype=torch.bool)
        for r, (s, e) in enumerate(batch.spans[span]):
            key_mask[r, s:e] = True
        masked = [layer for layer in layers if layer < n]
        variants = [mask_attention(m, key_mask, from_layer=layer) for layer in masked]
        tg = torch.stack([batch.targets[t] for t in tnames], dim=1)
        ids = [ps[i]["id"] for i in batch.indices]
        clean, outs = run_variants(m, batch, variants, _accuracy_reduce(tg, metric, ids), max_rows=max_rows)
        results = dict(zip(masked, outs))
        if n in layers:
            results[n] = clean
        for layer in layers:
            out = results[layer].cpu()
            for r, i in enumerate(batch.indices):
                rec = ps[i]
                for j, t in enumerate(tnames):
                    tid = int(tg[r, j])
                    ok = int(out[r, 0]) == tid
                    rows.append({"prompt_id": rec["id"], **({"task": rec.get("task")} if "task" in ps.fields else {}),
                                 "from_layer": layer, "target_field": t, "target_token": names(tid),
                                 "target_id": tid, "correct": ok, "target_prob": float(out[r, 1 + j].exp()),
                                 "score": float(ok),
                                 **({"metric_value": float(out[r, 1 + len(tnames) + j])} if metric is not None
                                    else {})})
    columns = [c for c in MASKING_SCHEMA.columns if c != "prompt_id"] + (["metric_value"] if metric is not None
                                                                          else [])
    table = pd.DataFrame(rows, columns=["prompt_id", *(["task"] if "task" in ps.fields else []), *columns])
    order = {pid: k for k, pid in enumerate(ps.ids)}
    # prompt by prompt (as given), so that the shards of a sharded run concatenate to this table
    table = table.sort_values(["prompt_id", "from_layer"], key=lambda s: s.map(order) if s.name == "prompt_id" else s,
                              kind="stable").reset_index(drop=True)
    meta = make_meta(model=m, prompts=ps, n_layers=n)
    if metric is not None:
        meta.update(metric=metrics.metric_label(metric), metric_unit=metrics.unit_of(metric))
    return Result(table, meta)


# --- cross-task patching --------------------------------------------------------------------------------
def _zero_shot(record: dict[str, Any], demos_field: str) -> dict[str, Any]:
    """The record with its demonstrations cut out of the prompt (and the whitespace after them)."""
    demos = record[demos_field]
    prompt = record["prompt"]
    k = prompt.find(demos)
    zero = (prompt[:k] + prompt[k + len(demos):].lstrip()) if k >= 0 else prompt
    return {**record, "prompt": zero, demos_field: None, "id": f"{record['id']}/0shot"}


def split_subtasks(composite: PromptSet, subtask_prompts: PromptSet, *, subtask: str, demos_field: str
                   ) -> tuple[dict[str, PromptSet], dict[str, tuple[str, PromptSet, PromptSet]]]:
    """Composite prompt sets by task, and per subtask: (its composite, N-shot prompts, zero-shot prompts)."""
    comp_tasks = composite.column("task") if "task" in composite.fields else ["composite"] * len(composite)
    comps: dict[str, list[int]] = {}
    for i, t in enumerate(comp_tasks):
        comps.setdefault(str(t), []).append(i)
    comp_sets = {t: composite[idx] for t, idx in comps.items()}
    if subtask not in subtask_prompts.fields:
        raise PromptError(f"The subtask prompts have no {subtask!r} field naming their subtask "
                          f"(fields: {', '.join(subtask_prompts.fields)}).")
    subtask_prompts.require(subtask)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in subtask_prompts.records:
        groups.setdefault(str(r[subtask]), []).append(r)
    out = {}
    for s, recs in groups.items():
        parents = {str(r.get("subtask_of")) for r in recs if r.get("subtask_of") is not None}
        if len(comp_sets) == 1:
            parent = next(iter(comp_sets))
        elif len(parents) == 1 and next(iter(parents)) in comp_sets:
            parent = next(iter(parents))
        else:
            raise PromptError(f"Subtask {s!r}: with several composite tasks ({', '.join(comp_sets)}), each subtask "
                              "record needs a 'subtask_of' field naming one of them.")
        icl = [r for r in recs if r.get(demos_field)]
        if not icl:
            raise PromptError(f"Subtask {s!r} has no N-shot prompt (no record with a {demos_field!r} field), so "
                              "its ICL accuracy is undefined.")
        zero = [r for r in recs if not r.get(demos_field)]
        if not zero:
            zero = [_zero_shot(r, demos_field) for r in icl]
            seen: dict[str, dict[str, Any]] = {}
            for r in zero:
                seen.setdefault(r["prompt"] + "\x00" + str(r.get("target")), r)
            zero = list(seen.values())
        out[s] = (parent, PromptSet(icl), PromptSet(zero))
    return comp_sets, out


def _mean_last_resid(m: Model, ps: PromptSet, layers: list[int], batch_size: int) -> dict[int, torch.Tensor]:
    names = [S.hook_name("resid_post", layer) for layer in layers]
    total = {layer: torch.zeros(m.info.d_model, dtype=torch.float64) for layer in layers}
    enc = encode(m, ps)
    for batch in batches(m, enc, batch_size):
        _, store = forward(m, batch, read=names, read_fn=lambda _n, v: v[:, -1], logits=None, stop_after=names[-1])
        for layer, name in zip(layers, names):
            total[layer] += store[name].double().sum(0).cpu()
    return {layer: (v / len(ps)).to(m.dtype) for layer, v in total.items()}


def _replace_last(name: str, value: torch.Tensor) -> Intervention:
    return Intervention((set_edit(name, value, -1),), f"task vector at {name}", {"hook": name})


def _target_stats(m: Model, ps: PromptSet, target: str, batch_size: int, variants_for=None, max_rows=None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """(correct [N], target prob [N]) of the plain run, and of each variant when ``variants_for`` is given."""
    enc = encode(m, ps, targets=[target])
    n = len(ps)
    base_c, base_p = torch.zeros(n), torch.zeros(n, dtype=torch.float64)
    var: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in batches(m, enc, batch_size):
        tg = batch.targets[target][:, None]
        variants = variants_for() if variants_for is not None else []
        clean, outs = run_variants(m, batch, variants, _accuracy_reduce(tg), max_rows=max_rows)
        if not var:
            var = [(torch.zeros(n), torch.zeros(n, dtype=torch.float64)) for _ in variants]
        idx = torch.tensor(batch.indices)
        tgc = tg[:, 0].float()
        base_c[idx] = (clean[:, 0].cpu() == tgc).float()
        base_p[idx] = clean[:, 1].double().exp().cpu()
        for (vc, vp), o in zip(var, outs):
            vc[idx] = (o[:, 0].cpu() == tgc).float()
            vp[idx] = o[:, 1].double().exp().cpu()
    return base_c, base_p, var


def cross_task_figure(result: Result) -> Any:
    """strength_s(l) per subtask (one line per composite x subtask)."""
    import plotly.graph_objects as go

    t = result.table
    fig = go.Figure()
    for (comp, sub), g in t.groupby(["composite", "subtask"], sort=False):
        fig.add_trace(go.Scatter(x=g["layer"], y=g["strength"], mode="lines+markers", name=f"{comp}: {sub}",
                                 customdata=g[["acc_patch", "acc_0", "acc_icl"]].values,
                                 hovertemplate="layer %{x}<br>strength %{y:.3f}<br>acc_patch %{customdata[0]:.3f}"
                                 "<br>acc_0 %{customdata[1]:.3f}<br>acc_ICL %{customdata[2]:.3f}<extra></extra>"))
    fig.update_layout(title="Cross-task patching: composite task vector written into zero-shot subtask prompts",
                      xaxis_title="layer l (resid_post at the last position replaced)",
                      yaxis_title="strength = (acc_patch - acc_0) / (acc_ICL - acc_0)")
    return fig


def _cross_task_example(model: Any, prompts: Any) -> dict[str, Any]:
    """Cheap parameters for a check run: 4 held-out subtask prompts, the first two layers, 2 vectors per task."""
    from .checks import corpus_prompts

    n = as_model(model).info.n_layers
    # a PromptSet, recorded by its fingerprint in meta["parameters"] (as the CLI, which reads it from a file, does)
    return {"subtask_prompts": PromptSet(corpus_prompts("subtasks", 4)), "layers": list(range(min(2, n))),
            "n_vectors": 2}


@register_method("cross_task_patching", schema=CROSS_TASK_SCHEMA, shards=ShardPlan(checkpoint=True),
                 paper=ICOT_PAPER, cost="1 forward per composite prompt (up to n_vectors) + 1 per N-shot and "
                 "zero-shot subtask prompt + 1 zero-shot row per layer (batched)", family="patching",
                 figure=cross_task_figure, fields=("task", "target", "demonstrations"), organism="dense",
                 corpus="composite", example=_cross_task_example)
def cross_task_patching(
    model: Any,
    prompts: Any,
    subtask_prompts: Any,
    *,
    layers: Sequence[int] | None = None,
    n_vectors: int = 100,
    subtask: str = "task",
    target: str = "target",
    demonstrations: str = "demonstrations",
    batch_size: int = 8,
    max_rows: int | None = None,
    progress: bool = True,
) -> Result:
    """Cross-task patching (Yang et al., EMNLP 2025, arXiv 2505.14530): theta^l = mean over the first
    ``n_vectors`` composite N-shot prompts of resid_post[l] at the last position; for each subtask,
    acc_patch(l) = accuracy of its zero-shot prompts with resid_post[l] at the last position REPLACED by
    theta^l, and strength(l) = (acc_patch - acc_0) / (acc_ICL - acc_0): NaN, with the reason in ``strength_note``,
    where the ICL gain is at most one prompt's worth of accuracy (a ratio over a near-zero or negative gain would
    be a huge, meaningless number).

    Args:
        model: an interp.Model or a TransformerBridge.
        prompts: N-shot prompts of one or more composite tasks (grouped by their ``task`` field).
        subtask_prompts: prompts of the subtasks, grouped by the ``subtask`` field; a record with a non-empty
            ``demonstrations`` field is N-shot (gives acc_ICL), one without is zero-shot (gives acc_0 and
            acc_patch); a subtask given only N-shot prompts gets zero-shot ones by cutting the demonstrations (and
            the whitespace after them) out of each prompt. With several composites, each subtask record names its
            composite in ``subtask_of``.
        layers: the layers whose resid_post is replaced (None: all).
        n_vectors: composite prompts averaged into each task vector (the first ones of each task).
        subtask: the subtask prompts' field naming their subtask.
        target: the field whose first token is scored (top-1 accuracy and probability).
        demonstrations: the field holding a prompt's demonstrations.
        batch_size: prompts per batch; max_rows: at most this many patched rows per forward.
        progress: a progress bar over the subtasks.

    Returns:
        A Result with one row per composite x subtask x layer: composite, subtask, layer, strength (the paper's
        measure; NaN where acc_icl = acc_0), acc_patch (the schema's value: it is defined everywhere), acc_0,
        acc_icl, prob_patch / prob_0 / prob_icl (mean target probability), n_zero, n_icl, n_vectors (the
        composite prompts averaged).

    Cost: 1 forward per composite prompt used + 1 per subtask prompt + 1 zero-shot row per layer (batched,
    started at that layer). In a resumable run (:func:`interp.run_resumable`) the task vectors and each finished
    subtask are saved in the run's stage directory, and a rerun computes only what is missing
    (:mod:`interp.runs.checkpoints`).
    """
    m = as_model(model)
    comp = as_prompt_set(prompts)
    subs = as_prompt_set(subtask_prompts)
    layer_list = check_layers(m, layers)
    n_vectors = check_positive_int("n_vectors", n_vectors)
    check_positive_int("batch_size", batch_size)
    subs.require(target)
    comp_sets, groups = split_subtasks(comp, subs, subtask=subtask, demos_field=demonstrations)
    for _s, (_parent, icl, zero) in groups.items():  # every target token, before any forward
        encode(m, icl, targets=[target])
        encode(m, zero, targets=[target])
    for c in comp_sets.values():
        encode(m, c)
    saved = StageCheckpoints(shard_input("checkpoint_dir"))
    thetas = {}
    for ci, (c, ps) in enumerate(comp_sets.items()):
        stored = saved.load_tensors(f"task_vectors_{ci:03d}")
        if stored is None:
            thetas[c] = _mean_last_resid(m, ps[:n_vectors], layer_list, batch_size)
            saved.save_tensors(f"task_vectors_{ci:03d}", {str(layer): v for layer, v in thetas[c].items()})
        else:
            thetas[c] = {int(layer): v for layer, v in stored.items()}
    rows = []
    bar = tqdm(list(enumerate(groups.items())), desc="cross_task_patching", disable=not progress, unit="subtask")
    for si, (s, (parent, icl, zero)) in bar:
        done = saved.load_result(f"subtask_{si:03d}")
        if done is not None:
            rows.extend(done.table.to_dict(orient="records"))
            continue
        first = len(rows)
        theta = thetas[parent]
        icl_c, icl_p, _ = _target_stats(m, icl, target, batch_size)
        mk = lambda th=theta: [_replace_last(S.hook_name("resid_post", layer), th[layer]) for layer in layer_list]
        z_c, z_p, patched = _target_stats(m, zero, target, batch_size, mk, max_rows)
        acc_icl, acc_0 = float(icl_c.mean()), float(z_c.mean())
        gain = acc_icl - acc_0
        resolution = max(1 / len(icl), 1 / len(zero))  # one prompt's worth of accuracy
        note = "" if gain > resolution * (1 + 1e-9) else (
            f"undefined: the ICL gain acc_icl - acc_0 = {gain:.3g} is at most one prompt's accuracy "
            f"({resolution:.3g}), too small to divide by")
        for layer, (pc, pp) in zip(layer_list, patched):
            acc_p = float(pc.mean())
            rows.append({"composite": parent, "subtask": s, "layer": layer,
                         "strength": (acc_p - acc_0) / gain if not note else float("nan"), "strength_note": note,
                         "acc_patch": acc_p, "acc_0": acc_0, "acc_icl": acc_icl, "prob_patch": float(pp.mean()),
                         "prob_0": float(z_p.mean()), "prob_icl": float(icl_p.mean()), "n_zero": len(zero),
                         "n_icl": len(icl), "n_vectors": min(n_vectors, len(comp_sets[parent]))})
        saved.save_result(f"subtask_{si:03d}", Result(pd.DataFrame(rows[first:]), {"method": "cross_task/subtask"}))
    table = pd.DataFrame(rows, columns=list(CROSS_TASK_SCHEMA.columns))
    return Result(table, make_meta(model=m, prompts=comp, subtask_fingerprint=subs.fingerprint()))
