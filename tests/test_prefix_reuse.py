"""Prefix reuse in the variants engine: a variant whose first change is at column c runs only columns >= c on the
reference run's cached keys and values. Checked against the full recompute (every column, every block) and
against one plain forward per variant, on every fixture architecture (GPT-2, grouped-query Llama / Mistral /
Qwen2 / Gemma 2, the MoE fixtures) under left padding; batched equals prompt by prompt; reads come back whole;
what cannot be cut is not cut."""

from contextlib import contextmanager

import pytest
import torch

from interp.activations import variants as V
from interp.activations.hooks import Edit, Intervention, hook_snapshot
from interp.activations.sites import hook_name
from interp.activations.variants import first_column, forward, plan_chunks, run_variants
from interp.model.fixtures import ARCHITECTURES
from interp.prompts import encode, make_batch

from .helpers import PROMPTS


def batch_of(m, prompts=PROMPTS):
    enc = encode(m, prompts)
    return make_batch(m, enc, list(range(len(prompts))))


def set_at(name, col, value, head=None):
    """Set ``name`` at column ``col`` (negative: from the end) to ``value`` [B, ...], declared position-wise."""

    def apply(t, rows):
        target = t[rows]
        idx = (slice(None), col) if head is None else (slice(None), col, head)
        target[idx] = value.to(device=t.device, dtype=t.dtype)

    return Edit(name, apply, first_column=col)


def log_probs(lg, _store):
    return lg.float().log_softmax(-1)


@contextmanager
def widths_seen(m, name):
    """The column counts of every forward that reaches hook ``name`` while the block runs."""
    seen = []
    handle = m.bridge.hook_dict[name].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
    try:
        yield seen
    finally:
        handle.remove()


