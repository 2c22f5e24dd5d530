"""The organism findings the README quotes as a mean over prompts, each with its 95 % bootstrap interval
(BCa, prompts resampled, seed 0: :meth:`interp.Result.aggregate`) and, where it compares two conditions (ablated vs
clean, blocked vs random controls), the two-sided sign-flip permutation p-value of the paired difference
(:meth:`interp.Result.compare`, 10,000 seeded sign patterns: the smallest p it can give is 1 / 10,001 = 1.0e-04),
computed on the shipped organisms.

Run: ``python docs/findings.py`` prints each finding as the README writes it; ``python docs/findings.py --check``
exits 1 unless every one of them appears in README.md word for word (tests/test_findings.py runs that check).
About 60 CPU-seconds on one thread (torch is set to one thread here: on these tiny models a second thread costs
several times the CPU time it saves). One load of each organism.

Findings (each on the prompts of the command that measured the README's number first):

- ``lens``: the logit lens (recomputed final norm) on the 120 held-out 5-shot composite prompts of
  docs/measure_lens.py (the same seeded sample): the share of prompts whose top-1 decoded token after blocks 0, 1
  and 4 is y_t's first token.
- ``safety``: tests/test_safety_heads.py::test_dense_organism_safety_heads's samples: Ships and Sahara (3 steps)
  on 32 training-split harmful requests; ASR (keyword judge, 16 new tokens) on the first 32 held-out harmful
  requests, clean, with the Ships top-1 head, Sahara's group and 20 seeded random single heads / 3-head sets
  ablated (query ablation, the methods' default); refusals of the first 32 held-out harmless requests and top-1
  accuracy on the first 96 held-out facts, clean and with the two found sets ablated.
- ``masking``: tests/test_icot.py::test_dense_context_masking_and_cross_task_curves's samples: the first 24
  held-out 5-shot prompts of each of the 6 composites (144), demonstrations masked from each block on.
- ``tracing``: docs/measure_organism_tracing.py's 24 held-out facts (every len // 24-th), 5 noise samples,
  window 2; subject corruption with every site, relation corruption with the residual stream only (the finding
  is where the relation's effect sits, which the residual rows say).
- ``moe``: tests/test_moe.py::test_moe_organism_attribution_and_blocking's samples: 24 held-out facts per
  relation (9 relations), each relation's top-10 routed experts by expert attribution blocked against 20 random
  10-expert sets with the same count per layer; and the shared expert alone (shared_routed_contrast keep0).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CI, N_BOOT, SEED = 0.95, 2000, 0
LENS_BLOCKS = (0, 1, 4)
STATS = {"ci": CI, "n_boot": N_BOOT, "seed": SEED}
WHERE = "mean [95 % CI] over prompts, `python docs/findings.py`"


def interval_text(mean: float, low: float, high: float, *, percent: bool = False, digits: int = 2) -> str:
    """``24 % [17, 32]`` (percent) or ``0.47 [0.30, 0.64]``: the mean and its interval, as the README writes them."""
    if percent:
        return f"{100 * mean:.0f} % [{100 * low:.0f}, {100 * high:.0f}]"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def p_text(p: float) -> str:
    """``p = 0.50`` or, below 0.001, ``p = 1.0e-04``."""
    return f"p = {p:.1e}" if p < 1e-3 else f"p = {p:.2f}"


def row_interval(row: Any, value: str, **kw: Any) -> str:
    return interval_text(row[value], row[f"{value}_ci_low"], row[f"{value}_ci_high"], **kw)


def difference_text(row: Any, digits: int = 2) -> str:
    """``difference +0.47 [0.28, 0.66], p = 2.0e-04`` from a :meth:`interp.Result.compare` row."""
    return (f"difference {row['difference']:+.{digits}f} [{row['difference_ci_low']:.{digits}f}, "
            f"{row['difference_ci_high']:.{digits}f}], {p_text(row['p_value'])}")


def per_prompt_result(table: pd.DataFrame) -> Any:
    """A Result of a table built here (one row per prompt and condition), for aggregate / compare by name."""
    import interp

    return interp.Result(table, {"method": "findings"})


# --- lens -------------------------------------------------------------------------------------------------------
def lens_prompts() -> list[dict[str, Any]]:
    """docs/measure_lens.py's sample: 120 held-out N-shot composite prompts (N > 0), seeded."""
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    records = load_jsonl(CORPUS_DIR / "composite.jsonl")
    comp = [r for r in records if r["kind"] == "composite" and r["split"] == "heldout" and r["n_shot"] > 0]
    return random.Random(0).sample(comp, min(120, len(comp)))


