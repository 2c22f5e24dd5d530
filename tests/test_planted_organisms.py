"""Checks of the SHIPPED planted organisms (data/organisms/planted-*): the card's held-out behaviour re-measured on the
shipped weights, the card's ground truth equal to the recipe's, and the planted site causally real (ablating it
destroys the behaviour; ablating random sets of the same size does not). Plain Hugging Face + torch hooks, so these
checks do not depend on the interp methods that the benchmark scores.

Criteria, fixed before measuring: "destroyed" = the ablated accuracy is at most half the clean one (at most 0.6 for
the binary refusal decision, whose chance level is 0.5); "kept" = the mean over random sets is at least 0.9 x clean.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch

from interp.organisms import organism_dir
from interp.organisms.corpus import build_corpus
from interp.organisms.evaluate import _left_pad, first_target_token, load_organism
from interp.organisms.planted import PLANTED, evaluate_planted, ground_truth

SHIPPED_PLANTED = tuple(n for n in sorted(PLANTED) if not n.startswith("toy-")
                        and (organism_dir(n) / "config.json").exists())  # fmt: skip
MAX_DIR_BYTES = 20 * 1024 * 1024

pytestmark = pytest.mark.skipif(not SHIPPED_PLANTED, reason="no planted organism is shipped in data/organisms/ yet")


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(0)


def _card(name):
    return json.loads((organism_dir(name) / "card.json").read_text())


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert abs(a - b) <= 1e-6, (path, a, b)


def test_planted_data_stays_within_its_budget():
    """Issue #20: the data the planted organisms add stays under 60 MB in all (each directory under 20 MB)."""
    total = sum(p.stat().st_size for n in SHIPPED_PLANTED for p in organism_dir(n).iterdir() if p.is_file())
    assert 0 < total <= 60 * 1000 * 1000, total


@pytest.mark.parametrize("name", SHIPPED_PLANTED)
def test_card_states_ground_truth_recipe_and_budget(name):
    card = _card(name)
    spec = PLANTED[name]
    assert card["ground_truth"] == json.loads(json.dumps(ground_truth(spec)))
    recipe = json.loads(json.dumps(asdict(spec)))
    # a recipe field added after the card was written must be at its default (then the recipe trains as it did)
    defaults = json.loads(json.dumps(asdict(type(spec)(model=spec.model, plant=spec.plant, families=spec.families))))
    added = {k for k in recipe if k not in card["recipe"]}
    assert {k: recipe[k] for k in added} == {k: defaults[k] for k in added}, f"{name}: new recipe fields not default"
    assert card["recipe"] == {k: v for k, v in recipe.items() if k not in added}
    assert card["steps"] == card["planned_steps"] == spec.model.steps
    assert card["environment"]["threads"] == 1 and card["environment"]["torch"].endswith("+cpu")
    assert card["total_cpu_time_s"] <= 15 * 60  # its own CPU time (the wall time depends on the shared machine)
    size = sum(p.stat().st_size for p in organism_dir(name).iterdir() if p.is_file())
    assert size <= MAX_DIR_BYTES


@pytest.mark.parametrize("name", SHIPPED_PLANTED)
def test_card_matches_measurement_and_thresholds(name):
    measured = evaluate_planted(organism_dir(name))
    _close(_card(name)["metrics"], measured)
    if "factual/heldout_top1" in measured:
        assert measured["factual/heldout_top1"] >= 0.95
    if "safety/harmful_refusal_rate" in measured:
        assert measured["safety/harmful_refusal_rate"] >= 0.95
        assert measured["safety/harmless_refusal_rate"] <= 0.05
    for key, v in measured.items():
        if key.startswith("composite/") and key.split("/")[-1] in ("composite", "s1", "s2"):
            assert v >= 0.90, key
    if PLANTED[name].plant == "icot_layer":
        assert measured["planted/y_s1_peak_layer"] == PLANTED[name].layer


# ---------------------------------------------------------------------------------------------------
# the planted site is causally real (plain HF forwards with torch hooks)
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def _top1(model, tok, records, hooks=(), field="target"):
    handles = [mod.register_forward_pre_hook(fn) if pre else mod.register_forward_hook(fn) for mod, fn, pre in hooks]
    try:
        seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in records]
        ids, mask, pos = _left_pad(seqs, tok.pad_token_id)
        pred = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
    finally:
        for h in handles:
            h.remove()
    want = torch.tensor([first_target_token(tok, r["prompt"], r[field]) for r in records])
    return (pred == want).float().mean().item()


