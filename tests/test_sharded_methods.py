"""Every dataset-level method runs in shards (interp.run_resumable) to the Result of one run over the whole set.

Models are float64; a different split of the prompts into batches still moves values at the 1e-7 level (Hugging
Face computes the attention softmax in float32 whatever the model's dtype, and padding lengths differ), so the
comparisons are to rtol 1e-5 (each killed-and-resumed run equals its uninterrupted run exactly). Per-prompt
methods concatenate and recompute their summaries; statistics of the whole set (generalised Ships, routing load,
head-expert correlation) are computed once from the shards' per-prompt pieces; dataset-wide inputs (causal
tracing's noise scale, relation evidence's attribute sets) are fixed once before the first shard; Sahara and
cross-task patching resume stage by stage. Killed-and-resumed runs are in test_runs.py (a real SIGKILL).
"""

from __future__ import annotations

import pandas as pd
import pytest

import interp
from interp.errors import InterpError
from interp.methods import icot, moe_blocking, moe_routing, safety_heads, tracing
from interp.methods.attribution_patching import attribution_patching
from interp.methods.moe import expert_attribution, top_experts
from interp.methods.patching import activation_patching
from interp.methods.relation_evidence import relation_evidence
from interp.runs.resumable import run_resumable

WORDS = ["the red", "a small green", "my old", "one blue", "our tall", "the quiet little"]
NOUNS = ["house", "river stone", "garden", "bright lamp", "ship", "clock tower"]
FACTS = [{"id": f"f{i}", "prompt": f"{WORDS[i % 6]} {NOUNS[(i * 5) % 6]} is near", "subject": NOUNS[(i * 5) % 6],
          "target": [" the", " a", " my"][i % 3], "task": ["near", "far"][i % 2]} for i in range(10)]


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["llama"], dtype="float64")


@pytest.fixture(scope="module")
def qwen_moe(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["qwen2_moe"], dtype="float64")


def assert_same(sharded: interp.Result, whole: interp.Result, *meta_keys: str) -> None:
    a, b = sharded.table.reset_index(drop=True), whole.table.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6, check_dtype=False)
    for key in meta_keys:
        assert _close(sharded.meta[key], whole.meta[key]), key
    assert sharded.meta["n_prompts"] == whole.meta["n_prompts"]
    assert sharded.meta["dataset_fingerprint"] == whole.meta["dataset_fingerprint"]


