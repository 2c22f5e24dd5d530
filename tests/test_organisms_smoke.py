"""Smoke test of the organism training pipeline: a toy organism trained for a few steps (seconds)."""

from __future__ import annotations

import json

import pytest

from interp.organisms.train import ORGANISMS, train_organism


@pytest.mark.parametrize("name", ["toy-dense", "toy-moe"])
def test_train_toy_organism(name, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / name
    card = train_organism(name, out, steps=2, seed=0, evaluate=False, verbose=False)
    assert card["steps"] == 2 and card["seed"] == 0 and card["n_params"] > 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "card.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "card.json").read_text())["steps"] == 2
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == {"llama": "llama", "qwen2_moe": "qwen2_moe"}[ORGANISMS[name].arch]
    assert tok.bos_token == "<|bos|>" and tok.pad_token == "<|pad|>" and tok.eos_token == "<|eos|>"
    ids = tok("The capital of", add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == len(tok)


def test_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    a = train_organism("toy-dense", tmp_path / "a", steps=2, seed=3, evaluate=False, verbose=False)
    b = train_organism("toy-dense", tmp_path / "b", steps=2, seed=3, evaluate=False, verbose=False)
    assert a["history"] == b["history"]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_cli_train_and_evaluate(tmp_path, capsys):
    from interp.organisms.__main__ import main

    assert main(["train", "toy-moe", "--out", str(tmp_path / "m"), "--steps", "1"]) == 0
    assert '"steps": 1' in capsys.readouterr().out
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["steps"] == 1
    m = card["metrics"]
    for key in ("factual/heldout_top1", "safety/harmful_refusal_rate", "safety/harmless_refusal_rate",
                "moe/min_expert_share"):  # fmt: skip
        assert 0.0 <= m[key] <= 1.0
