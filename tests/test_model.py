"""Model loading and ModelInfo over every fixture architecture."""

import pytest
import torch

import interp
from interp.model.fixtures import ARCHITECTURES, GQA_ARCHITECTURES, MOE_ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_info_matches_the_hf_config(models, arch):
    m = models[arch]
    cfg = m.hf_model.config
    info = m.info
    assert info.n_layers == cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    assert info.d_model == m.bridge.cfg.d_model
    assert info.n_heads * info.d_head == info.d_model or arch == "gemma2"
    assert info.vocab_size == m.hf_model.get_output_embeddings().weight.shape[0]
    assert (info.n_kv_heads < info.n_heads) == (arch in GQA_ARCHITECTURES)
    assert info.is_moe == (arch in MOE_ARCHITECTURES)
    if info.is_moe:
        assert info.n_experts == 4 and info.top_k == 2
        assert info.n_shared_experts == (1 if arch == "qwen2_moe" else 0)
        assert info.renormalizes_top_k == (arch == "mixtral" or bool(getattr(cfg, "norm_topk_prob", False)))
    assert info.norm == ("layernorm" if arch == "gpt2" else "rmsnorm")


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])
def test_plain_bridge_is_accepted_by_methods(models, arch):
    bridge = models[arch].bridge
    res = interp.predictions(bridge, ["The capital of France is"], top_k=3)
    ref = interp.predictions(models[arch], ["The capital of France is"], top_k=3)
    assert res.table["predicted_id"].tolist() == ref.table["predicted_id"].tolist()
    assert interp.as_model(bridge).info == models[arch].info


def test_relative_path_is_made_absolute(tiny_model_dirs, monkeypatch):
    path = tiny_model_dirs["llama"]
    monkeypatch.chdir(path.parent)
    m = interp.load_model(path.name if path.name.startswith(".") else "./" + path.name)
    assert m.info.n_layers == 3


def test_dtype_is_applied(tiny_model_dirs):
    m = interp.load_model(tiny_model_dirs["llama"], dtype="bfloat16")
    assert m.dtype == torch.bfloat16
