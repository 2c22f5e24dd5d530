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

from ..checkpoints import StageCheckpoints
from ..errors import ParameterError, PromptError, check_layer_list, check_positive_int
from ..hooks import Edit, Intervention
from ..interventions import mask_attention
from ..model import Model, as_model
from ..prompts import PromptSet, as_prompt_set, batches, encode
from ..registry import ShardPlan, register_method
from ..results import Result, make_meta
from ..variants import forward, run_variants
from .patching import TokenNames, check_layers

ICOT_PAPER = "Yang et al., EMNLP 2025, arXiv 2505.14530 (Internal Chain-of-Thought)"
ICOT_TARGETS = ("y_t", "y_s1", "y_s2")


def _check_from_layers(m: Model, from_layers: Sequence[int] | None) -> list[int]:
    n = m.info.n_layers  # from_layers = n: no layer masked (the plain model)
    return check_layer_list("from_layers", from_layers, n + 1, out_of_range=f"is not in [0, {n}] ({n} = no masking)")


def _check_targets(ps: PromptSet, targets: Sequence[str] | str) -> list[str]:
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not targets:
        raise ParameterError("targets is empty; name at least one answer field (e.g. 'y_t').")
    for t in targets:
        if not isinstance(t, str) or t not in ps.fields:
            raise PromptError(f"The prompts have no {t!r} field to score against (fields: {', '.join(ps.fields)}).")
    return targets


def _accuracy_reduce(targets: torch.Tensor):
    """reduce(logits, store) -> [rows, 1 + n_targets]: argmax, then each target's log-probability."""
    bsz = targets.shape[0]

    def reduce(logits: torch.Tensor, _store: dict[str, Any]) -> torch.Tensor:
        k = logits.shape[0] // bsz
        lp = logits.float().log_softmax(-1)
        tg = targets.to(lp.device).repeat(k, 1)
        return torch.cat([lp.argmax(-1, keepdim=True).float(), lp.gather(-1, tg)], dim=1)

    return reduce


def context_masking_figure(result: Result) -> Any:
    """Top-1 accuracy against each target field as a function of the first masked layer (one line per target,
    and per task when there are several)."""
    import plotly.graph_objects as go

    t = result.table
    keys = ["task", "target"] if "task" in t.columns and t["task"].nunique() > 1 else ["target"]
    fig = go.Figure()
    acc = t.groupby([*keys, "from_layer"], sort=False)["correct"].mean().reset_index()
    for key, g in acc.groupby(keys, sort=False):
        name = " / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        fig.add_trace(go.Scatter(x=g["from_layer"], y=g["correct"], mode="lines+markers", name=name))
    n = result.meta.get("n_layers")
    fig.update_layout(title=f"Context masking: attention to '{result.meta['parameters']['span']}' forbidden from layer "
                      f"l on ({n} = no masking)", xaxis_title="first masked layer l", yaxis_title="top-1 accuracy",
                      yaxis_range=[-0.02, 1.02])
    return fig


@register_method("context_masking", paper=ICOT_PAPER, cost="1 forward per prompt + 1 prompt row per masked layer "
                 "(batched, each started at its first masked layer)", family="patching", figure=context_masking_figure)