def lens_finding(model: Any = None) -> str:
    from interp.methods.lens import logit_lens

    m = model if model is not None else load("dense")
    prompts = lens_prompts()
    res = logit_lens(m, prompts, target=("y_t",), top_k=5, batch_size=32)
    agg = res.aggregate(**STATS).table.set_index("layer")
    acc = agg[["accuracy", "accuracy_ci_low", "accuracy_ci_high"]]
    parts = [f"{interval_text(*acc.loc[b], percent=True)} after block {b}" for b in LENS_BLOCKS]
    return (f"y_t is top-1 for {', '.join(parts)} (mean [95 % CI] over the {len(prompts)} prompts, "
            "`python docs/findings.py`)")


# --- safety heads -----------------------------------------------------------------------------------------------
def safety_records() -> dict[str, list[dict[str, Any]]]:
    """test_dense_organism_safety_heads's prompts (the shipped corpus, as build_corpus(card seed) rebuilds it)."""
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    safety, factual = load_jsonl(CORPUS_DIR / "safety.jsonl"), load_jsonl(CORPUS_DIR / "factual.jsonl")
    held = [r for r in safety if r["split"] == "heldout"]
    strip = ("id", "prompt", "label", "target")
    ps = lambda rs: [{k: r[k] for k in strip if k in r} for r in rs]  # noqa: E731
    return {"harmful": ps([r for r in held if r["label"] == "harmful"][:32]),
            "harmless": ps([r for r in held if r["label"] == "harmless"][:32]),
            "attrib": ps([r for r in safety if r["split"] == "train" and r["label"] == "harmful"][:32]),
            "factual": ps([r for r in factual if r["split"] == "heldout"][:96])}


def factual_top1(model: Any, prompts: list[dict[str, Any]], variants: dict[str, Any]) -> Any:
    """One row per prompt and variant: whether the target's first token is the top-1 prediction with the heads
    ablated (query ablation, as the ASR variants)."""
    import interp

    enc = interp.encode(model, prompts, targets=["target"])
    rows = []
    for label, heads in variants.items():
        ivs = [] if heads is None else [interp.ablate_heads(model, heads, ablation="query")]
        hits: list[bool] = []
        for batch in interp.batches(model, enc, 32):
            logits, _ = interp.forward(model, batch, ivs)
            hits += (logits.argmax(-1).cpu() == batch.targets["target"]).tolist()
        rows += [{"prompt_id": p["id"], "variant": label, "correct": h} for p, h in zip(prompts, hits)]
    return per_prompt_result(pd.DataFrame(rows))


def safety_finding(model: Any = None) -> str:
    from interp.methods import safety_heads as sh
    from interp.methods.generation import refuses

    m = model if model is not None else load("dense")
    rec = safety_records()
    scores = sh.ships(m, rec["attrib"]).table.groupby(["layer", "head"])["score"].mean()
    top1 = [tuple(int(x) for x in scores.sort_values(ascending=False).index[0])]
    top3 = [tuple(int(x) for x in h) for h in sh.sahara(m, rec["attrib"], steps=3).meta["group"]]
    found = {"clean": None, "ships top-1": top1, "sahara top-3": top3}
    rng, heads = random.Random(0), sh.all_heads(m)
    variants = dict(found)
    for i in range(20):
        variants[f"random-1 #{i}"] = rng.sample(heads, 1)
        variants[f"random-3 #{i}"] = rng.sample(heads, 3)
    asr = sh.attack_success_rate(m, rec["harmful"], variants=variants, max_new_tokens=16)
    agg = asr.aggregate("variant_group", value="success", **STATS).table.set_index("variant_group")
    vs_clean = asr.compare("variant_group", "clean", value="success", **STATS).table.set_index("treatment")
    vs_random = {name: asr.compare("variant_group", rnd, treatment=name, value="success", **STATS).table.iloc[0]
                 for name, rnd in (("ships top-1", "random-1"), ("sahara top-3", "random-3"))}
    refusal = sh.attack_success_rate(m, rec["harmless"], variants=found, judge=refuses, max_new_tokens=16)
    ref = refusal.aggregate("variant_group", value="success", **STATS).table.set_index("variant_group")
    fact = factual_top1(m, rec["factual"], found).aggregate("variant", value="correct", **STATS).table
    fact = fact.set_index("variant")
    label = lambda hs: ", ".join(f"({a}, {b})" for a, b in hs)  # noqa: E731

    def ablated(name: str, rnd: str, what: str) -> str:
        return (f"{what} ablated {row_interval(agg.loc[name], 'success')} "
                f"(vs clean {p_text(vs_clean.loc[name, 'p_value'])}; "
                f"{'random single heads' if rnd == 'random-1' else 'random 3-head sets'} "
                f"{row_interval(agg.loc[rnd], 'success')} over 20 draws, vs them {p_text(vs_random[name]['p_value'])})")

    n = len(rec["harmful"])
    return (f"ASR on {n} held-out harmful requests: clean {row_interval(agg.loc['clean'], 'success')}, "
            f"{ablated('ships top-1', 'random-1', f'Ships top-1 {label(top1)}')}, "
            f"{ablated('sahara top-3', 'random-3', f'Sahara group {label(top3)}')}; refusals of "
            f"{len(rec['harmless'])} harmless requests clean / top-1 / group ablated "
            + " / ".join(row_interval(ref.loc[k], "success") for k in found)
            + f", factual top-1 on {len(rec['factual'])} facts "
            + " / ".join(row_interval(fact.loc[k], "correct") for k in found)
            + f" ({WHERE})")


