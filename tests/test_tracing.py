"""Causal tracing and relation evidence against naive references: the per-restoration loop (one plain
``bridge.run_with_hooks`` forward per restoration, same explicit noise tensor), prompt-by-prompt runs, and direct
arithmetic; plus the organism run (skipped only while data/organisms/dense/config.json is absent)."""

import json
import math

import pandas as pd
import pytest
import torch

import interp
from interp.activations.hooks import hook_snapshot
from interp.figures.viz import check_convention
from interp.methods.relation_evidence import relation_evidence
from interp.methods.tracing import (
    causal_trace,
    corrupted_positions,
    token_role,
    trace_summary,
    trace_totals,
    window_layers,
)
from interp.organisms import CORPUS_DIR, REPO_ROOT, organism_dir
from interp.prompts import encode

FACTS = [
    {"id": "f0", "prompt": "The capital of France is", "target": " Paris", "subject": "France", "task": "capital"},
    {"id": "f1", "prompt": "Q: Mary went to the store\nA:", "target": " yes", "subject": "Mary went", "task": "qa"},
    {"id": "f2", "prompt": "User: how do I bake bread?\nAssistant:", "target": " Sure", "subject": "bake bread",
     "task": "qa"},
]
HOOK = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out"}


# --- the naive reference: one plain forward per restoration ----------------------------------------------
def reference_trace(m, rec, noise, *, corruption, sites, window, severed=()):
    """(high, low, {(site, severed, layer, t): P_restored}) with plain run_with_hooks on the unpadded prompt."""
    bridge, n_layers = m.bridge, m.info.n_layers
    enc = encode(m, [rec], targets=["target"], spans=["subject"])
    item, span = enc.items[0], enc.spans["subject"][0]
    s, e = span
    cols = list(range(s, e)) if corruption == "subject" else [t for t in range(int(item.bos), len(item))
                                                           if not s <= t < e]
    ids = torch.tensor([item.ids])
    x = ids.repeat(noise.shape[0], 1)
    with torch.no_grad():
        logits, clean = bridge.run_with_cache(ids)
    target = int(logits[0, -1].argmax())

    def add_noise(t, hook):
        t = t.clone()
        t[:, cols] += noise
        return t

    def setter(col, value):
        def fn(t, hook):
            t = t.clone()
            t[:, col] = value
            return t
        return fn

    def prob(hooks):
        with torch.no_grad():
            out = bridge.run_with_hooks(x, fwd_hooks=[("hook_embed", add_noise), *hooks])
        return float(out[:, -1].float().softmax(-1)[:, target].mean())

    high = float(logits[0, -1].float().softmax(-1)[target])
    low = prob([])
    corrupted = {}
    if severed:
        def keep(t, hook):
            corrupted[hook.name] = t.detach().clone()
        names = [f"blocks.{ly}.{HOOK[k]}" for k in severed for ly in range(n_layers)]
        with torch.no_grad():
            bridge.run_with_hooks(x, fwd_hooks=[("hook_embed", add_noise)] + [(n, _recorder(n, corrupted))
                                                                              for n in names])
    out = {}
    for t in range(len(item)):
        for layer in range(n_layers):
            for site in sites:
                lo, hi = (layer, layer + 1) if site == "resid_post" else (max(0, layer - window // 2),
                                                                     min(n_layers, layer + window - window // 2))
                names = [f"blocks.{ly}.{HOOK[site]}" for ly in range(lo, hi)]
                out[(site, "", layer, t)] = prob([(n, setter(t, clean[n][0, t])) for n in names])
            for sub in severed:
                name = f"blocks.{layer}.hook_resid_post"
                hooks = [(name, setter(t, clean[name][0, t]))]
                hooks += [(f"blocks.{ly}.{HOOK[sub]}", setter(t, corrupted[f"blocks.{ly}.{HOOK[sub]}"][:, t]))
                          for ly in range(layer + 1, n_layers)]
                out[("resid_post", sub, layer, t)] = prob(hooks)
    return high, low, out


def _recorder(name, store):
    def fn(t, hook):
        store[name] = t.detach().clone()
    return fn


def n_corrupted(m, rec, corruption):
    enc = encode(m, [rec], spans=["subject"])
    return len(corrupted_positions(len(enc.items[0]), enc.spans["subject"][0], enc.items[0].bos, corruption))


@pytest.mark.parametrize("arch,corruption", [("gpt2", "subject"), ("llama", "subject"), ("llama", "relation"),
                                          ("qwen2_moe", "subject"), ("mixtral", "relation"), ("gemma2", "subject")])
def test_batched_trace_equals_the_restoration_loop(models, arch, corruption):
    m = models(arch)
    rec = FACTS[1]
    samples = 3
    noise = torch.randn(samples, n_corrupted(m, rec, corruption), m.info.d_model,
                        generator=torch.Generator().manual_seed(7)) * 2.0
    sites = ("resid_post", "mlp_out", "attn_out")
    res = causal_trace(m, [rec], corruption=corruption, sites=sites, window=2, samples=samples, noise=noise,
                       severed=("mlp_out", "attn_out"), target=None, max_rows=11)
    high, low, ref = reference_trace(m, rec, noise, corruption=corruption, sites=sites, window=2,
                                     severed=("mlp_out", "attn_out"))
    t = res.table
    assert len(t) == len(ref)
    assert t["clean_target_prob"].iloc[0] == pytest.approx(high, abs=1e-5)
    assert t["corrupted_target_prob"].iloc[0] == pytest.approx(low, abs=1e-5)
    got = {(r.site, r.severed, r.layer, r.position): r.target_prob for r in t.itertuples()}
    assert got.keys() == ref.keys()
    worst = max(abs(got[k] - ref[k]) for k in ref)  # tokens before the noise (not run: IE = 0) included
    assert worst < 1e-5, worst
    assert max(abs(v - low) for v in ref.values()) > 1e-3  # the restorations do move P(o): not a vacuous check


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_a_set_of_prompts_equals_each_prompt_alone(models, arch):
    m = models(arch)
    samples = 2
    noises = [torch.randn(samples, n_corrupted(m, r, "subject"), m.info.d_model,
                          generator=torch.Generator().manual_seed(i)) for i, r in enumerate(FACTS)]
    together = causal_trace(m, FACTS, samples=samples, noise=noises, target=None, window=3, max_rows=5).table
    for rec, nz in zip(FACTS, noises):
        alone = causal_trace(m, [rec], samples=samples, noise=nz, target=None, window=3).table
        part = together[together["prompt_id"] == rec["id"]].reset_index(drop=True)
        numeric = ["target_prob", "indirect_effect", "clean_target_prob", "corrupted_target_prob", "total_effect"]
        pd.testing.assert_frame_equal(part.drop(columns=numeric), alone.drop(columns=numeric))
        for col in ("target_prob", "indirect_effect", "clean_target_prob", "corrupted_target_prob"):
            assert (part[col] - alone[col]).abs().max() < 1e-5, col


def test_scalar_noise_is_three_subject_embedding_stds_with_a_seeded_generator(models):
    m = models("gemma2")  # hook_embed carries gemma's sqrt(d_model) scale
    res = causal_trace(m, FACTS[:2], samples=2, noise=3.0, seed=5, target=None, sites="resid_post")
    embs = []
    for s in dict.fromkeys(r["subject"] for r in FACTS[:2]):
        ids = torch.tensor([m.tokenizer(s, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            _, cache = m.bridge.run_with_cache(ids, names_filter=lambda n: n == "hook_embed")
        embs.append(cache["hook_embed"][0])
    nu = 3.0 * float(torch.cat(embs).std())
    assert res.meta["noise_std"] == pytest.approx(nu, rel=1e-6)
    rec = FACTS[1]
    explicit = torch.randn(2, n_corrupted(m, rec, "subject"), m.info.d_model,
                           generator=torch.Generator().manual_seed(5)) * res.meta["noise_std"]
    again = causal_trace(m, [rec], samples=2, noise=explicit, target=None, sites="resid_post").table
    part = res.table[res.table["prompt_id"] == rec["id"]].reset_index(drop=True)
    assert (part["target_prob"] - again["target_prob"]).abs().max() < 1e-6


def test_invariants_of_restoration(models):
    m = models("llama")
    res = causal_trace(m, FACTS, samples=2, target=None, severed=("mlp_out", "attn_out"), window=2)
    t = res.table
    last_layer = m.info.n_layers - 1
    for _pid, part in t.groupby("prompt_id"):
        # the last layer's residual at the last token is the whole clean output
        plain = part[(part["site"] == "resid_post") & (part["severed"] == "")]
        top = plain[(plain["layer"] == last_layer) & (plain["role"] == "last")]
        assert top["target_prob"].iloc[0] == pytest.approx(top["clean_target_prob"].iloc[0], abs=1e-5)
        # no sublayer above the last layer to sever
        for sub in ("mlp_out", "attn_out"):
            a = part[(part["severed"] == sub) & (part["layer"] == last_layer)]["target_prob"].values
            b = plain[plain["layer"] == last_layer]["target_prob"].values
            assert abs(a - b).max() < 1e-6
        assert (part["total_effect"] == part["clean_target_prob"] - part["corrupted_target_prob"]).all()
        # half-open windows: the residual after block l is [l, l + 1)
        assert (plain["window_end"] == plain["window_start"] + 1).all()
        assert (plain["window_start"] == plain["layer"]).all()


def test_a_user_metric_scores_the_same_runs(models):
    """metric=: every run is also scored by the user's metric. A callable equal to p(target) reproduces the
    probability columns exactly; with one corrupted copy, "logprob" is the log of the restored probability."""
    from interp.methods import metrics

    m = models("llama")
    plain = causal_trace(m, FACTS, samples=2, target=None, window=2, sites=("resid_post", "mlp_out"))
    same = causal_trace(m, FACTS, samples=2, target=None, window=2, sites=("resid_post", "mlp_out"),
                        metric=lambda logits, target, wrong: metrics.prob(logits, target))
    t = same.table
    pd.testing.assert_frame_equal(t[list(plain.table.columns)], plain.table)
    assert (t["metric_value"] - t["target_prob"]).abs().max() < 1e-6
    assert (t["clean_metric"] - t["clean_target_prob"]).abs().max() < 1e-6
    assert (t["corrupted_metric"] - t["corrupted_target_prob"]).abs().max() < 1e-6
    assert same.meta["metric_unit"] == "the metric function's"
    one = causal_trace(m, FACTS, samples=1, target=None, window=2, sites=("resid_post",), metric="logprob").table
    assert (one["metric_value"] - one["target_prob"].map(math.log)).abs().max() < 1e-4
    assert "metric_value" not in plain.table


def test_relation_corruption_marks_every_non_subject_token_but_bos(models):
    m = models("llama")
    res = causal_trace(m, [FACTS[0]], corruption="relation", samples=1, target=None, sites="resid_post")
    tok = res.table.drop_duplicates("position").set_index("position")
    assert tok.loc[0, "role"] == "bos" and not tok.loc[0, "corrupted"]
    assert list(tok["corrupted"]) == [pos > 0 and not subj for pos, subj in zip(tok.index, tok["in_subject"])]
    assert tok.iloc[-1]["corrupted"] and tok.iloc[-1]["role"] == "last"


def test_token_roles_and_windows():
    # BOS, "The", " cap", " Fr", " an", " ce", " is", " a", " city"  (subject = positions 3..5)
    roles = [token_role(t, 9, (3, 6), True) for t in range(9)]
    assert roles == ["bos", "before subject", "before subject", "first subject", "middle subject", "last subject",
                     "first subsequent", "further", "last"]
    assert token_role(2, 3, (2, 3), False) == "last"  # the prompt ends with its subject
    assert token_role(0, 3, (0, 1), False) == "last subject"  # a one-token subject
    assert window_layers(7, 10, 12) == (2, 12) and window_layers(0, 10, 12) == (0, 5)
    assert window_layers(3, 1, 6) == (3, 4) and window_layers(3, 3, 6) == (2, 5)


def test_dropped_facts_are_counted(models):
    m = models("llama")
    rec = dict(FACTS[0])
    enc = encode(m, [rec])
    with torch.no_grad():
        pred = int(m.bridge(torch.tensor([enc.items[0].ids]))[0, -1].argmax())
    rec["target"] = m.tokenizer.decode([pred])
    wrong = {**FACTS[1], "target": " zzzz"}
    assert encode(m, [rec], targets=["target"]).targets["target"][0] == pred  # the decoded argmax round-trips
    res = causal_trace(m, [rec, wrong], samples=1, sites="resid_post")
    assert res.meta["n_kept"] == 1 and res.meta["n_dropped"] == 1 and res.meta["dropped_ids"] == ["f1"]
    assert set(res.table["prompt_id"]) == {"f0"}
    kept_all = causal_trace(m, [rec, wrong], samples=1, sites="resid_post", only_correct=False)
    assert kept_all.meta["n_dropped"] == 0 and set(kept_all.table["prompt_id"]) == {"f0", "f1"}


def test_run_plumbing_arrives_as_shard_inputs(models):
    """subject_std and allow_none_kept are not parameters: a sharded run's prepare passes them out of band."""
    import inspect

    from interp.methods.registry import shard_inputs
    from interp.methods.tracing import subject_embedding_std

    m = models("llama")
    sig = inspect.signature(causal_trace.registry_entry.raw)
    assert "subject_std" not in sig.parameters and "allow_none_kept" not in sig.parameters
    own = causal_trace(m, FACTS[:2], samples=2, target=None, sites="resid_post")
    nu = subject_embedding_std(m, [r["subject"] for r in FACTS[:2]])
    with shard_inputs(subject_std=nu):
        fixed = causal_trace(m, FACTS[:2], samples=2, target=None, sites="resid_post")
    pd.testing.assert_frame_equal(own.table, fixed.table)
    with shard_inputs(subject_std=2 * nu):  # nu is taken from the shard input, not measured again
        doubled = causal_trace(m, FACTS[:2], samples=2, target=None, sites="resid_post")
    assert doubled.meta["noise_std"] == pytest.approx(2 * own.meta["noise_std"], rel=1e-12)
    wrong = [{**r, "target": " zzzz"} for r in FACTS[:2]]
    with shard_inputs(allow_none_kept=True):
        empty = causal_trace(m, wrong, samples=1, sites="resid_post")
    assert empty.table.empty and list(empty.table.columns) == list(causal_trace.registry_entry.schema.columns)
    assert empty.meta["n_kept"] == 0 and empty.meta["dropped_ids"] == ["f0", "f1"]
    assert "subject_std" not in empty.meta["parameters"] and "allow_none_kept" not in empty.meta["parameters"]


def test_target_names_the_scored_field(models):
    m = models("llama")
    facts = [{**r, "answer": r["target"], "target": " zzzz"} for r in FACTS]
    by_field = causal_trace(m, facts, samples=1, sites="resid_post", target="answer", only_correct=False).table
    default = causal_trace(m, FACTS, samples=1, sites="resid_post", only_correct=False).table
    pd.testing.assert_frame_equal(by_field, default)
    ev_field = relation_evidence(m, facts, top_k=5, target="answer", attributes=[" the"]).table
    ev_default = relation_evidence(m, FACTS, top_k=5, attributes=[" the"]).table
    pd.testing.assert_frame_equal(ev_field, ev_default)
    enc = encode(m, FACTS, targets=["target"])
    ids = dict(zip([r["id"] for r in FACTS], enc.targets["target"]))
    assert (default["target_id"] == default["prompt_id"].map(ids)).all()
    assert (ev_default["target_id"] == ev_default["prompt_id"].map(ids)).all()


def test_summary_and_totals(models):
    m = models("qwen2_moe")
    res = causal_trace(m, FACTS, samples=2, target=None, window=2)
    summary = trace_summary(res)
    t = res.table
    for _, row in summary.sample(10, random_state=0).iterrows():
        facts = []
        for pid in t["prompt_id"].unique():
            sel = t[(t["prompt_id"] == pid) & (t["site"] == row["site"]) & (t["severed"] == row["severed"])
                    & (t["role"] == row["role"])
                    & (t["layer"] == row["layer"])]
            if len(sel):
                facts.append(sum(sel["indirect_effect"]) / len(sel))
        assert row["n_facts"] == len(facts)
        assert row["indirect_effect"] == pytest.approx(sum(facts) / len(facts), abs=1e-12)
    totals = trace_totals(res)
    assert len(totals) == 3 * len(FACTS)
    for _, row in totals.iterrows():
        sel = t[(t["prompt_id"] == row["prompt_id"]) & (t["site"] == row["site"]) & (t["severed"] == row["severed"])]
        assert row["best_indirect_effect"] == sel["indirect_effect"].max()
    with pytest.raises(interp.ParameterError, match="Result of interp.causal_trace"):
        trace_summary(interp.Result(pd.DataFrame({"a": [1]}), {"method": "predictions"}))


def test_figures_and_hooks_do_not_leak(models):
    m = models("llama")
    before = hook_snapshot(m)
    res = causal_trace(m, FACTS[:2], samples=1, target=None, window=2, severed="mlp_out")
    ev = relation_evidence(m, FACTS, top_k=5, window=2)
    assert hook_snapshot(m) == before
    fig = res.figure(prompt_id="f1")
    assert len(fig.data) == 4  # resid_post, mlp_out, attn_out, resid_post with mlp_out severed
    assert [a.text for a in fig.layout.annotations][-1] == "resid_post, mlp_out severed"
    n_tokens = res.table[res.table["prompt_id"] == "f1"]["position"].nunique()
    # layers up y (layer 0 at the bottom), tokens along x
    assert len(fig.data[0].z) == m.info.n_layers and len(fig.data[0].z[0]) == n_tokens
    assert list(fig.data[0].y) == list(range(m.info.n_layers))
    assert any(lbl.endswith("*") for lbl in fig.data[0].x)
    roles = res.figure(view="roles")
    assert {tr.name for tr in roles.data} <= set(res.table["role"])
    assert len(ev.figure().data) >= 3
    for f in (fig, roles, ev.figure(), res.figure(value="target_prob")):
        assert not check_convention(f), check_convention(f)
    with pytest.raises(interp.ParameterError, match="not in the result"):
        res.figure(prompt_id="nope")


# --- relation evidence ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2", "olmoe"])
def test_relation_evidence_against_direct_computation(models, arch):
    m = models(arch)
    top_k = 7
    attrs = [" Paris", " yes", " Sure", " the", " a"]
    ev = relation_evidence(m, FACTS, attributes=attrs, top_k=top_k, window=2, batch_size=3).table
    alone = pd.concat([relation_evidence(m, [r], attributes=attrs, top_k=top_k, window=2).table
                       for r in FACTS], ignore_index=True)
    num = ["target_rank", "target_prob", "attribute_rate", "clean_attribute_rate", "clean_target_prob"]
    assert (ev[num] - alone[num]).abs().max().max() < 1e-5  # batched (left padded) == prompt by prompt
    a_ids = {m.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in attrs}
    enc = encode(m, FACTS, targets=["target"])
    n_layers = m.info.n_layers
    for i, rec in enumerate(FACTS):
        ids = torch.tensor([enc.items[i].ids])
        target = enc.targets["target"][i]
        with torch.no_grad():
            logits, cache = m.bridge.run_with_cache(ids)
        rows = ev[ev["prompt_id"] == rec["id"]]
        for layer in range(n_layers):
            lg = interp.decode(m, cache[f"blocks.{layer}.hook_resid_post"][0, -1], output="logits").float()
            row = rows[(rows["analysis"] == "lens") & (rows["layer"] == layer)].iloc[0]
            assert row["target_rank"] == int((lg > lg[target]).sum()) + 1
            assert (row["site"], row["window_start"], row["window_end"]) == ("resid_post", layer, layer + 1)
            top = set(lg.topk(top_k).indices.tolist())
            assert row["attribute_rate"] == len(top & a_ids) / top_k
        final = rows[(rows["analysis"] == "lens") & (rows["layer"] == n_layers - 1)].iloc[0]
        assert final["target_prob"] == pytest.approx(float(logits[0, -1].softmax(-1)[target]), abs=1e-5)
        for site, hook in (("mlp_out", "hook_mlp_out"), ("attn_out", "hook_attn_out")):
            def zero_last(t, hook):
                t = t.clone()
                t[:, -1] = 0
                return t
            with torch.no_grad():
                ko = m.bridge.run_with_hooks(ids, fwd_hooks=[(f"blocks.{ly}.{hook}", zero_last) for ly in (1, 2)])
            p = float(ko[0, -1].softmax(-1)[target])
            row = rows[(rows["analysis"] == "knockout") & (rows["site"] == site) & (rows["layer"] == 1)].iloc[0]
            assert (row["window_start"], row["window_end"]) == (1, 3)  # half-open: blocks 1 and 2 knocked out
            assert row["target_prob"] == pytest.approx(p, abs=1e-5)
            assert row["target_prob_drop"] == pytest.approx(final["target_prob"] - p, abs=1e-5)
            assert row["target_id"] == target and row["target_token"] == m.tokenizer.decode([target])


def test_default_attribute_sets_are_the_targets_of_each_task(models):
    from interp.methods.relation_evidence import attribute_sets

    m = models("llama")
    sets = attribute_sets(m, FACTS)
    enc = encode(m, FACTS, targets=["target"])
    t = enc.targets["target"]
    assert sets[0] == {t[0]} and sets[1] == sets[2] == {t[1], t[2]}
    by_dict = attribute_sets(m, FACTS, {"capital": [" Paris", " Rome"], "qa": [" yes"]})
    assert by_dict[1] == {m.tokenizer(" yes", add_special_tokens=False)["input_ids"][0]}


# --- the dense organism -----------------------------------------------------------------------------------
DENSE = organism_dir("dense")


def _organism_facts(n):
    path = REPO_ROOT / "data" / "factual.jsonl"
    if not path.exists():
        path = CORPUS_DIR / "factual.jsonl"
    if path.exists():
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:  # the corpus is generated from its seed when its files are not written out
        from interp.organisms.corpus import build_factual, build_world

        recs = build_factual(build_world())
    held = [r for r in recs if r.get("split") == "heldout"]
    step = max(1, len(held) // n)
    return held[::step][:n]


@pytest.mark.skipif(not (DENSE / "config.json").exists(), reason="dense organism not shipped yet")
def test_dense_organism_trace_is_exact_and_recorded():
    """The trace on the shipped dense organism equals the per-restoration reference (1e-5) and is recorded.

    Where the effects sit (24 held-out facts, 5 samples, window 2; measured with the README's command): subject
    corruption, total effect 0.76. At the last subject token, restoring the residual gives 0.24 after block 0,
    falling to 0.09 after block 4; MLP windows covering blocks 0-1 there give 0.25, later ones <= 0.05. At the
    last token, the residual gives 0.57 after block 0 and the whole 0.76 from block 4; attention windows over
    blocks 0-1 there give 0.57-0.68, later ones 0.10-0.25. So: an early-MLP site at the last subject token (as in
    ROME, but in the first third of a 6-block model and carrying a third of the effect) and the move to the last
    token in the first two blocks, not in late attention. Relation corruption (total 0.66): everything at the
    last token (0.65 from block 0), subject tokens <= 0.02.
    """
    m = interp.load_model(DENSE, device="cpu")
    facts = _organism_facts(6)
    res = causal_trace(m, facts, samples=3, sites=("resid_post", "mlp_out", "attn_out"))
    assert res.meta["n_kept"] >= 1, "the organism gets none of its held-out facts right"
    kept = res.table["prompt_id"].iloc[0]
    rec = next(r for r in facts if r["id"] == kept)
    noise = torch.randn(2, n_corrupted(m, rec, "subject"), m.info.d_model,
                        generator=torch.Generator().manual_seed(0)) * res.meta["noise_std"]
    one = causal_trace(m, [rec], samples=2, noise=noise, sites=("resid_post", "mlp_out"), window=10)
    _, low, ref = reference_trace(m, rec, noise, corruption="subject", sites=("resid_post", "mlp_out"), window=10)
    got = {(r.site, r.severed, r.layer, r.position): r.target_prob for r in one.table.itertuples()}
    assert max(abs(got[k] - ref[k]) for k in ref) < 1e-5
    summary = trace_summary(res)
    print("\n" + summary.to_string())
    assert math.isfinite(summary["indirect_effect"].sum())


def test_relation_evidence_takes_a_user_metric(models):
    """metric= on relation evidence: a callable equal to p(target) reproduces target_prob on every row (lens rows
    from the decoded residual, knockout rows from the knocked-out output) and clean_target_prob."""
    from interp.methods import metrics

    m = models("llama")
    plain = relation_evidence(m, FACTS, top_k=5, window=2)
    res = relation_evidence(m, FACTS, top_k=5, window=2, metric=lambda lg, t, w: metrics.prob(lg, t))
    t = res.table
    pd.testing.assert_frame_equal(t[list(plain.table.columns)], plain.table)
    assert set(t["analysis"]) == {"lens", "knockout"}
    assert (t["metric_value"] - t["target_prob"]).abs().max() < 1e-6
    assert (t["clean_metric"] - t["clean_target_prob"]).abs().max() < 1e-6
    ranked = relation_evidence(m, FACTS, top_k=5, window=2, metric="rank").table
    assert (ranked["metric_value"] == ranked["target_rank"]).all()
