"""Context masking and cross-task patching against naive references (one unpadded forward per prompt and per
layer, with the masking / replacement written out here); organism curves at the end (skipped only while
data/organisms/dense is not shipped)."""

from __future__ import annotations

import math

import pytest
import torch

import interp
from interp.activations.hooks import Edit, Intervention, hook_snapshot, hooked
from interp.activations.sites import hook_name
from interp.methods.icot import context_masking, cross_task_patching
from interp.organisms import CORPUS_DIR, organism_dir
from interp.prompts import tokenize

from .helpers import answer_id, ids_of

ARCHS = ("gpt2", "llama", "qwen2_moe", "mixtral")
WORDS = ["red", "blue", "tree", "house", "river", "stone", "cat", "dog"]


def record(i, task, n_shot=2, upper=True):
    xs = [WORDS[(i + 3 * j) % len(WORDS)] for j in range(n_shot + 1)]
    f = str.upper if upper else str.lower
    demos = "\n\n".join(f"Q: {x}\nA: {f(x)}" for x in xs[:-1])
    prompt = (demos + "\n\n" if n_shot else "") + f"Q: {xs[-1]}\nA:"
    return {"id": f"{task}/{i}/{n_shot}", "prompt": prompt, "demonstrations": demos if n_shot else None,
            "task": task, "target": " " + f(xs[-1]), "y_t": " " + xs[-1].upper(), "y_s1": " " + xs[-1],
            "y_s2": " the"}


COMPOSITE = [record(i, "comp", n_shot=1 + i % 2) for i in range(4)]



def run_last(m, ids, edits=()):
    with torch.no_grad(), hooked(m, [Intervention(tuple(edits))]):
        return m.bridge(torch.tensor([ids]))[0, -1].float().log_softmax(-1)


def span_of(m, rec):
    """Token indices of the demonstrations, by character offsets (written independently of interp.prompts)."""
    enc = tokenize(m, rec["prompt"])
    start = rec["prompt"].index(rec["demonstrations"])
    end = start + len(rec["demonstrations"])
    return [i for i, (a, b) in enumerate(enc.offsets) if b > a and a < end and b > start]


def naive_mask_edit(hook, forbidden):
    def apply(t, rows):
        q = t.shape[-2]
        for qi in range(q):
            allowed = [k for k in range(qi + 1) if k not in forbidden]
            if allowed:  # never a fully masked row
                for k in forbidden:
                    if k <= qi:
                        t[0, :, qi, k] = float("-inf")

    return Edit(hook, apply)


@pytest.mark.parametrize("arch", ARCHS)
def test_context_masking_equals_one_forward_per_layer(models, arch):
    m = models[arch]
    n = m.info.n_layers
    res = context_masking(m, COMPOSITE, batch_size=3)
    t = res.table
    assert sorted(t["from_layer"].unique()) == list(range(n + 1))
    moved = 0.0
    for rec in COMPOSITE:
        ids = ids_of(m, rec["prompt"])
        forbidden = span_of(m, rec)
        assert forbidden
        for layer in range(n + 1):
            edits = [naive_mask_edit(hook_name("attn_scores", j), forbidden) for j in range(layer, n)]
            lp = run_last(m, ids, edits)
            for field in ("y_t", "y_s1", "y_s2"):
                tid = answer_id(m, rec["prompt"], rec[field])
                row = t[(t["prompt_id"] == rec["id"]) & (t["from_layer"] == layer) & (t["target_field"] == field)]
                assert len(row) == 1
                assert float(row["target_prob"].iloc[0]) == pytest.approx(float(lp[tid].exp()), abs=1e-5)
                assert bool(row["correct"].iloc[0]) == (int(lp.argmax()) == tid)
                assert int(row["target_id"].iloc[0]) == tid
                assert row["target_token"].iloc[0] == m.tokenizer.decode([tid])
            if layer == 0:
                moved = max(moved, float((lp - run_last(m, ids)).abs().max()))
    assert moved > 1e-3  # masking does change the prediction


def test_context_masking_takes_a_user_metric(models):
    """metric=: each target field is also scored by the user's metric on the same (masked) runs: log p(target)
    as a callable is the log of target_prob; the rank is 1 exactly where the top-1 prediction is the target."""
    from interp.methods import metrics

    m = models("llama")
    plain = context_masking(m, COMPOSITE, from_layers=[0, 2, 3], progress=False).table
    res = context_masking(m, COMPOSITE, from_layers=[0, 2, 3], progress=False,
                          metric=lambda lg, tg, wr: metrics.logprob(lg, tg))
    t = res.table
    assert t[list(plain.columns)].equals(plain)
    assert (t["metric_value"] - t["target_prob"].map(math.log)).abs().max() < 1e-4
    ranked = context_masking(m, COMPOSITE, from_layers=[0, 2, 3], progress=False, metric="rank").table
    assert ((ranked["metric_value"] == 1.0) == ranked["correct"]).all()
    assert res.meta["metric_unit"] == "the metric function's" and ranked.shape[0] == plain.shape[0]