def _close(x, y) -> bool:
    if isinstance(x, dict):
        return isinstance(y, dict) and set(x) == set(y) and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(_close(u, v) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return (x != x and y != y) or abs(x - y) <= 1e-5 * max(1.0, abs(y))
    return x == y


def sharded(method, model, prompts, tmp_path, shard_size=3, **params):
    return run_resumable(method, model, prompts, tmp_path / "run", shard_size=shard_size, progress=False, **params)


def test_generalized_ships_from_shard_states(llama, tmp_path):
    heads = [(0, 1), (1, 0)]
    whole = safety_heads.generalized_ships(llama, FACTS, heads, r_main=2)
    part = sharded("generalized_ships", llama, FACTS, tmp_path, heads=heads, r_main=2)
    assert_same(part, whole, "score")
    assert part.meta["method"] == "generalized_ships" and part.meta["schema"] == whole.meta["schema"]
    assert part.meta["parameters"] == whole.meta["parameters"]
    with pytest.raises(interp.ParameterError, match="r_main"):  # checked against the whole set, before any shard
        sharded("generalized_ships", llama, FACTS[:2], tmp_path / "small", heads=heads, r_main=3)


def test_attack_success_rate_recomputes_the_rates(llama, tmp_path):
    kw = {"variants": {"clean": None, "one": [(0, 0)], "two": [(0, 1), (1, 1)]}, "max_new_tokens": 3}
    whole = safety_heads.attack_success_rate(llama, FACTS, **kw)
    assert_same(sharded("attack_success_rate", llama, FACTS, tmp_path, **kw), whole, "asr")


def test_causal_trace_fixes_the_noise_scale_once(llama, tmp_path):
    # targets: the model's own argmax for some facts, another token for the rest; the first shard keeps none
    pred = interp.predictions(llama, FACTS, top_k=2).table
    top = pred[pred["prediction_rank"] == 1].set_index("prompt_id")["predicted_token"]
    second = pred[pred["prediction_rank"] == 2].set_index("prompt_id")["predicted_token"]
    facts = [{**r, "target": (second if i < 3 or i % 3 == 0 else top)[r["id"]]} for i, r in enumerate(FACTS)]
    kw = {"sites": ("resid_post", "mlp_out"), "samples": 2, "window": 2}
    whole = tracing.causal_trace(llama, facts, **kw)
    part = sharded("causal_trace", llama, facts, tmp_path, **kw)
    assert whole.meta["n_dropped"] >= 3 and whole.meta["n_kept"] >= 3
    assert_same(part, whole, "n_kept", "n_dropped", "dropped_ids", "noise_std")
    assert part.meta["parameters"] == whole.meta["parameters"]  # the shard inputs stay out of the parameters
    assert not {"subject_std", "allow_none_kept"} & set(part.meta["parameters"])
    with pytest.raises(interp.ParameterError, match="one tensor per prompt"):
        sharded("causal_trace", llama, facts, tmp_path / "t", noise=[None] * len(facts))


def test_relation_evidence_fixes_the_attribute_sets_once(llama, tmp_path):
    kw = {"top_k": 5, "window": 1}
    whole = relation_evidence(llama, FACTS, **kw)
    assert_same(sharded("relation_evidence", llama, FACTS, tmp_path, **kw), whole)


def test_patching_cuts_clean_and_corrupt_alike(llama, tmp_path):
    from interp.prompts import tokenize

    by_len: dict[int, list[dict]] = {}
    for r in FACTS + [{**r, "id": r["id"] + "b", "prompt": r["prompt"].replace("near", "far")} for r in FACTS]:
        by_len.setdefault(len(tokenize(llama, r["prompt"]).ids), []).append(r)
    clean, corrupt = [], []
    for group in by_len.values():
        for c, k in zip(group[0::2], group[1::2]):
            clean.append(c)
            corrupt.append({**k, "target": c["target"]})
    clean = [{**c, "wrong": " a" if c["target"] != " a" else " the"} for c in clean]
    assert len(clean) >= 4
    kw = {"sites": ("resid_pre", "z"), "metric": "logit_diff", "wrong": "wrong"}
    whole = activation_patching(llama, clean, corrupt, **kw)
    assert_same(sharded("activation_patching", llama, clean, tmp_path / "a", shard_size=2, corrupt=corrupt, **kw),
                whole, "corrupt_fingerprint")
    whole = attribution_patching(llama, clean, corrupt, **kw)
    assert_same(sharded("attribution_patching", llama, clean, tmp_path / "b", shard_size=2, corrupt=corrupt, **kw),
                whole, "corrupt_fingerprint")
    whole = attribution_patching(llama, clean, corrupt, ig_steps=2, **kw)
    assert_same(sharded("attribution_patching", llama, clean, tmp_path / "b2", shard_size=2, corrupt=corrupt,
                        ig_steps=2, **kw), whole, "corrupt_fingerprint")
    with pytest.raises(interp.ParameterError, match="verify_top"):
        sharded("attribution_patching", llama, clean, tmp_path / "c", corrupt=corrupt, verify_top=2, **kw)
    with pytest.raises(interp.PromptError, match="pair row by row"):
        sharded("activation_patching", llama, clean, tmp_path / "d", corrupt=corrupt[:-1], **kw)


def test_moe_methods_merge_their_summaries(qwen_moe, tmp_path):
    attr = expert_attribution(qwen_moe, FACTS, levels=("layer", "head", "expert"))
    part = sharded("expert_attribution", qwen_moe, FACTS, tmp_path / "a", levels=("layer", "head", "expert"))
    assert_same(part, attr, "summary")
    assert isinstance(part, interp.AttributionResult) and part.top_experts(3) == attr.top_experts(3)
    experts = top_experts(attr, 3)
    whole = moe_blocking.block_experts(qwen_moe, FACTS, experts, controls=3)
    assert_same(sharded("block_experts", qwen_moe, FACTS, tmp_path / "b", experts=experts, controls=3), whole,
                "summary")
    whole = moe_blocking.shared_routed_contrast(qwen_moe, FACTS)
    assert_same(sharded("shared_routed_contrast", qwen_moe, FACTS, tmp_path / "c"), whole, "summary")


def test_moe_statistics_of_the_whole_set(qwen_moe, tmp_path):
    for positions in ("all", "last"):
        whole = moe_routing.routing_stats(qwen_moe, FACTS, by="task", positions=positions)
        assert_same(sharded("routing_stats", qwen_moe, FACTS, tmp_path / positions, by="task", positions=positions),
                    whole)
    whole = moe_routing.head_expert_correlation(qwen_moe, FACTS, top_k=5)
    part = sharded("head_expert_correlation", qwen_moe, FACTS, tmp_path / "corr", top_k=5)
    assert_same(part, whole, "top_pairs")
    assert type(part) is interp.Result and part.schema.value == "r_router_prob"
    with pytest.raises(interp.ParameterError, match="attribution"):
        sharded("head_expert_correlation", qwen_moe, FACTS, tmp_path / "x", attribution_result=whole)


def test_logit_lens_concatenates_and_keeps_its_aggregate(llama, tmp_path):
    kw = {"sites": "sublayers", "norm": "frozen", "positions": "all", "top_k": 3}
    whole = interp.logit_lens(llama, FACTS, **kw)
    part = sharded("logit_lens", llama, FACTS, tmp_path, **kw)
    assert isinstance(part, interp.LensResult)
    assert_same(part, whole)
    assert_same(part.aggregate(), whole.aggregate())


def test_sahara_resumes_by_step(llama, tmp_path, monkeypatch):
    whole = safety_heads.sahara(llama, FACTS, steps=3)
    run = tmp_path / "run"
    first = run_resumable("sahara", llama, FACTS, run, progress=False, steps=3)
    assert_same(first, whole, "group")
    # interrupted after its first step: later steps' checkpoints are missing; the rerun computes only those
    for step in (2, 3):
        (run / "stages" / f"step_{step:03d}.parquet").unlink()
    calls = []
    real = safety_heads._final_states
    monkeypatch.setattr(safety_heads, "_final_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = run_resumable("sahara", llama, FACTS, run, progress=False, steps=3)
    assert len(calls) == 2
    assert_same(resumed, whole, "group")
    with pytest.raises(InterpError, match="different parameters"):
        run_resumable("sahara", llama, FACTS, run, progress=False, steps=2)


def test_cross_task_patching_resumes_by_stage(llama, tmp_path, monkeypatch):
    demos = "Q: red\nA: the\n\nQ: blue\nA: a"
    comp = [{"id": f"c{i}", "prompt": f"{demos}\n\nQ: {w}\nA:", "target": " the", "task": "comp"}
            for i, w in enumerate(WORDS)]
    subs = [{"id": f"s{i}", "prompt": f"{demos}\n\nQ: {w}\nA:", "target": [" the", " a"][i % 2],
             "demonstrations": demos, "task": ["s1", "s2"][i % 2]} for i, w in enumerate(WORDS)]
    kw = {"subtask_prompts": subs, "layers": [0, 1], "batch_size": 4}
    whole = icot.cross_task_patching(llama, comp, **kw)
    run = tmp_path / "run"
    assert_same(run_resumable("cross_task_patching", llama, comp, run, progress=False, **kw), whole)
    (run / "stages" / "subtask_001.parquet").unlink()
    calls = []
    real = icot._mean_last_resid
    monkeypatch.setattr(icot, "_mean_last_resid", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = run_resumable("cross_task_patching", llama, comp, run, progress=False, **kw)
    assert calls == []  # the task vectors came from the checkpoint
    assert_same(resumed, whole)


def test_stage_methods_refuse_ray(tiny_model_dirs):
    from interp.runs.distributed import run_on_ray

    with pytest.raises(interp.ParameterError, match="whole prompt set at every stage"):
        run_on_ray("sahara", tiny_model_dirs["llama"], FACTS, workers=2, steps=1)