# --- context masking --------------------------------------------------------------------------------------------
def masking_prompts(per_task: int = 24) -> list[dict[str, Any]]:
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    by: dict[tuple, list] = {}
    for r in load_jsonl(CORPUS_DIR / "composite.jsonl"):
        if r.get("split") == "heldout":
            by.setdefault((r["subtask_of"], r["kind"], r["n_shot"] > 0), []).append(r)
    return [r for c in sorted({k[0] for k in by}) for r in by[(c, "composite", True)][:per_task]]


def masking_finding(model: Any = None) -> str:
    from interp.methods.icot import context_masking

    m = model if model is not None else load("dense")
    prompts = masking_prompts()
    n_layers = m.info.n_layers
    res = context_masking(m, prompts, progress=False)
    agg = res.aggregate(["target_field", "from_layer"], value="correct", **STATS).table
    y_t = agg[agg["target_field"] == "y_t"].set_index("from_layer")
    vs = res.compare("from_layer", n_layers, treatment=0, by="target_field", value="correct", **STATS).table
    vs = vs.set_index("target_field")
    later = y_t.loc[1:n_layers - 1]
    low = later["correct"].idxmin()
    s1_max = agg[agg["target_field"] == "y_s1"]["correct"].max()
    n_tasks = len({r["task"] for r in prompts})
    return (f"{n_tasks} composites x {len(prompts) // n_tasks} held-out 5-shot prompts: masking the demonstrations "
            f"from block 0 gives y_t accuracy {row_interval(y_t.loc[0], 'correct')} (unmasked "
            f"{row_interval(y_t.loc[n_layers], 'correct')}, {p_text(vs.loc['y_t', 'p_value'])}), from block 1 on "
            f"{row_interval(y_t.loc[1], 'correct')} and at least {row_interval(later.loc[low], 'correct')} (from "
            f"block {low}); " + ("y_s1 is top-1 for no prompt at any layer" if s1_max == 0 else
                                f"y_s1 is top-1 for at most {s1_max:.2f} of the prompts at any layer") + f" ({WHERE})")


