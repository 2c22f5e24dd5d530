"""Logit lens and tuned lens: every layer (and sublayer output) in both normalisations against a computation made
directly on the Hugging Face model; the last layer equals the model's logits; batched = prompt by prompt; zero
translators give exactly the logit lens; training reduces KL; aggregates (also of a result read back or merged from
shards), figures, hooks, save / load; and the dense organism (skipped only while data/organisms/dense/config.json
is absent). KL, entropy and cross-entropy are in nats."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import interp
from interp.methods.lens import (
    LensResult,
    TunedLens,
    lens_curves,
    lens_heatmap,
    lens_summary,
    lens_takeover,
    logit_lens,
    train_tuned_lens,
)
from interp.methods.lens import reading as lens_reading
from interp.prompts import encode

from .helpers import PROMPTS

ARCHS = ["gpt2", "llama", "gemma2", "qwen2_moe"]  # LayerNorm; GQA; softcap + (1 + w) norm; MoE with shared expert
TWO_TARGETS = [{**p, "other": t} for p, t in zip(PROMPTS, [" is", " the", " John", " Paris"])]
NATS_ATOL = 1e-5 * math.log(2)  # the 1e-5 bits bound these checks had in bits, in nats


# --- a direct reference on the plain Hugging Face model ---------------------------------------------------------
def _hf_parts(hf, arch):
    dec = hf.get_decoder()
    layers = dec.layers if hasattr(dec, "layers") else dec.h
    final_norm = dec.norm if hasattr(dec, "norm") else dec.ln_f
    return layers, final_norm


def hf_vectors(hf, arch: str, ids: list[int]) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
    """({(site, layer): vectors [T, d_model]}, HF logits [T, vocab]) of one unpadded prompt on the HF model:
    residuals from output_hidden_states (the last one from the final norm's input, since HF norms it), sublayer
    outputs from forward hooks on its modules."""
    layers, final_norm = _hf_parts(hf, arch)
    got: dict[str, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(layers):
        if arch == "gemma2":  # gemma2 norms each sublayer's output before adding it
            mods = {"attn_out": block.post_attention_layernorm, "mlp_out": block.post_feedforward_layernorm}
        else:
            mods = {"attn_out": block.self_attn if hasattr(block, "self_attn") else block.attn, "mlp_out": block.mlp}
        for site, mod in mods.items():
            handles.append(mod.register_forward_hook(
                lambda _m, _i, o, key=f"{site}.{layer}": got.__setitem__(key, o[0] if isinstance(o, tuple) else o)))
    handles.append(final_norm.register_forward_pre_hook(lambda _m, i: got.__setitem__("final_in", i[0])))
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    n = len(layers)
    hidden = out.hidden_states
    vectors = {("resid_pre", 0): hidden[0][0]}
    for layer in range(n):
        vectors[("resid_post", layer)] = hidden[layer + 1][0] if layer < n - 1 else got["final_in"][0]
        if layer > 0:
            vectors[("resid_pre", layer)] = vectors[("resid_post", layer - 1)]
        vectors[("attn_out", layer)] = got[f"attn_out.{layer}"][0]
        vectors[("mlp_out", layer)] = got[f"mlp_out.{layer}"][0]
    return vectors, out.logits[0]


def hf_decode(hf, arch: str, h: torch.Tensor, norm: str, x_final: torch.Tensor) -> torch.Tensor:
    """Logits of vectors h on the HF model: its final norm (recompute) or, frozen, the norm written out from its
    parameters with the scale of the real final residual x_final; its lm_head and soft-cap."""
    _, final_norm = _hf_parts(hf, arch)
    head = hf.get_output_embeddings()
    cap = getattr(hf.config, "final_logit_softcapping", None)

    def frozen_norm(h):
        if arch == "gpt2":
            sigma = torch.sqrt(x_final.var(-1, unbiased=False, keepdim=True) + final_norm.eps)
            return (h - h.mean(-1, keepdim=True)) / sigma * final_norm.weight + final_norm.bias
        eps = getattr(final_norm, "variance_epsilon", None) or final_norm.eps
        sigma = torch.sqrt(x_final.pow(2).mean(-1, keepdim=True) + eps)
        weight = 1 + final_norm.weight if arch == "gemma2" else final_norm.weight
        return h / sigma * weight

    with torch.no_grad():
        logits = head(final_norm(h) if norm == "recompute" else frozen_norm(h))
    return torch.tanh(logits / cap) * cap if cap else logits


def hf_reference(hf, arch: str, ids: list[int], norm: str) -> dict:
    """{(site, layer): logits [T, vocab], "final": the model's logits}, all computed on the HF model."""
    vectors, final = hf_vectors(hf, arch, ids)
    refs = {key: hf_decode(hf, arch, h, norm, vectors[("resid_post", len(_hf_parts(hf, arch)[0]) - 1)])
            for key, h in vectors.items()}
    refs["final"] = final
    return refs


def _check_rows(rows: pd.DataFrame, logits: torch.Tensor, final: torch.Tensor, target: int, top_k: int,
                ids: list[int]):
    """The table's rows of one (site, layer) of one prompt (token ids ``ids``) against reference logits
    [T, vocab] (rows sorted by position)."""
    logits, final = logits.float(), final.float()
    logp = logits.log_softmax(-1)
    pos = torch.tensor(rows["position"].to_numpy())
    lp, lt = logp[pos], logits[pos]
    np.testing.assert_allclose(rows["target_logit"], lt[:, target], atol=1e-5, rtol=0)
    np.testing.assert_allclose(rows["target_prob"], lp[:, target].exp(), atol=1e-5, rtol=0)
    assert (rows["target_rank"].to_numpy() == ((lt > lt[:, target:target + 1]).sum(-1) + 1).numpy()).all()
    lpf = final.log_softmax(-1)[pos]
    kl = (lpf.exp() * (lpf - lp)).sum(-1)
    np.testing.assert_allclose(rows["kl"], kl, atol=NATS_ATOL, rtol=0)
    ent = -(lp.exp() * lp).sum(-1)
    np.testing.assert_allclose(rows["entropy"], ent, atol=NATS_ATOL, rtol=0)
    nxt = torch.tensor([*ids[1:], target])[pos]  # the actual next token: the next prompt token, then the target
    np.testing.assert_allclose(rows["cross_entropy"], -lp.gather(1, nxt[:, None])[:, 0], atol=NATS_ATOL, rtol=0)
    top = lp.topk(top_k, dim=-1)
    assert [json.loads(c) for c in rows["top_ids"]] == top.indices.tolist()  # the top_k tokens, in order
    assert (rows["predicted_id"].to_numpy() == top.indices[:, 0].numpy()).all()
    np.testing.assert_allclose(rows["predicted_prob"], top.values[:, 0].exp(), atol=1e-5, rtol=0)
    assert (rows["target_id"] == target).all() and (rows["target_rr"] == 1.0 / rows["target_rank"]).all()
    assert (rows["correct"] == (rows["predicted_id"] == target)).all()


@pytest.mark.parametrize("norm", ["recompute", "frozen"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_site_and_layer_matches_a_direct_hf_computation(models, hf_models, arch, norm):
    m, hf = models[arch], hf_models(arch)
    sites = ["resid_pre", "attn_out", "mlp_out", "resid_post"]
    res = logit_lens(m, PROMPTS, sites=sites, norm=norm, positions="all", top_k=5, batch_size=4)
    enc = encode(m, PROMPTS, targets=["target"])
    assert len(res.table) == sum(len(e) for e in enc.items) * len(sites) * m.info.n_layers
    for i, rec in enumerate(PROMPTS):
        refs = hf_reference(hf, arch, enc.items[i].ids, norm)
        mine = res.table[res.table["prompt_id"] == rec["id"]]
        final = refs.pop("final")
        for (site, layer), logits in refs.items():
            rows = mine[(mine["site"] == site) & (mine["layer"] == layer)].sort_values("position")
            assert len(rows) == len(enc.items[i])
            _check_rows(rows, logits, final, enc.targets["target"][i], 5, enc.items[i].ids)


@pytest.mark.parametrize("norm", ["recompute", "frozen"])
@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_is_the_models_own_distribution(models, arch, norm):
    m = models[arch]
    res = logit_lens(m, PROMPTS, norm=norm, top_k=3)
    enc = encode(m, PROMPTS, targets=["target"])
    last = res.table[res.table["layer"] == m.info.n_layers - 1].set_index("prompt_id")
    for batch in interp.batches(m, enc, 4):
        logits, _ = interp.forward(m, batch)  # the bridge's own logits (stopped at the final norm)
        logp = logits.float().log_softmax(-1)
        for r, idx in enumerate(batch.indices):
            row = last.loc[PROMPTS[idx]["id"]]
            t = int(batch.targets["target"][r])
            assert row["target_logit"] == pytest.approx(float(logits[r, t]), abs=1e-5)
            assert row["predicted_id"] == int(logp[r].argmax())
            assert row["predicted_prob"] == pytest.approx(float(logp[r].max().exp()), abs=1e-5)
            assert abs(row["kl"]) < NATS_ATOL


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_prompt_by_prompt(models, arch):
    m = models[arch]
    for norm in ("recompute", "frozen"):
        kw = {"sites": "sublayers", "norm": norm, "positions": "all", "target": ("target", "other"), "top_k": 4}
        batched = logit_lens(m, TWO_TARGETS, batch_size=4, **kw).table
        alone = pd.concat([logit_lens(m, [p], **kw).table for p in TWO_TARGETS], ignore_index=True)
        pd.testing.assert_frame_equal(batched, alone, check_exact=False, atol=1e-5, rtol=0)
        assert len(batched) == len(alone) > 0


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])  # no norm bias, no soft-cap: frozen decoding is linear
def test_frozen_sublayer_logits_add_up_to_the_residual_change(models, arch):
    m = models[arch]
    t = logit_lens(m, PROMPTS, sites=["resid_pre", "attn_out", "mlp_out", "resid_post"], norm="frozen",
                   positions="all").table
    w = t.pivot_table(index=["prompt_id", "layer", "position"], columns="site", values="target_logit")
    np.testing.assert_allclose(w["attn_out"] + w["mlp_out"], w["resid_post"] - w["resid_pre"], atol=1e-4, rtol=0)


def test_positions_last_equals_the_last_row_of_positions_all(models):
    m = models["gemma2"]
    last = logit_lens(m, PROMPTS, sites="sublayers", top_k=3).table
    every = logit_lens(m, PROMPTS, sites="sublayers", positions="all", top_k=3).table
    pd.testing.assert_frame_equal(last, every[every["is_last"]].reset_index(drop=True), check_exact=False,
                                  atol=1e-5, rtol=0)
    assert last["is_last"].all() and not every["is_last"].all()


def test_a_user_metric_scores_every_decoded_row(models):
    """metric=: each row's decoded logits are also scored by the user's metric: log p(target) as a callable is the
    log of target_prob, and the rank is target_rank, at every site, layer and position."""
    from interp.methods import metrics

    m = models("llama")
    plain = logit_lens(m, PROMPTS, positions="all", sites="sublayers").table
    res = logit_lens(m, PROMPTS, positions="all", sites="sublayers", metric=lambda lg, t, w: metrics.logprob(lg, t))
    t = res.table
    pd.testing.assert_frame_equal(t[list(plain.columns)], plain)
    assert (t["metric_value"] - np.log(t["target_prob"])).abs().max() < 1e-4
    ranked = logit_lens(m, PROMPTS, positions="all", metric="rank").table
    assert (ranked["metric_value"] == ranked["target_rank"]).all()
    assert res.meta["metric_unit"] == "the metric function's"


def test_a_field_span_or_a_list_of_positions_are_those_rows_of_positions_all(models):
    m = models["llama"]
    every = logit_lens(m, PROMPTS, sites="sublayers", positions="all", top_k=3).table
    enc = encode(m, PROMPTS, spans=["subject"])
    span = logit_lens(m, PROMPTS, sites="sublayers", positions="subject", top_k=3).table
    want = pd.concat([every[(every["prompt_id"] == rec["id"]) & every["position"].between(s, e - 1)]
                      for rec, (s, e) in zip(PROMPTS, enc.spans["subject"])])
    pd.testing.assert_frame_equal(span, want.reset_index(drop=True), check_exact=False, atol=1e-5, rtol=0)
    listed = logit_lens(m, PROMPTS, sites="sublayers", positions=[1, 0], top_k=3).table
    want = every[every["position"].isin([0, 1])].reset_index(drop=True)
    pd.testing.assert_frame_equal(listed, want, check_exact=False, atol=1e-5, rtol=0)
    assert set(listed["position"]) == {0, 1} and len(span) > 0


def test_hooks_never_leak(models, monkeypatch):
    m = models["llama"]
    before = interp.hook_snapshot(m)
    logit_lens(m, PROMPTS, sites="sublayers", positions="all")
    assert interp.hook_snapshot(m) == before
    real = lens_reading.forward

    def failing(*args, read_fn=None, **kw):
        def boom(_name, _value):
            raise RuntimeError("boom inside the forward")
        return real(*args, read_fn=boom, **kw)

    monkeypatch.setattr(lens_reading, "forward", failing)
    with pytest.raises(RuntimeError, match="boom"):
        logit_lens(m, PROMPTS)
    with pytest.raises(RuntimeError, match="boom"):
        train_tuned_lens(m, ["a b c d"], steps=1, progress=False)
    assert interp.hook_snapshot(m) == before


# --- aggregates -------------------------------------------------------------------------------------------------
def test_summary_equals_a_naive_loop(models):
    m = models["qwen2_moe"]
    res = logit_lens(m, TWO_TARGETS, target=("target", "other"), positions="all", top_k=2)
    assert isinstance(res, LensResult)
    summ = res.aggregate().table
    t = res.table
    for layer in range(m.info.n_layers):
        for f in ("target", "other"):
            acc, rr, n = 0.0, 0.0, 0
            for rec in t.to_dict(orient="records"):
                if rec["layer"] == layer and rec["is_last"] and rec["target_field"] == f:
                    acc += rec["predicted_id"] == rec["target_id"]
                    rr += 1.0 / rec["target_rank"]
                    n += 1
            row = summ[(summ["layer"] == layer) & (summ["target_field"] == f)].iloc[0]
            assert row["n"] == n == len(TWO_TARGETS)
            assert row["accuracy"] == pytest.approx(acc / n) and row["mrr"] == pytest.approx(rr / n)
    every = lens_summary(res, positions="all").table
    assert set(every["n"]) == {len(t) // (m.info.n_layers * 2)}


def test_a_result_read_back_or_merged_from_shards_keeps_aggregate(models, tmp_path):
    m = models["llama"]
    res = logit_lens(m, TWO_TARGETS, sites="sublayers", norm="frozen", target=["target", "other"])
    want = res.aggregate().table
    for ext in ("parquet", "csv", "json"):
        back = interp.Result.read(getattr(res, f"to_{ext}")(tmp_path / f"lens.{ext}"))
        assert isinstance(back, LensResult), ext
        pd.testing.assert_frame_equal(back.table, res.table, check_exact=True)
        pd.testing.assert_frame_equal(back.aggregate().table, want, check_exact=True)
        pd.testing.assert_frame_equal(lens_summary(back, positions="all").table,
                                      res.aggregate(positions="all").table, check_exact=True)
    merged = interp.run_resumable("logit_lens", m, TWO_TARGETS, tmp_path / "run", shard_size=3, progress=False,
                                  sites="sublayers", norm="frozen", target=["target", "other"], batch_size=1)
    assert isinstance(merged, LensResult)
    alone = logit_lens(m, TWO_TARGETS, sites="sublayers", norm="frozen", target=["target", "other"], batch_size=1)
    pd.testing.assert_frame_equal(merged.table, alone.table, check_exact=False, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(merged.aggregate().table, alone.aggregate().table, check_exact=False, atol=1e-6,
                                  rtol=0)


def test_takeover_reads_the_constructed_curves():
    layers = list(range(6))
    early = [0.1, 0.5, 0.7, 0.4, 0.2, 0.1]  # peaks at layer 2
    late = [0.0, 0.1, 0.2, 0.5, 0.8, 0.9]  # above from layer 3 on
    rows = [{"lens": "logit", "norm": "recompute", "site": "resid_post", "layer": la, "depth": la + 1.0,
             "target_field": f, "mean_target_prob": v}
            for f, vals in (("y_s1", early), ("y_t", late)) for la, v in zip(layers, vals)]
    got = lens_takeover(pd.DataFrame(rows)).iloc[0]
    assert got["early_peak_layer"] == int(np.argmax(early))
    assert got["takeover_layer"] == next(i for i in layers if all(a > b for a, b in zip(late[i:], early[i:])))
    never = [dict(r, mean_target_prob=0.0) if r["target_field"] == "y_t" else r for r in rows]
    assert lens_takeover(pd.DataFrame(never)).iloc[0]["takeover_layer"] == -1


# --- figures ----------------------------------------------------------------------------------------------------
def test_heatmap_cells_are_the_top_tokens_and_their_probabilities(models, tmp_path):
    m = models["gpt2"]
    res = logit_lens(m, PROMPTS, positions="all", top_k=3)
    fig = res.figure()  # positions="all": the heatmap of the first prompt
    heat = fig.data[0]
    t = res.table[res.table["prompt_id"] == PROMPTS[0]["id"]]
    n_pos = t["position"].nunique()
    assert np.asarray(heat.z).shape == (m.info.n_layers, n_pos)
    for rec in t.to_dict(orient="records"):
        assert heat.z[rec["layer"]][rec["position"]] == pytest.approx(rec["predicted_prob"])
        assert repr(json.loads(rec["top_tokens"])[2]) in heat.customdata[rec["layer"]][rec["position"]]
    by_target = lens_heatmap(res, PROMPTS[1]["id"], color="target")
    t1 = res.table[res.table["prompt_id"] == PROMPTS[1]["id"]]
    from interp.methods.lens.figures import MAX_COLUMNS

    first_shown = sorted(t1["position"].unique())[-MAX_COLUMNS:][0]  # the heatmap shows the last MAX_COLUMNS
    expected = t1[(t1.layer == 0) & (t1.position == first_shown)]["target_prob"].iloc[0]
    assert by_target.data[0].z[0][0] == pytest.approx(expected)
    assert interp.figures.viz.save_html(fig, tmp_path / "lens.html").stat().st_size > 1000


def test_curves_plot_the_summary_for_each_lens_and_target(models):
    m = models["llama"]
    logit = logit_lens(m, TWO_TARGETS, target=("target", "other"))
    tuned = logit_lens(m, TWO_TARGETS, target=("target", "other"), lens=TunedLens.identity(m))
    tuned.table["lens"] = "tuned"
    fig = lens_curves(logit, tuned, metrics=("mean_target_prob", "accuracy"))
    assert len(fig.data) == 2 * 2 * 2  # metrics x lenses x targets
    summ = logit.aggregate().table
    trace = next(d for d in fig.data if d.name == "other · logit (recompute)" and d.xaxis == "x2")
    want = summ[summ["target_field"] == "other"].sort_values("layer")["accuracy"].to_numpy()
    np.testing.assert_allclose(trace.y, want)
    assert logit.figure().data  # the registered figure: curves for positions="last"


# --- tuned lens -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_zero_translators_give_exactly_the_logit_lens(models, arch):
    m = models[arch]
    for norm in ("recompute", "frozen"):
        plain = logit_lens(m, PROMPTS, norm=norm, positions="all").table
        tuned = logit_lens(m, PROMPTS, norm=norm, positions="all", lens=TunedLens.identity(m)).table
        assert (tuned["lens"] == "tuned").all()
        pd.testing.assert_frame_equal(tuned.drop(columns="lens"), plain.drop(columns="lens"), check_exact=True)


@pytest.mark.parametrize("arch", ["gpt2", "gemma2"])
def test_a_translator_is_applied_as_h_plus_Ah_plus_b(models, hf_models, arch):
    m, hf = models[arch], hf_models(arch)
    lens = TunedLens.identity(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.05)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * 0.1)
    res = logit_lens(m, PROMPTS, positions="all", lens=lens, top_k=3).table
    enc = encode(m, PROMPTS, targets=["target"])
    for i, rec in enumerate(PROMPTS):
        vectors, final = hf_vectors(hf, arch, enc.items[i].ids)
        for layer in range(m.info.n_layers):
            h = vectors[("resid_post", layer)]
            with torch.no_grad():
                translated = h + h @ lens.weight[layer].T + lens.bias[layer]
            logits = hf_decode(hf, arch, translated, "recompute", None)
            rows = res[(res["prompt_id"] == rec["id"]) & (res["layer"] == layer)].sort_values("position")
            _check_rows(rows, logits, final, enc.targets["target"][i], 3, enc.items[i].ids)
        assert not torch.allclose(logits, hf_decode(hf, arch, h, "recompute", None))  # the translator did act


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = ("the capital of France is Paris and Mary went to the store John was green Moscow David old long "
             "bread Sure yes").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 16))) for _ in range(n)]


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])
def test_training_lowers_held_out_kl_at_every_layer_but_the_last(models, arch, tmp_path):
    m = models[arch]
    train, held = _texts(0, 40), _texts(1, 16)
    before = interp.hook_snapshot(m)
    lens = train_tuned_lens(m, train, steps=40, tokens_per_step=128, progress=False)
    assert interp.hook_snapshot(m) == before
    assert all(not p.requires_grad for p in m.hf_model.get_output_embeddings().parameters())
    hist = lens.info["history"]
    assert len(hist) == 40 and hist[-1] < hist[0]
    plain = lens_summary(logit_lens(m, held, positions="all"), positions="all").table
    tuned = lens_summary(logit_lens(m, held, positions="all", lens=lens), positions="all").table
    n = m.info.n_layers
    kl_plain, kl_tuned = plain["kl"].to_numpy(), tuned["kl"].to_numpy()
    print(f"\n[{arch}] held-out KL nats per layer, logit {np.round(kl_plain, 4)} tuned {np.round(kl_tuned, 4)}")
    assert (kl_tuned[: n - 1] < kl_plain[: n - 1]).all()
    assert abs(kl_tuned[n - 1]) < NATS_ATOL  # the last layer's translator stays the identity (its KL gradient is 0)
    # save / load gives the same lens and the same table
    back = TunedLens.load(lens.save(tmp_path / "lens"))
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert back.info == lens.info
    pd.testing.assert_frame_equal(logit_lens(m, held[:3], lens=back).table, logit_lens(m, held[:3], lens=lens).table,
                                  check_exact=True)


