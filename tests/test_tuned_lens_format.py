"""The tuned lens in the tuned-lens library's checkpoint layout (AlignmentResearch/tuned-lens: a directory with
config.json and params.pt, the state dict of its ``layer_translators``, translator i acting on hidden_states[i],
i.e. resid_pre of block i). The library itself is not installed here (see the module docstring of
interp.methods.lens.tuned): these tests check the files against its documented format (the exact config fields,
the state dict's keys and shapes) and decode a hand-built checkpoint the way that library does (h + T_i(h), then
the final norm and unembedding), directly on the Hugging Face model."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

from interp.errors import ParameterError
from interp.methods.lens import TunedLens, logit_lens, train_tuned_lens
from interp.methods.lens.tuned import LensLayoutWarning, tuned_lens_unembed_hash

from .helpers import PROMPTS

# the fields tuned-lens's TunedLensConfig writes (dataclasses.asdict), in its order
CONFIG_FIELDS = ["base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
                 "unembed_hash", "lens_type"]
# the columns that say what a lens decoded (site / layer name where it was read)
DECODED = ["prompt_id", "position", "target_field", "predicted_id", "predicted_prob", "top_ids", "target_prob",
           "target_logit", "target_rank", "kl", "entropy", "cross_entropy", "depth"]


def _random_lens(m, site: str, seed: int = 0, zero_last: bool = False) -> TunedLens:
    lens = TunedLens.identity(m, site=site)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lens.weight.copy_(torch.randn(lens.weight.shape, generator=g) * 0.05)
        lens.bias.copy_(torch.randn(lens.bias.shape, generator=g) * 0.1)
        if zero_last:
            lens.weight[-1].zero_()
            lens.bias[-1].zero_()
    return lens


def _decoded(result, site: str, layer: int) -> pd.DataFrame:
    t = result.table
    return t[(t["site"] == site) & (t["layer"] == layer)][DECODED].reset_index(drop=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_resid_pre_lens_round_trips_in_the_documented_layout(models, arch, tmp_path):
    m = models[arch]
    lens = _random_lens(m, "resid_pre")
    d = lens.save(tmp_path / "tl", layout="tuned-lens", model=m)
    config = json.loads((d / "config.json").read_text())
    assert list(config) == CONFIG_FIELDS
    assert config["d_model"] == m.info.d_model and config["num_hidden_layers"] == m.info.n_layers
    assert config["bias"] is True and config["lens_type"] == "linear_tuned_lens"
    assert config["unembed_hash"] == tuned_lens_unembed_hash(m)
    state = torch.load(d / "params.pt", weights_only=True)
    n = m.info.n_layers
    assert sorted(state) == sorted([f"{i}.weight" for i in range(n)] + [f"{i}.bias" for i in range(n)])
    for i in range(n):  # tuned-lens translator i = interp's resid_pre translator i, as nn.Linear(d, d) stores it
        assert state[f"{i}.weight"].shape == (m.info.d_model, m.info.d_model)
        assert torch.equal(state[f"{i}.weight"], lens.weight[i]) and torch.equal(state[f"{i}.bias"], lens.bias[i])
    back = TunedLens.load(d, model=m)
    assert back.site == "resid_pre"
    assert torch.equal(back.weight, lens.weight) and torch.equal(back.bias, lens.bias)
    assert {k: v for k, v in back.info.items() if k != "tuned_lens_config"} == lens.info
    pd.testing.assert_frame_equal(logit_lens(m, PROMPTS, sites="resid_pre", positions="all", lens=back).table,
                                  logit_lens(m, PROMPTS, sites="resid_pre", positions="all", lens=lens).table,
                                  check_exact=True)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2_moe"])
def test_resid_post_lens_maps_to_tuned_lens_translator_l_plus_one(models, arch, tmp_path):
    m = models[arch]
    n = m.info.n_layers
    post = _random_lens(m, "resid_post", seed=1, zero_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LensLayoutWarning)  # nothing is left out: the last translator is zero
        d = post.save(tmp_path / "tl", layout="tuned-lens")
    state = torch.load(d / "params.pt", weights_only=True)
    assert torch.equal(state["0.weight"], torch.zeros_like(state["0.weight"]))  # the embeddings: identity
    assert not state["0.bias"].any()
    for layer in range(n - 1):
        assert torch.equal(state[f"{layer + 1}.weight"], post.weight[layer])
        assert torch.equal(state[f"{layer + 1}.bias"], post.bias[layer])
    # back as interp saved it (the sidecar's site): the same lens, the same table
    back = TunedLens.load(d)
    assert back.site == "resid_post"
    assert torch.equal(back.weight, post.weight) and torch.equal(back.bias, post.bias)
    pd.testing.assert_frame_equal(logit_lens(m, PROMPTS, positions="all", lens=back).table,
                                  logit_lens(m, PROMPTS, positions="all", lens=post).table, check_exact=True)
    # as tuned-lens reads it (resid_pre): its layer l + 1 decodes exactly what the resid_post lens does at layer l
    pre = TunedLens.load(d, site="resid_pre")
    assert pre.site == "resid_pre"
    by_post = logit_lens(m, PROMPTS, sites="resid_post", positions="all", lens=post)
    by_pre = logit_lens(m, PROMPTS, sites="resid_pre", positions="all", lens=pre)
    for layer in range(n - 1):
        pd.testing.assert_frame_equal(_decoded(by_pre, "resid_pre", layer + 1), _decoded(by_post, "resid_post", layer),
                                      check_exact=True)
    # and a tuned-lens lens read at resid_post is the shift the other way: translator i + 1 at layer i
    shifted = TunedLens.load(d, site="resid_post")
    assert torch.equal(shifted.weight[: n - 1], pre.weight[1:]) and not shifted.weight[n - 1].any()


def test_a_last_translator_tuned_lens_cannot_hold_is_left_out_with_a_warning(models, tmp_path):
    m = models["llama"]
    post = _random_lens(m, "resid_post", seed=2)
    with pytest.warns(LensLayoutWarning, match="last translator.*not written"):
        d = post.save(tmp_path / "tl", layout="tuned-lens")
    back = TunedLens.load(d)
    assert torch.equal(back.weight[:-1], post.weight[:-1]) and torch.equal(back.bias[:-1], post.bias[:-1])
    assert not back.weight[-1].any() and not back.bias[-1].any()


def test_a_trained_resid_post_lens_carries_over_whole(models, tmp_path):
    """train_tuned_lens's last resid_post translator stays the identity up to float32 round-off (its KL gradient is
    zero at the model's own output), so the tuned-lens layout loses nothing that changes a decoded number."""
    m = models["llama"]
    lens = train_tuned_lens(m, [p["prompt"] for p in PROMPTS] * 3, steps=5, tokens_per_step=32, progress=False)
    assert lens.weight[:-1].abs().sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", LensLayoutWarning)
        d = lens.save(tmp_path / "tl", layout="tuned-lens", model=m)
    back = TunedLens.load(d, model=m)
    assert torch.equal(back.weight[:-1], lens.weight[:-1]) and torch.equal(back.bias[:-1], lens.bias[:-1])
    assert not back.weight[-1].any() and lens.weight[-1].abs().max() <= 1e-5  # float32 round-off, left out
    a, b = logit_lens(m, PROMPTS, lens=back).table, logit_lens(m, PROMPTS, lens=lens).table
    assert a["predicted_id"].tolist() == b["predicted_id"].tolist()
    for c in ("target_prob", "kl", "entropy"):
        torch.testing.assert_close(torch.tensor(a[c].to_numpy()), torch.tensor(b[c].to_numpy()), atol=1e-5, rtol=0)


