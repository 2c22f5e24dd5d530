"""capture(): selective hooks, positions, streaming to disk, per-head outputs."""

import pytest
import torch

import interp
from interp.errors import HookNameError
from interp.fixtures import ARCHITECTURES, MOE_ARCHITECTURES
from interp.prompts import encode

from .helpers import PROMPTS, single_run


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_last_and_span_positions_match_single_runs(models, arch):
    m = models[arch]
    names = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z"]
    last = interp.capture(m, PROMPTS, names, positions="last", batch_size=3, progress=False)
    subj = interp.capture(m, PROMPTS, names, positions="subject", batch_size=3, progress=False)
    enc = encode(m, PROMPTS, spans=["subject"])
    for i, (item, (s, e)) in enumerate(zip(enc.items, enc.spans["subject"])):
        ref = single_run(m, item.ids, names)
        for n in names:
            torch.testing.assert_close(last[n][i], ref[n][-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(subj.get(n, i), ref[n][s:e], atol=1e-5, rtol=0)
    assert last["blocks.2.attn.hook_z"].shape == (len(PROMPTS), m.info.n_heads, m.info.d_head)


def test_only_requested_hooks_are_cached(models):
    m = models["llama"]
    cap = interp.capture(m, PROMPTS, lambda n: n.endswith("hook_z"), progress=False)
    assert cap.keys() == [f"blocks.{i}.attn.hook_z" for i in range(3)]
    with pytest.raises(HookNameError, match="blocks.0.hook_resid_post"):
        cap["blocks.0.hook_resid_post"]


def test_streaming_to_disk_reopens_identically(models, tmp_path):
    m = models["qwen2"]
    names = ["blocks.0.hook_resid_post", "blocks.2.attn.hook_z"]
    mem = interp.capture(m, PROMPTS, names, positions="all", batch_size=2, progress=False)
    disk = interp.capture(m, PROMPTS, names, positions="all", batch_size=2, to_dir=tmp_path / "cap", progress=False)
    assert len(list((tmp_path / "cap").glob("shard_*.safetensors"))) == 2
    again = interp.Capture.open(tmp_path / "cap")
    for n in names:
        assert torch.equal(mem[n], disk[n]) and torch.equal(mem[n], again[n])
    assert again.lengths == mem.lengths and again.prompt_ids == [r["id"] for r in PROMPTS]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "qwen2_moe"])
def test_head_outputs_sum_to_attn_out(models, arch):
    m = models[arch]
    layer = 1
    out_hook = f"blocks.{layer}.attn.hook_out"  # o_proj output (gemma2 norms it before hook_attn_out)
    cap = interp.capture(m, PROMPTS, [f"blocks.{layer}.attn.hook_z", out_hook],
                         positions="all", progress=False)
    per_head = cap.head_outputs(m, layer)  # [n, pos, H, d_model]
    b_o = m.bridge.blocks[layer].attn.b_O
    total = per_head.sum(dim=-2) + (b_o if b_o is not None else 0)
    for i in range(len(PROMPTS)):
        n = cap.lengths[i]
        torch.testing.assert_close(total[i, :n], cap[out_hook][i, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_moe_routing_hooks_come_back_per_position(models, arch):
    m = models[arch]
    name = "blocks.0.mlp.hook_expert_weights"
    cap = interp.capture(m, PROMPTS, [name], positions="all", progress=False)
    assert cap[name].shape[:2] == (len(PROMPTS), max(cap.lengths))
    assert cap[name].shape[-1] == m.info.n_experts


def test_dtype_cast(models):
    cap = interp.capture(models["llama"], PROMPTS, "blocks.0.hook_resid_post", dtype=torch.float16, progress=False)
    assert cap["blocks.0.hook_resid_post"].dtype == torch.float16
