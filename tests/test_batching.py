"""Batching is exact: every activation of a padded batch equals the prompt run alone (1e-5), on every
architecture, for hypothesis-generated mixes of prompt lengths.

The models run in float64 here. In float32 the CPU kernels reduce in a different order for different batch
shapes, and on these fixtures (residual values up to ~10) that alone reaches the bound: hypothesis found
1.04e-5 (qwen2, two 5-token prompts, no padding at all, 2 threads) and 1.05e-5 (mistral, lengths
[1, 1, 1, 2, 1], 1 thread): about 11 ulps, the arithmetic, not the padding. A padding bug (positions, masks,
last index) moves activations by O(1); in float64 the batching logic itself is checked far below 1e-5."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import interp
from interp.model.fixtures import ARCHITECTURES
from interp.prompts import encode

from .helpers import single_run

WORDS = ["the", "capital", "of", "France", "is", "Paris", "User:", "Assistant:", "Mary", "went", "to", "store"]
HOOKS = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post", "ln_final.hook_out"]


@pytest.fixture(scope="module")
def models(tiny_model_dirs):
    return {a: interp.load_model(tiny_model_dirs[a], dtype="float64") for a in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(min_value=1, max_value=12), min_size=2, max_size=5))
def test_padded_batch_equals_each_prompt_alone(models, arch, lengths):
    m = models[arch]
    prompts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(n)) for i, n in enumerate(lengths)]
    cap = interp.capture(m, prompts, HOOKS, positions="all", batch_size=len(prompts), progress=False)
    enc = encode(m, prompts)
    for i, item in enumerate(enc.items):
        ref = single_run(m, item.ids, HOOKS)
        for name in HOOKS:
            got = cap.get(name, i)
            assert got.shape == ref[name].shape
            torch.testing.assert_close(got, ref[name], atol=1e-5, rtol=0)
