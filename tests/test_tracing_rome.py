"""Causal tracing's ROME options against ROME's recipe written out on the plain Hugging Face model.

ROME (Meng et al. 2022; github.com/kmeng01/rome, ``experiments/causal_trace.py``) feeds GPT-2 ``tokenizer.encode``
ids (GPT-2's tokenizer adds no BOS; the fixture's would, so the reference asks for no special tokens), takes nu as
the std of the token-embedding elements of every record's subject (``collect_embedding_std``), and in every traced
run draws the noise of the corrupted rows from a fresh ``numpy.random.RandomState(1)``, ``randn(samples, subject
tokens, d_model)`` in float64, times 3 nu, added in place to the token embeddings of rows 1.. of a batch whose row 0
is the clean run; a restoration copies row 0's hidden state (block output, or MLP output over the layer window) at
token t into rows 1..; the score is the softmax at the last position averaged over rows 1... The reference below
does exactly that with forward hooks on the HF modules (one forward per restoration), independently of interp's
hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.activations.interventions import rome_noise
from interp.errors import ParameterError
from interp.methods.tracing import causal_trace, subject_embedding_std, window_layers

FACTS = [
    {"id": "a", "prompt": "The capital of France is", "subject": "France", "target": " Paris"},
    {"id": "b", "prompt": "France is a country in", "subject": "France", "target": " Europe"},
    {"id": "c", "prompt": "Mary went to the store and", "subject": "Mary went", "target": " bought"},
]
SAMPLES, WINDOW = 3, 2


def token_range(tok, ids, substring):
    """[start, end) of the tokens covering ``substring`` (the first occurrence), from the decoded tokens."""
    pieces = [tok.decode([i]) for i in ids]
    start_char = "".join(pieces).index(substring)
    end_char = start_char + len(substring)
    pos, first, last = 0, None, None
    for i, p in enumerate(pieces):
        if first is None and pos + len(p) > start_char:
            first = i
        pos += len(p)
        if pos >= end_char:
            last = i + 1
            break
    return first, last


def encode(tok, text):
    """ROME's ``tokenizer.encode`` as GPT-2's tokenizer does it: no special tokens."""
    return tok(text, add_special_tokens=False)["input_ids"]


def rome_nu(hf, tok, subjects):
    with torch.no_grad():
        return float(torch.cat([hf.transformer.wte(torch.tensor(encode(tok, s))) for s in subjects]).std())


def rome_trace(hf, tok, rec, scale):
    """ROME's calculate_hidden_flow for the block outputs and the MLP windows: (high, low, {(site, l, t): p})."""
    ids = encode(tok, rec["prompt"])
    n_layers, T = hf.config.n_layer, len(ids)
    inp = torch.tensor([ids] * (SAMPLES + 1))
    b, e = token_range(tok, ids, rec["subject"])
    with torch.no_grad():
        clean = hf(inp[:1]).logits[0, -1].softmax(-1)
    answer = int(clean.argmax())

    def run(restore):
        rs = np.random.RandomState(1)

        def corrupt(_m, _i, out):
            out[1:, b:e] += scale * torch.from_numpy(rs.randn(out.shape[0] - 1, e - b, out.shape[2]))
            return out

        def restorer(ts):
            def hook(_m, _i, out):
                h = out[0] if isinstance(out, tuple) else out
                for t in ts:
                    h[1:, t] = h[0, t]
                return out
            return hook

        handles = [hf.transformer.wte.register_forward_hook(corrupt)]
        handles += [mod.register_forward_hook(restorer(ts)) for mod, ts in restore]
        try:
            with torch.no_grad():
                logits = hf(inp).logits
        finally:
            for h in handles:
                h.remove()
        return float(logits[1:, -1].softmax(-1).mean(0)[answer])

    cells = {}
    for t in range(T):
        for layer in range(n_layers):
            cells[("resid_post", layer, t)] = run([(hf.transformer.h[layer], [t])])
            lo, hi = window_layers(layer, WINDOW, n_layers)
            cells[("mlp_out", layer, t)] = run([(hf.transformer.h[j].mlp, [t]) for j in range(lo, hi)])
    return float(clean[answer]), run([]), cells


def test_rome_noise_is_numpy_randomstate_in_float64():
    got = rome_noise(3, 2, 5, scale=0.7)
    want = torch.from_numpy(np.random.RandomState(1).randn(3, 2, 5)) * 0.7
    assert got.dtype == torch.float64 and torch.equal(got, want)
    assert torch.equal(rome_noise(3, 2, 5, scale=0.7, seed=4),
                       torch.from_numpy(np.random.RandomState(4).randn(3, 2, 5)) * 0.7)


