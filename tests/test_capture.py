"""capture(): selective hooks, positions, streaming to disk, per-head outputs."""

import pytest
import torch

import interp
from interp.errors import HookNameError
from interp.model.fixtures import ARCHITECTURES, MOE_ARCHITECTURES
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
    for n in names:  # exactly equal, NaN padding in the same places
        torch.testing.assert_close(disk[n], mem[n], atol=0, rtol=0, equal_nan=True)
        torch.testing.assert_close(again[n], mem[n], atol=0, rtol=0, equal_nan=True)
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


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2_moe"])
def test_all_positions_padding_is_nan_and_masked(models, arch):
    m = models[arch]
    names = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z"]
    cap = interp.capture(m, PROMPTS, names, positions="all", batch_size=3, progress=False)
    enc = encode(m, PROMPTS)
    assert cap.lengths == enc.lengths and len(set(cap.lengths)) > 1  # prompts of different lengths
    mask = cap.mask
    assert mask.dtype == torch.bool and mask.shape == (len(PROMPTS), max(cap.lengths))
    for i, item in enumerate(enc.items):
        n = cap.lengths[i]
        assert mask[i, :n].all() and not mask[i, n:].any()
        ref = single_run(m, item.ids, names)
        for name in names:
            value = cap[name]
            assert torch.isnan(value[i, n:]).all()  # no zero can pass for an activation
            assert not torch.isnan(value[i, :n]).any()
            torch.testing.assert_close(cap.get(name, i), ref[name], atol=1e-5, rtol=0)
            assert torch.equal(cap.prompt(name, PROMPTS[i]["id"]), cap.get(name, i))
    for name in names:
        assert torch.equal(torch.isnan(cap[name]).flatten(2).all(-1), ~mask)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2_moe"])
def test_last_of_all_positions_equals_positions_last(models, arch):
    m = models[arch]
    names = ["blocks.0.hook_resid_post", "blocks.2.attn.hook_z"]
    every = interp.capture(m, PROMPTS, names, positions="all", batch_size=3, progress=False)
    last = interp.capture(m, PROMPTS, names, positions="last", batch_size=2, progress=False)
    assert last.mask is None and last.lengths is None
    for name in names:
        torch.testing.assert_close(every.last(name), last[name], atol=1e-5, rtol=0)
        assert torch.equal(last.last(name), last[name])
        assert torch.equal(last.get(name, 1), last[name][1])
        # what a user reading cap[name][:, -1] sees for the shorter prompts is NaN, not a plausible 0
        short = [i for i, n in enumerate(every.lengths) if n < max(every.lengths)]
        assert short and torch.isnan(every[name][short, -1]).all()


def test_span_positions_are_masked_and_last_is_the_spans_last_token(models):
    m = models["llama"]
    name = "blocks.1.hook_resid_post"
    prompts = [*PROMPTS, {"id": "p4", "prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower"}]
    cap = interp.capture(m, prompts, name, positions="subject", batch_size=2, progress=False)
    enc = encode(m, prompts, spans=["subject"])
    widths = [e - s for s, e in enc.spans["subject"]]
    assert cap.lengths == widths and len(set(widths)) > 1
    assert torch.equal(cap.mask, torch.arange(max(widths))[None, :] < torch.tensor(widths)[:, None])
    for i, (item, (s, e)) in enumerate(zip(enc.items, enc.spans["subject"])):
        ref = single_run(m, item.ids, [name])[name]
        torch.testing.assert_close(cap.get(name, i), ref[s:e], atol=1e-5, rtol=0)
        torch.testing.assert_close(cap.last(name)[i], ref[e - 1], atol=1e-5, rtol=0)
        assert torch.isnan(cap[name][i, widths[i]:]).all()


def test_disk_capture_keeps_the_mask_and_nan_padding(models, tmp_path):
    m = models["gpt2"]
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    mem = interp.capture(m, PROMPTS, names, positions="all", batch_size=3, progress=False)
    interp.capture(m, PROMPTS, names, positions="all", batch_size=3, to_dir=tmp_path / "cap", progress=False)
    disk = interp.Capture.open(tmp_path / "cap")
    assert torch.equal(disk.mask, mem.mask) and disk.lengths == mem.lengths
    for n in names:
        assert torch.equal(torch.isnan(disk[n]), torch.isnan(mem[n]))
        torch.testing.assert_close(disk[n], mem[n], atol=0, rtol=0, equal_nan=True)
        assert torch.equal(disk.last(n), mem.last(n))
        for i in range(len(PROMPTS)):
            assert torch.equal(disk.get(n, i), mem.get(n, i))


def test_integer_hooks_pad_with_zero_under_the_mask(models):
    m = models["qwen2_moe"]
    name = "blocks.0.mlp.hook_expert_indices"
    cap = interp.capture(m, PROMPTS, name, positions="all", progress=False)
    assert not cap[name].is_floating_point()
    assert (cap[name][~cap.mask] == 0).all()


def test_get_names_a_bad_prompt(models):
    cap = interp.capture(models["llama"], PROMPTS, "blocks.0.hook_resid_post", positions="all", progress=False)
    with pytest.raises(interp.PromptError, match="No prompt with id 'p9'"):
        cap.get("blocks.0.hook_resid_post", "p9")
    with pytest.raises(interp.ParameterError, match=r"index 7 is not an integer in \[0, 4\)"):
        cap.prompt("blocks.0.hook_resid_post", 7)


def test_dtype_cast(models):
    cap = interp.capture(models["llama"], PROMPTS, "blocks.0.hook_resid_post", dtype=torch.float16, progress=False)
    assert cap["blocks.0.hook_resid_post"].dtype == torch.float16


def test_a_failed_shard_write_is_raised_in_the_caller_and_keeps_the_previous_capture(models, tmp_path, monkeypatch):
    """Shards are written on a background thread: its error reaches the caller, the earlier capture stays whole."""
    from interp.activations import capture as capture_module

    m = models["llama"]
    names = ["blocks.1.hook_resid_post"]
    first = interp.capture(m, PROMPTS, names, positions="all", batch_size=2, to_dir=tmp_path / "cap", progress=False)
    before = first[names[0]].clone()
    real_save, calls = capture_module.save_file, []

    def failing_save(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_save(tensors, path)

    monkeypatch.setattr(capture_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        interp.capture(m, PROMPTS, names, positions="all", batch_size=1, to_dir=tmp_path / "cap", progress=False)
    monkeypatch.setattr(capture_module, "save_file", real_save)
    again = interp.Capture.open(tmp_path / "cap")
    torch.testing.assert_close(again[names[0]], before, atol=0, rtol=0, equal_nan=True)
    assert not list((tmp_path / "cap").glob(".*.tmp"))  # no half-written file left


@pytest.mark.parametrize("positions", ["all", "subject", "last"])
def test_batched_capture_equals_prompt_by_prompt(models, positions):
    """The preallocated in-memory assembly puts every batch's rows in prompt order, as batch_size=1 does."""
    m = models["gpt2"]
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    big = interp.capture(m, PROMPTS, names, positions=positions, batch_size=3, progress=False)
    one = interp.capture(m, PROMPTS, names, positions=positions, batch_size=1, progress=False)
    for n in names:
        torch.testing.assert_close(big[n], one[n], atol=1e-5, rtol=0, equal_nan=True)
    assert big.lengths == one.lengths
