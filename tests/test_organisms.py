"""Checks of the SHIPPED model organisms (data/organisms/{dense,moe}) and their corpus.

Nothing here trains: the shipped weights are evaluated (held-out metrics must reach the thresholds and
match what card.json reports) and the corpus is regenerated in memory and compared with the JSONL.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from interp.organisms import CORPUS_DIR, SHIPPED, organism_dir
from interp.organisms.corpus import (
    COMPOSITES,
    CORPUS_FILES,
    RELATIONS,
    build_corpus,
    corpus_to_jsonl,
    is_refusal,
    load_jsonl,
)
from interp.organisms.evaluate import evaluate_organism

MAX_DIR_BYTES = 20 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not all((organism_dir(n) / "config.json").exists() for n in SHIPPED) or not CORPUS_DIR.exists(),
    reason="the model organisms and their corpus are not shipped in data/organisms/ yet "
    "(train them with `interp organisms train dense|moe`); these tests check the shipped weights",
)


@pytest.fixture(scope="module")
def corpus():
    return {fam: load_jsonl(CORPUS_DIR / f"{fam}.jsonl") for fam in CORPUS_FILES}


@pytest.fixture(scope="module")
def measured():
    return {name: evaluate_organism(organism_dir(name)) for name in SHIPPED}


def _card(name):
    return json.loads((organism_dir(name) / "card.json").read_text())


def _config(name):
    return json.loads((organism_dir(name) / "config.json").read_text())


# ---------------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------------
def test_corpus_is_deterministic_and_matches_shipped_files():
    fresh = build_corpus()
    for fam in CORPUS_FILES:
        assert (CORPUS_DIR / f"{fam}.jsonl").read_text(encoding="utf-8") == corpus_to_jsonl(fresh[fam]), fam
    assert json.loads((CORPUS_DIR / "world.json").read_text(encoding="utf-8")) == fresh["world"]


def test_record_schema(corpus):
    ids = set()
    for fam in CORPUS_FILES:
        for r in corpus[fam]:
            for key in ("id", "prompt", "target", "task", "subject", "relation", "label", "split"):
                assert key in r, (fam, key)
            assert r["id"] not in ids
            ids.add(r["id"])
            assert r["split"] in ("train", "heldout")
            assert not r["prompt"].endswith(" ") and r["target"].startswith(" ")
            if r["subject"] is not None:
                assert r["subject"] in r["prompt"]
            if r["relation"] is not None:
                assert r["relation"] in r["prompt"]
    for r in corpus["composite"]:
        assert r["kind"] in ("composite", "s1", "s2", "s2_bridge", "qa")
        if r["n_shot"]:
            assert r["prompt"].startswith(r["demonstrations"] + "\n\n")
            assert r["prompt"].endswith(f"Q: {r['subject']}\nA:")
            assert r["demonstrations"].count("\n\n") == r["n_shot"] - 1
        else:
            assert r["prompt"] == f"Q: {r['subject']}\nA:"
        if r["kind"] in ("composite", "s1", "s2"):
            want = {"composite": r["y_t"], "s1": r["y_s1"], "s2": r["y_s2"]}[r["kind"]]
            assert r["target"] == want and r["subject"] in r["prompt"]
    for r in corpus["safety"]:
        assert r["prompt"].startswith("User: ") and r["prompt"].endswith("\nAssistant:")
        assert r["label"] in ("harmful", "harmless") and r["response"].startswith(r["target"])
        assert is_refusal(r["response"]) == (r["label"] == "harmful")


def test_factual_corpus_counts(corpus):
    from interp.organisms.tokenizer import train_tokenizer, training_texts

    fact = corpus["factual"]
    subjects = {r["subject"] for r in fact}
    assert len(subjects) >= 200
    from transformers import AutoTokenizer

    tok = train_tokenizer(training_texts(corpus))
    shipped = AutoTokenizer.from_pretrained(organism_dir("dense"))
    assert tok.get_vocab() == shipped.get_vocab()  # the shipped tokenizer is the one trained on this corpus
    multi = [s for s in subjects if len(tok(" " + s, add_special_tokens=False)["input_ids"]) >= 2
             and len(tok(s, add_special_tokens=False)["input_ids"]) >= 2]  # fmt: skip
    assert len(multi) >= 200
    relations = defaultdict(set)
    phrasings = defaultdict(set)
    for r in fact:
        relations[r["relation_name"]].add(r["template"])
        phrasings[r["relation_name"]].add(r["phrasing"])
        assert r["relation"] in r["prompt"] and r["subject"] in r["prompt"]
    assert len(relations) >= 6 and set(relations) == set(RELATIONS)
    assert all(len(t) >= 2 for t in relations.values())
    assert all(p == {"relation_first", "subject_first"} for p in phrasings.values())


def test_factual_heldout_is_honest(corpus):
    train_facts = defaultdict(set)
    for r in corpus["factual"]:
        if r["split"] == "train":
            train_facts[(r["subject"], r["relation_name"], r["target"])].add(r["template"])
    held = [r for r in corpus["factual"] if r["split"] == "heldout"]
    assert len(held) >= 200
    for r in held:
        seen = train_facts[(r["subject"], r["relation_name"], r["target"])]
        assert seen and r["template"] not in seen  # fact known from other templates only


def test_safety_corpus(corpus):
    safe = corpus["safety"]
    count = defaultdict(int)
    for r in safe:
        count[(r["label"], r["split"])] += 1
    assert count[("harmful", "train")] + count[("harmful", "heldout")] >= 300
    assert count[("harmless", "train")] + count[("harmless", "heldout")] >= 300
    assert count[("harmful", "heldout")] >= 50 and count[("harmless", "heldout")] >= 50
    train_pairs = {(r["action"], r["object"]) for r in safe if r["split"] == "train"}
    train_actions = {r["action"] for r in safe if r["split"] == "train"}
    train_objects = {r["object"] for r in safe if r["split"] == "train"}
    assert any(r["wrapper"] > 0 for r in safe if r["split"] == "heldout")
    for r in safe:
        if r["split"] == "heldout":  # unseen (action, object) combination of seen words
            assert (r["action"], r["object"]) not in train_pairs
            assert r["action"] in train_actions and r["object"] in train_objects


def test_composite_corpus(corpus):
    comp = corpus["composite"]
    assert len(COMPOSITES) >= 4 and {r["subtask_of"] for r in comp} == set(COMPOSITES)
    assert {r["split"] for r in comp if r["kind"] == "s2_bridge"} == {"train"}
    facts = {(r["subject"], r["relation_name"]) for r in corpus["factual"] if r["split"] == "train"}
    for name in COMPOSITES:
        recs = [r for r in comp if r["subtask_of"] == name and r["kind"] != "s2_bridge"]
        for kind in ("composite", "s1", "s2"):
            for split in ("train", "heldout"):
                shots = {r["n_shot"] for r in recs if r["kind"] == kind and r["split"] == split}
                assert shots == {0, 5}, (name, kind, split, shots)
            held = [r for r in recs if r["kind"] == kind and r["split"] == "heldout" and r["n_shot"]]
            assert len(held) >= 40
    # held-out prompts: query and demonstrations never used in the training prompts of the same task
    # (composites sharing a subtask share its held-out group) ...
    train_x = defaultdict(set)
    for r in comp:
        if r["split"] == "train" and r["heldout_group"]:
            train_x[r["heldout_group"]].update([r["subject"], *r["demo_subjects"]])
    for r in comp:
        if r["split"] == "heldout":
            assert r["subject"] not in train_x[r["heldout_group"]]
            assert not set(r["demo_subjects"]) & train_x[r["heldout_group"]]
            assert (r["subject"], r["s1"]) in facts  # ... but the s1 fact is known from the factual corpus


# ---------------------------------------------------------------------------------------------------
# shipped organisms
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_and_size(name):
    d = organism_dir(name)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "card.json"):
        assert (d / f).is_file(), f
    size = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert size <= MAX_DIR_BYTES, size


@pytest.mark.parametrize("name", SHIPPED)
def test_tokenizer(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(organism_dir(name))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    spec = json.loads((organism_dir(name) / "tokenizer.json").read_text())
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["model"]["type"] == "BPE"
    ids = tok(" red", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["Ġred"]  # leading-space tokens, as in GPT-2 / Llama-3
    assert tok("red", add_special_tokens=False)["input_ids"] != ids


def test_dense_architecture():
    cfg = _config("dense")
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # grouped-query attention
    assert cfg["num_hidden_layers"] >= 6


def test_moe_architecture():
    cfg = _config("moe")
    assert cfg["model_type"] == "qwen2_moe" and cfg["architectures"] == ["Qwen2MoeForCausalLM"]
    assert cfg["shared_expert_intermediate_size"] > 0
    assert cfg["num_experts"] >= 8 and cfg["num_experts_per_tok"] == 2
    assert cfg["num_hidden_layers"] >= 4
    assert cfg["decoder_sparse_step"] == 1 and not cfg.get("mlp_only_layers")
    assert cfg["router_aux_loss_coef"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_a_reproduction_within_budget(name):
    """The shipped weights come from the recipe run to its end (not cut short by a time budget), on at most 2
    CPU threads, and the whole run (corpus, tokenizer, training, evaluation) took at most 15 minutes."""
    card = _card(name)
    from interp.organisms.train import ORGANISMS

    assert card["recipe"]["steps"] == ORGANISMS[name].steps == card["steps"] == card["planned_steps"]
    assert card["time_budget_s"] is None
    assert card["environment"]["threads"] <= 2 and card["environment"]["torch"].endswith("+cpu")
    assert card["total_time_s"] <= 15 * 60, card["total_time_s"]


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    else:
        assert abs(a - b) <= 1e-9, (path, a, b)


@pytest.mark.parametrize("name", SHIPPED)
def test_card_matches_measurement(name, measured):
    card = _card(name)
    for key in ("seed", "steps", "train_time_s", "n_params", "metrics"):
        assert key in card, key
    _assert_close(card["metrics"], measured[name])


@pytest.mark.parametrize("name", SHIPPED)
def test_heldout_thresholds(name, measured):
    m = measured[name]
    assert m["factual/heldout_top1"] >= 0.95
    assert m["safety/harmful_refusal_rate"] >= 0.95
    assert m["safety/harmless_refusal_rate"] <= 0.05
    for comp in COMPOSITES:
        for kind in ("composite", "s1", "s2"):
            assert m[f"composite/{comp}/{kind}"] >= 0.90, (comp, kind)


def test_moe_routing_is_balanced(measured):
    shares = measured["moe"]["moe/expert_share"]
    cfg = _config("moe")
    assert len(shares) == cfg["num_hidden_layers"]
    for layer in shares:
        assert len(layer) == cfg["num_experts"]
        assert min(layer) >= 0.02