def test_rome_options_reproduce_rome_on_gpt2(tiny_model_dirs, hf_models):
    """prepend_bos=False, noise_scale="records", noise_draws="rome" and the model's own top-1 token (ROME's answer)
    give ROME's nu, low, high and every restored probability of the block outputs and MLP windows."""
    m = interp.load_model(tiny_model_dirs["gpt2"], prepend_bos=False)
    hf, tok = hf_models("gpt2"), m.tokenizer
    nu = rome_nu(hf, tok, [r["subject"] for r in FACTS])
    assert abs(nu - rome_nu(hf, tok, ["France", "Mary went"])) > 1e-6 * nu  # records and subjects differ here
    assert subject_embedding_std(m, [r["subject"] for r in FACTS], weighting="records") == pytest.approx(nu,
                                                                                                         rel=1e-6)
    res = causal_trace(m, FACTS, target=None, samples=SAMPLES, window=WINDOW, sites=("resid_post", "mlp_out"),
                       noise_scale="records", noise_draws="rome")
    assert res.meta["noise_std"] == pytest.approx(3 * nu, rel=1e-6) and res.meta["prepend_bos"] is False
    worst = 0.0
    for rec in FACTS:
        high, low, cells = rome_trace(hf, tok, rec, res.meta["noise_std"])
        rows = res.table[res.table["prompt_id"] == rec["id"]]
        assert len(rows) == len(cells)
        worst = max(worst, abs(rows["clean_target_prob"].iloc[0] - high), abs(rows["corrupted_target_prob"].iloc[0]
                                                                             - low))
        for r in rows.itertuples():
            worst = max(worst, abs(r.target_prob - cells[(r.site, r.layer, r.position)]))
    print(f"\nROME's recipe on GPT-2: {len(res.table)} cells, max abs diff in probability {worst:.2e}")
    assert worst < 1e-5, worst
    # the defaults draw other noise: the same table is not what the ROME options give
    default = causal_trace(m, FACTS, target=None, samples=SAMPLES, window=WINDOW, sites=("resid_post", "mlp_out"))
    assert (default.table["target_prob"] - res.table["target_prob"]).abs().max() > 1e-4


def test_noise_options_against_explicit_tensors(models):
    """noise_scale as a number is nu itself; noise_draws="rome" equals passing ROME's draws as explicit tensors,
    and "torch" equals the seeded torch generator's (the default, unchanged)."""
    m = models("llama")
    facts = [{**r, "id": r["id"]} for r in FACTS]
    kw = {"target": None, "samples": 2, "window": 2, "sites": ("resid_post",)}
    from interp.prompts import encode

    enc = encode(m, facts, spans=["subject"])
    n_tok = [e - s for s, e in enc.spans["subject"]]
    d = m.info.d_model
    rome = causal_trace(m, facts, noise=2.0, noise_scale=0.25, noise_draws="rome", seed=2, **kw)
    assert rome.meta["noise_std"] == 0.5
    explicit = [torch.from_numpy(np.random.RandomState(3).randn(2, n, d)) * 0.5 for n in n_tok]
    same = causal_trace(m, facts, noise=explicit, **kw)
    assert (rome.table["target_prob"] - same.table["target_prob"]).abs().max() == 0.0
    torch_draws = causal_trace(m, facts, noise=2.0, noise_scale=0.25, **kw)
    explicit = [torch.randn(2, n, d, generator=torch.Generator().manual_seed(0)) * 0.5 for n in n_tok]
    assert (torch_draws.table["target_prob"] - causal_trace(m, facts, noise=explicit, **kw).table["target_prob"]
            ).abs().max() == 0.0
    with pytest.raises(ParameterError, match="explicit"):
        causal_trace(m, facts, noise=explicit, noise_draws="rome", **kw)


def test_sharded_records_scale_is_fixed_over_the_whole_set(tiny_model_dirs, tmp_path):
    """noise_scale="records" (subjects that repeat across shards count per record) with ROME's draws: the sharded
    run equals the whole run (ShardPlan's prepare measures nu over the whole set)."""
    from tests.test_sharded_methods import FACTS as MANY
    from tests.test_sharded_methods import assert_same, sharded

    m = interp.load_model(tiny_model_dirs["llama"], dtype="float64")
    kw = {"sites": ("resid_post",), "samples": 2, "window": 2, "target": None, "noise_scale": "records",
          "noise_draws": "rome"}
    whole = causal_trace(m, MANY, **kw)
    subjects = [r["subject"] for r in MANY]
    assert len(set(subjects)) < len(subjects)
    assert whole.meta["noise_std"] == pytest.approx(3 * subject_embedding_std(m, subjects, weighting="records"))
    assert whole.meta["noise_std"] != pytest.approx(3 * subject_embedding_std(m, subjects))
    part = sharded("causal_trace", m, MANY, tmp_path, **kw)
    assert_same(part, whole, "n_kept", "noise_std")
