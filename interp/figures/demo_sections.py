"""The demo report's sections, one per method family (see :mod:`interp.figures.demo`). Each runs every method of
its family on the shipped organisms with a configuration sized for 2 CPU cores (smaller still with
``ctx.quick``), and gives each figure a caption whose numbers are computed from the results (f-strings of the
tables, never typed) and, where the method mirrors a paper's figure, that figure described in words.

The figures of a section follow one another, top to bottom: the texts say "first", "then", "below", never
"left" or "right".
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from .demo_benchmark import benchmark_section
from .report import DemoContext, DemoFigure, DemoSection


def head_name(layer: int, head: int) -> str:
    """A head as the report writes it: L{layer}.H{head}."""
    return f"L{int(layer)}.H{int(head)}"


def heads_text(heads: Any) -> str:
    return ", ".join(head_name(a, b) for a, b in heads)


def _fmt(x: float, digits: int = 3) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


# --- safety heads -------------------------------------------------------------------------------------------
SHIPS_PAPER = ("Zhou et al. 2025 (arXiv 2410.13708) draw Ships the same way: a layer x head heatmap of the "
               "score on a harmful-query set, where a few heads stand out from the rest.")
SAHARA_PAPER = ("Zhou et al. 2025 build the safety head group greedily with Sahara, one head per step, and show the "
                "group's generalised Ships growing with its size.")
ASR_PAPER = ("Zhou et al. 2025 report the attack success rate of harmful queries with the safety heads ablated, "
             "against the unablated model; the random head sets of the same size are our control.")


def safety_heads_section(ctx: DemoContext) -> DemoSection:
    from ..methods.safety_heads import asr_summary, attack_success_rate, generalized_ships, sahara, ships

    n = 8 if ctx.quick else 24
    harmful = ctx.prompts("safety", n=n, label="harmful")
    scores = ships(ctx.dense, harmful)
    per_head = scores.table.groupby(["layer", "head"])["score"].mean()
    top = tuple(int(x) for x in per_head.idxmax())
    steps = 2 if ctx.quick else 3
    group = sahara(ctx.dense, harmful, steps=steps)
    chosen = [tuple(int(x) for x in h) for h in group.meta["group"]]
    gships = generalized_ships(ctx.dense, harmful, chosen)
    info = ctx.dense.info
    rng = random.Random(0)
    all_heads = [(layer, h) for layer in range(info.n_layers) for h in range(info.n_heads)]
    ships_name, sahara_name = f"Ships' top head {head_name(*top)}", f"Sahara's {len(chosen)} heads"
    random_name = f"random {len(chosen)} heads"
    variants: dict[str, Any] = {"clean": None, ships_name: [top], sahara_name: chosen}
    draws = 2 if ctx.quick else 10
    for i in range(draws):
        variants[f"{random_name} #{i}"] = rng.sample(all_heads, len(chosen))
    asr = attack_success_rate(ctx.dense, harmful, variants=variants, max_new_tokens=12 if ctx.quick else 20)
    summary = asr_summary(asr).set_index("variant_group")
    chosen_rows = group.table[group.table["chosen"]]
    angle = float(gships.table["score"].iloc[0])
    rand = summary.loc[random_name]
    return DemoSection(
        "Safety heads: Ships, Sahara, generalised Ships, attack success",
        "Which attention heads carry the dense organism's refusal of harmful requests. First each head's Ships "
        "score, then Sahara's greedy head group and how far its ablation turns the final states (generalised "
        "Ships), and last the attack success rate in generation with those heads ablated.",
        [
            DemoFigure(scores.figure(),
                       f"Ablating one head (uniform attention) moves the refusal's next-token distribution by the KL "
                       f"shown, averaged over {len(harmful)} harmful requests. The largest is {head_name(*top)} with "
                       f"{per_head.max():.3g} nats; the median head moves it by {per_head.median():.2g} nats.",
                       SHIPS_PAPER),
            DemoFigure(group.figure(),
                       f"Sahara's {len(chosen_rows)} steps chose {heads_text(chosen)}; the group's generalised Ships "
                       f"after the last step is {chosen_rows['score'].iloc[-1]:.3g} degrees (grey: every candidate "
                       "of each step).",
                       SAHARA_PAPER),
            DemoFigure(gships.figure(),
                       f"Ablating Sahara's group ({heads_text(chosen)}) turns the first singular vector of the "
                       f"{len(harmful)} requests' final states by {angle:.3g} degrees.",
                       ""),
            DemoFigure(asr.figure(),
                       f"Share of the {len(harmful)} harmful requests answered instead of refused: "
                       f"{summary.loc['clean', 'asr']:.2f} clean, {summary.loc[ships_name, 'asr']:.2f} with "
                       f"{head_name(*top)} ablated, {summary.loc[sahara_name, 'asr']:.2f} with Sahara's heads, and "
                       f"{rand['asr']:.2f} (std {rand['asr_std']:.2f}) over {int(rand['n_variants'])} random sets "
                       f"of {len(chosen)} heads.",
                       ASR_PAPER),
        ],
        {"ships": scores, "sahara": group, "generalized_ships": gships, "attack_success": asr},
    )


# --- lens ---------------------------------------------------------------------------------------------------
HEATMAP_PAPER = ("nostalgebraist 2020's logit-lens picture: every layer's top decoded token at every position of "
                 "one text, layers up, tokens along x.")
CURVES_PAPER = ("Yang et al. 2025 (arXiv 2505.14530) read composite tasks this way: the intermediate answer "
                "y_s1 rises in the middle layers before the final answer y_t takes over. Belrose et al. 2023 (arXiv "
                "2303.08112) compare the tuned and the logit lens layer by layer, the tuned lens closer to the final "
                "distribution (lower KL).")


def _tuned_lens_texts(ctx: DemoContext, n: int) -> list[str]:
    train = [r for fam in ("composite", "factual") for r in ctx.prompts(fam, split="train").records
             if r.get("target")]
    return [r["prompt"] + r["target"] for r in random.Random(1).sample(train, min(n, len(train)))]


def lens_section(ctx: DemoContext) -> DemoSection:
    from ..methods.lens import lens_curves, lens_summary, lens_takeover, logit_lens, train_tuned_lens

    comp = ctx.prompts("composite", n=8 if ctx.quick else 40, kind="composite", n_shot=5)
    targets = ("y_t", "y_s1", "y_s2")
    one = logit_lens(ctx.dense, comp[:1], positions="all", target=targets)
    logit = logit_lens(ctx.dense, comp, target=targets)
    steps = 30 if ctx.quick else 100
    texts = _tuned_lens_texts(ctx, 80 if ctx.quick else 300)
    lens = train_tuned_lens(ctx.dense, texts, steps=steps, tokens_per_step=256, progress=False)
    tuned = logit_lens(ctx.dense, comp, target=targets, lens=lens)
    summary = lens_summary(logit)
    take = lens_takeover(summary).iloc[0]
    kl = {name: float(r.table[r.table["target_field"] == "y_t"]["kl"].mean()) for name, r in
          (("logit", logit), ("tuned", tuned))}
    last = one.table[one.table["is_last"] & (one.table["target_field"] == "y_t")]
    hits = last[last["correct"]]["layer"]
    first_hit = f"from layer {int(hits.min())}" if len(hits) else "at no layer"
    takeover = (f"y_t stays above it from layer {int(take['takeover_layer'])} on"
                if int(take["takeover_layer"]) >= 0 else "y_t never stays above it to the last layer")
    return DemoSection(
        "Logit and tuned lens: at which layer does the answer appear?",
        "Each layer's residual stream decoded into next-token probabilities: first the top token per layer and "
        "position of one composite prompt, then per-layer curves over held-out composite prompts for the logit "
        "lens (solid) and a tuned lens trained here (dashed).",
        [
            DemoFigure(one.figure(),
                       f"Prompt {comp[0]['id']!r}: its final answer {comp[0]['y_t']!r} is the top token at the last "
                       f"position {first_hit}.",
                       HEATMAP_PAPER),
            DemoFigure(lens_curves(logit, tuned),
                       f"Over {len(comp)} prompts (logit lens), y_s1's probability peaks at layer "
                       f"{int(take['early_peak_layer'])} ({take['early_peak']:.2f}) and {takeover}. The tuned lens "
                       f"({steps} steps on {len(texts)} training texts) is at a mean KL of {kl['tuned']:.2f} nats "
                       f"from the final distribution over the layers, the logit lens at {kl['logit']:.2f}.",
                       CURVES_PAPER),
        ],
        {"logit_lens": logit, "logit_lens_one_prompt": one, "tuned_lens": tuned, "logit_lens_summary": summary},
    )


# --- patching -----------------------------------------------------------------------------------------------
PATCHING_PAPER = ("Meng et al. 2022 and Heimersheim & Nanda 2024 draw patching as layer x position heatmaps: the "
                  "answer's information sits on the subject tokens in early layers and moves to the last token.")
ATTRIBUTION_PAPER = ("Nanda 2023 and Kramar et al. 2024 (AtP*) set the gradient estimate beside the exact patching "
                     "map to show where the linear estimate holds.")
MASKING_PAPER = ("Yang et al. 2025 (arXiv 2505.14530) plot top-1 accuracy of the final and intermediate answers "
                 "against the first layer from which the demonstrations are masked: where the curves recover marks "
                 "the layers that read the demonstrations.")
CROSS_PAPER = ("Yang et al. 2025 patch the composite task's mean last-token residual into zero-shot subtask "
               "prompts layer by layer and plot the patched accuracy per layer.")


def _fact_pairs(ctx: DemoContext, n: int) -> tuple[list, list]:
    """Clean / corrupt facts of one template and one token length, with different targets."""
    from ..prompts import tokenize

    groups: dict = {}
    for r in ctx.prompts("factual"):
        key = (r["prompt"].replace(r["subject"], "{}"), len(tokenize(ctx.dense, r["prompt"]).ids))
        groups.setdefault(key, []).append(r)
    clean, corrupt = [], []
    for rs in sorted(groups.values(), key=len, reverse=True):
        for c, k in zip(rs[0::2], rs[1::2]):
            if c["target"] != k["target"]:
                clean.append(c)
                corrupt.append(k)
    return clean[:n], corrupt[:n]


def _masking_caption(masking: Any, n_layers: int) -> str:
    t = masking.table
    acc = t.groupby(["target_field", "from_layer"])["correct"].mean()
    yt = acc.loc["y_t"]
    n = t["prompt_id"].nunique()
    ok = {int(layer): a >= yt.loc[n_layers] - 1 / n for layer, a in yt.items()}
    start = n_layers
    while start - 1 in ok and ok[start - 1]:  # the first layer from which masking never costs more
        start -= 1
    since = f"from layer {start} on" if start < n_layers else "only unmasked"
    return (f"y_t's accuracy over {n} prompts: {yt.loc[n_layers]:.2f} unmasked, {yt.loc[0]:.2f} with the "
            f"demonstrations masked in every layer; masking costs at most one prompt {since}.")


def _cross_caption(cross: Any) -> str:
    t = cross.table
    parts = []
    for sub, g in t.groupby("subtask", sort=False):
        best = g.loc[g["acc_patch"].idxmax()]
        parts.append(f"{sub}: {best['acc_patch']:.2f} at layer {int(best['layer'])} (zero-shot {best['acc_0']:.2f}, "
                     f"few-shot {best['acc_icl']:.2f})")
    undefined = t["strength"].isna().all()
    return ("Best patched accuracy per subtask, " + "; ".join(parts) + "."
            + (" The strength ratio is undefined here (the few-shot gain is at most one prompt: strength_note)."
               if undefined else ""))


def patching_section(ctx: DemoContext) -> DemoSection:
    from ..methods.attribution_patching import attribution_patching
    from ..methods.icot import context_masking, cross_task_patching
    from ..methods.patching import activation_patching

    clean, corrupt = _fact_pairs(ctx, 3 if ctx.quick else 8)
    exact = activation_patching(ctx.dense, clean, corrupt, sites=("resid_pre",), metric="norm_logit_diff")
    approx = attribution_patching(ctx.dense, clean, corrupt, sites=("resid_pre",), metric="norm_logit_diff")
    cell = exact.table.groupby(["layer", "position"])["score"].mean()
    best = cell.idxmax()
    est = approx.table.groupby(["layer", "position"])["estimate"].mean().reindex(cell.index)
    r = float(np.corrcoef(cell.values, est.values)[0, 1]) if cell.std() > 0 and est.std() > 0 else float("nan")
    composite = ctx.prompts("composite", kind="composite", n_shot=5)
    task = composite[0]["subtask_of"]
    masking = context_masking(ctx.dense, composite.filter(subtask_of=task)[:8 if ctx.quick else 32], progress=False)
    n_sub = 8 if ctx.quick else 24
    subs = [rec for kind in ("s1", "s2") for shot in (True, False)
            for rec in [x for x in ctx.prompts("composite", subtask_of=task, kind=kind).records
                        if (x["n_shot"] > 0) == shot][:n_sub]]
    cross = cross_task_patching(ctx.dense, composite.filter(subtask_of=task)[:8 if ctx.quick else 32], subs,
                                subtask="kind", n_vectors=8 if ctx.quick else 32, progress=False)
    n_layers = ctx.dense.info.n_layers
    return DemoSection(
        "Patching: where does the answer live, and when are the demonstrations read?",
        "First activation patching of clean residuals into corrupted facts, then attribution patching's "
        "one-backward estimate of the same map, then context masking (attention to the demonstrations forbidden "
        "from a layer on) and cross-task patching (the composite task vector written into zero-shot prompts).",
        [
            DemoFigure(exact.figure(site="resid_pre", value="score"),
                       f"Normalised logit difference after patching (1 = the clean run) over {len(clean)} pairs: the "
                       f"largest, {cell.max():.2f}, at layer {best[0]}, position {best[1]}.",
                       PATCHING_PAPER),
            DemoFigure(approx.figure(site="resid_pre", value="estimate"),
                       f"Attribution patching's estimate of the same cells; across the {len(cell)} cells it "
                       f"correlates with the exact map at r = {_fmt(r, 2)}.",
                       ATTRIBUTION_PAPER),
            DemoFigure(masking.figure(), _masking_caption(masking, n_layers), MASKING_PAPER),
            DemoFigure(cross.figure(), _cross_caption(cross), CROSS_PAPER),
        ],
        {"activation_patching": exact, "attribution_patching": approx, "context_masking": masking,
         "cross_task_patching": cross},
    )


# --- tracing ------------------------------------------------------------------------------------------------
TRACE_PAPER = ("ROME's Figure 1 (Meng et al. 2022, arXiv 2202.05262): three panels for one fact, restoring the "
               "hidden state, the MLP outputs and the attention outputs; hidden states matter at the last subject "
               "token in early-middle layers and at the last token late, MLPs at the last subject token in the "
               "middle layers, attention at the last token late.")
ROLES_PAPER = "ROME averages the same effect over facts per token role (first / middle / last subject token ...)."
EVIDENCE_PAPER = ("Liu et al. 2025 and Geva et al. 2023 follow the attribute rate (how many of the top tokens are "
                  "objects of the relation) up the layers, and the drop when windows of MLPs or attention are "
                  "knocked out.")


def tracing_section(ctx: DemoContext) -> DemoSection:
    from ..methods.relation_evidence import relation_evidence
    from ..methods.tracing import causal_trace, trace_totals

    facts = ctx.prompts("factual", n=2 if ctx.quick else 8)
    # window 2: ROME's 10 is a fifth of a 48-layer model; the dense organism has 6 blocks
    trace = causal_trace(ctx.dense, facts, samples=3 if ctx.quick else 10, window=2)
    totals = trace_totals(trace)
    first = totals[totals["prompt_id"] == totals["prompt_id"].iloc[0]].set_index("site")
    best = "; ".join(f"{site} {row['best_indirect_effect']:.2f} at layer {int(row['best_layer'])} "
                     f"({row['best_role']})" for site, row in first.iterrows())
    evidence = relation_evidence(ctx.dense, ctx.prompts("factual", n=8 if ctx.quick else 24), top_k=5, window=2,
                                 sites=("mlp_out", "attn_out"))
    et = evidence.table
    rates = et[et["analysis"] == "lens"].groupby("layer")["attribute_rate"].mean()
    ko = et[et["analysis"] == "knockout"].groupby(["site", "window_start", "window_end"])["attribute_rate_drop"].mean()
    ko_best = ko.idxmax()
    return DemoSection(
        "Causal tracing and relation evidence in factual recall",
        "First ROME's causal trace of one fact (its subject corrupted with noise, then one hidden state or a window "
        "of MLP / attention outputs restored), then its mean per token role over the facts, then the relation "
        "evidence: how the top tokens fill with the relation's objects layer by layer, and what knocking out "
        "windows of sublayers removes.",
        [
            DemoFigure(trace.figure(),
                       f"Fact {totals['prompt_id'].iloc[0]!r}: P(object) clean "
                       f"{first['clean_target_prob'].iloc[0]:.2f}, corrupted "
                       f"{first['corrupted_target_prob'].iloc[0]:.2f}. "
                       f"The largest restoration per panel: {best} (MLP / attention restored over 2 layers).",
                       TRACE_PAPER),
            DemoFigure(trace.figure(view="roles"),
                       f"The indirect effect averaged over {trace.table['prompt_id'].nunique()} facts per token role "
                       "and layer.", ROLES_PAPER),
            DemoFigure(evidence.figure(),
                       f"Over {et['prompt_id'].nunique()} facts the attribute rate goes from {rates.iloc[0]:.2f} "
                       f"(layer {int(rates.index[0])}) to {rates.iloc[-1]:.2f} (layer {int(rates.index[-1])}); the "
                       f"largest knockout drop, {ko.max():.2f}, is {ko_best[0]} over layers [{int(ko_best[1])}, "
                       f"{int(ko_best[2])}).",
                       EVIDENCE_PAPER),
        ],
        {"causal_trace": trace, "relation_evidence": evidence},
    )


# --- MoE ----------------------------------------------------------------------------------------------------
MOE_PAPER = ("Li et al. 2025 (arXiv 2505.24593) plot the per-layer gain of attention and MoE blocks and map the "
             "experts' gains layer by layer.")
BLOCK_PAPER = ("Li et al. 2025 block a relation's top experts and report the drop in MRR; the random expert sets "
               "of the same size are our control.")
CONTRAST_PAPER = "Li et al. 2025, Table 2: MRR with the shared expert alone, then with 1 ... k routed experts."
CORRELATION_PAPER = ("Li et al. 2025 correlate attention heads with the experts of the same and later layers "
                     "across prompts.")


def moe_section(ctx: DemoContext) -> DemoSection:
    from ..methods.moe import expert_attribution
    from ..methods.moe_blocking import block_experts, shared_routed_contrast
    from ..methods.moe_routing import head_expert_correlation, routing_stats

    facts = ctx.prompts("factual", n=32 if ctx.quick else 160)
    attr = expert_attribution(ctx.moe, facts, top_neurons=5)
    task = facts[0]["task"]
    task_prompts = facts.filter(task=task)
    blocked = block_experts(ctx.moe, task_prompts, attr.top_experts(10, task=task), controls=3 if ctx.quick else 20)
    contrast = shared_routed_contrast(ctx.moe, facts)
    routing = routing_stats(ctx.moe, facts, by="task")
    corr = head_expert_correlation(ctx.moe, facts, attribution_result=attr, top_k=5)

    t = attr.table
    layer_gain = t[t["level"].isin(["attn", "ffn"])].groupby(["level", "layer"])["score"].mean()
    ffn_best, attn_best = layer_gain.loc["ffn"].idxmax(), layer_gain.loc["attn"].idxmax()
    experts = t[t["level"] == "expert"].groupby(["layer", "expert"])["score"].mean()
    e_best = experts.idxmax()
    bs = blocked.meta["summary"]["all"]
    cs = contrast.meta["summary"]["all"]
    keeps = [k for k in cs if k.startswith("mrr_keep")]
    load = routing.table[routing.table["group"] == "all"]
    heavy = load.loc[load["load"].idxmax()]
    info = ctx.moe.info
    uniform = info.top_k / info.n_experts if info.n_experts else float("nan")
    pair = corr.meta["top_pairs"][0] if corr.meta.get("top_pairs") else None
    pair_text = (f"the strongest pair is head {head_name(pair['layer'], pair['head'])} with expert "
                 f"L{pair['expert_layer']}.E{pair['expert']}, r = {pair['r_router_prob']:.2f}" if pair else
                 "no pair has a defined r")
    return DemoSection(
        "MoE: which layers, heads and experts build the answer",
        "First the log-probability gain of the target (frozen final norm) from each layer's attention and MoE "
        f"block, then from each expert; then the MRR of '{task}' facts with that relation's 10 top experts blocked "
        "against random 10-expert sets, the MRR with the shared expert alone and with each number of routed "
        "experts, the routing load of every expert, and the correlation of heads with experts across prompts.",
        [
            DemoFigure(attr.figure(view="layers"),
                       f"Over {t['prompt_id'].nunique()} facts, the MoE block with the largest mean gain is layer "
                       f"{ffn_best} ({layer_gain.loc[('ffn', ffn_best)]:.2f} nats), the attention block layer "
                       f"{attn_best} ({layer_gain.loc[('attn', attn_best)]:.2f} nats).", MOE_PAPER),
            DemoFigure(attr.figure(view="experts"),
                       f"The expert with the largest mean gain is L{e_best[0]}.E{e_best[1]} ({experts.max():.2f} "
                       "nats).", MOE_PAPER),
            DemoFigure(blocked.figure(),
                       f"MRR of {bs['n_prompts']} '{task}' facts: {bs['mrr_clean']:.3f} clean, "
                       f"{bs['mrr_blocked']:.3f} with the 10 top experts blocked, {bs['mrr_control_mean']:.3f} "
                       f"(std {bs['mrr_control_std']:.3f}) with random sets.", BLOCK_PAPER),
            DemoFigure(contrast.figure(),
                       f"MRR over {cs['n_prompts']} facts: {cs['mrr_clean']:.3f} with every routed expert, "
                       + ", ".join(f"{cs[k]:.3f} keeping {k.removeprefix('mrr_keep')}" for k in keeps)
                       + " (keeping 0: the shared expert alone).", CONTRAST_PAPER),
            DemoFigure(routing.figure(group="all"),
                       f"The busiest expert is L{int(heavy['layer'])}.E{int(heavy['expert'])}, routed "
                       f"{heavy['load']:.2f} of the tokens (an even load would be {_fmt(uniform, 2)}).", ""),
            DemoFigure(corr.figure(),
                       f"Pearson r across {int(corr.table['n_prompts'].iloc[0])} facts between each head's gain and "
                       f"each expert's router probability; {pair_text}.", CORRELATION_PAPER),
        ],
        {"expert_attribution": attr, "block_experts": blocked, "shared_routed_contrast": contrast,
         "routing_stats": routing, "head_expert_correlation": corr},
    )


FAMILY_SECTIONS = [safety_heads_section, lens_section, patching_section, tracing_section, moe_section,
                   benchmark_section]
