"""The tiny fixture models boot in TransformerBridge and reproduce the HF logits."""

from __future__ import annotations

import json

import pytest
import torch

from interp.model.fixtures import (
    ARCHITECTURES,
    GQA_ARCHITECTURES,
    MOE_ARCHITECTURES,
    build_tiny_model,
    tokenize,
)

PROMPTS = ["The capital of France is Paris", "User: Where is Mary?\nAssistant: Mary is at the park."]


def test_architecture_lists():
    assert set(MOE_ARCHITECTURES) <= set(ARCHITECTURES)
    assert set(GQA_ARCHITECTURES) <= set(ARCHITECTURES)
    assert "gpt2" not in GQA_ARCHITECTURES


def test_tokenizer_leading_space_tokens(tiny_tokenizer):
    ids = tiny_tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"]
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[-1] == "ĠParis"
    assert tiny_tokenizer.decode(ids[-1:]) == " Paris"
    assert tokens[0] == "The"
    # no special tokens are added by the tokenizer itself
    plain = tiny_tokenizer("Paris", add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer("Paris")["input_ids"] == plain
    tok = tiny_tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)


def test_tokenizer_offsets(tiny_tokenizer):
    text = "Q: What is the capital of France?\nA: Paris"
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert "".join(pieces) == text
    assert pieces[-1] == " Paris"


def test_build_is_deterministic(tmp_path, tiny_model_dirs):
    path = build_tiny_model("llama", tmp_path / "llama")
    assert path.is_absolute()
    reference = tiny_model_dirs["llama"] / "model.safetensors"
    assert (path / "model.safetensors").read_bytes() == reference.read_bytes()
    assert json.loads((path / "interp_fixture.json").read_text()) == {"arch": "llama", "seed": 0}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bridge_logits_match_hf(arch, bridges, hf_models, tiny_tokenizer):
    bridge, hf = bridges(arch), hf_models(arch)
    cfg = bridge.cfg
    assert cfg.n_layers == 3 and cfg.n_heads == 4 and cfg.d_model == 64
    expected_kv = 2 if arch in GQA_ARCHITECTURES else None
    assert getattr(cfg, "n_key_value_heads", None) == expected_kv
    if arch in MOE_ARCHITECTURES:
        assert (cfg.num_experts, cfg.experts_per_token) == (4, 2)
    for prompt in PROMPTS:
        ids = torch.tensor([tokenize(tiny_tokenizer, prompt, prepend_bos=cfg.default_prepend_bos)])
        with torch.no_grad():
            bridge_logits = bridge(ids)
            hf_logits = hf(ids).logits
        assert bridge_logits.shape == hf_logits.shape == (1, ids.shape[1], cfg.d_vocab)
        torch.testing.assert_close(bridge_logits, hf_logits, atol=1e-5, rtol=0)
        # the random init is large enough that positions are clearly distinguishable
        assert (hf_logits[0, 1:] - hf_logits[0, :-1]).abs().amax(-1).min() > 0.1


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bridge_to_tokens_matches_fixture_tokenize(arch, bridges, tiny_tokenizer):
    bridge = bridges(arch)
    expected = tokenize(tiny_tokenizer, PROMPTS[0], prepend_bos=bridge.cfg.default_prepend_bos)
    assert bridge.to_tokens(PROMPTS[0])[0].tolist() == expected
