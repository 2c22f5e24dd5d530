"""Interventions checked against direct arithmetic; the variants engine against the one-forward-per-variant
loop; hooks never leak, also when the body raises."""

import pytest
import torch

import interp
from interp.activations.hooks import hook_snapshot, hooked
from interp.activations.sites import hook_name
from interp.activations.variants import forward, run_variants
from interp.model.fixtures import ARCHITECTURES
from interp.prompts import encode, make_batch

from .helpers import PROMPTS


def batch_of(m, prompts=PROMPTS, **kw):
    enc = encode(m, prompts, **kw)
    return make_batch(m, enc, list(range(len(prompts))))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zeroing_a_head_subtracts_its_output(models, arch):
    m, layer, head = models[arch], 1, 2
    b = batch_of(m)
    out_hook, z = hook_name("attn_module_out", layer), hook_name("z", layer)  # before Gemma 2's post-attention norm
    _, clean = forward(m, b, read=[z, out_hook], logits=None)
    _, ablated = forward(m, b, [interp.ablate_heads(m, [(layer, head)], ablation="zero")], read=[out_hook],
                         logits=None)
    z_h = clean[z][:, :, head]
    expected = clean[out_hook] - z_h @ m.bridge.blocks[layer].attn.W_O[head]
    torch.testing.assert_close(ablated[out_hook], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_query_scaling_gives_uniform_attention_over_the_prefix(models, arch):
    m, layer, head = models[arch], 2, 1
    b = batch_of(m)
    iv = interp.ablate_heads(m, [(layer, head)], ablation="query")  # default eps=1e-5
    _, st = forward(m, b, [iv], read=[hook_name("pattern", layer)], logits=None)
    pattern = st[hook_name("pattern", layer)][:, head]  # [B, Q, K]
    for r in range(b.size):
        off = int(b.offsets[r])
        n = b.width - off
        rows = pattern[r, off:, off:]
        expected = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
        torch.testing.assert_close(rows, expected, atol=1e-5, rtol=0)
    other = st[hook_name("pattern", layer)][:, 0]
    r = int(b.lengths.argmax())  # the longest prompt: an untouched head is not uniform there
    assert not torch.allclose(other[r, -1, :], pattern[r, -1, :], atol=1e-3)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_variants_engine_equals_the_loop(models, arch):
    m = models[arch]
    b = batch_of(m)
    heads = [(layer, h) for layer in range(m.info.n_layers) for h in range(m.info.n_heads)]
    variants = [interp.ablate_heads(m, [hd], ablation="query") for hd in heads]
    variants.append(interp.ablate_heads(m, [(0, 0), (2, 3)], ablation="output") + interp.ablate_heads(m, [(1, 1)]))

    def reduce(lg, _):
        return lg.float().log_softmax(-1)

    clean, fast = run_variants(m, b, variants, reduce, max_rows=2 * b.size)
    _, unbatched = run_variants(m, b, variants, reduce, reuse_clean=False, max_rows=1000)
    ref_clean, _ = forward(m, b)
    torch.testing.assert_close(clean, reduce(ref_clean, None), atol=1e-5, rtol=0)
    for k, iv in enumerate(variants):
        ref, _ = forward(m, b, [iv])
        torch.testing.assert_close(fast[k], reduce(ref, None), atol=1e-5, rtol=0)
        torch.testing.assert_close(unbatched[k], reduce(ref, None), atol=1e-5, rtol=0)
        assert (fast[k] - clean).abs().max() > 0  # every ablation changes something


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral"])
def test_variants_on_top_of_a_base_intervention(models, arch):
    m = models[arch]
    b = batch_of(m)
    noise = interp.add_embedding_noise([(b.width - 3, b.width - 1)] * b.size,
                                       interp.gaussian_noise(b.size, 2, m.info.d_model, scale=2.0, seed=3))
    late_edit = interp.ablate_heads(m, [(2, 0)], ablation="zero")
    base = noise + late_edit  # edits below and above the variants' start
    _, clean = forward(m, b, read=[f"blocks.{layer}.hook_resid_post" for layer in range(3)], logits=None)
    variants = [interp.patch(f"blocks.{layer}.hook_resid_post", clean[f"blocks.{layer}.hook_resid_post"])
                for layer in range(3)]

    def reduce(lg, _):
        return lg.float().log_softmax(-1)

    ref_base, fast = run_variants(m, b, variants, reduce, base=base, max_rows=b.size)
    torch.testing.assert_close(ref_base, reduce(forward(m, b, [base])[0], None), atol=1e-5, rtol=0)
    for k, iv in enumerate(variants):
        ref, _ = forward(m, b, [base, iv])
        torch.testing.assert_close(fast[k], reduce(ref, None), atol=1e-5, rtol=0)


def test_a_read_fn_does_not_touch_the_kept_residuals(models):
    m = models["llama"]
    b = batch_of(m)
    variants = [interp.ablate_heads(m, [(2, 1)])]
    name = "blocks.2.hook_resid_post"

    def reduce(lg, store):
        return store[name]

    clean, (ablated,) = run_variants(m, b, variants, reduce, read=[name], read_fn=lambda n, v: v[:, -1])
    _, ref = forward(m, b, variants, read=[name], logits=None)
    torch.testing.assert_close(ablated, ref[name][:, -1], atol=1e-5, rtol=0)


def test_starting_from_the_clean_residual_skips_lower_blocks(models):
    m = models["llama"]
    b = batch_of(m)
    _, st = forward(m, b, read=["blocks.2.hook_resid_pre"], logits=None)
    fired = []
    handle = m.bridge.blocks[0].attn.register_forward_hook(lambda *a: fired.append(1))  # compute skipped
    try:
        lg, _ = forward(m, b, start_layer=2, start_resid=st["blocks.2.hook_resid_pre"])
    finally:
        handle.remove()
    assert not fired
    ref, _ = forward(m, b)
    torch.testing.assert_close(lg, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2_moe"])
def test_patch_restores_the_clean_value(models, arch):
    m = models[arch]
    b = batch_of(m)
    name = "blocks.1.hook_resid_post"
    clean_lg, clean = forward(m, b, read=[name])
    noise = interp.add_embedding_noise([(b.width - 2, b.width - 1)] * b.size,
                                       interp.gaussian_noise(b.size, 1, m.info.d_model, scale=3.0, seed=1))
    noisy_lg, _ = forward(m, b, [noise])
    assert (noisy_lg - clean_lg).abs().max() > 1e-3
    restored, _ = forward(m, b, [noise, interp.patch(name, clean[name])])
    torch.testing.assert_close(restored, clean_lg, atol=1e-5, rtol=0)
    cols = torch.full((b.size, 1), b.width - 1)
    last_only, _ = forward(m, b, [interp.patch(name, clean[name][:, -1:] * 0, cols)], read=[name])
    assert last_only is not None


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen3_moe"])
def test_mask_attention_from_a_layer(models, arch):
    m = models[arch]
    b = batch_of(m, PROMPTS[:3])
    forbid = torch.zeros(b.size, b.width, dtype=torch.bool)
    forbid[:, -4:-2] = True
    iv = interp.mask_attention(m, forbid, from_layer=1)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(3)]
    _, st = forward(m, b, [iv], read=names, logits=None)
    _, clean = forward(m, b, read=names, logits=None)
    torch.testing.assert_close(st[names[0]], clean[names[0]])  # layer 0 untouched
    for name in names[1:]:
        p = st[name]
        assert torch.isfinite(p).all()
        assert p[:, :, -1, -4:-2].abs().max() == 0
        torch.testing.assert_close(p.sum(-1)[:, :, -1], torch.ones(b.size, m.info.n_heads), atol=1e-5, rtol=0)


def test_a_fully_masked_row_is_left_alone(models):
    m = models["qwen2"]  # no BOS: the first token has only itself to attend to
    b = batch_of(m, [PROMPTS[3]])
    forbid = torch.ones(b.size, b.width, dtype=torch.bool)
    _, st = forward(m, b, [interp.mask_attention(m, forbid)], read=["blocks.0.attn.hook_pattern"], logits=None)
    assert torch.isfinite(st["blocks.0.attn.hook_pattern"]).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hooks_never_leak_also_on_exceptions(models, arch):
    m = models[arch]
    user_handle = m.bridge.hook_dict["blocks.0.hook_resid_post"].register_forward_hook(lambda *a: None)
    try:
        before = hook_snapshot(m)
        b = batch_of(m)
        iv = interp.ablate_heads(m, [(0, 1)]) + interp.ablate_heads(m, [(2, 0)], ablation="zero")
        with pytest.raises(RuntimeError, match="boom"):
            with hooked(m, [iv], read=["blocks.1.hook_resid_post"]):
                assert hook_snapshot(m) != before
                raise RuntimeError("boom")
        assert hook_snapshot(m) == before

        def failing_edit(t, rows):
            raise RuntimeError("edit fails mid-forward")

        with pytest.raises(RuntimeError, match="mid-forward"):
            forward(m, b, [interp.Intervention((interp.Edit("blocks.1.attn.hook_z", failing_edit),))])
        assert hook_snapshot(m) == before
        run_variants(m, b, [iv], lambda lg, _: lg)
        interp.capture(m, PROMPTS, ["blocks.2.attn.hook_z"], progress=False)
        assert hook_snapshot(m) == before
        assert "blocks.0.hook_out" in before or any("blocks.0" in k for k in before)  # the user's hook is kept
    finally:
        user_handle.remove()
