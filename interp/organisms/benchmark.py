"""The planted-site benchmark: how well each method finds a mechanism that a training recipe placed at a known site.

The planted organisms (:mod:`interp.organisms.planted`) state their ground truth in ``card.json``. For each, every
method that should find the site runs on held-out prompts, and the table reports, per method and organism:

* ``precision_at_k`` (k = the size of the planted set) and ``planted_ranks`` (the 1-based rank of each planted
  component in the method's ordering);
* ``layer_error`` for the lens, cross-task patching and context masking (|found layer - planted layer|; for
  cross-task patching, the layer whose composite task vector best restores the zero-shot s1 prompts, with s2's peak
  beside it; for context masking, the last block that saw the demonstrations where y_s1 is then the answer);
* the behaviour when the method's found set is ablated (``effect_found``, with a bootstrap interval over prompts)
  against random sets of the same size (``effect_random``: mean over ``n_random`` seeded draws, with the 5-95 %
  range of the draws), beside ``clean`` (nothing ablated) and ``effect_planted`` (the ground truth ablated);
* for attribution patching, ``spearman_vs_exact`` (its estimate against exact activation patching, over rows:
  heads on the refusal organisms, MLP outputs on the fact organisms).

The natural organisms (``dense``, ``moe``) run through the same methods beside them, with no ground truth (their
precision is empty): what each method finds there and whether ablating it matters more than a random set.

Run: ``interp bench`` (or :func:`run_benchmark`); one seed fixes every prompt sample, random set and bootstrap.
Cost (2 CPU cores): a few minutes; ``quick=True`` uses fewer prompts.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

PLANTED_ORGANISMS = ("planted-refusal", "planted-icot", "planted-moe", "planted-facts")
COLUMNS = ("organism", "planted", "method", "metric", "k", "found", "ground_truth", "precision_at_k",
           "planted_ranks", "layer_error", "spearman_vs_exact", "clean", "effect_found", "effect_found_lo",
           "effect_found_hi", "effect_planted", "effect_random", "effect_random_lo", "effect_random_hi", "n_prompts",
           "note")  # fmt: skip


# --------------------------------------------------------------------------------------------
# small statistics
# --------------------------------------------------------------------------------------------
def bootstrap_ci(values: Any, *, seed: int, n_boot: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``n_boot`` seeded resamples of the prompts."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    sa, sb = pd.Series(np.asarray(a, float)).rank(), pd.Series(np.asarray(b, float)).rank()
    return float(sa.corr(sb))


def precision_and_ranks(order: list, truth: list) -> tuple[float, list[int]]:
    """Precision@k (k = len(truth)) of the ordering ``order`` and the 1-based rank of each true component."""
    k = len(truth)
    top = set(order[:k])
    ranks = [order.index(t) + 1 if t in order else -1 for t in truth]
    return len(top & set(truth)) / k, ranks


def _row(**kw: Any) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(kw)
    return row


def _effects(per_prompt_clean, per_prompt_found, random_means, seed: int, per_prompt_planted=None) -> dict:
    lo, hi = bootstrap_ci(per_prompt_found, seed=seed)
    out = {"clean": float(np.mean(per_prompt_clean)), "effect_found": float(np.mean(per_prompt_found)),
           "effect_found_lo": lo, "effect_found_hi": hi, "n_prompts": len(per_prompt_found)}  # fmt: skip
    if random_means is not None and len(random_means):
        out.update(effect_random=float(np.mean(random_means)), effect_random_lo=float(np.quantile(random_means, 0.05)),
                   effect_random_hi=float(np.quantile(random_means, 0.95)))  # fmt: skip
    if per_prompt_planted is not None:
        out["effect_planted"] = float(np.mean(per_prompt_planted))
    return out


# --------------------------------------------------------------------------------------------
# behaviour under an intervention: next-token top-1 against the target (one forward per batch)
# --------------------------------------------------------------------------------------------
def top1_correct(model: Any, prompts: Any, interventions: Any = (), *, target: str = "target",
                 batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """Per prompt: is the next-token argmax the first token of ``target`` under ``interventions``? One forward per
    batch of prompts."""
    from ..activations.variants import forward
    from ..prompts import batches, encode

    enc = encode(model, prompts, targets=(target,))
    out = np.zeros(len(enc.items), dtype=bool)
    for b in batches(model, enc, batch_size):
        with torch.no_grad():
            logits, _ = forward(model, b, list(interventions), logits="last")
        out[b.indices] = (logits.argmax(-1).cpu() == b.targets[target].cpu()).numpy()
    return out


def _random_sets(pool: list, size: int, n: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    return [rng.sample(pool, size) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# refusal heads: Ships, Sahara, activation / attribution patching on z
# --------------------------------------------------------------------------------------------
def _safety_pairs(model: Any, records: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """Harmful (clean) / harmless (corrupt) held-out requests with the same wrapper, template and token length."""
    from ..prompts import tokenize

    by: dict = {}
    for r in records:
        key = (r["wrapper"], r["template"], len(tokenize(model, r["prompt"]).ids))
        by.setdefault(key, {}).setdefault(r["label"], []).append(r)
    clean, corrupt = [], []
    for key in sorted(by, key=str):
        g = by[key]
        for h, s in zip(g.get("harmful", []), g.get("harmless", [])):
            clean.append(dict(h))
            corrupt.append(dict(s))
    return clean[:n], corrupt[:n]


def score_refusal_heads(model: Any, name: str, truth: list | None, *, seed: int, quick: bool,
                        n_random: int) -> list[dict]:  # fmt: skip
    from ..activations.interventions import ablate_heads
    from ..methods.attribution_patching import attribution_patching
    from ..methods.patching import activation_patching
    from ..methods.safety_heads import sahara, ships
    from ..prompts import PromptSet
    from . import data_path

    info = model.info
    all_heads = [(layer, h) for layer in range(info.n_layers) for h in range(info.n_heads)]
    k = len(truth) if truth else 2
    safety = PromptSet(data_path("organisms", "corpus", "safety.jsonl")).filter(split="heldout")
    rng = random.Random(seed)
    harmful = [r for r in safety.records if r["label"] == "harmful"]
    harmless = [r for r in safety.records if r["label"] == "harmless"]
    n_eval = 24 if quick else 50
    evals = PromptSet(rng.sample(harmful, n_eval) + rng.sample(harmless, n_eval))
    method_prompts = PromptSet(rng.sample(harmful, 12 if quick else 24))

    clean = top1_correct(model, evals)
    randoms = [top1_correct(model, evals, [ablate_heads(model, s, ablation="zero")]).mean()
               for s in _random_sets(all_heads, k, n_random, seed)]  # fmt: skip
    planted = top1_correct(model, evals, [ablate_heads(model, truth, ablation="zero")]) if truth else None
    metric = "decision top-1 (held-out harmful + harmless, heads zero-ablated)"
    rows = []

    def add(method: str, order: list, note: str = "", **extra: Any) -> None:
        found = order[:k]
        eff = top1_correct(model, evals, [ablate_heads(model, found, ablation="zero")])
        p, ranks = precision_and_ranks(order, truth) if truth else (None, None)
        rows.append(_row(organism=name, planted=truth is not None, method=method, metric=metric, k=k,
                         found=str(found), ground_truth=str(truth) if truth else None, precision_at_k=p,
                         planted_ranks=str(ranks) if ranks else None, note=note or None, **extra,
                         **_effects(clean, eff, randoms, seed, planted)))  # fmt: skip

    sc = ships(model, method_prompts).table.groupby(["layer", "head"])["score"].mean().sort_values(ascending=False)
    add("ships", [(int(a), int(b)) for a, b in sc.index])
    group = sahara(model, method_prompts, steps=k)
    chosen = [tuple(int(x) for x in h) for h in group.meta["group"]]
    rest = [h for h in all_heads if h not in chosen]
    add("sahara", chosen + rest, note="group of k; the rest unordered")

    pairs_clean, pairs_corrupt = _safety_pairs(model, safety.records, 8 if quick else 16)
    ex = activation_patching(model, PromptSet(pairs_clean), PromptSet(pairs_corrupt), sites="z", positions="all",
                             progress=False).table  # fmt: skip
    at = attribution_patching(model, PromptSet(pairs_clean), PromptSet(pairs_corrupt), sites="z", positions="all",
                              progress=False).table  # fmt: skip

    def head_order(tab: pd.DataFrame, col: str) -> list:
        s = tab.groupby(["layer", "head", "position"])[col].mean().abs().groupby(["layer", "head"]).max()
        return [(int(a), int(b)) for a, b in s.sort_values(ascending=False).index]

    add("activation_patching (z)", head_order(ex, "effect"), note=f"{len(pairs_clean)} harmful/harmless pairs")
    keys = ["prompt_id", "layer", "head", "position"]
    merged = ex.merge(at, on=keys, suffixes=("", "_attr"))
    add("attribution_patching (z)", head_order(at, "attribution"), note=f"{len(pairs_clean)} pairs",
        spearman_vs_exact=spearman(merged["attribution"], merged["effect"]))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# internal chain of thought: the logit lens's y_s1 peak layer
# --------------------------------------------------------------------------------------------
def project_out(model: Any, layer: int, token_ids: list[int]) -> Any:
    """An intervention removing, at the last position after block ``layer``, the residual's component in the span of
    the final-norm-weighted unembedding rows of ``token_ids`` (the directions the logit lens reads them along)."""
    from ..activations.hooks import Edit, Intervention

    hf = model.hf_model
    w_u = hf.get_output_embeddings().weight.detach().float()
    g = hf.model.norm.weight.detach().float()
    dirs = (w_u[token_ids] * g).T  # [d_model, n]
    q, _ = torch.linalg.qr(dirs)

    def apply(t: torch.Tensor, rows: slice) -> None:
        x = t[rows, -1]
        qq = q.to(x.device, x.dtype)
        t[rows, -1] = x - (x @ qq) @ qq.T

    return Intervention((Edit(f"blocks.{layer}.hook_resid_post", apply),), label=f"project_out@{layer}")


def score_icot_layer(model: Any, name: str, truth: int | None, *, seed: int, quick: bool,
                     n_random: int) -> list[dict]:  # fmt: skip
    from ..methods.lens import logit_lens
    from ..prompts import PromptSet, tokenize
    from . import data_path

    comp = PromptSet(data_path("organisms", "corpus", "composite.jsonl")).filter(split="heldout", kind="composite",
                                                                                 n_shot=5)  # fmt: skip
    rng = random.Random(seed)
    recs = rng.sample(comp.records, 24 if quick else 60)
    prompts = PromptSet(recs)
    tab = logit_lens(model, prompts, target=("y_t", "y_s1")).table
    curve = tab.groupby(["target_field", "layer"])["target_prob"].mean()
    top1 = tab.groupby(["target_field", "layer"])["correct"].mean()
    s1 = curve.loc["y_s1"]
    n_layers = model.info.n_layers
    s1 = s1[s1.index < n_layers - 1]  # the last layer is the model's own output (y_t)
    found = int(s1.idxmax())
    yt = top1.loc["y_t"]
    first_yt = int(yt[yt >= 0.5].index.min()) if (yt >= 0.5).any() else -1
    order_ok = first_yt > found
    # causal check of the found layer: remove the y_s1 vocabulary's read-out directions there, against as many random
    # vocabulary tokens' directions at the same layer
    s1_vocab = sorted({tokenize(model, r["prompt"] + r["y_s1"]).ids[len(tokenize(model, r["prompt"]).ids)]
                       for r in comp.records})  # fmt: skip
    vocab = model.info.vocab_size
    clean = top1_correct(model, prompts)

    def eff(layer: int, ids: list[int]) -> np.ndarray:
        return top1_correct(model, prompts, [project_out(model, layer, ids)])

    pool = [t for t in range(vocab) if t not in set(s1_vocab)]
    randoms = [eff(found, random.Random(seed + i).sample(pool, len(s1_vocab))).mean() for i in range(n_random)]
    planted = eff(truth, s1_vocab) if truth is not None else None
    note = (f"y_s1 mean probability peaks after block {found} (max {float(s1.max()):.3f}); y_t top-1 for half the "
            f"prompts from block {first_yt}; s1 before s2: {order_ok}; effect = y_t top-1 with the "
            f"{len(s1_vocab)} y_s1 tokens' read-out directions removed at the found layer")  # fmt: skip
    return [_row(organism=name, planted=truth is not None, method="logit_lens", k=1,
                 metric="y_t top-1 (held-out 5-shot composites)", found=str(found),
                 ground_truth=str(truth) if truth is not None else None,
                 layer_error=abs(found - truth) if truth is not None else None,
                 precision_at_k=float(found == truth) if truth is not None else None, note=note,
                 **_effects(clean, eff(found, s1_vocab), randoms, seed, planted))]  # fmt: skip


def score_icot_order(model: Any, name: str, truth: int | None, *, seed: int, quick: bool,
                     n_random: int) -> list[dict]:  # fmt: skip
    """Cross-task patching (Yang et al.) on the held-out composites: per subtask, the layer whose composite task
    vector (mean resid_post at the last position of the 5-shot composite prompts) best restores the zero-shot
    subtask prompts' accuracy (``acc_patch``, averaged over the composites); a subtask has no peak ("none") where no
    layer's patch beats its zero-shot accuracy by more than one prompt's worth (1 / the zero-shot prompts per
    composite). Ground truth: s1 by the planted layer, s2 after it, so the s1 peak
    is compared with the planted layer (``layer_error``; ``precision_at_k`` 1 when equal) and the order is
    reported.
    No ablation: the effect columns stay empty (the row's accuracies are in its note)."""
    from ..methods.icot import cross_task_patching
    from ..prompts import PromptSet
    from . import data_path

    held = PromptSet(data_path("organisms", "corpus", "composite.jsonl")).filter(split="heldout").records
    rng = random.Random(seed)
    per = 12 if quick else 24
    by: dict = {}
    for r in held:
        if r["kind"] in ("composite", "s1", "s2"):
            by.setdefault((r["subtask_of"], r["kind"], r["n_shot"] > 0), []).append(r)
    frames = []
    for comp in sorted({k[0] for k in by}):
        pick = {k: rng.sample(v, min(per, len(v))) for k, v in by.items() if k[0] == comp}
        subs = [r for kind in ("s1", "s2") for shot in (True, False) for r in pick.get((comp, kind, shot), [])]
        ct = cross_task_patching(model, pick[(comp, "composite", True)], subs, subtask="kind", n_vectors=per,
                                 progress=False).table  # fmt: skip
        frames.append(ct)
    table = pd.concat(frames, ignore_index=True)
    curve = table.groupby(["subtask", "layer"])["acc_patch"].mean()
    base = table.groupby("subtask")[["acc_0", "acc_icl"]].mean()
    # a subtask's peak exists only where some layer's patch beats its zero-shot accuracy by more than one prompt's
    # worth (cross_task_patching's own rule for a defined strength); below that no layer carries the task
    one_prompt = 1.0 / float(table.groupby("composite")["n_zero"].first().mean())
    peaks = {s: int(curve.loc[s].idxmax()) if curve.loc[s].max() - base.loc[s, "acc_0"] > one_prompt else None
             for s in ("s1", "s2")}  # fmt: skip
    order_ok = None not in peaks.values() and peaks["s1"] < peaks["s2"]
    found = ", ".join(f"{s} {'none' if peaks[s] is None else peaks[s]}" for s in ("s1", "s2"))
    fmt = {s: "[" + ", ".join(f"{v:.2f}" for v in curve.loc[s].tolist()) + "]" for s in ("s1", "s2")}
    note = (f"acc_patch by layer (mean over {len(frames)} composites, {per} zero-shot prompts each): s1 {fmt['s1']}, "
            f"s2 {fmt['s2']}; acc_0 s1 {base.loc['s1', 'acc_0']:.2f} s2 {base.loc['s2', 'acc_0']:.2f}, acc_ICL s1 "
            f"{base.loc['s1', 'acc_icl']:.2f} s2 {base.loc['s2', 'acc_icl']:.2f}; "
            f"s1 before s2: {order_ok}")  # fmt: skip
    return [_row(organism=name, planted=truth is not None, method="cross_task_patching", k=1,
                 metric="peak layer of the zero-shot subtasks' patched accuracy (s1, s2)",
                 found=found, ground_truth=f"s1 by {truth}, s2 after" if truth is not None else None,
                 layer_error=abs(peaks["s1"] - truth) if truth is not None and peaks["s1"] is not None else None,
                 precision_at_k=float(peaks["s1"] == truth) if truth is not None else None,
                 n_prompts=int(table.groupby("composite")["n_zero"].first().sum()), note=note)]  # fmt: skip


def score_icot_masking(model: Any, name: str, truth: int | None, *, seed: int, quick: bool,
                       n_random: int) -> list[dict]:  # fmt: skip
    """Layer-from context masking (Yang et al.) on held-out 5-shot composites: the demonstrations are hidden from
    every query from block l on. Where s1 is resolved by a block and s2 read after it, masking from just after that
    block leaves the intermediate answer: the found layer is the last block that still saw the demonstrations (the
    best from_layer for y_s1's top-1, less one), "none" where y_s1's top-1 under masking never beats the unmasked
    model's by more than one prompt's worth. The note gives y_t's and y_s1's curves and the first from_layer that
    keeps y_t at 0.9 x its unmasked accuracy (the demonstrations are read before it). No ablation row."""
    from ..methods.icot import context_masking
    from ..prompts import PromptSet
    from . import data_path

    comp = PromptSet(data_path("organisms", "corpus", "composite.jsonl")).filter(split="heldout", kind="composite",
                                                                                 n_shot=5)  # fmt: skip
    recs = random.Random(seed).sample(comp.records, 24 if quick else 60)
    tab = context_masking(model, recs, target=("y_t", "y_s1"), progress=False).table
    acc = tab.groupby(["target_field", "from_layer"])["correct"].mean()
    n_layers = model.info.n_layers
    s1, yt = acc.loc["y_s1"], acc.loc["y_t"]
    masked = s1[s1.index < n_layers]  # from_layer n_layers is the unmasked model
    one_prompt = 1.0 / len(recs)
    found = int(masked.idxmax()) - 1 if masked.max() - s1.loc[n_layers] > one_prompt else None
    kept = [int(la) for la in yt.index if la < n_layers and yt.loc[la] >= 0.9 * yt.loc[n_layers]]
    curve = {f: "[" + ", ".join(f"{v:.2f}" for v in acc.loc[f].tolist()) + "]" for f in ("y_t", "y_s1")}
    note = (f"top-1 by from_layer 0-{n_layers} ({n_layers} = unmasked), {len(recs)} prompts: y_t {curve['y_t']}, "
            f"y_s1 {curve['y_s1']}; y_t kept (>= 0.9 x unmasked) from from_layer "
            f"{min(kept) if kept else 'none'}")  # fmt: skip
    found_s = "none" if found is None else str(found)
    return [_row(organism=name, planted=truth is not None, method="context_masking", k=1,
                 metric="last block that saw the demonstrations where y_s1 is the answer under masking",
                 found=found_s, ground_truth=str(truth) if truth is not None else None,
                 layer_error=abs(found - truth) if truth is not None and found is not None else None,
                 precision_at_k=float(found == truth) if truth is not None else None, n_prompts=len(recs),
                 note=note)]  # fmt: skip


# --------------------------------------------------------------------------------------------
# routed experts per domain: expert attribution, routing statistics, blocking
# --------------------------------------------------------------------------------------------
def score_routed_experts(model: Any, name: str, truth: dict | None, *, seed: int, quick: bool,
                         n_random: int) -> list[dict]:  # fmt: skip
    from ..methods.moe import expert_attribution
    from ..methods.moe_blocking import block_experts
    from ..methods.moe_routing import routing_stats
    from ..prompts import PromptSet
    from . import data_path

    info = model.info
    n_layers = info.n_layers
    fact = PromptSet(data_path("organisms", "corpus", "factual.jsonl")).filter(split="heldout")
    rng = random.Random(seed)
    rows = []
    for domain in ("country", "object", "person"):
        recs = rng.sample([r for r in fact.records if r["domain"] == domain], 12 if quick else 30)
        prompts = PromptSet([{**r, "task": domain} for r in recs])
        gt = [(layer, e) for layer in range(n_layers) for e in truth[domain]] if truth else None
        k = len(gt) if gt else 2 * n_layers
        orders = {}
        att = expert_attribution(model, prompts, levels=["expert"]).table
        att = att[att["level"] == "expert"]
        s = att.groupby(["layer", "expert"])["score"].mean()
        orders["expert_attribution"] = s
        rs = routing_stats(model, prompts, by="task").table
        orders["routing_stats"] = rs.groupby(["layer", "expert"])["load"].mean()
        for method, s in orders.items():
            # the planted site is per layer: the top (k / layers) experts of each layer, ranked within the layer
            per_layer = k // n_layers
            found = [(int(layer), int(e)) for layer in range(n_layers)
                     for e in s.loc[layer].sort_values(ascending=False).index[:per_layer]]  # fmt: skip
            if gt:
                p = len(set(found) & set(gt)) / len(gt)
                ranks = [int((s.loc[layer] > s.loc[(layer, e)]).sum()) + 1 for layer, e in gt]
            else:
                p, ranks = None, None
            conditions = {"found": found}
            if gt:
                conditions["planted"] = gt
            blk = block_experts(model, prompts, found, controls=n_random, seed=seed).table
            clean = blk[blk["condition"] == "clean"].sort_values("prompt_id")["target_rr"].to_numpy()
            fnd = blk[blk["condition"] == "blocked"].sort_values("prompt_id")["target_rr"].to_numpy()
            ctrl = blk[blk["condition"] == "control"].groupby("control")["target_rr"].mean().to_numpy()
            planted = None
            if gt:
                pb = block_experts(model, prompts, gt, controls=0, seed=seed).table
                planted = pb[pb["condition"] == "blocked"]["target_rr"].to_numpy()
            rows.append(_row(organism=name, planted=truth is not None, method=f"{method} [{domain}]", k=k,
                             metric=f"MRR of the answer ({domain} facts, experts blocked)",
                             found=str(found), ground_truth=str(gt) if gt else None, precision_at_k=p,
                             planted_ranks=str(ranks) if ranks else None,
                             note="ranks within each layer; random sets: block_experts' controls "
                                  "(same size, same layers)",
                             **_effects(clean, fnd, ctrl, seed, planted)))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# fact storage at an MLP: causal tracing of the MLP outputs (ROME), zeroing the found MLP
# --------------------------------------------------------------------------------------------
def _role_columns(batch: Any, items: list, spans: list, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) index pairs, in the batch's padded coordinates, of every token of ``role`` (ROME's token
    roles, :func:`interp.methods.tracing.token_role`) in each row."""
    from ..methods.tracing import token_role

    rows, cols = [], []
    for i, (item, (s, e)) in enumerate(zip(items, spans)):
        off = int(batch.offsets[i])
        n = len(item)
        for t in range(n):
            if token_role(t, n, (s - off, e - off), item.bos) == role:
                rows.append(i)
                cols.append(t + off)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def top1_mlp_zeroed(model: Any, prompts: Any, layer: int | None, role: str, *, target: str = "target",
                    batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """Per prompt: is the next-token argmax the first token of ``target`` with block ``layer``'s MLP output set to
    zero at the tokens of ``role`` (None: nothing zeroed)? One forward per batch."""
    from ..activations.hooks import Intervention
    from ..activations.interventions import set_edit
    from ..activations.sites import hook_name
    from ..activations.variants import forward
    from ..prompts import batches, encode

    enc = encode(model, prompts, targets=(target,), spans=("subject",))
    out = np.zeros(len(enc.items), dtype=bool)
    for b in batches(model, enc, batch_size):
        ivs = []
        if layer is not None:
            rc = _role_columns(b, [enc.items[i] for i in b.indices], b.spans["subject"], role)
            ivs = [Intervention((set_edit(hook_name("mlp_out", layer), 0.0, rc),), f"zero mlp {layer} @ {role}")]
        with torch.no_grad():
            logits, _ = forward(model, b, ivs, logits="last")
        out[b.indices] = (logits.argmax(-1).cpu() == b.targets[target].cpu()).numpy()
    return out


def _held_out_facts(seed: int) -> tuple[list[dict], list[dict]]:
    """The held-out factual records: in the corpus's order, and in the benchmark's seeded order (the fact scorers
    take their prompts from the front of it)."""
    from ..prompts import PromptSet
    from . import data_path

    fact = PromptSet(data_path("organisms", "corpus", "factual.jsonl")).filter(split="heldout")
    return fact.records, random.Random(seed).sample(fact.records, len(fact.records))


def _mlp_zeroing_effects(model: Any, evals: Any, found: tuple[int, str], planted_site: tuple[int, str] | None,
                         clean: np.ndarray, *, n_random: int, seed: int) -> dict:  # fmt: skip
    """The effect columns of a fact scorer's row: top-1 with the found block's MLP zeroed at the found role's tokens,
    against the same role in random other blocks, and the planted site zeroed."""
    others = [la for la in range(model.info.n_layers) if la != found[0]]
    randoms = [top1_mlp_zeroed(model, evals, s_[0], found[1]).mean() for s_ in _random_sets(others, 1, n_random, seed)]
    planted = top1_mlp_zeroed(model, evals, *planted_site) if planted_site else None
    return _effects(clean, top1_mlp_zeroed(model, evals, *found), randoms, seed, planted)


def _fact_pairs(model: Any, records: list[dict], n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out fact pairs (clean, corrupt) of the same relation and template and the same token length, with
    different subjects and different first answer tokens (so the logit difference is defined)."""
    from ..prompts import tokenize

    by: dict = {}
    for r in records:
        by.setdefault((r["relation_name"], r["template"], len(tokenize(model, r["prompt"]).ids)), []).append(r)
    rng = random.Random(seed)
    pairs = []
    for key in sorted(by, key=str):
        group = by[key]
        rng.shuffle(group)
        for a, b in zip(group[::2], group[1::2]):
            ta = tokenize(model, a["prompt"] + a["target"]).ids[len(tokenize(model, a["prompt"]).ids)]
            tb = tokenize(model, b["prompt"] + b["target"]).ids[len(tokenize(model, b["prompt"]).ids)]
            if a["subject"] != b["subject"] and ta != tb:
                pairs.append((a, b))
    rng.shuffle(pairs)
    pairs = pairs[:n]
    return [dict(a) for a, _ in pairs], [dict(b) for _, b in pairs]