def test_context_masking_figure_and_no_leak(models):
    m = models["llama"]
    before = hook_snapshot(m)
    res = context_masking(m, COMPOSITE, from_layers=[0, 2, 3], target=["y_t", "y_s1"])
    assert hook_snapshot(m) == before
    assert set(res.table["target_field"]) == {"y_t", "y_s1"}
    fig = res.figure()
    assert len(fig.data) == 2 and list(fig.data[0].x) == [0, 2, 3]
    acc = res.table[res.table["target_field"] == "y_t"].groupby("from_layer")["correct"].mean()
    assert list(fig.data[0].y) == pytest.approx(list(acc.values))


def subtask_sets():
    s1 = [record(i, "s1", upper=False) for i in range(4)]  # N-shot only: zero-shot prompts are derived
    s2 = [record(i, "s2") for i in range(3)] + [record(i, "s2", n_shot=0) for i in range(4, 8)]
    return s1 + s2


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_cross_task_patching_equals_one_forward_per_layer(models, arch):
    m = models[arch]
    n = m.info.n_layers
    res = cross_task_patching(m, COMPOSITE, subtask_sets(), n_vectors=3, batch_size=3)
    t = res.table
    # task vectors: the first 3 composite prompts, each alone
    theta = {}
    for layer in range(n):
        vs = []
        for rec in COMPOSITE[:3]:
            with torch.no_grad():
                _, cache = m.bridge.run_with_cache(torch.tensor([ids_of(m, rec["prompt"])]))
            vs.append(cache[hook_name("resid_post", layer)][0, -1])
        theta[layer] = torch.stack(vs).mean(0)
    subs = subtask_sets()
    for s in ("s1", "s2"):
        icl = [r for r in subs if r["task"] == s and r["demonstrations"]]
        zero = [r for r in subs if r["task"] == s and not r["demonstrations"]]
        if not zero:
            zero = [{**r, "prompt": r["prompt"][len(r["demonstrations"]):].lstrip()} for r in icl]
        stats = lambda recs, edits=(): [(int(lp.argmax()) == answer_id(m, r["prompt"], r["target"]),
                                         float(lp[answer_id(m, r["prompt"], r["target"])].exp()))
                                        for r in recs for lp in [run_last(m, ids_of(m, r["prompt"]), edits)]]
        icl_s, zero_s = stats(icl), stats(zero)
        acc_icl = sum(c for c, _ in icl_s) / len(icl_s)
        acc_0 = sum(c for c, _ in zero_s) / len(zero_s)
        for layer in range(n):
            def put(tt, rows, layer=layer):
                tt[0, -1] = theta[layer]

            p_s = stats(zero, [Edit(hook_name("resid_post", layer), put)])
            acc_p = sum(c for c, _ in p_s) / len(p_s)
            row = t[(t["subtask"] == s) & (t["layer"] == layer)]
            assert len(row) == 1
            r = row.iloc[0]
            assert (r["acc_icl"], r["acc_0"], r["acc_patch"]) == pytest.approx((acc_icl, acc_0, acc_p))
            assert r["prob_patch"] == pytest.approx(sum(p for _, p in p_s) / len(p_s), abs=1e-5)
            assert r["prob_0"] == pytest.approx(sum(p for _, p in zero_s) / len(zero_s), abs=1e-5)
            assert r["prob_icl"] == pytest.approx(sum(p for _, p in icl_s) / len(icl_s), abs=1e-5)
            if acc_icl != acc_0:
                assert r["strength"] == pytest.approx((acc_p - acc_0) / (acc_icl - acc_0))
            else:
                assert math.isnan(r["strength"])
            assert r["n_zero"] == len(zero) and r["n_icl"] == len(icl)
    assert (t["prob_patch"] - t["prob_0"]).abs().max() > 1e-4  # the patch does act
    assert len(res.figure().data) == 2


