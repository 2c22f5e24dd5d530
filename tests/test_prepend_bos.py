"""prepend_bos: load_model's switch for the BOS token (ROME feeds GPT-2 without it), against plain Hugging Face
forwards of the same token ids written out here (the tokenizer's ids, with and without its BOS id in front)."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.errors import ParameterError
from interp.prompts import tokenize

PROMPTS = [{"id": "a", "prompt": "The capital of France is", "target": " Paris"},
           {"id": "b", "prompt": "Mary went to the store and", "target": " bought"},
           {"id": "c", "prompt": "John", "target": " went"}]


def hf_last_logprobs(hf, tok, text: str, bos: bool) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if bos:
        ids = [tok.bos_token_id] + ids
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)


@pytest.mark.parametrize("flag", [False, True])
def test_prepend_bos_equals_a_plain_hf_forward(tiny_model_dirs, hf_models, flag):
    """interp.predictions on GPT-2 with prepend_bos=False (True) equals the HF model fed the tokens without (with)
    BOS: every top-k log-probability and the target's rank; meta records the switch."""
    m = interp.load_model(tiny_model_dirs["gpt2"], prepend_bos=flag)
    assert m.prepend_bos is flag
    hf = hf_models("gpt2")
    res = interp.predictions(m, PROMPTS, top_k=5, batch_size=2)  # 2 padded batches
    assert res.meta["prepend_bos"] is flag
    worst = 0.0
    for rec in PROMPTS:
        ref = hf_last_logprobs(hf, m.tokenizer, rec["prompt"], flag)
        rows = res.table[res.table["prompt_id"] == rec["id"]]
        for r in rows.itertuples():
            worst = max(worst, abs(r.logprob - float(ref[r.predicted_id])))
        assert list(rows["predicted_id"])[0] == int(ref.argmax())
    assert worst < 1e-5, worst


def test_the_switch_changes_the_tokens_and_the_numbers(tiny_model_dirs):
    """The GPT-2 bridge prepends BOS by default; prepend_bos=False drops exactly that first id, and the
    distributions differ (a test that could not tell the two settings apart would prove nothing above)."""
    default = interp.load_model(tiny_model_dirs["gpt2"])
    off = default.with_prepend_bos(False)
    assert default.bridge is off.bridge and default.prepend_bos is True and off.prepend_bos is False
    on_ids, off_ids = tokenize(default, PROMPTS[0]["prompt"]).ids, tokenize(off, PROMPTS[0]["prompt"]).ids
    assert on_ids == [default.tokenizer.bos_token_id] + off_ids
    a = interp.predictions(default, PROMPTS, top_k=1).table["logprob"].to_numpy()
    b = interp.predictions(off, PROMPTS, top_k=1).table["logprob"].to_numpy()
    assert abs(a - b).max() > 1e-3
    assert off.with_prepend_bos(None).prepend_bos is True  # None: back to the bridge's default


def test_qwen_default_has_no_bos_and_can_get_one_only_with_a_bos_token(tiny_model_dirs, models):
    """qwen2's bridge does not prepend BOS; asking for BOS works when the tokenizer has one, else it is refused."""
    m = models("qwen2")
    assert m.info.prepends_bos is False
    if m.tokenizer.bos_token_id is None:
        with pytest.raises(ParameterError, match="no BOS token"):
            m.with_prepend_bos(True)
    else:
        on = m.with_prepend_bos(True)
        text = PROMPTS[0]["prompt"]
        assert tokenize(on, text).ids == [m.tokenizer.bos_token_id] + tokenize(m, text).ids