def _site_roles(model: Any, prompts: list[dict]) -> dict[str, list[str]]:
    """Per prompt id: the ROME token role of each position (BOS included where the model prepends one)."""
    from ..methods.tracing import token_role
    from ..prompts import PromptSet, encode

    enc = encode(model, PromptSet(prompts), spans=("subject",))
    return {r["id"]: [token_role(t, len(item), span, item.bos) for t in range(len(item))]
            for r, item, span in zip(prompts, enc.items, enc.spans["subject"])}  # fmt: skip


def score_fact_patching(model: Any, name: str, truth: dict | None, *, seed: int, quick: bool,
                        n_random: int) -> list[dict]:  # fmt: skip
    """Exact activation patching and attribution patching of every block's MLP output at every position, on
    held-out fact pairs (same relation, template and token length; clean patched into corrupt, logit difference of
    the clean answer against the corrupt one). A (layer, token role) scores the mean over pairs and positions of
    that role of |effect|; the found site is the best one, against the planted (layer, "last subject"), and is
    zeroed as in :func:`score_fact_mlp`. Attribution patching is also scored against exact patching (Spearman over
    pair x layer x position rows)."""
    from ..methods.attribution_patching import attribution_patching
    from ..methods.patching import activation_patching
    from ..prompts import PromptSet

    records, recs = _held_out_facts(seed)
    evals = PromptSet(recs[: 100 if quick else 300])
    clean_p, corrupt_p = _fact_pairs(model, records, 8 if quick else 24, seed)
    roles = _site_roles(model, clean_p)
    kw = {"sites": "mlp_out", "positions": "all", "progress": False}
    ex = activation_patching(model, PromptSet(clean_p), PromptSet(corrupt_p), **kw).table
    at = attribution_patching(model, PromptSet(clean_p), PromptSet(corrupt_p), **kw).table
    gt = (int(truth["layers"][0]), "last subject") if truth else None
    clean = top1_correct(model, evals)
    metric = "factual top-1 (held-out, an MLP output zeroed)"
    rows = []
    for method, tab, col in (("activation_patching (mlp_out)", ex, "effect"),
                             ("attribution_patching (mlp_out)", at, "attribution")):  # fmt: skip
        tab = tab.assign(role=[roles[p][int(q)] for p, q in zip(tab["prompt_id"], tab["position"])],
                         magnitude=tab[col].abs())  # fmt: skip
        score = tab.groupby(["layer", "role"])["magnitude"].mean().sort_values(ascending=False, kind="stable")
        order = [(int(la), str(ro)) for la, ro in score.index]
        found = order[0]
        p, ranks = precision_and_ranks(order, [gt]) if gt else (None, None)
        extra = {}
        if col == "attribution":
            keys = ["prompt_id", "layer", "position"]
            merged = ex.merge(at, on=keys, suffixes=("", "_attr"))
            extra["spearman_vs_exact"] = spearman(merged["attribution"], merged["effect"])
        note = (f"{len(clean_p)} same-relation, same-length fact pairs; (layer, role) scored by mean |{col}|, best "
                f"{float(score.iloc[0]):.3f} at {found}; effect = top-1 with that MLP zeroed at the role's tokens; "
                f"random sets: the same role in a random other block")  # fmt: skip
        rows.append(_row(organism=name, planted=truth is not None, method=method, metric=metric, k=1,
                         found=str(found), ground_truth=str(gt) if gt else None, precision_at_k=p,
                         planted_ranks=str(ranks) if ranks else None,
                         layer_error=abs(found[0] - gt[0]) if gt else None, note=note, **extra,
                         **_mlp_zeroing_effects(model, evals, found, gt, clean, n_random=n_random, seed=seed)))
    return rows