def _zero_heads_hooks(model, heads):
    d_head = model.config.hidden_size // model.config.num_attention_heads
    by_layer = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    hooks = []
    for layer, hs in by_layer.items():

        def pre(mod, args, hs=hs):
            x = args[0].clone()
            for h in hs:
                x[..., h * d_head : (h + 1) * d_head] = 0.0
            return (x,)

        hooks.append((model.model.layers[layer].self_attn.o_proj, pre, True))
    return hooks


def _check(clean, planted, randoms, binary=False):
    assert planted <= (0.6 if binary else clean / 2), (clean, planted)
    assert sum(randoms) / len(randoms) >= 0.9 * clean, (clean, randoms)


@pytest.mark.skipif("planted-refusal" not in SHIPPED_PLANTED, reason="planted-refusal not shipped")
def test_refusal_heads_are_causal(corpus):
    model, tok = load_organism(organism_dir("planted-refusal"))
    spec = PLANTED["planted-refusal"]
    recs = [r for r in corpus["safety"] if r["split"] == "heldout"][::2]
    clean = _top1(model, tok, recs)
    planted = _top1(model, tok, recs, _zero_heads_hooks(model, spec.heads))
    cfg = model.config
    others = [(la, h) for la in range(cfg.num_hidden_layers) for h in range(cfg.num_attention_heads)
              if (la, h) not in spec.heads]  # fmt: skip
    rng = random.Random(0)
    randoms = [_top1(model, tok, recs, _zero_heads_hooks(model, rng.sample(others, len(spec.heads))))
               for _ in range(10)]  # fmt: skip
    _check(clean, planted, randoms, binary=True)


@pytest.mark.skipif("planted-moe" not in SHIPPED_PLANTED, reason="planted-moe not shipped")
def test_routed_experts_are_causal(corpus):
    model, tok = load_organism(organism_dir("planted-moe"))
    spec = PLANTED["planted-moe"]
    E = model.config.num_experts

    def block(experts):  # the router never picks these experts, in every layer
        def post(mod, args, out):
            logits = out[0].clone()
            logits[:, list(experts)] = float("-inf")
            probs = torch.softmax(logits.float(), dim=-1)
            top, idx = probs.topk(mod.top_k, dim=-1)
            return logits, top.to(out[1].dtype), idx

        return [(layer.mlp.gate, post, False) for layer in model.model.layers]

    fact = [r for r in corpus["factual"] if r["split"] == "heldout"]
    rng = random.Random(0)
    for domain, experts in spec.domain_experts.items():
        recs = [r for r in fact if r["domain"] == domain][::6]
        clean = _top1(model, tok, recs)
        planted = _top1(model, tok, recs, block(experts))
        others = [e for e in range(E) if e not in experts]
        randoms = [_top1(model, tok, recs, block(rng.sample(others, len(experts)))) for _ in range(4)]
        _check(clean, planted, randoms)


@pytest.mark.skipif("planted-icot" not in SHIPPED_PLANTED, reason="planted-icot not shipped")
def test_icot_layer_is_causal(corpus):
    """The planted internal chain of thought, on the held-out 5-shot composite prompts (answer y_t = s2(y_s1)).

    Criteria, fixed before measuring:
    - the logit lens (final norm + unembedding, at the answer position) has y_s1's first token top-1 most often
      after the planted block (the first maximum over blocks is ``layer``), and y_t's first token is top-1 for half
      the prompts only after it (s1 before s2);
    - projecting out of the residual stream after the planted block, at the answer position, the span of the
      final-norm-weighted unembedding rows of the y_s1 vocabulary (the first tokens of every y_s1 answer) leaves
      y_t top-1 at most half the clean one ("destroyed"), and projecting out as many random vocabulary tokens'
      directions (5 seeded sets, the y_s1 vocabulary excluded) keeps the mean at least 0.9 x clean ("kept")."""
    model, tok = load_organism(organism_dir("planted-icot"))
    layer = PLANTED["planted-icot"].layer
    recs = [r for r in corpus["composite"] if r["split"] == "heldout" and r["kind"] == "composite"
            and r["n_shot"] == 5]  # fmt: skip
    seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in recs]
    ids, mask, pos = _left_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        hs = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True).hidden_states
    L = model.config.num_hidden_layers
    lens = {}
    for fld in ("y_s1", "y_t"):
        want = torch.tensor([first_target_token(tok, r["prompt"], r[fld]) for r in recs])
        lens[fld] = []
        for la in range(L):
            h = hs[la + 1][:, -1]
            h = model.model.norm(h) if la < L - 1 else h  # the last hidden state is already normed
            lens[fld].append((model.lm_head(h).argmax(-1) == want).float().mean().item())
    assert int(torch.tensor(lens["y_s1"]).argmax()) == layer, lens
    assert min(la for la in range(L) if lens["y_t"][la] >= 0.5) > layer, lens

    w_u = model.get_output_embeddings().weight.detach()
    g = model.model.norm.weight.detach()

    def project_out(token_ids):
        q, _ = torch.linalg.qr((w_u[token_ids] * g).T)  # [d_model, n], orthonormal columns

        def post(mod, args, out):
            h = (out[0] if isinstance(out, tuple) else out).clone()
            x = h[:, -1]
            h[:, -1] = x - (x @ q) @ q.T
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return [(model.model.layers[layer], post, False)]

    s1_vocab = sorted({first_target_token(tok, r["prompt"], r["y_s1"]) for r in corpus["composite"] if r["y_s1"]})
    pool = [t for t in range(len(tok)) if t not in set(s1_vocab)]
    clean = _top1(model, tok, recs)
    planted = _top1(model, tok, recs, project_out(s1_vocab))
    randoms = [_top1(model, tok, recs, project_out(random.Random(i).sample(pool, len(s1_vocab)))) for i in range(5)]
    _check(clean, planted, randoms)