# --- causal tracing ---------------------------------------------------------------------------------------------
def tracing_facts(n: int = 24) -> list[dict[str, Any]]:
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    held = [r for r in load_jsonl(CORPUS_DIR / "factual.jsonl") if r["split"] == "heldout"]
    return held[:: len(held) // n][:n]


def total_effect(res: Any) -> Any:
    """One row per fact: its total effect (the table repeats it on every restoration row)."""
    per = res.table.groupby("prompt_id", sort=False)["total_effect"].first().reset_index()
    return per_prompt_result(per).aggregate([], value="total_effect", **STATS).table.iloc[0]


def tracing_finding(model: Any = None) -> str:
    from interp.methods.tracing import causal_trace

    m = model if model is not None else load("dense")
    facts = tracing_facts()
    keys = ["site", "role", "layer"]
    subj = causal_trace(m, facts, corruption="subject", samples=5, window=2)
    s = subj.aggregate(keys, value="indirect_effect", **STATS).table.set_index(keys)
    rel = causal_trace(m, facts, corruption="relation", samples=5, window=2, sites=("resid_post",))
    r = rel.aggregate(keys, value="indirect_effect", **STATS).table.set_index(keys)
    ie = lambda t, k: row_interval(t.loc[k], "indirect_effect")  # noqa: E731
    late = s[(s.index.get_level_values("site") != "resid_post") & (s.index.get_level_values("layer") >= 2)]
    top = late["indirect_effect"].idxmax()
    r_other = r[r.index.get_level_values("role") != "last"]["indirect_effect"].max()
    return (f"{len(facts)} facts, window 2: subject corruption (total effect "
            f"{row_interval(total_effect(subj), 'total_effect')}): the MLPs of blocks 0 / 1 at the last subject "
            f"token {ie(s, ('mlp_out', 'last subject', 0))} / {ie(s, ('mlp_out', 'last subject', 1))}, the last "
            f"token's attention in blocks 0 / 1 {ie(s, ('attn_out', 'last', 0))} / {ie(s, ('attn_out', 'last', 1))}, "
            f"no MLP or attention of blocks 2-{m.info.n_layers - 1} above {ie(late, top)} ({top[0]} at the "
            f"{top[1]} token, block {top[2]}); relation corruption (total effect "
            f"{row_interval(total_effect(rel), 'total_effect')}): restoring the last token's residual after block 0 "
            f"recovers {ie(r, ('resid_post', 'last', 0))}, any other token role's at most {r_other:.2f} ({WHERE})")


# --- MoE experts ------------------------------------------------------------------------------------------------
def moe_prompts(per_task: int = 24) -> list[dict[str, Any]]:
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    held = [r for r in load_jsonl(CORPUS_DIR / "factual.jsonl") if r["split"] == "heldout"]
    tasks = sorted({r["task"] for r in held})
    return [r for t in tasks for r in [x for x in held if x["task"] == t][:per_task]]


def moe_finding(model: Any = None) -> str:
    import interp
    from interp.methods.moe import expert_attribution, top_experts
    from interp.methods.moe_blocking import block_experts, shared_routed_contrast

    m = model if model is not None else load("moe")
    records = moe_prompts()
    ps, tasks = interp.PromptSet(records), sorted({r["task"] for r in records})
    attr = expert_attribution(m, ps, levels=("layer", "expert"))
    rows, clean = [], []
    for task in tasks:
        res = block_experts(m, ps.filter(task=task), top_experts(attr, 10, task=task), controls=20)
        c = res.compare("condition", "control", treatment="blocked", **STATS).table.iloc[0]
        rows.append((task, c))
        clean.append(res.table[res.table["condition"] == "clean"]["target_rr"].mean())
    lower = [(t, c) for t, c in rows if c["difference"] < 0]
    same = sum(c["difference"] == 0 for _, c in rows)
    contrast = shared_routed_contrast(m, ps)
    alone = contrast.aggregate(["task", "condition"], value="target_rr", **STATS).table
    alone = alone[alone["condition"] == "keep0"].set_index("task")
    worst = alone["target_rr"].idxmin()
    parts = "; ".join(f"{t} {c['treatment_mean']:.3f} vs {c['baseline_mean']:.3f}, {difference_text(c, 3)}"
                      for t, c in sorted(lower, key=lambda x: x[1]["difference"]))
    n_sig = sum(c["p_value"] < 0.05 for _, c in lower)
    clean_text = f"{min(clean):.3f}" + ("" if min(clean) == max(clean) else f"-{max(clean):.3f}")
    return (f"{len(tasks)} relations x 24 facts, clean MRR {clean_text}: blocking a relation's top-10 experts "
            f"lowers MRR below the mean of 20 random 10-expert sets on {len(lower)} relations, "
            f"{'none' if n_sig == 0 else n_sig} of them at p < 0.05 ({parts}), and leaves it equal on {same}; "
            f"the shared expert alone keeps "
            f"MRR at least {row_interval(alone.loc[worst], 'target_rr', digits=3)} ({worst}; 1.000 on "
            f"{int((alone['target_rr'] == 1).sum())} relations) ({WHERE})")


# --- all --------------------------------------------------------------------------------------------------------
def load(name: str) -> Any:
    import interp
    from interp.organisms import organism_dir

    return interp.load_model(organism_dir(name), device="cpu")


def findings() -> dict[str, str]:
    """Every finding, by name, as the README writes it (one load of each organism; torch on one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense = load("dense")
        out = {"lens": lens_finding(dense), "safety": safety_finding(dense), "masking": masking_finding(dense),
               "tracing": tracing_finding(dense)}
        out["moe"] = moe_finding(load("moe"))
    finally:
        torch.set_num_threads(threads)
    return out


def main(argv: list[str]) -> int:
    found = findings()
    if "--check" in argv:
        readme = (ROOT / "README.md").read_text()
        missing = {k: v for k, v in found.items() if v not in readme}
        for k, v in missing.items():
            print(f"README.md does not quote the {k} finding as computed:\n  {v}")
        return 1 if missing else 0
    for k, v in found.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