def score_fact_mlp(model: Any, name: str, truth: dict | None, *, seed: int, quick: bool,
                   n_random: int) -> list[dict]:  # fmt: skip
    """Causal tracing (``causal_trace``, sites ``mlp_out``, window 1: each block's MLP output restored alone at one
    token, in runs with noise on the subject's embeddings) on held-out facts; the found site is the (layer, token
    role) of the largest mean indirect effect (:func:`interp.methods.tracing.trace_summary`), against the planted
    (layer, "last subject"). Effect: held-out top-1 with the found MLP zeroed at the found role's tokens, against
    the same role in random other blocks (and the planted site zeroed)."""
    from ..methods.tracing import causal_trace, trace_summary
    from ..prompts import PromptSet

    _, recs = _held_out_facts(seed)
    trace_prompts = PromptSet(recs[: 12 if quick else 30])
    evals = PromptSet(recs[: 100 if quick else 300])
    samples = 5 if quick else 10
    res = causal_trace(model, trace_prompts, sites=("mlp_out",), window=1, samples=samples, seed=seed)
    summ = trace_summary(res)
    summ = summ[(summ["site"] == "mlp_out") & (summ["severed"] == "")]
    summ = summ.sort_values("indirect_effect", ascending=False, kind="stable")
    order = [(int(la), str(ro)) for la, ro in zip(summ["layer"], summ["role"])]
    found = order[0]
    gt = [(int(truth["layers"][0]), "last subject")] if truth else None
    p, ranks = precision_and_ranks(order, gt) if gt else (None, None)
    clean = top1_correct(model, evals)
    kept = res.meta["n_kept"]
    ie = float(summ["indirect_effect"].iloc[0])
    note = (f"{kept} of {len(trace_prompts)} facts traced (clean top-1 right), {samples} noised copies each; peak "
            f"mean indirect effect {ie:.3f} at (layer, role) {found}; effect = top-1 with the MLP zeroed at the "
            f"role's tokens; random sets: the same role in a random other block")  # fmt: skip
    return [_row(organism=name, planted=truth is not None, method="causal_trace (mlp_out, window 1)", k=1,
                 metric="factual top-1 (held-out, an MLP output zeroed)", found=str(found),
                 ground_truth=str(gt[0]) if gt else None, precision_at_k=p,
                 planted_ranks=str(ranks) if ranks else None,
                 layer_error=abs(found[0] - gt[0][0]) if gt else None, note=note,
                 **_mlp_zeroing_effects(model, evals, found, gt[0] if gt else None, clean, n_random=n_random,
                                        seed=seed))]  # fmt: skip