def context_masking(
    model: Any,
    prompts: Any,
    *,
    span: str = "demonstrations",
    from_layers: Sequence[int] | None = None,
    targets: Sequence[str] | str = ICOT_TARGETS,
    batch_size: int = 8,
    max_rows: int | None = None,
) -> Result:
    """Layer-from context masking: for each l, no query may attend to the ``span`` field's tokens in any layer
    >= l (-inf added to those key columns of the scores before the softmax, in every head and query row; a row
    that would have no key left is left alone). l = n_layers is the unmasked model.

    Table: one row per prompt x l x target field: prompt_id, task (if the prompts have one), from_layer, target
    (field name), answer (its text), token (first answer token), correct (top-1 prediction == that token),
    prob, score (= correct as 0/1). Cost: 1 forward per prompt + 1 prompt row per l < n_layers, batched by the
    variants engine (chunks start at their first masked layer).
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    if not isinstance(span, str) or not span:
        raise ParameterError(f"span={span!r} must name a field of the prompts (e.g. 'demonstrations').")
    if span not in ps.fields:
        raise PromptError(f"The prompts have no {span!r} field to mask (fields: {', '.join(ps.fields)}).")
    layers = _check_from_layers(m, from_layers)
    tnames = _check_targets(ps, targets)
    check_positive_int("batch_size", batch_size)
    enc = encode(m, ps, targets=tnames, spans=[span])
    n = m.info.n_layers
    names = TokenNames(m.tokenizer)
    rows = []
    for batch in batches(m, enc, batch_size):
        key_mask = torch.zeros(batch.size, batch.width, dtype=torch.bool)
        for r, (s, e) in enumerate(batch.spans[span]):
            key_mask[r, s:e] = True
        masked = [layer for layer in layers if layer < n]
        variants = [mask_attention(m, key_mask, from_layer=layer) for layer in masked]
        tg = torch.stack([batch.targets[t] for t in tnames], dim=1)
        clean, outs = run_variants(m, batch, variants, _accuracy_reduce(tg), max_rows=max_rows)
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
                                 "from_layer": layer, "target": t, "answer": rec[t], "token": names(tid),
                                 "correct": ok, "prob": float(out[r, 1 + j].exp()), "score": float(ok)})
    table = pd.DataFrame(rows)
    order = {pid: k for k, pid in enumerate(ps.ids)}
    table = table.sort_values(["from_layer", "prompt_id"], key=lambda s: s.map(order) if s.name == "prompt_id" else s,
                              kind="stable").reset_index(drop=True)
    params = {"span": span, "from_layers": layers, "targets": tnames}
    return Result(table, make_meta("context_masking", m, ps, params, n_layers=n))


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
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    total = {layer: torch.zeros(m.info.d_model, dtype=torch.float64) for layer in layers}
    enc = encode(m, ps)
    for batch in batches(m, enc, batch_size):
        _, store = forward(m, batch, read=names, read_fn=lambda _n, v: v[:, -1], logits=None, stop_after=names[-1])
        for layer, name in zip(layers, names):
            total[layer] += store[name].double().sum(0).cpu()
    return {layer: (v / len(ps)).to(m.dtype) for layer, v in total.items()}


def _replace_last(name: str, value: torch.Tensor) -> Intervention:
    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows, -1] = value.to(device=t.device, dtype=t.dtype)

    return Intervention((Edit(name, apply),), f"task vector at {name}", {"hook": name})


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


@register_method("cross_task_patching", shards=ShardPlan(checkpoint="checkpoint_dir"), paper=ICOT_PAPER,
                 cost="1 forward per composite prompt (up to n_vectors) + "
                 "1 per N-shot and zero-shot subtask prompt + 1 zero-shot row per layer (batched)", family="patching",
                 figure=cross_task_figure)
def cross_task_patching(
    model: Any,
    composite_prompts: Any,
    subtask_prompts: Any,
    *,
    layers: Sequence[int] | None = None,
    n_vectors: int = 100,
    subtask: str = "task",
    target: str = "target",
    demonstrations: str = "demonstrations",
    batch_size: int = 8,
    max_rows: int | None = None,
    checkpoint_dir: str | None = None,
) -> Result:
    """Cross-task patching: theta^l = mean over the first ``n_vectors`` composite N-shot prompts of resid_post[l]
    at the last position; for each subtask, acc_patch(l) = accuracy of its zero-shot prompts with resid_post[l]
    at the last position REPLACED by theta^l, and strength(l) = (acc_patch - acc_0) / (acc_ICL - acc_0)
    (NaN where acc_ICL = acc_0).

    ``composite_prompts``: N-shot prompts of one or more composite tasks (grouped by their ``task`` field).
    ``subtask_prompts``: prompts of the subtasks, grouped by the ``subtask`` field; a record with a non-empty
    ``demonstrations`` field is N-shot (gives acc_ICL), one without is zero-shot (gives acc_0 and acc_patch);
    a subtask given only N-shot prompts gets zero-shot ones by cutting the demonstrations (and the whitespace
    after them) out of each prompt. With several composites, each subtask record names its composite in
    ``subtask_of``. Accuracy is top-1 against the first token of the ``target`` field.

    Table: one row per composite x subtask x layer: composite, subtask, layer, strength, acc_patch, acc_0,
    acc_icl, prob_patch / prob_0 / prob_icl (mean target probability), n_zero, n_icl, n_vectors. Cost: 1
    forward per composite prompt used + 1 per subtask prompt + 1 zero-shot row per layer (batched, started at
    that layer). ``checkpoint_dir``: the task vectors and each finished subtask are saved there, and a rerun with
    the same arguments computes only what is missing (:mod:`interp.checkpoints`).
    """
    m = as_model(model)
    comp = as_prompt_set(composite_prompts)
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
    saved = StageCheckpoints(checkpoint_dir)
    thetas = {}
    for ci, (c, ps) in enumerate(comp_sets.items()):
        stored = saved.load_tensors(f"task_vectors_{ci:03d}")
        if stored is None:
            thetas[c] = _mean_last_resid(m, ps[:n_vectors], layer_list, batch_size)
            saved.save_tensors(f"task_vectors_{ci:03d}", {str(layer): v for layer, v in thetas[c].items()})
        else:
            thetas[c] = {int(layer): v for layer, v in stored.items()}
    rows = []
    for si, (s, (parent, icl, zero)) in enumerate(groups.items()):
        done = saved.load_result(f"subtask_{si:03d}")
        if done is not None:
            rows.extend(done.table.to_dict(orient="records"))
            continue
        first = len(rows)
        theta = thetas[parent]
        icl_c, icl_p, _ = _target_stats(m, icl, target, batch_size)
        mk = lambda th=theta: [_replace_last(f"blocks.{layer}.hook_resid_post", th[layer]) for layer in layer_list]
        z_c, z_p, patched = _target_stats(m, zero, target, batch_size, mk, max_rows)
        acc_icl, acc_0 = float(icl_c.mean()), float(z_c.mean())
        for layer, (pc, pp) in zip(layer_list, patched):
            acc_p = float(pc.mean())
            denom = acc_icl - acc_0
            rows.append({"composite": parent, "subtask": s, "layer": layer,
                         "strength": (acc_p - acc_0) / denom if denom != 0 else float("nan"),
                         "acc_patch": acc_p, "acc_0": acc_0, "acc_icl": acc_icl, "prob_patch": float(pp.mean()),
                         "prob_0": float(z_p.mean()), "prob_icl": float(icl_p.mean()), "n_zero": len(zero),
                         "n_icl": len(icl), "n_vectors": min(n_vectors, len(comp_sets[parent]))})
        saved.save_result(f"subtask_{si:03d}", Result(pd.DataFrame(rows[first:]), {"method": "cross_task/subtask"}))
    table = pd.DataFrame(rows)
    params = {"layers": layer_list, "n_vectors": n_vectors, "subtask": subtask, "target": target,
              "demonstrations": demonstrations}
    return Result(table, make_meta("cross_task_patching", m, comp, params,
                                   subtask_fingerprint=subs.fingerprint()))
