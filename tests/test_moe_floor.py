"""expert_attribution at its floor (issue 19, point 1): the float32 LPI kernel against a float64 reference, only
the asked levels computed, only routed experts run and decoded, the chunking to ``memory_budget`` invisible in the
results, and the neuron level of a Qwen1.5-MoE-shaped layer within a memory bound (peak RSS of a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import experts
from interp.activations.variants import forward
from interp.methods import moe
from interp.methods.moe import expert_attribution
from interp.model.decode import final_norm_module, norm_scale
from interp.prompts import encode, make_batch

from .helpers import PROMPTS

ROOT = Path(__file__).resolve().parents[1]


def lp64(m, v, sigma, target):
    """logP(target | v) in float64 straight from the weights: frozen final norm (RMS or Layer norm with its weight
    and bias), then the unembedding with its bias."""
    norm = final_norm_module(m)
    head = m.hf_model.get_output_embeddings()
    x = v.double()
    if m.info.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    x = x / sigma.double() * norm.weight.double()
    if getattr(norm, "bias", None) is not None:
        x = x + norm.bias.double()
    logits = x @ head.weight.double().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.double()
    return logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral", "gpt2"])
def test_float32_kernel_keeps_small_and_large_gains(models, arch):
    """Gains from 1e-7 nats to hundreds against float64: the error stays at float32 rounding of the logit shift
    itself (a plain float32 difference of two log-probs would be off by ~1e-6 nats, far above the smallest
    gains); a zero component gives exactly 0; the logsumexp form (gains above log 2, shifts past exp's range)
    is taken and is as exact."""
    m = models(arch)
    b = make_batch(m, encode(m, PROMPTS, targets=["target"]), list(range(len(PROMPTS))))
    final = f"blocks.{m.info.n_layers - 1}.hook_resid_post"
    _, st = forward(m, b, read=["blocks.1.hook_resid_mid", final], read_fn=lambda _n, v: v[:, -1])
    base, sigma, target = st["blocks.1.hook_resid_mid"], norm_scale(m, st[final]), b.targets["target"]
    g = torch.Generator().manual_seed(0)
    directions = torch.randn((len(PROMPTS), 6, m.info.d_model), generator=g)
    scales = torch.tensor([1e-7, 1e-5, 1e-3, 1e-1, 10.0, 1e3])
    comps = torch.cat([torch.zeros_like(directions[:, :1]), directions * scales[:, None] * sigma[:, None]], 1)
    dec = moe._Decoder(m, sigma, target, budget=2**20)
    ours = dec.gains(dec.base(base), comps).double()
    ref = lp64(m, base.double()[:, None] + comps.double(), sigma[:, None], target[:, None].expand(-1, comps.shape[1])) \
        - lp64(m, base, sigma, target)[:, None]  # the sum in float64 too: base + 1e-7 c would round c away
    assert torch.equal(ours[:, 0], torch.zeros(len(PROMPTS), dtype=torch.float64))
    # the size of the logit shift each component causes: its float32 rounding bounds any float32 computation
    shift = (comps.double() / sigma[:, None].double()).norm(dim=-1) * final_norm_module(m).weight.double().abs().max() \
        * m.hf_model.get_output_embeddings().weight.double().norm(dim=-1).max()
    err = (ours - ref).abs()
    assert (err <= 1e-5 * shift + 1e-6 * ref.abs()).all(), (err / shift.clamp_min(1e-30)).max()
    assert (ref[:, 1].abs() < 1e-5).all() and (ref[:, 1].abs() > 0).any()  # tiny gains are in the test
    assert (ref.abs() > 10).any()  # and gains far past log 2 (the logsumexp form)


def test_only_the_asked_levels_and_the_routed_experts_are_computed(models, monkeypatch):
    """levels=("expert",): no neuron pass (neuron_sum NaN), no layer / head decoding; each expert MLP runs on the
    tokens routed to it only, and only the top-k + shared components are decoded; the expert and neuron rows
    equal those of a run with every level."""
    m = models("qwen2_moe")
    full = expert_attribution(m, PROMPTS, top_neurons=5, batch_size=4).table
    hidden_rows, decoded = [], []
    real_hidden, real_shift = experts.expert_hidden, moe._Decoder.shift
    monkeypatch.setattr(experts, "expert_hidden",
                        lambda lw, x, e: hidden_rows.append(x.shape[0]) or real_hidden(lw, x, e))
    monkeypatch.setattr(moe._Decoder, "shift",
                        lambda self, v, scale: decoded.append(v.shape[:-1].numel()) or real_shift(self, v, scale))
    only = expert_attribution(m, PROMPTS, levels=("expert",), batch_size=4).table
    n_moe = sum(experts.is_moe_layer(m, layer) for layer in range(m.info.n_layers))
    k = m.info.top_k
    assert sum(hidden_rows) == len(PROMPTS) * k * n_moe  # one row per (token, routed expert), nothing else
    assert sum(decoded) == len(PROMPTS) * (k + 1) * n_moe  # the top-k + the shared expert per prompt and layer
    assert set(only["level"]) == {"expert", "shared_expert"} and only["neuron_sum"].isna().all()
    ex = full[full["level"].isin(["expert", "shared_expert"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(only.drop(columns="neuron_sum"), ex.drop(columns="neuron_sum"), atol=1e-6)
    unrouted = only[(only["level"] == "expert") & ~only["selected"].astype(bool)]
    assert len(unrouted) and (unrouted["score"] == 0.0).all()
    monkeypatch.undo()
    neurons = expert_attribution(m, PROMPTS, levels=("neuron",), top_neurons=5, batch_size=4).table
    pd.testing.assert_frame_equal(neurons, full[full["level"] == "neuron"].reset_index(drop=True), atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2_moe", "olmoe"])
def test_chunking_to_the_memory_budget_changes_nothing(models, arch):
    """A budget so small that every chunk is one prompt x one component gives the default run's table."""
    m = models(arch)
    wide = expert_attribution(m, PROMPTS, top_neurons=5, batch_size=4).table
    narrow = expert_attribution(m, PROMPTS, top_neurons=5, batch_size=4, memory_budget=1e-3).table
    assert list(narrow["component"]) == list(wide["component"])
    for col in ("score", "routing_weight", "router_prob", "neuron_sum"):
        np.testing.assert_allclose(narrow[col].astype(float), wide[col].astype(float), atol=1e-6)


# --- the memory bound at Qwen1.5-MoE's layer shape --------------------------------------------------------------
QWEN15_LAYER = dict(hidden_size=2048, num_experts=60, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                    num_experts_per_tok=4, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16)
VOCAB, BUDGET_MIB, SLACK_MIB = 1024, 8, 8

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import torch, transformers as tf
    sys.path.insert(0, sys.argv[1])
    import interp
    from interp.methods.moe import expert_attribution
    from interp.model.fixtures import train_tiny_tokenizer
    from transformer_lens.model_bridge import TransformerBridge

    shape, vocab, budgets = json.loads(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    tok = train_tiny_tokenizer()
    cfg = tf.Qwen2MoeConfig(vocab_size=vocab, num_hidden_layers=1, norm_topk_prob=False, tie_word_embeddings=False,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **shape)
    cfg.dtype = torch.float32
    cfg._experts_implementation = "eager"  # HF's per-expert loop: indexes the 3-D weights, never copies them
    path = tempfile.mkdtemp()
    cfg.save_pretrained(path)
    tok.save_pretrained(path)
    with torch.device("meta"):
        hf = tf.Qwen2MoeForCausalLM(cfg)
    hf = hf.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    ex = hf.model.layers[0].mlp.experts
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not name.startswith("model.layers.0.mlp.experts."):
                p.normal_(0, 0.02, generator=g) if p.ndim > 1 else p.fill_(1.0)
        for name in ("gate_up_proj", "down_proj"):  # 60 experts of one random weight: a stride-0 expand
            full = getattr(ex, name).shape
            one = torch.randn(full[1:], generator=g) * 0.02
            setattr(ex, name, torch.nn.Parameter(one[None].expand(full), requires_grad=False))
    m = interp.as_model(TransformerBridge.boot_transformers(path, hf_model=hf, device="cpu"))
    prompts = [{"id": "a", "prompt": "The capital of France is", "target": " Paris"},
               {"id": "b", "prompt": "John went to the", "target": " store"}]
    expert_attribution(m, prompts, levels=("expert",))  # warm: every lazy cache of the model is built

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    out = {}
    for budget in budgets:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        before = status("VmRSS:")
        t = expert_attribution(m, prompts, levels=("neuron",), top_neurons=3, memory_budget=budget).table
        out[str(budget)] = {"peak_mib": (status("VmHWM:") - before) / 2**20, "rows": len(t)}
    print("RESULT " + json.dumps(out))
""")


def test_neuron_level_of_a_qwen15_moe_layer_stays_within_its_memory_budget(tmp_path):
    """One Qwen1.5-MoE-shaped block (60 experts of width 1408, a 5632-wide shared expert, d_model 2048, top-4;
    random weights, the 60 experts sharing one weight tensor expanded with stride 0 so that the test needs no
    2 GB of weights: routing is the random router's own and each routed expert is decoded on its own; vocabulary
    1024), two prompts, neuron level: the peak resident memory growth during the call
    (Linux VmHWM reset before it) is at most the budget + 8 MiB with memory_budget=8. The same call with a
    1024 MiB budget (whole experts at once) grows past that bound, so the measurement sees the chunks; unchunked
    float32 shifts of both prompts' 4 x 1408 + 5632 neurons alone would take 2 x 11264 x 1024 x 4 B = 88 MiB."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    shape = json.dumps(QWEN15_LAYER)
    # glibc: every block from 64 KiB up is its own mmap, unmapped when freed (no dynamic threshold, no free heap
    # kept resident), so the resident set follows the live tensors and freed warm-up memory cannot hide a peak
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), shape, str(VOCAB), json.dumps([BUDGET_MIB, 1024])],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    small, large = res[str(BUDGET_MIB)], res["1024"]
    print(f"\n[qwen1.5-moe layer, neuron level] peak RSS growth: budget {BUDGET_MIB} MiB -> "
          f"{small['peak_mib']:.1f} MiB; budget 1024 MiB -> {large['peak_mib']:.1f} MiB")
    assert small["rows"] == large["rows"] == 2 * 3
    unchunked = 2 * (4 * 1408 + 5632) * VOCAB * 4 / 2**20
    assert BUDGET_MIB + SLACK_MIB < unchunked
    assert small["peak_mib"] <= BUDGET_MIB + SLACK_MIB
    assert large["peak_mib"] > BUDGET_MIB + SLACK_MIB