def _hand_built(m, directory, *, prefix: str = "", bias: bool = True, seed: int = 3) -> torch.nn.ModuleList:
    """A checkpoint made as tuned-lens makes one: a ModuleList of nn.Linear(d, d), its state dict torch.save'd to
    params.pt, its config dataclass json.dump'ed to config.json (no interp sidecar)."""
    d_model, n = m.info.d_model, m.info.n_layers
    torch.manual_seed(seed)
    translators = torch.nn.ModuleList([torch.nn.Linear(d_model, d_model, bias=bias) for _ in range(n)])
    with torch.no_grad():
        for t in translators:
            t.weight.mul_(0.2)
    directory.mkdir()
    state = translators.state_dict()
    torch.save({prefix + k: v for k, v in state.items()}, directory / "params.pt")
    config = {"base_model_name_or_path": "tiny", "d_model": d_model, "num_hidden_layers": n, "bias": bias,
              "base_model_revision": None, "unembed_hash": None, "lens_type": "linear_tuned_lens"}
    (directory / "config.json").write_text(json.dumps(config))
    return translators


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_hand_built_checkpoint_decodes_as_tuned_lens_decodes(models, hf_models, arch, tmp_path):
    m, hf = models[arch], hf_models(arch)
    translators = _hand_built(m, tmp_path / "ckpt")
    lens = TunedLens.load(tmp_path / "ckpt", model=m)
    assert lens.site == "resid_pre" and lens.info["model"] == "tiny" and lens.info["source"] == "tuned-lens"
    res = logit_lens(m, PROMPTS, sites="resid_pre", positions="all", lens=lens).table
    dec = hf.get_decoder()
    final_norm = dec.norm if hasattr(dec, "norm") else dec.ln_f
    head = hf.get_output_embeddings()
    from interp.prompts import encode

    enc = encode(m, PROMPTS, targets=["target"])
    for k, rec in enumerate(PROMPTS):
        ids = enc.items[k].ids
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
            for i in range(m.info.n_layers):  # tuned-lens: unembed(final_norm(h + T_i(h))) on hidden_states[i]
                h = hidden[i][0]
                ref = head(final_norm(h + translators[i](h))).float()
                rows = res[(res["prompt_id"] == rec["id"]) & (res["layer"] == i)].sort_values("position")
                target = enc.targets["target"][k]
                torch.testing.assert_close(torch.tensor(rows["target_logit"].to_numpy(), dtype=torch.float32),
                                           ref[:, target], atol=1e-4, rtol=1e-4)
                assert rows["predicted_id"].tolist() == ref.argmax(-1).tolist()