def test_cross_task_stages_come_from_the_runners_directory(models, tmp_path, monkeypatch):
    """The stage directory is a shard input set by the runner (run_resumable), not a parameter: with it the
    task vectors and each subtask are saved, and a rerun reads them instead of computing them again."""
    from interp.methods import icot
    from interp.methods.registry import shard_inputs

    m = models["llama"]
    kw = {"n_vectors": 3, "layers": [0, 2], "batch_size": 3}
    assert "checkpoint_dir" not in icot.cross_task_patching.registry_entry.parameters
    plain = cross_task_patching(m, COMPOSITE, subtask_sets(), **kw)
    with shard_inputs(checkpoint_dir=str(tmp_path)):
        first = cross_task_patching(m, COMPOSITE, subtask_sets(), **kw)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix) == sorted(
        ["task_vectors_000.safetensors", "subtask_000.parquet", "subtask_001.parquet"])
    calls = []
    monkeypatch.setattr(icot, "_target_stats", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(icot, "_mean_last_resid", lambda *a, **k: calls.append(1))
    with shard_inputs(checkpoint_dir=str(tmp_path)):
        again = cross_task_patching(m, COMPOSITE, subtask_sets(), **kw)
    assert calls == []
    for r in (first, again):
        assert r.table.equals(plain.table)


def test_an_error_mid_run_leaves_no_hook(models, monkeypatch):
    from interp.methods import icot

    m = models["llama"]
    before = hook_snapshot(m)

    def failing(*_args):
        def reduce(logits, _store):
            raise RuntimeError("boom")

        return reduce

    monkeypatch.setattr(icot, "_accuracy_reduce", failing)
    with pytest.raises(RuntimeError, match="boom"):
        context_masking(m, COMPOSITE, from_layers=[0, 1])
    with pytest.raises(RuntimeError, match="boom"):
        cross_task_patching(m, COMPOSITE, subtask_sets(), n_vectors=2, layers=[1])
    assert hook_snapshot(m) == before


# --- organism ---------------------------------------------------------------------------------------------
DENSE = organism_dir("dense")
needs_dense = pytest.mark.skipif(not (DENSE / "config.json").exists(), reason="data/organisms/dense is not shipped yet")


def organism_composite(per_task=24, split="heldout"):
    from interp.organisms.corpus import load_jsonl

    recs = [r for r in load_jsonl(CORPUS_DIR / "composite.jsonl") if r.get("split") == split]
    by = {}
    for r in recs:
        by.setdefault((r["subtask_of"], r["kind"], r["n_shot"] > 0), []).append(r)
    return {k: v[:per_task] for k, v in by.items()}


def peak_layer(curve):
    return int(curve.idxmax()) if curve.notna().any() else None


@needs_dense
def test_dense_context_masking_and_cross_task_curves():
    """Measured on the shipped dense organism (24 held-out 5-shot prompts per composite): masking the
    demonstrations from block 0 on gives y_t accuracy 0.00; from block 1 on, 1.00 (0.92-1.00 for
    profession_uppercase) on all six composites: the demonstrations are read in block 0 only. y_s1 is never the
    top-1 answer under masking. Cross-task patching: strength 0.00 for s1 at every layer (patched zero-shot
    accuracy stays at acc_0 = 0); for s2, acc_ICL = acc_0 = 1.00 on the capitalize composites (strength
    undefined, NaN) and strength 0.00 on the uppercase ones. No X-shape (s1 peaking before s2): this organism
    has no layer-separated two-step computation to show.
    """
    m = interp.load_model(DENSE)
    sets = organism_composite()
    composites = sorted({k[0] for k in sets})
    n = m.info.n_layers
    lines = []
    for comp in composites:
        prompts = sets[(comp, "composite", True)]
        cm = context_masking(m, prompts).table
        acc = cm.groupby(["target_field", "from_layer"])["correct"].mean().unstack(0)
        # sanity that can fail: the unmasked row equals the model's own accuracy
        plain = interp.predictions(m, [{**r, "target": r["y_t"]} for r in prompts], top_k=1).table
        assert acc.loc[n, "y_t"] == pytest.approx(float((plain["target_rank"] == 1).mean()))
        # first layer where masking no longer hurts: where each answer becomes decodable without the context
        lines.append(f"{comp}: context masking acc by from_layer y_t={acc['y_t'].round(2).tolist()} "
                     f"y_s1={acc['y_s1'].round(2).tolist()} y_s2={acc['y_s2'].round(2).tolist()}")
        subs = sets[(comp, "s1", True)] + sets[(comp, "s1", False)] + sets[(comp, "s2", True)] + \
            sets[(comp, "s2", False)]
        ct = cross_task_patching(m, prompts, subs, subtask="kind", n_vectors=100).table
        assert len(ct) == 2 * n
        curves = ct.pivot(index="layer", columns="subtask", values="strength")
        p1, p2 = peak_layer(curves["s1"]), peak_layer(curves["s2"])
        accs = ct.groupby("subtask")[["acc_icl", "acc_0"]].first()
        lines.append(f"{comp}: cross-task strength s1={curves['s1'].round(2).tolist()} "
                     f"s2={curves['s2'].round(2).tolist()} peaks s1@{p1} s2@{p2} -> "
                     f"{'X-shape (s1 shallower)' if p1 is not None and p2 is not None and p1 < p2 else 'no X-shape'}; "
                     f"acc_ICL/acc_0 s1={tuple(accs.loc['s1'].round(2))} s2={tuple(accs.loc['s2'].round(2))}")
    print("\n[organism dense]\n" + "\n".join(lines))