# --------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------
def _load(name: str, data_dir: Path) -> tuple[Any, dict]:
    from ..model.loading import load_model

    path = data_dir / "organisms" / name
    card = json.loads((path / "card.json").read_text())
    return load_model(path, device="cpu"), card


def shipped_planted(data_dir: str | Path | None = None) -> tuple[str, ...]:
    """The planted organisms shipped under ``data_dir`` (default: the repository's data/), in benchmark order."""
    from . import REPO_ROOT

    data = Path(data_dir) if data_dir else REPO_ROOT / "data"
    return tuple(n for n in PLANTED_ORGANISMS if (data / "organisms" / n / "card.json").exists())


def run_benchmark(*, organisms: tuple[str, ...] | None = None, natural: bool = True, seed: int = 0,
                  quick: bool = False, n_random: int = 20,
                  data_dir: str | Path | None = None) -> pd.DataFrame:  # fmt: skip
    """Score every method that should find each organism's planted site (see the module docstring); with
    ``natural``, the same methods on the natural organisms (``dense`` for heads and lens, ``moe`` for experts).
    ``organisms``: default every shipped planted organism. Returns the table (one row per organism x method).
    Deterministic given ``seed``."""
    from . import REPO_ROOT

    data = Path(data_dir) if data_dir else REPO_ROOT / "data"
    organisms = shipped_planted(data) if organisms is None else tuple(organisms)
    missing = [n for n in organisms if not (data / "organisms" / n / "card.json").exists()]
    if missing:
        from ..errors import ParameterError

        raise ParameterError(f"organisms={missing}: not shipped under {data / 'organisms'} (train them with "
                             f"`interp organisms train NAME`); shipped: {list(shipped_planted(data))}")  # fmt: skip
    torch.manual_seed(seed)
    rows: list[dict] = []
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in organisms:
            model, card = _load(name, data)
            gt = card["ground_truth"]
            kw = {"seed": seed, "quick": quick, "n_random": n_random}
            if gt["kind"] == "refusal_heads":
                rows += score_refusal_heads(model, name, [tuple(h) for h in gt["heads"]], **kw)
            elif gt["kind"] == "icot_layer":
                rows += score_icot_layer(model, name, gt["layer"], **kw)
                rows += score_icot_order(model, name, gt["layer"], **kw)
                rows += score_icot_masking(model, name, gt["layer"], **kw)
            elif gt["kind"] == "routed_experts":
                rows += score_routed_experts(model, name, {d: list(e) for d, e in gt["domain_experts"].items()},
                                             **kw)  # fmt: skip
            elif gt["kind"] == "fact_mlp":
                rows += score_fact_mlp(model, name, gt, **kw)
                rows += score_fact_patching(model, name, gt, **kw)
        if natural:
            kinds = {json.loads((data / "organisms" / n / "card.json").read_text())["ground_truth"]["kind"]
                     for n in organisms}  # fmt: skip
            kw = {"seed": seed, "quick": quick, "n_random": n_random}
            if kinds & {"refusal_heads", "icot_layer", "fact_mlp"}:
                dense, _ = _load("dense", data)
                if "refusal_heads" in kinds:
                    rows += score_refusal_heads(dense, "dense", None, **kw)
                if "icot_layer" in kinds:
                    rows += score_icot_layer(dense, "dense", None, **kw)
                    rows += score_icot_order(dense, "dense", None, **kw)
                    rows += score_icot_masking(dense, "dense", None, **kw)
                if "fact_mlp" in kinds:
                    rows += score_fact_mlp(dense, "dense", None, **kw)
                    rows += score_fact_patching(dense, "dense", None, **kw)
            if "routed_experts" in kinds:
                moe, _ = _load("moe", data)
                rows += score_routed_experts(moe, "moe", None, **kw)
    finally:
        torch.set_num_threads(previous)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def to_markdown(table: pd.DataFrame) -> str:
    """The table as the README shows it: one line per organism x method."""
    head = ("| organism | method | k | found | precision@k | planted ranks | layer error | attribution vs exact "
            "(Spearman) | clean | found set ablated [95 % CI] | planted set ablated | random sets (mean [5-95 %]) "
            "| metric | note |")  # fmt: skip
    lines = [head, "|" + "---|" * 14]
    for r in table.to_dict("records"):
        found_eff = (f"{_fmt(r['effect_found'])} [{_fmt(r['effect_found_lo'])}, {_fmt(r['effect_found_hi'])}]"
                     if r["effect_found"] is not None else "")  # fmt: skip
        rand = (f"{_fmt(r['effect_random'])} [{_fmt(r['effect_random_lo'])}, {_fmt(r['effect_random_hi'])}]"
                if r["effect_random"] is not None and not pd.isna(r["effect_random"]) else "")  # fmt: skip
        found = r["found"] if len(str(r["found"])) <= 40 else str(r["found"])[:37] + "..."
        lines.append(f"| {r['organism']} | {r['method']} | {_fmt(r['k'])} | {found} | {_fmt(r['precision_at_k'])} | "
                     f"{_fmt(r['planted_ranks'])} | {_fmt(r['layer_error'])} | {_fmt(r['spearman_vs_exact'], 3)} | "
                     f"{_fmt(r['clean'])} | {found_eff} | {_fmt(r['effect_planted'])} | {rand} | {r['metric']} | "
                     f"{_fmt(r['note'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


README_BEGIN, README_END = "<!-- planted-benchmark:begin -->", "<!-- planted-benchmark:end -->"
README_HEAD = ("| organism | method | k | found | precision@k | planted ranks | layer error | attribution vs exact "
               "(Spearman) | clean | found set ablated [95 % CI] | planted set ablated | random sets (mean [5-95 %]) |")


def _cell(x: Any, digits: int = 2) -> str:
    """A cell of the README table from a value read back from benchmark.csv (empty cells are NaN there)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return str(int(x)) if digits == 0 else f"{float(x):.{digits}f}"
    return str(x)


def readme_table(table: pd.DataFrame) -> str:
    """The benchmark as the README quotes it (its first twelve columns of :func:`to_markdown`, without the metric
    and the note), from the table as :func:`read_benchmark` reads benchmark.csv back, so that the README's copy
    can be checked against the committed CSV."""
    lines = [README_HEAD, "|" + "---|" * 12]
    for r in table.to_dict("records"):
        def interval(mid: str, lo: str, hi: str, r=r) -> str:
            if _cell(r[mid]) == "":
                return ""
            return f"{_cell(r[mid])} [{_cell(r[lo])}, {_cell(r[hi])}]"

        found = str(r["found"]) if len(str(r["found"])) <= 40 else str(r["found"])[:37] + "..."
        lines.append(f"| {r['organism']} | {r['method']} | {_cell(r['k'], 0)} | {found} | "
                     f"{_cell(r['precision_at_k'])} | {_cell(r['planted_ranks'])} | {_cell(r['layer_error'], 0)} | "
                     f"{_cell(r['spearman_vs_exact'], 3)} | {_cell(r['clean'])} | "
                     f"{interval('effect_found', 'effect_found_lo', 'effect_found_hi')} | "
                     f"{_cell(r['effect_planted'])} | "
                     f"{interval('effect_random', 'effect_random_lo', 'effect_random_hi')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def read_benchmark(path: str | Path) -> pd.DataFrame:
    """benchmark.csv (written by :func:`write_benchmark`) read back, its columns checked."""
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if list(table.columns) != list(COLUMNS):
        from ..results.result import ResultFileError

        raise ResultFileError(f"{path}: columns {list(table.columns)}, not the benchmark's {list(COLUMNS)}; rewrite it "
                        f"with `interp bench --out DIR`")  # fmt: skip
    return table


def replace_readme_block(text: str, block: str) -> str:
    """``text`` (the README) with the part between :data:`README_BEGIN` and :data:`README_END` replaced by
    ``block``; a clear error when the markers are missing or out of order."""
    from ..results.result import ResultFileError

    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ResultFileError(f"the README has no '{README_BEGIN}' ... '{README_END}' block for the benchmark table")
    return text[:begin + len(README_BEGIN)] + "\n" + block + text[end:]


def readme_block(text: str) -> str:
    """The README's current benchmark block (between the markers)."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        from ..results.result import ResultFileError

        raise ResultFileError(f"the README has no '{README_BEGIN}' ... '{README_END}' block for the benchmark table")
    return text[begin + len(README_BEGIN) + 1:end]


def write_benchmark(table: pd.DataFrame, out_dir: str | Path, meta: dict) -> dict[str, Path]:
    """Write ``benchmark.csv``, ``benchmark.md`` and ``benchmark.meta.json`` atomically into ``out_dir``."""
    from ..results.atomic import write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "benchmark.csv", "md": out / "benchmark.md", "meta": out / "benchmark.meta.json"}
    write_text(paths["csv"], table.to_csv(index=False))
    write_text(paths["md"], to_markdown(table))
    write_text(paths["meta"], json.dumps(meta, indent=1, default=str) + "\n")
    return paths
