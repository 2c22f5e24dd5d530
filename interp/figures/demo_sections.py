"""The demo report's sections, one per method family (see :mod:`interp.figures.demo`). Each runs its methods on the
shipped organisms with a configuration sized for 2 CPU cores (smaller still with ``ctx.quick``)."""

from __future__ import annotations

import random

from .report import DemoContext, DemoSection


def safety_heads_section(ctx: DemoContext) -> DemoSection:
    from ..methods.safety_heads import attack_success_rate, sahara, ships

    n = 8 if ctx.quick else 24
    harmful = ctx.prompts("safety", n=n, label="harmful")
    scores = ships(ctx.dense, harmful)
    grid = scores.pivot("layer", "head", "score")
    top1 = [tuple(int(x) for x in grid.stack().idxmax())]
    group = sahara(ctx.dense, harmful, steps=2 if ctx.quick else 3)
    chosen = [tuple(h) for h in group.meta["group"]]
    info = ctx.dense.info
    rng = random.Random(0)
    all_heads = [(layer, h) for layer in range(info.n_layers) for h in range(info.n_heads)]
    variants = {"clean": None, f"ships top-1 {top1}": top1, f"sahara top-{len(chosen)}": chosen}
    for i in range(2 if ctx.quick else 10):
        variants[f"random-{len(chosen)} #{i}"] = rng.sample(all_heads, len(chosen))
    asr = attack_success_rate(ctx.dense, ctx.prompts("safety", n=n, label="harmful"), variants=variants,
                              max_new_tokens=12 if ctx.quick else 20)
    return DemoSection(
        "Safety heads: Ships, Sahara, attack success",
        "Left: how much ablating each head (uniform attention) moves the refusal's next-token distribution on "
        "harmful requests (KL, nats). Then Sahara's greedy head group, and the attack success rate when those heads "
        "are ablated during generation, against random head sets of the same size.",
        [scores.figure(), group.figure(), asr.figure()],
        {"ships": scores, "sahara": group, "attack_success": asr},
    )


def lens_section(ctx: DemoContext) -> DemoSection:
    from ..methods.lens import lens_summary, logit_lens

    comp = ctx.prompts("composite", n=8 if ctx.quick else 40, kind="composite", n_shot=5)
    targets = ("y_t", "y_s1", "y_s2")
    one = logit_lens(ctx.dense, comp[:1], positions="all", target=targets)
    dataset = logit_lens(ctx.dense, comp, target=targets)
    return DemoSection(
        "Logit lens: at which layer does the answer appear?",
        "Each layer's residual stream decoded through the final norm and unembedding: the top token per layer and "
        "position for one composite prompt, then the probability of the final answer y_t, the intermediate y_s1 "
        "and the distractor y_s2 per layer over held-out composite prompts.",
        [one.figure(), dataset.figure()],
        {"logit_lens": dataset, "logit_lens_summary": lens_summary(dataset)},
    )


def patching_section(ctx: DemoContext) -> DemoSection:
    from ..methods.attribution_patching import attribution_patching
    from ..methods.icot import context_masking
    from ..methods.patching import activation_patching
    from ..prompts import tokenize

    facts = ctx.prompts("factual")
    groups: dict = {}
    for r in facts:
        key = (r["prompt"].replace(r["subject"], "{}"), len(tokenize(ctx.dense, r["prompt"]).ids))
        groups.setdefault(key, []).append(r)
    clean, corrupt = [], []
    for rs in sorted(groups.values(), key=len, reverse=True):
        for c, k in zip(rs[0::2], rs[1::2]):
            if c["target"] != k["target"]:
                clean.append(c)
                corrupt.append(k)
    n = 3 if ctx.quick else 8
    clean, corrupt = clean[:n], corrupt[:n]
    exact = activation_patching(ctx.dense, clean, corrupt, sites=("resid_pre",), metric="norm_logit_diff")
    approx = attribution_patching(ctx.dense, clean, corrupt, sites=("resid_pre",), metric="norm_logit_diff")
    task = ctx.prompts("composite", kind="composite", n_shot=5)[0]["subtask_of"]
    masking = context_masking(ctx.dense, ctx.prompts("composite", n=8 if ctx.quick else 32, kind="composite",
                                                     n_shot=5,
                                                     subtask_of=task))
    return DemoSection(
        "Patching: where does the answer live, and when are the demonstrations read?",
        "Activation patching of clean residuals into a corrupted fact (normalised logit difference, 1 = clean "
        "behaviour) per layer and position, and attribution patching's one-backward estimate of the same map. "
        "Then context masking: accuracy when attention to the demonstrations is forbidden from layer l on.",
        [exact.figure(site="resid_pre", value="score"), approx.figure(site="resid_pre", value="estimate"),
         masking.figure()],
        {"activation_patching": exact, "attribution_patching": approx, "context_masking": masking},
    )


def tracing_section(ctx: DemoContext) -> DemoSection:
    from ..methods.tracing import causal_trace

    facts = ctx.prompts("factual", n=2 if ctx.quick else 8)
    # window 2: ROME's 10 is a fifth of a 48-layer model; the dense organism has 6 blocks
    trace = causal_trace(ctx.dense, facts, samples=3 if ctx.quick else 10, window=2)
    return DemoSection(
        "Causal tracing of factual recall",
        "Subject tokens are corrupted with noise; restoring one clean hidden state (or MLP / attention output "
        "over a window of layers) at a token and layer brings back the probability of the object by the amount "
        "shown (indirect effect; MLP / attention restored over a window of 2 layers). Then the average effect per "
        "token role.",
        [trace.figure(), trace.figure(view="roles")],
        {"causal_trace": trace},
    )


def moe_section(ctx: DemoContext) -> DemoSection:
    from ..methods.moe import expert_attribution
    from ..methods.moe_blocking import block_experts

    facts = ctx.prompts("factual", n=32 if ctx.quick else 160)
    attr = expert_attribution(ctx.moe, facts, top_neurons=5)
    task = facts[0]["task"]
    task_prompts = facts.filter(task=task)
    blocked = block_experts(ctx.moe, task_prompts, attr.top_experts(10, task=task), controls=3 if ctx.quick else 20)
    return DemoSection(
        "MoE: which layers, heads and experts build the answer",
        "Log-probability gain of the target (frozen final norm) from each layer's attention and MoE block and from "
        f"each expert of the MoE organism; then the MRR of '{task}' facts with that relation's 10 top experts "
        "blocked, against random 10-expert sets.",
        [attr.figure(view="layers"), attr.figure(view="experts"), blocked.figure()],
        {"expert_attribution": attr, "block_experts": blocked},
    )


FAMILY_SECTIONS = [safety_heads_section, lens_section, patching_section, tracing_section, moe_section]