def test_hand_built_variants_load(models, tmp_path):
    """A whole lens's state dict (keys layer_translators.{i}.*) and a lens without biases load too."""
    m = models["gpt2"]
    full = _hand_built(m, tmp_path / "full", prefix="layer_translators.")
    a = TunedLens.load(tmp_path / "full")
    for i, t in enumerate(full):
        assert torch.equal(a.weight[i], t.weight) and torch.equal(a.bias[i], t.bias)
    plain = _hand_built(m, tmp_path / "nobias", bias=False)
    b = TunedLens.load(tmp_path / "nobias")
    assert not b.bias.any() and all(torch.equal(b.weight[i], t.weight) for i, t in enumerate(plain))


def test_another_models_unembedding_is_warned_about(models, tmp_path):
    m = models["llama"]
    d = _random_lens(m, "resid_pre").save(tmp_path / "tl", layout="tuned-lens", model=m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LensLayoutWarning)
        TunedLens.load(d, model=m)  # its own model: no warning
    config = json.loads((d / "config.json").read_text())
    config["unembed_hash"] = "0" * 64  # as written for another model's unembedding
    (d / "config.json").write_text(json.dumps(config))
    with pytest.warns(LensLayoutWarning, match="unembed_hash differs"):
        TunedLens.load(d, model=m)


def test_an_interp_layout_lens_keeps_its_site(models, tmp_path):
    m = models["gpt2"]
    lens = _random_lens(m, "resid_post")
    d = lens.save(tmp_path / "native")
    with pytest.raises(ParameterError, match="translates 'resid_post'"):
        TunedLens.load(d, site="resid_pre")