# --- the dense organism -----------------------------------------------------------------------------------------
ORGANISM = Path(__file__).resolve().parents[1] / "data" / "organisms" / "dense"
MEASURE = Path(__file__).resolve().parents[1] / "docs" / "measure_lens.py"


@pytest.mark.slow
def test_dense_organism_lens_reading():
    """Measured on the shipped dense organism by docs/measure_lens.py (120 held-out 5-shot composite prompts):
    y_t is top-1 at 24 % of prompts after block 0, 75 % after block 1, 98 % after block 4 (logit lens, recomputed
    norm; frozen gives the same accuracies); y_s1 is top-1 at no layer (mean probability peaks after block 1 at
    0.004, recomputed, or 0.005, frozen). No internal chain of thought: the answer appears directly. Tuned lens
    (250 steps): held-out KL to the final distribution lower than the logit lens's at every layer but the last
    (0.70 vs 1.27 nats after block 0; the README has them all), as asserted; the logit lens's last layer is the
    model's own distribution in both normalisations.
    """
    if not (ORGANISM / "config.json").exists():
        pytest.skip("data/organisms/dense/config.json is absent: the dense organism is not shipped yet")
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure_lens", MEASURE)
    measure_lens = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_lens)
    out = measure_lens.measure()
    n = out["model"].info.n_layers
    for r in (out["recompute"], out["frozen"]):  # the last layer is the model's own distribution in both modes
        assert r.table[r.table["layer"] == n - 1]["kl"].abs().max() < NATS_ATOL
    summary = out["summary"]
    y_s1 = summary[summary["target_field"] == "y_s1"]
    y_t = summary[(summary["target_field"] == "y_t") & (summary["layer"] == n - 1)]
    print(summary[["norm", "layer", "target_field", "accuracy", "mrr", "mean_target_prob", "kl"]].to_string())
    print(lens_takeover(summary).to_string())
    kp, kt = out["kl_logit"], out["kl_tuned"]
    print(f"held-out KL nats (all positions): logit {np.round(kp, 3)} tuned {np.round(kt, 3)}")
    assert (y_t["accuracy"] > 0.9).all() and (y_s1["accuracy"] == 0).all()
    assert (kt[: n - 1] < kp[: n - 1]).all()