@torch.no_grad()
def _top1_mlp_zeroed_at_subject(model, tok, records, layers):
    """Top-1 on ``records`` with the output of the MLPs of ``layers`` set to zero at the subject's tokens (left-padded
    batch; the subject's token positions from the same offsets the recipe uses)."""
    from interp.organisms.planted import _subject_masks

    seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in records]
    ids, mask, pos = _left_pad(seqs, tok.pad_token_id)
    T = ids.shape[1]
    subj = torch.zeros(len(records), T, dtype=torch.bool)
    for i, (r, s) in enumerate(zip(records, seqs)):
        m, _ = _subject_masks({**r, "target": ""}, tok, len(s))
        subj[i, T - len(s) :] = torch.tensor(m)
    assert subj.any(-1).all()

    def post(mod, args, out):
        return out.masked_fill(subj[..., None], 0.0)

    handles = [model.model.layers[la].mlp.register_forward_hook(post) for la in layers]
    try:
        pred = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
    finally:
        for h in handles:
            h.remove()
    want = torch.tensor([first_target_token(tok, r["prompt"], r["target"]) for r in records])
    return (pred == want).float().mean().item()


def test_fact_mlp_is_causal(corpus):
    """Zeroing the planted MLP's output at the subject tokens destroys held-out recall (at most half the clean top-1);
    zeroing instead any other single MLP (the same size: every block's MLP is) at the same tokens keeps it (the mean
    over all the other blocks at least 0.9 x clean). Every other block is used, so no seed is involved. Criteria
    fixed before the shipped weights were measured. No skip: planted-facts is shipped, and this runs on its weights."""
    model, tok = load_organism(organism_dir("planted-facts"))
    spec = PLANTED["planted-facts"]
    recs = [r for r in corpus["factual"] if r["split"] == "heldout"][::4]
    clean = _top1_mlp_zeroed_at_subject(model, tok, recs, [])
    planted = _top1_mlp_zeroed_at_subject(model, tok, recs, list(spec.mlp_layers))
    others = [la for la in range(model.config.num_hidden_layers) if la not in spec.mlp_layers]
    randoms = [_top1_mlp_zeroed_at_subject(model, tok, recs, [la]) for la in others]
    _check(clean, planted, randoms)


def test_fact_route_is_later_attention(corpus):
    """The ground truth's route: the object reaches the answer position through attention after the planted block.
    Zeroing the attention output at the last position in every block after it takes held-out recall to at most half
    the clean one (the plain model otherwise; the same hooks as the other causal checks)."""
    model, tok = load_organism(organism_dir("planted-facts"))
    spec = PLANTED["planted-facts"]
    assert ground_truth(spec)["route"] == f"attention at the last token in blocks after {max(spec.mlp_layers)}"
    recs = [r for r in corpus["factual"] if r["split"] == "heldout"][::4]

    def zero_last(mod, args, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, -1] = 0.0
        return (h, *out[1:]) if isinstance(out, tuple) else h

    later = range(max(spec.mlp_layers) + 1, model.config.num_hidden_layers)
    clean = _top1(model, tok, recs)
    routed = _top1(model, tok, recs, [(model.model.layers[la].self_attn, zero_last, False) for la in later])
    print(f"\n[planted-facts] top-1 clean {clean:.3f}, attention at the last position zeroed after block "
          f"{max(spec.mlp_layers)}: {routed:.3f}")
    assert routed <= clean / 2, (clean, routed)
