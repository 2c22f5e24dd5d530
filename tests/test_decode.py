"""decode(): the last layer recomputed equals the model's logits; every layer equals a direct computation on
the Hugging Face model (output_hidden_states, its own final norm and lm_head); frozen mode is linear."""

import pytest
import torch

import interp
from interp.model.fixtures import ARCHITECTURES
from interp.prompts import encode

from .helpers import PROMPTS


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_recompute_matches_hf_at_every_layer(models, hf_models, arch):
    m, hf = models[arch], hf_models(arch)
    n = m.info.n_layers
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n)]
    cap = interp.capture(m, PROMPTS, names, progress=False)
    enc = encode(m, PROMPTS)
    for i, item in enumerate(enc.items):
        with torch.no_grad():
            out = hf(torch.tensor([item.ids]), output_hidden_states=True)
            hidden = out.hidden_states  # embeddings, then each layer (the last one already normed by HF)
            final_norm = hf.get_decoder().norm if hasattr(hf.get_decoder(), "norm") else hf.transformer.ln_f
            for layer in range(n):
                h = hidden[layer + 1][0, -1] if layer < n - 1 else None
                if h is not None:
                    ref = hf.get_output_embeddings()(final_norm(h))
                    cap_ = getattr(hf.config, "final_logit_softcapping", None)
                    if cap_:
                        ref = torch.tanh(ref / cap_) * cap_
                    got = interp.decode(m, cap[names[layer]][i], output="logits")
                    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            last = interp.decode(m, cap[names[-1]][i], output="logits")
            torch.testing.assert_close(last, out.logits[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "olmoe"])
def test_frozen_with_the_own_scale_equals_recompute_and_is_linear(models, arch):
    m = models[arch]
    cap = interp.capture(m, PROMPTS, ["blocks.2.hook_resid_post", "blocks.1.hook_resid_post"], progress=False)
    h, h1 = cap["blocks.2.hook_resid_post"], cap["blocks.1.hook_resid_post"]
    scale = interp.norm_scale(m, h)
    frozen = interp.decode(m, h, norm="frozen", scale=scale, output="logits")
    torch.testing.assert_close(frozen, interp.decode(m, h, output="logits"), atol=1e-5, rtol=0)
    if arch in ("llama", "olmoe"):  # no bias, no softcap: decoding is linear in the vector
        a = interp.decode(m, h1, norm="frozen", scale=scale, output="logits")
        b = interp.decode(m, h - h1, norm="frozen", scale=scale, output="logits")
        torch.testing.assert_close(a + b, frozen, atol=1e-4, rtol=0)


def test_unknown_norm_mode_is_an_error(models):
    with pytest.raises(interp.ParameterError, match="norm"):
        interp.decode(models["llama"], torch.zeros(64), norm="folded")
