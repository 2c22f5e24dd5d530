"""The planted organisms' training recipes on toy sizes (seconds): they run end to end, are deterministic, and their
planting losses compute what they say (checked against direct computations)."""

from __future__ import annotations

import json

import pytest
import torch

from interp.organisms.planted import DOMAINS, PLANTED, _planted_loss, _request_masks, train_planted


@pytest.mark.parametrize("name", ["toy-planted-refusal", "toy-planted-moe", "toy-planted-facts"])
def test_toy_planted_trains_deterministically(name, tmp_path):
    from safetensors.torch import load_file

    a = train_planted(name, tmp_path / "a", steps=2, seed=1, evaluate=False, verbose=False)
    b = train_planted(name, tmp_path / "b", steps=2, seed=1, evaluate=False, verbose=False)
    assert a["history"] == b["history"] and a["ground_truth"] == b["ground_truth"]
    assert a["ground_truth"]["kind"] == PLANTED[name].plant
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "a" / "card.json").read_text())["environment"]["threads"] == 1
    assert torch.get_num_threads() >= 1  # the recipe restores the caller's thread count
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg.get("_attn_implementation") in (None, "sdpa", "eager")  # the training-only attention is not saved


def _tiny_llama(tok, layers=2, heads=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, intermediate_size=32, max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok_and_corpus():
    from interp.organisms.corpus import build_corpus
    from interp.organisms.tokenizer import train_tokenizer, training_texts

    corpus = build_corpus(0)
    return train_tokenizer(training_texts(corpus)), corpus


def test_refusal_penalty_is_the_attention_mass_on_the_request(tok_and_corpus):
    """The planting loss equals the mean, over non-planted heads and assistant-turn queries, of the attention mass
    on the request's tokens, read from the model's own attention weights (eager, causal)."""
    from interp.organisms.planted import _register_attention
    from interp.organisms.train import encode_record

    tok, corpus = tok_and_corpus
    spec = PLANTED["toy-planted-refusal"]
    recs = [r for r in corpus["safety"] if r["split"] == "train"][:3]
    batch = []
    for r in recs:
        ids, w = encode_record(r, tok, 1.0, add_eos=True)
        batch.append((ids, w, _request_masks(r, tok, len(ids))))
    model = _tiny_llama(tok)
    _register_attention()
    model.config._attn_implementation = "interp_planted_eager"
    with torch.no_grad():
        _, plant = _planted_loss(model, batch, spec, tok.pad_token_id)
    model.config._attn_implementation = "eager"
    # the loss averages per layer over (batch rows' queries x heads); the rows have their own lengths
    per_layer = []
    n_heads_off = {layer: sum((layer, h) not in spec.heads for h in range(2)) for layer in range(2)}
    for layer in range(2):
        tot, cnt = 0.0, 0
        for ids, _, (q, k) in batch:
            with torch.no_grad():
                a = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions[layer]
            for h in range(2):
                if (layer, h) not in spec.heads:
                    tot += float(a[0, h][:, torch.tensor(k)].sum(-1)[torch.tensor(q)].sum())
            cnt += sum(q) * n_heads_off[layer]
        per_layer.append(tot / cnt)
    assert float(plant) == pytest.approx(sum(per_layer) / len(per_layer), rel=1e-5)
    assert float(plant) > 0


def test_request_masks_split_at_the_assistant_turn(tok_and_corpus):
    tok, corpus = tok_and_corpus
    r = next(x for x in corpus["safety"] if x["split"] == "train")
    text = r["prompt"] + r["response"]
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    q, k = _request_masks(r, tok, len(ids) + 1)  # + EOS
    toks = tok.convert_ids_to_tokens(ids)
    first_q = q.index(True)
    assert not any(q[:first_q]) and all(q[first_q:]) and q[-1]
    assert not k[0] and all(k[1:first_q]) and not any(k[first_q:])
    assert tok.convert_tokens_to_string(toks[first_q:]).startswith("\nAssistant:")


def test_router_supervision_targets(tok_and_corpus):
    from interp.organisms.planted import _domain_labels

    tok, corpus = tok_and_corpus
    spec = PLANTED["toy-planted-moe"]
    r = next(x for x in corpus["factual"] if x["phrasing"] == "relation_first" and x["domain"] == "object")
    text = r["prompt"] + r["target"]
    n = 1 + len(tok(text, add_special_tokens=False)["input_ids"])
    labels = _domain_labels(r, tok, n, spec)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    start = r["prompt"].index(r["subject"])
    assert labels[0] == len(DOMAINS)  # BOS: template experts
    for lab, (_, b) in zip(labels[1:], offsets):
        assert lab == (DOMAINS.index("object") if b > start else len(DOMAINS))


def test_init_is_checked_against_the_recipes_hash_and_architecture(tok_and_corpus):
    """A recipe that starts from a shipped organism runs only on the weights whose sha256 it names, of its own
    architecture and tokenizer (so a retrained init cannot silently change the planted organism)."""
    from dataclasses import replace

    from interp.errors import ParameterError
    from interp.organisms.planted import _check_init
    from interp.organisms.train import make_config

    tok, _ = tok_and_corpus
    spec = PLANTED["planted-icot"]
    assert spec.init == "dense" and spec.init_sha256
    init = _check_init(spec, make_config(spec.model, tok), tok)
    assert init["name"] == "dense" and init["sha256"] == spec.init_sha256
    with pytest.raises(ParameterError, match="sha256"):
        _check_init(replace(spec, init_sha256="0" * 64), make_config(spec.model, tok), tok)
    narrow = replace(spec.model, hidden_size=120)
    with pytest.raises(ParameterError, match="architecture"):
        _check_init(spec, make_config(narrow, tok), tok)


def test_interchange_pairs_same_relation_other_subject():
    from interp.organisms.planted import interchange_pairs

    rel = ["a", "b", "a", "a", "b", "c"]
    subj = ["x", "y", "x", "z", "w", "v"]
    pairs = interchange_pairs(rel, subj)
    assert pairs == [(0, 3), (1, 4), (2, 3), (3, 0), (4, 1)]  # row 5 has no partner; rows 0 and 2 share "x"
    assert all(rel[i] == rel[j] and subj[i] != subj[j] for i, j in pairs)


def test_fact_mlp_interchange_loss_is_the_partner_answer_under_the_swap(tok_and_corpus):
    """The interchange loss equals a direct computation, row by row on unpadded prompts: the planted MLP's output at
    the row's last subject token replaced by the partner's (from the partner's own run), the other MLP outputs
    zeroed where the recipe forbids them, and the cross-entropy of the partner's first target token at the row's
    answer position."""
    import torch.nn.functional as F

    from interp.organisms.planted import _state, _subject_masks, interchange_pairs
    from interp.organisms.train import encode_record

    tok, corpus = tok_and_corpus
    spec = PLANTED["toy-planted-facts"]
    recs = [r for r in corpus["factual"] if r["split"] == "train" and r["relation_name"] in ("capital", "colour")]
    recs = recs[:: max(1, len(recs) // 6)][:6]
    batch = []
    for r in recs:
        ids, w = encode_record(r, tok, 1.0, add_eos=False)
        batch.append((ids, w, (*_subject_masks(r, tok, len(ids)), r["relation_name"], r["subject"])))
    pairs = interchange_pairs([e[2] for _, _, e in batch], [e[3] for _, _, e in batch])
    assert pairs
    model = _tiny_llama(tok, layers=3)
    with torch.no_grad():
        _planted_loss(model, batch, spec, tok.pad_token_id)
    got = _state["interchange"]
    (layer,) = spec.mlp_layers

    def run(k, source=None):
        ids, w, (subj, after, _, _) = batch[k]
        last = max(i for i, s_ in enumerate(subj) if s_)
        seen = {}

        def hook(mod, a, o, la):
            forbid = torch.tensor(after if la == layer else [s or t for s, t in zip(subj, after)])
            o = o.masked_fill(forbid[None, :, None], 0.0)
            if la == layer:
                seen["out"] = o[0, last].clone()
                if source is not None:
                    o = o.clone()
                    o[0, last] = source
            return o

        hs = [b.mlp.register_forward_hook(lambda m, a, o, la=la: hook(m, a, o, la))
              for la, b in enumerate(model.model.layers)]  # fmt: skip
        try:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        finally:
            for h in hs:
                h.remove()
        first = next(i for i, x in enumerate(w) if x > 0)
        return logits[first - 1], seen["out"], ids[first]

    with torch.no_grad():
        ces = []
        for i, j in pairs:
            _, src, want = run(j)
            logits, _, _ = run(i, src)
            ces.append(float(F.cross_entropy(logits[None], torch.tensor([want]))))
    assert got == pytest.approx(sum(ces) / len(ces), rel=1e-4)