def patches(m, b, seed=0):
    """Position-wise patches at columns all over the batch (left-padded rows included), on residual, sublayer and
    per-head sites; one variant touches two columns, one touches column 0 (nothing to cut)."""
    gen = torch.Generator().manual_seed(seed)
    i, width = m.info, b.width

    def vec(*shape):
        return torch.randn(b.size, *shape, generator=gen) * 2.0

    d, dh = i.d_model, i.d_model // i.n_heads
    out = []
    for col in (1, width // 2, width - 3, width - 1):
        for layer in (0, i.n_layers - 1):
            out.append(Intervention((set_at(hook_name("resid_pre", layer), col, vec(d)),), f"r{layer}c{col}"))
        out.append(Intervention((set_at(hook_name("mlp_out", 1), col, vec(d)),), f"m1c{col}"))
        out.append(Intervention((set_at(hook_name("z", 1), col, vec(dh), head=2),), f"z1h2c{col}"))
    out.append(Intervention((set_at(hook_name("attn_out", 0), -2, vec(d)),), "a0 from the end"))
    out.append(Intervention((set_at(hook_name("k", 1), width - 2, vec(dh), head=0),
                             set_at(hook_name("v", 1), width - 2, vec(dh), head=0)), "kv1c-2"))
    out.append(Intervention((set_at(hook_name("resid_pre", 2), width - 1, vec(d)),
                             set_at(hook_name("resid_pre", 1), width - 4, vec(d))), "two columns"))
    out.append(Intervention((set_at(hook_name("resid_pre", 1), 0, vec(d)),), "column 0"))
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_reuse_equals_the_full_recompute_and_single_forwards(models, arch, monkeypatch):
    monkeypatch.setitem(V._FORWARD_OVERHEAD_ROWS, "cpu", 0)  # no fixed cost per forward: every start its own chunk
    m = models[arch]
    b = batch_of(m)
    assert bool((b.attention_mask == 0).any())  # left padding is exercised
    variants = patches(m, b)
    forward(m, b)  # the bridge adds its own hooks on the first forward
    before = hook_snapshot(m)
    last = hook_name("resid_pre", m.info.n_layers - 1)
    with widths_seen(m, last) as seen:
        clean, fast = run_variants(m, b, variants, log_probs, max_rows=3 * b.size)
    assert min(seen) == 1 and max(seen) == b.width  # suffix chunks ran, down to the last column alone
    assert hook_snapshot(m) == before
    ref_clean, full = run_variants(m, b, variants, log_probs, reuse_clean=False, reuse_prefix=False)
    torch.testing.assert_close(clean, ref_clean, atol=1e-5, rtol=0)
    for k, iv in enumerate(variants):
        single = log_probs(forward(m, b, [iv])[0], None)
        torch.testing.assert_close(fast[k], full[k], atol=1e-5, rtol=0, msg=f"variant {iv.label}")
        torch.testing.assert_close(fast[k], single, atol=1e-5, rtol=0, msg=f"variant {iv.label}")
        assert (fast[k] - clean).abs().max() > 1e-4, iv.label  # every patch changes the output


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_default_row_budget_and_memory_plan_give_the_same_numbers(models, arch):
    m = models[arch]
    b = batch_of(m)
    variants = patches(m, b, seed=1)
    _, fast = run_variants(m, b, variants, log_probs)  # default budget: one chunk per start, widths by column
    _, full = run_variants(m, b, variants, log_probs, reuse_clean=False, reuse_prefix=False, max_rows=b.size)
    for k in range(len(variants)):
        torch.testing.assert_close(fast[k], full[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2_moe"])
def test_prefix_reuse_batched_equals_prompt_by_prompt(models, arch):
    """Columns counted from the end name the same token in the padded batch and in each prompt alone."""
    m = models[arch]
    prompts = PROMPTS[:3]  # of different lengths, each at least 2 tokens long (qwen2_moe has no BOS)
    b = batch_of(m, prompts)
    gen = torch.Generator().manual_seed(4)
    d = m.info.d_model
    vals = {(layer, back): torch.randn(d, generator=gen) * 2.0 for layer in range(m.info.n_layers) for back in (1, 2)}

    def variants_for(n):
        return [Intervention((set_at(hook_name("resid_post", layer), -back, vals[layer, back].expand(n, d)),))
                for layer in range(m.info.n_layers) for back in (1, 2)]

    clean, batched = run_variants(m, b, variants_for(b.size), log_probs, max_rows=2 * b.size)
    enc = encode(m, prompts)
    assert bool((b.attention_mask == 0).any())
    for r in range(b.size):
        one = make_batch(m, enc, [r])
        c1, alone = run_variants(m, one, variants_for(1), log_probs)
        torch.testing.assert_close(clean[r:r + 1], c1, atol=1e-5, rtol=0)
        for k in range(len(alone)):
            torch.testing.assert_close(batched[k][r:r + 1], alone[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "olmoe"])
def test_restorations_on_a_noised_base_reuse_the_noised_prefix(models, arch):
    """ROME's setting: the base noises a span of embeddings (position-wise from its first column); restorations
    at columns before, inside and after the span run on the noised run's cached prefix."""
    m = models[arch]
    b = batch_of(m)
    width, d = b.width, m.info.d_model
    s, e = width - 5, width - 2
    noise = torch.randn(b.size, e - s, d, generator=torch.Generator().manual_seed(2)) * 3.0

    def add_noise(t, rows):
        t[rows][:, s:e] += noise.to(t)

    base = Intervention((Edit("hook_embed", add_noise, first_column=s),), "noise")
    names = [hook_name(site, layer) for site in ("resid_post", "mlp_out") for layer in range(m.info.n_layers)]
    _, clean = forward(m, b, read=names, logits=None)
    variants = [Intervention((set_at(n, col, clean[n][:, col]),), f"{n} {col}") for n in names
                for col in (s - 1, s, s + 1, e, width - 1)]
    with widths_seen(m, hook_name("resid_pre", m.info.n_layers - 1)) as seen:
        low, fast = run_variants(m, b, variants, log_probs, base=base, max_rows=2 * b.size)
    assert min(seen) < width
    low_full, full = run_variants(m, b, variants, log_probs, base=base, reuse_clean=False, reuse_prefix=False)
    torch.testing.assert_close(low, low_full, atol=1e-5, rtol=0)
    for k, iv in enumerate(variants):
        torch.testing.assert_close(fast[k], full[k], atol=1e-5, rtol=0, msg=iv.label)
        torch.testing.assert_close(fast[k], log_probs(forward(m, b, [base, iv])[0], None), atol=1e-5, rtol=0)


def test_reads_come_back_whole_from_a_cut_chunk(models):
    m = models["llama"]
    b = batch_of(m)
    name = hook_name("resid_post", 1)
    variants = patches(m, b, seed=3)

    def reduce(_lg, store):
        return store[name]

    def last_two(_name, v):
        return v[:, -2:]

    with widths_seen(m, hook_name("resid_pre", 2)) as seen:
        _, whole = run_variants(m, b, variants, reduce, read=[name], max_rows=2 * b.size)
        _, cut = run_variants(m, b, variants, reduce, read=[name], read_fn=last_two, max_rows=2 * b.size)
    assert min(seen) < b.width
    real = b.attention_mask.bool()  # a left pad's value is meaningless (Hugging Face lets pad rows attend to all)
    for k, iv in enumerate(variants):
        _, ref = forward(m, b, [iv], read=[name], logits=None)
        assert whole[k].shape == ref[name].shape
        torch.testing.assert_close(whole[k][real], ref[name][real], atol=1e-5, rtol=0, msg=iv.label)
        torch.testing.assert_close(cut[k][real[:, -2:]], ref[name][:, -2:][real[:, -2:]], atol=1e-5, rtol=0,
                                   msg=iv.label)


def test_float64_left_padded_prefix_reuse(tiny_model_dirs):
    import interp

    m = interp.load_model(tiny_model_dirs["llama"], dtype=torch.float64)
    b = batch_of(m)
    variants = patches(m, b, seed=5)
    _, fast = run_variants(m, b, variants, log_probs, max_rows=2 * b.size)
    _, full = run_variants(m, b, variants, log_probs, reuse_clean=False, reuse_prefix=False)
    for k in range(len(variants)):
        assert torch.isfinite(fast[k]).all()
        torch.testing.assert_close(fast[k], full[k], atol=1e-10, rtol=0)


def test_what_cannot_be_cut_is_not_cut(models):
    """An edit without a position-wise declaration (here one that reads an earlier column), a base with one, or a
    read of a hook not laid out [batch, position, ...] keeps every column: still exact."""
    m = models["llama"]
    b = batch_of(m)
    name = hook_name("resid_pre", 1)

    def copy_earlier(t, rows):  # column -1 gets column -4's value: not position-wise
        t[rows][:, -1] = t[rows][:, -4]

    mixing = Intervention((Edit(name, copy_earlier),), "mixing")
    late = Intervention((set_at(name, -1, torch.zeros(b.size, m.info.d_model)),), "late")
    assert first_column(mixing, b.width) == 0 and first_column(late, b.width) == b.width - 1
    pattern = hook_name("pattern", 2)
    for kwargs, variants in (({}, [mixing]), ({"base": mixing}, [late]), ({"read": [pattern]}, [late])):
        reduce = (lambda lg, st: st[pattern][:, :, -1]) if "read" in kwargs else log_probs
        with widths_seen(m, hook_name("resid_pre", 2)) as seen:
            _, (got,) = run_variants(m, b, variants, reduce, **kwargs)
        assert set(seen) == {b.width}
        ivs = [kwargs["base"], *variants] if "base" in kwargs else variants
        lg, st = forward(m, b, ivs, read=kwargs.get("read", ()))
        torch.testing.assert_close(got, reduce(lg, st), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="position-wise"):
        forward(m, b, [mixing], past=_one_column_cache(m, b))


def _one_column_cache(m, b):
    from transformers import DynamicCache

    cache = DynamicCache()
    forward(m, b, past=cache)
    return V.prefix_cache([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], 1, 1)


def test_plan_groups_by_start_and_respects_the_row_budget():
    starts = [(layer, col) for layer in range(4) for col in range(10)]
    chunks = plan_chunks(starts, 2, 4, 10, lambda col: 8, overhead=0.0)
    assert sorted(k for ch, _, _ in chunks for k in ch) == list(range(len(starts)))
    for ch, layer, col in chunks:
        assert len(ch) * 2 <= 8
        assert layer == min(starts[k][0] for k in ch) and col == min(starts[k][1] for k in ch)
    # without a fixed cost per forward, no chunk mixes starts (mixing only adds work)
    assert all(len({starts[k] for k in ch}) == 1 for ch, _, _ in chunks)
    merged = plan_chunks(starts, 2, 4, 10, lambda col: 10**6, overhead=100.0)
    assert len(merged) == 1 and merged[0][1:] == (0, 0)
